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
        + \mathbf{W}^h_{ve} \textstyle\sum_j \mathbf{A}^h_{ij} \mathbf{e}_{ij}

where :math:`\mathbf{B}^h_{ij}` are the edge-feature score terms of
:mod:`graphformer.nn.sparse` (computed per edge and scattered into the
[B, H, T, T] bias). Without edge features, attention weights or head masks
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
from functools import cached_property
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .sparse import EdgeCSR, Grouping, ScatterSum, edge_scores


class DenseLayout:
    """Where each node and edge sits in the padded [B, T] / [B, T, T] layout
    (``crossing`` names an edge that joins two graphs, if any: then the
    layout does not apply).

    Args:
        ptr (LongTensor [B + 1]): node offsets of the graphs (graphs are
            contiguous blocks of nodes).
        csr (EdgeCSR): the edges (grouped by target).
    """

    def __init__(self, ptr: Tensor, csr: EdgeCSR) -> None:
        dev = ptr.device
        sizes = ptr.diff()
        self.num_graphs = sizes.numel()
        self.max_nodes = int(sizes.max()) if self.num_graphs > 0 else 0
        N = int(ptr[-1])
        self.batch = torch.repeat_interleave(torch.arange(self.num_graphs, device=dev), sizes,
                                             output_size=N)
        self.pos = torch.arange(N, device=dev) - ptr[:-1].index_select(0, self.batch)
        dst, src = csr.row, csr.col
        b = self.batch.index_select(0, dst)
        bad = (self.batch.index_select(0, src) != b).nonzero()
        #: the first edge (in CSR order) that joins two graphs, or None
        self.crossing: Optional[int] = int(bad[0, 0]) if bad.numel() > 0 else None
        # every graph full size and in order: padding is a reshape
        self.uniform = N == self.num_graphs * self.max_nodes
        self.edge_graph = b
        self._csr = csr

    @cached_property
    def edge_flat(self) -> Tensor:
        """Index of every edge in a [B, T, T] tensor, [E] (built when the dense
        backend runs, not when ``auto`` only inspects the layout)."""
        T, csr = self.max_nodes, self._csr
        i, j = self.pos.index_select(0, csr.row), self.pos.index_select(0, csr.col)
        return (self.edge_graph * T + i) * T + j

    def to_dense(self, x: Tensor) -> Tensor:
        """[N, H, C] -> [B, H, T, C] (zeros at padding)."""
        N, H, C = x.shape
        if self.uniform:
            return x.view(self.num_graphs, self.max_nodes, H, C).transpose(1, 2)
        out = x.new_zeros(self.num_graphs * self.max_nodes, H, C)
        out = out.index_copy(0, self.batch * self.max_nodes + self.pos, x)
        return out.view(self.num_graphs, self.max_nodes, H, C).transpose(1, 2)

    def from_dense(self, x: Tensor) -> Tensor:
        """[B, H, T, C] -> [N, H, C]."""
        B, H, T, C = x.shape
        flat = x.transpose(1, 2).reshape(B * T, H, C)
        if self.uniform:            # no padding rows to drop
            return flat
        return flat.index_select(0, self.batch * T + self.pos)

    def edge_index_bhtt(self, heads: int) -> Tensor:
        """Flat index of every (edge, head) in a [B, H, T, T] tensor, [E, H]."""
        T2 = self.max_nodes * self.max_nodes
        within = self.edge_flat - self.edge_graph * T2
        hs = torch.arange(heads, device=within.device)
        return ((self.edge_graph * heads).unsqueeze(1) + hs) * T2 + within.unsqueeze(1)


def dense_attention(
    q: Tensor, k: Tensor, v: Tensor, csr: EdgeCSR, layout: DenseLayout,
    edge_attr: Optional[Tensor] = None,
    w_eq: Optional[Tensor] = None, w_ek: Optional[Tensor] = None, w_ev: Optional[Tensor] = None,
    head_mask: Optional[Tensor] = None, dropout: float = 0.0, training: bool = False,
    need_weights: bool = False,
) -> Tuple[Tensor, Optional[Tensor]]:
    """Attention over an edge set on padded per-graph blocks.

    Same arguments and results as :func:`graphformer.nn.sparse.sparse_attention`
    (plus the :class:`DenseLayout`); ``alpha`` is None unless ``need_weights``.
    Raises ValueError when an edge joins two graphs (``layout.crossing``).
    """
    if layout.crossing is not None:
        e = layout.crossing
        raise ValueError(f"edge {e} ({int(csr.col[e])} -> {int(csr.row[e])}) joins two graphs; "
                         f"the dense backend needs every edge inside one graph "
                         f"(use backend='sparse')")
    N, H, C = q.shape
    B, T = layout.num_graphs, layout.max_nodes
    E = csr.num_edges
    scale = 1.0 / math.sqrt(C)
    has_edge_scores = edge_attr is not None and (w_eq is not None or w_ek is not None)
    has_edge_values = edge_attr is not None and w_ev is not None

    # Number of edges at every [B, H or 1, T, T] position (per head only when
    # heads see different edges).
    if head_mask is not None:
        idx = layout.edge_index_bhtt(H)                                     # [E, H]
        count = torch.bincount(idx[head_mask], minlength=B * H * T * T).view(B, H, T, T)
    else:
        idx = None
        count = torch.bincount(layout.edge_flat, minlength=B * T * T).view(B, 1, T, T)
    duplicates = bool((count > 1).any()) if E > 0 else False
    if duplicates and (has_edge_scores or has_edge_values):
        raise ValueError("the dense backend cannot represent duplicate edges with edge "
                         "features (each copy has its own features); coalesce the edges "
                         "or use backend='sparse'")
    allowed = count > 0
    # A row without edges attends to nothing: let it see its own diagonal so
    # that softmax stays finite, and zero its output afterwards.
    empty = ~allowed.any(-1, keepdim=True)                                  # [B, H|1, T, 1]
    eye = torch.eye(T, dtype=torch.bool, device=q.device)
    allowed = allowed | (empty & eye)

    qd, kd, vd = layout.to_dense(q), layout.to_dense(k), layout.to_dense(v)
    explicit = has_edge_scores or has_edge_values or need_weights
    if not explicit:
        if duplicates:
            mask = torch.where(allowed, count.clamp(min=1).to(q.dtype).log(),
                               torch.full_like(count, float("-inf"), dtype=q.dtype))
        else:
            mask = allowed
        od = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=mask,
                                            dropout_p=dropout if training else 0.0)
        od = od.masked_fill(empty, 0.0)
        return layout.from_dense(od), None

    if idx is None:
        idx = layout.edge_index_bhtt(H)
    score = (qd @ kd.transpose(-1, -2))                                     # [B, H, T, T]
    if has_edge_scores:
        bias = edge_scores(q, k, edge_attr, w_eq, w_ek, csr)                # [E, H]
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
    if need_weights:
        per_edge = attn.reshape(-1).index_select(0, idx.reshape(-1)).view(E, H)
        if duplicates:
            per_edge = per_edge / count.expand(B, H, T, T).reshape(-1).index_select(
                0, idx.reshape(-1)).view(E, H)
        if head_mask is not None:
            per_edge = per_edge.masked_fill(~head_mask, 0.0)
        alpha = per_edge
    weights = F.dropout(attn, p=dropout, training=training)
    out = layout.from_dense(weights @ vd)                                   # [N, H, C]
    if has_edge_values:
        D = edge_attr.size(1)
        w_edge = weights.reshape(-1).index_select(0, idx.reshape(-1)).view(E, H)
        if head_mask is not None:
            w_edge = w_edge.masked_fill(~head_mask, 0.0)
        agg = ScatterSum.apply(w_edge.t(), edge_attr, Grouping.targets(csr))  # [H, N, D]
        out = out + torch.einsum("hnd,hcd->nhc", agg, w_ev.view(H, C, D))
    return out, alpha
