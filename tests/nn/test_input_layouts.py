"""No layer trusts a tensor's memory layout: ``edge_index``, ``x``, edge
features and edge types given as transposed, strided, sliced, permuted or
int32 views give the outputs and gradients of the dense reference on every
backend (issue 25: ``torch.tensor(pairs).t()``, the usual way to build an
``edge_index`` from a list of pairs, gave outputs off by thousands on
``sparse``, ``fused_cpu`` and ``auto``, because PyTorch's ``index2ptr`` and the C
kernels read the strided index as if it were dense). Also the typed-edge
guarantees of the same issue (a non-finite type row stays with the edges of
its type; per-edge features are not taken for a type table) and the input
checks that name the argument."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graphformer import patterns as P
from graphformer.nn import EdgeSet, RelationalAttention, TransformerLayer
from graphformer.nn.cpu_kernels import kernels_available
from graphformer.nn.fused import fused_available
from graphformer.nn.fused_cpu import fused_cpu_attention, fused_cpu_available
from tests.nn.test_backends import dense_equations

BACKENDS = ["auto", "sparse", "dense", "fused_cpu", "propagate"]
IN, OUT, H, D = 6, 8, 2, 3


def _available(backend):
    if backend == "fused_cpu" and not fused_cpu_available():
        return False
    if backend == "fused" and not fused_available(torch.device("cpu")):
        return False
    return True


def _layouts_of_index(ei: torch.Tensor, how: str) -> torch.Tensor:
    """The same edges (same order) in another memory layout."""
    if how == "contiguous":
        return ei.contiguous()
    if how == "pairs_t":                   # torch.tensor(list of pairs).t()
        return torch.tensor(ei.t().tolist(), dtype=torch.long).t()
    if how == "strided":                   # every other column of a wider tensor
        wide = torch.full((2, 2 * ei.size(1)), -7, dtype=torch.long)
        wide[:, ::2] = ei
        return wide[:, ::2]
    if how == "int32_t":                   # int32, and transposed
        return ei.t().contiguous().to(torch.int32).t()
    if how == "rows_of_bigger":            # rows 1 and 3 of a [4, E] tensor
        big = torch.zeros(4, ei.size(1), dtype=torch.long)
        big[1], big[3] = ei[0], ei[1]
        return big[1::2]
    raise AssertionError(how)


def _layouts_of_features(x: torch.Tensor, how: str) -> torch.Tensor:
    """The same [N, F] values in another memory layout (a leaf-free view)."""
    if how == "contiguous":
        return x
    if how == "transposed":
        return x.t().contiguous().t()
    if how == "column_slice":
        wide = torch.zeros(x.size(0), 2 * x.size(1), dtype=x.dtype)
        wide[:, 1::2] = x
        return wide[:, 1::2]
    if how == "row_slice":
        tall = torch.zeros(2 * x.size(0), x.size(1), dtype=x.dtype)
        tall[::2] = x
        return tall[::2]
    raise AssertionError(how)


INDEX_LAYOUTS = ["contiguous", "pairs_t", "strided", "int32_t", "rows_of_bigger"]
FEATURE_LAYOUTS = ["contiguous", "transposed", "column_slice", "row_slice"]


@st.composite
def graphs(draw):
    n = draw(st.integers(1, 9))
    pairs = draw(st.sets(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)),
                         min_size=1, max_size=n * n))
    pairs = sorted(pairs, key=lambda p: (p[1], p[0]))      # grouped by target, as usual
    if draw(st.booleans()):                                # or in any order
        pairs = draw(st.permutations(pairs))
    ei = torch.tensor(pairs, dtype=torch.long).t().contiguous()
    return n, ei


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graph=graphs(), index_layout=st.sampled_from(INDEX_LAYOUTS),
       x_layout=st.sampled_from(FEATURE_LAYOUTS), e_layout=st.sampled_from(FEATURE_LAYOUTS),
       with_edges=st.booleans(), seed=st.integers(0, 2**16))
def test_any_layout_equals_the_dense_reference_on_every_backend(
        graph, index_layout, x_layout, e_layout, with_edges, seed):
    n, ei = graph
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, IN, dtype=torch.float64, generator=gen)
    e0 = torch.randn(ei.size(1), D, dtype=torch.float64, generator=gen) if with_edges else None
    g = torch.randn(n, OUT, dtype=torch.float64, generator=gen)
    torch.manual_seed(seed)
    ref_layer = RelationalAttention(IN, OUT, heads=H, edge_dim=D if with_edges else None,
                                    backend="propagate").double()
    x_ref = x0.clone().requires_grad_()
    e_ref = None if e0 is None else e0.clone().requires_grad_()
    ref = dense_equations(ref_layer, x_ref, e_ref, ei, None)
    ref_grads = torch.autograd.grad((ref * g).sum(), [x_ref] + ([e_ref] if with_edges else []))
    given_ei = _layouts_of_index(ei, index_layout)
    assert torch.equal(given_ei.long(), ei)
    for backend in BACKENDS:
        if not _available(backend):
            continue
        layer = RelationalAttention(IN, OUT, heads=H, edge_dim=D if with_edges else None,
                                    backend=backend).double()
        layer.load_state_dict(ref_layer.state_dict())
        x_leaf = x0.clone().requires_grad_()
        e_leaf = None if e0 is None else e0.clone().requires_grad_()
        x = _layouts_of_features(x_leaf, x_layout)
        e = None if e_leaf is None else _layouts_of_features(e_leaf, e_layout)
        out = layer(x, given_ei, e)
        torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-8,
                                   msg=lambda m: f"{backend}, {index_layout}: {m}")
        grads = torch.autograd.grad((out * g).sum(), [x_leaf] + ([e_leaf] if with_edges else []))
        for ours, theirs in zip(grads, ref_grads):
            torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=1e-8,
                                       msg=lambda m: f"{backend} grad, {index_layout}: {m}")


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graph=graphs(), index_layout=st.sampled_from(INDEX_LAYOUTS),
       table_layout=st.sampled_from(FEATURE_LAYOUTS), strided_types=st.booleans(),
       seed=st.integers(0, 2**16))
def test_typed_edges_in_any_layout_equal_the_dense_reference(graph, index_layout,
                                                              table_layout, strided_types, seed):
    n, ei = graph
    E, R = ei.size(1), 3
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, IN, dtype=torch.float64, generator=gen)
    table = torch.randn(R, D, dtype=torch.float64, generator=gen)
    types = torch.randint(0, R, (E,), generator=gen)
    torch.manual_seed(seed)
    ref_layer = RelationalAttention(IN, OUT, heads=H, edge_dim=D, backend="propagate").double()
    ref = dense_equations(ref_layer, x0, table[types], ei, None)
    given_types = torch.stack([types, types], 1)[:, 1] if strided_types else types
    for backend in BACKENDS:
        if not _available(backend):
            continue
        layer = RelationalAttention(IN, OUT, heads=H, edge_dim=D, backend=backend).double()
        layer.load_state_dict(ref_layer.state_dict())
        edges = EdgeSet(_layouts_of_index(ei, index_layout), n, edge_type=given_types,
                        num_types=R)
        out = layer(x0, edges, _layouts_of_features(table, table_layout))
        torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-8,
                                   msg=lambda m: f"{backend}, {index_layout}: {m}")


@pytest.mark.parametrize("backend", BACKENDS + ["fused"])
def test_edge_index_from_a_list_of_pairs_regression(backend):
    """The issue's case, scaled down: sorted by target, built as
    ``torch.tensor(pairs).t()`` (not contiguous), through the layer, an
    EdgeSet and a TransformerLayer."""
    if not _available(backend):
        pytest.skip(f"{backend} is unavailable here")
    gen = torch.Generator().manual_seed(0)
    N, E = (200, 1000) if backend == "fused" else (2000, 10000)   # Triton's interpreter is slow
    dst = torch.sort(torch.randint(0, N, (E,), generator=gen))[0]
    src = torch.randint(0, N, (E,), generator=gen)
    ei_t = torch.tensor(list(zip(src.tolist(), dst.tolist()))).t()
    assert not ei_t.is_contiguous()
    ei = ei_t.contiguous()
    x = torch.randn(N, 16, generator=gen)
    torch.manual_seed(0)
    layer = RelationalAttention(16, 16, heads=2, backend=backend)
    block = TransformerLayer(16, heads=2, dropout=0.0, backend=backend).eval()
    with torch.no_grad():
        want = layer(x, ei)
        torch.testing.assert_close(layer(x, ei_t), want, atol=0, rtol=0)
        torch.testing.assert_close(layer(x, EdgeSet(ei_t, N)), want, atol=0, rtol=0)
        torch.testing.assert_close(block(x, ei_t).x, block(x, ei).x, atol=0, rtol=0)
        reference = RelationalAttention(16, 16, heads=2, backend="propagate")
        reference.load_state_dict(layer.state_dict())
        torch.testing.assert_close(want, reference(x, ei), atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(not kernels_available(), reason="the CPU kernels are unavailable")
def test_fused_cpu_attention_takes_strided_arguments():
    gen = torch.Generator().manual_seed(3)
    N, Hh, C = 7, 2, 4
    q, k, v = (torch.randn(N, Hh, C, generator=gen, dtype=torch.float64) for _ in range(3))
    ei = P.full(N)
    ptr = torch.tensor([0, *range(N, N * N + 1, N)])
    col = ei[0]
    wide_col = torch.stack([col, col], 1)[:, 0]            # stride 2
    wide_ptr = torch.stack([ptr, ptr], 1)[:, 1]
    out, alpha, _ = fused_cpu_attention(q, k, v, ptr, col)
    out_s, alpha_s, _ = fused_cpu_attention(q.transpose(0, 1).contiguous().transpose(0, 1),
                                            k, v.permute(2, 0, 1).contiguous().permute(1, 2, 0),
                                            wide_ptr, wide_col)
    torch.testing.assert_close(out_s, out, atol=0, rtol=0)
    torch.testing.assert_close(alpha_s, alpha, atol=0, rtol=0)
    # the bias [H, E] in any layout: the kernel reads it through its strides
    # (edge-major, as the cross terms give it; a row expanded over the heads)
    E = col.numel()
    bias = torch.randn(Hh, E, generator=gen, dtype=torch.float64)
    bias[1, ::3] = float("-inf")
    out_b, alpha_b, _ = fused_cpu_attention(q, k, v, ptr, col, bias=bias)
    for layout in (bias.t().contiguous().t(), torch.stack([bias, bias], 2)[..., 1]):
        assert not layout.is_contiguous()
        out_l, alpha_l, _ = fused_cpu_attention(q, k, v, ptr, col, bias=layout)
        torch.testing.assert_close(out_l, out_b, atol=0, rtol=0)
        torch.testing.assert_close(alpha_l, alpha_b, atol=0, rtol=0)
    row = bias[0].clone()
    out_e, _, _ = fused_cpu_attention(q, k, v, ptr, col, bias=row.expand(Hh, E))
    out_r, _, _ = fused_cpu_attention(q, k, v, ptr, col, bias=row.repeat(Hh, 1))
    torch.testing.assert_close(out_e, out_r, atol=0, rtol=0)
    assert not torch.equal(out_b, out)


# -- typed edges: non-finite rows, and tables that are not per type ------------------------

def _typed_case():
    gen = torch.Generator().manual_seed(5)
    N, E = 40, 160
    ei = torch.stack([torch.randint(0, N, (E,), generator=gen),
                      torch.randint(0, N, (E,), generator=gen)])
    types = torch.randint(0, 2, (E,), generator=gen)
    types[:8] = 2                                           # type 2: a few edges; 3: none
    return N, ei, types, torch.randn(4, D, generator=gen, dtype=torch.float64), gen


@pytest.mark.parametrize("backend", ["auto", "sparse", "fused_cpu", "propagate"])
@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_a_non_finite_type_row_reaches_only_the_targets_of_its_edges(backend, bad):
    if not _available(backend):
        pytest.skip(f"{backend} is unavailable here")
    N, ei, types, table, gen = _typed_case()
    x = torch.randn(N, IN, generator=gen, dtype=torch.float64)
    torch.manual_seed(0)
    layer = RelationalAttention(IN, OUT, heads=H, edge_dim=D, backend=backend).double()
    edges = EdgeSet(ei, N, edge_type=types, num_types=4)
    clean = layer(x, edges, table)
    value = float(bad)
    for r in (3, 2):
        dirty = table.clone()
        dirty[r, 1] = value
        out = layer(x, edges, dirty)
        reached = torch.zeros(N, dtype=torch.bool)
        reached[ei[1][types == r]] = True
        assert torch.isfinite(out[~reached]).all(), f"type {r} leaked to unreached nodes"
        torch.testing.assert_close(out[~reached], clean[~reached], atol=1e-12, rtol=0)
        if bad == "nan":         # as with the features per edge: NaN where an edge reads it
            assert reached.any() == (r == 2) and torch.isnan(out[reached]).all()
    assert torch.isfinite(clean).all()


@pytest.mark.parametrize("backend", ["auto", "sparse", "fused_cpu", "propagate"])
def test_a_nan_type_row_in_a_batch_of_graphs_stays_in_its_graph(backend):
    """The dense backend too: a batch of full graphs, type 2 only inside graph 0."""
    if not _available(backend):
        pytest.skip(f"{backend} is unavailable here")
    ptr = torch.tensor([0, 5, 12, 20])
    batch = torch.repeat_interleave(torch.arange(3), ptr.diff())
    ei = P.full(ptr)
    gen = torch.Generator().manual_seed(1)
    types = torch.randint(0, 2, (ei.size(1),), generator=gen)
    types[(batch[ei[1]] == 0) & (torch.rand(ei.size(1), generator=gen) < 0.5)] = 2
    table = torch.randn(4, D, dtype=torch.float64, generator=gen)
    table[2, 0] = float("nan")
    x = torch.randn(20, IN, dtype=torch.float64, generator=gen)
    for b in ([backend, "dense"] if backend == "auto" else [backend]):
        layer = RelationalAttention(IN, OUT, heads=H, edge_dim=D, backend=b).double()
        out = layer(x, EdgeSet(ei, 20, batch=batch, edge_type=types, num_types=4), table)
        assert torch.isnan(out[:5]).any(1).all()
        assert torch.isfinite(out[5:]).all(), b


def test_per_edge_features_with_a_typed_edge_set_are_refused():
    N, ei, types, table, gen = _typed_case()
    E = ei.size(1)
    layer = RelationalAttention(IN, OUT, heads=H, edge_dim=D).double()
    x = torch.randn(N, IN, dtype=torch.float64)
    per_edge = table[types]
    with pytest.raises(ValueError, match=rf"'edge_attr' has {E} rows, one per edge, but the "
                                         r"edge set is typed \(3 types seen\)"):
        layer(x, EdgeSet(ei, N, edge_type=types), per_edge)
    with pytest.raises(ValueError, match=rf"'edge_attr' has {E} rows, one per edge"):
        layer(x, ei, per_edge, edge_type=types)
    with pytest.raises(ValueError, match=rf"'edge_attr' has {E} rows but the edge set "
                                         r"declares 4 edge types"):
        layer(x, EdgeSet(ei, N, edge_type=types, num_types=4), per_edge)
    with pytest.raises(ValueError, match=r"has 5 rows but the edge set declares 4"):
        layer(x, EdgeSet(ei, N, edge_type=types, num_types=4), torch.randn(5, D).double())
    # a table with more rows than the types present (R declared or not) is a table
    want = layer(x, ei, per_edge)
    torch.testing.assert_close(layer(x, EdgeSet(ei, N, edge_type=types), table), want)
    torch.testing.assert_close(layer(x, EdgeSet(ei, N, edge_type=types, num_types=4), table),
                               want)
    # declared: a table of E types is a table
    big = torch.randn(E, D, dtype=torch.float64)
    torch.testing.assert_close(layer(x, EdgeSet(ei, N, edge_type=types, num_types=E), big),
                               layer(x, ei, big[types]))


# -- clear errors ----------------------------------------------------------------------------

@pytest.mark.parametrize("make", ["attention", "transformer"])
def test_node_features_of_the_wrong_width_or_dtype_name_x(make):
    layer = RelationalAttention(16, 16, heads=2) if make == "attention" else \
        TransformerLayer(16, heads=2)
    ei = P.full(3)
    with pytest.raises(ValueError, match=r"'x' has 8 features per node but the layer takes 16"):
        layer(torch.randn(3, 8), ei)
    with pytest.raises(TypeError, match=r"'x' is torch.float64 but the layer's weights are "
                                        r"torch.float32"):
        layer(torch.randn(3, 16, dtype=torch.float64), ei)
    with torch.autocast("cpu", dtype=torch.bfloat16):      # autocast casts by itself
        layer(torch.randn(3, 16, dtype=torch.bfloat16), ei)


def test_bipartite_features_are_checked_per_side():
    layer = RelationalAttention((4, 6), 8, heads=2)
    ei = torch.tensor([[0, 1], [0, 2]])
    with pytest.raises(ValueError, match=r"'x\[0\] \(sources\)' has 6 features per node but "
                                         r"the layer takes 4"):
        layer((torch.randn(2, 6), torch.randn(3, 6)), ei)
    with pytest.raises(ValueError, match=r"'x\[1\] \(targets\)' has 4 features"):
        layer((torch.randn(2, 4), torch.randn(3, 4)), ei)
    assert layer((torch.randn(2, 4), torch.randn(3, 6)), ei).shape == (3, 8)
    lazy = RelationalAttention(-1, 8, heads=2)
    assert lazy(torch.randn(3, 5), P.full(3)).shape == (3, 8)


@pytest.mark.parametrize("num_nodes,error,match", [
    (-1, ValueError, r"'num_nodes' must be in \[0, 2\^62 - 1\], got -1"),
    (2**63, ValueError, r"'num_nodes' must be in \[0, 2\^62 - 1\], got 9223372036854775808"),
    (5.7, TypeError, r"'num_nodes' must be a whole number, got float 5.7"),
    (5.0, TypeError, r"'num_nodes' must be a whole number, got float 5.0"),
    (True, TypeError, r"'num_nodes' must be a whole number, got bool True"),
    (torch.tensor(5.0), TypeError, r"'num_nodes' must be a whole number, got a torch.float32"),
    ((5, -2), ValueError, r"'num_nodes\[1\]' must be in"),
    ((5, 5, 5), ValueError, r"'num_nodes' must be N or a pair"),
])
def test_edge_set_node_counts_are_whole_numbers_in_range(num_nodes, error, match):
    with pytest.raises(error, match=match):
        EdgeSet(P.full(3), num_nodes)


def test_edge_set_accepts_integer_counts_of_any_kind():
    import numpy as np
    for n in (5, np.int64(5), torch.tensor(5)):
        assert EdgeSet(P.full(3), n).num_dst == 5
    # N_s · N_t past int64 (the duplicate check cannot use one key per pair)
    huge = EdgeSet(torch.tensor([[2**61, 0, 2**61], [0, 1, 0]]), (2**62 - 1, 2))
    assert not huge.coalesced
    assert EdgeSet(torch.tensor([[2**61, 0], [0, 1]]), (2**62 - 1, 2)).coalesced


@pytest.mark.parametrize("batch,error,match", [
    (torch.zeros(3), TypeError, r"'batch' must be an integer tensor .* got torch.float32"),
    (torch.tensor([0, -1, 0]), ValueError, r"'batch' has a negative graph index: batch\[1\] = -1"),
    (torch.zeros(4, dtype=torch.long), ValueError, r"'batch' must have shape \[N\] = \[3\]"),
    ([0, 0, 0], TypeError, r"'batch' must be a torch.Tensor"),
])
def test_edge_set_batch_is_checked_by_name(batch, error, match):
    with pytest.raises(error, match=match):
        EdgeSet(P.full(3), 3, batch=batch)
    with pytest.raises(error, match=match):
        RelationalAttention(4, 4)(torch.randn(3, 4), P.full(3), batch=batch)


@pytest.mark.parametrize("ptr", [[0, 1, 2, 3], [0, 0, 1, 100_000], [0, 0, 2, 2]])
def test_a_row_pointer_that_contradicts_the_edges_is_refused(ptr):
    """``EdgeSet.grouped`` took any pointer of the right shape: the layer then
    attended along other edges on two backends (off by 2.2) and the fused
    kernel read past its arrays (a crash)."""
    ei = torch.tensor([[0, 1, 2], [1, 2, 2]])
    with pytest.raises(ValueError, match=r"'ptr' does not match the edges' targets: ptr\[\d\]"):
        EdgeSet.grouped(ei, 3, torch.tensor(ptr))
    good = EdgeSet.grouped(ei, 3, EdgeSet.row_pointer(ei[1], 3))
    layer = RelationalAttention(4, 4, heads=1).double().eval()
    x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(layer(x, good), layer(x, ei), rtol=0, atol=1e-12)


@pytest.mark.parametrize("target, error, match", [
    ([0, 5], IndexError, r"'target\[1\]' = 5 is not a node in \[0, num_dst = 3\)"),
    ([0, 100_000], IndexError, r"'target\[1\]' = 100000"),
    ([-1, 0], IndexError, r"'target\[0\]' = -1"),
    ([2, 1], ValueError, r"non-decreasing .* target\[1\] = 1 follows 2"),
])
def test_row_pointer_checks_its_targets(target, error, match):
    """Out-of-range targets returned a wrong pointer or corrupted memory."""
    with pytest.raises(error, match=match):
        EdgeSet.row_pointer(torch.tensor(target), 3)
    with pytest.raises(TypeError, match="'num_dst' must be a whole number"):
        EdgeSet.row_pointer(torch.tensor([0, 1]), 3.0)
    assert EdgeSet.row_pointer(torch.tensor([0, 2, 2], dtype=torch.int32), 3).tolist() == \
        [0, 1, 1, 3]


def test_the_dense_error_names_the_crossing_edge_as_given():
    ei = torch.tensor([[0, 1, 2], [1, 0, 0]])       # edge 2 joins graph 1 to graph 0
    layer = RelationalAttention(4, 4, heads=1, backend="dense")
    with pytest.raises(ValueError, match=r"edge 2 \(2 -> 0\) joins two graphs"):
        layer(torch.randn(3, 4), ei, batch=torch.tensor([0, 0, 1]))


@pytest.mark.parametrize("backend", ["auto", "dense", "sparse"])
def test_a_strided_batch_lays_out_the_same_graphs(backend):
    """``batch`` is read by ``index2ptr`` for the dense layout: a strided or
    int32 one gives the same graphs."""
    ptr = torch.tensor([0, 4, 9, 11])
    batch = torch.repeat_interleave(torch.arange(3), ptr.diff())
    strided = torch.stack([batch, batch], 1)[:, 1].to(torch.int32)
    ei = P.full(ptr)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(11, IN, dtype=torch.float64, generator=gen)
    layer = RelationalAttention(IN, OUT, heads=H, backend=backend).double()
    edges = EdgeSet(ei, 11, batch=strided)
    assert edges.layout is not None and edges.layout.num_graphs == 3
    torch.testing.assert_close(layer(x, edges), layer(x, ei, batch=batch), atol=0, rtol=0)
    torch.testing.assert_close(layer(x, edges), dense_equations(layer, x, None, ei, None),
                               atol=1e-10, rtol=1e-8)


@settings(max_examples=60, deadline=None)
@given(value=st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                       st.integers(max_value=-1), st.integers(min_value=2**62),
                       st.booleans(), st.text(max_size=3), st.none()))
def test_any_bad_node_count_is_refused_by_name(value):
    with pytest.raises((TypeError, ValueError), match=r"^'num_nodes' must be"):
        EdgeSet(P.full(3), value)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(3, 5000), pair=st.booleans())
def test_any_whole_node_count_covering_the_edges_is_taken_as_given(n, pair):
    edges = EdgeSet(P.full(3), (n, n + 1) if pair else n)
    assert (edges.num_src, edges.num_dst) == ((n, n + 1) if pair else (n, n))


@settings(max_examples=40, deadline=None)
@given(entries=st.lists(st.integers(-5, 5), min_size=3, max_size=3))
def test_a_negative_graph_index_is_named(entries):
    batch = torch.tensor(entries)
    if min(entries) >= 0:
        assert EdgeSet(P.full(3), 3, batch=batch).batch.tolist() == entries
        return
    first = next(i for i, b in enumerate(entries) if b < 0)
    with pytest.raises(ValueError, match=rf"batch\[{first}\] = {entries[first]}$"):
        EdgeSet(P.full(3), 3, batch=batch)
