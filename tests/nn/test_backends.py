"""Every attention backend computes the same thing: values and gradients on
every pattern, with and without edge features and head masks, against the
``propagate`` backend (PyG message passing, itself checked against
MultiheadAttention and the dense equations in test_attention.py) and against
a dense float64 evaluation of the equations. Plus the cost model, the
estimate and the memory shape of the sparse backend."""
import math
from dataclasses import replace

import pytest
import torch

from graphformer import patterns as P
from graphformer.nn import EdgeSet, RelationalAttention, estimate
from graphformer.nn.backend import (DENSE_CROSSOVER, DENSE_MAX_SCORES, FUSED_CPU_CROSSOVER,
                                     PROPAGATE_BELOW, PROPAGATE_BELOW_FUSED_CPU, REGISTRY,
                                     choose_backend, dense_crossover, padded_density)
from graphformer.nn.cpu_kernels import kernels_available
from graphformer.nn.fused import fused_available
from graphformer.nn.fused_cpu import fused_cpu_available, fused_cpu_unavailable
from tests.helpers import ptr_of

SIZES = [6, 1, 9, 4, 0, 7]   # uneven, a one-node and an empty graph
IN, OUT, H = 10, 12, 3

PATTERNS = {
    "full": lambda ptr: P.full(ptr),
    "causal": lambda ptr: P.causal(ptr),
    "window": lambda ptr: P.window(ptr, 2),
    "window_two_sided": lambda ptr: P.window(ptr, 1, causal=False),
    "strided": lambda ptr: P.strided(ptr, 3),
    "block": lambda ptr: P.block(ptr, 3),
    "global": lambda ptr: P.global_tokens(ptr, ptr[:-1][ptr.diff() > 0]),
    "random": lambda ptr: P.random(ptr, 3, generator=torch.Generator().manual_seed(1)),
    "graph": lambda ptr: P.graph(_ring(ptr)),
    "k_hop": lambda ptr: P.k_hop(_ring(ptr), 2, num_nodes=int(ptr[-1])),
    "union": lambda ptr: P.union(P.window(ptr, 1), P.strided(ptr, 2))[0],
}
BACKENDS = ["sparse", "dense", "fused", "fused_cpu"]


def _ring(ptr):
    """A directed ring inside every graph (a bond-like sparse graph)."""
    src, dst = [], []
    for b in range(ptr.numel() - 1):
        lo, hi = int(ptr[b]), int(ptr[b + 1])
        for i in range(lo, hi):
            if hi - lo > 1:
                src.append(i)
                dst.append(lo + (i - lo + 1) % (hi - lo))
    return torch.tensor([src, dst], dtype=torch.long).view(2, -1)


def _skip_unavailable(backend):
    if backend == "fused" and not fused_available(torch.device("cpu")):
        pytest.skip("triton is not installed (or TRITON_INTERPRET is not set)")
    if backend == "fused_cpu" and not fused_cpu_available():
        pytest.skip(f"the fused CPU kernels are unavailable: {fused_cpu_unavailable()}")


def _inputs(pattern, edge_dim, head_mask, dtype=torch.float64):
    ptr = ptr_of(SIZES)
    batch = torch.repeat_interleave(torch.arange(len(SIZES)), ptr.diff())
    ei = PATTERNS[pattern](ptr)
    E = ei.size(1)
    x = torch.randn(int(ptr[-1]), IN, dtype=dtype, requires_grad=True)
    e = torch.randn(E, edge_dim, dtype=dtype, requires_grad=True) if edge_dim else None
    hm = None
    if head_mask:
        hm = torch.rand(E, H) > 0.3
    return ptr, batch, ei, x, e, hm


def _run(layer, x, ei, e, hm, batch, g):
    out, alpha = layer(x, ei, e, head_mask=hm, batch=batch, return_attention_weights=True)
    params = [p for p in layer.parameters()]
    inputs = [x] + ([e] if e is not None else [])
    grads = torch.autograd.grad((out * g).sum(), inputs + params, allow_unused=True)
    return out, alpha, grads


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pattern", sorted(PATTERNS))
@pytest.mark.parametrize("edge_dim,head_mask", [(None, False), (4, False), (4, True)],
                         ids=["plain", "edges", "edges-heads"])
def test_backends_agree_forward_and_backward(backend, pattern, edge_dim, head_mask):
    _skip_unavailable(backend)
    dtype = torch.float32 if backend == "fused" else torch.float64
    ptr, batch, ei, x, e, hm = _inputs(pattern, edge_dim, head_mask, dtype)
    ref_layer = RelationalAttention(IN, OUT, heads=H, edge_dim=edge_dim,
                                    backend="propagate").to(dtype)
    layer = RelationalAttention(IN, OUT, heads=H, edge_dim=edge_dim, backend=backend).to(dtype)
    layer.load_state_dict(ref_layer.state_dict())
    g = torch.randn(x.size(0), OUT, dtype=dtype)
    out_ref, alpha_ref, grads_ref = _run(ref_layer, x, ei, e, hm, batch, g)
    out, alpha, grads = _run(layer, x, ei, e, hm, batch, g)
    tol = dict(atol=1e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(out, out_ref, **tol)
    torch.testing.assert_close(alpha, alpha_ref, **tol)
    for ours, theirs in zip(grads, grads_ref):
        if theirs is None:
            assert ours is None or ours.abs().max() == 0
            continue
        torch.testing.assert_close(ours, theirs, **tol)
    assert grads[0].abs().sum() > 0


def dense_equations(layer, x, e, ei, hm):
    """The layer's equations on a dense [N, N] layout (float64), one graph."""
    N, Hh, C = x.size(0), layer.heads, layer.head_channels
    src, dst = ei
    q = layer.lin_q(x).view(N, 1, Hh, C).expand(N, N, Hh, C).clone()
    k = layer.lin_k(x).view(1, N, Hh, C).expand(N, N, Hh, C).clone()
    v = layer.lin_v(x).view(1, N, Hh, C).expand(N, N, Hh, C).clone()
    if e is not None:
        q[dst, src] = q[dst, src] + layer.lin_edge_q(e).view(-1, Hh, C)
        k[dst, src] = k[dst, src] + layer.lin_edge_k(e).view(-1, Hh, C)
        v[dst, src] = v[dst, src] + layer.lin_edge_v(e).view(-1, Hh, C)
    allowed = torch.zeros(N, N, Hh, dtype=torch.bool)
    allowed[dst, src] = hm if hm is not None else True
    score = (q * k).sum(-1) / math.sqrt(C)
    a = torch.softmax(score.masked_fill(~allowed, float("-inf")), dim=1).nan_to_num(0.0)
    out = (a.unsqueeze(-1) * v).sum(1).reshape(N, Hh * C)
    return layer.lin_out(out)


@pytest.mark.parametrize("backend", ["propagate"] + BACKENDS)
def test_each_backend_equals_the_dense_equations(backend):
    _skip_unavailable(backend)
    dtype = torch.float32 if backend == "fused" else torch.float64
    ptr, batch, ei, x, e, hm = _inputs("union", 4, True, dtype)
    layer = RelationalAttention(IN, OUT, heads=H, edge_dim=4, backend=backend).to(dtype)
    out = layer(x, ei, e, head_mask=hm, batch=batch)
    ref = dense_equations(layer, x, e, ei, hm)
    torch.testing.assert_close(out, ref, atol=1e-5 if dtype == torch.float32 else 1e-10,
                               rtol=1e-5)


@pytest.mark.parametrize("backend", ["sparse", "dense", "fused_cpu"])
def test_duplicate_edges_count_twice(backend):
    _skip_unavailable(backend)
    """A duplicated edge has twice the weight, in every backend; the dense
    backend reproduces it with log(count) and refuses it with edge features."""
    ei = torch.tensor([[0, 1, 1, 2, 0], [1, 1, 1, 1, 2]])
    x = torch.randn(3, IN, dtype=torch.float64)
    ref = RelationalAttention(IN, OUT, heads=H, backend="propagate").double()
    layer = RelationalAttention(IN, OUT, heads=H, backend=backend).double()
    layer.load_state_dict(ref.state_dict())
    out, alpha = layer(x, ei, return_attention_weights=True)
    out_ref, alpha_ref = ref(x, ei, return_attention_weights=True)
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(alpha, alpha_ref)
    torch.testing.assert_close(alpha[1], alpha[2])
    if backend == "dense":
        layer_e = RelationalAttention(IN, OUT, heads=H, edge_dim=2, backend="dense").double()
        with pytest.raises(ValueError, match="duplicate edges"):
            layer_e(x, ei, torch.randn(5, 2, dtype=torch.float64))


@pytest.mark.parametrize("backend", ["sparse", "dense", "fused_cpu"])
@pytest.mark.parametrize("heads,nodes,edges", [(1, 1, 3), (2, 2, 9)])
def test_more_duplicate_edges_than_node_pairs(backend, heads, nodes, edges):
    """Duplicates may outnumber the node pairs (the sparse backend's sampled
    products have fewer cells than edges then): the same output and
    gradients as message passing."""
    _skip_unavailable(backend)
    torch.manual_seed(0)
    ei = torch.randint(0, nodes, (2, edges))
    ei[:, :2] = 0                                          # at least one duplicate
    x = torch.randn(nodes, IN, dtype=torch.float64, requires_grad=True)
    ref = RelationalAttention(IN, 2 * heads, heads=heads, backend="propagate").double()
    layer = RelationalAttention(IN, 2 * heads, heads=heads, backend=backend).double()
    layer.load_state_dict(ref.state_dict())
    out, out_ref = layer(x, ei), ref(x, ei)
    torch.testing.assert_close(out, out_ref)
    g = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, x, g)[0],
                               torch.autograd.grad(out_ref, x, g)[0])


def test_dense_refuses_edges_between_graphs():
    layer = RelationalAttention(IN, OUT, heads=H, backend="dense")
    batch = torch.tensor([0, 0, 1, 1])
    ei = torch.tensor([[0, 1], [1, 2]])
    with pytest.raises(ValueError, match=r"edge 1 \(1 -> 2\) joins two graphs"):
        layer(torch.randn(4, IN), ei, batch=batch)


def test_fused_refuses_dropout_in_training():
    _skip_unavailable("fused")
    layer = RelationalAttention(IN, OUT, heads=H, dropout=0.2, backend="fused")
    with pytest.raises(ValueError, match="no attention dropout"):
        layer(torch.randn(4, IN), P.full(4))
    layer.eval()
    assert torch.isfinite(layer(torch.randn(4, IN), P.full(4))).all()


@pytest.mark.parametrize("backend", ["sparse", "dense", "fused_cpu"])
def test_dropout_drops_and_rescales(backend):
    _skip_unavailable(backend)
    torch.manual_seed(0)
    layer = RelationalAttention(IN, OUT, heads=H, dropout=0.5, backend=backend)
    ei = P.full(8)
    x = torch.randn(8, IN)
    layer.eval()
    clean = layer(x, ei)
    layer.train()
    noisy = torch.stack([layer(x, ei) for _ in range(400)])
    assert not torch.allclose(noisy[0], clean)
    # inverted dropout keeps the expectation
    torch.testing.assert_close(noisy.mean(0), clean, atol=0.05, rtol=0.1)


def test_sparse_backend_keeps_no_edge_by_channel_tensor_for_backward(monkeypatch):
    """Memory shape: every tensor autograd saves is node-sized, E×H, or the
    inputs — nothing of E×H×C (the ``propagate`` backend saves several).
    Per-edge projections are recomputed in backward above RECOMPUTE_ABOVE
    elements; here that threshold is lowered to 0 to test the large regime."""
    import graphformer.nn.edge_terms as S

    monkeypatch.setattr(S, "RECOMPUTE_ABOVE", 0)
    ptr = ptr_of([40, 40])
    ei = P.full(ptr)                               # E = 3200
    E, heads, C = ei.size(1), 4, 16
    x = torch.randn(80, 32, requires_grad=True)
    e = torch.randn(E, 2, requires_grad=True)

    def largest_saved(backend):
        layer = RelationalAttention(32, heads * C, heads=heads, edge_dim=2, backend=backend)
        sizes = []

        def pack(t):
            sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            layer(x, ei, e).sum()
        return max(sizes)

    assert largest_saved("propagate") >= E * heads * C
    assert largest_saved("sparse") <= max(E * heads, 80 * 32 * 4, E * 2) < E * heads * C


def test_auto_follows_the_cost_model():
    cpu = torch.device("cpu")
    kw = dict(heads=8, device=cpu, fused_ok=False, dropout_active=False)
    # molecules with all-pairs attention: dense; bonds only: sparse
    assert choose_backend(num_edges=128 * 25 * 25, num_graphs=128, max_nodes=25,
                          dense_ok=True, **kw) == "dense"
    assert choose_backend(num_edges=128 * 40, num_graphs=128, max_nodes=25,
                          dense_ok=True, **kw) == "sparse"
    # a long sequence with a narrow window: sparse
    assert choose_backend(num_edges=8192 * 64, num_graphs=1, max_nodes=8192,
                          dense_ok=True, **kw) == "sparse"
    # not applicable / too large for dense
    assert choose_backend(num_edges=100, num_graphs=1, max_nodes=10, dense_ok=False,
                          **kw) == "sparse"
    T = int(math.sqrt(DENSE_MAX_SCORES / 8)) + 1
    assert choose_backend(num_edges=T * T, num_graphs=1, max_nodes=T, dense_ok=True,
                          **kw) == "sparse"
    # the GPU kernel, unless dropout is active
    gpu = dict(kw, device=torch.device("cuda"), fused_ok=True)
    assert choose_backend(num_edges=10, num_graphs=1, max_nodes=5, dense_ok=True,
                          **gpu) == "fused"
    gpu["dropout_active"] = True
    assert choose_backend(num_edges=25, num_graphs=1, max_nodes=5, dense_ok=True,
                          **gpu) == "dense"
    assert padded_density(10, 2, 5) == pytest.approx(0.2)
    # typed edges on CPU: sparse, also where padded blocks are dense
    assert choose_backend(num_edges=128 * 25 * 25, num_graphs=128, max_nodes=25,
                          dense_ok=True, typed_edges=True, **kw) == "sparse"
    # with edge features, small per-edge messages: PyG message passing (CPU)
    edges = dict(kw, edge_features=True, channels=256)
    assert choose_backend(num_edges=7040, num_graphs=128, max_nodes=25, dense_ok=True,
                          **edges) == "propagate"
    assert choose_backend(num_edges=PROPAGATE_BELOW // 256 + 1, num_graphs=1,
                          max_nodes=100_000, dense_ok=True, **edges) == "sparse"
    assert choose_backend(num_edges=7040, num_graphs=128, max_nodes=25, dense_ok=True,
                          **dict(gpu, dropout_active=False, edge_features=True,
                                 channels=256)) == "fused"
    # on CPU with the C++ kernels built: fused_cpu wherever dense does not
    # win, dense above a crossover that falls with the padded size T
    kernels = dict(kw, fused_cpu_ok=True)
    assert choose_backend(num_edges=128 * 40, num_graphs=128, max_nodes=25, dense_ok=True,
                          **kernels) == "fused_cpu"
    # with edge features too, above a smaller size (the block as one op)
    with_kernels = dict(edges, fused_cpu_ok=True)
    assert choose_backend(num_edges=7040, num_graphs=128, max_nodes=25, dense_ok=True,
                          **with_kernels) == "fused_cpu"
    assert choose_backend(num_edges=PROPAGATE_BELOW_FUSED_CPU // 256, num_graphs=16,
                          max_nodes=25, dense_ok=True, **with_kernels) == "propagate"
    assert choose_backend(num_edges=8192 * 64, num_graphs=1, max_nodes=8192, dense_ok=True,
                          **kernels) == "fused_cpu"
    assert choose_backend(num_edges=100, num_graphs=1, max_nodes=10, dense_ok=False,
                          **kernels) == "fused_cpu"
    assert choose_backend(num_edges=128 * 25 * 25, num_graphs=128, max_nodes=25,
                          dense_ok=True, **kernels) == "dense"
    # 32 sequences of 128 tokens: causal (density 0.5) dense, a window of 32 keys
    # (density 0.22) fused_cpu
    assert choose_backend(num_edges=32 * 128 * 129 // 2, num_graphs=32, max_nodes=128,
                          dense_ok=True, **kernels) == "dense"
    assert choose_backend(num_edges=32 * 128 * 32, num_graphs=32, max_nodes=128,
                          dense_ok=True, **kernels) == "fused_cpu"
    assert choose_backend(num_edges=200_000, num_graphs=1, max_nodes=10_000, dense_ok=True,
                          **dict(kernels, edge_features=True, channels=256)) == "fused_cpu"
    # the kernels' availability means nothing on a GPU
    assert choose_backend(num_edges=10, num_graphs=1, max_nodes=5, dense_ok=False,
                          **dict(kernels, device=torch.device("cuda"))) == "sparse"


def test_dense_crossover_interpolates_the_measured_points():
    cpu = torch.device("cpu")
    assert dense_crossover(cpu, 1000) == DENSE_CROSSOVER["cpu"]         # no kernels
    assert dense_crossover(torch.device("cuda"), 1000, True) == DENSE_CROSSOVER["cuda"]
    for T, density in FUSED_CPU_CROSSOVER:
        assert dense_crossover(cpu, T, True) == pytest.approx(density)
    (t0, d0), (t1, d1) = FUSED_CPU_CROSSOVER[:2]
    middle = int(round(math.sqrt(t0 * t1)))                             # halfway in log T
    assert dense_crossover(cpu, middle, True) == pytest.approx(
        d0 + (d1 - d0) * math.log(middle / t0) / math.log(t1 / t0))
    assert dense_crossover(cpu, 1, True) == FUSED_CPU_CROSSOVER[0][1]    # held at the ends
    assert dense_crossover(cpu, 10 ** 6, True) == FUSED_CPU_CROSSOVER[-1][1]
    values = [dense_crossover(cpu, T, True) for T in range(1, 5000, 7)]
    assert all(a >= b for a, b in zip(values, values[1:]))              # falls with T


def test_auto_picks_dense_for_full_molecules_and_sparse_for_bonds(monkeypatch):
    """The layer calls the backend the cost model names (from the registry)."""
    import graphformer.nn.attention as A

    seen = []
    spied = dict(REGISTRY)
    for name in ("sparse", "dense", "fused_cpu"):
        real = spied[name]
        spied[name] = replace(real, run=lambda call, _real=real: seen.append(_real.name)
                              or _real.run(call))
    monkeypatch.setattr(A, "get_backend", spied.__getitem__)
    ptr = ptr_of([25] * 8)
    batch = torch.repeat_interleave(torch.arange(8), 25)
    layer = RelationalAttention(IN, OUT, heads=H)
    x = torch.randn(200, IN)
    layer(x, P.full(ptr), batch=batch)
    layer(x, P.graph(_ring(ptr)), batch=batch)
    layer((x, x), P.full(ptr))                     # bipartite: dense does not apply
    other = "fused_cpu" if fused_cpu_available() else "sparse"
    assert seen == ["dense", other, other]


def test_one_registry_names_every_backend_and_where_it_runs(monkeypatch):
    """REGISTRY: the backends a layer accepts (``"auto"`` besides), each with
    its function and its availability per device; the CPU kernels turned off
    take ``fused_cpu`` off the CPU's list and ``auto`` picks ``sparse``."""
    from graphformer.nn.backend import (ATTENTION_BACKENDS, REGISTRY, Backend,
                                        available_backends, get_backend, resolve_backend)
    from graphformer.nn.cpu_kernels import ENV_SWITCH
    from graphformer.nn.fused import fused_backend
    from graphformer.nn.fused_cpu import fused_cpu_backend
    from graphformer.nn.sparse import sparse_attention

    assert ATTENTION_BACKENDS == ("auto", "sparse", "dense", "fused", "fused_cpu", "propagate")
    assert set(REGISTRY) == set(ATTENTION_BACKENDS[1:])
    assert get_backend("sparse").run is sparse_attention
    assert REGISTRY["fused"].run is fused_backend
    assert REGISTRY["fused_cpu"].run is fused_cpu_backend
    with pytest.raises(ValueError, match=r"unknown attention backend 'auto'; choose one of"):
        get_backend("auto")
    with pytest.raises(ValueError, match="other than 'auto'"):
        Backend("auto", sparse_attention, lambda d: True, "")
    cpu = torch.device("cpu")
    assert {"sparse", "dense", "propagate"} <= set(available_backends(cpu))
    assert ("fused_cpu" in available_backends(cpu)) == fused_cpu_available()
    assert "fused_cpu" not in available_backends(torch.device("meta"))
    typed = EdgeSet(torch.tensor([[0, 1, 2], [1, 2, 0]]), 3, edge_type=torch.tensor([0, 1, 0]))
    kw = dict(heads=2, channels=8, device=cpu, per_edge_features=False, has_terms=True,
              dropout_active=False, traced=False)
    if fused_cpu_available():
        assert resolve_backend("auto", typed, **kw) == "fused_cpu"
    monkeypatch.setenv(ENV_SWITCH, "0")
    assert "fused_cpu" not in available_backends(cpu)
    assert resolve_backend("auto", typed, **kw) == "sparse"
    assert resolve_backend("fused_cpu", typed, **kw) == "fused_cpu"   # explicit: as asked
    assert resolve_backend("auto", None, **dict(kw, traced=True)) == "propagate"
    layer = RelationalAttention(8, 8, heads=2, edge_dim=3, backend="fused_cpu")
    with pytest.raises(RuntimeError, match=f"the fused_cpu backend is unavailable: turned off "
                                           f"by {ENV_SWITCH}=0"):
        layer(torch.randn(3, 8), typed, torch.randn(2, 3))


def test_estimate_is_consistent():
    layer = RelationalAttention(256, 256, heads=8, edge_dim=64)
    sparse = estimate(layer, num_nodes=50_000, num_edges=1_000_000, backend="sparse")
    prop = estimate(layer, num_nodes=50_000, num_edges=1_000_000, backend="propagate")
    assert prop.peak_bytes > 4 * sparse.peak_bytes          # E×H×C messages dominate
    fwd = estimate(layer, num_nodes=50_000, num_edges=1_000_000, backend="sparse",
                   training=False)
    assert fwd.flops * 3 == sparse.flops and fwd.peak_bytes < sparse.peak_bytes
    # without edge features dense grows with the padded size, not with E
    plain = RelationalAttention(256, 256, heads=8)
    d1 = estimate(plain, num_nodes=3200, num_edges=7000, graph_sizes=[25] * 128,
                  backend="dense")
    d2 = estimate(plain, num_nodes=3200, num_edges=80000, graph_sizes=[25] * 128,
                  backend="dense")
    assert d2.flops == d1.flops
    auto = estimate(plain, num_nodes=3200, num_edges=128 * 625, graph_sizes=[25] * 128)
    assert auto.backend == "dense"
    assert estimate(layer, num_nodes=3200, num_edges=800).backend == "propagate"
    # a batch of 128 molecules: the fused CPU kernels' block where they are built
    assert estimate(layer, num_nodes=3200, num_edges=7040).backend == (
        "fused_cpu" if fused_cpu_available() else "propagate")
    # beyond that, the fused CPU kernels where they are built; they keep less
    # than the sparse backend (no softmax terms, no head blocks)
    large = estimate(layer, num_nodes=50_000, num_edges=1_000_000)
    assert large.backend == ("fused_cpu" if fused_cpu_available() else "sparse")
    fused = estimate(layer, num_nodes=50_000, num_edges=1_000_000, backend="fused_cpu")
    assert fused.flops == sparse.flops and fused.peak_bytes < sparse.peak_bytes
    # the attention products are counted exactly: 2 products of E×H×C multiply-adds
    no_proj = RelationalAttention(8, 8, heads=1)
    a = estimate(no_proj, num_nodes=10, num_edges=100, backend="sparse", training=False)
    b = estimate(no_proj, num_nodes=10, num_edges=200, backend="sparse", training=False)
    assert b.flops - a.flops == 2 * 2 * 100 * 8


def test_bad_backend_name():
    with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
        RelationalAttention(4, 4, backend="flash")


def test_edge_terms_in_many_recomputed_chunks_equal_propagate(monkeypatch):
    """Large edge sets take the chunked, recomputing path of the edge terms
    where the regrouped terms' kernels do not run (CUDA, no compiler):
    force it on a small one (chunks of 1024 edges, nothing kept)."""
    import graphformer.nn.edge_terms as S

    monkeypatch.setattr(S, "kernels_available", lambda: False)
    monkeypatch.setattr(S, "RECOMPUTE_ABOVE", 0)
    monkeypatch.setattr(S, "CHUNK_ELEMENTS", 1)
    ptr = ptr_of([40, 30])
    ei = P.full(ptr)                                # 2500 edges: 3 chunks
    x = torch.randn(70, IN, dtype=torch.float64, requires_grad=True)
    e = torch.randn(ei.size(1), 4, dtype=torch.float64, requires_grad=True)
    ref = RelationalAttention(IN, OUT, heads=H, edge_dim=4, backend="propagate").double()
    layer = RelationalAttention(IN, OUT, heads=H, edge_dim=4, backend="sparse").double()
    layer.load_state_dict(ref.state_dict())
    g = torch.randn(70, OUT, dtype=torch.float64)
    out_ref, alpha_ref, grads_ref = _run(ref, x, ei, e, None, None, g)
    out, alpha, grads = _run(layer, x, ei, e, None, None, g)
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(alpha, alpha_ref)
    for ours, theirs in zip(grads, grads_ref):
        torch.testing.assert_close(ours, theirs)


@pytest.mark.skipif(not kernels_available(), reason="needs the CPU kernels")
@pytest.mark.parametrize("backend", ["sparse", "fused_cpu"])
def test_regrouped_edge_terms_equal_the_chunked_projections(monkeypatch, backend):
    """With the CPU kernels the edge-feature score terms are regrouped (cross
    terms through node tables, the edge's term with itself as a symmetric
    quadratic form); without them they come from the per-edge projections in
    chunks. Same layer, float64, a graph with nodes that have no incoming and
    no outgoing edges: the same outputs, attention and gradients (of x, the
    edge features and every weight)."""
    import graphformer.nn.edge_terms as S

    torch.manual_seed(0)
    ei = torch.tensor([[0, 2, 3, 3, 5, 1, 0, 2, 6, 6],
                       [1, 1, 1, 2, 2, 4, 4, 5, 5, 0]])      # 3 and 6 receive nothing
    x = torch.randn(8, IN, dtype=torch.float64, requires_grad=True)   # 7 has no edge at all
    e = torch.randn(ei.size(1), 5, dtype=torch.float64, requires_grad=True)
    layer = RelationalAttention(IN, OUT, heads=H, edge_dim=5, backend=backend).double()
    g = torch.randn(8, OUT, dtype=torch.float64)

    regrouped = _run(layer, x, ei, e, None, None, g)
    monkeypatch.setattr(S, "kernels_available", lambda: False)
    chunked = _run(layer, x, ei, e, None, None, g)
    for ours, theirs in zip([*regrouped[:2], *regrouped[2]], [*chunked[:2], *chunked[2]]):
        torch.testing.assert_close(ours, theirs)


def test_auto_picks_the_fused_kernel_on_cuda_only_once_it_passed_on_a_gpu(monkeypatch):
    """Until ``scripts/gpu_check.py`` has recorded a passing run of the fused
    kernel's tests on a GPU, ``auto`` runs the tested backends on CUDA; the
    fused kernel stays available by name. (The layout is read on the CPU:
    only the choice is asked for, nothing runs on the device.)"""
    from graphformer.nn import fused_record
    from graphformer.nn.backend import resolve_backend

    if not fused_available(torch.device("cuda")):
        pytest.skip("triton is not installed")
    ptr = ptr_of([5, 4])
    edges = EdgeSet(P.full(ptr), 9, batch=torch.repeat_interleave(torch.arange(2), ptr.diff()))
    choose = dict(heads=2, channels=8, device=torch.device("cuda"), per_edge_features=False,
                  has_terms=False, dropout_active=False, traced=False)
    monkeypatch.setattr(fused_record, "VERIFIED_ON_GPU", None)
    assert resolve_backend("auto", edges, **choose) == "dense"
    assert resolve_backend("fused", edges, **choose) == "fused"
    monkeypatch.setattr(fused_record, "VERIFIED_ON_GPU", {"device": "NVIDIA H100"})
    assert resolve_backend("auto", edges, **choose) == "fused"
    assert "only once its tests have passed on a GPU" in REGISTRY["fused"].requires
