"""Set algebra on edge sets: union (with membership), intersection, difference.

Inputs need not be coalesced; outputs are (no duplicates, sorted by target
then source). Work is a sort of the concatenated edge keys: ``O(E log E)``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .._checks import check_edge_index
from ._core import edge_keys, infer_num_nodes, keys_to_edges


def _keys(sets: Tuple[Tensor, ...], num_nodes: Optional[int]) -> Tuple[list, int]:
    for k, ei in enumerate(sets):
        check_edge_index(ei, name=f"edge set {k}")
    n = infer_num_nodes(*sets, num_nodes=num_nodes)
    return [edge_keys(ei.long(), n) for ei in sets], n


def union(*sets: Tensor, num_nodes: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """Union of ``k`` edge sets.

    Returns:
        ``(edge_index [2, E], membership [E, k] bool)``: ``membership[e, s]`` is
        True when edge ``e`` belongs to ``sets[s]``. Use it as an edge feature
        (``membership.float()``) so attention can tell the patterns apart, or as
        ``head_mask`` to give heads different patterns (select columns to match
        the number of heads).
    """
    if len(sets) == 0:
        raise ValueError("union() needs at least one edge set")
    keys, n = _keys(sets, num_nodes)
    device = keys[0].device
    unique, inverse = torch.unique(torch.cat(keys), return_inverse=True)
    which = torch.cat([torch.full_like(kk, s) for s, kk in enumerate(keys)])
    membership = torch.zeros(unique.numel(), len(sets), dtype=torch.bool, device=device)
    membership[inverse, which] = True
    return keys_to_edges(unique, n), membership


def intersection(a: Tensor, b: Tensor, num_nodes: Optional[int] = None) -> Tensor:
    """Edges in both ``a`` and ``b``."""
    (ka, kb), n = _keys((a, b), num_nodes)
    ka = torch.unique(ka)
    return keys_to_edges(ka[torch.isin(ka, kb)], n)


def difference(a: Tensor, b: Tensor, num_nodes: Optional[int] = None) -> Tensor:
    """Edges in ``a`` and not in ``b``."""
    (ka, kb), n = _keys((a, b), num_nodes)
    ka = torch.unique(ka)
    return keys_to_edges(ka[~torch.isin(ka, kb)], n)
