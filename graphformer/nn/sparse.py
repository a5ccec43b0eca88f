r"""The ``"sparse"`` attention backend: edges grouped by target (CSR), computed
with sampled dense-dense products (SDDMM) and sparse-dense products (SpMM).

For every head :math:`h` and edge :math:`e = (j \to i)` (N nodes, E edges,
H heads, C channels per head, D edge features):

.. math::
    s^h_e = \tfrac{1}{\sqrt{C}}\, \mathbf{q}^h_{ij} \cdot \mathbf{k}^h_{ij}, \qquad
    \alpha^h_e = \operatorname{softmax}_{e \to i}(s^h_e), \qquad
    \mathbf{o}^h_i = \sum_{e = (j \to i)} \alpha^h_e \, \mathbf{v}^h_{ij}

Without edge features the scores are one SDDMM (:math:`\mathbf{q}\mathbf{k}^\top`
sampled at the edges) and the output one SpMM (:math:`\boldsymbol\alpha\mathbf{v}`),
for all heads at once as a block-diagonal CSR matrix; backward is two more
SpMMs and one SDDMM. Nothing of size E×H×C is ever built: autograd keeps the
node tensors and E×H scores only.

With edge features, the value term is regrouped so that no E×H×C tensor
is built (:class:`~graphformer.nn.csr.ScatterSum`), and so is a lone query or key edge term:

.. math::
    \sum_j \alpha_{ij}\mathbf{W}_{ve}\mathbf{e}_{ij}
        = \mathbf{W}_{ve} \sum_j \alpha_{ij}\mathbf{e}_{ij}, \qquad
    \mathbf{q}_i\cdot\mathbf{W}_{ke}\mathbf{e}_{ij}
        = (\mathbf{W}_{ke}^\top\mathbf{q}_i)\cdot\mathbf{e}_{ij}

With both query and key edge projections the bilinear term
:math:`(\mathbf{W}_{qe}\mathbf{e})\cdot(\mathbf{W}_{ke}\mathbf{e})` needs the
per-edge projections anyway; all edge score terms are then computed together
one chunk of edges at a time and recomputed in backward (:class:`~graphformer.nn.edge_terms.ChunkedEdgeScores`); with typed
edges they are node-by-type tables (:class:`~graphformer.nn.edge_terms.TypedEdgeTerms`).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from .call import AttentionCall
from .csr import SDDMM, SpMM
from .functional import dropout, segment_softmax


def sparse_attention(call: AttentionCall) -> Tuple[Tensor, Optional[Tensor]]:
    r"""Attention over an edge set grouped by target (the ``"sparse"`` backend).

    Takes an :class:`~graphformer.nn.backend.AttentionCall` (q [N_t, H, C],
    k, v [N_s, H, C], the edge set, its edge terms, head mask, dropout) and
    returns ``(out [N_t, H, C], alpha [E, H])``, alpha before dropout and in
    target order. Inputs are float32 or float64 (sparse CPU kernels have no
    half precision; :class:`~graphformer.nn.RelationalAttention` computes
    half-precision input in float32).
    """
    q, k, v, csr = call.q, call.k, call.v, call.edges.csr
    C = q.size(2)
    # scores and weights are head-major [H, E] throughout: the layout of the
    # block-diagonal sparse products, so that nothing is transposed per edge
    scale = 1.0 / math.sqrt(C)
    score = SDDMM.apply(q.transpose(0, 1), k.transpose(0, 1), csr, scale)    # [H, E]
    bias = call.terms.scores(q, k) if call.terms is not None else None
    if bias is not None:
        score = torch.add(score, bias, alpha=scale)
    if call.head_mask is not None:
        score = score.masked_fill(~call.head_mask.t(), float("-inf"))
    alpha = segment_softmax(score, csr.row, ptr=csr.ptr, dim=1)             # [H, E]
    weights = dropout(alpha, p=call.dropout, training=call.training)
    out = SpMM.apply(weights, v.transpose(0, 1), csr).transpose(0, 1)       # [N_t, H, C]
    edge_values = call.terms.values(weights) if call.terms is not None else None
    if edge_values is not None:
        out = out + edge_values
    return out, alpha.t()
