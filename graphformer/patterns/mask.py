"""The bridge between edge sets and dense boolean masks.

A dense mask is ``[B, T, T]`` (bool) with ``mask[b, i, j]`` True when key ``j``
may be attended by query ``i`` of graph ``b``: the convention of
:func:`torch.nn.functional.scaled_dot_product_attention`'s boolean
``attn_mask`` (True = attend). Note that :class:`torch.nn.MultiheadAttention`
uses the opposite convention (True = masked out): pass it ``~mask``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._checks import check_edge_index, check_node_range, check_num_nodes
from ._core import PtrLike, as_ptr, node_info


def from_mask(mask: Tensor, ptr: Optional[PtrLike] = None) -> Tensor:
    """Dense boolean mask -> coalesced ``edge_index`` in batch numbering.

    Args:
        mask (BoolTensor [B, T, T] or [T, T]): True = ``j -> i`` is an edge.
        ptr (LongTensor [B + 1], optional): graph boundaries when graphs have
            fewer than ``T`` nodes (padded masks); default: every graph has
            ``T`` nodes. A True entry in the padding is an error.
    """
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"'mask' must be a bool tensor, got "
                        f"{getattr(mask, 'dtype', type(mask).__name__)}")
    if mask.dim() == 2:
        mask = mask.unsqueeze(0)
    if mask.dim() != 3 or mask.size(1) != mask.size(2):
        raise ValueError(f"'mask' must have shape [B, T, T] or [T, T], got {list(mask.shape)}")
    num_graphs, t = mask.size(0), mask.size(1)
    if ptr is None:
        ptr = torch.arange(num_graphs + 1, device=mask.device) * t
    ptr = as_ptr(ptr, device=mask.device)
    if ptr.numel() != num_graphs + 1:
        raise ValueError(f"'ptr' describes {ptr.numel() - 1} graphs but 'mask' has "
                         f"{num_graphs}")
    b, i, j = mask.nonzero(as_tuple=True)
    sizes = ptr.diff()
    if (sizes > t).any():
        g = int((sizes > t).nonzero()[0])
        raise ValueError(f"graph {g} has {int(sizes[g])} nodes but 'mask' has only T = {t}")
    outside = (i >= sizes[b]) | (j >= sizes[b])
    if outside.any():
        e = int(outside.nonzero()[0])
        raise ValueError(f"'mask[{int(b[e])}, {int(i[e])}, {int(j[e])}]' is True but graph "
                         f"{int(b[e])} has only {int(sizes[b[e]])} nodes")
    return torch.stack([ptr[b] + j, ptr[b] + i])


def to_mask(edge_index: Tensor, ptr: PtrLike, max_num_nodes: Optional[int] = None) -> Tensor:
    """Coalesced or not, ``edge_index`` -> dense ``BoolTensor [B, T, T]``.

    ``T`` is the largest graph size, or ``max_num_nodes`` when given. An edge
    between two graphs is an error that names it.
    """
    check_edge_index(edge_index)
    ptr = as_ptr(ptr, device=edge_index.device)
    num_nodes, num_graphs = int(ptr[-1]), ptr.numel() - 1
    check_node_range(edge_index, num_nodes, num_nodes)
    sizes = ptr.diff()
    t = int(sizes.max()) if num_graphs > 0 else 0
    if max_num_nodes is not None:
        max_num_nodes = check_num_nodes(max_num_nodes, "max_num_nodes")
        if max_num_nodes < t:
            raise ValueError(f"'max_num_nodes' = {max_num_nodes} but a graph has {t} nodes")
        t = max_num_nodes
    info = node_info(ptr)
    src, dst = edge_index.long()
    crossing = info.graph[src] != info.graph[dst]
    if crossing.any():
        e = int(crossing.nonzero()[0])
        raise ValueError(f"edge {e} ({int(src[e])} -> {int(dst[e])}) crosses from graph "
                         f"{int(info.graph[src[e]])} to graph {int(info.graph[dst[e]])}")
    mask = torch.zeros(num_graphs, t, t, dtype=torch.bool, device=edge_index.device)
    mask[info.graph[dst], info.pos[dst], info.pos[src]] = True
    return mask
