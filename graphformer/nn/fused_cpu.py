r"""Fused attention over an edge set on the CPU, as C++ kernels.

The CPU counterpart of :mod:`graphformer.nn.fused`: one pass over each
target's incoming edges (CSR over targets: the edges into target :math:`i`
are ``ptr[i]:ptr[i+1]``, ``col[e]`` is the source :math:`j` of edge
:math:`e`) computes, for every head :math:`h`,

.. math::
    s^h_e &= \sigma\big(\mathbf{q}^h_i \cdot \mathbf{k}^h_j + b^h_e
        + T^h_{i, t_e} + U^h_{j, t_e}\big), \qquad
    \alpha^h_e = \operatorname{softmax}_{e \to i}(s^h_e)

    \mathbf{o}^h_i &= \sum_{e = (j \to i)} \alpha^h_e \, m^h_e \,
        \big(\mathbf{v}^h_j + \mathbf{V}^h_{t_e}\big)

with :math:`\sigma = 1/\sqrt{C}`, :math:`b` an optional additive score per
edge and head (``-inf`` masks an edge for a head), :math:`T` [H, N_t, R] and
:math:`U` [H, N_s, R] optional node-by-type score tables and :math:`\mathbf{V}`
[R, H, C] optional value vectors per edge type :math:`t_e`
(:class:`~graphformer.nn.edge_terms.TypedEdgeTerms`), and :math:`m` the
attention-dropout multiplier: :math:`1/(1-p)` where edge :math:`e`, head
:math:`h` is kept, 0 where it is dropped. Nothing of size E×H×C is built;
of size E×H only the weights :math:`\alpha` (returned, and kept for
backward), the dropout decisions (bytes) and, in backward, the score
gradients.

The dropout decision is a counter-based hash (SplitMix64) of a 64-bit seed
and the position ``h * E + e`` (:data:`DROPOUT_BITS`); the forward keeps the
decisions as one byte per edge and head for backward, and the seed is drawn
from PyTorch's default generator, so ``torch.manual_seed`` makes runs
reproducible. :func:`dropout_multiplier` gives the same multipliers as a
tensor (for tests and for per-edge value terms).

Backward, per head (:math:`g_e` the gradient reaching :math:`\alpha_e`):

.. math::
    g_e = \bar\alpha_e + m_e\, \partial\mathbf{o}_i \cdot (\mathbf{v}_j +
        \mathbf{V}_{t_e}), \qquad
    \partial s_e = \alpha_e \big(g_e - \textstyle\sum_{e' \to i}
        \alpha_{e'} g_{e'}\big)

    \partial\mathbf{q}_i = \sigma \sum_{e \to i} \partial s_e \mathbf{k}_j,
    \quad \partial\mathbf{k}_j \mathrel{+}= \sigma\, \partial s_e \mathbf{q}_i,
    \quad \partial\mathbf{v}_j, \partial\mathbf{V}_{t_e} \mathrel{+}=
        \alpha_e m_e \partial\mathbf{o}_i, \quad
    \partial b_e = \partial T_{i,t_e} = \partial U_{j,t_e} = \sigma\,\partial s_e
    \ (\text{summed per table entry})

where :math:`\bar\alpha` is a gradient given to the weights themselves.
Forward runs targets in parallel; backward runs targets in parallel for
:math:`\partial\mathbf{q}`, :math:`\partial s` and :math:`\partial T`, then
sources in parallel (the edge set grouped by source, built once per edge set
by :meth:`~graphformer.nn.csr.EdgeCSR.transpose`) for
:math:`\partial\mathbf{k}`, :math:`\partial\mathbf{v}` and
:math:`\partial U`: every gradient row is written by one thread, so no
atomics are needed. The threads are PyTorch's (``torch.set_num_threads``).

Shapes: N_t target and N_s source nodes, E edges, H heads, C channels per
head, R edge types. Float32 and float64; indices int64.

The kernels are C++ (``cpu_kernels.cpp``), built on first use with
``torch.utils.cpp_extension`` by :mod:`graphformer.nn.cpu_kernels`, as
the CPU implementations of PyTorch custom ops
(``torch.ops.graphformer.fused_attention``, its ``fused_attention_backward``
as the registered autograd formula, ``dropout_multiplier``), each with a fake
implementation: :func:`torch.compile` and :func:`torch.export.export` trace
them without a graph break. With per-edge features and all three edge
projections the backend runs the whole block as one op,
``edge_feature_attention`` (the cross terms of
:mod:`~graphformer.nn.edge_terms` as the bias, this kernel, the value sums;
one autograd node, so that the features get one gradient). Where they cannot be built
:func:`fused_cpu_available` is False, :func:`fused_cpu_unavailable` says why,
``"auto"`` picks another backend and an explicit ``backend="fused_cpu"``
raises that reason.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from .call import AttentionCall
from .cpu_kernels import (define_op, dropout_threshold, kernels_available, kernels_unavailable,
                          seed_tensor)
from .csr import EdgeCSR
from .edge_terms import PerEdgeTerms, TypedEdgeTerms
from .first_order import first_order

__all__ = ["fused_cpu_available", "fused_cpu_unavailable", "fused_cpu_attention",
           "fused_cpu_backend", "dropout_multiplier"]

#: Resolution of the attention-dropout probability: an edge is dropped when
#: the top 32 bits of its hash are below ``round(p * 2**32)``.
DROPOUT_BITS = 32   # cpu_kernels.cpp: ATTENTION_DROPOUT_BITS


def fused_cpu_available(device: torch.device = torch.device("cpu")) -> bool:
    """True when the CPU kernels can run on tensors of ``device`` (a CPU
    device, and the kernels built; the first call may build them)."""
    return torch.device(device).type == "cpu" and kernels_available()


def fused_cpu_unavailable() -> str:
    """Why the CPU kernels cannot run here ("" when they can)."""
    return kernels_unavailable()


def dropout_multiplier(seed: int, heads: int, num_edges: int, p: float,
                       dtype: torch.dtype = torch.float32) -> Tensor:
    """The attention-dropout multipliers [H, E] the kernels apply for ``seed``
    and ``p``: 0 where dropped, ``1 / (1 - p)`` where kept (the custom op
    ``torch.ops.graphformer.dropout_multiplier``).

    Raises:
        RuntimeError: when the kernels cannot be built here."""
    if not kernels_available():
        raise RuntimeError(f"the CPU kernels are unavailable: {kernels_unavailable()}")
    return torch.ops.graphformer.dropout_multiplier(seed, heads, num_edges, p, dtype)


#: ``torch.ops.graphformer.dropout_multiplier``: no tensor argument, so no
#: backend to dispatch on: :func:`dropout_multiplier` loads the kernels first.
_MULTIPLIER = define_op("dropout_multiplier", "(SymInt seed, SymInt heads, SymInt num_edges, "
                        "float p, ScalarType dtype) -> Tensor", loads=False)


@torch.library.register_fake(_MULTIPLIER)
def _(seed: int, heads: int, num_edges: int, p: float, dtype: torch.dtype) -> Tensor:
    return torch.empty(heads, num_edges, dtype=dtype)


#: ``torch.ops.graphformer.fused_attention(q, k, v, ptr, col, ptr_t, row_t,
#: perm, bias, edge_type, target_table, source_table, type_values, seed,
#: scale, dropout) -> (out [N_t, H, C], alpha [H, E], keep)``: the forward
#: kernel on checked, contiguous input (the module documentation has the
#: equations; the kernels do not check bounds: :func:`fused_cpu_attention`
#: does). ``ptr_t``, ``row_t``, ``perm``: the edge set grouped by source
#: (:meth:`~graphformer.nn.csr.EdgeCSR.transpose`), read by the backward only
#: (empty tensors when no gradient is needed). ``seed``: int64 [1]. ``alpha``:
#: the weights before dropout; ``keep`` the dropout decisions, uint8 [H, E]
#: (1 = kept), or empty [0] without dropout.
_FUSED_ATTENTION = define_op(
    "fused_attention",
    "(Tensor q, Tensor k, Tensor v, Tensor ptr, Tensor col, Tensor ptr_t, Tensor row_t, "
    "Tensor perm, Tensor? bias, Tensor? edge_type, Tensor? target_table, "
    "Tensor? source_table, Tensor? type_values, Tensor seed, float scale, float dropout) "
    "-> (Tensor, Tensor, Tensor)")


@torch.library.register_fake(_FUSED_ATTENTION)
def _(q, k, v, ptr, col, ptr_t, row_t, perm, bias, edge_type, target_table, source_table,
      type_values, seed, scale, dropout):
    N, H, C = q.shape
    E = col.shape[0]
    keep = q.new_empty((H, E) if dropout > 0.0 else (0,), dtype=torch.uint8)
    return q.new_empty(N, H, C), q.new_empty(H, E), keep


#: ``torch.ops.graphformer.fused_attention_backward(dout, dalpha, q, k, v, ptr,
#: col, ptr_t, row_t, perm, edge_type, type_values, alpha, keep, num_types,
#: target_table_grad, source_table_grad, scale, dropout)``: the two backward
#: kernels (by target, then by source). Returns ``(dq, dk, dv, ds [H, E],
#: dtarget_table [H, N_t, R], dsource_table [H, N_s, R], wsum [N_t, H, R])``
#: (``ds``: the gradient of the bias, [E, H] with ``ds_by_edge``; ``wsum``:
#: the kept weight per target, head and type, from which the gradient of the
#: type values follows); the tables' gradients and ``wsum`` are empty [0]
#: where not asked for (``*_grad``; no ``type_values``). The forward reads
#: the bias [H, E] in any layout (through its strides).
_FUSED_ATTENTION_BACKWARD = define_op(
    "fused_attention_backward",
    "(Tensor dout, Tensor? dalpha, Tensor q, Tensor k, Tensor v, Tensor ptr, Tensor col, "
    "Tensor ptr_t, Tensor row_t, Tensor perm, Tensor? edge_type, Tensor? type_values, "
    "Tensor alpha, Tensor keep, SymInt num_types, bool target_table_grad, "
    "bool source_table_grad, float scale, float dropout, bool ds_by_edge=False) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")


@torch.library.register_fake(_FUSED_ATTENTION_BACKWARD)
def _(dout, dalpha, q, k, v, ptr, col, ptr_t, row_t, perm, edge_type, type_values, alpha,
      keep, num_types, target_table_grad, source_table_grad, scale, dropout, ds_by_edge=False):
    N, H, C = q.shape
    E, Ns, R = col.shape[0], k.shape[0], num_types
    return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v),
            q.new_empty((E, H) if ds_by_edge else (H, E)),
            q.new_empty((H, N, R) if target_table_grad else (0,)),
            q.new_empty((H, Ns, R) if source_table_grad else (0,)),
            q.new_empty((N, H, R) if type_values is not None else (0,)))


def _setup_fused(ctx, inputs, output) -> None:
    (q, k, v, ptr, col, ptr_t, row_t, perm, bias, edge_type, tq, tk, vt, seed, scale,
     dropout) = inputs
    _, alpha, keep = output
    ctx.save_for_backward(q, k, v, ptr, col, ptr_t, row_t, perm, edge_type, vt, alpha, keep)
    ctx.consts = (_types(tq, tk, vt), tq is not None, tk is not None, scale, dropout,
                  bias is not None)


@first_order(_FUSED_ATTENTION)
def _fused_backward(ctx, dout, dalpha, _dkeep):
    q, k, v, ptr, col, ptr_t, row_t, perm, edge_type, vt, alpha, keep = ctx.saved_tensors
    R, has_tq, has_tk, scale, dropout, has_bias = ctx.consts
    if dout is None:
        dout = torch.zeros_like(q)
    dq, dk, dv, ds, dtq, dtk, wsum_rows = torch.ops.graphformer.fused_attention_backward(
        dout, dalpha, q, k, v, ptr, col, ptr_t, row_t, perm, edge_type, vt, alpha, keep, R,
        has_tq, has_tk, scale, dropout)
    dvt = None
    if vt is not None:   # dV_t = sum_i wsum[i, h, t] dout[i, h]: one [H, R, N] @ [H, N, C]
        dvt = torch.bmm(wsum_rows.permute(1, 2, 0), dout.transpose(0, 1)).permute(1, 0, 2)
    return (dq, dk, dv, None, None, None, None, None, ds if has_bias else None, None,
            dtq if has_tq else None, dtk if has_tk else None, dvt, None, None, None)


torch.library.register_autograd(_FUSED_ATTENTION, _fused_backward, setup_context=_setup_fused)


@torch.library.custom_op("graphformer::edge_feature_attention", mutates_args=(),
                         device_types="cpu")
def _edge_feature_attention(q: Tensor, k: Tensor, v: Tensor, wa: Tensor, wb: Tensor,
                            x: Tensor, c: Tensor, wv: Tensor, ptr: Tensor, col: Tensor,
                            ptr_t: Tensor, row_t: Tensor, perm: Tensor, order: Optional[Tensor],
                            masked: Optional[Tensor], seed: Tensor, scale: float, dropout: float
                            ) -> Tuple[Tensor, Tensor, Tensor]:
    """The attention block with per-edge features in one op: the cross terms
    and quadratic form of the features (``edge_cross`` of ``q`` and ``k``
    with the weights ``wa``, ``wb``, coefficients ``c``) as the bias
    (``-inf`` where ``masked`` [H, E]), the fused attention, and the value
    term of the features, their sums weighted by the kept weights and
    projected by ``wv`` (``edge_values_into``, added into the attention's
    fresh output). Returns ``(out [N_t, H, C], alpha [H, E], keep)``. One
    autograd node for all three, so that the features ``x`` get one
    gradient (the value term's added into ``edge_cross_backward``'s, one
    buffer) instead of two [E, D] gradients for autograd to add."""
    ops = torch.ops.graphformer
    bias = ops.edge_cross(q, k, wa, wb, x, ptr, col, ptr_t, perm, order, c).t()
    if masked is not None:
        bias = bias.masked_fill(masked, float("-inf"))
    out, alpha, keep = ops.fused_attention(q, k, v, ptr, col, ptr_t, row_t, perm, bias, None,
                                           None, None, None, seed, scale, dropout)
    ops.edge_values_into(out, _kept_weights(alpha, keep, dropout), wv, x, ptr, order)
    return out, alpha, keep


def _kept_weights(alpha: Tensor, keep: Tensor, dropout: float) -> Tensor:
    """The weights the values are summed with: ``alpha`` times the dropout
    multipliers the forward applied (none when ``keep`` is empty)."""
    return alpha * _multipliers(keep, dropout, alpha.dtype) if keep.numel() else alpha


def _multipliers(keep: Tensor, dropout: float, dtype: torch.dtype) -> Tensor:
    """The dropout multipliers [H, E] of the decisions ``keep`` [H, E] (bytes,
    1 = kept) the forward applied: ``1 / (1 - p)`` where kept, 0 elsewhere."""
    return keep.to(dtype).mul_(dropout_threshold(dropout, DROPOUT_BITS)[1])


@_edge_feature_attention.register_fake
def _(q, k, v, wa, wb, x, c, wv, ptr, col, ptr_t, row_t, perm, order, masked, seed, scale,
      dropout):
    N, H, C = q.shape
    E = col.shape[0]
    keep = q.new_empty((H, E) if dropout > 0.0 else (0,), dtype=torch.uint8)
    return q.new_empty(N, H, C), q.new_empty(H, E), keep


def _setup_edge_feature_attention(ctx, inputs, output) -> None:
    (q, k, v, wa, wb, x, c, wv, ptr, col, ptr_t, row_t, perm, order, masked, seed, scale,
     dropout) = inputs
    _, alpha, keep = output
    ctx.save_for_backward(q, k, v, wa, wb, x, c, wv, ptr, col, ptr_t, row_t, perm, order,
                          masked, alpha, keep)
    ctx.consts = (scale, dropout)


@first_order("graphformer::edge_feature_attention")
def _edge_feature_attention_backward(ctx, dout, dalpha, _dkeep):
    (q, k, v, wa, wb, x, c, wv, ptr, col, ptr_t, row_t, perm, order, masked, alpha,
     keep) = ctx.saved_tensors
    scale, dropout = ctx.consts
    need_q, need_k, need_v, need_wa, need_wb, need_x, need_c, need_wv = ctx.needs_input_grad[:8]
    ops = torch.ops.graphformer
    if dout is None:
        dout = torch.zeros_like(q)
    # the value term's gradients: of the weights (then of alpha), of the
    # projection, and x's, into which the cross terms' are then added
    mult = _multipliers(keep, dropout, alpha.dtype) if keep.numel() else None
    weights = alpha if mult is None else alpha * mult
    dw, dx, dwv = ops.edge_values_backward(dout, weights, wv, x, ptr, order, True, need_x,
                                           need_wv)
    if mult is not None:
        dw = dw * mult
    dalpha = dw if dalpha is None else dalpha + dw
    dq, dk, dv, ds, _, _, _ = ops.fused_attention_backward(
        dout, dalpha, q, k, v, ptr, col, ptr_t, row_t, perm, None, None, alpha, keep, 0, False,
        False, scale, dropout, True)                  # ds [E, H], as edge_cross gave the bias
    if masked is not None:   # the masked scores' gradient (0 already: their alpha is 0)
        ds = ds.masked_fill(masked.t(), 0.0)
    # the cross terms' gradients of q, k and x added into those we hold (fresh, ours)
    _, _, dwa, dwb, _, dc = ops.edge_cross_backward(
        ds, q, k, wa, wb, x, ptr, col, ptr_t, perm, order, c, need_q, need_k, need_wa, need_wb,
        need_x, need_c, dq, dk, dx if need_x else None)
    return (dq if need_q else None, dk if need_k else None,
            dv if need_v else None, dwa if need_wa else None, dwb if need_wb else None,
            dx if need_x else None, dc if need_c else None, dwv if need_wv else None,
            *(None,) * 10)


_edge_feature_attention.register_autograd(_edge_feature_attention_backward,
                                          setup_context=_setup_edge_feature_attention)


def _types(tq: Optional[Tensor], tk: Optional[Tensor], vt: Optional[Tensor]) -> int:
    """R, the number of edge types of the tables (0 without any)."""
    if tq is not None:
        return tq.size(2)
    if tk is not None:
        return tk.size(2)
    return vt.size(0) if vt is not None else 0


def fused_cpu_attention(q: Tensor, k: Tensor, v: Tensor, ptr: Tensor, col: Tensor, *,
                        bias: Optional[Tensor] = None, edge_type: Optional[Tensor] = None,
                        target_table: Optional[Tensor] = None,
                        source_table: Optional[Tensor] = None,
                        type_values: Optional[Tensor] = None, dropout: float = 0.0,
                        seed: Optional[int] = None, scale: Optional[float] = None,
                        ) -> Tuple[Tensor, Tensor, int]:
    r"""Attention over an edge set grouped by target, fused (see the module
    documentation for the equations).

    Args:
        q (Tensor [N_t, H, C]): queries, float32 or float64.
        k, v (Tensor [N_s, H, C]): keys and values, dtype of ``q``.
        ptr (LongTensor [N_t + 1]): the edges into target ``i`` are
            ``ptr[i]:ptr[i + 1]``.
        col (LongTensor [E]): source of each edge, in that order.
        bias (Tensor [H, E], optional): additive score (before the scale);
            ``-inf`` masks an edge for a head.
        edge_type (LongTensor [E], optional): type of every edge, in
            ``[0, R)``; needed by the three tables below.
        target_table (Tensor [H, N_t, R], optional): score term
            :math:`T^h_{i, t_e}` of edge ``e`` into ``i``.
        source_table (Tensor [H, N_s, R], optional): score term
            :math:`U^h_{j, t_e}` of edge ``e`` from ``j``.
        type_values (Tensor [R, H, C], optional): value vector of each type.
        dropout (float): attention-dropout probability (0: none).
        seed (int, optional): the dropout hash's seed (default: drawn from
            PyTorch's default generator when ``dropout > 0``).
        scale (float, optional): :math:`\sigma`, default :math:`1/\sqrt{C}`.

    Returns:
        ``(out [N_t, H, C], alpha [H, E], seed)``: ``alpha`` the weights
        before dropout (differentiable), ``seed`` the one used.

    Raises:
        ValueError: on bad shapes, dtypes, devices, CSR structure or edge
            types (checked before any kernel runs: the kernels do not check
            bounds).
        RuntimeError: when the kernels cannot be built here
            (:func:`fused_cpu_unavailable` says why).
    """
    _check(q, k, v, ptr, col, bias, edge_type, target_table, source_table, type_values)
    out, alpha, seed_t, _ = _attend(q, k, v,
                                    EdgeCSR(ptr.contiguous(), col.contiguous(), k.size(0)),
                                    bias, edge_type, target_table, source_table, type_values,
                                    dropout, seed, scale)
    return out, alpha, int(seed_t.item()) % 2**64


def _attend(q: Tensor, k: Tensor, v: Tensor, csr: EdgeCSR, bias: Optional[Tensor],
            edge_type: Optional[Tensor], target_table: Optional[Tensor],
            source_table: Optional[Tensor], type_values: Optional[Tensor], dropout: float,
            seed: Optional[int], scale: Optional[float]
            ) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """:func:`fused_cpu_attention` on checked input (the kernels do not check
    bounds): ``(out, alpha, seed [1], keep)``, ``keep`` the forward's dropout
    decisions (uint8 [H, E], 1 = kept; None without dropout)."""
    if not kernels_available():
        raise RuntimeError(f"the fused_cpu backend is unavailable: {kernels_unavailable()}")
    scale, seed_t = _scale_and_seed(q.size(2), dropout, scale, seed)
    tensors = [q, k, v, bias, target_table, source_table, type_values]
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        transposed, perm = csr.transpose()     # for backward; built once per edge set
        ptr_t, row_t = transposed.ptr, transposed.col
    else:
        ptr_t = row_t = perm = csr.ptr.new_empty(0)
    q, k, v, _, target_table, source_table, type_values = (   # the bias in any layout
        t.contiguous() if t is not None else None for t in tensors)
    out, alpha, keep = torch.ops.graphformer.fused_attention(
        q, k, v, csr.ptr, csr.col, ptr_t, row_t, perm, bias,
        edge_type.contiguous() if edge_type is not None else None, target_table, source_table,
        type_values, seed_t, scale, float(dropout))
    return out, alpha, seed_t, keep if dropout > 0.0 else None


def _scale_and_seed(C: int, dropout: float, scale: Optional[float], seed: Optional[int]
                    ) -> Tuple[float, Tensor]:
    """The kernels' scale (default :math:`1/\\sqrt{C}`) and seed tensor (drawn
    when ``seed`` is None and there is dropout), for a checked ``dropout``."""
    if not 0.0 <= dropout <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {dropout}")
    if scale is None:
        scale = 1.0 / math.sqrt(C) if C else 1.0
    return float(scale), seed_tensor(seed if seed is not None or dropout > 0.0 else 0)


def _check(q, k, v, ptr, col, bias, edge_type, tq, tk, vt) -> None:
    tensors = dict(q=q, k=k, v=v, bias=bias, target_table=tq, source_table=tk, type_values=vt)
    for name, t in tensors.items():
        if t is None:
            continue
        if t.device.type != "cpu":
            raise ValueError(f"'{name}' must be on the CPU, got {t.device}")
        if t.dtype != q.dtype or q.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"'{name}' must be float32 or float64 like 'q', got {t.dtype}")
    if q.dim() != 3 or k.dim() != 3 or k.shape != v.shape or k.shape[1:] != q.shape[1:]:
        raise ValueError(f"q [N_t, H, C] and k, v [N_s, H, C] expected, got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    N_t, H, C = q.shape
    N_s = k.size(0)
    for name, t in (("ptr", ptr), ("col", col), ("edge_type", edge_type)):
        if t is not None and (t.dtype != torch.int64 or t.dim() != 1 or t.device.type != "cpu"):
            raise ValueError(f"'{name}' must be a 1-D int64 CPU tensor, got {t.dtype}, "
                             f"shape {tuple(t.shape)}")
    E = col.numel()
    if ptr.numel() != N_t + 1 or int(ptr[0]) != 0 or int(ptr[-1]) != E:
        raise ValueError(f"'ptr' must have N_t + 1 = {N_t + 1} entries from 0 to E = {E}")
    if N_t and bool((ptr[1:] < ptr[:-1]).any()):
        bad = int((ptr[1:] < ptr[:-1]).nonzero()[0])
        raise ValueError(f"'ptr' decreases at target {bad}")
    if E and (int(col.min()) < 0 or int(col.max()) >= N_s):
        bad = int(((col < 0) | (col >= N_s)).nonzero()[0])
        raise ValueError(f"edge {bad} has source {int(col[bad])}, outside [0, {N_s})")
    if bias is not None and tuple(bias.shape) != (H, E):
        raise ValueError(f"'bias' must be [H, E] = [{H}, {E}], got {tuple(bias.shape)}")
    typed = any(t is not None for t in (tq, tk, vt))
    if typed and edge_type is None:
        raise ValueError("the type tables need 'edge_type'")
    if edge_type is None:
        return
    if edge_type.numel() != E:
        raise ValueError(f"'edge_type' has {edge_type.numel()} entries for {E} edges")
    R = _types(tq, tk, vt)
    for name, t, shape in (("target_table", tq, (H, N_t, R)), ("source_table", tk, (H, N_s, R)),
                           ("type_values", vt, (R, H, C))):
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"'{name}' must be {list(shape)}, got {list(t.shape)}")
    if typed and E and (int(edge_type.min()) < 0 or int(edge_type.max()) >= R):
        bad = int(((edge_type < 0) | (edge_type >= R)).nonzero()[0])
        raise ValueError(f"edge {bad} has type {int(edge_type[bad])}, outside [0, {R})")


def fused_cpu_backend(call: AttentionCall) -> Tuple[Tensor, Optional[Tensor]]:
    """The ``"fused_cpu"`` backend: takes an
    :class:`~graphformer.nn.backend.AttentionCall` and returns ``(out [N_t, H,
    C], alpha [E, H])`` (alpha before dropout, in target order).

    Typed edge terms enter the kernels as their node-by-type tables and value
    vectors per type (no [E, H] term is gathered); per-edge terms as a bias
    [H, E] (:meth:`~graphformer.nn.edge_terms.PerEdgeTerms.scores`) and their
    value term from the weights times the dropout multipliers the forward
    applied; a head mask as a ``-inf`` bias.
    """
    q, k, v, csr, terms = call.q, call.k, call.v, call.edges.csr, call.terms
    H = q.size(1)
    p = call.dropout if call.training else 0.0
    block = terms.block_terms(H) if isinstance(terms, PerEdgeTerms) else None
    if block is not None:
        return _attend_with_edge_features(call, block, p)
    tables: Tuple[Optional[Tensor], Optional[Tensor]] = (None, None)
    bias = type_values = edge_type = None
    if isinstance(terms, TypedEdgeTerms):
        tables = terms.tables(q, k)
        type_values, edge_type = terms.v_type, terms.edge_type
    elif terms is not None:
        bias = terms.scores(q, k)
    if call.head_mask is not None:
        if bias is None:
            bias = q.new_zeros(H, csr.num_edges)
        bias = bias.masked_fill(~call.head_mask.t(), float("-inf"))
    if all(t is None for t in (*tables, type_values)):   # no typed term reads the types
        edge_type = None
    out, alpha, _, keep = _attend(q, k, v, csr, bias, edge_type, tables[0], tables[1],
                                  type_values, p, None, None)
    if terms is not None and not isinstance(terms, TypedEdgeTerms):
        # the weights times the dropout decisions the kernel applied
        edge_values = terms.values(alpha if keep is None else _kept_weights(alpha, keep, p))
        if edge_values is not None:
            out = out + edge_values
    return out, alpha.t()


def _attend_with_edge_features(call: AttentionCall,
                               block: Tuple[Tensor, Tensor, Tensor, Tensor],
                               dropout: float) -> Tuple[Tensor, Optional[Tensor]]:
    """:func:`fused_cpu_backend` for per-edge features with all three edge
    projections: the whole block as one op (``edge_feature_attention``, from
    the terms' :meth:`~graphformer.nn.edge_terms.PerEdgeTerms.block_terms`),
    the value term included."""
    q, k, v, csr, terms = call.q, call.k, call.v, call.edges.csr, call.terms
    scale, seed_t = _scale_and_seed(q.size(2), dropout, None, None)
    transposed, perm = csr.transpose()          # built once per edge set
    masked = None if call.head_mask is None else ~call.head_mask.t()
    wa, wb, c, wv = block
    out, alpha, _ = torch.ops.graphformer.edge_feature_attention(
        q.contiguous(), k.contiguous(), v.contiguous(), wa, wb, terms.edge_attr.contiguous(), c,
        wv, csr.ptr, csr.col, transposed.ptr, transposed.col, perm, terms.order, masked, seed_t,
        scale, float(dropout))
    return out, alpha.t()
