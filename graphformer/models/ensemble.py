"""The mean prediction of several trained models (``graphformer train --ensemble K``)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


class Ensemble(torch.nn.Module):
    r"""The mean prediction of ``K`` models that share a task.

    .. math::
        \hat{y} = \frac{1}{K} \sum_{k=1}^{K} f_k(G) \quad \text{(regression)},
        \qquad
        \hat{z} = \mathrm{logit}\Big(\frac{1}{K} \sum_{k=1}^{K}
            \sigma(f_k(G))\Big) \quad \text{(classification)}

    A regression model's outputs are normalised targets, so their mean is the
    mean of the predictions in target units; a classifier's are logits, so
    the ensemble's logit is that of the mean probability (clamped to
    ``[1e-7, 1 - 1e-7]``), as ``predict`` and the metrics expect.

    Shapes: a PyG ``Batch`` of B graphs gives ``[B, num_tasks]``, like each
    member. ``config`` is the first member's (every member must have the
    same ``task`` and ``num_tasks``).
    """

    def __init__(self, members: Sequence[torch.nn.Module]) -> None:
        super().__init__()
        members = list(members)
        if not members:
            raise ValueError("an Ensemble needs at least one member")
        kinds = {(m.config.task, m.config.num_tasks) for m in members}
        if len(kinds) > 1:
            raise ValueError(f"the members of an Ensemble must share task and num_tasks, got "
                             f"{sorted(kinds)}")
        self.members = torch.nn.ModuleList(members)
        self.config = members[0].config

    def forward(self, batch) -> Tensor:
        out = torch.stack([member(batch) for member in self.members])
        if self.config.task == "classification":
            return torch.logit(torch.sigmoid(out).mean(0), eps=1e-7)
        return out.mean(0)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({len(self.members)} x {self.members[0]!r})"
