"""The mean prediction of several trained models (``graphformer train --ensemble K``)."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

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

    With ``weights`` ``[K, num_tasks]`` (regression only; each column
    non-negative, summing to 1) the prediction is the weighted mean
    :math:`\hat{y}_t = \sum_k w_{k,t} f_k(G)_t` instead: an ensemble with a
    fingerprint kernel member (:class:`~graphformer.models.kernel.
    MorganKernelRidge`) weighs it against the graph transformers by the
    validation part (``graphformer train --kernel-member morgan``).

    Shapes: a PyG ``Batch`` of B graphs gives ``[B, num_tasks]``, like each
    member. ``config`` is the first member's (every member must have the
    same ``task`` and ``num_tasks``).
    """

    def __init__(self, members: Sequence[torch.nn.Module],
                 weights: Optional[Tensor] = None) -> None:
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
        self.register_buffer("weights", None)
        if weights is not None:
            if self.config.task != "regression":
                raise ValueError("a weighted Ensemble is for regression")
            weights = torch.as_tensor(weights, dtype=torch.float64)
            if weights.shape != (len(members), self.config.num_tasks) or \
                    not torch.isfinite(weights).all() or (weights < 0).any() or \
                    not torch.allclose(weights.sum(0), torch.ones(weights.size(1),
                                                                  dtype=torch.float64)):
                raise ValueError(f"weights must be [{len(members)}, {self.config.num_tasks}], "
                                 f">= 0, each column summing to 1; got "
                                 f"{weights.tolist() if weights.numel() < 20 else weights.shape}")
            self.register_buffer("weights", weights)

    def _combine(self, out: Tensor) -> Tensor:
        """The (weighted) mean over the members of ``out`` ``[K, B, T]``."""
        if self.weights is None:
            return out.mean(0)
        return (out * self.weights.to(out.dtype)[:, None, :]).sum(0)

    def forward(self, batch) -> Tensor:
        out = torch.stack([member(batch) for member in self.members])
        if self.config.task == "classification":
            return torch.logit(torch.sigmoid(out).mean(0), eps=1e-7)
        return self._combine(out)

    def member_parameters(self, batch) -> Tensor:
        """Every member's distribution parameters, ``[K, B, P, num_tasks]``,
        in the members' own (normalised) units: what each member's
        ``forward(batch, distribution=True)`` returns (see
        :meth:`~graphformer.models.GraphTransformer.forward`; ``P`` = 1, 2
        or 4 for the ``output`` ``mean``, ``mve``, ``evidential``). Members
        of another class (no ``distribution`` argument) must predict only
        the mean (``P = 1``). :mod:`graphformer.train.uncertainty` combines
        them into one predictive distribution per prediction. Regression only."""
        self._require_regression()
        if getattr(self.config, "output", "mean") == "mean":
            return torch.stack([member(batch) for member in self.members]).unsqueeze(2)
        return torch.stack([member(batch, distribution=True) for member in self.members])

    def mean_std(self, batch) -> Tuple[Tensor, Tensor]:
        r"""The mean of the members' mean predictions and their spread, both
        ``[B, num_tasks]`` in normalised units (multiply by the checkpoint's
        ``y_std``, and add ``y_mean`` to the mean, for target units):

        .. math::
            \bar{\mu} = \frac{1}{K} \sum_k \mu_k, \qquad
            s = \Big(\frac{1}{K} \sum_k (\mu_k - \bar{\mu})^2\Big)^{1/2}

        (the population standard deviation, as chemprop's ensemble
        estimator). This is the spread of the means alone; the members'
        own variances (``mve`` / ``evidential``) are added by
        :func:`graphformer.train.uncertainty.predictive`. Regression only."""
        means = self.member_parameters(batch)[:, :, 0]
        mean = self._combine(means)
        return mean, self._combine((means - mean) ** 2).sqrt()

    def _require_regression(self) -> None:
        if self.config.task != "regression":
            raise ValueError("the spread of an ensemble's predictions is defined here for "
                             "regression only; this ensemble is a classifier (its members' "
                             "probabilities are averaged by forward)")

    def __repr__(self) -> str:
        others = [m for m in self.members if type(m) is not type(self.members[0])]
        tail = "".join(f" + {m!r}" for m in others)
        weights = "" if self.weights is None else \
            f", weights={[round(w, 3) for w in self.weights[:, 0].tolist()]}"
        return (f"{self.__class__.__name__}({len(self.members) - len(others)} x "
                f"{self.members[0]!r}{tail}{weights})")
