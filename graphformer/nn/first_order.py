"""Backward formulas that are not differentiable themselves: :func:`first_order`.

A custom backward computed by C++ or Triton kernels (or by operations that
write into fresh buffers) gives correct first derivatives, but autograd
cannot differentiate through it again: under ``create_graph=True`` its
gradients would silently lose every term that depends on the forward's
inputs. :func:`first_order` marks such a backward: its gradients stay
correct, and differentiating them again raises an error that names the
function and the way to second derivatives, instead of a wrong number.
PyTorch's ``once_differentiable`` is not enough here: it checks only the
incoming gradients, not the tensors the forward saved.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import torch
from torch import Tensor
from torch._C import _functions

__all__ = ["SECOND_DERIVATIVES", "first_order"]

#: What the error of a second derivative says to do.
SECOND_DERIVATIVES = ("for second derivatives (create_graph=True, then a derivative of the "
                      "gradient) use RelationalAttention(backend='propagate'), which runs "
                      "PyTorch's autograd throughout")


def first_order(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Marks ``backward(ctx, *grads)`` of ``name`` (a custom autograd
    function or op) as first-order only. Under ``create_graph=True``, where
    the incoming gradients or the saved tensors are part of a graph, the
    backward runs without recording and its gradients carry a node that
    raises ``RuntimeError`` (naming ``name``) if they are differentiated;
    elsewhere it runs as it is."""
    message = (f"{name}: its backward is not differentiable, so the second derivative "
               f"asked for would be wrong; {SECOND_DERIVATIVES}").encode()

    def mark(backward: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(backward)
        def wrapper(ctx: Any, *grads: Any) -> Any:
            if not torch.is_grad_enabled():
                return backward(ctx, *grads)
            with torch.no_grad():
                out = backward(ctx, *grads)
            # the tensors the gradients depend on: the error node takes them as
            # inputs too, so that a derivative that needs them reaches it
            graph = [t for t in (*grads, *ctx.saved_tensors)
                     if isinstance(t, Tensor) and t.requires_grad]
            if not graph:
                return out
            single = not isinstance(out, tuple)
            outs = (out,) if single else out
            marked = _functions.DelayedError(message, len(outs) + len(graph))(
                *(o.detach() if isinstance(o, Tensor) else o for o in outs), *graph)
            return marked[0] if single else tuple(marked[:len(outs)])
        return wrapper
    return mark
