r"""Edge-feature terms of relational attention, per edge or per edge type.

With edge features, the score of edge :math:`e = (j \to i)` and head
:math:`h` gains the terms

.. math::
    b^h_e = \mathbf{q}^h_i \cdot \mathbf{W}^h_{ke}\mathbf{e}_{ij}
        + \mathbf{W}^h_{qe}\mathbf{e}_{ij} \cdot \mathbf{k}^h_j
        + \mathbf{W}^h_{qe}\mathbf{e}_{ij} \cdot \mathbf{W}^h_{ke}\mathbf{e}_{ij}

and the output of node :math:`i` gains
:math:`\mathbf{W}^h_{ve} \sum_j \alpha^h_{ij} \mathbf{e}_{ij}`. Every backend
asks an edge-term object for these two things: :meth:`scores` (``[H, E]``,
unscaled, edges grouped by target) and :meth:`values` (``[N_t, H, C]`` from the
weights ``[H, E]``).

- :class:`PerEdgeTerms`: features per edge ``edge_attr [E, D]``; the value
  term is regrouped, :math:`\sum_j \alpha_{ij} \mathbf{e}_{ij}` per target
  and head, then projected (``torch.ops.graphformer.edge_values``, one C++
  pass by target that projects each node's sums as it makes them, on the
  CPU; elsewhere a sparse product, then the projection). On the CPU (with
  the C++ kernels) the features stay in the caller's order (the kernels read them
  through the edge set's permutation) and the score terms are regrouped
  too: the two cross terms as node-by-feature tables met per edge,
  :math:`\mathbf{q}^h_i\cdot\mathbf{W}^h_{ke}\mathbf{e} =
  (\mathbf{W}^{h\top}_{ke}\mathbf{q}^h_i)\cdot\mathbf{e}`, and the term
  of the edge with itself as a symmetric quadratic form
  (:func:`edge_quadratic`, half the multiply-adds of the two projections
  and nothing per edge kept); elsewhere all three are computed from the
  projections in chunks of edges (:class:`ChunkedEdgeScores`). With all
  three projections the ``fused_cpu`` backend takes the cross terms' weights
  instead (:meth:`PerEdgeTerms.block_terms`) and runs scores, attention and
  the value term as one op. (The kernels make the tables' rows as their
  passes meet the nodes, and project the value sums likewise: no [H, N, D]
  array is kept.)
- :class:`TypedEdgeTerms`: features per edge type, ``table [R, D]`` and
  ``edge_type [E]`` (bond types, relation ids, pattern membership). The
  projections are taken of the R rows only, the query and key terms are
  node-by-type tables gathered per edge, and the value term sums the weights
  per (target, type):

  .. math::
      b^h_e = \underbrace{\mathbf{q}^h_i \cdot \mathbf{K}^h_{t_e}}_{[N_t, R]}
          + \underbrace{\mathbf{Q}^h_{t_e} \cdot \mathbf{k}^h_j}_{[N_s, R]}
          + \mathbf{Q}^h_{t_e} \cdot \mathbf{K}^h_{t_e}, \qquad
      \sum_j \alpha^h_{ij}\mathbf{V}^h_{t_{ij}} = \sum_{r} \Big(\sum_{j:\,t_{ij}=r}
          \alpha^h_{ij}\Big) \mathbf{V}^h_r

  with :math:`\mathbf{Q} = \mathbf{W}_{qe}\mathbf{E}`, :math:`\mathbf{K}`,
  :math:`\mathbf{V}` likewise for the table :math:`\mathbf{E}`: O((N_s + N_t)·R·H·C
  + E·H) instead of O(E·D·H·C). It computes the same function as the
  per-edge terms with ``edge_attr = table[edge_type]`` (tested in float64,
  values and gradients).

Shapes: N_t target and N_s source nodes, E edges, H heads, C channels per
head, D edge features, R edge types.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .cpu_kernels import define_op, kernels_available
from .csr import EdgeCSR, GatherDot, Grouping, ScatterSum
from .first_order import first_order

#: Edges per chunk are chosen so that one chunk's per-edge projections stay
#: near this many elements (4 MB in float32: 1024 edges of 8 heads × 32
#: channels × 4 terms), small enough to stay in cache between the product
#: that makes them and the passes that read them (faster than larger chunks
#: on ``scripts/bench_attention.py``'s large case).
CHUNK_ELEMENTS = 1 << 20

def _chunk_size(num_edges: int, width: int) -> int:
    return max(1024, min(num_edges, CHUNK_ELEMENTS // max(width, 1)))


#: Below this many elements of per-edge projections (E × 2HC) the edge terms
#: are kept for backward instead of recomputed: recomputing costs a product.
RECOMPUTE_ABOVE = 1 << 24


class ChunkedEdgeScores(torch.autograd.Function):
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
    @first_order("ChunkedEdgeScores")
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


# -- the quadratic term ------------------------------------------------------------------------

#: ``torch.ops.graphformer.edge_quadratic(x, c)``: :func:`edge_quadratic`'s
#: C++ kernel (float32 / float64 on the CPU). Its gradients:
#: ``edge_quadratic_backward``.
_EDGE_QUADRATIC = define_op("edge_quadratic", "(Tensor x, Tensor c) -> Tensor")


@torch.library.register_fake(_EDGE_QUADRATIC)
def _(x: Tensor, c: Tensor) -> Tensor:
    return x.new_empty(x.size(0), c.size(1))


def _kernels_for(t: Tensor) -> bool:
    """Whether the C++ kernels can take ``t``: on the CPU, with the kernels built."""
    return t.device.type == "cpu" and kernels_available()


def _scores_read_through_order(edge_attr: Tensor, w_eq: Optional[Tensor],
                               w_ek: Optional[Tensor]) -> bool:
    """Whether :func:`edge_scores` reads ``edge_attr`` in the caller's order
    (both projections, on the C++ kernels); elsewhere it needs them in CSR
    order."""
    return w_eq is not None and w_ek is not None and _kernels_for(edge_attr)


def _triangle(D: int, device: torch.device) -> Tuple[Tensor, Tensor]:
    """Rows and columns of the upper triangle of a D × D matrix, diagonal
    included, in row-major order: the pair of coefficient ``t``."""
    rows, cols = torch.triu_indices(D, D, device=device).unbind()
    return rows, cols


def _pair_of_entries(D: int, device: torch.device) -> Tensor:
    """The coefficient of every entry ``(a, b)`` of a D × D matrix, ``[D·D]``
    row-major: the row of the pair ``(min(a, b), max(a, b))`` in
    :func:`_triangle`'s order."""
    ar = torch.arange(D, device=device)
    lo, hi = torch.minimum(ar[:, None], ar[None, :]), torch.maximum(ar[:, None], ar[None, :])
    return (lo * D - lo * (lo - 1) // 2 + hi - lo).flatten()


class _QuadraticCoefficients(torch.autograd.Function):
    """:func:`quadratic_coefficients` with its gradient as two batched
    products: the form's gradient of M_h is the symmetric matrix of the
    coefficients' gradient (``dM_ab = dc_{min(a,b) max(a,b)}``), so
    ``dW_qe^h = W_ke^h dM_h`` and ``dW_ke^h = W_qe^h dM_h`` (the index
    operations autograd would record cost several times the products at
    these sizes). Differentiable twice: the backward is made of
    differentiable operations."""

    @staticmethod
    def forward(ctx, w_eq: Tensor, w_ek: Tensor, heads: int) -> Tensor:
        D = w_eq.size(1)
        a, b = w_eq.view(heads, -1, D), w_ek.view(heads, -1, D)
        m = torch.bmm(a.transpose(1, 2), b)                       # M_h = W_qe^hT W_ke^h
        rows, cols = _triangle(D, w_eq.device)
        # c_ab = M_ab + M_ba (a < b), c_aa = M_aa
        c = (m + m.transpose(1, 2)).view(heads, D * D).index_select(1, rows * D + cols)
        c = c * torch.where(rows == cols, 0.5, 1.0).to(c.dtype)
        ctx.save_for_backward(w_eq, w_ek)
        ctx.heads = heads
        return c.t().contiguous()

    @staticmethod
    def backward(ctx, grad: Tensor):
        w_eq, w_ek = ctx.saved_tensors
        H, D = ctx.heads, w_eq.size(1)
        a, b = w_eq.view(H, -1, D), w_ek.view(H, -1, D)
        d_m = grad.t().index_select(1, _pair_of_entries(D, grad.device)).view(H, D, D)
        d_eq = torch.bmm(b, d_m).view(-1, D) if ctx.needs_input_grad[0] else None
        d_ek = torch.bmm(a, d_m).view(-1, D) if ctx.needs_input_grad[1] else None
        return d_eq, d_ek, None


def quadratic_coefficients(w_eq: Tensor, w_ek: Tensor, heads: int) -> Tensor:
    r"""The coefficients ``c [D (D + 1) / 2, H]`` of
    :math:`(\mathbf{W}^h_{qe}\mathbf{e})\cdot(\mathbf{W}^h_{ke}\mathbf{e}) =
    \mathbf{e}^\top M_h \mathbf{e} = \sum_{a \le b} c_{ab,h}\, e_a e_b` with
    :math:`M_h = \mathbf{W}^{h\top}_{qe}\mathbf{W}^h_{ke}` (``w_eq``, ``w_ek``
    ``[H·C, D]``): :math:`c_{aa,h} = (M_h)_{aa}` and :math:`c_{ab,h} =
    (M_h)_{ab} + (M_h)_{ba}` for :math:`a < b`. Differentiable."""
    return _QuadraticCoefficients.apply(w_eq, w_ek, heads)


#: ``torch.ops.graphformer.edge_quadratic_backward(grad, x, c, need_x, need_c)``:
#: the gradients of ``edge_quadratic`` with respect to ``x`` and ``c`` (each
#: empty where not needed), from one pass over blocks of edges.
_EDGE_QUADRATIC_BACKWARD = define_op(
    "edge_quadratic_backward",
    "(Tensor grad, Tensor x, Tensor c, bool need_x, bool need_c) -> (Tensor, Tensor)")


@torch.library.register_fake(_EDGE_QUADRATIC_BACKWARD)
def _(grad: Tensor, x: Tensor, c: Tensor, need_x: bool, need_c: bool) -> Tuple[Tensor, Tensor]:
    return (x.new_empty(x.shape if need_x else (0,)),
            c.new_empty(c.shape if need_c else (0, c.size(1))))


def _save_inputs(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


@first_order(_EDGE_QUADRATIC)
def _edge_quadratic_backward(ctx, grad: Tensor):
    x, c = ctx.saved_tensors
    need_x, need_c = ctx.needs_input_grad[:2]
    dx, dc = torch.ops.graphformer.edge_quadratic_backward(grad, x, c, need_x, need_c)
    return dx if need_x else None, dc if need_c else None


torch.library.register_autograd(_EDGE_QUADRATIC, _edge_quadratic_backward,
                                setup_context=_save_inputs)


def edge_quadratic(x: Tensor, c: Tensor) -> Tensor:
    r"""The quadratic forms :math:`\sum_{a \le b} c_{ab,h}\, x_{e,a} x_{e,b}`,
    ``[E, H]``, of the edge features ``x [E, D]`` with the coefficients ``c
    [D (D + 1) / 2, H]`` (pairs ``a <= b`` in row-major order, as
    :func:`quadratic_coefficients` gives them); differentiable in both. On
    the CPU with the C++ kernels one pass over blocks of edges (nothing per
    edge and coefficient kept); elsewhere, and where the kernels are
    unavailable, PyTorch products (the same values to float rounding)."""
    if _kernels_for(x):
        return torch.ops.graphformer.edge_quadratic(x, c)
    E, D = x.shape
    rows, cols = _triangle(D, x.device)
    upper = c.new_zeros(D, D, c.size(1)).index_put((rows, cols), c)
    sym = (upper + upper.transpose(0, 1)) / 2                     # S_aa = c_aa, S_ab = c_ab / 2
    y = (x @ sym.reshape(D, -1)).view(E, D, -1)                   # [e, a, h] = sum_b x_b S_ba
    return (y * x.unsqueeze(2)).sum(1)


# -- the cross terms and the value term ---------------------------------------------------------

#: ``torch.ops.graphformer.edge_cross(a, b, wa, wb, x, ptr, col, sptr, perm, order,
#: c)``: the cross terms ``(wa_h^T a[i, h] + wb_h^T b[j, h]) · x[order[e]]``,
#: [E, H], of the edges ``e = (j -> i)`` of a CSR by target (``ptr``, ``col``),
#: from the node rows ``a [N, H, C]``, ``b [N_s, H, C]`` and the weights ``wa``,
#: ``wb [H·C, D]`` (``wa_h``: rows ``h·C .. h·C + C - 1``); ``x`` in the
#: caller's order (``order`` [E], CSR position -> row of ``x``; None: CSR
#: order); with the coefficients ``c`` [D (D + 1) / 2, H], plus the quadratic
#: form of ``x[order[e]]`` (:func:`edge_quadratic`). ``sptr``, ``perm`` (the
#: grouping by source): ``b``'s share is a pass by source. Each pass computes a
#: node's table row ``wa_h^T a[i, h]`` (``[H, D]``) when it meets the node,
#: never an [H, N, D] table. Its backward, ``edge_cross_backward``, gives
#: ``(da, db, dwa, dwb, dx, dc)`` (each empty where not needed), adds both
#: terms' gradients of ``x`` into one buffer; with ``da_into`` (``db_into``,
#: ``dx_into``) it adds ``a``'s (``b``'s, ``x``'s) gradient into that tensor,
#: a gradient the caller already holds, and returns an empty ``da`` (``db``,
#: ``dx``): no fresh buffer to fault in.
_EDGE_CROSS = define_op("edge_cross", "(Tensor a, Tensor b, Tensor wa, Tensor wb, Tensor x, "
                        "Tensor ptr, Tensor col, Tensor sptr, Tensor perm, Tensor? order, "
                        "Tensor? c=None) -> Tensor")
_EDGE_CROSS_BACKWARD = define_op(
    "edge_cross_backward", "(Tensor grad, Tensor a, Tensor b, Tensor wa, Tensor wb, Tensor x, "
    "Tensor ptr, Tensor col, Tensor sptr, Tensor perm, Tensor? order, Tensor? c, bool need_a, "
    "bool need_b, bool need_wa, bool need_wb, bool need_x, bool need_c, "
    "Tensor(a!)? da_into=None, Tensor(b!)? db_into=None, Tensor(c!)? dx_into=None) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")


def _like(t: Tensor, needed: bool) -> Tensor:
    return t.new_empty(t.shape if needed else (0,))


@torch.library.register_fake(_EDGE_CROSS)
def _(a: Tensor, b: Tensor, wa: Tensor, wb: Tensor, x: Tensor, ptr: Tensor, col: Tensor,
      sptr: Tensor, perm: Tensor, order: Optional[Tensor], c: Optional[Tensor] = None) -> Tensor:
    return a.new_empty(x.size(0), a.size(1))


@torch.library.register_fake(_EDGE_CROSS_BACKWARD)
def _(grad: Tensor, a: Tensor, b: Tensor, wa: Tensor, wb: Tensor, x: Tensor, ptr: Tensor,
      col: Tensor, sptr: Tensor, perm: Tensor, order: Optional[Tensor], c: Optional[Tensor],
      need_a: bool, need_b: bool, need_wa: bool, need_wb: bool, need_x: bool, need_c: bool,
      da_into: Optional[Tensor] = None, db_into: Optional[Tensor] = None,
      dx_into: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    dc = x.new_empty((c.size(0) if need_c and c is not None else 0, a.size(1)))
    return (_like(a, need_a and da_into is None), _like(b, need_b and db_into is None),
            _like(wa, need_wa), _like(wb, need_wb), _like(x, need_x and dx_into is None), dc)


@first_order(_EDGE_CROSS)
def _edge_cross_backward(ctx, grad: Tensor):
    need = ctx.needs_input_grad
    need_c = len(need) > 10 and need[10]
    da, db, dwa, dwb, dx, dc = torch.ops.graphformer.edge_cross_backward(
        grad, *ctx.saved_tensors, *need[:5], need_c)
    grads = (da, db, dwa, dwb, dx)
    return (*(g if n else None for g, n in zip(grads, need[:5])), None, None, None, None, None,
            dc if need_c else None)


torch.library.register_autograd(_EDGE_CROSS, _edge_cross_backward, setup_context=_save_inputs)


def edge_cross(a: Tensor, b: Tensor, wa: Tensor, wb: Tensor, x: Tensor, csr: EdgeCSR,
               order: Optional[Tensor] = None, c: Optional[Tensor] = None) -> Tensor:
    r"""The cross terms :math:`(\mathbf{W}^{h\top}_a\mathbf{a}^h_i +
    \mathbf{W}^{h\top}_b\mathbf{b}^h_j)\cdot\mathbf{x}_e`, ``[E, H]`` in CSR
    order, of the edges ``e = (j -> i)`` of ``csr`` (grouped by target), ``a
    [N_t, H, C]``, ``b [N_s, H, C]``, ``wa``, ``wb [H·C, D]``, ``x [E, D]`` in
    CSR order or, with ``order`` (CSR position -> row of ``x``), in the
    caller's; with ``c [D (D + 1) / 2, H]``, plus the quadratic form
    :func:`edge_quadratic` of every edge's features. Differentiable in all of
    them. One C++ pass over the edges by target and one by source (CPU, with
    the kernels), each computing a node's :math:`[H, D]` table row when it
    meets the node (never an [H, N, D] table); its backward sums ``a``'s and
    ``wa``'s gradients by target, ``b``'s and ``wb``'s by source, and writes
    ``x``'s in ``x``'s order, the quadratic form's added into the same buffer
    (``x`` feeds one op, so autograd adds no [E, D] gradients for the two)."""
    sources = Grouping.sources(csr)
    return torch.ops.graphformer.edge_cross(a, b, wa, wb, x, csr.ptr, csr.col, sources.ptr,
                                            sources.members, order, c)


#: ``torch.ops.graphformer.edge_values(w, wv, x, ptr, order)``: the value
#: term ``out[i, h] = W_h Σ_{e -> i} w[h, e] x[order[e]]``, [N, H, C], of the
#: weights ``w [H, E]`` (CSR by target ``ptr``; ``order`` as for
#: ``edge_cross``) and the projection ``wv [H·C, D]`` (``W_h``: rows ``h·C ..
#: h·C + C - 1``): one pass by target that sums each node's features in
#: scratch and projects them for blocks of 8 nodes, never an [H, N, D]
#: array. ``edge_values_into(out, ...)`` adds the same into ``out``, a tensor
#: the caller owns (no autograd: for ops that hold their own formula). The
#: gradients: ``edge_values_backward(dout, w, wv, x, ptr, order, need_w,
#: need_x, need_wv, dx_into)`` gives ``(dw [H, E], dx, dwv)``, those of a
#: cross term whose node rows are ``dout`` (``dw`` the ``edge_cross`` of
#: ``dout`` and ``wv``, ``dx`` and ``dwv`` its backward's), each empty where
#: not needed; with ``dx_into`` it adds ``x``'s gradient into that tensor
#: and returns an empty ``dx``.
_EDGE_VALUES = define_op("edge_values",
                         "(Tensor w, Tensor wv, Tensor x, Tensor ptr, Tensor? order) -> Tensor")
_EDGE_VALUES_INTO = define_op("edge_values_into", "(Tensor(a!) out, Tensor w, Tensor wv, "
                              "Tensor x, Tensor ptr, Tensor? order) -> ()")
_EDGE_VALUES_BACKWARD = define_op(
    "edge_values_backward", "(Tensor dout, Tensor w, Tensor wv, Tensor x, Tensor ptr, "
    "Tensor? order, bool need_w, bool need_x, bool need_wv, Tensor(a!)? dx_into=None) "
    "-> (Tensor, Tensor, Tensor)")


@torch.library.register_fake(_EDGE_VALUES)
def _(w: Tensor, wv: Tensor, x: Tensor, ptr: Tensor, order: Optional[Tensor]) -> Tensor:
    H = w.size(0)
    return w.new_empty(ptr.size(0) - 1, H, wv.size(0) // H)


@torch.library.register_fake(_EDGE_VALUES_INTO)
def _(out: Tensor, w: Tensor, wv: Tensor, x: Tensor, ptr: Tensor,
      order: Optional[Tensor]) -> None:
    return None


@torch.library.register_fake(_EDGE_VALUES_BACKWARD)
def _(dout: Tensor, w: Tensor, wv: Tensor, x: Tensor, ptr: Tensor, order: Optional[Tensor],
      need_w: bool, need_x: bool, need_wv: bool, dx_into: Optional[Tensor] = None
      ) -> Tuple[Tensor, Tensor, Tensor]:
    return _like(w, need_w), _like(x, need_x and dx_into is None), _like(wv, need_wv)


@first_order(_EDGE_VALUES)
def _edge_values_backward(ctx, dout: Tensor):
    need_w, need_wv, need_x = ctx.needs_input_grad[:3]
    dw, dx, dwv = torch.ops.graphformer.edge_values_backward(dout, *ctx.saved_tensors, need_w,
                                                             need_x, need_wv)
    return (dw if need_w else None, dwv if need_wv else None, dx if need_x else None, None,
            None)


torch.library.register_autograd(_EDGE_VALUES, _edge_values_backward, setup_context=_save_inputs)


def node_table(y: Tensor, w: Tensor) -> Tensor:
    r"""The node table :math:`\mathbf{W}^{h\top}\mathbf{y}^h_n`, ``[H, N, D]``,
    of the rows ``y [N, H, C]`` and an edge projection ``w [H·C, D]``: one
    cross term, :math:`\mathbf{q}^h_i\cdot\mathbf{W}^h_{ke}\mathbf{e} =
    (\mathbf{W}^{h\top}_{ke}\mathbf{q}^h_i)\cdot\mathbf{e}` (or ``k`` with
    ``W_qe``), met per edge."""
    H, C = y.size(1), y.size(2)
    return torch.einsum("nhc,hcd->hnd", y, w.view(H, C, -1))


def edge_scores(q: Tensor, k: Tensor, edge_attr: Tensor, w_eq: Optional[Tensor],
                w_ek: Optional[Tensor], csr: EdgeCSR, order: Optional[Tensor] = None) -> Tensor:
    r"""The edge-feature part of :math:`\mathbf{q}_{ij}\cdot\mathbf{k}_{ij}`,
    [E, H] in CSR order (unscaled); ``q`` [N_t, H, C], ``k`` [N_s, H, C];
    ``edge_attr`` [E, D] in CSR order or, with ``order`` (CSR position -> row
    of ``edge_attr``), in the caller's.

    Each cross term is regrouped, :math:`\mathbf{q}_i\cdot\mathbf{W}_{ke}
    \mathbf{e} = (\mathbf{W}_{ke}^\top\mathbf{q}_i)\cdot\mathbf{e}`, a node
    table met per edge (no per-edge projection at all): alone through a
    sampled product of the table, both together in one C++ op
    (:func:`edge_cross`, whose passes make each node's table row when they
    meet the node, no table in memory), and then the edge's term with
    itself is the symmetric quadratic form :func:`edge_quadratic` of
    :func:`quadratic_coefficients`. Where that runs
    as PyTorch products (not on the CPU, or without the C++ kernels) the
    per-edge projections :math:`\mathbf{W}_{qe}\mathbf{e}`,
    :math:`\mathbf{W}_{ke}\mathbf{e}` are cheaper: with both, all terms are
    then computed from them in chunks of edges (:class:`ChunkedEdgeScores`);
    above :data:`RECOMPUTE_ABOVE` elements only the [E, H] result is kept and
    backward recomputes the chunks.

    With both and the kernels, ``edge_attr`` is read in the caller's order
    by one op (the cross terms through ``order``, the quadratic form, which
    is per edge, in that order and then its [E, H] result put in CSR order);
    everywhere else it is first put in CSR order."""
    assert w_eq is not None or w_ek is not None, "edge_scores needs an edge projection"
    both = w_eq is not None and w_ek is not None
    if order is not None and not _scores_read_through_order(edge_attr, w_eq, w_ek):
        edge_attr, order = edge_attr.index_select(0, order), None
    if both and not _kernels_for(edge_attr):
        w_qk = torch.cat([w_eq, w_ek], dim=0)
        return ChunkedEdgeScores.apply(q, k, edge_attr, w_qk, csr.col, csr.row)
    if not both:   # one cross term: its node table, met per edge by a sampled product
        if w_ek is not None:
            return GatherDot.apply(node_table(q, w_ek), edge_attr, Grouping.targets(csr))
        return GatherDot.apply(node_table(k, w_eq), edge_attr, Grouping.sources(csr))
    # both: q_i · W_ke e = (W_ke^T q_i) · e and W_qe e · k_j = (W_qe^T k_j) · e
    # with the table rows made in the kernels' passes, plus (W_qe e) · (W_ke e) =
    # e^T M e, the symmetric form, in the same op
    return edge_cross(q, k, w_ek, w_eq, edge_attr, csr, order,
                      quadratic_coefficients(w_eq, w_ek, q.size(1)))


class PerEdgeTerms:
    """Edge terms from features per edge.

    Args:
        edge_attr (Tensor [E, D]): edge features, grouped by target, or in
            the caller's order with ``order``.
        w_eq, w_ek, w_ev (Tensor [H·C, D] or None): the edge projections.
        csr (EdgeCSR): the edges.
        order (LongTensor [E], optional): the row of ``edge_attr`` of each
            edge of ``csr`` (CSR position -> row; the edge set's
            :attr:`~graphformer.nn.EdgeSet.perm`). The C++ kernels read the
            features through it, so that they are never copied into CSR
            order (nor their gradient back); other paths copy them once
            (:meth:`per_edge`).
    """

    def __init__(self, edge_attr: Tensor, w_eq: Optional[Tensor], w_ek: Optional[Tensor],
                 w_ev: Optional[Tensor], csr: EdgeCSR, order: Optional[Tensor] = None) -> None:
        self.edge_attr, self.csr, self.order = edge_attr, csr, order
        self.w_eq, self.w_ek, self.w_ev = w_eq, w_ek, w_ev
        self._sorted: Optional[Tensor] = None

    def scores(self, q: Tensor, k: Tensor) -> Optional[Tensor]:
        """The edge score terms [H, E] (unscaled), or None."""
        if self.w_eq is None and self.w_ek is None:
            return None
        if _scores_read_through_order(self.edge_attr, self.w_eq, self.w_ek):
            edge_attr, order = self.edge_attr, self.order
        else:   # the copy in CSR order, made once and shared with values()
            edge_attr, order = self.per_edge(), None
        return edge_scores(q, k, edge_attr, self.w_eq, self.w_ek, self.csr, order).t()

    def values(self, weights: Tensor) -> Optional[Tensor]:
        r"""The edge value term [N_t, H, C] of the weights [H, E], or None:
        :math:`\mathbf{W}^h_{ve}\sum_j w^h_{ij}\mathbf{e}_{ij}`, the sums
        projected in the same pass on the CPU with the C++ kernels
        (``torch.ops.graphformer.edge_values``), elsewhere a sparse product
        ``[H, N_t, D]`` then the projection."""
        if self.w_ev is None:
            return None
        if _kernels_for(self.edge_attr):
            return torch.ops.graphformer.edge_values(weights, self.w_ev, self.edge_attr,
                                                     self.csr.ptr, self.order)
        sums = ScatterSum.apply(weights, self.per_edge(), Grouping.targets(self.csr))
        H, D = sums.size(0), sums.size(2)
        return torch.einsum("hnd,hcd->nhc", sums, self.w_ev.view(H, -1, D))

    def block_terms(self, heads: int) -> Optional[Tuple[Tensor, Tensor, Tensor, Tensor]]:
        """What one op over the whole attention block (the ``fused_cpu``
        backend's ``edge_feature_attention``) takes of these terms besides
        the queries and keys: the cross terms' weights, the quadratic
        coefficients and the value projection ``(W_ke [H·C, D], W_qe [H·C,
        D], c [D (D + 1) / 2, H], W_ve [H·C, D])`` (the op's passes make the
        node tables' rows ``W_ke^T q_i``, ``W_qe^T k_j`` as they meet the
        nodes, and project the value sums as they make them), when all three
        edge projections are present and the C++ kernels take the features;
        else None (the terms then go through :meth:`scores` and
        :meth:`values`)."""
        if self.w_ev is None or not _scores_read_through_order(self.edge_attr, self.w_eq,
                                                               self.w_ek):
            return None
        return (self.w_ek, self.w_eq, quadratic_coefficients(self.w_eq, self.w_ek, heads),
                self.w_ev)

    def per_edge(self) -> Tensor:
        """The features of every edge, [E, D], in CSR order."""
        if self.order is None:
            return self.edge_attr
        if self._sorted is None:
            self._sorted = self.edge_attr.index_select(0, self.order)
        return self._sorted


class TypedEdgeTerms:
    """Edge terms from features per edge type (see the module documentation).

    Args:
        table (Tensor [R, D]): the features of every type.
        edge_type (LongTensor [E]): the type of every edge, grouped by target.
        w_eq, w_ek, w_ev (Tensor [H·C, D] or None): the edge projections.
        csr (EdgeCSR): the edges.
        heads (int): H.
        slots ((LongTensor [E], LongTensor [E]), optional): ``target · R +
            type`` and ``source · R + type`` of every edge (from
            :meth:`~graphformer.nn.EdgeSet.type_slots`, built once per edge
            set; computed here when None).
    """

    def __init__(self, table: Tensor, edge_type: Tensor, w_eq: Optional[Tensor],
                 w_ek: Optional[Tensor], w_ev: Optional[Tensor], csr: Optional[EdgeCSR],
                 heads: int, slots: Optional[Tuple[Tensor, Tensor]] = None) -> None:
        self.table, self.edge_type, self.csr, self.heads = table, edge_type, csr, heads
        R = table.size(0)
        if slots is None and csr is not None:
            slots = (csr.row * R + edge_type, csr.col * R + edge_type)
        self.slots = slots

        def project(w: Optional[Tensor]) -> Optional[Tensor]:   # [R, H, C]
            return None if w is None else (table @ w.t()).view(R, heads, -1)

        self.w_eq, self.w_ek, self.w_ev = w_eq, w_ek, w_ev
        self.q_type, self.k_type, self.v_type = project(w_eq), project(w_ek), project(w_ev)

    def tables(self, q: Tensor, k: Tensor) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        r"""The score terms as node-by-type tables: ``(T [H, N_t, R], U [H,
        N_s, R])``, each None when its projection is absent, with
        :math:`T^h_{i,r} = \mathbf{q}^h_i\cdot\mathbf{K}^h_r + \mathbf{Q}^h_r
        \cdot\mathbf{K}^h_r` and :math:`U^h_{j,r} = \mathbf{Q}^h_r\cdot
        \mathbf{k}^h_j`; edge ``e = (j -> i)`` of type ``r`` scores
        :math:`T^h_{i,r} + U^h_{j,r}` (unscaled)."""
        target = source = None
        if self.k_type is not None:          # q_i · K_t (+ Q_t · K_t)
            target = torch.bmm(q.transpose(0, 1), self.k_type.permute(1, 2, 0))  # [H, N_t, R]
            if self.q_type is not None:
                target = target + (self.q_type * self.k_type).sum(-1).t().unsqueeze(1)
        if self.q_type is not None:          # Q_t · k_j
            source = torch.bmm(k.transpose(0, 1), self.q_type.permute(1, 2, 0))  # [H, N_s, R]
        return target, source

    def scores(self, q: Tensor, k: Tensor) -> Optional[Tensor]:
        """The edge score terms [H, E] (unscaled), or None: :meth:`tables`
        gathered per edge (``slot = node · R + type``)."""
        to_target, from_source = self.slots
        out = None
        for table, slot in zip(self.tables(q, k), (to_target, from_source)):
            if table is not None:
                term = table.reshape(table.size(0), -1).index_select(1, slot)
                out = term if out is None else out + term
        return out

    def values(self, weights: Tensor) -> Optional[Tensor]:
        """The edge value term [N_t, H, C] of the weights [H, E], or None."""
        if self.v_type is None:
            return None
        H, R, N = weights.size(0), self.table.size(0), self.csr.num_rows
        per_type = weights.new_zeros(H, N * R).index_add(1, self.slots[0], weights)  # [H, N·R]
        per_type = per_type.view(H, N, R)
        v_type = self.v_type.transpose(0, 1)                                     # [H, R, C]
        finite = torch.isfinite(v_type)
        if bool(finite.all()):
            return torch.bmm(per_type, v_type).transpose(0, 1)                   # [H, N, C]
        # A non-finite V_r must reach only the nodes with edges of type r: the
        # product's 0 · NaN would spread it to every node. Finite part by the
        # product, the non-finite rows added where their weight is nonzero.
        out = torch.bmm(per_type, v_type.masked_fill(~finite, 0.0))
        for r in (~finite).any(2).any(0).nonzero().flatten().tolist():
            w = per_type[:, :, r:r + 1]                                            # [H, N, 1]
            v_r, ok = v_type[:, r:r + 1], finite[:, r:r + 1]                       # [H, 1, C]
            bad = v_r - v_r.masked_fill(~ok, 0.0)         # the non-finite entries, 0 elsewhere
            reached = (w != 0).expand(-1, -1, bad.size(2))
            out = out + w * torch.where(reached, bad.expand(-1, N, -1), 0.0)
        return out.transpose(0, 1)

    def per_edge(self) -> Tensor:
        """The features of every edge, [E, D] (``table[edge_type]``)."""
        return self.table.index_select(0, self.edge_type)



