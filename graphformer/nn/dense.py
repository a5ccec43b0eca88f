r"""The ``"dense"`` attention backend: each graph padded to the largest one,
the edge set written as a mask, attention computed as batched matrix products.

For B graphs of at most T nodes (N nodes, E edges, H heads, C channels per
head, D edge features), with :math:`\mathbf{M}^h_{ij} = 0` for an edge
:math:`j \to i` seen by head :math:`h` and :math:`-\infty` otherwise:

.. math::
    \mathbf{A}^h = \operatorname{softmax}\!\left(
        \frac{\mathbf{Q}^h {\mathbf{K}^h}^\top + \mathbf{B}^h}{\sqrt{C}}
        + \mathbf{M}^h \right), \qquad
    \mathbf{O}^h = \mathbf{A}^h \mathbf{V}^h
        + \textstyle\sum_j \mathbf{A}^h_{ij} \mathbf{W}^h_{ve}\mathbf{e}_{ij}

where :math:`\mathbf{B}^h_{ij}` are the edge-feature score terms of
:mod:`graphformer.nn.edge_terms` (computed per edge or per type and
scattered into the [B, H, T, T] bias). Without edge features, attention weights or head masks
this is one call of :func:`torch.nn.functional.scaled_dot_product_attention`
with a boolean mask. Duplicate edges (the same pair twice) count twice in the
sparse softmax; without edge features the dense path reproduces that exactly
with an additive :math:`\log(\text{count})`; with edge features they are
refused (each copy has its own features).

Cost: :math:`O(B H T^2 C)` time and :math:`O(B H T^2)` memory, whatever the
number of edges: fastest when the edge set is dense within each graph
(molecules with all-pairs attention, full / causal / block token patterns).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .call import AttentionCall
from .functional import dropout
from .sparse import sparse_attention


def dense_attention(call: AttentionCall) -> Tuple[Tensor, Optional[Tensor]]:
    """Attention over an edge set on padded per-graph blocks (the ``"dense"``
    backend).

    Same argument and results as :func:`graphformer.nn.sparse.sparse_attention`;
    ``alpha`` is None unless ``call.need_weights``. Raises ValueError when the
    edge set has no per-graph layout (bipartite, unsorted ``batch``, an edge
    joining two graphs) or has duplicate edges with edge features.
    """
    edges, head_mask = call.edges, call.head_mask
    layout = edges.layout
    if layout is None:
        raise ValueError("the dense backend needs self-attention within graphs whose nodes "
                         "are contiguous ('batch' sorted, no edge joining two graphs); "
                         f"{edges.why_not_dense()}; use backend='sparse'")
    q, k, v, terms = call.q, call.k, call.v, call.terms
    if not (bool(torch.isfinite(k).all()) and bool(torch.isfinite(v).all())):
        # A padded product multiplies every key and value of a graph, also
        # those no edge reads (0 · NaN = NaN): keep non-finite input to the
        # sparse kernels, which read the edges only.
        return sparse_attention(call)
    N, H, C = q.shape
    B, T = layout.num_graphs, layout.max_nodes
    E = edges.num_edges
    scale = 1.0 / math.sqrt(C)
    if terms is not None and not edges.coalesced:
        raise ValueError("the dense backend cannot represent duplicate edges with edge "
                         "features (each copy has its own features); coalesce the edges "
                         "or use backend='sparse'")

    # Number of edges at every [B, H or 1, T, T] position (per head only when
    # heads see different edges).
    if head_mask is not None:
        idx = layout.edge_index_bhtt(H)                                     # [E, H]
        count = torch.bincount(idx[head_mask], minlength=B * H * T * T).view(B, H, T, T)
    else:
        idx = None
        count = layout.edge_counts()                                        # [B, 1, T, T]
    duplicates = not edges.coalesced
    allowed = count > 0
    # A row without edges attends to nothing: let it see its own diagonal so
    # that softmax stays finite, and zero its output afterwards.
    empty = ~allowed.any(-1, keepdim=True)                                  # [B, H|1, T, 1]
    eye = torch.eye(T, dtype=torch.bool, device=q.device)
    allowed = allowed | (empty & eye)

    qd, kd, vd = layout.to_dense(q), layout.to_dense(k), layout.to_dense(v)
    explicit = terms is not None or call.need_weights
    if not explicit:
        if duplicates:
            mask = torch.where(allowed, count.clamp(min=1).to(q.dtype).log(),
                               torch.full_like(count, float("-inf"), dtype=q.dtype))
        else:
            mask = allowed
        od = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=mask,
                                            dropout_p=call.dropout if call.training else 0.0)
        od = od.masked_fill(empty, 0.0)
        return layout.from_dense(od), None

    if idx is None:
        idx = layout.edge_index_bhtt(H)
    score = (qd @ kd.transpose(-1, -2))                                     # [B, H, T, T]
    bias = terms.scores(q, k) if terms is not None else None               # [H, E]
    if bias is not None:
        bias = bias.t()
        if head_mask is not None:
            bias = bias.masked_fill(~head_mask, 0.0)
        score = score.reshape(-1).index_add(0, idx.reshape(-1), bias.reshape(-1))
        score = score.view(B, H, T, T)
    score = score * scale
    if duplicates:
        score = score + count.clamp(min=1).to(score.dtype).log()  # broadcasts over heads
    score = score.masked_fill(~allowed, float("-inf"))
    attn = torch.softmax(score, dim=-1)
    attn = attn.masked_fill(empty, 0.0)
    alpha = None
    if call.need_weights:
        per_edge = attn.reshape(-1).index_select(0, idx.reshape(-1)).view(E, H)
        if duplicates:
            per_edge = per_edge / count.expand(B, H, T, T).reshape(-1).index_select(
                0, idx.reshape(-1)).view(E, H)
        if head_mask is not None:
            per_edge = per_edge.masked_fill(~head_mask, 0.0)
        alpha = per_edge
    weights = dropout(attn, p=call.dropout, training=call.training)
    out = layout.from_dense(weights @ vd)                                   # [N, H, C]
    if terms is not None:
        w_edge = weights.reshape(-1).index_select(0, idx.reshape(-1)).view(E, H)
        if head_mask is not None:
            w_edge = w_edge.masked_fill(~head_mask, 0.0)
        edge_values = terms.values(w_edge.t())
        if edge_values is not None:
            out = out + edge_values
    return out, alpha
