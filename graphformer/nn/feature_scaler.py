"""A robust scaler of molecule-level features (RDKit descriptors, user
columns), fitted on the training split and stored with the model."""
from __future__ import annotations

import math

import torch
from torch import Tensor


def column_quantiles(sorted_x: Tensor, count: Tensor, q: float) -> Tensor:
    """The ``q`` quantile of every column of ``sorted_x`` ``[N, F]`` (each
    column sorted ascending, its ``count[f]`` valid values first, NaN after),
    interpolated linearly as ``torch.quantile``; ``[F]``, NaN where a column
    has no valid value."""
    pos = q * (count - 1).clamp_min(0).to(sorted_x.dtype)
    lo, hi = pos.floor().long(), pos.ceil().long()
    a = sorted_x.gather(0, lo.unsqueeze(0)).squeeze(0)
    b = sorted_x.gather(0, hi.unsqueeze(0)).squeeze(0)
    return torch.lerp(a, b, pos - lo.to(pos.dtype))


#: The interquartile range of a normal distribution in standard deviations.
IQR_PER_STD = 1.3489795


class FeatureScaler(torch.nn.Module):
    r"""Scale ``F`` molecule features by robust statistics of the training
    split, so that any input gives a finite, bounded output.

    Per feature :math:`f`, :meth:`fit` takes the finite training values
    (NaN, ``inf`` and ``-inf`` are left out) and records their median
    :math:`m_f`, their ``quantile`` and ``1 - quantile`` quantiles
    :math:`[l_f, h_f]` (0.5 % and 99.5 % by default) and a robust scale
    :math:`s_f`: the interquartile range divided by 1.349 (the standard
    deviation of normal data), else (a column that is mostly one value, as a
    rare substructure count) the standard deviation of the values clipped to
    :math:`[l_f, h_f]`, else (a constant column) 1. :meth:`forward` computes

    .. math::
        \mathrm{clip}\Big(\frac{\mathrm{clip}(\tilde x_f, l_f, h_f) - m_f}{s_f},
        -b, b\Big), \qquad \tilde x_f = x_f \text{ if finite, else } m_f

    in float64. A missing or non-finite value becomes the training median
    (0 out); an extreme one (RDKit's descriptors reach 1e30) is clipped, and
    cannot move the median or the interquartile range once a column has
    enough finite training values (quantiles interpolate between rows: with
    fewer than 5, or with a quarter of them extreme, an extreme value enters
    the interquartile range and the column's other values scale to ~0); the output is at most ``bound`` (:math:`b`, 5) in magnitude
    whatever the input. A constant training column gives 0, and so does a
    column with no finite training value (:math:`m_f = l_f = h_f = 0`,
    :math:`s_f = 1`).

    The statistics are float64 buffers, so they travel in the module's
    ``state_dict`` (and a checkpoint) and are applied identically wherever it
    is loaded. Before :meth:`fit` the scaler only replaces non-finite values
    by 0 and clips to ``±bound``.

    Args:
        num_features: ``F``.
        quantile: the clipping quantile, in ``[0, 0.25)``.
        bound: the largest magnitude of an output (> 0).
    """

    def __init__(self, num_features: int, quantile: float = 0.005, bound: float = 5.0) -> None:
        super().__init__()
        if num_features < 1:
            raise ValueError(f"'num_features' must be >= 1, got {num_features}")
        if not 0.0 <= quantile < 0.25:
            raise ValueError(f"'quantile' must be in [0, 0.25), got {quantile}")
        if not (bound > 0 and math.isfinite(bound)):
            raise ValueError(f"'bound' must be a finite number > 0, got {bound}")
        self.num_features, self.quantile, self.bound = num_features, quantile, bound
        f64 = dict(dtype=torch.float64)
        self.register_buffer("median", torch.zeros(num_features, **f64))
        self.register_buffer("low", torch.full((num_features,), -math.inf, **f64))
        self.register_buffer("high", torch.full((num_features,), math.inf, **f64))
        self.register_buffer("scale", torch.ones(num_features, **f64))

    def _check(self, x: Tensor, what: str) -> None:
        if x.dim() != 2 or x.size(1) != self.num_features:
            raise ValueError(f"{what} must be [N, {self.num_features}] (one row of "
                             f"{self.num_features} features per molecule), got "
                             f"{list(x.shape)}")

    @torch.no_grad()
    def fit(self, x: Tensor) -> "FeatureScaler":
        """Set the statistics from the training rows ``x`` ``[N, F]`` (any
        values, NaN and ``±inf`` included); returns ``self``."""
        self._check(x, "the training features")
        if x.size(0) == 0:
            raise ValueError("FeatureScaler.fit needs at least one training row, got 0 rows")
        v = x.detach().to(device=self.median.device, dtype=torch.float64)
        finite = torch.isfinite(v)
        v = torch.where(finite, v, torch.full_like(v, math.nan))
        count = finite.sum(0)
        ordered = torch.sort(v, dim=0).values  # NaN sort last
        zero = torch.zeros_like(self.median)

        def quantile(q: float) -> Tensor:  # 0 for a column with no finite value
            return torch.where(count == 0, zero, column_quantiles(ordered, count, q))

        low, high = quantile(self.quantile), quantile(1.0 - self.quantile)
        iqr = (quantile(0.75) - quantile(0.25)) / IQR_PER_STD
        clipped = torch.where(finite, torch.minimum(torch.maximum(v, low), high), zero)
        n = count.clamp_min(1).to(torch.float64)
        mean = clipped.sum(0) / n
        std = ((torch.where(finite, clipped - mean, zero) ** 2).sum(0) / n).sqrt()
        scale = torch.where(iqr > 0, iqr, torch.where(std > 0, std, torch.ones_like(std)))
        self.median.copy_(quantile(0.5))
        self.low.copy_(low)
        self.high.copy_(high)
        self.scale.copy_(torch.where(torch.isfinite(scale), scale, torch.ones_like(scale)))
        return self

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``[B, F]`` scaled (see the class), ``[B, F]`` in ``x``'s
        floating dtype (float32 for integer input)."""
        self._check(x, "the molecule features (batch.mol_x)")
        out_dtype = x.dtype if x.is_floating_point() else torch.float32
        v = x.to(torch.float64)
        v = torch.where(torch.isfinite(v), v, self.median)
        v = torch.minimum(torch.maximum(v, self.low), self.high)
        out = ((v - self.median) / self.scale).clamp(-self.bound, self.bound)
        return out.to(out_dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, quantile={self.quantile}, bound={self.bound}"
