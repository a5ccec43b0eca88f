"""The training step under :func:`torch.compile` (``graphformer train
--compile``, ``train.compile``).

A molecule batch's step is mostly dispatch: about a thousand small
operations, each a few microseconds of Python and dispatcher around a
kernel of similar length. Compiled, inductor fuses the elementwise work
into generated C++ kernels and, with its C++ wrapper (``cpp_wrapper``),
calls them and the remaining library kernels (the products, graphformer's
own attention ops, which are traced as custom ops) from C++ instead of
Python. ``scripts/bench_training.py --compile`` measures it against the
eager step and the attention-removed floor (docs/training-speed.md).

The batch is prepared outside the compiled code
(:meth:`~graphformer.models.GraphTransformer.prepare`: the attention edge
set, whose sizes depend on the data), so the compiled graph has no break
and, with dynamic shapes, serves every batch size.
"""
from __future__ import annotations

from typing import Any, Dict

import torch

from ..models import GraphTransformer

#: inductor's options for the compiled step: the C++ wrapper (measured
#: faster than the default Python wrapper on ESOL's training step, see
#: docs/training-speed.md), and PyTorch's own random number ops in place of
#: inductor's generated ones (``fallback_random``): the dropout seeds, drawn
#: from the default generator, are then those of the eager step, and a
#: compiled run trains the same model as an eager one with the same seed.
COMPILE_OPTIONS: Dict[str, Any] = {"cpp_wrapper": True, "fallback_random": True}


def compile_model(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` compiled for training steps: ``torch.compile`` with dynamic
    shapes and :data:`COMPILE_OPTIONS`. The result shares ``model``'s
    parameters (checkpoint ``model`` itself, not the result); it compiles on
    its first call, and again when a call differs in what its graph was
    specialised on (training or evaluation mode, gradients on or off)."""
    return torch.compile(model, dynamic=True, options=dict(COMPILE_OPTIONS))


def model_input(model: torch.nn.Module, batch: Any) -> Any:
    """What the compiled ``model`` is called with: a
    :class:`~graphformer.models.GraphTransformer`'s batch prepared
    (:meth:`~graphformer.models.GraphTransformer.prepare`, the same results
    to the bit), any other model's batch as it is."""
    return model.prepare(batch) if isinstance(model, GraphTransformer) else batch
