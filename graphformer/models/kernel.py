r"""Kernel ridge regression on Morgan count fingerprints: the fingerprint
member an ensemble can hold beside its graph transformers
(``graphformer train --kernel-member morgan``).

On bioactivity data (MoleculeACE: ChEMBL Ki / EC50 sets) a kernel method on
ECFP fingerprints has long been ahead of graph networks (van Tilborg et al.,
JCIM 2022), and a graph model and a fingerprint kernel err differently
enough that a weighted mean of the two is better than either. This module is
the kernel half:

- the fingerprint of a molecule is its ECFP4 count vector :math:`a \in
  \mathbb{N}^{2048}` (RDKit's Morgan generator, radius 2, 2048 bits;
  :func:`graphformer.data.descriptors.morgan_counts`), counts capped at 255;
- the kernel is the MinMax (count Tanimoto) similarity

  .. math::
      k(a, b) = \frac{\sum_d \min(a_d, b_d)}{\sum_d \max(a_d, b_d)}
              = \frac{m}{|a| + |b| - m}, \qquad m = \sum_d \min(a_d, b_d),

  1 for two empty fingerprints; on 0/1 vectors it is the Tanimoto
  similarity. It is positive semi-definite (Ralaivola et al. 2005);
- the model is kernel ridge regression on the training molecules
  :math:`X = (x_1, \dots, x_n)`, per task on the labelled ones:

  .. math::
      f(x) = \mu + \sum_i \alpha_i\, k(x, x_i), \qquad
      \alpha = (K + \lambda I)^{-1} (y - \mu),

  with :math:`\mu` the mean target and :math:`\lambda` ``ridge``.

**No N×N×D intermediate.** :math:`m` is a dot product of *unary codes*:
with :math:`U(a)_{d,l} = [a_d \ge l]`, :math:`\sum_l U(a)_{d,l} U(b)_{d,l} =
\min(a_d, b_d)`. Only the columns :math:`(d, l)` that some training molecule
reaches (:math:`l \le \max_i x_{i,d}`) can be non-zero in both, so the kernel
between B molecules and the n training ones is one ``[B, D] @ [D, n]``
matrix product, D the number of such columns (a few thousand).

Shapes: B molecules asked about, n training molecules, T tasks, D active
code columns. The member predicts in the ensemble's normalised units (the
targets minus the training mean, divided by the training std), as every
member does.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Optional, Tuple

import torch
from torch import Tensor

from ..data.descriptors import MORGAN_BITS
from ..data.molecule import ECFP_COUNTS, count_fingerprints
from ..errors import DataError

__all__ = ["MorganKernelRidge", "count_fingerprints", "minmax_kernel", "KERNEL_MEMBERS",
           "DEFAULT_RIDGE"]

#: what ``train.kernel_member`` may name
KERNEL_MEMBERS = ("none", "morgan")
#: the ridge :math:`\lambda` (the kernel's diagonal is 1)
DEFAULT_RIDGE = 0.03
def minmax_kernel(a: Tensor, b: Tensor) -> Tensor:
    """The MinMax kernel ``[A, B]`` of count vectors ``a`` ``[A, D]`` and ``b``
    ``[B, D]``, directly (``[A, B, D]`` in memory: the reference for tests
    and small inputs; :class:`MorganKernelRidge` computes the same by unary
    codes)."""
    a, b = a.double(), b.double()
    low = torch.minimum(a[:, None, :], b[None, :, :]).sum(-1)
    high = torch.maximum(a[:, None, :], b[None, :, :]).sum(-1)
    return torch.where(high > 0, low / high.clamp(min=1e-300), torch.ones_like(low))


class MorganKernelRidge(torch.nn.Module):
    r"""Kernel ridge regression with the MinMax kernel on ECFP4 counts (see
    the module docstring), as an ensemble member.

    Build it with :meth:`fit`; a checkpoint's is built empty, of its sizes,
    and filled by ``load_state_dict``.

    Args:
        num_train: n, the training molecules.
        num_tasks: T.
        ridge: :math:`\lambda` (> 0), recorded for ``repr``.

    Buffers: ``train_counts`` ``[n, 2048]`` uint8, ``alpha`` ``[n, T]``
    (0 for a molecule unlabelled in that task), ``offset`` ``[T]``.

    ``forward(batch)`` reads the batch's SMILES (``batch.smiles``, a list of
    B strings, as :func:`graphformer.data.from_smiles` sets it) and returns
    ``[B, T]``; ``forward_with_reach(batch)`` also returns each molecule's
    similarity to its nearest training molecule ``[B]``
    (:meth:`predict_with_reach`).
    """

    def __init__(self, num_train: int, num_tasks: int, ridge: float = DEFAULT_RIDGE) -> None:
        super().__init__()
        if num_train < 1 or num_tasks < 1:
            raise ValueError(f"a kernel member needs >= 1 training molecule and task, got "
                             f"{num_train} and {num_tasks}")
        if not ridge > 0:
            raise ValueError(f"ridge must be > 0, got {ridge}")
        self.ridge = float(ridge)
        self.config = SimpleNamespace(task="regression", num_tasks=num_tasks, output="mean")
        self.register_buffer("train_counts", torch.zeros(num_train, MORGAN_BITS,
                                                         dtype=torch.uint8))
        self.register_buffer("alpha", torch.zeros(num_train, num_tasks, dtype=torch.float64))
        self.register_buffer("offset", torch.zeros(num_tasks, dtype=torch.float64))
        self._codes: Optional[tuple] = None

    @classmethod
    def fit(cls, counts: Tensor, y: Tensor, ridge: float = DEFAULT_RIDGE) -> "MorganKernelRidge":
        """Fit on training fingerprints ``counts`` ``[n, 2048]`` (uint8, from
        :func:`count_fingerprints`) and targets ``y`` ``[n, T]`` (NaN:
        unlabelled; each task is fitted on its labelled molecules alone). A
        task without labelled molecules predicts 0."""
        if counts.dim() != 2 or counts.size(1) != MORGAN_BITS or counts.dtype != torch.uint8:
            raise ValueError(f"counts must be uint8 [n, {MORGAN_BITS}], got "
                             f"{counts.dtype} {list(counts.shape)}")
        y = y.detach().double().reshape(counts.size(0), -1)
        model = cls(counts.size(0), y.size(1), ridge)
        model.train_counts.copy_(counts)
        gram = model.kernel(counts)                       # [n, n], float64
        for t in range(y.size(1)):
            labelled = ~torch.isnan(y[:, t])
            if not labelled.any():
                continue
            yt = y[labelled, t]
            mu = yt.mean()
            k = gram[labelled][:, labelled] + ridge * torch.eye(int(labelled.sum()),
                                                                dtype=torch.float64)
            chol = torch.linalg.cholesky(k)
            model.alpha[labelled, t] = torch.cholesky_solve((yt - mu)[:, None], chol)[:, 0]
            model.offset[t] = mu
        return model

    def _train_codes(self) -> tuple:
        """The active code columns (bit, level) and the training molecules'
        codes ``[n, D]`` and count sums ``[n]`` (cached; dropped when the
        buffers are moved, cast or loaded)."""
        if self._codes is not None:
            return self._codes
        counts = self.train_counts
        top = counts.max(0).values.long()                 # [2048] highest count per bit
        bits = torch.repeat_interleave(torch.arange(MORGAN_BITS, device=counts.device), top)
        starts = torch.cumsum(top, 0) - top
        levels = torch.arange(bits.numel(), device=counts.device) - starts[bits] + 1
        codes = self._unary(counts, bits, levels)
        sums = counts.double().sum(1)
        self._codes = (bits, levels, codes, sums)
        return self._codes

    @staticmethod
    def _unary(counts: Tensor, bits: Tensor, levels: Tensor) -> Tensor:
        # 0/1 codes: float32 sums of them are exact integers (< 2**24)
        return (counts[:, bits].long() >= levels).float()

    def kernel(self, counts: Tensor) -> Tensor:
        """The MinMax kernel ``[B, n]`` of fingerprints ``counts`` ``[B,
        2048]`` (uint8) with the training molecules (float64)."""
        bits, levels, codes, sums = self._train_codes()
        counts = counts.to(self.train_counts.device)
        low = (self._unary(counts, bits, levels) @ codes.t()).double()  # sum of minima
        high = counts.double().sum(1)[:, None] + sums[None, :] - low  # sum of maxima
        return torch.where(high > 0, low / high.clamp(min=1e-300), torch.ones_like(low))

    def predict_counts(self, counts: Tensor) -> Tensor:
        """Predictions ``[B, T]`` (float32) for fingerprints ``counts``."""
        return self.predict_with_reach(counts)[0]

    def predict_with_reach(self, counts: Tensor) -> Tuple[Tensor, Tensor]:
        """Predictions ``[B, T]`` (float32) for fingerprints ``counts`` and
        each molecule's *reach* ``[B]`` (float64): its MinMax similarity to
        the nearest training molecule, in ``[0, 1]`` (1: a training molecule's
        fingerprint). An :class:`~graphformer.models.Ensemble` scales this
        member's weight on each molecule by it: far from every training
        molecule, ridge regression falls back towards the mean."""
        k = self.kernel(counts)
        return (k @ self.alpha + self.offset).float(), k.max(1).values

    def forward(self, batch: Any) -> Tensor:
        return self.forward_with_reach(batch)[0]

    def forward_with_reach(self, batch: Any) -> Tuple[Tensor, Tensor]:
        """:meth:`predict_with_reach` of the batch's molecules: their
        fingerprints ``batch.ecfp_counts`` where the batch carries them
        (``graphformer predict`` computes them in its featurising workers),
        else those of ``batch.smiles``."""
        counts = getattr(batch, ECFP_COUNTS, None)
        if counts is not None:
            return self.predict_with_reach(counts)
        smiles = getattr(batch, "smiles", None)
        if smiles is None:
            raise DataError("the fingerprint kernel member needs each molecule's SMILES "
                            "(batch.smiles, set by graphformer.data.from_smiles); this batch "
                            "has none")
        if isinstance(smiles, str):
            smiles = [smiles]
        return self.predict_with_reach(count_fingerprints(list(smiles)))

    def _apply(self, fn, recurse=True):
        self._codes = None
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._codes = None          # the buffers are overwritten in place
        super()._load_from_state_dict(*args, **kwargs)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_train={self.train_counts.size(0)}, "
                f"num_tasks={self.alpha.size(1)}, kernel=minmax on ECFP4 counts, "
                f"ridge={self.ridge})")
