"""Shared machinery of the pattern builders.

Conventions (the same for every builder in :mod:`graphformer.patterns`):

* an edge set is ``edge_index``, a ``LongTensor [2, E]``; row 0 is the source
  (key, ``j``) and row 1 the target (query, ``i``), in the batch's global node
  numbering;
* a batch of graphs is described by ``ptr``, a ``LongTensor [B + 1]`` of graph
  boundaries as in PyG's ``Batch.ptr`` (an ``int`` ``n`` means one graph of
  ``n`` nodes);
* outputs are *coalesced*: no duplicate edges, sorted by target and then by
  source (key ``i * N + j`` ascending). This is CSR order by target, the order
  in which attention normalises over each query's keys.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor
from torch_geometric.utils.sparse import ptr2index

from .._checks import check_edge_index, check_num_nodes

PtrLike = Union[Tensor, int]


def as_ptr(ptr: PtrLike, device: Optional[torch.device] = None,
           name: str = "ptr") -> Tensor:
    """Validate ``ptr`` and return it as a 1-D ``LongTensor [B + 1]``."""
    if isinstance(ptr, bool):
        raise TypeError(f"'{name}' must be a LongTensor [B + 1] or an int, got bool")
    if isinstance(ptr, int):
        if ptr < 0:
            raise ValueError(f"'{name}' as a graph size must be >= 0, got {ptr}")
        return torch.tensor([0, ptr], dtype=torch.long, device=device)
    if not isinstance(ptr, Tensor):
        raise TypeError(f"'{name}' must be a LongTensor [B + 1] or an int, "
                        f"got {type(ptr).__name__}")
    if ptr.dtype.is_floating_point or ptr.dtype == torch.bool or ptr.is_complex():
        raise TypeError(f"'{name}' must have an integer dtype, got {ptr.dtype}")
    if ptr.dim() != 1 or ptr.numel() == 0:
        raise ValueError(f"'{name}' must have shape [B + 1] with B >= 0, "
                         f"got {list(ptr.shape)}")
    ptr = ptr.long()
    if torch.compiler.is_compiling():   # the value checks read data: eager mode only
        return ptr if device is None else ptr.to(device)
    if int(ptr[0]) != 0:
        raise ValueError(f"'{name}[0]' must be 0, got {int(ptr[0])}")
    step = ptr.diff()
    if (step < 0).any():
        b = int((step < 0).nonzero()[0])
        raise ValueError(f"'{name}' must be non-decreasing, but {name}[{b + 1}] = "
                         f"{int(ptr[b + 1])} < {name}[{b}] = {int(ptr[b])}")
    return ptr if device is None else ptr.to(device)


class NodeInfo(NamedTuple):
    """Per-node view of a batch: graph id, first node of the graph, position
    inside the graph, and graph size (each ``LongTensor [N]``)."""
    graph: Tensor
    start: Tensor
    pos: Tensor
    size: Tensor


def node_info(ptr: Tensor) -> NodeInfo:
    """Graph, first node, position inside its graph and graph size of every
    node of the batch described by ``ptr`` ([B + 1]; PyG's ``ptr2index``
    gives the graph)."""
    sizes = ptr.diff()
    num_nodes = int(ptr[-1])
    graph = ptr2index(ptr, num_nodes)
    start = ptr[graph]
    pos = torch.arange(num_nodes, device=ptr.device) - start
    return NodeInfo(graph, start, pos, sizes[graph])


def range_edges(dst: Tensor, first: Tensor, count: Tensor, step: int = 1) -> Tensor:
    """Edges ``first[q] + step * t -> dst[q]`` for ``t`` in ``range(count[q])``.

    Memory and time are proportional to the number of edges produced. With
    ``dst`` ascending and ``step > 0`` the output is already coalesced.
    """
    count = count.clamp_min(0)
    total = int(count.sum())
    tgt = torch.repeat_interleave(dst, count, output_size=total)
    offset = torch.repeat_interleave(count.cumsum(0) - count, count, output_size=total)
    t = torch.arange(total, device=dst.device) - offset
    src = torch.repeat_interleave(first, count, output_size=total) + step * t
    return torch.stack([src, tgt])


def infer_num_nodes(*edge_sets: Tensor, num_nodes: Optional[int] = None) -> int:
    """The number of nodes: ``num_nodes`` if given (checked), else max index + 1."""
    found = 0
    for ei in edge_sets:
        if ei.numel() > 0:
            found = max(found, int(ei.max()) + 1)
    if num_nodes is None:
        return found
    num_nodes = check_num_nodes(num_nodes)
    if num_nodes < found:
        raise ValueError(f"'num_nodes' is {num_nodes} but an edge set uses node index "
                         f"{found - 1}")
    return num_nodes


def edge_keys(edge_index: Tensor, num_nodes: int) -> Tensor:
    """The sort key ``i * N + j`` of every edge (target-major order), int64
    whatever the index dtype (an int32 product overflows past 46,340 nodes)."""
    edge_index = edge_index.long()
    return edge_index[1] * max(num_nodes, 1) + edge_index[0]


def keys_to_edges(keys: Tensor, num_nodes: int) -> Tensor:
    """The edges ``[2, E]`` of sort keys from :func:`edge_keys` (its inverse)."""
    n = max(num_nodes, 1)
    return torch.stack([keys % n, torch.div(keys, n, rounding_mode="floor")])


def coalesce(edge_index: Tensor, num_nodes: Optional[int] = None) -> Tensor:
    """Remove duplicate edges and sort by target, then source.

    Args:
        edge_index (LongTensor [2, E]): any edge set.
        num_nodes (int, optional): the number of nodes (default: max index + 1).

    Returns:
        LongTensor [2, E'] in the documented order of :mod:`graphformer.patterns`.
    """
    check_edge_index(edge_index)
    edge_index = edge_index.long()
    n = infer_num_nodes(edge_index, num_nodes=num_nodes)
    return keys_to_edges(torch.unique(edge_keys(edge_index, n)), n)
