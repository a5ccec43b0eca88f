r"""Fused (FlashAttention-style) attention over an edge set, as Triton kernels.

The edge set is given in CSR form over the *targets*: the incoming edges of
target node :math:`i` are the positions ``ptr[i]:ptr[i+1]``, and ``col[e]`` is
the source node :math:`j` of edge :math:`e = (j \to i)`. For every target
:math:`i` and head :math:`h`:

.. math::
    s^h_e &= \sigma \, \mathbf{q}^h_i \cdot \mathbf{k}^h_j + b^h_e,
    \qquad \sigma = 1 / \sqrt{C} \text{ by default}

    \operatorname{lse}^h_i &= \log \sum_{e \to i} \exp(s^h_e), \qquad
    a^h_e = \exp(s^h_e - \operatorname{lse}^h_i)

    \mathbf{o}^h_i &= \sum_{e = (j \to i)} a^h_e \, \mathbf{v}^h_j, \qquad
    \mathbf{u}^h_i = \sum_{e \to i} a^h_e \, \mathbf{w}_e

where :math:`b` is an optional additive score per edge and head (``-inf``
masks an edge for a head) and :math:`\mathbf{w}_e` optional per-edge value
vectors shared by all heads. A target with no edge, or whose scores are all
``-inf``, gets :math:`\mathbf{o} = \mathbf{u} = 0` (never NaN),
:math:`\operatorname{lse} = -\infty` and zero gradients.

The forward kernel streams each row's edges in blocks with an online softmax
and writes only :math:`\mathbf{o}`, :math:`\operatorname{lse}` (and
:math:`\mathbf{u}`): no ``[E, H]`` score tensor and no ``[E, H, C]`` message
tensor is materialised. The backward recomputes the scores from
:math:`\mathbf{q}, \mathbf{k}, b` and :math:`\operatorname{lse}`:

.. math::
    p_e = \exp(s_e - \operatorname{lse}_i), \quad
    \delta_i = \mathbf{o}_i \cdot \partial\mathbf{o}_i + \mathbf{u}_i \cdot
    \partial\mathbf{u}_i - \partial\operatorname{lse}_i, \quad
    \partial s_e = p_e \big(\partial\mathbf{o}_i \cdot \mathbf{v}_j +
    \partial\mathbf{u}_i \cdot \mathbf{w}_e - \delta_i\big)

    \partial\mathbf{q}_i = \sigma \sum_{e \to i} \partial s_e \, \mathbf{k}_j,
    \quad \partial\mathbf{k}_j \mathrel{+}= \sigma \, \partial s_e \, \mathbf{q}_i,
    \quad \partial\mathbf{v}_j \mathrel{+}= p_e \, \partial\mathbf{o}_i,
    \quad \partial b_e = \partial s_e,
    \quad \partial\mathbf{w}_e \mathrel{+}= p_e \, \partial\mathbf{u}_i

(per head; :math:`\partial\mathbf{w}_e` sums over heads).

Shapes (:math:`N_t` target nodes, :math:`N_s` source nodes, :math:`E` edges,
:math:`H` heads, :math:`C` channels per head, :math:`D_v` edge-value
channels): ``q`` :math:`(N_t, H, C)`, ``k`` and ``v`` :math:`(N_s, H, C)`,
``ptr`` :math:`(N_t + 1)`, ``col`` :math:`(E)`, ``bias`` :math:`(E, H)`,
``edge_values`` :math:`(E, D_v)`.

The kernels run on CUDA tensors, or on CPU tensors under Triton's interpreter
(``TRITON_INTERPRET=1``; slow, for testing). This module imports without
Triton (:data:`HAS_TRITON` is then ``False``). The kernels are built lazily,
once per interpreter mode, because ``triton.jit`` reads ``TRITON_INTERPRET``
when it is applied: setting the variable after importing this module works.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import types
from typing import Any, Optional, Tuple

import torch
from torch import Tensor

from .call import AttentionCall
from .csr import SDDMM
from .first_order import first_order

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only without triton
    triton = None
    tl = None

HAS_TRITON: bool = triton is not None

__all__ = ["HAS_TRITON", "fused_available", "fused_attention", "fused_backend"]

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_NOT_AVAILABLE = ("the fused backend needs a CUDA device with triton installed; "
                  "on CPU set TRITON_INTERPRET=1 (slow, for testing)")


def _interpret_mode() -> bool:
    """Whether Triton would interpret kernels now (read afresh every call)."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:  # triton >= 3.4: the exact rule triton.jit applies
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def fused_available(device: torch.device) -> bool:
    """True when the fused kernels can run on tensors of ``device``: triton is
    importable and the device is CUDA, or it is the CPU and ``TRITON_INTERPRET``
    is set (to ``1``) in the environment."""
    if not HAS_TRITON:
        return False
    device = torch.device(device)
    if device.type == "cuda":
        return True
    return device.type == "cpu" and _interpret_mode()


# --------------------------------------------------------------------------
# Reductions. The kernels call ``tl.reduce`` with triton's own combine
# functions instead of ``tl.sum`` / ``tl.max`` (which are exactly that
# ``tl.reduce`` for float32 input): ``tl.sum`` and ``tl.max`` are
# ``@triton.jit`` helpers built when *triton* is imported, so after
# ``import torch_geometric`` (which imports triton) setting TRITON_INTERPRET=1
# leaves them compiled-mode functions that the interpreter cannot call. The
# interpreter recognises these two combine functions and reduces with numpy.
# Should a future triton rename them, the fallbacks below (jitted at import,
# so only right for the mode set then) are exact but slow when interpreted.
# --------------------------------------------------------------------------

def _add_combine(a, b):
    return a + b


def _max_combine(a, b):
    return tl.maximum(a, b)


if HAS_TRITON:
    _SUM = getattr(tl.standard, "_sum_combine", None) or triton.jit(_add_combine)
    _MAX = getattr(tl.standard, "_elementwise_max", None) or triton.jit(_max_combine)


# --------------------------------------------------------------------------
# Kernels. They are plain functions here and turned into Triton kernels by
# ``_kernels`` at first use (see the module docstring for why).
#
# Layout: every tensor is contiguous, so q[i, h, c] is at (i * H + h) * C + c,
# bias[e, h] at e * H + h and edge_values[e, d] at e * DV + d.
#
# Grid: one program per (target, head), flattened as pid = i * H + h so that
# consecutive programs read the same ``col`` entries and neighbouring head
# slices of the same k / v rows (L2 locality). One program per target row
# (rather than a block of targets, as dense FlashAttention does) because rows
# have arbitrary, uneven lengths: a block of targets would share no keys and
# would pad every row to the block's longest one. The cost is launch /
# occupancy overhead when rows are tiny (see ``_launch_config``).
# --------------------------------------------------------------------------

def _fwd_kernel(Q, K, V, PTR, COL, BIAS, EV, OUT, LSE, EOUT,
                H, C, DV, scale,
                HAS_BIAS: tl.constexpr, HAS_EV: tl.constexpr,
                BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_DV: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    i = pid // H
    h = pid % H
    start = tl.load(PTR + i)
    end = tl.load(PTR + i + 1)

    offs_c = tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    offs_d = tl.arange(0, BLOCK_DV)
    mask_d = offs_d < DV
    q = tl.load(Q + pid * C + offs_c, mask=mask_c, other=0.0).to(tl.float32)

    m_i = tl.full([], float("-inf"), tl.float32)  # running max
    l_i = tl.full([], 0.0, tl.float32)  # running sum of exp(s - m_i)
    acc = tl.full([BLOCK_C], 0.0, tl.float32)
    eacc = tl.full([BLOCK_DV], 0.0, tl.float32)
    for e0 in range(start, end, BLOCK_E):
        offs_e = e0 + tl.arange(0, BLOCK_E)
        mask_e = offs_e < end
        j = tl.load(COL + offs_e, mask=mask_e, other=0)
        kv_off = (j[:, None] * H + h) * C + offs_c[None, :]
        mask_ec = mask_e[:, None] & mask_c[None, :]
        kb = tl.load(K + kv_off, mask=mask_ec, other=0.0).to(tl.float32)
        s = tl.reduce(kb * q[None, :], 1, _SUM) * scale
        if HAS_BIAS:
            s += tl.load(BIAS + offs_e * H + h, mask=mask_e, other=0.0).to(tl.float32)
        s = tl.where(mask_e, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.reduce(s, 0, _MAX))
        # All scores so far -inf: subtract 0 instead, so that exp(-inf - -inf)
        # (NaN) never happens; every p and alpha is then exactly 0.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(s - m_safe)
        l_i = l_i * alpha + tl.reduce(p, 0, _SUM)
        vb = tl.load(V + kv_off, mask=mask_ec, other=0.0).to(tl.float32)
        acc = acc * alpha + tl.reduce(p[:, None] * vb, 0, _SUM)
        if HAS_EV:
            ev_off = offs_e[:, None] * DV + offs_d[None, :]
            evb = tl.load(EV + ev_off, mask=mask_e[:, None] & mask_d[None, :],
                          other=0.0).to(tl.float32)
            eacc = eacc * alpha + tl.reduce(p[:, None] * evb, 0, _SUM)
        m_i = m_new

    # l_i > 0 exactly when some score is finite (the maximal one has p = 1).
    has = l_i > 0.0
    l_safe = tl.where(has, l_i, 1.0)
    tl.store(LSE + pid, tl.where(has, m_i + tl.log(l_safe), float("-inf")))
    tl.store(OUT + pid * C + offs_c, (acc / l_safe).to(OUT.dtype.element_ty), mask=mask_c)
    if HAS_EV:
        tl.store(EOUT + pid * DV + offs_d, (eacc / l_safe).to(EOUT.dtype.element_ty),
                 mask=mask_d)


def _bwd_kernel(Q, K, V, PTR, COL, BIAS, EV, DOUT, DEOUT, LSE, DELTA,
                DQ, DK, DVAL, DBIAS, DEV,
                H, C, DV, scale,
                HAS_BIAS: tl.constexpr, HAS_EV: tl.constexpr,
                NEED_DQ: tl.constexpr, NEED_DK: tl.constexpr, NEED_DVAL: tl.constexpr,
                NEED_DBIAS: tl.constexpr, NEED_DEV: tl.constexpr, NEED_DS: tl.constexpr,
                BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_DV: tl.constexpr):
    # Gradient buffers DQ, DK, DVAL, DBIAS, DEV are float32 and contiguous.
    pid = tl.program_id(0).to(tl.int64)
    i = pid // H
    h = pid % H
    start = tl.load(PTR + i)
    end = tl.load(PTR + i + 1)

    offs_c = tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    offs_d = tl.arange(0, BLOCK_DV)
    mask_d = offs_d < DV
    q = tl.load(Q + pid * C + offs_c, mask=mask_c, other=0.0).to(tl.float32)
    do = tl.load(DOUT + pid * C + offs_c, mask=mask_c, other=0.0).to(tl.float32)
    deo = tl.full([BLOCK_DV], 0.0, tl.float32)
    if HAS_EV:
        deo = tl.load(DEOUT + pid * DV + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    lse = tl.load(LSE + pid)
    # lse = -inf: the row is empty or all -inf; using 0 keeps every p = 0
    # (exp(-inf - 0)) instead of NaN (exp(-inf - -inf)).
    lse = tl.where(lse == float("-inf"), 0.0, lse)
    delta = tl.load(DELTA + pid)

    dq = tl.full([BLOCK_C], 0.0, tl.float32)
    for e0 in range(start, end, BLOCK_E):
        offs_e = e0 + tl.arange(0, BLOCK_E)
        mask_e = offs_e < end
        j = tl.load(COL + offs_e, mask=mask_e, other=0)
        kv_off = (j[:, None] * H + h) * C + offs_c[None, :]
        mask_ec = mask_e[:, None] & mask_c[None, :]
        kb = tl.load(K + kv_off, mask=mask_ec, other=0.0).to(tl.float32)
        s = tl.reduce(kb * q[None, :], 1, _SUM) * scale
        if HAS_BIAS:
            s += tl.load(BIAS + offs_e * H + h, mask=mask_e, other=0.0).to(tl.float32)
        s = tl.where(mask_e, s, float("-inf"))
        p = tl.exp(s - lse)                       # 0 for masked / -inf scores
        if HAS_EV:
            ev_off = offs_e[:, None] * DV + offs_d[None, :]
            mask_ed = mask_e[:, None] & mask_d[None, :]
        if NEED_DS:
            vb = tl.load(V + kv_off, mask=mask_ec, other=0.0).to(tl.float32)
            dp = tl.reduce(vb * do[None, :], 1, _SUM)
            if HAS_EV:
                evb = tl.load(EV + ev_off, mask=mask_ed, other=0.0).to(tl.float32)
                dp += tl.reduce(evb * deo[None, :], 1, _SUM)
            ds = p * (dp - delta)
            if NEED_DQ:
                dq += tl.reduce(ds[:, None] * kb, 0, _SUM)
            if NEED_DK:
                tl.atomic_add(DK + kv_off, (scale * ds)[:, None] * q[None, :], mask=mask_ec,
                              sem="relaxed")
            if NEED_DBIAS:
                tl.store(DBIAS + offs_e * H + h, ds, mask=mask_e)
        if NEED_DVAL:
            tl.atomic_add(DVAL + kv_off, p[:, None] * do[None, :], mask=mask_ec, sem="relaxed")
        if NEED_DEV:
            # Atomic over the H heads of the edge: no [E, H, DV] buffer needed.
            tl.atomic_add(DEV + ev_off, p[:, None] * deo[None, :], mask=mask_ed, sem="relaxed")
    if NEED_DQ:
        tl.store(DQ + pid * C + offs_c, dq * scale, mask=mask_c)


@functools.lru_cache(maxsize=None)
def _kernels(interpret: bool) -> Tuple[Any, Any]:
    """The (forward, backward) Triton kernels for an interpreter mode.

    ``triton.jit`` returns an interpreted or a compiled kernel depending on
    ``TRITON_INTERPRET`` *when it is applied*, so the kernels are built here,
    at first use, and cached per mode (the argument is the cache key).
    """
    assert _interpret_mode() == interpret
    return triton.jit(_isolated(_fwd_kernel)), triton.jit(_isolated(_bwd_kernel))


def _isolated(fn: Any) -> Any:
    """``fn`` with its own globals holding only the names the kernels use.

    Triton's interpreter copies its whole module namespace (about 70 names:
    ``np``, ``ast``, ...) into the kernel's globals; a private dict keeps this
    module's namespace clean. Source and line numbers stay ``fn``'s own.
    """
    scope = {"__name__": __name__, "tl": tl, "triton": triton, "_SUM": _SUM, "_MAX": _MAX}
    clone = types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__,
                               fn.__closure__)
    clone.__qualname__ = fn.__qualname__
    clone.__annotations__ = dict(fn.__annotations__)
    clone.__doc__ = fn.__doc__
    return clone


def _next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def _launch_config(max_degree: int, block_c: int, block_dv: int,
                   block_e: Optional[int]) -> Tuple[int, int]:
    """``(BLOCK_E, num_warps)``: an edge block as long as the longest row, from
    16 to 64 (few distinct values, so few recompilations), smaller when the
    channel tiles are wide; warps in proportion to the tile size, since tiny
    rows would leave most of a 4-warp program idle."""
    if block_e is None:
        block_e = min(64, max(16, _next_pow2(max_degree)))
        while block_e > 16 and block_e * max(block_c, block_dv) > 8192:
            block_e //= 2
    tile = block_e * max(block_c, block_dv)
    num_warps = 4 if tile >= 2048 else 2 if tile >= 512 else 1
    return block_e, num_warps


def _device_ctx(device: torch.device) -> Any:
    """Make ``device`` current for the launch (multi-GPU); no-op on CPU."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


class _FusedAttention(torch.autograd.Function):

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, ptr: Tensor, col: Tensor,
                bias: Optional[Tensor], edge_values: Optional[Tensor], scale: float,
                block_e: int, num_warps: int) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        n_t, heads, channels = q.shape
        dv = edge_values.size(1) if edge_values is not None else 0
        out = torch.empty_like(q)
        lse = torch.empty(n_t, heads, dtype=torch.float32, device=q.device)
        edge_out = (q.new_empty(n_t, heads, dv) if edge_values is not None else None)
        if n_t * heads > 0:
            fwd, _ = _kernels(_interpret_mode())
            dummy = q  # stands for absent optional tensors (never read)
            with _device_ctx(q.device):
                fwd[(n_t * heads,)](
                    q, k, v, ptr, col,
                    bias if bias is not None else dummy,
                    edge_values if edge_values is not None else dummy,
                    out, lse, edge_out if edge_out is not None else dummy,
                    heads, channels, dv, scale,
                    HAS_BIAS=bias is not None, HAS_EV=edge_values is not None,
                    BLOCK_E=block_e, BLOCK_C=_next_pow2(channels), BLOCK_DV=_next_pow2(dv),
                    num_warps=num_warps)
        # Saved: the inputs and the outputs (no [E, H] or [E, H, C] tensor).
        ctx.save_for_backward(q, k, v, ptr, col, bias, edge_values, out, lse, edge_out)
        ctx.scale = scale
        ctx.block_e = block_e
        ctx.num_warps = num_warps
        ctx.set_materialize_grads(False)
        if edge_out is None:
            return out, lse, None
        return out, lse, edge_out

    @staticmethod
    @first_order("the fused Triton attention")
    def backward(ctx: Any, dout: Optional[Tensor], dlse: Optional[Tensor],
                 dedge_out: Optional[Tensor]) -> Tuple[Optional[Tensor], ...]:
        q, k, v, ptr, col, bias, edge_values, out, lse, edge_out = ctx.saved_tensors
        need_dq, need_dk, need_dv, _, _, need_db, need_dev = ctx.needs_input_grad[:7]
        need_db = need_db and bias is not None
        need_dev = need_dev and edge_values is not None
        nones: Tuple[None, ...] = (None,) * 10
        if not (need_dq or need_dk or need_dv or need_db or need_dev):
            return nones
        if dout is None and dlse is None and dedge_out is None:
            return nones  # pragma: no cover - autograd does not call us then
        n_t, heads, channels = q.shape
        n_s = k.size(0)
        num_edges = col.numel()
        has_ev = edge_values is not None
        dv = edge_values.size(1) if has_ev else 0

        f32 = dict(dtype=torch.float32, device=q.device)
        dout = torch.zeros_like(q) if dout is None else dout.contiguous()
        if has_ev:
            dedge_out = (torch.zeros_like(edge_out) if dedge_out is None
                         else dedge_out.contiguous())
        # delta_i = dout_i . out_i (+ dedge_out_i . edge_out_i) - dlse_i
        delta = (dout.float() * out.float()).sum(-1)
        if has_ev:
            delta = delta + (dedge_out.float() * edge_out.float()).sum(-1)
        if dlse is not None:
            delta = delta - torch.where(torch.isfinite(lse), dlse.float(), 0.0)
        delta = delta.contiguous()

        dq = torch.empty(n_t, heads, channels, **f32) if need_dq else None
        dk = torch.zeros(n_s, heads, channels, **f32) if need_dk else None
        dval = torch.zeros(n_s, heads, channels, **f32) if need_dv else None
        # Every edge lies in exactly one row (ptr was checked), so every dq
        # row and dbias entry is written once: no zeroing needed.
        dbias = torch.empty(num_edges, heads, **f32) if need_db else None
        # dedge_values: atomics over heads into [E, DV] float32 (memory E*DV*4
        # bytes) rather than a [E, H, DV] buffer summed afterwards.
        dev = torch.zeros(num_edges, dv, **f32) if need_dev else None

        if n_t * heads > 0:
            _, bwd = _kernels(_interpret_mode())
            dummy = lse  # stands for absent optional tensors (never accessed)
            with _device_ctx(q.device):
                bwd[(n_t * heads,)](
                    q, k, v, ptr, col,
                    bias if bias is not None else dummy,
                    edge_values if has_ev else dummy,
                    dout, dedge_out if has_ev else dummy, lse, delta,
                    dq if need_dq else dummy, dk if need_dk else dummy,
                    dval if need_dv else dummy, dbias if need_db else dummy,
                    dev if need_dev else dummy,
                    heads, channels, dv, ctx.scale,
                    HAS_BIAS=bias is not None, HAS_EV=has_ev,
                    NEED_DQ=need_dq, NEED_DK=need_dk, NEED_DVAL=need_dv,
                    NEED_DBIAS=need_db, NEED_DEV=need_dev,
                    NEED_DS=need_dq or need_dk or need_db,
                    BLOCK_E=ctx.block_e, BLOCK_C=_next_pow2(channels),
                    BLOCK_DV=_next_pow2(dv), num_warps=ctx.num_warps)

        return (dq.to(q.dtype) if need_dq else None,
                dk.to(k.dtype) if need_dk else None,
                dval.to(v.dtype) if need_dv else None,
                None, None,
                dbias.to(bias.dtype) if need_db else None,
                dev.to(edge_values.dtype) if need_dev else None,
                None, None, None)


def _check_inputs(q: Tensor, k: Tensor, v: Tensor, ptr: Tensor, col: Tensor,
                  bias: Optional[Tensor], edge_values: Optional[Tensor]) -> None:
    named = {"q": q, "k": k, "v": v, "ptr": ptr, "col": col}
    if bias is not None:
        named["bias"] = bias
    if edge_values is not None:
        named["edge_values"] = edge_values
    for name, t in named.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"'{name}' must be a torch.Tensor, got {type(t).__name__}")
    for name in ("q", "k", "v"):
        if named[name].dim() != 3:
            raise ValueError(f"'{name}' must have shape [N, H, C], got {list(named[name].shape)}")
    if q.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"'q' must be float32, float16 or bfloat16, got {q.dtype}")
    for name in ("k", "v"):
        if named[name].dtype != q.dtype:
            raise ValueError(f"'{name}' must have the dtype of 'q' ({q.dtype}), "
                             f"got {named[name].dtype}")
    if k.shape[1:] != q.shape[1:]:
        raise ValueError(f"'k' must have shape [N_s, H, C] = [N_s, {q.size(1)}, {q.size(2)}] "
                         f"like 'q' {list(q.shape)}, got {list(k.shape)}")
    if v.shape != k.shape:
        raise ValueError(f"'v' must have the shape of 'k' {list(k.shape)}, got {list(v.shape)}")
    for name in ("ptr", "col"):
        t = named[name]
        if t.dtype != torch.int64:
            raise ValueError(f"'{name}' must have dtype torch.int64, got {t.dtype}")
        if t.dim() != 1:
            raise ValueError(f"'{name}' must be one-dimensional, got shape {list(t.shape)}")
    n_t, heads = q.size(0), q.size(1)
    if ptr.numel() != n_t + 1:
        raise ValueError(f"'ptr' must have N_t + 1 = {n_t + 1} entries (one more than "
                         f"q.size(0)), got {ptr.numel()}")
    num_edges = col.numel()
    if bias is not None:
        if not bias.is_floating_point():
            raise ValueError(f"'bias' must be a floating-point tensor, got {bias.dtype}")
        if tuple(bias.shape) != (num_edges, heads):
            raise ValueError(f"'bias' must have shape [E, H] = [{num_edges}, {heads}], "
                             f"got {list(bias.shape)}")
    if edge_values is not None:
        if not edge_values.is_floating_point():
            raise ValueError(f"'edge_values' must be a floating-point tensor, "
                             f"got {edge_values.dtype}")
        if edge_values.dim() != 2 or edge_values.size(0) != num_edges:
            raise ValueError(f"'edge_values' must have shape [E, Dv] with E = {num_edges}, "
                             f"got {list(edge_values.shape)}")
    for name, t in named.items():
        if t.device != q.device:
            raise ValueError(f"'{name}' is on {t.device} but 'q' is on {q.device}: "
                             "all tensors must be on the same device")


def _check_csr(ptr: Tensor, col: Tensor, num_src: int) -> int:
    """Check the CSR structure (one host sync in all) and return the largest
    row length."""
    num_edges = col.numel()
    deg = ptr.diff()
    zero = ptr.new_zeros(())
    stats = torch.stack([
        ptr[0], ptr[-1],
        deg.min() if deg.numel() else zero,
        deg.max() if deg.numel() else zero,
        col.min() if num_edges else zero,
        col.max() if num_edges else zero,
    ]).tolist()
    first, last, min_deg, max_deg, min_col, max_col = stats
    if first != 0:
        raise ValueError(f"'ptr' must start at 0, got ptr[0] = {first}")
    if last != num_edges:
        raise ValueError(f"'ptr' must end at E = col.numel() = {num_edges}, got ptr[-1] = {last}")
    if min_deg < 0:
        i = int((deg < 0).nonzero()[0])
        raise ValueError(f"'ptr' must be non-decreasing, got ptr[{i}] = {int(ptr[i])} > "
                         f"ptr[{i + 1}] = {int(ptr[i + 1])}")
    if num_edges and (min_col < 0 or max_col >= num_src):
        e = int(((col < 0) | (col >= num_src)).nonzero()[0])
        raise ValueError(f"'col' is out of range: col[{e}] = {int(col[e])} but there are "
                         f"only {num_src} source nodes (valid indices 0..{num_src - 1})")
    return max_deg


def fused_attention(q: Tensor, k: Tensor, v: Tensor, ptr: Tensor, col: Tensor,
                    bias: Optional[Tensor] = None, edge_values: Optional[Tensor] = None,
                    scale: Optional[float] = None) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    r"""Multi-head attention over an edge set in CSR form, fused in Triton.

    Args:
        q (Tensor [N_t, H, C]): queries (float32, float16 or bfloat16; all
            arithmetic is float32).
        k (Tensor [N_s, H, C]): keys, dtype of ``q``.
        v (Tensor [N_s, H, C]): values, dtype of ``q``.
        ptr (LongTensor [N_t + 1]): CSR row pointer over targets: the incoming
            edges of target ``i`` are positions ``ptr[i]:ptr[i+1]``. Rows may be
            empty.
        col (LongTensor [E]): source node of each edge, in that order. Repeated
            ``(i, j)`` pairs are separate edges.
        bias (Tensor [E, H], optional): additive score per edge and head;
            ``-inf`` masks the edge for that head. Differentiable.
        edge_values (Tensor [E, Dv], optional): per-edge value vectors shared
            by all heads; their attention-weighted sum is ``edge_out``.
            Differentiable.
        scale (float, optional): score scale, default :math:`1/\sqrt{C}`.

    Returns:
        ``(out, lse, edge_out)``: ``out`` [N_t, H, C] in the dtype of ``q``;
        ``lse`` [N_t, H] float32, the log-sum-exp of each row's scores
        (differentiable too); ``edge_out`` [N_t, H, Dv] in the dtype of ``q``,
        or ``None`` without ``edge_values``. An empty or fully ``-inf`` row
        gives zeros, ``lse = -inf`` and zero gradients.

    Raises:
        ValueError: on bad shapes, dtypes, devices or CSR structure.
        RuntimeError: when :func:`fused_available` is False for ``q``'s device.
    """
    return _fused_attention(q, k, v, ptr, col, bias, edge_values, scale)


def _fused_attention(q: Tensor, k: Tensor, v: Tensor, ptr: Tensor, col: Tensor,
                     bias: Optional[Tensor] = None, edge_values: Optional[Tensor] = None,
                     scale: Optional[float] = None, block_e: Optional[int] = None,
                     ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """:func:`fused_attention` with an optional fixed ``BLOCK_E`` (a power of
    two), so that tests can stream rows through several edge blocks."""
    _check_inputs(q, k, v, ptr, col, bias, edge_values)
    if not fused_available(q.device):
        raise RuntimeError(f"{_NOT_AVAILABLE} (got tensors on {q.device}"
                           f"{'' if HAS_TRITON else ', and triton is not installed'})")
    if block_e is not None and (block_e < 1 or block_e & (block_e - 1)):
        raise ValueError(f"'block_e' must be a power of two, got {block_e}")
    max_degree = _check_csr(ptr, col, k.size(0))
    channels = q.size(2)
    if scale is None:
        scale = 1.0 / math.sqrt(channels) if channels > 0 else 1.0
    dv = edge_values.size(1) if edge_values is not None else 0
    block_e, num_warps = _launch_config(max_degree, _next_pow2(channels), _next_pow2(dv),
                                        block_e)
    return _FusedAttention.apply(
        q.contiguous(), k.contiguous(), v.contiguous(), ptr.contiguous(), col.contiguous(),
        bias.contiguous() if bias is not None else None,
        edge_values.contiguous() if edge_values is not None else None,
        float(scale), block_e, num_warps)


def fused_backend(call: AttentionCall) -> Tuple[Tensor, Optional[Tensor]]:
    """The ``"fused"`` backend: takes an
    :class:`~graphformer.nn.call.AttentionCall` and returns ``(out [N_t, H, C],
    alpha [E, H] or None)``. Edge score terms enter as a per-edge bias, edge
    values are streamed by the kernel and projected afterwards; the weights
    (``need_weights``) are recomputed from the kernel's log-sum-exp and carry
    no gradient. No attention dropout: training with ``dropout > 0`` is
    refused."""
    if call.training and call.dropout > 0:
        raise ValueError("the fused backend has no attention dropout; use "
                         "backend='sparse' or 'dense' to train with dropout > 0")
    q, k, v, csr, terms = call.q, call.k, call.v, call.edges.csr, call.terms
    if q.dtype not in _FLOAT_DTYPES:     # before the edge terms, which would fail otherwise
        raise ValueError(f"the fused backend computes in float32, float16 or bfloat16, got "
                         f"{q.dtype} inputs; use backend='sparse' or 'propagate' for {q.dtype}")
    H, C = q.size(1), q.size(2)
    scale = 1.0 / math.sqrt(C)
    bias = edge_values = None
    if terms is not None:
        # sparse products have no half-precision CPU kernels: score in float32
        bias = terms.scores(q.float(), k.float())
        bias = bias.t() * scale if bias is not None else None
        edge_values = terms.per_edge() if terms.w_ev is not None else None
    if call.head_mask is not None:
        bias = (bias if bias is not None else q.new_zeros(csr.num_edges, H, dtype=torch.float))
        bias = bias.masked_fill(~call.head_mask, float("-inf"))
    out, lse, edge_out = fused_attention(
        q, k, v, csr.ptr, csr.col, bias=bias,
        edge_values=edge_values.to(q.dtype) if edge_values is not None else None, scale=scale)
    if edge_out is not None:
        D = edge_values.size(1)
        out = out + torch.einsum("nhd,hcd->nhc", edge_out,
                                 terms.w_ev.to(edge_out.dtype).view(H, C, D))
    alpha = None
    if call.need_weights:
        with torch.no_grad():
            s = SDDMM.apply(q.float().transpose(0, 1), k.float().transpose(0, 1), csr).t() * scale
            if bias is not None:
                s = s + bias
            alpha = (s - lse.index_select(0, csr.row)).exp().nan_to_num(0.0).to(q.dtype)
    return out, alpha
