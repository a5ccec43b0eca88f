"""Attention masks of sequence models, as edge sets.

Each builder takes ``ptr`` (graph boundaries, or an int for one graph) and
returns a coalesced ``edge_index`` ``[2, E]`` (row 0 = key ``j``, row 1 = query
``i``, sorted by ``i`` then ``j``) in time and memory proportional to ``E``:
no ``T x T`` intermediate is ever built. ``i`` and ``j`` below are positions
inside a graph; edges never cross graphs.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._checks import check_nonneg_int
from ._core import PtrLike, as_ptr, coalesce, node_info, range_edges


def full(ptr: PtrLike) -> Tensor:
    r"""All pairs, self included: :math:`j \to i` for every :math:`i, j`."""
    ptr = as_ptr(ptr)
    info = node_info(ptr)
    return range_edges(torch.arange(info.pos.numel(), device=ptr.device), info.start, info.size)


def causal(ptr: PtrLike) -> Tensor:
    r"""Causal (autoregressive) attention: :math:`j \le i`."""
    ptr = as_ptr(ptr)
    info = node_info(ptr)
    return range_edges(torch.arange(info.pos.numel(), device=ptr.device), info.start, info.pos + 1)


def window(ptr: PtrLike, size: int, causal: bool = True) -> Tensor:
    r"""Sliding window: :math:`0 \le i - j \le \text{size}`; with
    ``causal=False``, :math:`|i - j| \le \text{size}`."""
    check_nonneg_int(size, "size")
    ptr = as_ptr(ptr)
    info = node_info(ptr)
    lo = (info.pos - size).clamp_min(0)
    hi = info.pos if causal else torch.minimum(info.pos + size, info.size - 1)
    dst = torch.arange(info.pos.numel(), device=ptr.device)
    return range_edges(dst, info.start + lo, hi - lo + 1)


def strided(ptr: PtrLike, stride: int) -> Tensor:
    r"""Strided attention of the Sparse Transformer:
    :math:`j \le i` and :math:`(i - j) \bmod \text{stride} = 0`."""
    check_nonneg_int(stride, "stride", minimum=1)
    ptr = as_ptr(ptr)
    info = node_info(ptr)
    dst = torch.arange(info.pos.numel(), device=ptr.device)
    first = info.start + info.pos % stride
    return range_edges(dst, first, info.pos // stride + 1, step=stride)


def block(ptr: PtrLike, size: int) -> Tensor:
    r"""Block-diagonal attention:
    :math:`\lfloor i / \text{size} \rfloor = \lfloor j / \text{size} \rfloor`."""
    check_nonneg_int(size, "size", minimum=1)
    ptr = as_ptr(ptr)
    info = node_info(ptr)
    lo = torch.div(info.pos, size, rounding_mode="floor") * size
    count = torch.minimum(torch.full_like(lo, size), info.size - lo)
    dst = torch.arange(info.pos.numel(), device=ptr.device)
    return range_edges(dst, info.start + lo, count)


def global_tokens(ptr: PtrLike, index: Tensor) -> Tensor:
    r"""Global tokens (Longformer, BigBird): each node ``g`` in ``index`` attends
    to, and is attended by, every node of its graph.

    Args:
        ptr: graph boundaries.
        index (LongTensor [G]): global node ids (batch numbering) of the global
            tokens; repeats are allowed.

    Returns:
        The edges :math:`g \to i` and :math:`j \to g` for every global ``g`` and
        every ``i``, ``j`` of ``g``'s graph (``g \to g`` included) — and no
        others: union it with a local pattern to get the usual sparse mask.
    """
    ptr = as_ptr(ptr)
    if isinstance(index, (list, tuple)) and not index:      # no global tokens
        index = torch.zeros(0, dtype=torch.long)
    index = torch.as_tensor(index, device=ptr.device)
    if index.dtype.is_floating_point or index.dtype == torch.bool or index.dim() > 1:
        raise TypeError(f"'index' must be a 1-D integer tensor of node ids, got "
                        f"dtype {index.dtype} and shape {list(index.shape)}")
    index = index.long().view(-1)
    num_nodes = int(ptr[-1])
    bad = (index < 0) | (index >= num_nodes)
    if bad.any():
        k = int(bad.nonzero()[0])
        raise IndexError(f"'index[{k}]' = {int(index[k])} is not a node of the batch "
                         f"(valid ids 0..{num_nodes - 1})")
    info = node_info(ptr)
    start, size = info.start[index], info.size[index]
    attended = range_edges(index, start, size)  # every j of the graph -> g
    attends = attended.flip(0)  # g -> every i of the graph
    return coalesce(torch.cat([attended, attends], dim=1), num_nodes=num_nodes)


def random(ptr: PtrLike, k: int, generator: Optional[torch.Generator] = None) -> Tensor:
    r"""``k`` distinct random keys per query, drawn uniformly from the query's
    graph (all of them when the graph has at most ``k`` nodes).

    Sampling uses Floyd's algorithm vectorised over queries: ``O(N k^2)`` time,
    ``O(N k)`` memory, independent of graph size. Pass a seeded
    ``torch.Generator`` for reproducible sets.
    """
    check_nonneg_int(k, "k")
    ptr = as_ptr(ptr)
    info = node_info(ptr)
    num_nodes, device = info.pos.numel(), ptr.device
    m = info.size.clamp_max(k)  # keys drawn per query
    chosen = torch.full((num_nodes, k), -1, dtype=torch.long, device=device)
    for s in range(k):
        top = info.size - m + s  # Floyd: draw r uniformly in [0, top]
        u = torch.rand(num_nodes, generator=generator, dtype=torch.float64, device=device)
        r = torch.minimum((u * (top + 1)).floor().long(), top)
        seen = (chosen[:, :s] == r.unsqueeze(1)).any(dim=1)
        r = torch.where(seen, top, r)
        chosen[:, s] = torch.where(s < m, r, -1)
    big = torch.iinfo(torch.long).max
    chosen = torch.where(chosen < 0, big, chosen).sort(dim=1).values
    keep = chosen != big
    dst = torch.arange(num_nodes, device=device).unsqueeze(1).expand_as(chosen)[keep]
    src = (chosen + info.start.unsqueeze(1))[keep]
    return torch.stack([src, dst])


def cross(ptr_src: PtrLike, ptr_dst: PtrLike) -> Tensor:
    r"""Complete bipartite edges for cross-attention: every source node of graph
    ``b`` to every target node of graph ``b``.

    Sources and targets are numbered separately (``ptr_src`` and ``ptr_dst``
    must describe the same number of graphs), as for a layer called with
    ``x = (x_src, x_dst)``.
    """
    ptr_src, ptr_dst = as_ptr(ptr_src, name="ptr_src"), as_ptr(ptr_dst, name="ptr_dst")
    if ptr_src.numel() != ptr_dst.numel():
        raise ValueError(f"'ptr_src' describes {ptr_src.numel() - 1} graphs but 'ptr_dst' "
                         f"describes {ptr_dst.numel() - 1}")
    ptr_src = ptr_src.to(ptr_dst.device)
    info = node_info(ptr_dst)
    dst = torch.arange(info.pos.numel(), device=ptr_dst.device)
    return range_edges(dst, ptr_src[info.graph], ptr_src.diff()[info.graph])
