"""Edge sets from a graph's own edges: the graph itself and its k-hop closure.

Both work on a whole batch at once: a batch's adjacency is block-diagonal, so
products of sparse edge sets never leave a graph, with no per-graph loop and
no dense adjacency.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._checks import check_edge_index, check_nonneg_int
from ._core import coalesce, edge_keys, infer_num_nodes, keys_to_edges


def _with_self_loops(edge_index: Tensor, num_nodes: int) -> Tensor:
    loops = torch.arange(num_nodes, device=edge_index.device).expand(2, -1)
    return coalesce(torch.cat([edge_index, loops], dim=1), num_nodes=num_nodes)


def graph(edge_index: Tensor, self_loops: bool = False,
          num_nodes: Optional[int] = None) -> Tensor:
    r"""The graph's own edges as an attention pattern (coalesced).

    Args:
        edge_index (LongTensor [2, E]): the graph's edges, ``j -> i``.
        self_loops (bool): add ``i -> i`` for every node (existing self loops
            are kept either way).
        num_nodes (int, optional): number of nodes (default: max index + 1);
            needed for self loops of isolated trailing nodes.
    """
    check_edge_index(edge_index)
    edge_index = edge_index.long()
    n = infer_num_nodes(edge_index, num_nodes=num_nodes)
    if self_loops:
        return _with_self_loops(edge_index, n)
    return coalesce(edge_index, num_nodes=n)


def k_hop(edge_index: Tensor, k: int, num_nodes: Optional[int] = None,
          self_loops: bool = False) -> Tensor:
    r"""The k-hop closure: :math:`j \to i` whenever :math:`j \ne i` and there is a
    directed path from ``j`` to ``i`` of at most ``k`` edges (shortest-path
    distance 1..k). With ``self_loops=True``, ``i -> i`` is added for every node.

    Computed as a breadth-first frontier expansion on the whole batch: each
    round joins the pairs first reached in the previous round with the edge
    list (a sparse-sparse product in CSR form), so the cost is proportional to
    the number of paths explored, never to ``N^2``.
    """
    check_edge_index(edge_index)
    check_nonneg_int(k, "k")
    edge_index = edge_index.long()
    n = infer_num_nodes(edge_index, num_nodes=num_nodes)
    base = edge_index[:, edge_index[0] != edge_index[1]]
    base = coalesce(base, num_nodes=n)
    if k == 0:
        base = base[:, :0]
    # CSR of the edges by source: the out-neighbours of m are
    # by_src[1, rowptr[m]:rowptr[m + 1]].
    order = torch.argsort(base[0], stable=True)
    targets_by_src = base[1, order]
    outdeg = torch.bincount(base[0], minlength=n)
    rowptr = torch.cat([outdeg.new_zeros(1), outdeg.cumsum(0)])

    known = edge_keys(base, n)  # sorted, unique
    frontier = base
    for _ in range(max(k - 1, 0)):
        if frontier.size(1) == 0:
            break
        j, m = frontier
        count = outdeg[m]
        total = int(count.sum())
        rep = torch.repeat_interleave(torch.arange(j.numel(), device=j.device), count,
                                      output_size=total)
        offset = torch.arange(total, device=j.device) - (count.cumsum(0) - count)[rep]
        i = targets_by_src[rowptr[m[rep]] + offset]
        pairs = torch.stack([j[rep], i])
        keys = torch.unique(edge_keys(pairs[:, pairs[0] != pairs[1]], n))
        keys = keys[~torch.isin(keys, known)]
        frontier = keys_to_edges(keys, n)
        known = torch.cat([known, keys]).sort().values
    result = keys_to_edges(known, n)
    return _with_self_loops(result, n) if self_loops else result
