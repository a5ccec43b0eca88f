"""Tests of the fused Triton attention over CSR edge sets (graphformer.nn.fused).

Without a GPU the kernels run under Triton's interpreter on CPU tensors, so
the graphs here are small (N <= 40, E <= 300).
"""
import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

pytest.importorskip("triton")

from graphformer.nn import fused  # noqa: E402
from graphformer.nn.fused import fused_attention, fused_available  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
FUSED_PY = Path(fused.__file__)


# ---------------------------------------------------------------- helpers

def make_csr(n_t, n_s, degrees, seed=0):
    """CSR ``(ptr, col)`` with the given row lengths and random sources; in
    every row of length >= 3 the second edge repeats the first (a duplicate)."""
    gen = torch.Generator().manual_seed(seed)
    deg = torch.tensor(degrees, dtype=torch.long)
    assert deg.numel() == n_t
    ptr = torch.cat([deg.new_zeros(1), deg.cumsum(0)])
    col = torch.randint(0, n_s, (int(ptr[-1]),), generator=gen)
    for i in range(n_t):
        if degrees[i] >= 3:
            col[ptr[i] + 1] = col[ptr[i]]
    return ptr, col


def uneven_degrees(n_t, seed=0, max_deg=13):
    """Row 0 empty, row 1 a single edge, rows 2-4 of length >= 3, then random
    lengths in [0, max_deg] (so some more empty rows)."""
    gen = torch.Generator().manual_seed(seed + 1)
    deg = torch.randint(0, max_deg + 1, (n_t,), generator=gen)
    deg[0], deg[1], deg[2], deg[3], deg[4] = 0, 1, 3, 4, max_deg
    return deg.tolist()


def masked_bias(ptr, heads, seed=0):
    """Random bias with ~15% -inf entries, row 3 fully -inf (all heads) and
    row 4 fully -inf for head 0 only."""
    gen = torch.Generator().manual_seed(seed + 2)
    num_edges = int(ptr[-1])
    bias = torch.randn(num_edges, heads, generator=gen) * 0.5
    bias[torch.rand(num_edges, heads, generator=gen) < 0.15] = float("-inf")
    bias[ptr[3]:ptr[4]] = float("-inf")
    bias[ptr[4]:ptr[5], 0] = float("-inf")
    return bias


def reference(q, k, v, ptr, col, bias=None, edge_values=None, scale=None):
    """Plain PyTorch: gather the row scores into a dense [N_t, D, H] layout
    padded with -inf and take a guarded softmax over D."""
    n_t, heads, channels = q.shape
    scale = 1.0 / math.sqrt(channels) if scale is None else scale
    deg = ptr.diff()
    num_edges = col.numel()
    row = torch.repeat_interleave(torch.arange(n_t), deg)
    pos = torch.arange(num_edges) - ptr[row]
    width = max(int(deg.max()), 1) if n_t else 1
    s = scale * (q[row] * k[col]).sum(-1)  # [E, H]
    if bias is not None:
        s = s + bias.to(s.dtype)
    S = s.new_full((n_t, width, heads), float("-inf")).index_put((row, pos), s)
    m = S.detach().amax(1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    w = torch.exp(S - m)
    l = w.sum(1, keepdim=True)
    has = l > 0
    l_safe = torch.where(has, l, torch.ones_like(l))
    a = (w / l_safe)[row, pos]  # [E, H]
    lse = torch.where(has, m + torch.log(l_safe), torch.full_like(l, float("-inf"))).squeeze(1)
    out = q.new_zeros(n_t, heads, channels).index_add(0, row, a[..., None] * v[col])
    edge_out = None
    if edge_values is not None:
        ev = edge_values.to(q.dtype)
        edge_out = q.new_zeros(n_t, heads, ev.size(1)).index_add(0, row, a[..., None] * ev[:, None])
    return out, lse, edge_out, S


def run_both(q, k, v, ptr, col, bias=None, edge_values=None, scale=None, block_e=None,
             seed=0):
    """Outputs and gradients of the fused kernel and of the float64 reference
    for the same random upstream gradients (through out, lse and edge_out)."""
    leaves = {"q": q, "k": k, "v": v, "bias": bias, "edge_values": edge_values}
    leaves = {n: t for n, t in leaves.items() if t is not None}
    results = []
    for impl in ("fused", "ref"):
        ins = {n: (t.detach().double() if impl == "ref" else t.detach().to(DEVICE)
                   ).requires_grad_() for n, t in leaves.items()}
        if impl == "fused":
            o, lse, eo = fused._fused_attention(
                ins["q"], ins["k"], ins["v"], ptr.to(DEVICE), col.to(DEVICE), ins.get("bias"),
                ins.get("edge_values"), scale, block_e=block_e)
        else:
            o, lse, eo, _ = reference(ins["q"], ins["k"], ins["v"], ptr, col, ins.get("bias"),
                                      ins.get("edge_values"), scale)
        gen = torch.Generator().manual_seed(seed + 3)
        loss = (o.double().cpu() * torch.randn(o.shape, generator=gen, dtype=torch.double)).sum()
        finite = torch.isfinite(lse)
        g_lse = torch.randn(lse.shape, generator=gen, dtype=torch.double)
        loss = loss + (torch.where(finite, lse, 0.0).double().cpu() * g_lse).sum()
        if eo is not None:
            loss = loss + (eo.double().cpu()
                           * torch.randn(eo.shape, generator=gen, dtype=torch.double)).sum()
        names = list(ins)
        grads = torch.autograd.grad(loss, [ins[n] for n in names])
        results.append(dict(out=o.detach().cpu(), lse=lse.detach().cpu(),
                            edge_out=None if eo is None else eo.detach().cpu(),
                            **{"d" + n: g.cpu() for n, g in zip(names, grads)}))
    return results


def assert_close_all(got, want, atol, rtol=0.0):
    assert set(got) == set(want)
    for name, g in got.items():
        w = want[name]
        if w is None:
            assert g is None, name
            continue
        assert not torch.isnan(g).any(), f"NaN in {name}"
        torch.testing.assert_close(g.double(), w.double(), atol=atol, rtol=rtol,
                                   msg=lambda m: f"{name}: {m}")


def fa(*args, **kwargs):
    """fused_attention on DEVICE for CPU tensors (differentiably: .to() keeps
    the graph), results back on the CPU; a no-op move without a GPU."""
    move = (lambda t: t.to(DEVICE) if isinstance(t, torch.Tensor) else t)
    out = fused_attention(*map(move, args), **{n: move(t) for n, t in kwargs.items()})
    return tuple(None if t is None else t.cpu() for t in out)


def randn(*shape, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen).to(dtype)


# ---------------------------------------------------------------- values and gradients

CASES = {
    # name: (H, C, N_t, N_s, bias, Dv, block_e)
    "h1_c8": (1, 8, 20, 20, False, 0, None),
    "h3_c5_bias_ev_stream": (3, 5, 24, 24, True, 3, 4),
    "bipartite_wide_h3_c5_bias": (3, 5, 12, 30, True, 0, None),
    "bipartite_narrow_h2_c3_ev_stream": (2, 3, 30, 9, False, 5, 4),
    "h1_c1_bias_ev_stream": (1, 1, 16, 16, True, 1, 2),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference(case):
    heads, channels, n_t, n_s, with_bias, dv, block_e = CASES[case]
    seed = sorted(CASES).index(case)
    ptr, col = make_csr(n_t, n_s, uneven_degrees(n_t, seed), seed)
    assert col.numel() <= 300
    q = randn(n_t, heads, channels, seed=seed + 10)
    k = randn(n_s, heads, channels, seed=seed + 11)
    v = randn(n_s, heads, channels, seed=seed + 12)
    bias = masked_bias(ptr, heads, seed) if with_bias else None
    ev = randn(col.numel(), dv, seed=seed + 13) if dv else None
    got, want = run_both(q, k, v, ptr, col, bias, ev, block_e=block_e, seed=seed)
    assert got["out"].dtype == torch.float32 and got["lse"].dtype == torch.float32
    assert got["out"].shape == (n_t, heads, channels) and got["lse"].shape == (n_t, heads)
    if dv:
        assert got["edge_out"].shape == (n_t, heads, dv)
    else:
        assert got["edge_out"] is None
    assert_close_all(got, want, atol=1e-5, rtol=1e-5)


def test_lse_is_logsumexp_of_row_scores():
    n_t, n_s, heads, channels = 18, 14, 3, 5
    ptr, col = make_csr(n_t, n_s, uneven_degrees(n_t, 7), 7)
    q, k, v = (randn(n, heads, channels, seed=s) for n, s in ((n_t, 1), (n_s, 2), (n_s, 3)))
    bias = masked_bias(ptr, heads, 7)
    _, lse, _ = fa(q, k, v, ptr, col, bias)
    scores = (q[torch.repeat_interleave(torch.arange(n_t), ptr.diff())] * k[col]).sum(-1)
    scores = scores / math.sqrt(channels) + bias
    want = torch.stack([torch.logsumexp(scores[ptr[i]:ptr[i + 1]], dim=0)
                        for i in range(n_t)])
    torch.testing.assert_close(lse.cpu(), want, atol=1e-5, rtol=1e-5)
    assert torch.isneginf(lse[0]).all() and torch.isneginf(lse[3]).all()  # empty, all -inf
    assert torch.isneginf(lse[4, 0]) and torch.isfinite(lse[4, 1:]).all()
    # The interpreter copies its namespace into the kernels' globals, which are
    # a private dict, not the module's.
    assert "np" not in vars(fused) and "InterpretedFunction" not in vars(fused)


def test_gradient_through_lse_only_with_noncontiguous_inputs():
    n_t, n_s, heads, channels = 14, 11, 3, 4
    ptr, col = make_csr(n_t, n_s, uneven_degrees(n_t, 6, max_deg=9), 6)
    q = randn(heads, n_t, channels, seed=1).transpose(0, 1).requires_grad_()
    k = randn(channels, heads, n_s, seed=2).permute(2, 1, 0).requires_grad_()
    v = randn(n_s, heads, channels, seed=3)
    bias = masked_bias(ptr, heads, 6).t().contiguous().t().requires_grad_()
    assert not (q.is_contiguous() or k.is_contiguous() or bias.is_contiguous())
    _, lse, _ = fa(q, k, v, ptr, col, bias)
    g = randn(n_t, heads, seed=4)
    torch.where(torch.isfinite(lse), lse * g, 0.0).sum().backward()
    qd, kd, bd = (t.detach().double().requires_grad_() for t in (q, k, bias))
    _, rlse, _, _ = reference(qd, kd, v.double(), ptr, col, bd)
    torch.where(torch.isfinite(rlse), rlse * g, 0.0).sum().backward()
    for got, want in ((q.grad, qd.grad), (k.grad, kd.grad), (bias.grad, bd.grad)):
        assert got.shape == want.shape
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_empty_and_fully_masked_rows_give_zeros_and_zero_grads():
    n_t, n_s, heads, channels, dv = 10, 8, 2, 4, 3
    degrees = [0, 1, 3, 4, 5, 0, 2, 0, 6, 1]
    ptr, col = make_csr(n_t, n_s, degrees)
    bias = masked_bias(ptr, heads)
    q = randn(n_t, heads, channels, seed=1).requires_grad_()
    k = randn(n_s, heads, channels, seed=2).requires_grad_()
    v = randn(n_s, heads, channels, seed=3).requires_grad_()
    bias.requires_grad_()
    ev = randn(col.numel(), dv, seed=4).requires_grad_()
    out, lse, eo = fa(q, k, v, ptr, col, bias, ev)
    dead = torch.tensor([0, 3, 5, 7])  # empty rows and the fully -inf row 3
    assert (out[dead] == 0).all() and (eo[dead] == 0).all()
    assert torch.isneginf(lse[dead]).all()
    assert (out[4, 0] == 0).all() and (eo[4, 0] == 0).all()  # row 4 is -inf for head 0
    (out.sum() + eo.sum() + torch.where(torch.isfinite(lse), lse, 0.0).sum()).backward()
    for t in (out, eo, lse, q.grad, k.grad, v.grad, bias.grad, ev.grad):
        assert not torch.isnan(t).any()
    assert (q.grad[dead] == 0).all() and (q.grad[4, 0] == 0).all()
    assert (bias.grad[ptr[3]:ptr[4]] == 0).all() and (ev.grad[ptr[3]:ptr[4]] == 0).all()
    assert (bias.grad[torch.isneginf(bias)] == 0).all()


def test_duplicate_edges_count_twice():
    """Two copies of edge (j -> i) weigh as one edge with bias log 2."""
    heads, channels = 2, 3
    q, k, v = randn(1, heads, channels, seed=1), randn(2, heads, channels, seed=2), \
        randn(2, heads, channels, seed=3)
    dup, _, _ = fa(q, k, v, torch.tensor([0, 3]), torch.tensor([0, 0, 1]))
    bias = torch.tensor([[math.log(2.0)] * heads, [0.0] * heads])
    one, _, _ = fa(q, k, v, torch.tensor([0, 2]), torch.tensor([0, 1]), bias)
    torch.testing.assert_close(dup, one, atol=1e-6, rtol=1e-6)


def test_only_requested_gradients():
    n_t, n_s, heads, channels = 12, 10, 2, 3
    ptr, col = make_csr(n_t, n_s, uneven_degrees(n_t, 4, max_deg=9), 4)
    q = randn(n_t, heads, channels, seed=1)
    k = randn(n_s, heads, channels, seed=2).requires_grad_()
    v = randn(n_s, heads, channels, seed=3)
    ev = randn(col.numel(), 2, seed=4).requires_grad_()
    bias = masked_bias(ptr, heads, 4)  # no grad
    out, lse, eo = fa(q, k, v, ptr, col, bias, ev)
    (out.sum() + eo.square().sum()).backward()
    qd, kd, vd, evd = (t.detach().double().requires_grad_() for t in (q, k, v, ev))
    ro, _, reo, _ = reference(qd, kd, vd, ptr, col, bias.double(), evd)
    (ro.sum() + reo.square().sum()).backward()
    torch.testing.assert_close(k.grad.double(), kd.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ev.grad.double(), evd.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype,atol", [(torch.float16, 2e-2), (torch.bfloat16, 6e-2)])
def test_half_precision(dtype, atol):
    n_t, n_s, heads, channels, dv = 16, 12, 3, 5, 2
    ptr, col = make_csr(n_t, n_s, uneven_degrees(n_t, 5, max_deg=10), 5)
    q = randn(n_t, heads, channels, seed=1, dtype=dtype)
    k = randn(n_s, heads, channels, seed=2, dtype=dtype)
    v = randn(n_s, heads, channels, seed=3, dtype=dtype)
    bias = masked_bias(ptr, heads, 5).to(dtype)
    ev = randn(col.numel(), dv, seed=4, dtype=dtype)
    got, want = run_both(q, k, v, ptr, col, bias, ev, seed=5)
    assert got["out"].dtype == dtype and got["edge_out"].dtype == dtype
    assert got["lse"].dtype == torch.float32
    for name in ("dq", "dk", "dv", "dbias", "dedge_values"):
        assert got[name].dtype == dtype
    for name, t in got.items():
        finite = torch.isfinite(t) | torch.isneginf(want[name])  # lse -inf stays -inf
        assert finite.all(), name
    assert_close_all(got, want, atol=atol, rtol=atol)


# ---------------------------------------------------------------- dense special cases

def _sdpa_case(causal, scale):
    length, heads, channels = 7, 2, 4
    q = randn(length, heads, channels, seed=1).requires_grad_()
    k = randn(length, heads, channels, seed=2).requires_grad_()
    v = randn(length, heads, channels, seed=3).requires_grad_()
    if causal:
        ptr = torch.tensor([i * (i + 1) // 2 for i in range(length + 1)])
        col = torch.cat([torch.arange(i + 1) for i in range(length)])
    else:
        ptr = torch.arange(length + 1) * length
        col = torch.arange(length).repeat(length)
    out, _, _ = fa(q, k, v, ptr, col, scale=scale)
    ref = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                         is_causal=causal, scale=scale).transpose(0, 1)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    g = randn(length, heads, channels, seed=4)
    got = torch.autograd.grad((out * g).sum(), (q, k, v))
    want = torch.autograd.grad((ref * g).sum(), (q, k, v))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_full_pattern_is_sdpa():
    _sdpa_case(causal=False, scale=None)


def test_causal_pattern_is_sdpa_causal_with_scale():
    _sdpa_case(causal=True, scale=0.3)


def test_no_targets_and_no_edges():
    q, k = torch.randn(0, 2, 3), torch.randn(4, 2, 3)
    out, lse, _ = fa(q, k, k, torch.zeros(1, dtype=torch.long),
                                  torch.zeros(0, dtype=torch.long))
    assert out.shape == (0, 2, 3) and lse.shape == (0, 2)
    q = torch.randn(3, 2, 3, requires_grad=True)
    out, lse, _ = fa(q, k, k, torch.zeros(4, dtype=torch.long),
                                  torch.zeros(0, dtype=torch.long))
    assert (out == 0).all() and torch.isneginf(lse).all()
    out.sum().backward()
    assert (q.grad == 0).all()


# ---------------------------------------------------------------- errors, availability

def _inputs():
    q = torch.randn(3, 2, 4)
    k = torch.randn(5, 2, 4)
    return q, k, k.clone(), torch.tensor([0, 2, 2, 4]), torch.tensor([0, 1, 4, 3])


I32 = dict(dtype=torch.int32)


@pytest.mark.parametrize("change,error,match", [
    (dict(ptr=torch.tensor([0, 2, 4])), ValueError, r"'ptr' must have N_t \+ 1 = 4 entries"),
    (dict(ptr=torch.tensor([0, 2, 2, 3])), ValueError, r"ptr\[-1\] = 3"),
    (dict(ptr=torch.tensor([1, 2, 2, 4])), ValueError, r"'ptr' must start at 0"),
    (dict(ptr=torch.tensor([0, 3, 2, 4])), ValueError,
     r"non-decreasing.*ptr\[1\] = 3 > ptr\[2\] = 2"),
    (dict(ptr=torch.tensor([0, 2, 2, 4], **I32)), ValueError, r"'ptr' must have dtype torch.int64"),
    (dict(col=torch.tensor([0, 1, 4, 3], **I32)), ValueError, r"'col' must have dtype torch.int64"),
    (dict(col=torch.tensor([0, 1, 5, 3])), ValueError, r"col\[2\] = 5 .* only 5 source nodes"),
    (dict(q=torch.randn(3, 2, 4).double()), ValueError, r"float32, float16 or bfloat16"),
    (dict(k=torch.randn(5, 2, 4).half()), ValueError, r"'k' must have the dtype of 'q'"),
    (dict(k=torch.randn(5, 3, 4)), ValueError, r"'k' must have shape \[N_s, H, C\]"),
    (dict(v=torch.randn(4, 2, 4)), ValueError, r"'v' must have the shape of 'k'"),
    (dict(q=torch.randn(3, 8)), ValueError, r"'q' must have shape \[N, H, C\]"),
    (dict(bias=torch.randn(4, 3)), ValueError, r"'bias' must have shape \[E, H\] = \[4, 2\]"),
    (dict(edge_values=torch.randn(3, 2)), ValueError, r"'edge_values' must have shape \[E, Dv\]"),
    (dict(ptr=torch.tensor([0, 2, 2, 4], device="meta")), ValueError, r"'ptr' is on meta"),
])
def test_input_errors(change, error, match):
    q, k, v, ptr, col = _inputs()
    kwargs = dict(q=q, k=k, v=v, ptr=ptr, col=col)
    kwargs.update(change)
    kwargs = {n: t if t.device.type == "meta" else t.to(DEVICE) for n, t in kwargs.items()}
    with pytest.raises(error, match=match):
        fused_attention(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour")
def test_unavailable_without_interpreter(monkeypatch):
    assert fused_available(torch.device("cpu"))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not fused_available(torch.device("cpu"))
    assert fused_available(torch.device("cuda"))
    assert not fused_available(torch.device("meta"))
    with pytest.raises(RuntimeError, match="needs a CUDA device.*set TRITON_INTERPRET=1"):
        fused_attention(*_inputs())


_AFTER_IMPORT = """
import os, sys, torch
import graphformer  # imports torch_geometric, which imports triton
from graphformer.nn import fused
assert 'triton' in sys.modules
assert not fused.fused_available(torch.device('cpu'))
os.environ['TRITON_INTERPRET'] = '1'
q, k, v = torch.randn(3, 5, 2, 4).unbind(0)
out, _, _ = fused.fused_attention(q, k, v, torch.arange(6) * 5, torch.arange(5).repeat(5))
ref = torch.nn.functional.scaled_dot_product_attention(
    q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)).transpose(0, 1)
torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
print('ok')
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour")
def test_interpreter_enabled_after_import():
    """Setting TRITON_INTERPRET=1 after importing graphformer (and with it
    triton) still runs the kernels: they are built lazily per mode."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", _AFTER_IMPORT], env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().endswith("ok")


def test_imports_without_triton(monkeypatch):
    for name in [m for m in sys.modules if m == "triton" or m.startswith("triton.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` fail
    # a second copy of the module, in the package (its relative imports resolve)
    spec = importlib.util.spec_from_file_location("graphformer.nn._fused_without_triton",
                                                  FUSED_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.HAS_TRITON is False
    assert not module.fused_available(torch.device("cpu"))
    assert not module.fused_available(torch.device("cuda"))
    with pytest.raises(RuntimeError, match="triton is not installed"):
        module.fused_attention(*_inputs())


COMPILE_FOR_GPU = r"""
import warnings
warnings.filterwarnings("ignore", message=".*TRITON_DEFAULT_FP_FUSION.*")
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from graphformer.nn import fused
fwd, bwd = fused._kernels(False)
target = GPUTarget("cuda", 90, 32)
dt = "*fp16"
common = {"Q": dt, "K": dt, "V": dt, "PTR": "*i64", "COL": "*i64", "BIAS": "*fp32",
          "EV": "*fp32"}
consts = {"HAS_BIAS": True, "HAS_EV": True, "BLOCK_E": 16, "BLOCK_C": 8, "BLOCK_DV": 4}
scalars = {"H": "i32", "C": "i32", "DV": "i32", "scale": "fp32"}
sig = {**common, "OUT": dt, "LSE": "*fp32", "EOUT": dt, **scalars,
       **{n: "constexpr" for n in consts}}
kernel = triton.compile(ASTSource(fwd, sig, constexprs=consts), target=target,
                        options={"num_warps": 1})
assert "ptx" in kernel.asm
consts.update(NEED_DQ=True, NEED_DK=True, NEED_DVAL=True, NEED_DBIAS=True, NEED_DEV=True,
              NEED_DS=True)
f32 = "*fp32"
sig = {**common, "DOUT": dt, "DEOUT": dt, "LSE": f32, "DELTA": f32, "DQ": f32, "DK": f32,
       "DVAL": f32, "DBIAS": f32, "DEV": f32, **scalars, **{n: "constexpr" for n in consts}}
kernel = triton.compile(ASTSource(bwd, sig, constexprs=consts), target=target,
                        options={"num_warps": 1})
assert "ptx" in kernel.asm
print("compiled")
"""


def test_kernels_compile_for_a_gpu():
    """Compile both kernels ahead of time for sm_90 (no GPU needed): the
    interpreter accepts code that the real compiler rejects. Runs in a fresh
    process: once the interpreter is on, triton's own helpers are interpreted."""
    triton = pytest.importorskip("triton")
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except ImportError:  # pragma: no cover
        pytest.skip("this triton has no ahead-of-time compile API")
    if "nvidia" not in getattr(triton.backends, "backends", {}):
        pytest.skip("triton has no NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", COMPILE_FOR_GPU], env=env,
                          capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "compiled" in done.stdout
