"""An exponential moving average of a model's weights, the model a run
evaluates, selects and saves when ``train.ema`` is set.

After every optimiser step ``t`` each parameter's average moves towards the
parameter:

.. math::
    \\bar\\theta_t = d\\,\\bar\\theta_{t-1} + (1 - d)\\,\\theta_t,
    \\qquad \\bar\\theta_1 = \\theta_1,

with decay :math:`d` (``0.99``: the last ~100 steps weigh most), starting
from the weights after the first step, as PyTorch's does. Buffers
(feature scalers, batch-norm statistics) are copied, not averaged. This is
``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn(d)`` and
``use_buffers=False`` plus copied buffers; when the model's parameters are
views of one :class:`~graphformer.train.optim.FlatParameter`, the average is
one buffer too and an update is one ``lerp_`` over all the floats.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional

import torch
from torch import Tensor

from .optim import FlatParameter, parameter_views


class WeightAverage:
    """The moving average of ``model``'s weights with ``decay`` (in [0, 1)).

    ``module`` is a copy of ``model`` (no gradients) holding the averages:
    evaluate it, save its ``state_dict``. ``flat``: the flat parameter whose
    views ``model``'s parameters are, in order (``make_optimizer`` made it);
    the update is then one operation.
    """

    def __init__(self, model: torch.nn.Module, decay: float,
                 flat: Optional[FlatParameter] = None) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"the decay of a weight average must be in [0, 1), got {decay}")
        self.decay = decay
        self.started = False  # the first update copies
        self.module = copy.deepcopy(model)
        self.module.requires_grad_(False)
        self._source_buffers = list(model.buffers())
        self._target_buffers = list(self.module.buffers())
        # one flat buffer of averages, or a tensor per parameter
        self._flat_source: Optional[Tensor] = None
        self._flat_target: Optional[Tensor] = None
        self._source: List[Tensor] = []
        self._target: List[Tensor] = []
        source = [p.detach() for p in model.parameters()]
        if flat is not None and _are_views_in_order(source, flat):
            self._flat_source = flat.detach()
            self._flat_target = flat.detach().clone()
            params = list(self.module.parameters())
            for p, view in zip(params, parameter_views(self._flat_target, params)):
                p.data = view
        else:
            self._source = source
            self._target = [p.detach() for p in self.module.parameters()]

    @torch.no_grad()
    def update(self) -> None:
        """One step: the averages move towards the model's parameters."""
        weight = 1.0 - self.decay if self.started else 1.0
        self.started = True
        if self._flat_target is not None:
            self._flat_target.lerp_(self._flat_source, weight)  # type: ignore[arg-type]
        elif self._target:
            torch._foreach_lerp_(self._target, self._source, weight)
        for dst, src in zip(self._target_buffers, self._source_buffers):
            dst.copy_(src)

    def state_dict(self) -> Dict[str, Any]:
        """The averaged model's ``state_dict`` (what a checkpoint's ``model`` holds)."""
        return self.module.state_dict()

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore the averages (a resumed run: updated before it was saved)."""
        self.module.load_state_dict(state)
        self.started = True

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(decay={self.decay})"


def _are_views_in_order(params: List[Tensor], flat: Tensor) -> bool:
    """Whether ``params`` are, in order, consecutive views of all of ``flat``."""
    offset, base = 0, flat.data_ptr()
    size = flat.element_size()
    for p in params:
        if p.data_ptr() != base + offset * size or not p.is_contiguous():
            return False
        offset += p.numel()
    return offset == flat.numel()
