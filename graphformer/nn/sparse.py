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
is built (:class:`ScatterSum`), and so is a lone query or key edge term:

.. math::
    \sum_j \alpha_{ij}\mathbf{W}_{ve}\mathbf{e}_{ij}
        = \mathbf{W}_{ve} \sum_j \alpha_{ij}\mathbf{e}_{ij}, \qquad
    \mathbf{q}_i\cdot\mathbf{W}_{ke}\mathbf{e}_{ij}
        = (\mathbf{W}_{ke}^\top\mathbf{q}_i)\cdot\mathbf{e}_{ij}

With both query and key edge projections the bilinear term
:math:`(\mathbf{W}_{qe}\mathbf{e})\cdot(\mathbf{W}_{ke}\mathbf{e})` needs the
per-edge projections anyway; all edge score terms are then computed together
one chunk of edges at a time and recomputed in backward (:class:`EdgeTerms`).
"""
from __future__ import annotations

import math
import warnings
from typing import Optional, Tuple

import torch
from torch import Tensor
from torch_geometric.utils.sparse import index2ptr

from .functional import csr_softmax

#: Edges per chunk are chosen so that one chunk's per-edge projections stay
#: near this many elements (4 MB in float32: 1024 edges of 8 heads × 32
#: channels × 4 terms), small enough to stay in cache between the product
#: that makes them and the passes that read them (the forward chunk loop at
#: the shapes of scripts/bench_attention.py's large case measured 1.4-1.8 s
#: per million edges in chunks of 1024, 2.1-3.5 s in chunks of 8192).
CHUNK_ELEMENTS = 1 << 20


def _block_crow(ptr: Tensor, heads: int, num_edges: int, dtype: torch.dtype) -> Tensor:
    """Row pointer of ``heads`` stacked copies of a CSR pattern with row
    pointer ``ptr`` over ``num_edges`` entries (copy h's entries follow h - 1's)."""
    hs = torch.arange(heads, device=ptr.device)
    crow = (ptr[:-1].unsqueeze(0) + (hs * num_edges).unsqueeze(1)).reshape(-1)
    return torch.cat([crow, crow.new_full((1,), heads * num_edges)]).to(dtype)


def _csr_matrix(crow: Tensor, col: Tensor, values: Tensor, shape: Tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


class EdgeCSR:
    r"""An edge set grouped by target, with its transpose (grouped by source)
    built on first use, and block-diagonal copies for H heads.

    Args:
        ptr (LongTensor [R + 1]): row pointer: the edges into target ``i`` are
            positions ``ptr[i]:ptr[i + 1]``.
        col (LongTensor [E]): source of each edge, in that order.
        num_cols (int): number of source nodes S.
    """

    def __init__(self, ptr: Tensor, col: Tensor, num_cols: int,
                 row: Optional[Tensor] = None) -> None:
        self.ptr = ptr
        self.col = col
        self.num_rows = ptr.numel() - 1
        self.num_cols = num_cols
        self.num_edges = col.numel()
        self._row = row
        self._transposed: Optional[Tuple["EdgeCSR", Tensor]] = None
        self._blocks: dict = {}

    @classmethod
    def from_sorted(cls, row: Tensor, col: Tensor, num_rows: int, num_cols: int) -> "EdgeCSR":
        """From edges already sorted by ``row`` (target)."""
        return cls(index2ptr(row, num_rows), col, num_cols, row=row)

    @property
    def row(self) -> Tensor:
        """The target of each edge, [E] (expanded from ``ptr`` on first use)."""
        if self._row is None:
            self._row = torch.repeat_interleave(
                torch.arange(self.num_rows, device=self.ptr.device), self.ptr.diff(),
                output_size=self.num_edges)
        return self._row

    def transpose(self) -> Tuple["EdgeCSR", Tensor]:
        """``(csr_t, perm)``: the edge set grouped by source; value ``p`` of the
        transpose is value ``perm[p]`` of this matrix."""
        if self._transposed is None:
            perm = torch.sort(self.col, stable=True)[1]
            t = EdgeCSR.from_sorted(self.col[perm], self.row[perm], self.num_cols, self.num_rows)
            self._transposed = (t, perm)
        return self._transposed

    def blocks(self, heads: int) -> Tuple[Tensor, Tensor]:
        """Row pointer and columns of H diagonal copies of this pattern (rows
        ``h * R + i``, columns ``h * S + j``), in int32 when they fit."""
        if heads not in self._blocks:
            E, S = self.num_edges, self.num_cols
            dtype = torch.int32 if max(heads * E, heads * S) < 2**31 - 1 else torch.long
            crow = _block_crow(self.ptr, heads, E, dtype)
            hs = torch.arange(heads, device=self.ptr.device)
            col = (self.col.unsqueeze(0) + (hs * S).unsqueeze(1)).reshape(-1).to(dtype)
            self._blocks[heads] = (crow, col)
        return self._blocks[heads]

    def matrix(self, values: Tensor) -> Tensor:
        """Block-diagonal sparse matrix [H·R, H·S] with head-major ``values`` [H, E]."""
        H = values.size(0)
        crow, col = self.blocks(H)
        return _csr_matrix(crow, col, values.reshape(-1), (H * self.num_rows, H * self.num_cols))


def _sddmm(csr: EdgeCSR, a: Tensor, b: Tensor, scale: float = 1.0) -> Tensor:
    """``s[h, e] = scale · a[h, row_e] · b[h, col_e]`` for a [H, R, K] and b [H, S, K]."""
    H, R, K = a.shape
    pattern = csr.matrix(a.new_zeros(H, csr.num_edges))
    out = torch.sparse.sampled_addmm(pattern, a.reshape(H * R, K), b.reshape(-1, K).t(),
                                     beta=0.0, alpha=scale)
    return out.values().view(H, csr.num_edges)


def _spmm(csr: EdgeCSR, w: Tensor, b: Tensor) -> Tensor:
    """``o[h, i] = Σ_{e into i} w[h, e] · b[h, col_e]`` for w [H, E] and b [H, S, K]."""
    H, S, K = b.shape
    return (csr.matrix(w) @ b.reshape(H * S, K)).view(H, csr.num_rows, K)


class SDDMM(torch.autograd.Function):
    """Edge scores ``s[h, e] = scale · a[h, target] · b[h, source]`` (differentiable)."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, csr: EdgeCSR, scale: float = 1.0) -> Tensor:
        ctx.save_for_backward(a, b)
        ctx.csr, ctx.scale = csr, scale
        return _sddmm(csr, a.contiguous(), b.contiguous(), scale)

    @staticmethod
    def backward(ctx, grad: Tensor):
        a, b = ctx.saved_tensors
        csr: EdgeCSR = ctx.csr
        grad = grad.contiguous()
        da = db = None
        if ctx.needs_input_grad[0]:
            da = _spmm(csr, grad, b.contiguous())
            if ctx.scale != 1.0:
                da.mul_(ctx.scale)
        if ctx.needs_input_grad[1]:
            t, perm = csr.transpose()
            db = _spmm(t, grad.index_select(1, perm), a.contiguous())
            if ctx.scale != 1.0:
                db.mul_(ctx.scale)
        return da, db, None, None


class SpMM(torch.autograd.Function):
    """Weighted sums over incoming edges ``o[h, i] = Σ_e w[h, e] b[h, source_e]``."""

    @staticmethod
    def forward(ctx, w: Tensor, b: Tensor, csr: EdgeCSR) -> Tensor:
        ctx.save_for_backward(w, b)
        ctx.csr = csr
        return _spmm(csr, w.contiguous(), b.contiguous())

    @staticmethod
    def backward(ctx, grad: Tensor):
        w, b = ctx.saved_tensors
        csr: EdgeCSR = ctx.csr
        grad = grad.contiguous()
        dw = db = None
        if ctx.needs_input_grad[0]:
            dw = _sddmm(csr, grad, b.contiguous())
        if ctx.needs_input_grad[1]:
            t, perm = csr.transpose()
            db = _spmm(t, w.index_select(1, perm), grad)
        return dw, db, None


class Grouping:
    """Edges grouped by one endpoint: ``index`` [E] (the endpoint of each edge,
    among ``num_nodes``), ``ptr`` [num_nodes + 1] and ``members`` [E] (edge ids
    in group order; None when the edges are already in that order)."""

    def __init__(self, index: Tensor, num_nodes: int, ptr: Tensor,
                 members: Optional[Tensor]) -> None:
        self.index, self.num_nodes, self.ptr, self.members = index, num_nodes, ptr, members
        self._cache: dict = {}

    @classmethod
    def targets(cls, csr: EdgeCSR) -> "Grouping":
        return cls(csr.row, csr.num_rows, csr.ptr, None)

    @classmethod
    def sources(cls, csr: EdgeCSR) -> "Grouping":
        t, perm = csr.transpose()
        return cls(csr.col, csr.num_cols, t.ptr, perm)

    def _index_dtype(self, heads: int) -> torch.dtype:
        E = self.index.numel()
        return torch.int32 if heads * max(E, self.num_nodes) < 2**31 - 1 else torch.long

    def by_edge(self, values: Tensor) -> Tensor:
        """Sparse [E, H·n]: row e holds ``values[e, h]`` at column ``h·n + index_e``."""
        E, H = values.shape
        key = ("edge", H)
        if key not in self._cache:
            dt = self._index_dtype(H)
            dev = self.index.device
            crow = (torch.arange(E + 1, device=dev) * H).to(dt)
            col = (self.index.unsqueeze(1)
                   + torch.arange(H, device=dev) * self.num_nodes).reshape(-1).to(dt)
            self._cache[key] = (crow, col)
        crow, col = self._cache[key]
        return _csr_matrix(crow, col, values.reshape(-1), (E, H * self.num_nodes))

    def by_node(self, values: Tensor) -> Tensor:
        """Sparse [H·n, E]: row ``h·n + i`` holds ``values[h, e]`` for the edges of i."""
        H, E = values.shape
        key = ("node", H)
        if key not in self._cache:
            dt = self._index_dtype(H)
            dev = self.index.device
            crow = _block_crow(self.ptr, H, E, dt)
            members = self.members if self.members is not None else torch.arange(E, device=dev)
            col = members.to(dt).repeat(H)
            self._cache[key] = (crow, col)
        crow, col = self._cache[key]
        if self.members is not None:
            values = values.index_select(1, self.members)
        return _csr_matrix(crow, col, values.reshape(-1), (H * self.num_nodes, E))


def _gather_dot(group: Grouping, mat: Tensor, edge_attr: Tensor) -> Tensor:
    """``out[e, h] = mat[h, index_e] · edge_attr[e]``, [E, H]."""
    H, n, D = mat.shape
    pattern = group.by_edge(edge_attr.new_zeros(edge_attr.size(0), H))
    out = torch.sparse.sampled_addmm(pattern, edge_attr, mat.reshape(H * n, D).t(), beta=0.0)
    return out.values().view(-1, H)


def _gather_sum(group: Grouping, w: Tensor, mat: Tensor) -> Tensor:
    """``out[e] = Σ_h w[e, h] mat[h, index_e]``, [E, D]."""
    H, n, D = mat.shape
    return group.by_edge(w) @ mat.reshape(H * n, D)


def _scatter_sum(group: Grouping, w: Tensor, edge_attr: Tensor) -> Tensor:
    """``out[h, i] = Σ_{e: index_e = i} w[h, e] edge_attr[e]``, [H, n, D]."""
    H = w.size(0)
    return (group.by_node(w) @ edge_attr).view(H, group.num_nodes, -1)


class GatherDot(torch.autograd.Function):
    """Differentiable :func:`_gather_dot` (mat [H, n, D], edge_attr [E, D] -> [E, H])."""

    @staticmethod
    def forward(ctx, mat: Tensor, edge_attr: Tensor, group: Grouping) -> Tensor:
        ctx.save_for_backward(mat, edge_attr)
        ctx.group = group
        return _gather_dot(group, mat.contiguous(), edge_attr.contiguous())

    @staticmethod
    def backward(ctx, grad: Tensor):
        mat, edge_attr = ctx.saved_tensors
        grad = grad.contiguous()
        dmat = dea = None
        if ctx.needs_input_grad[0]:
            dmat = _scatter_sum(ctx.group, grad.t().contiguous(), edge_attr.contiguous())
        if ctx.needs_input_grad[1]:
            dea = _gather_sum(ctx.group, grad, mat.contiguous())
        return dmat, dea, None


class ScatterSum(torch.autograd.Function):
    """Differentiable :func:`_scatter_sum` (w [H, E], edge_attr [E, D] -> [H, n, D])."""

    @staticmethod
    def forward(ctx, w: Tensor, edge_attr: Tensor, group: Grouping) -> Tensor:
        ctx.save_for_backward(w, edge_attr)
        ctx.group = group
        return _scatter_sum(group, w.contiguous(), edge_attr.contiguous())

    @staticmethod
    def backward(ctx, grad: Tensor):
        w, edge_attr = ctx.saved_tensors
        grad = grad.contiguous()
        dw = dea = None
        if ctx.needs_input_grad[0]:
            dw = _gather_dot(ctx.group, grad, edge_attr.contiguous()).t()
        if ctx.needs_input_grad[1]:
            dea = _gather_sum(ctx.group, w.t().contiguous(), grad)
        return dw, dea, None


def _chunk_size(num_edges: int, width: int) -> int:
    return max(1024, min(num_edges, CHUNK_ELEMENTS // max(width, 1)))


#: Below this many elements of per-edge projections (E × 2HC) the edge terms
#: are kept for backward instead of recomputed: recomputing costs a product.
RECOMPUTE_ABOVE = 1 << 24


class EdgeTerms(torch.autograd.Function):
    """Edge-feature score terms ``q_i·(W_ke e) + (W_qe e)·(k_j + W_ke e)``, [E, H],
    computed in chunks of edges. Backward recomputes each chunk's projections
    (unless they are small enough to keep) and accumulates the gradients of
    ``q``, ``k``, ``edge_attr`` and ``W`` in place; per-chunk buffers are
    reused (fresh large allocations cost page faults)."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, edge_attr: Tensor, w_qk: Tensor, src: Tensor,
                dst: Tensor) -> Tensor:
        H, C = q.size(1), q.size(2)
        E = edge_attr.size(0)
        keep = E * 2 * H * C <= RECOMPUTE_ABOVE
        step = max(E if keep else _chunk_size(E, 4 * H * C), 1)
        out = q.new_empty(E, H)
        w_t = w_qk.t().contiguous()
        buf = q.new_empty(min(step, E), 2 * H * C)
        for s in range(0, E, step):
            n = min(step, E - s)
            eqk = torch.mm(edge_attr[s:s + n], w_t, out=buf[:n]).view(n, 2, H, C)
            eq, ek = eqk[:, 0], eqk[:, 1]
            # vecdot: the sums of products without the products as tensors
            torch.linalg.vecdot(q.index_select(0, dst[s:s + n]), ek, out=out[s:s + n])
            out[s:s + n] += torch.linalg.vecdot(eq, k.index_select(0, src[s:s + n]).add_(ek))
        ctx.step, ctx.kept = step, keep
        ctx.save_for_backward(q, k, edge_attr, w_qk, src, dst, buf if keep else buf.new_empty(0))
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        q, k, edge_attr, w_qk, src, dst, kept = ctx.saved_tensors
        H, C = q.size(1), q.size(2)
        E, step = edge_attr.size(0), ctx.step
        need_q, need_k, need_e, need_w = ctx.needs_input_grad[:4]
        dq = torch.zeros_like(q) if need_q else None
        dk = torch.zeros_like(k) if need_k else None
        de = torch.empty_like(edge_attr) if need_e else None
        dw = torch.zeros_like(w_qk) if need_w else None
        w_t = w_qk.t().contiguous()
        buf = None if ctx.kept else q.new_empty(min(step, E), 2 * H * C)
        dbuf = q.new_empty(min(step, E), 2, H, C) if (need_e or need_w) else None
        for s in range(0, E, step):
            n = min(step, E - s)
            e_c, d_c, s_c = edge_attr[s:s + n], dst[s:s + n], src[s:s + n]
            g = grad[s:s + n].unsqueeze(-1)                                # [n, H, 1]
            eqk = kept if ctx.kept else torch.mm(e_c, w_t, out=buf[:n])
            eqk = eqk.view(n, 2, H, C)
            eq, ek = eqk[:, 0], eqk[:, 1]
            if need_q:
                dq.index_add_(0, d_c, g * ek)
            if need_k:
                dk.index_add_(0, s_c, g * eq)
            if need_e or need_w:
                deqk = dbuf[:n]
                torch.mul(k.index_select(0, s_c).add_(ek), g, out=deqk[:, 0])
                torch.mul(q.index_select(0, d_c).add_(eq), g, out=deqk[:, 1])
                deqk = deqk.view(n, 2 * H * C)
                if need_e:
                    torch.mm(deqk, w_qk, out=de[s:s + n])
                if need_w:
                    dw.addmm_(deqk.t(), e_c)
        return dq, dk, de, dw, None, None


def edge_scores(q: Tensor, k: Tensor, edge_attr: Tensor, w_eq: Optional[Tensor],
                w_ek: Optional[Tensor], csr: EdgeCSR) -> Tensor:
    r"""The edge-feature part of :math:`\mathbf{q}_{ij}\cdot\mathbf{k}_{ij}`,
    [E, H] (unscaled); ``q`` [N_t, H, C], ``k`` [N_s, H, C].

    With both projections the per-edge terms :math:`\mathbf{W}_{qe}\mathbf{e}`,
    :math:`\mathbf{W}_{ke}\mathbf{e}` are needed anyway (their product has no
    cheaper form), so all terms are computed together in chunks of edges
    (:class:`EdgeTerms`); above :data:`RECOMPUTE_ABOVE` elements only the
    [E, H] result is kept and backward recomputes the chunks. With one projection the
    term is regrouped, :math:`\mathbf{q}_i\cdot\mathbf{W}_{ke}\mathbf{e} =
    (\mathbf{W}_{ke}^\top\mathbf{q}_i)\cdot\mathbf{e}`, and meets the edges
    through a sampled product (no per-edge projection at all)."""
    H, C = q.size(1), q.size(2)
    D = edge_attr.size(1)
    if w_eq is not None and w_ek is not None:
        # Measured (scripts/bench_attention.py shapes): regrouping the cross
        # terms here too is slower, at 2.2 and at 6 edges per node.
        w_qk = torch.cat([w_eq, w_ek], dim=0)
        return EdgeTerms.apply(q, k, edge_attr, w_qk, csr.col, csr.row)
    if w_ek is not None:     # q_i · (W_ke e) = (W_ke^T q_i) · e
        qd = torch.einsum("nhc,hcd->hnd", q, w_ek.view(H, C, D))
        return GatherDot.apply(qd, edge_attr, Grouping.targets(csr))
    assert w_eq is not None  # (W_qe e) · k_j = (W_qe^T k_j) · e
    kd = torch.einsum("nhc,hcd->hnd", k, w_eq.view(H, C, D))
    return GatherDot.apply(kd, edge_attr, Grouping.sources(csr))


def sparse_attention(
    q: Tensor, k: Tensor, v: Tensor, csr: EdgeCSR,
    edge_attr: Optional[Tensor] = None,
    w_eq: Optional[Tensor] = None, w_ek: Optional[Tensor] = None, w_ev: Optional[Tensor] = None,
    head_mask: Optional[Tensor] = None, dropout: float = 0.0, training: bool = False,
) -> Tuple[Tensor, Tensor]:
    r"""Attention over an edge set grouped by target.

    Args:
        q (Tensor [N_t, H, C]), k, v (Tensor [N_s, H, C]): projected nodes.
        csr (EdgeCSR): the edges, grouped by target; ``edge_attr`` and
            ``head_mask`` are in this order.
        edge_attr (Tensor [E, D], optional) with ``w_eq``, ``w_ek``, ``w_ev``
            (Tensor [H·C, D] or None): edge features and their projections.
        head_mask (BoolTensor [E, H], optional): edge ``e`` seen by head ``h``.

    Returns:
        ``(out [N_t, H, C], alpha [E, H])``, alpha before dropout. Inputs are
        float32 or float64 (sparse CPU kernels have no half precision;
        :class:`~graphformer.nn.RelationalAttention` computes half-precision
        input in float32).
    """
    N_t, H, C = q.shape
    # scores and weights are head-major [H, E] throughout: the layout of the
    # block-diagonal sparse products, so that nothing is transposed per edge
    scale = 1.0 / math.sqrt(C)
    score = SDDMM.apply(q.transpose(0, 1), k.transpose(0, 1), csr, scale)    # [H, E]
    if edge_attr is not None and (w_eq is not None or w_ek is not None):
        score = torch.add(score, edge_scores(q, k, edge_attr, w_eq, w_ek, csr).t(),
                          alpha=scale)
    if head_mask is not None:
        score = score.masked_fill(~head_mask.t(), float("-inf"))
    alpha = csr_softmax(score, csr.ptr, csr.row)                             # [H, E]
    weights = torch.nn.functional.dropout(alpha, p=dropout, training=training)
    out = SpMM.apply(weights, v.transpose(0, 1), csr)                       # [H, N_t, C]
    if edge_attr is not None and w_ev is not None:
        D = edge_attr.size(1)
        agg = ScatterSum.apply(weights, edge_attr, Grouping.targets(csr))   # [H, N_t, D]
        out = out + torch.einsum("hnd,hcd->hnc", agg, w_ev.view(H, C, D))
    return out.transpose(0, 1), alpha.t()
