r"""Predictive uncertainty of regression models: distributions, losses,
calibration and metrics (pure tensor code, plus the glue that asks a model
for its distribution).

Every function takes tensors ``[N, T]`` (N molecules, T tasks); a NaN target
is a missing label and is left out of every fit and metric, task by task.

**Predictive distributions.** Each prediction gets a mean :math:`\mu` and a
variance :math:`\sigma^2 = \sigma^2_a + \sigma^2_e` (aleatoric: noise in
the data the model expects; epistemic: the model's own uncertainty), kept
apart in :class:`Predictive`:

- a *mean-variance* (MVE) head predicts a Gaussian :math:`N(\mu,
  \sigma^2)` (Nix & Weigend 1994): :math:`\sigma^2_a = \sigma^2`,
  :math:`\sigma^2_e = 0` (:func:`gaussian`);
- an *evidential* head predicts a Normal-Inverse-Gamma
  :math:`\mathrm{NIG}(\gamma, \nu, \alpha, \beta)` over the Gaussian's mean
  and variance (Amini et al., NeurIPS 2020): :math:`\mu = \gamma`,
  :math:`\sigma^2_a = E[\sigma^2] = \beta / (\alpha - 1)`,
  :math:`\sigma^2_e = \mathrm{Var}[\mu] = \beta / (\nu (\alpha - 1))`, the
  variance of the marginal Student-t (``evidential-total`` of chemprop:
  :math:`(1 + 1/\nu)\,\beta / (\alpha - 1)`; :func:`evidential`);
- an *ensemble* of K models, each with its own distribution :math:`(\mu_k,
  \sigma^2_k)` (a point, :math:`\sigma^2_k = 0`, for a model trained by
  MSE), is their equally weighted mixture (:func:`mixture`):

  .. math::
      \mu = \frac{1}{K} \sum_k \mu_k, \qquad
      \sigma^2 = \frac{1}{K} \sum_k \sigma^2_k
          + \frac{1}{K} \sum_k (\mu_k - \mu)^2,

  the mean of the variances (aleatoric: the members' aleatoric mean;
  epistemic: their epistemic mean) plus the variance of the means
  (epistemic). For members trained by MSE this is the ensemble's spread
  alone, the population variance over members, as chemprop's ensemble
  estimator computes it.

The models predict in normalised units (targets minus the training mean,
divided by the training standard deviation ``y_std``);
:meth:`Predictive.to_target_units` maps a distribution to target units (the
mean as ``mean * y_std + y_mean``, every variance times ``y_std**2``).

**Losses** (:func:`distribution_loss`, in normalised units): the Gaussian
negative log-likelihood of an MVE head,

.. math::
    \mathcal{L} = \tfrac12 \log(2\pi\sigma^2) + \frac{(y - \mu)^2}{2\sigma^2},

and for an evidential head the NIG negative log-likelihood (the Student-t's)
plus :math:`\lambda` times the evidence regulariser (Amini et al., eqs. 8-10,
as chemprop's ``EvidentialLoss``), with :math:`\Omega = 2\beta(1 + \nu)`:

.. math::
    \mathcal{L} = \tfrac12 \log\frac{\pi}{\nu} - \alpha \log \Omega
        + (\alpha + \tfrac12) \log\big(\nu (y - \gamma)^2 + \Omega\big)
        + \log\frac{\Gamma(\alpha)}{\Gamma(\alpha + \frac12)}
        + \lambda\, |y - \gamma|\, (2\nu + \alpha).

**Calibration**, fitted on the validation part (:func:`fit_calibration`,
saved in the checkpoint as :meth:`Calibration.to_dict`), maps each raw
standard deviation :math:`\sigma_i` to a calibrated one

.. math::
    \tilde\sigma_i = \sqrt{s^2 \sigma_i^2 + b^2},

one scale :math:`s > 0` and one floor :math:`b \ge 0` (target units) per
task:

- *z-scaling with a variance floor*: :math:`s` and :math:`b` minimise the
  Gaussian NLL :math:`\sum_i \log\tilde\sigma_i + r_i^2 / (2\tilde\sigma_i^2)`
  of the residuals :math:`r_i = y_i - \mu_i`. Writing :math:`b = s\tau`, the
  best :math:`s` for a given :math:`\tau` is closed-form, :math:`s^2 =
  \frac1n \sum_i r_i^2 / (\sigma_i^2 + \tau^2)`, which leaves a search over
  :math:`\tau` alone (a log-spaced grid, then golden-section refinement;
  :func:`fit_scale_floor`). :math:`\tau = 0` is plain z-scaling (Levi et al.
  2022, chemprop's ``zscaling``; :func:`fit_zscale`) and is among the
  candidates whenever every :math:`\sigma_i > 0`, so the fit is never worse
  than z-scaling on the part it is fitted on. The floor is the noise the
  raw spread does not see: an ensemble of models trained by MSE has no
  aleatoric part at all, and two members that happen to agree on a
  molecule would otherwise claim near certainty for it. On ESOL's scaffold
  split (seed 0), the default ensemble's test NLL is 4.38 with z-scaling
  alone and 1.14 with the floor. The calibrated central interval of
  coverage :math:`c` is :math:`\mu \pm \Phi^{-1}(\tfrac{1+c}2)\,\tilde\sigma`;
- *split conformal* on the scores :math:`q_i = |r_i| / \tilde\sigma_i`
  (Angelopoulos & Bates 2021, normalised residuals): :math:`\hat q_c` is
  the :math:`\lceil (n+1) c \rceil`-th smallest of the n scores, and
  :math:`\mu \pm \hat q_c \tilde\sigma` covers a new exchangeable molecule's
  target with probability at least :math:`c` (up to the two parameters
  :math:`s, b` being fitted on the same part; with hundreds of molecules
  the effect is negligible). When :math:`\lceil (n+1) c \rceil > n` no
  finite interval has that guarantee (:math:`\hat q = \infty`): the
  validation part needs at least :math:`c / (1 - c)` molecules (9 at 0.9).
  The sorted scores are saved, so any coverage can be asked for later.

**Metrics** (:func:`uncertainty_metrics`; each per task, then averaged over
the tasks): the mean Gaussian NLL (:func:`gaussian_nll`), the miscalibration
area (:func:`miscalibration_area`: observed against expected coverage of
central Gaussian intervals at 100 levels, as chemprop and the Uncertainty
Toolbox), ENCE (:func:`ence`: equal-count bins by :math:`\sigma`, the root
mean variance against the RMSE), Spearman's rank correlation of
:math:`|y - \mu|` and :math:`\sigma` (:func:`error_spearman`), and the
coverage and mean width of calibrated intervals (:func:`coverage_width`).

**Classification** checkpoints are refused by every function that asks a
model for its distribution (:func:`spread_of`): a classifier's output is a
probability, whose spread over an ensemble is not a predictive interval of
a target.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..errors import DataError, UsageError
from ..models.kernel import MorganKernelRidge

OUTPUTS = ("mean", "mve", "evidential")
#: what ``--loss`` trains, and the head's ``output`` it needs
LOSSES = {"mse": "mean", "mve": "mve", "evidential": "evidential"}
#: how :func:`interval` widens a distribution into an interval
METHODS = ("conformal", "zscale", "gaussian")
#: the evidence regulariser's weight of chemprop's ``EvidentialLoss`` and of
#: Soleimany et al. (2021) (chemprop's command line defaults to 0)
DEFAULT_EVIDENTIAL_LAMBDA = 0.2
#: the coverage of the intervals ``evaluate`` reports by default
DEFAULT_COVERAGE = 0.9


# ---------------------------------------------------------------- distributions

@dataclass
class Predictive:
    """Predictive distributions of N molecules and T tasks: ``mean``,
    ``aleatoric`` and ``epistemic`` variance, each ``[N, T]``, in the units
    they were made in (normalised by default; see :meth:`to_target_units`)."""
    mean: Tensor
    aleatoric: Tensor
    epistemic: Tensor

    @property
    def var(self) -> Tensor:
        """The total variance, aleatoric plus epistemic."""
        return self.aleatoric + self.epistemic

    @property
    def std(self) -> Tensor:
        """The total standard deviation."""
        return self.var.sqrt()

    def to_target_units(self, y_mean: Tensor, y_std: Tensor) -> "Predictive":
        """This distribution of normalised targets as one of targets: the mean
        ``mean * y_std + y_mean``, each variance times ``y_std**2``
        (``y_mean``, ``y_std``: ``[T]``, the checkpoint's normalisation)."""
        y_mean = y_mean.to(self.mean)
        scale = y_std.to(self.mean) ** 2
        return Predictive(self.mean * y_std.to(self.mean) + y_mean,
                          self.aleatoric * scale, self.epistemic * scale)


def point(mean: Tensor) -> Predictive:
    """A prediction without a distribution (a model trained by MSE): zero variance."""
    zero = torch.zeros_like(mean)
    return Predictive(mean, zero, zero)


def gaussian(mean: Tensor, var: Tensor) -> Predictive:
    """A mean-variance head's Gaussian: all of its variance is aleatoric."""
    return Predictive(mean, var, torch.zeros_like(var))


def evidential(gamma: Tensor, nu: Tensor, alpha: Tensor, beta: Tensor) -> Predictive:
    r"""The Normal-Inverse-Gamma of an evidential head: mean :math:`\gamma`,
    aleatoric :math:`\beta/(\alpha-1)`, epistemic :math:`\beta/(\nu(\alpha-1))`
    (needs :math:`\alpha > 1`, :math:`\nu, \beta > 0`)."""
    aleatoric = beta / (alpha - 1)
    return Predictive(gamma, aleatoric, aleatoric / nu)


def mixture(members: Sequence[Predictive], weights: Optional[Tensor] = None) -> Predictive:
    """The equally weighted mixture of K members' distributions: the mean of
    the means; aleatoric, the mean of the aleatoric variances; epistemic,
    the mean of the epistemic variances plus the (population) variance of the
    means. One member is itself. With ``weights`` ``[K, T]`` or ``[K, N, T]``
    (summing to 1 over the members; an :class:`~graphformer.models.
    Ensemble`'s :meth:`~graphformer.models.Ensemble.member_weights`) every
    mean above is the weighted one."""
    if not members:
        raise ValueError("a mixture needs at least one member")
    means = torch.stack([m.mean for m in members])
    if weights is None:
        return Predictive(means.mean(0), torch.stack([m.aleatoric for m in members]).mean(0),
                          torch.stack([m.epistemic for m in members]).mean(0)
                          + means.var(0, correction=0))
    w = weights.to(device=means.device, dtype=means.dtype)
    if w.dim() == 2:
        w = w[:, None, :]

    def avg(x: Tensor) -> Tensor:
        return (x * w).sum(0)

    mean = avg(means)
    return Predictive(mean, avg(torch.stack([m.aleatoric for m in members])),
                      avg(torch.stack([m.epistemic for m in members]))
                      + avg((means - mean) ** 2))


def from_parameters(params: Tensor, output: str, weights: Optional[Tensor] = None
                    ) -> Predictive:
    """The predictive distribution of K members' parameters ``[K, N, P, T]``
    (:meth:`graphformer.models.Ensemble.member_parameters`; ``K = 1`` for one
    model) of head ``output``: each member's distribution (:func:`point`,
    :func:`gaussian`, :func:`evidential`), then their :func:`mixture`."""
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    members = []
    for p in params.unbind(0):
        if output == "mean":
            members.append(point(p[:, 0]))
        elif output == "mve":
            members.append(gaussian(p[:, 0], p[:, 1]))
        else:
            members.append(evidential(p[:, 0], p[:, 1], p[:, 2], p[:, 3]))
    return mixture(members, weights)


# ---------------------------------------------------------------- losses

def _labelled(target: Tensor) -> Tensor:
    return ~torch.isnan(target)


def gaussian_nll_loss(mean: Tensor, var: Tensor, target: Tensor) -> Tensor:
    """The mean Gaussian negative log-likelihood over the labelled entries
    (the MVE loss), :math:`\\tfrac12\\log(2\\pi\\sigma^2) + (y-\\mu)^2/(2\\sigma^2)`."""
    mask = _labelled(target)
    if not mask.any():
        return mean.sum() * 0.0
    mean, var, target = mean[mask], var[mask], target[mask]
    return (0.5 * torch.log(2 * math.pi * var) + (target - mean) ** 2 / (2 * var)).mean()


def evidential_loss(gamma: Tensor, nu: Tensor, alpha: Tensor, beta: Tensor, target: Tensor,
                    lam: float = DEFAULT_EVIDENTIAL_LAMBDA) -> Tensor:
    """The mean over the labelled entries of the NIG negative log-likelihood
    plus ``lam`` times the evidence regulariser :math:`|y - \\gamma|(2\\nu +
    \\alpha)` (see the module docstring)."""
    mask = _labelled(target)
    if not mask.any():
        return gamma.sum() * 0.0
    gamma, nu, alpha, beta, y = gamma[mask], nu[mask], alpha[mask], beta[mask], target[mask]
    omega = 2 * beta * (1 + nu)
    residual = y - gamma
    nll = (0.5 * torch.log(math.pi / nu) - alpha * torch.log(omega)
           + (alpha + 0.5) * torch.log(nu * residual ** 2 + omega)
           + torch.lgamma(alpha) - torch.lgamma(alpha + 0.5))
    return (nll + lam * residual.abs() * (2 * nu + alpha)).mean()


def distribution_loss(params: Tensor, target: Tensor, output: str,
                      evidential_lambda: float = DEFAULT_EVIDENTIAL_LAMBDA) -> Tensor:
    """The training loss of a distribution head's parameters ``[B, P, T]``
    (``forward(batch, distribution=True)``) against normalised targets ``[B,
    T]`` (NaN: missing): :func:`gaussian_nll_loss` for ``"mve"``,
    :func:`evidential_loss` with ``evidential_lambda`` for ``"evidential"``."""
    target = target.view(params.size(0), params.size(2)).to(params.dtype)
    if output == "mve":
        return gaussian_nll_loss(params[:, 0], params[:, 1], target)
    if output == "evidential":
        return evidential_loss(params[:, 0], params[:, 1], params[:, 2], params[:, 3], target,
                               evidential_lambda)
    raise ValueError(f"no distribution loss for output {output!r} (a 'mean' head is trained "
                     f"by MSE)")


# ---------------------------------------------------------------- calibration

def normal_quantile(p: float) -> float:
    r""":math:`\Phi^{-1}(p)`, the standard normal's quantile, for ``p`` in (0, 1)."""
    return math.sqrt(2.0) * torch.special.erfinv(torch.tensor(2 * p - 1, dtype=torch.float64)
                                                 ).item()


def check_coverage(coverage: float, where: str = "coverage") -> float:
    """``coverage`` as a float in (0, 1), else a :class:`UsageError` naming ``where``."""
    if not isinstance(coverage, (int, float)) or isinstance(coverage, bool) or \
            not 0.0 < float(coverage) < 1.0:
        raise UsageError(f"{where} must be a coverage in (0, 1), e.g. 0.9, got {coverage!r}")
    return float(coverage)


def _scores(mean: Tensor, std: Tensor, y: Tensor) -> List[Tensor]:
    """Per task, the normalised residuals |y - mean| / std of the labelled
    entries with std > 0, sorted (float64); ``std`` is the calibrated one
    when they are a calibration's scores."""
    out = []
    for t in range(y.size(1)):
        r, sig = _residuals(mean, std, y, t)
        keep = sig > 0
        out.append(torch.sort(r[keep].abs() / sig[keep]).values)
    return out


def conformal_quantile(scores: Tensor, coverage: float) -> float:
    r"""Split conformal's :math:`\hat q`: the :math:`\lceil (n+1)c \rceil`-th
    smallest of the n ``scores`` (1-D), ``inf`` when that exceeds n (no
    finite interval has the guarantee)."""
    n = scores.numel()
    k = math.ceil((n + 1) * coverage - 1e-9)    # the tolerance: (n+1)c = 9.000000000000002
    if k > n:
        return math.inf
    return float(torch.sort(scores).values[k - 1])


def fit_zscale(mean: Tensor, std: Tensor, y: Tensor) -> Tensor:
    r"""z-scaling's factor per task ``[T]`` alone (no floor): :math:`s =
    (\frac1n\sum z_i^2)^{1/2}` over the labelled entries with ``std`` > 0 (1
    for a task with none)."""
    return torch.tensor([float(z.pow(2).mean().sqrt()) if z.sum() > 0 else 1.0
                         for z in _scores(mean, std, y)], dtype=torch.float64)


def _residuals(mean: Tensor, std: Tensor, y: Tensor, t: int) -> Tuple[Tensor, Tensor]:
    """Task ``t``'s residuals ``y - mean`` and raw stds of its labelled entries (float64)."""
    mean, std, y = (v.detach().double().cpu()[:, t] for v in (mean, std, y))
    keep = _labelled(y)
    return y[keep] - mean[keep], std[keep]


def _floor_nll(r2: Tensor, var: Tensor, tau: float) -> float:
    """The Gaussian NLL (per entry, without the constant) of residuals with
    variances ``s^2 (var + tau^2)`` at the best ``s`` for this ``tau``."""
    v = var + tau * tau
    return float(0.5 * torch.log(v).mean() + 0.5 * torch.log((r2 / v).mean()))


def fit_scale_floor(mean: Tensor, std: Tensor, y: Tensor,
                    grid: int = 121) -> Tuple[Tensor, Tensor]:
    r"""The scale :math:`s` and floor :math:`b` per task (each ``[T]``,
    float64; see the module docstring) that minimise the Gaussian NLL of the
    labelled entries with :math:`\tilde\sigma = \sqrt{s^2\sigma^2 + b^2}`.

    :math:`\tau = b / s` is searched on ``grid`` log-spaced values from
    :math:`10^{-4}` to 10 times the residuals' RMS, then refined by golden
    section between the best value's neighbours; :math:`\tau = 0` (plain
    z-scaling) is a candidate when every labelled :math:`\sigma > 0` and
    wins ties. A task without labelled entries, or whose residuals are all
    zero, gets :math:`s = 1, b = 0`."""
    scales, floors = [], []
    for t in range(y.size(1)):
        r, sig = _residuals(mean, std, y, t)
        r2, var = r * r, sig * sig
        rms = float(r2.mean().sqrt()) if r.numel() else 0.0
        if rms == 0.0:
            scales.append(1.0)
            floors.append(0.0)
            continue
        taus = [rms * 10.0 ** e for e in torch.linspace(-4.0, 1.0, grid).tolist()]
        nlls = [_floor_nll(r2, var, tau) for tau in taus]
        k = min(range(len(taus)), key=nlls.__getitem__)
        lo, hi = math.log(taus[max(k - 1, 0)]), math.log(taus[min(k + 1, len(taus) - 1)])
        golden = (math.sqrt(5.0) - 1.0) / 2.0
        for _ in range(60):                       # golden section on log tau
            a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
            if _floor_nll(r2, var, math.exp(a)) <= _floor_nll(r2, var, math.exp(b)):
                hi = b
            else:
                lo = a
        tau = math.exp((lo + hi) / 2.0)
        best = _floor_nll(r2, var, tau)
        if nlls[k] < best:                         # the refinement did not improve on the grid
            tau, best = taus[k], nlls[k]
        if bool((var > 0).all()) and _floor_nll(r2, var, 0.0) <= best + 1e-12:
            tau = 0.0                              # plain z-scaling is as good: keep it
        scale = math.sqrt(float((r2 / (var + tau * tau)).mean()))
        scales.append(scale)
        floors.append(scale * tau)
    return torch.tensor(scales, dtype=torch.float64), torch.tensor(floors, dtype=torch.float64)


@dataclass
class Calibration:
    """Calibration of a model's predictive standard deviations, fitted on a
    part of the data (the validation part at the end of training; see the
    module docstring).

    Attributes:
        zscale: the scale ``s`` per task.
        scores: per task, the sorted normalised residuals ``|y - mean| /
            calibrated std`` (float64, 1-D) of the part; split conformal's
            quantile of any coverage comes from them
            (:meth:`conformal_quantile`).
        part: the part it was fitted on.
        floor: the floor ``b`` per task, in target units (``None``: 0 for
            every task, plain z-scaling). The calibrated std is
            ``sqrt((s * std)**2 + b**2)`` (:meth:`calibrated`).
    """
    zscale: List[float]
    scores: List[Tensor]
    part: str = "valid"
    floor: Optional[List[float]] = None

    def __post_init__(self) -> None:
        self.zscale = [float(s) for s in self.zscale]
        self.floor = [0.0] * len(self.zscale) if self.floor is None \
            else [float(b) for b in self.floor]
        if len(self.zscale) != len(self.scores) or len(self.floor) != len(self.zscale) \
                or not self.zscale:
            raise ValueError(f"a calibration holds one z-scale, one floor and one score list "
                             f"per task, got {len(self.zscale)}, {len(self.floor)} and "
                             f"{len(self.scores)}")
        for t, (s, b, r) in enumerate(zip(self.zscale, self.floor, self.scores)):
            if not math.isfinite(s) or s <= 0:
                raise ValueError(f"z-scale of task {t} must be finite and > 0, got {s}")
            if not math.isfinite(b) or b < 0:
                raise ValueError(f"floor of task {t} must be finite and >= 0, got {b}")
            if not isinstance(r, Tensor) or r.dim() != 1 or not torch.isfinite(r).all() \
                    or (r < 0).any() or (r.numel() > 1 and (r[1:] < r[:-1]).any()):
                raise ValueError(f"scores of task {t} must be a sorted 1-D tensor of finite "
                                 f"values >= 0")

    @property
    def num_tasks(self) -> int:
        return len(self.zscale)

    def calibrated(self, std: Tensor) -> Tensor:
        """The calibrated standard deviations of raw ones ``std`` ``[N, T]``:
        ``sqrt((s * std)**2 + b**2)``, task by task."""
        s = torch.tensor(self.zscale, dtype=std.dtype, device=std.device)
        b = torch.tensor(self.floor, dtype=std.dtype, device=std.device)
        return torch.sqrt((std * s) ** 2 + b ** 2)

    def conformal_quantile(self, coverage: float) -> Tensor:
        """Split conformal's :math:`\\hat q` per task ``[T]`` (float64;
        ``inf`` where the part is too small for ``coverage``), in units of
        the calibrated std."""
        return torch.tensor([conformal_quantile(r, coverage) for r in self.scores],
                            dtype=torch.float64)

    def to_dict(self) -> Dict[str, Any]:
        """Plain data for a checkpoint: ``{"version", "part", "zscale",
        "floor", "scores", "n"}`` (tensors are checksummed with the
        checkpoint)."""
        return {"version": 2, "part": self.part, "zscale": list(self.zscale),
                "floor": list(self.floor),
                "scores": [r.double().contiguous() for r in self.scores],
                "n": [int(r.numel()) for r in self.scores]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Calibration":
        """The calibration of :meth:`to_dict`, or of version 1 (z-scaling
        alone, its scores in units of the raw std: read as floor 0 and the
        scores divided by the scale, the same intervals); anything else is a
        ``ValueError``."""
        version = d.get("version") if isinstance(d, Mapping) else None
        if version not in (1, 2):
            raise ValueError(f"not a calibration of version 1 or 2: {type(d).__name__}")
        zscale, scores = d.get("zscale"), d.get("scores")
        floor = d.get("floor") if version == 2 else None
        if not isinstance(zscale, (list, tuple)) or not isinstance(scores, (list, tuple)) \
                or (version == 2 and not isinstance(floor, (list, tuple))):
            raise ValueError("a calibration's zscale, floor and scores must be lists")
        if version == 1 and all(isinstance(r, Tensor) for r in scores) \
                and len(zscale) == len(scores):
            scores = [r / float(s) for r, s in zip(scores, zscale)]
        return cls(list(zscale), list(scores), str(d.get("part", "valid")),
                   None if floor is None else list(floor))


def fit_calibration(mean: Tensor, std: Tensor, y: Tensor, part: str = "valid") -> Calibration:
    """The scale and floor (:func:`fit_scale_floor`) and split conformal's
    scores fitted on one part's predictions (``mean``, ``std``) and targets
    ``y``, all ``[N, T]`` in target units."""
    scale, floor = fit_scale_floor(mean, std, y)
    fitted = Calibration(scale.tolist(), [torch.zeros(0, dtype=torch.float64)] * len(scale),
                         part, floor.tolist())   # scores come from its calibrated std
    return replace(fitted, scores=_scores(mean, fitted.calibrated(std.detach().double()), y))


def half_width(std: Tensor, calibration: Optional[Calibration], coverage: float,
               method: str = "conformal") -> Tensor:
    """Half the width of the central interval of ``coverage`` around each mean
    ``[N, T]``: ``q`` times the calibrated std with q split conformal's
    quantile (``conformal``), :math:`\\Phi^{-1}((1+c)/2)` times the
    calibrated std (``zscale``), or
    :math:`\\Phi^{-1}((1+c)/2)` alone (``gaussian``: uncalibrated, no
    ``calibration`` needed). A conformal quantile that does not exist is a
    :class:`DataError` (see the module docstring)."""
    coverage = check_coverage(coverage)
    if method not in METHODS:
        raise UsageError(f"interval method must be one of {METHODS}, got {method!r}")
    if method == "gaussian":
        return std * normal_quantile((1 + coverage) / 2)
    if calibration is None:
        raise UsageError(f"a {method} interval needs a calibration (the checkpoint holds "
                         f"none: evaluate fits one on the validation part, or use method "
                         f"'gaussian' for uncalibrated intervals)")
    if calibration.num_tasks != std.size(-1):
        raise UsageError(f"the calibration has {calibration.num_tasks} task(s), the "
                         f"predictions {std.size(-1)}")
    if method == "zscale":
        return calibration.calibrated(std) * normal_quantile((1 + coverage) / 2)
    q = calibration.conformal_quantile(coverage)
    if not torch.isfinite(q).all():
        t = int((~torch.isfinite(q)).nonzero()[0])
        n = calibration.scores[t].numel()
        raise DataError(f"a conformal interval of coverage {coverage} needs at least "
                        f"{math.ceil(coverage / (1 - coverage) - 1e-9)} labelled "
                        f"{calibration.part} molecules per task; task {t} has {n}: ask for "
                        f"a lower coverage, or use the z-scaled interval (method 'zscale')")
    return calibration.calibrated(std) * q.to(std)


def interval(mean: Tensor, std: Tensor, calibration: Optional[Calibration],
             coverage: float = DEFAULT_COVERAGE, method: str = "conformal"
             ) -> Tuple[Tensor, Tensor]:
    """The calibrated central interval ``(low, high)``, each ``[N, T]``, of
    ``coverage`` around predictions ``mean`` with standard deviations ``std``
    (target units, as :func:`predict_distribution` gives them):
    ``mean -/+`` :func:`half_width`. ``calibration`` is the checkpoint's
    (:func:`calibration_of`); ``method`` ``conformal`` (default: at least
    ``coverage`` of new molecules like the validation ones are covered),
    ``zscale`` (Gaussian intervals, scaled), or ``gaussian`` (uncalibrated)."""
    h = half_width(std, calibration, coverage, method)
    return mean - h, mean + h


# ---------------------------------------------------------------- metrics

def _per_task(y: Tensor, fn) -> Tensor:
    """``fn(mask_t, t)`` for every task with a labelled entry, NaN for the others."""
    values = []
    for t in range(y.size(1)):
        mask = _labelled(y[:, t])
        values.append(float(fn(mask, t)) if mask.any() else math.nan)
    return torch.tensor(values, dtype=torch.float64)


def _double(*tensors: Tensor) -> Tuple[Tensor, ...]:
    return tuple(t.detach().double().cpu().reshape(t.size(0), -1) for t in tensors)


def gaussian_nll(mean: Tensor, std: Tensor, y: Tensor) -> Tensor:
    """Mean Gaussian negative log-likelihood of the targets per task ``[T]``."""
    mean, std, y = _double(mean, std, y)
    var = std ** 2
    nll = 0.5 * torch.log(2 * math.pi * var) + (y - mean) ** 2 / (2 * var)
    return _per_task(y, lambda m, t: nll[m, t].mean())


def miscalibration_area(mean: Tensor, std: Tensor, y: Tensor, levels: int = 100) -> Tensor:
    r"""Miscalibration area per task ``[T]``: for the expected coverages
    :math:`p_k = k/L`, :math:`k = 0..L` (``levels`` = L), the observed
    fraction of targets inside the central Gaussian interval :math:`\mu \pm
    \sqrt2\,\mathrm{erfinv}(p_k)\,\sigma` (0 and 1 at the ends), and
    :math:`\frac1L \sum_k |\mathrm{observed}_k - p_k|` (chemprop's
    ``miscalibration_area``, 0 = calibrated, at most 0.5)."""
    mean, std, y = _double(mean, std, y)
    p = torch.arange(1, levels, dtype=torch.float64) / levels
    z = math.sqrt(2.0) * torch.special.erfinv(p)

    def area(mask: Tensor, t: int) -> float:
        err = (y[mask, t] - mean[mask, t]).abs()
        observed = (std[mask, t].unsqueeze(0) * z.unsqueeze(1) >= err.unsqueeze(0)) \
            .double().mean(1)
        return float((observed - p).abs().sum() / levels)

    return _per_task(y, area)


def ence(mean: Tensor, std: Tensor, y: Tensor, bins: int = 10) -> Tensor:
    r"""Expected normalised calibration error per task ``[T]`` (Levi et al.
    2022): the labelled entries sorted by :math:`\sigma` and cut into
    ``bins`` bins of (nearly) equal counts (fewer when there are fewer
    entries), and

    .. math::
        \mathrm{ENCE} = \frac1B \sum_b \frac{|\mathrm{RMV}_b - \mathrm{RMSE}_b|}
            {\mathrm{RMV}_b}, \quad \mathrm{RMV}_b = \Big(\frac1{|b|}\sum_{i\in b}
            \sigma_i^2\Big)^{1/2}, \quad \mathrm{RMSE}_b = \Big(\frac1{|b|}
            \sum_{i\in b} (y_i - \mu_i)^2\Big)^{1/2}.

    chemprop's ``ence`` cuts 100 bins with ``torch.chunk`` (``bins=100``
    comes close; chunk sizes differ from equal counts)."""
    mean, std, y = _double(mean, std, y)

    def one(mask: Tensor, t: int) -> float:
        order = torch.argsort(std[mask, t], stable=True)
        s, err = std[mask, t][order], (y[mask, t] - mean[mask, t])[order]
        parts = zip(torch.tensor_split(s, min(bins, s.numel())),
                    torch.tensor_split(err, min(bins, s.numel())))
        terms = [((b_s.pow(2).mean().sqrt() - b_e.pow(2).mean().sqrt()).abs()
                  / b_s.pow(2).mean().sqrt()) for b_s, b_e in parts]
        return float(torch.stack(terms).mean())

    return _per_task(y, one)


def rank(x: Tensor) -> Tensor:
    """Ranks 1..n of a 1-D tensor, ties given their average rank (as
    ``scipy.stats.rankdata``)."""
    x = x.detach().double().cpu()
    order = torch.argsort(x, stable=True)
    sorted_x = x[order]
    first = torch.ones(x.numel(), dtype=torch.bool)
    first[1:] = sorted_x[1:] != sorted_x[:-1]
    group = torch.cumsum(first.long(), 0) - 1
    positions = torch.arange(1, x.numel() + 1, dtype=torch.float64)
    groups = int(group[-1]) + 1 if x.numel() else 0
    total = torch.zeros(groups, dtype=torch.float64).index_add_(0, group, positions)
    count = torch.zeros(groups, dtype=torch.float64).index_add_(0, group, torch.ones_like(positions))
    out = torch.empty_like(positions)
    out[order] = (total / count)[group]
    return out


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman's rank correlation of two 1-D tensors (Pearson's of their
    :func:`rank`); NaN when either is constant."""
    ra, rb = rank(a), rank(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = (ra.pow(2).sum() * rb.pow(2).sum()).sqrt()
    return float((ra * rb).sum() / denom) if denom > 0 else math.nan


def error_spearman(mean: Tensor, std: Tensor, y: Tensor) -> Tensor:
    """Spearman's correlation of ``|y - mean|`` and ``std`` per task ``[T]``
    (1: the larger the spread, the larger the error, in rank)."""
    mean, std, y = _double(mean, std, y)
    return _per_task(y, lambda m, t: spearman((y[m, t] - mean[m, t]).abs(), std[m, t]))


def coverage_width(low: Tensor, high: Tensor, y: Tensor) -> Tuple[Tensor, Tensor]:
    """Per task ``[T]``: the fraction of labelled targets with ``low <= y <=
    high``, and the intervals' mean width."""
    low, high, y = _double(low, high, y)
    inside = (low <= y) & (y <= high)
    return (_per_task(y, lambda m, t: inside[m, t].double().mean()),
            _per_task(y, lambda m, t: (high[m, t] - low[m, t]).mean()))


def _mean(values: Tensor) -> Optional[float]:
    finite = values[torch.isfinite(values)]
    return float(finite.mean()) if finite.numel() else None


def uncertainty_metrics(mean: Tensor, std: Tensor, y: Tensor,
                        calibration: Optional[Calibration],
                        coverage: float = DEFAULT_COVERAGE) -> Dict[str, Any]:
    """The uncertainty metrics of one part (each averaged over the tasks):

    - ``nll``, ``miscalibration_area``, ``ence``, ``spearman``: with the
      calibrated standard deviations (``calibrated``: ``zscale``, the scale
      and floor of :class:`Calibration`), or the raw
      ones when there is no ``calibration`` (``calibrated``: ``none``);
    - ``uncalibrated``: ``nll``, ``miscalibration_area``, ``ence`` of the raw
      ones (Spearman's is the same);
    - ``interval``: for ``coverage``, the observed ``coverage`` and mean
      ``width`` of the intervals of each method (``zscale``, ``conformal``,
      and ``gaussian``, uncalibrated); a method without an interval (no
      calibration; too small a calibration part for conformal) has ``None``.

    Every number is a JSON-ready float, ``None`` where undefined."""
    coverage = check_coverage(coverage)
    scaled = std if calibration is None else calibration.calibrated(std)

    def scores(s: Tensor) -> Dict[str, Optional[float]]:
        return {"nll": _mean(gaussian_nll(mean, s, y)),
                "miscalibration_area": _mean(miscalibration_area(mean, s, y)),
                "ence": _mean(ence(mean, s, y))}

    out: Dict[str, Any] = {**scores(scaled), "spearman": _mean(error_spearman(mean, std, y)),
                           "calibrated": "zscale" if calibration is not None else "none",
                           "uncalibrated": scores(std)}
    intervals: Dict[str, Any] = {"level": coverage}
    for method in METHODS:
        try:
            low, high = interval(mean, std, calibration, coverage, method)
        except (UsageError, DataError):
            intervals[method] = None
            continue
        covered, width = coverage_width(low, high, y)
        intervals[method] = {"coverage": _mean(covered), "width": _mean(width)}
    out["interval"] = intervals
    return out


# ---------------------------------------------------------------- models

def spread_of(model: torch.nn.Module) -> str:
    """What a model's predictive spread comes from, e.g. ``"mve"``,
    ``"ensemble of 2 (mse)"``, ``"ensemble of 3 (evidential)"``. A
    classifier, or one model trained by MSE, has none: a
    :class:`UsageError` that says so and what to train instead."""
    config = getattr(model, "config", None)
    if getattr(config, "task", "regression") != "regression":
        raise UsageError("predictive uncertainty (std, intervals, their metrics) is for "
                         "regression checkpoints; this one is a classifier, whose predictions "
                         "are already probabilities")
    output = getattr(config, "output", "mean")
    members = len(model.members) if hasattr(model, "members") else 1
    loss = {v: k for k, v in LOSSES.items()}[output]
    if members == 1 and output == "mean":
        raise UsageError("one model trained with --loss mse predicts no spread: train an "
                         "ensemble (--ensemble K, K >= 2; the default is 2) or with --loss "
                         "mve / evidential")
    if members == 1:
        return loss
    kernels = sum(1 for m in model.members if isinstance(m, MorganKernelRidge))
    if kernels:
        return f"ensemble of {members - kernels} ({loss}) and a fingerprint kernel member"
    return f"ensemble of {members} ({loss})"


def has_spread(model: torch.nn.Module) -> bool:
    """Whether :func:`spread_of` names a source (a regression ensemble, or a
    model with a distribution head)."""
    try:
        spread_of(model)
    except UsageError:
        return False
    return True


def member_distribution(model: torch.nn.Module, batch: Any) -> Tuple[Tensor, Optional[Tensor]]:
    """``[K, B, P, T]`` distribution parameters in normalised units and the
    members' weights on the batch ``[K, B, T]`` (None: equal): an ensemble's
    :meth:`~graphformer.models.Ensemble.member_distribution`, or one model's
    ``forward(batch, distribution=True)`` as ``K = 1``."""
    if hasattr(model, "member_distribution"):
        return model.member_distribution(batch)
    if getattr(model.config, "output", "mean") == "mean":
        return model(batch).unsqueeze(1).unsqueeze(0), None
    return model(batch, distribution=True).unsqueeze(0), None


@torch.no_grad()
def predictive(model: torch.nn.Module, batch: Any) -> Predictive:
    """The :class:`Predictive` of a batch in normalised units (eval mode is
    the caller's to set); refuses a model without spread (:func:`spread_of`)."""
    spread_of(model)
    params, weights = member_distribution(model, batch)
    return from_parameters(params, getattr(model.config, "output", "mean"), weights)


def predict_distribution(model: torch.nn.Module, batch: Any, state: Mapping[str, Any]
                         ) -> Tuple[Tensor, Tensor]:
    """The mean and standard deviation ``[B, T]`` of every prediction of a
    batch, in **target units** (``state``: the checkpoint, for its
    ``y_mean`` and ``y_std``): the model in eval mode, its
    :func:`predictive` distribution mapped by the normalisation. With
    :func:`interval` and the checkpoint's :func:`calibration_of`, the
    intervals ``predict`` writes::

        state, cfg, model = load_run(path)
        calibration = calibration_of(state, path)
        mean, std = predict_distribution(model, batch, state)
        low, high = interval(mean, std, calibration, coverage=0.9)

    A classifier, or one model trained by MSE, is a :class:`UsageError`."""
    model.eval()
    dist = predictive(model, batch).to_target_units(state["y_mean"], state["y_std"])
    return dist.mean, dist.std


def calibration_of(state: Mapping[str, Any], path: Any = "checkpoint"
                   ) -> Optional[Calibration]:
    """The calibration a checkpoint holds (``state["calibration"]``, written at
    the end of training), or ``None`` when it holds none (a classifier, one
    model trained by MSE, a checkpoint written before calibration existed).
    A malformed one is a :class:`DataError` naming ``path``."""
    saved = state.get("calibration")
    if saved is None:
        return None
    try:
        calibration = Calibration.from_dict(saved)
    except (ValueError, TypeError) as err:
        raise DataError(f"{path}: its calibration is malformed ({err})") from None
    tasks = state["y_mean"].numel() if isinstance(state.get("y_mean"), Tensor) else None
    if tasks is not None and calibration.num_tasks != tasks:
        raise DataError(f"{path}: its calibration has {calibration.num_tasks} task(s), its "
                        f"model {tasks}")
    return calibration
