r"""Sparse linear algebra over an edge set grouped by target (CSR): the
sampled dense-dense product (SDDMM) and sparse-dense product (SpMM) for all
heads at once as block-diagonal CSR matrices, and the gathers and scatters
between edges and their endpoints, each a differentiable product whose
backward is the other's forward.

Shapes: N_t target (row) and N_s source (column) nodes, E edges, H heads,
K channels, D edge features.
"""
from __future__ import annotations

import warnings
from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.compiler import is_compiling
from torch_geometric.utils.sparse import index2ptr

from .cpu_kernels import define_op, kernels_available


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


#: ``torch.ops.graphformer.group_by_source(col, num_cols) -> (ptr [num_cols + 1],
#: perm [E])``: the edges grouped by their source ``col`` [E] (int64, CPU),
#: stably, by the C++ kernels' counting sort (O(E + S)); ``IndexError`` for a
#: source outside ``[0, num_cols)``.
_GROUP_BY_SOURCE = define_op("group_by_source", "(Tensor col, SymInt num_cols) -> (Tensor, Tensor)")


@torch.library.register_fake(_GROUP_BY_SOURCE)
def _(col: Tensor, num_cols: int) -> Tuple[Tensor, Tensor]:
    return col.new_empty(num_cols + 1), col.new_empty(col.shape[0])


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
        # dense index arrays: the kernels (C, Triton, and PyTorch's own
        # index conversions) read them through raw pointers
        self.ptr = ptr.contiguous()
        self.col = col.contiguous()
        self.num_rows = ptr.numel() - 1
        self.num_cols = num_cols
        self.num_edges = col.numel()
        self._row = None if row is None else row.contiguous()
        self._transposed: Optional[Tuple["EdgeCSR", Tensor]] = None
        self._cache: dict = {}

    @classmethod
    def from_sorted(cls, row: Tensor, col: Tensor, num_rows: int, num_cols: int) -> "EdgeCSR":
        """From edges already sorted by ``row`` (target); any strides
        (``index2ptr`` reads a strided ``row`` wrongly: it is made dense first)."""
        row = row.contiguous()
        if is_compiling():   # index2ptr's kernel specialises a graph on num_rows
            ptr = torch.searchsorted(row, torch.arange(num_rows + 1, device=row.device))
            return cls(ptr, col, num_cols, row=row)
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
        transpose is value ``perm[p]`` of this matrix. Edges of one source
        keep their order (a stable sort); on the CPU a counting sort of the C++
        kernels (O(E + S)) when they are built, else ``torch.sort``."""
        if self._transposed is None:
            col = self.col
            if col.device.type == "cpu" and col.dtype == torch.long and kernels_available():
                ptr, perm = torch.ops.graphformer.group_by_source(col, self.num_cols)
                t = EdgeCSR(ptr, self.row.index_select(0, perm), self.num_rows,
                            row=col.index_select(0, perm))
            else:
                perm = torch.sort(col, stable=True)[1]
                t = EdgeCSR.from_sorted(col[perm], self.row[perm], self.num_cols,
                                        self.num_rows)
            self._transposed = (t, perm)
        return self._transposed

    def blocks(self, heads: int) -> Tuple[Tensor, Tensor]:
        """Row pointer and columns of H diagonal copies of this pattern (rows
        ``h * R + i``, columns ``h * S + j``), in int32 when they fit."""
        if heads not in self._cache:
            E, S = self.num_edges, self.num_cols
            dtype = torch.int32 if max(heads * E, heads * S) < 2**31 - 1 else torch.long
            crow = _block_crow(self.ptr, heads, E, dtype)
            hs = torch.arange(heads, device=self.ptr.device)
            col = (self.col.unsqueeze(0) + (hs * S).unsqueeze(1)).reshape(-1).to(dtype)
            self._cache[heads] = (crow, col)
        return self._cache[heads]

    def pattern(self, heads: int, dtype: torch.dtype) -> Tensor:
        """The block-diagonal matrix of :meth:`matrix` with zero values: the
        sampling pattern of an SDDMM (built once per heads and dtype)."""
        key = ("pattern", heads, dtype)
        if key not in self._cache:
            zeros = torch.zeros(heads, self.num_edges, dtype=dtype, device=self.ptr.device)
            self._cache[key] = self.matrix(zeros)
        return self._cache[key]

    def matrix(self, values: Tensor) -> Tensor:
        """Block-diagonal sparse matrix [H·R, H·S] with head-major ``values`` [H, E]."""
        H = values.size(0)
        crow, col = self.blocks(H)
        return _csr_matrix(crow, col, values.reshape(-1), (H * self.num_rows, H * self.num_cols))


def _sddmm(csr: EdgeCSR, a: Tensor, b: Tensor, scale: float = 1.0) -> Tensor:
    """``s[h, e] = scale · a[h, row_e] · b[h, col_e]`` for a [H, R, K] and b [H, S, K]."""
    H, R, K = a.shape
    if H * csr.num_edges > H * R * H * csr.num_cols:
        # more entries than the block-diagonal matrix has cells (duplicate
        # edges): sampled_addmm refuses such a pattern; gather the rows instead
        rows, cols = csr.row, csr.col
        return scale * (a.index_select(1, rows) * b.index_select(1, cols)).sum(-1)
    pattern = csr.pattern(H, a.dtype)
    out = torch.sparse.sampled_addmm(pattern, a.reshape(H * R, K), b.reshape(-1, K).t(),
                                     beta=0.0, alpha=scale)
    return out.values().view(H, csr.num_edges)


def _spmm(csr: EdgeCSR, w: Tensor, b: Tensor) -> Tensor:
    """``o[h, i] = Σ_{e into i} w[h, e] · b[h, col_e]`` for w [H, E] and b [H, S, K]."""
    H, S, K = b.shape
    return (csr.matrix(w) @ b.reshape(H * S, K)).view(H, csr.num_rows, K)


class SDDMM(torch.autograd.Function):
    """Edge scores ``s[h, e] = scale · a[h, target] · b[h, source]``
    (differentiable, twice: the backward is made of :class:`SpMM`)."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, csr: EdgeCSR, scale: float = 1.0) -> Tensor:
        ctx.save_for_backward(a, b)
        ctx.csr, ctx.scale = csr, scale
        return _sddmm(csr, a.contiguous(), b.contiguous(), scale)

    @staticmethod
    def backward(ctx, grad: Tensor):
        a, b = ctx.saved_tensors
        csr: EdgeCSR = ctx.csr
        da = db = None
        if ctx.needs_input_grad[0]:
            da = SpMM.apply(grad, b, csr)
            if ctx.scale != 1.0:
                da = da * ctx.scale
        if ctx.needs_input_grad[1]:
            t, perm = csr.transpose()
            db = SpMM.apply(grad.index_select(1, perm), a, t)
            if ctx.scale != 1.0:
                db = db * ctx.scale
        return da, db, None, None


class SpMM(torch.autograd.Function):
    """Weighted sums over incoming edges ``o[h, i] = Σ_e w[h, e] b[h, source_e]``
    (differentiable, twice: the backward is made of :class:`SDDMM` and
    :class:`SpMM`)."""

    @staticmethod
    def forward(ctx, w: Tensor, b: Tensor, csr: EdgeCSR) -> Tensor:
        ctx.save_for_backward(w, b)
        ctx.csr = csr
        return _spmm(csr, w.contiguous(), b.contiguous())

    @staticmethod
    def backward(ctx, grad: Tensor):
        w, b = ctx.saved_tensors
        csr: EdgeCSR = ctx.csr
        dw = db = None
        if ctx.needs_input_grad[0]:
            dw = SDDMM.apply(grad, b, csr)
        if ctx.needs_input_grad[1]:
            t, perm = csr.transpose()
            db = SpMM.apply(w.index_select(1, perm), grad, t)
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
        """The edges of ``csr`` grouped by target (one per ``csr``, so that its
        index arrays are built once for all the layers that share it)."""
        if "targets" not in csr._cache:
            csr._cache["targets"] = cls(csr.row, csr.num_rows, csr.ptr, None)
        return csr._cache["targets"]

    @classmethod
    def sources(cls, csr: EdgeCSR) -> "Grouping":
        """The edges of ``csr`` grouped by source (one per ``csr``)."""
        if "sources" not in csr._cache:
            t, perm = csr.transpose()
            csr._cache["sources"] = cls(csr.col, csr.num_cols, t.ptr, perm)
        return csr._cache["sources"]

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
    """Differentiable :func:`_gather_dot` (mat [H, n, D], edge_attr [E, D] -> [E, H]).
    :class:`GatherDot`, :class:`GatherSum` and :class:`ScatterSum` are each
    other's gradients, so all three are differentiable twice."""

    @staticmethod
    def forward(ctx, mat: Tensor, edge_attr: Tensor, group: Grouping) -> Tensor:
        ctx.save_for_backward(mat, edge_attr)
        ctx.group = group
        return _gather_dot(group, mat.contiguous(), edge_attr.contiguous())

    @staticmethod
    def backward(ctx, grad: Tensor):
        mat, edge_attr = ctx.saved_tensors
        dmat = dea = None
        if ctx.needs_input_grad[0]:
            dmat = ScatterSum.apply(grad.t(), edge_attr, ctx.group)
        if ctx.needs_input_grad[1]:
            dea = GatherSum.apply(grad, mat, ctx.group)
        return dmat, dea, None


class GatherSum(torch.autograd.Function):
    """Differentiable :func:`_gather_sum` (w [E, H], mat [H, n, D] -> [E, D])."""

    @staticmethod
    def forward(ctx, w: Tensor, mat: Tensor, group: Grouping) -> Tensor:
        ctx.save_for_backward(w, mat)
        ctx.group = group
        return _gather_sum(group, w.contiguous(), mat.contiguous())

    @staticmethod
    def backward(ctx, grad: Tensor):
        w, mat = ctx.saved_tensors
        dw = dmat = None
        if ctx.needs_input_grad[0]:      # dw[e, h] = mat[h, index_e] · grad[e]
            dw = GatherDot.apply(mat, grad, ctx.group)
        if ctx.needs_input_grad[1]:      # dmat[h, i] = Σ_{e: index_e = i} w[e, h] grad[e]
            dmat = ScatterSum.apply(w.t(), grad, ctx.group)
        return dw, dmat, None


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
        dw = dea = None
        if ctx.needs_input_grad[0]:
            dw = GatherDot.apply(grad, edge_attr, ctx.group).t()
        if ctx.needs_input_grad[1]:
            dea = GatherSum.apply(w.t(), grad, ctx.group)
        return dw, dea, None
