"""Attention masks and sparsity patterns as edge sets.

Every builder returns ``edge_index``, a ``LongTensor [2, E]`` with row 0 the
source (key, ``j``) and row 1 the target (query, ``i``), in the batch's global
node numbering, coalesced: no duplicates, sorted by target then source. Batches
are described by ``ptr`` (``LongTensor [B + 1]`` as PyG's ``Batch.ptr``, or an
int for one graph); edges never cross graphs. Nothing builds an ``N x N`` or
``T x T`` intermediate except :func:`to_mask`, whose output is that large.

Example::

    >>> from graphformer import patterns
    >>> ptr = torch.tensor([0, 3, 5])           # two sequences: 3 and 2 tokens
    >>> local = patterns.window(ptr, size=1)     # j in {i-1, i}
    >>> glob = patterns.global_tokens(ptr, torch.tensor([0, 3]))
    >>> edge_index, member = patterns.union(local, glob)
"""
from ._core import NodeInfo, as_ptr, coalesce, edge_keys, keys_to_edges, node_info
from .algebra import difference, intersection, union
from .graph import graph, k_hop
from .mask import from_mask, to_mask
from .sequence import block, causal, cross, full, global_tokens, random, strided, window

__all__ = [
    "as_ptr", "coalesce", "edge_keys", "keys_to_edges", "node_info", "NodeInfo",
    "full", "causal", "window", "strided", "block", "global_tokens", "random", "cross",
    "graph", "k_hop",
    "from_mask", "to_mask",
    "union", "intersection", "difference",
]
