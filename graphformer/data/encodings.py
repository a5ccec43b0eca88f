"""Positional and structural encodings of graphs, through PyG's transforms.

Random-walk structural encodings (RWSE: the return probabilities of 1..k-step
random walks) and Laplacian eigenvector positional encodings, written onto
each graph as ``data.rwse`` ``[n, k]`` and ``data.lap_pe`` ``[n, k]``.
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.transforms import (AddLaplacianEigenvectorPE, AddRandomWalkPE,
                                        BaseTransform, Compose)


class RandomWalkSE(BaseTransform):
    r"""Random-walk structural encodings: PyG's
    :class:`~torch_geometric.transforms.AddRandomWalkPE` (its dense path, the
    one it takes for graphs of up to 2,000 nodes), computed in NumPy.

    With :math:`\mathbf{P} = \mathbf{D}^{-1}\mathbf{A}` the random walk's
    transition matrix (out-degrees clamped to 1; a repeated edge counts in
    the degree but enters :math:`\mathbf{A}` once, as there), node :math:`i`
    gets

    .. math::
        \mathrm{rwse}_i = \big( (\mathbf{P})_{ii}, (\mathbf{P}^2)_{ii}, \dots,
            (\mathbf{P}^k)_{ii} \big)

    written as ``data[attr_name]`` :math:`(n, k)` (float32), equal to PyG's to
    float32 rounding. A molecule's few dozen atoms make PyG's per-graph torch
    calls the larger part of its cost; these are NumPy's, several times
    faster. Larger graphs, graphs with ``edge_weight`` and graphs off the CPU
    go to PyG's transform."""

    def __init__(self, walk_length: int, attr_name: str = "rwse") -> None:
        if walk_length < 1:
            raise ValueError(f"'walk_length' must be >= 1, got {walk_length}")
        self.walk_length = walk_length
        self.attr_name = attr_name

    def forward(self, data: Data) -> Data:
        n = data.num_nodes
        if n > 2_000 or getattr(data, "edge_weight", None) is not None \
                or data.edge_index.device.type != "cpu":
            return AddRandomWalkPE(self.walk_length, attr_name=self.attr_name)(data)
        row, col = data.edge_index.numpy()
        degree = np.maximum(np.bincount(row, minlength=n), 1).astype(np.float32)
        step = np.zeros((n, n), dtype=np.float32)
        step[row, col] = np.float32(1.0) / degree[row]
        walks = np.empty((self.walk_length, n, n), dtype=np.float32)  # P^1 .. P^k
        walks[0] = step
        for k in range(1, self.walk_length):
            np.matmul(walks[k - 1], step, out=walks[k])
        pe = walks.reshape(self.walk_length, n * n)[:, :: n + 1].T  # the diagonals
        data[self.attr_name] = torch.from_numpy(np.ascontiguousarray(pe))
        return data

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(walk_length={self.walk_length}, "
                f"attr_name={self.attr_name!r})")


def canonical_signs(vectors: Tensor) -> Tensor:
    """The columns of ``vectors`` ``[n, k]`` (eigenvectors, each defined up to
    its sign), each times the sign of its entry of largest magnitude (the
    first such entry): the same columns whatever signs they came with. A zero
    column stays zero."""
    if vectors.numel() == 0:
        return vectors
    top = vectors.abs().argmax(0, keepdim=True)                 # first maximum
    sign = torch.sign(vectors.gather(0, top))
    return vectors * torch.where(sign == 0, torch.ones_like(sign), sign)


class LaplacianPE(BaseTransform):
    """PyG's :class:`~torch_geometric.transforms.AddLaplacianEigenvectorPE`
    (``k`` smallest non-trivial eigenvectors of the normalised Laplacian),
    made total: a graph with ``n <= k`` nodes gets its ``n - 1`` eigenvectors
    padded with zero columns, so every molecule (single atoms included) has
    ``lap_pe`` of width ``k`` and graphs batch together; and deterministic:
    PyG flips each eigenvector's sign at random (from the global random
    state), here each is turned so that its entry of largest magnitude (the
    first of them) is positive, so that the same molecule gets the same
    encoding in every run (``predict`` as in training; the model flips signs
    at random itself while training)."""

    def __init__(self, k: int, attr_name: str = "lap_pe") -> None:
        if k < 1:
            raise ValueError(f"'k' must be >= 1, got {k}")
        self.k = k
        self.attr_name = attr_name
        # part of the data caches' key: caches of random signs are not reused
        self.signs = "largest-entry-positive"

    def forward(self, data: Data) -> Data:
        n = data.num_nodes
        if n > self.k + 1:
            data = AddLaplacianEigenvectorPE(self.k, attr_name=self.attr_name)(data)
        else:
            pe = torch.zeros(n, self.k)
            if n > 1:
                small = AddLaplacianEigenvectorPE(n - 1, attr_name=self.attr_name,
                                                  is_undirected=True)(data.clone())
                pe[:, : n - 1] = small[self.attr_name]
            data[self.attr_name] = pe
        data[self.attr_name] = canonical_signs(data[self.attr_name])
        return data

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(k={self.k}, attr_name={self.attr_name!r})"


def encodings(rwse_steps: int = 0, lap_pe: int = 0) -> Optional[BaseTransform]:
    """The transform that adds the requested encodings (None when none are)."""
    steps: List[BaseTransform] = []
    if rwse_steps > 0:
        steps.append(RandomWalkSE(rwse_steps, attr_name="rwse"))
    if lap_pe > 0:
        steps.append(LaplacianPE(lap_pe))
    if not steps:
        return None
    return steps[0] if len(steps) == 1 else Compose(steps)
