"""The optimiser of a training run: AdamW over the model's parameters held in
one flat buffer, gradient clipping, and the learning-rate schedule.

Why one buffer: ``AdamW(fused=True)``, ``clip_grad_norm_`` and ``zero_grad``
each loop over the parameter tensors, in Python or in ATen's CPU fallbacks
of the ``_foreach`` operations (one norm, one multiply and one step counter
per tensor). For the default molecule model (97 tensors, 0.2 M floats) that
was about 2.2 ms of a 28 ms training step on Lipophilicity batches. With the
parameters as views of one :class:`FlatParameter` and their gradients as
views of its gradient, each is one operation over all the floats.

The update is the same: AdamW is element-wise, and the clipping norm is the
norm of the same numbers (summed in another order). One difference from
``zero_grad(set_to_none=True)``: a parameter that gets no gradient in a step
(one not used by the forward) gets a zero gradient and is updated from its
moments, as with ``set_to_none=False``. For the bundled models nothing
changes: every parameter gets a gradient in every step (a test checks the
molecule model and its variants, GIN and the pre-training model), except,
with ``edge_update=True``, the last block's edge-update weights, whose
output nothing reads (they now only shrink by the weight decay).

Calling :func:`make_optimizer` again on a model already flattened leaves it
as it is (its parameters share one buffer) and optimises them separately.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import Tensor
from torch.nn import Parameter


class FlatParameter(Parameter):
    """One buffer ``[P]`` holding several parameters: each is a view of it,
    and each one's ``.grad`` a view of this parameter's ``.grad``. Autograd
    accumulates a parameter's gradient into its existing ``.grad`` in place,
    so after ``backward`` the flat gradient holds every gradient. Its
    gradient is zeroed in place (:func:`zero_grad`), never set to ``None``,
    which would cut it from the views."""


def flatten_parameters(params: Sequence[Parameter]) -> Optional[FlatParameter]:
    """Move ``params`` into one :class:`FlatParameter` (their values kept,
    their gradients zero) and return it; ``None``, leaving them as they are,
    when they cannot share one buffer: none, different dtypes or devices,
    sparse or frozen ones, or two that share memory (tied weights would be
    untied by copying)."""
    params = list(params)
    if not params:
        return None
    first = params[0]
    if any(p.dtype != first.dtype or p.device != first.device or p.layout != torch.strided
           or not p.requires_grad for p in params):
        return None
    if len({p.untyped_storage().data_ptr() for p in params}) != len(params):
        return None
    total = sum(p.numel() for p in params)
    flat = FlatParameter(torch.empty(total, dtype=first.dtype, device=first.device))
    flat.grad = torch.zeros_like(flat)
    with torch.no_grad():
        for p, view, grad in zip(params, parameter_views(flat.data, params),
                                 parameter_views(flat.grad, params)):
            view.copy_(p.data)
            p.data = view
            p.grad = grad
    return flat


def parameter_views(buffer: Tensor, params: Sequence[Tensor]) -> List[Tensor]:
    """Consecutive views of ``buffer``, one per parameter in order, each of
    that parameter's shape (how :func:`flatten_parameters` lays them out)."""
    return [part.view(p.shape) for part, p in zip(buffer.split([p.numel() for p in params]),
                                                   params)]


def optimised_parameters(optimizer: torch.optim.Optimizer) -> List[Tensor]:
    """The tensors ``optimizer`` updates (one flat parameter, or the model's)."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over ``model``'s parameters, moved into one
    :class:`FlatParameter` when they can share a buffer (see the module
    docstring); fused (one kernel for all parameters) where their device has
    the fused kernel, multi-tensor otherwise. Make it after the model has
    its device and its starting weights, and before wrapping it in
    ``DistributedDataParallel``."""
    params: List[Tensor] = list(model.parameters())
    flat = flatten_parameters(params)  # type: ignore[arg-type]
    if flat is not None:
        params = [flat]
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=True)


def flat_parameter(optimizer: torch.optim.Optimizer) -> Optional[FlatParameter]:
    """The :class:`FlatParameter` ``optimizer`` updates, if that is all it updates.

    Raises:
        RuntimeError: its gradient was set to ``None`` (by
            ``optimizer.zero_grad()``): the parameters' gradients are no longer
            views of it, so no step would update them.
    """
    params = optimised_parameters(optimizer)
    if len(params) == 1 and isinstance(params[0], FlatParameter):
        if params[0].grad is None:
            raise RuntimeError("the flat parameter's gradient was set to None (by "
                               "optimizer.zero_grad()?): clear it with "
                               "graphformer.train.optim.zero_grad, which zeroes it in place")
        return params[0]
    return None


def zero_grad(optimizer: torch.optim.Optimizer) -> None:
    """Clear the gradients before a backward: a flat parameter's in place
    (its views must stay), any other's set to ``None``."""
    flat = flat_parameter(optimizer)
    if flat is not None:
        flat.grad.zero_()
    else:
        optimizer.zero_grad(set_to_none=True)


def clip_grad_norm(optimizer: torch.optim.Optimizer, max_norm: float) -> None:
    """``torch.nn.utils.clip_grad_norm_`` over the optimised parameters; for a
    flat parameter its formula written out on the one gradient (the same
    values, without its per-call grouping of tensors by device and dtype)."""
    flat = flat_parameter(optimizer)
    if flat is None:
        torch.nn.utils.clip_grad_norm_(optimised_parameters(optimizer), max_norm)
        return
    norm = torch.linalg.vector_norm(flat.grad)
    flat.grad.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))


def optimizer_step(net: torch.nn.Module, loss: Tensor, optimizer: torch.optim.Optimizer,
                   grad_clip: float = 0.0, frozen: Sequence[Tensor] = ()) -> None:
    """Backward from ``loss``, gradient-norm clipping (0 = off) over the
    optimised parameters, optimiser step. ``net`` (the model, or its DDP
    wrapper) is what ``loss`` came from; its parameters are the ones
    ``optimizer`` updates, directly or through a flat parameter. The
    gradients of the ``frozen`` parameters are zeroed after the backward,
    before the clipping (see :func:`freeze`)."""
    zero_grad(optimizer)
    loss.backward()
    for p in frozen:
        if p.grad is not None:
            p.grad.zero_()
    if grad_clip:
        clip_grad_norm(optimizer, grad_clip)
    optimizer.step()


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: Dict[str, Any]) -> None:
    """``optimizer.load_state_dict(state)``, also for a state saved by an
    optimiser over the separate parameters (before they were flattened):
    its per-parameter moments are concatenated in parameter order, which is
    the flat parameter's layout.

    Raises:
        ValueError: the state fits neither layout, or its parameters were at
            different steps (then it has no flat equivalent).
    """
    ours, saved = optimizer.state_dict(), state
    flat = [p for p in optimised_parameters(optimizer) if isinstance(p, FlatParameter)]
    saved_sizes = [len(g["params"]) for g in saved["param_groups"]]
    if not flat or saved_sizes == [len(g["params"]) for g in ours["param_groups"]]:
        optimizer.load_state_dict(saved)
        return
    if len(saved["param_groups"]) != 1:
        raise ValueError(f"the saved optimiser state has {len(saved_sizes)} parameter groups; "
                         f"this optimiser has one flat parameter")
    ids = saved["param_groups"][0]["params"]
    states = [saved["state"].get(i, {}) for i in ids]
    steps = {float(s["step"]) for s in states if "step" in s}
    if len(steps) > 1:
        raise ValueError(f"the saved optimiser state's parameters were at different steps "
                         f"{sorted(steps)}; it has no flat equivalent")
    total = flat[0].numel()
    merged: Dict[str, Any] = {}
    if steps:
        sizes = []
        for s in states:
            if "exp_avg" not in s:
                raise ValueError("the saved optimiser state lacks the moments of a parameter")
            sizes.append(s["exp_avg"].numel())
        if sum(sizes) != total:
            raise ValueError(f"the saved optimiser state holds {sum(sizes)} values per moment; "
                             f"the model has {total} parameters")
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            if all(key in s for s in states):
                merged[key] = torch.cat([s[key].reshape(-1) for s in states])
        merged["step"] = states[0]["step"].clone() if torch.is_tensor(states[0]["step"]) \
            else torch.tensor(float(states[0]["step"]))
    group = dict(saved["param_groups"][0], params=ours["param_groups"][0]["params"])
    optimizer.load_state_dict({"state": {group["params"][0]: merged} if merged else {},
                               "param_groups": [group]})


def freeze(optimizer: torch.optim.Optimizer, params: Sequence[Parameter], frozen: bool,
           weight_decay: float, autograd: bool = True) -> List[Parameter]:
    """Freeze ``params`` (a part of what ``optimizer`` updates) or thaw them.

    Frozen, they keep their values exactly through :func:`optimizer_step`
    with ``frozen=`` the returned list: their gradients are zero (not
    computed, or zeroed after the backward when ``autograd`` is false, as
    under ``DistributedDataParallel``, which expects a gradient for every
    parameter it was built with), their AdamW moments stay zero, so the
    step moves them by nothing, and ``optimizer``'s weight decay is set to
    0. Thawed, gradients flow again and the weight decay is ``weight_decay``.
    Returns the parameters whose gradients the caller must zero after each
    backward (empty unless frozen with ``autograd`` false)."""
    for group in optimizer.param_groups:
        group["weight_decay"] = 0.0 if frozen else weight_decay
    if autograd:
        for p in params:
            p.requires_grad_(not frozen)
        return []
    return list(params) if frozen else []


def lr_factor(step: int, warmup: int, total: int, head: int = 0) -> float:
    """The learning-rate factor at ``step``: 1 for the first ``head`` steps
    (the head trained alone), then linear warm-up over ``warmup`` steps and
    cosine decay to 0 at ``total``."""
    if step < head:
        return 1.0
    step, total = step - head, total - head
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
