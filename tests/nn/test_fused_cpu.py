"""The fused CPU kernels (graphformer/nn/cpu_kernels.cpp) against the per-edge
equations in float64 (values and gradients of every input, the weights'
own gradient included), with score biases, -inf masks, typed tables, type
values, dropout, empty and fully masked rows; the dropout hash against an
independent Python SplitMix64; bad input refused before any kernel runs;
a machine without a C compiler falling back to another backend; GELU fused
with its dropout against the two in turn; and the counting sort that groups
an edge set by source against the stable sort.

The layer-level parity (every pattern, edge features, head masks, edge
updates, typed edges, NaN isolation) runs this backend through the shared
tests in test_backends.py, test_typed_edges.py and test_attention.py."""
import math
import os
import subprocess
import sys

import pytest
import torch

from graphformer.nn.fused_cpu import (dropout_multiplier, fused_cpu_attention,
                                      fused_cpu_available, fused_cpu_unavailable)

pytestmark = pytest.mark.skipif(not fused_cpu_available(),
                                reason=f"fused CPU kernels unavailable: {fused_cpu_unavailable()}")

MASK64 = (1 << 64) - 1


def splitmix64(seed, index):
    """Reference SplitMix64 (Steele, Lea & Flood 2014), in Python integers."""
    z = (seed + (index + 1) * 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def _graph(num_nodes=9, num_edges=60, types=3, seed=0, empty_row=True):
    g = torch.Generator().manual_seed(seed)
    dst = torch.randint(0, num_nodes, (num_edges,), generator=g)
    if empty_row:
        dst = dst[dst != 4]                       # target 4 has no edge
    src = torch.randint(0, num_nodes, (dst.numel(),), generator=g)
    dst, order = dst.sort(stable=True)
    src = src[order]
    ptr = torch.zeros(num_nodes + 1, dtype=torch.long)
    ptr[1:] = torch.bincount(dst, minlength=num_nodes).cumsum(0)
    etype = torch.randint(0, types, (dst.numel(),), generator=g)
    return ptr, src, dst, etype


def _reference(q, k, v, src, dst, bias, etype, tq, tk, vt, mult):
    """The per-edge equations (module docstring of fused_cpu.py), float64."""
    N, H, C = q.shape
    s = (q[dst] * k[src]).sum(-1).t()                                   # [H, E]
    if bias is not None:
        s = s + bias
    if tq is not None:
        s = s + tq[:, dst, etype]
    if tk is not None:
        s = s + tk[:, src, etype]
    s = s / math.sqrt(C)
    m = torch.full((H, N), float("-inf"), dtype=s.dtype).scatter_reduce(
        1, dst.expand(H, -1), s, "amax")
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    p = (s - m[:, dst]).exp()
    den = torch.zeros(H, N, dtype=s.dtype).index_add(1, dst, p)
    alpha = p / torch.where(den > 0, den, torch.ones_like(den))[:, dst]
    w = alpha * mult if mult is not None else alpha
    val = v[src] + (vt[etype] if vt is not None else 0)
    out = torch.zeros(N, H, C, dtype=s.dtype).index_add(0, dst, w.t().unsqueeze(-1) * val)
    return out, alpha


@pytest.mark.parametrize("p", [0.0, 0.3])
@pytest.mark.parametrize("parts", ["plain", "bias", "typed", "all"])
def test_kernels_equal_the_per_edge_equations(parts, p):
    torch.manual_seed(0)
    H, C, R = 3, 5, 3
    ptr, src, dst, etype = _graph(types=R)
    N, E = ptr.numel() - 1, src.numel()
    f64 = dict(dtype=torch.float64, requires_grad=True)
    q, k, v = (torch.randn(N, H, C, **f64) for _ in range(3))
    bias = tq = tk = vt = None
    if parts in ("bias", "all"):
        bias = torch.randn(H, E, dtype=torch.float64)
        bias[0, dst == 2] = float("-inf")        # head 0 of target 2: fully masked
        bias[1, ::4] = float("-inf")
        bias.requires_grad_()
    if parts in ("typed", "all"):
        tq, tk = torch.randn(H, N, R, **f64), torch.randn(H, N, R, **f64)
        vt = torch.randn(R, H, C, **f64)
    typed = tq is not None
    out, alpha, seed = fused_cpu_attention(q, k, v, ptr, src, bias=bias,
                                           edge_type=etype if typed else None,
                                           target_table=tq, source_table=tk, type_values=vt,
                                           dropout=p)
    mult = dropout_multiplier(seed, H, E, p, torch.float64) if p else None
    ref_out, ref_alpha = _reference(q, k, v, src, dst, bias, etype, tq, tk, vt, mult)
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(alpha, ref_alpha, atol=1e-12, rtol=1e-10)
    assert torch.isfinite(out).all() and torch.isfinite(alpha).all()
    assert out[4].abs().sum() == 0                  # the empty row
    if bias is not None:
        assert out[2, 0].abs().sum() == 0 and alpha[0, dst == 2].abs().sum() == 0
    go, ga = torch.randn_like(out), torch.randn_like(alpha)
    inputs = [t for t in (q, k, v, bias, tq, tk, vt) if t is not None]
    ours = torch.autograd.grad((out * go).sum() + (alpha * ga).sum(), inputs)
    theirs = torch.autograd.grad((ref_out * go).sum() + (ref_alpha * ga).sum(), inputs)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_float32_is_within_float_tolerance_of_float64():
    """float32 uses a polynomial exp (within 2 ulp): same result to float
    tolerance, also for scores far below the row maximum."""
    torch.manual_seed(1)
    ptr, src, dst, etype = _graph(num_nodes=30, num_edges=900, types=4, empty_row=False)
    N, H, C = 30, 4, 16
    q, k, v = (torch.randn(N, H, C, dtype=torch.float64) * 3 for _ in range(3))
    out64, a64, _ = fused_cpu_attention(q, k, v, ptr, src)
    out32, a32, _ = fused_cpu_attention(q.float(), k.float(), v.float(), ptr, src)
    torch.testing.assert_close(out32.double(), out64, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a32.double(), a64, atol=1e-6, rtol=1e-5)


def test_dropout_hash_is_splitmix64_and_reproducible():
    H, E, p, seed = 2, 500, 0.25, 12345
    mult = dropout_multiplier(seed, H, E, p, torch.float64)
    threshold = round(p * 2**32)
    expected = torch.tensor([(splitmix64(seed, i) >> 32) >= threshold for i in range(H * E)],
                            dtype=torch.float64).view(H, E) / (1 - threshold / 2**32)
    torch.testing.assert_close(mult, expected, atol=0, rtol=0)
    kept = (dropout_multiplier(7, 4, 50_000, p) > 0).double().mean().item()
    assert abs(kept - (1 - p)) < 0.01
    # the seed comes from torch's generator: manual_seed reproduces a run
    ptr, src, dst, _ = _graph()
    q = torch.randn(ptr.numel() - 1, 2, 4)
    torch.manual_seed(3)
    first = fused_cpu_attention(q, q, q, ptr, src, dropout=0.5)
    torch.manual_seed(3)
    second = fused_cpu_attention(q, q, q, ptr, src, dropout=0.5)
    torch.testing.assert_close(first[0], second[0], atol=0, rtol=0)
    assert first[2] == second[2]


@pytest.mark.parametrize("bad,message", [
    ("col", r"edge 3 has source 99, outside \[0, 9\)"),
    ("type", r"edge 5 has type 7, outside \[0, 3\)"),
    ("ptr", r"'ptr' decreases at target"),
    ("dtype", r"'k' must be float32 or float64 like 'q'"),
    ("bias", r"'bias' must be \[H, E\]"),
    ("table", r"'target_table' must be \[3, 9, 3\]"),
])
def test_bad_input_is_refused_naming_the_item(bad, message):
    ptr, src, dst, etype = _graph(types=3)
    N, E, H, C = 9, src.numel(), 3, 4
    q = k = v = torch.randn(N, H, C)
    kw = dict(edge_type=etype, target_table=torch.randn(H, N, 3))
    if bad == "col":
        src = src.clone()
        src[3] = 99
    elif bad == "type":
        kw["edge_type"] = etype.clone()
        kw["edge_type"][5] = 7
    elif bad == "ptr":
        ptr = ptr.clone()
        ptr[3], ptr[4] = ptr[4] + 1, ptr[3]
    elif bad == "dtype":
        k = k.double()
    elif bad == "bias":
        kw["bias"] = torch.randn(E, H)
    elif bad == "table":
        kw["target_table"] = torch.randn(H, N + 1, 3)
    with pytest.raises(ValueError, match=message):
        fused_cpu_attention(q, k, v, ptr, src, **kw)


def test_without_a_compiler_auto_falls_back_and_the_backend_says_why(tmp_path):
    """A machine without a working C++ compiler: the kernels are unavailable
    with the compiler's reason, ``auto`` still runs (another backend), and
    ``backend="fused_cpu"`` raises that reason."""
    code = (
        "import torch\n"
        "from graphformer.nn import RelationalAttention, EdgeSet\n"
        "from graphformer.nn.fused_cpu import fused_cpu_available, fused_cpu_unavailable\n"
        "assert not fused_cpu_available()\n"
        "print('WHY', fused_cpu_unavailable().splitlines()[0])\n"
        "x = torch.randn(5, 8)\n"
        "ei = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]])\n"
        "edges = EdgeSet(ei, 5, edge_type=torch.tensor([0, 1, 0, 1]))\n"
        "out = RelationalAttention(8, 8, heads=2, edge_dim=3)(x, edges, torch.randn(2, 3))\n"
        "assert torch.isfinite(out).all()\n"
        "layer = RelationalAttention(8, 8, heads=2, edge_dim=3, backend='fused_cpu')\n"
        "try:\n"
        "    layer(x, edges, torch.randn(2, 3))\n"
        "except RuntimeError as err:\n"
        "    print('ERR', str(err).splitlines()[0])\n"
    )
    env = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"),
               GRAPHFORMER_KERNEL_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "WHY building the CPU kernels failed" in proc.stdout
    assert "ERR the fused_cpu backend is unavailable: building the CPU kernels " \
           "failed" in proc.stdout


def test_hashed_dropout_is_splitmix64_slices_forward_and_backward(monkeypatch):
    """functional.dropout on the CPU: entry x is kept when bits 16 (x % 4)..+15
    of the hash of x // 4 reach round(p 2^16), scaled by 1 / (1 - p');
    backward applies the same decisions (recomputed from the seed)."""
    from graphformer.nn import functional

    seeds = []
    real = torch.randint
    monkeypatch.setattr(functional.torch, "randint",
                        lambda *a, **k: seeds.append(real(*a, **k)) or seeds[-1])
    x = torch.randn(7, 9, dtype=torch.float64, requires_grad=True)
    p = 0.3
    out = functional.dropout(x, p)
    seed, threshold = int(seeds[-1]), round(p * 2**16)
    keep = torch.tensor([((splitmix64(seed, i // 4) >> (16 * (i % 4))) & 0xFFFF) >= threshold
                         for i in range(x.numel())]).view(7, 9)
    mult = keep.double() / (1 - threshold / 2**16)
    torch.testing.assert_close(out, x * mult, atol=0, rtol=0)
    g = torch.randn(7, 9, dtype=torch.float64)
    (grad,) = torch.autograd.grad((out * g).sum(), x)
    torch.testing.assert_close(grad, g * mult, atol=0, rtol=0)
    # a non-contiguous input, float32, and the rate
    y = torch.ones(400, 300).t()
    kept = (functional.dropout(y, 0.25) > 0).double().mean().item()
    assert abs(kept - 0.75) < 0.01
    torch.manual_seed(5)
    a = functional.dropout(y, 0.5)
    torch.manual_seed(5)
    torch.testing.assert_close(functional.dropout(y, 0.5), a, atol=0, rtol=0)
    assert functional.dropout(y, 1.0).abs().sum() == 0
    assert functional.dropout(y, 0.0) is y and functional.dropout(y, 0.5, training=False) is y


def test_dropout_without_the_kernels_keeps_the_rate_and_the_expectation(monkeypatch):
    from graphformer.nn import functional

    monkeypatch.setattr(functional, "kernels_available", lambda: False)
    y = torch.ones(300, 300)
    out = functional.dropout(y, 0.25)
    kept = out > 0
    assert abs(kept.double().mean().item() - 0.75) < 0.01
    torch.testing.assert_close(out[kept], torch.full_like(out[kept], 1 / 0.75))


def test_many_edge_types_and_empty_edge_sets():
    """Scratch per thread is sized by the number of types (heap, not stack):
    200,000 relation types work; so do no edges and no nodes at all."""
    torch.manual_seed(2)
    ptr, src, dst, _ = _graph(num_nodes=5, num_edges=30, empty_row=False)
    N, H, C, R = 5, 1, 4, 200_000
    q, k, v = (torch.randn(N, H, C, dtype=torch.float64) for _ in range(3))
    etype = torch.randint(0, R, (src.numel(),))
    tq, tk = torch.randn(H, N, R, dtype=torch.float64), torch.randn(H, N, R, dtype=torch.float64)
    vt = torch.randn(R, H, C, dtype=torch.float64)
    out, alpha, _ = fused_cpu_attention(q, k, v, ptr, src, edge_type=etype, target_table=tq,
                                        source_table=tk, type_values=vt)
    ref_out, ref_alpha = _reference(q, k, v, src, dst, None, etype, tq, tk, vt, None)
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(alpha, ref_alpha, atol=1e-12, rtol=1e-10)
    # no edges: zeros, and gradients of zeros
    q0 = torch.randn(4, 2, 3, requires_grad=True)
    out0, alpha0, _ = fused_cpu_attention(q0, q0, q0, torch.zeros(5, dtype=torch.long),
                                          torch.zeros(0, dtype=torch.long), dropout=0.5)
    assert out0.abs().sum() == 0 and alpha0.shape == (2, 0)
    (g,) = torch.autograd.grad(out0.sum(), q0)
    assert g.abs().sum() == 0
    empty = torch.zeros(0, 2, 3)
    out_e, alpha_e, _ = fused_cpu_attention(empty, empty, empty, torch.zeros(1, dtype=torch.long),
                                            torch.zeros(0, dtype=torch.long))
    assert out_e.shape == (0, 2, 3) and alpha_e.shape == (2, 0)


def test_per_edge_value_terms_see_the_same_dropout_as_the_kernel(monkeypatch):
    """With per-edge features the value term is added outside the kernel,
    from the weights times dropout_multiplier: it must drop exactly the
    edges the kernel dropped (float64, against the per-edge equations)."""
    from graphformer import patterns as P
    from graphformer.nn import RelationalAttention

    seeds = []
    real = torch.randint
    monkeypatch.setattr(torch, "randint", lambda *a, **k: seeds.append(real(*a, **k)) or seeds[-1])
    torch.manual_seed(0)
    layer = RelationalAttention(6, 8, heads=2, edge_dim=3, dropout=0.4,
                                backend="fused_cpu").double().train()
    x = torch.randn(7, 6, dtype=torch.float64)
    ei = P.full(7)
    e = torch.randn(ei.size(1), 3, dtype=torch.float64)
    out, alpha = layer(x, ei, e, return_attention_weights=True)
    seed = int(seeds[-1])
    H, C, E = 2, 4, ei.size(1)
    src, dst = ei
    mult = dropout_multiplier(seed, H, E, 0.4, torch.float64).t()     # target order = given
    q = layer.lin_q(x).view(-1, H, C)[dst] + layer.lin_edge_q(e).view(-1, H, C)
    k = layer.lin_k(x).view(-1, H, C)[src] + layer.lin_edge_k(e).view(-1, H, C)
    v = layer.lin_v(x).view(-1, H, C)[src] + layer.lin_edge_v(e).view(-1, H, C)
    s = (q * k).sum(-1) / math.sqrt(C)
    ref_alpha = torch.softmax(s.view(7, 7, H), dim=1).reshape(E, H)   # full: 7 sources each
    torch.testing.assert_close(alpha, ref_alpha, atol=1e-12, rtol=1e-10)
    msg = (ref_alpha * mult).unsqueeze(-1) * v
    ref = layer.lin_out(torch.zeros(7, H, C, dtype=torch.float64).index_add(0, dst, msg)
                        .reshape(7, H * C))
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-10)
    assert (mult == 0).any() and (mult > 0).any()


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_gelu_dropout_is_dropout_of_gelu_values_and_gradients(dtype, tol):
    """The fused kernel computes dropout(gelu(x)) with the decisions dropout
    makes for the same seed; its gradient is the composition's, by autograd
    through torch's GELU and the hashed dropout."""
    import torch.nn.functional as F

    from graphformer.nn.functional import dropout, gelu_dropout

    x = (torch.randn(37, 129, dtype=dtype) * 4).requires_grad_()   # 4773 entries: a ragged block
    g = torch.randn(37, 129, dtype=dtype)
    for p in (0.1, 0.5):
        torch.manual_seed(3)
        out = gelu_dropout(x, p)
        (grad,) = torch.autograd.grad((out * g).sum(), x)
        torch.manual_seed(3)
        ref = dropout(F.gelu(x), p)
        (ref_grad,) = torch.autograd.grad((ref * g).sum(), x)
        torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
        torch.testing.assert_close(grad, ref_grad, atol=tol, rtol=tol)
        torch.manual_seed(3)
        keep = dropout(torch.ones_like(x), p) != 0                  # the same decisions
        assert (out[~keep] == 0).all() and (out[keep] != 0).any()
        assert abs(keep.double().mean().item() - (1 - p)) < 0.03
    # no dropout: plain GELU; everything dropped: zeros
    torch.testing.assert_close(gelu_dropout(x, 0.1, training=False), F.gelu(x), atol=0, rtol=0)
    torch.testing.assert_close(gelu_dropout(x, 0.0), F.gelu(x), atol=0, rtol=0)
    assert gelu_dropout(x, 1.0).abs().sum() == 0
    with pytest.raises(ValueError, match="dropout probability"):
        gelu_dropout(x, 1.5)


def test_transformer_feed_forward_uses_the_fused_gelu_dropout(monkeypatch):
    """The block's feed-forward branch is the same function through the fused
    kernel as through GELU then dropout (same seed)."""
    import torch.nn.functional as F

    from graphformer.nn import functional, transformer

    lin1, lin2 = torch.nn.Linear(8, 32).double(), torch.nn.Linear(32, 8).double()
    x = torch.randn(50, 8, dtype=torch.float64)
    torch.manual_seed(1)
    fused = transformer.feed_forward(x, lin1, lin2, "gelu", 0.2, True)
    monkeypatch.setattr(transformer, "gelu_dropout",
                        lambda h, p, training: functional.dropout(F.gelu(h), p, training))
    torch.manual_seed(1)
    unfused = transformer.feed_forward(x, lin1, lin2, "gelu", 0.2, True)
    torch.testing.assert_close(fused, unfused, atol=1e-12, rtol=1e-12)


def test_grouping_by_source_is_the_stable_sort():
    """EdgeCSR.transpose by the counting-sort kernel equals the stable sort
    (permutation, row pointer, rows and columns); an out-of-range source is
    refused naming the edge; empty edge sets work."""
    from graphformer.nn.csr import EdgeCSR

    g = torch.Generator().manual_seed(0)
    for R, S, E in [(40, 30, 700), (5, 9, 0), (3, 1, 6)]:
        row = torch.randint(0, R, (E,), generator=g).sort()[0]
        col = torch.randint(0, S, (E,), generator=g)
        t, perm = EdgeCSR.from_sorted(row, col, R, S).transpose()
        ref_perm = torch.sort(col, stable=True)[1]
        ref = EdgeCSR.from_sorted(col[ref_perm], row[ref_perm], S, R)
        assert torch.equal(perm, ref_perm)
        assert torch.equal(t.ptr, ref.ptr) and torch.equal(t.col, ref.col)
        assert torch.equal(t.row, ref.row)
        assert (t.num_rows, t.num_cols, t.num_edges) == (S, R, E)
    col = torch.tensor([0, 2, 1, 3])
    with pytest.raises(IndexError, match="edge 3 has source 3, outside the 3 source nodes"):
        EdgeCSR.from_sorted(torch.tensor([0, 0, 1, 1]), col, 2, 3).transpose()
