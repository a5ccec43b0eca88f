"""The mean prediction of several trained models (``graphformer train --ensemble K``)."""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

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

    **Members with a reach.** A member that has ``forward_with_reach(batch)``
    (returning its ``[B, T]`` prediction and a reach :math:`r(G) \in [0, 1]`
    ``[B]``, e.g. the kernel member's similarity to its nearest training
    molecule) keeps :math:`w_k\, r_k(G)` of its weight on each molecule and
    gives the rest to the members without one, in proportion to their
    weights (equally when those are all 0):

    .. math::
        w_{k}(G) = w_k\, r_k(G) \;(k \in R), \qquad
        w_j(G) = w_j + u_j \sum_{k \in R} w_k\,(1 - r_k(G)) \;(j \notin R),
        \qquad u_j = w_j \Big/ \sum_{i \notin R} w_i .

    With graph transformers weighted :math:`(1 - w)/M` each and a kernel
    member :math:`w`, the prediction is :math:`g + w\, r(G)\,(k - g)`, ``g``
    the transformers' mean. :meth:`member_weights` gives the weights of a
    batch; :meth:`mean_std` and :mod:`graphformer.train.uncertainty` use
    them.

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

    def _run(self, batch, distribution: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
        """Every member's output stacked ``[K, B, ...]`` (with ``distribution``,
        :meth:`member_parameters`' ``[K, B, P, T]``) and the weights of this
        batch ``[K, B, T]`` (None: the plain mean)."""
        outs, reach = [], {}
        for k, member in enumerate(self.members):
            if hasattr(member, "forward_with_reach"):
                out, reach[k] = member.forward_with_reach(batch)
                outs.append(out.unsqueeze(1) if distribution else out)
            elif distribution:
                out = member(batch, distribution=True) if \
                    getattr(self.config, "output", "mean") != "mean" else member(batch).unsqueeze(1)
                outs.append(out)
            else:
                outs.append(member(batch))
        out = torch.stack(outs)
        return out, self._batch_weights(reach, out.size(1), out.dtype, out.device)

    def _batch_weights(self, reach: Dict[int, Tensor], size: int, dtype: torch.dtype,
                       device: torch.device) -> Optional[Tensor]:
        """The weights ``[K, B, T]`` of a batch of ``size`` molecules given the
        reach ``[B]`` of the members that have one (see the class docstring)."""
        if self.weights is None and not reach:
            return None
        K, T = len(self.members), self.config.num_tasks
        base = self.weights if self.weights is not None else \
            torch.full((K, T), 1.0 / K, dtype=torch.float64)
        base = base.to(device=device, dtype=dtype)
        weights = base[:, None, :].expand(K, size, T).clone()
        if not reach:
            return weights
        others = [j for j in range(K) if j not in reach]
        if not others:
            raise ValueError("an Ensemble needs a member without a reach to give the rest of "
                             "the weight to")
        given_back = torch.zeros(size, T, dtype=dtype, device=device)
        for k, r in reach.items():
            r = r.to(device=device, dtype=dtype)[:, None]
            given_back += base[k] * (1 - r)
            weights[k] = base[k] * r
        total = base[others].sum(0)
        share = torch.where(total > 0, base[others] / total.clamp(min=1e-300),
                            torch.full_like(base[others], 1.0 / len(others)))
        weights[others] += share[:, None, :] * given_back[None]
        return weights

    @staticmethod
    def _combine(out: Tensor, weights: Optional[Tensor]) -> Tensor:
        """The (weighted) mean over the members of ``out`` ``[K, B, T]``."""
        if weights is None:
            return out.mean(0)
        return (out * weights.to(out.dtype)).sum(0)

    def forward(self, batch) -> Tensor:
        if self.config.task == "classification":
            out = torch.stack([member(batch) for member in self.members])
            return torch.logit(torch.sigmoid(out).mean(0), eps=1e-7)
        return self._combine(*self._run(batch))

    def member_weights(self, batch) -> Optional[Tensor]:
        """The members' weights on each molecule of a batch ``[K, B, T]``
        (each ``[:, b, t]`` summing to 1), or None for the plain mean."""
        return self._run(batch)[1]

    def member_parameters(self, batch) -> Tensor:
        """Every member's distribution parameters, ``[K, B, P, num_tasks]``,
        in the members' own (normalised) units: what each member's
        ``forward(batch, distribution=True)`` returns (see
        :meth:`~graphformer.models.GraphTransformer.forward`; ``P`` = 1, 2
        or 4 for the ``output`` ``mean``, ``mve``, ``evidential``). Members
        of another class (no ``distribution`` argument) must predict only
        the mean (``P = 1``). :mod:`graphformer.train.uncertainty` combines
        them into one predictive distribution per prediction. Regression only."""
        return self.member_distribution(batch)[0]

    def member_distribution(self, batch) -> Tuple[Tensor, Optional[Tensor]]:
        """:meth:`member_parameters` ``[K, B, P, T]`` and the batch's
        :meth:`member_weights` ``[K, B, T]`` (None: equal), from one pass of
        each member. Regression only."""
        self._require_regression()
        return self._run(batch, distribution=True)

    def mean_std(self, batch) -> Tuple[Tensor, Tensor]:
        r"""The mean of the members' mean predictions and their spread, both
        ``[B, num_tasks]`` in normalised units (multiply by the checkpoint's
        ``y_std``, and add ``y_mean`` to the mean, for target units):

        .. math::
            \bar{\mu} = \frac{1}{K} \sum_k \mu_k, \qquad
            s = \Big(\frac{1}{K} \sum_k (\mu_k - \bar{\mu})^2\Big)^{1/2}

        (the population standard deviation, as chemprop's ensemble
        estimator; both means weighted by :meth:`member_weights` in an
        ensemble with weights or a member with a reach). This is the spread
        of the means alone; the members' own variances (``mve`` /
        ``evidential``) are added by
        :func:`graphformer.train.uncertainty.predictive`. Regression only."""
        params, weights = self.member_distribution(batch)
        means = params[:, :, 0]
        mean = self._combine(means, weights)
        return mean, self._combine((means - mean) ** 2, weights).sqrt()

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
