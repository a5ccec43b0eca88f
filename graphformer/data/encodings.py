"""Positional and structural encodings of graphs, through PyG's transforms.

Random-walk structural encodings (RWSE: the return probabilities of 1..k-step
random walks) and Laplacian eigenvector positional encodings, written onto
each graph as ``data.rwse`` ``[n, k]`` and ``data.lap_pe`` ``[n, k]``.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch_geometric.data import Data
from torch_geometric.transforms import (AddLaplacianEigenvectorPE, AddRandomWalkPE,
                                        BaseTransform, Compose)


class LaplacianPE(BaseTransform):
    """PyG's :class:`~torch_geometric.transforms.AddLaplacianEigenvectorPE`
    (``k`` smallest non-trivial eigenvectors of the normalised Laplacian),
    made total: a graph with ``n <= k`` nodes gets its ``n - 1`` eigenvectors
    padded with zero columns, so every molecule (single atoms included) has
    ``lap_pe`` of width ``k`` and graphs batch together."""

    def __init__(self, k: int, attr_name: str = "lap_pe") -> None:
        if k < 1:
            raise ValueError(f"'k' must be >= 1, got {k}")
        self.k = k
        self.attr_name = attr_name

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
        return data

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(k={self.k}, attr_name={self.attr_name!r})"


def encodings(rwse_steps: int = 0, lap_pe: int = 0) -> Optional[BaseTransform]:
    """The transform that adds the requested encodings (None when none are)."""
    steps: List[BaseTransform] = []
    if rwse_steps > 0:
        steps.append(AddRandomWalkPE(rwse_steps, attr_name="rwse"))
    if lap_pe > 0:
        steps.append(LaplacianPE(lap_pe))
    if not steps:
        return None
    return steps[0] if len(steps) == 1 else Compose(steps)
