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

#: dynamo's settings while the model runs (and compiles): Python floats
#: specialised, as constants of the graph. A model's floats are its
#: hyper-parameters (``LayerNorm``'s eps, dropout probabilities); with
#: dynamic shapes dynamo would first trace them as symbolic floats, which
#: inductor cannot take, and then start its whole analysis over with them
#: specialised: about 9 of a warm compile's 16 s on ESOL's step.
DYNAMO_CONFIG: Dict[str, Any] = {"specialize_float": True}


def compile_model(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` compiled for training steps: ``torch.compile`` with dynamic
    shapes, :data:`COMPILE_OPTIONS` and :data:`DYNAMO_CONFIG`. The result
    shares ``model``'s parameters (checkpoint ``model`` itself, not the
    result); it compiles on its first call, and again when a call differs
    in what its graph was specialised on (training or evaluation mode,
    gradients on or off). A later process compiling the same model finds
    its graphs in PyTorch's compile caches (inductor's and AOTAutograd's,
    on disk): a shorter compile."""
    compiled = torch.compile(model, dynamic=True, options=dict(COMPILE_OPTIONS))
    # the settings around each call: the module calls its `forward`, dynamo's
    # entry, so they hold for every compilation, the first and any later one
    compiled.forward = torch._dynamo.config.patch(**DYNAMO_CONFIG)(compiled.forward)
    return compiled


#: The batch's features whose width (dimension 1) is the model's, not the
#: batch's: static for dynamo (:func:`model_input`).
MODEL_WIDTHS = ("x", "edge_attr", "rwse", "mol_x")


def model_input(model: torch.nn.Module, batch: Any) -> Any:
    """What the compiled ``model`` is called with: a
    :class:`~graphformer.models.GraphTransformer`'s batch prepared
    (:meth:`~graphformer.models.GraphTransformer.prepare`, the same results
    to the bit), any other model's batch as it is.

    The widths of the prepared batch's features (:data:`MODEL_WIDTHS`) are
    marked static: the model fixes them, and a dynamic size would share
    its symbol with any size of equal value (dynamo's duck shaping), so
    that the first batch whose number of edge types was 9, like the atoms'
    9 features, compiled a graph for 9 types only and the next count
    compiled again."""
    if not isinstance(model, GraphTransformer):
        return batch
    prepared = model.prepare(batch)
    for key in MODEL_WIDTHS:
        feature = getattr(prepared, key, None)
        if isinstance(feature, torch.Tensor) and feature.dim() == 2:
            torch._dynamo.mark_static(feature, 1)
    return prepared
