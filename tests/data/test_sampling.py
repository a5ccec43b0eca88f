"""graphformer's NeighborSampler: PyG's sampling rules, checked edge by edge.

Speed (not a test): ``OMP_NUM_THREADS=1 python -c "from graphformer.data.sampling import
benchmark; benchmark()"`` (``benchmark(["--exponent", "1.0"])`` etc.).
"""
import numpy as np
import pytest
import torch
import torch_geometric.typing
from hypothesis import given, settings
from hypothesis import strategies as st
from torch_geometric.data import Data, HeteroData
from torch_geometric.loader import LinkLoader, NodeLoader
from torch_geometric.sampler import EdgeSamplerInput, NegativeSampling, NodeSamplerInput
from torch_geometric.testing.feature_store import MyFeatureStore
from torch_geometric.testing.graph_store import MyGraphStore

from graphformer.data import NeighborSampler, neighbor_sampler
from graphformer.data.sampling import power_law_graph

HAVE_PYG_SAMPLER = torch_geometric.typing.WITH_PYG_LIB or torch_geometric.typing.WITH_TORCH_SPARSE


def sample(sampler, seeds):
    return sampler.sample_from_nodes(NodeSamplerInput(None, torch.as_tensor(seeds)))


def check(edge_index, num_nodes, seeds, out, fanouts, replace=False):
    """Every rule of PyG's directional, non-disjoint sampling, on values."""
    seeds = torch.as_tensor(seeds)
    node, row, col, edge = out.node, out.row, out.col, out.edge
    deg = torch.bincount(edge_index[1], minlength=num_nodes)
    # seeds first, in input order; other nodes unique and not seeds
    assert torch.equal(node[:seeds.numel()], seeds)
    rest = node[seeds.numel():].tolist()
    assert len(set(rest)) == len(rest) and not set(rest) & set(seeds.tolist())
    # every sampled edge is a real edge with its own id, source row -> target col
    assert torch.equal(edge_index[0, edge], node[row])
    assert torch.equal(edge_index[1, edge], node[col])
    # hop structure
    assert out.num_sampled_nodes[0] == seeds.numel()
    assert len(out.num_sampled_nodes) == len(fanouts) + 1
    assert len(out.num_sampled_edges) == len(fanouts)
    assert sum(out.num_sampled_nodes) == node.numel()
    assert sum(out.num_sampled_edges) == edge.numel() == row.numel() == col.numel()
    n_lo, e_lo = 0, 0
    for h, k in enumerate(fanouts):
        n_hi = n_lo + out.num_sampled_nodes[h]
        e_hi = e_lo + out.num_sampled_edges[h]
        hop_row, hop_col, hop_edge = row[e_lo:e_hi], col[e_lo:e_hi], edge[e_lo:e_hi]
        # targets are the nodes added at the previous hop, each drawing its count
        assert bool(((hop_col >= n_lo) & (hop_col < n_hi)).all())
        for t in range(n_lo, n_hi):
            mine = hop_edge[hop_col == t]
            d = int(deg[node[t]])
            want = d if k < 0 else (k if d and replace else min(d, k))
            assert mine.numel() == want, (h, t, d, k)
            if not replace:
                assert mine.unique().numel() == mine.numel()
        # the nodes of hop h + 1 are the new sources of hop-h edges, in order of appearance
        new, seen = [], set(node[:n_hi].tolist())
        for s in node[hop_row].tolist():
            if s not in seen:
                seen.add(s)
                new.append(s)
        assert node[n_hi:n_hi + out.num_sampled_nodes[h + 1]].tolist() == new
        n_lo, e_lo = n_hi, e_hi


@st.composite
def graphs(draw):
    n = draw(st.integers(1, 25))
    e = draw(st.integers(0, 120))
    pairs = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)),
                          min_size=e, max_size=e))
    edge_index = torch.tensor(pairs, dtype=torch.long).view(-1, 2).t().contiguous()
    seeds = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True))
    fanouts = draw(st.lists(st.integers(-1, 7), min_size=1, max_size=3))
    return edge_index, n, seeds, fanouts


@settings(max_examples=60, deadline=None)
@given(graphs(), st.booleans(), st.integers(0, 2**31))
def test_rules_hold_on_random_graphs(graph, replace, seed):
    edge_index, n, seeds, fanouts = graph
    data = Data(edge_index=edge_index, num_nodes=n)
    out = sample(NeighborSampler(data, fanouts, replace=replace, seed=seed), seeds)
    check(edge_index, n, seeds, out, fanouts, replace)


def star_graph(degrees, extra_nodes=0):
    """Node i (i < len(degrees)) receives degrees[i] edges from distinct nodes."""
    src, dst, nxt = [], [], len(degrees)
    for i, d in enumerate(degrees):
        src += range(nxt, nxt + d)
        dst += [i] * d
        nxt += d
    n = nxt + extra_nodes
    perm = torch.randperm(len(src), generator=torch.Generator().manual_seed(0))
    edge_index = torch.tensor([src, dst])[:, perm]  # unsorted: the sampler sorts
    return Data(edge_index=edge_index, num_nodes=n)


@pytest.mark.parametrize("replace", [False, True])
def test_every_degree_band(replace):
    # deg 0, deg < k, deg = k, k < deg <= 2k (random keys), deg > 2k (distinct draws)
    data = star_graph([0, 3, 6, 7, 12, 13, 500, 5000])
    seeds = list(range(8))
    for seed in range(5):
        out = sample(NeighborSampler(data, [6, 2], replace=replace, seed=seed), seeds)
        check(data.edge_index, data.num_nodes, seeds, out, [6, 2], replace)


def test_minus_one_takes_every_edge_and_zero_none():
    data = star_graph([4, 0, 9])
    out = sample(NeighborSampler(data, [-1]), [0, 1, 2])
    assert out.num_sampled_edges == [13]
    assert sorted(out.edge.tolist()) == list(range(13))
    out = sample(NeighborSampler(data, [0, -1]), [0, 1, 2])
    assert out.num_sampled_edges == [0, 0] and out.num_sampled_nodes == [3, 0, 0]
    assert out.node.tolist() == [0, 1, 2]


def test_two_hops_by_hand():
    # 1, 2, 3 -> 0; 0 -> 1, 0 -> 2, 4 -> 1; 5 -> 4
    edge_index = torch.tensor([[1, 2, 3, 0, 0, 4, 5], [0, 0, 0, 1, 2, 1, 4]])
    data = Data(edge_index=edge_index, num_nodes=6)
    out = sample(NeighborSampler(data, [-1, -1]), [0, 4])
    assert out.node.tolist() == [0, 4, 1, 2, 3, 5]
    assert out.edge.tolist() == [0, 1, 2, 6, 3, 5, 4]     # original ids
    assert out.row.tolist() == [2, 3, 4, 5, 0, 1, 0]
    assert out.col.tolist() == [0, 0, 0, 1, 2, 2, 3]
    assert out.num_sampled_nodes == [2, 4, 0] and out.num_sampled_edges == [4, 3]


def test_duplicate_seeds_are_kept_and_each_samples():
    # PyG keeps duplicate seeds in `node`; each copy samples at hop 1, and a
    # source equal to a seed maps to its first copy
    data = Data(edge_index=torch.tensor([[1, 0], [0, 1]]), num_nodes=2)
    out = sample(NeighborSampler(data, [-1]), [0, 0, 1])
    assert out.node.tolist() == [0, 0, 1]
    assert out.col.tolist() == [0, 1, 2] and out.row.tolist() == [2, 2, 0]
    assert out.num_sampled_nodes == [3, 0]


def test_replace_repeats_and_without_never_does():
    data = star_graph([3])
    out = sample(NeighborSampler(data, [20], replace=True, seed=0), [0])
    assert out.edge.numel() == 20 and set(out.edge.tolist()) == {0, 1, 2}
    out = sample(NeighborSampler(data, [20], seed=0), [0])
    assert sorted(out.edge.tolist()) == [0, 1, 2]


def test_seed_makes_it_reproducible():
    data = power_law_graph(2000, 20000, exponent=0.8)
    seeds = torch.arange(0, 2000, 7)
    a = sample(NeighborSampler(data, [10, 5], seed=3), seeds)
    b = sample(NeighborSampler(data, [10, 5], seed=3), seeds)
    c = sample(NeighborSampler(data, [10, 5], seed=4), seeds)
    for key in ("node", "row", "col", "edge"):
        assert torch.equal(getattr(a, key), getattr(b, key))
    assert not torch.equal(a.edge, c.edge)
    torch.manual_seed(5)
    d = sample(NeighborSampler(data, [10, 5]), seeds)
    torch.manual_seed(5)
    e = sample(NeighborSampler(data, [10, 5]), seeds)
    assert torch.equal(d.edge, e.edge)
    check(data.edge_index, 2000, seeds, a, [10, 5])


def test_a_copy_for_a_worker_starts_its_stream_from_the_seed():
    import pickle
    data = power_law_graph(500, 4000, exponent=0.7)
    used = NeighborSampler(data, [5, 3], seed=2)
    first = sample(used, torch.arange(50)).edge
    copy = pickle.loads(pickle.dumps(used))  # as a spawned DataLoader worker gets it
    assert torch.equal(sample(copy, torch.arange(50)).edge, first)


@pytest.mark.parametrize("k", [5, 30])   # distinct draws (50 > 2k), random keys (50 <= 2k)
def test_neighbours_are_drawn_uniformly(k):
    data = star_graph([50])
    sampler = NeighborSampler(data, [k], seed=0)
    draws = 2000
    seeds = torch.zeros(draws, dtype=torch.long)  # 2000 copies of node 0 sample at once
    out = sample(sampler, seeds)
    counts = torch.bincount(out.edge, minlength=50).double()
    assert out.edge.numel() == draws * k
    expected = draws * k / 50
    # each copy draws k distinct edges: a k-subset of 50, hence the finite-population
    # factor (50 - k) / 49 in each count's variance
    chi2 = float(((counts - expected) ** 2 / (expected * (50 - k) / 49)).sum())
    assert chi2 < 110, chi2   # 49 degrees of freedom: P(chi2 > 110) < 1e-6
    # per copy, k distinct
    per = out.edge.view(draws, k)
    assert bool((per.sort(1).values[:, 1:] != per.sort(1).values[:, :-1]).all())


def test_node_loader_on_data():
    data = power_law_graph(500, 4000, exponent=0.7)
    data.x = torch.randn(500, 3)
    data.y = torch.arange(500) % 4
    data.edge_attr = torch.arange(4000).float().unsqueeze(1)
    sampler = NeighborSampler(data, [5, 3], seed=0)
    inputs = torch.arange(0, 500, 3)
    loader = NodeLoader(data, node_sampler=sampler, input_nodes=inputs, batch_size=64)
    seen = []
    for batch in loader:
        n_id, e_id = batch.n_id, batch.e_id
        assert torch.equal(batch.x, data.x[n_id]) and torch.equal(batch.y, data.y[n_id])
        assert torch.equal(batch.edge_attr[:, 0], e_id.float())
        assert torch.equal(data.edge_index[:, e_id], n_id[batch.edge_index])
        assert batch.batch_size == batch.input_id.numel()
        assert torch.equal(n_id[:batch.batch_size], inputs[batch.input_id])
        assert sum(batch.num_sampled_nodes) == batch.num_nodes
        assert sum(batch.num_sampled_edges) == batch.edge_index.size(1)
        seen += batch.input_id.tolist()
    assert seen == list(range(inputs.numel()))


def test_link_loader_binary():
    data = power_law_graph(300, 2000, exponent=0.7)
    data.x = torch.randn(300, 2)
    sampler = NeighborSampler(data, [4, 2], seed=0)
    label_index = data.edge_index[:, :200]
    loader = LinkLoader(data, link_sampler=sampler, edge_label_index=label_index,
                        neg_sampling=NegativeSampling("binary", amount=2), batch_size=50)
    for batch in loader:
        pos = batch.input_id.numel()
        n_id = batch.n_id
        assert batch.edge_label_index.size(1) == 3 * pos
        assert torch.equal(n_id[batch.edge_label_index[:, :pos]], label_index[:, batch.input_id])
        assert batch.edge_label.tolist() == [1.0] * pos + [0.0] * (2 * pos)
        # the seeds are the endpoints (positives and negatives), sorted unique as PyG's
        seeds = n_id[:batch.num_sampled_nodes[0]]
        assert torch.equal(seeds, n_id[batch.edge_label_index].unique())
        assert torch.equal(batch.x, data.x[n_id])
        assert torch.equal(data.edge_index[:, batch.e_id], n_id[batch.edge_index])


def test_link_loader_triplet_and_seeded_negatives():
    data = power_law_graph(300, 2000, exponent=0.7)
    label_index = data.edge_index[:, :100]

    def batches(seed):
        sampler = NeighborSampler(data, [3], seed=seed)
        return list(LinkLoader(data, link_sampler=sampler, edge_label_index=label_index,
                               neg_sampling=NegativeSampling("triplet", amount=3),
                               batch_size=25))

    for batch in batches(0):
        pos, n_id = batch.input_id.numel(), batch.n_id
        assert torch.equal(n_id[batch.src_index], label_index[0, batch.input_id])
        assert torch.equal(n_id[batch.dst_pos_index], label_index[1, batch.input_id])
        assert batch.dst_neg_index.shape == (pos, 3)
        assert int(batch.dst_neg_index.max()) < batch.num_sampled_nodes[0]
    a, b = batches(1), batches(1)
    assert all(torch.equal(x.n_id[x.dst_neg_index], y.n_id[y.dst_neg_index])
               for x, y in zip(a, b))


def stores(data, layout):
    fs, gs = MyFeatureStore(), MyGraphStore()
    fs.put_tensor(data.x, group_name=None, attr_name="x", index=None)
    fs.put_tensor(data.y, group_name=None, attr_name="y", index=None)
    n = data.num_nodes
    if layout == "coo":
        gs.put_edge_index(data.edge_index, edge_type=None, layout="coo", size=(n, n))
    else:  # CSC, int32 and memory-mapped as an on-disk graph would be
        col, perm = torch.sort(data.edge_index[1], stable=True)
        colptr = torch.zeros(n + 1, dtype=torch.long)
        colptr[1:] = torch.bincount(col, minlength=n).cumsum(0)
        row = data.edge_index[0, perm]
        data = Data(x=data.x, y=data.y, edge_index=torch.stack([row, col]), num_nodes=n)
        gs.put_edge_index((layout(row), layout(colptr)), edge_type=None, layout="csc",
                          size=(n, n))
    return (fs, gs), data


@pytest.mark.parametrize("layout", ["coo", "memmap"])
def test_node_loader_on_feature_and_graph_stores(layout, tmp_path):
    data = power_law_graph(200, 1500, exponent=0.7)
    data.x, data.y = torch.randn(200, 4), torch.arange(200)
    maps = []
    if layout == "memmap":
        def layout(t, counter=iter(range(9))):
            path = tmp_path / f"a{next(counter)}.bin"
            mm = np.memmap(path, dtype=np.int32, mode="w+", shape=(t.numel(),))
            mm[:] = t.numpy()
            maps.append(mm)
            return torch.from_numpy(mm)
    store, data = stores(data, layout)
    sampler = NeighborSampler(store, [4, 2], seed=0)
    if maps:  # the store's arrays are used in place, not copied
        assert sampler.row.data_ptr() == torch.from_numpy(maps[0]).data_ptr()
    for batch in NodeLoader(store, node_sampler=sampler, input_nodes=torch.arange(0, 200, 9),
                            batch_size=8):
        n_id = batch.n_id
        assert torch.equal(batch.x, data.x[n_id]) and torch.equal(batch.y, n_id)
        assert torch.equal(data.edge_index[:, batch.e_id], n_id[batch.edge_index])
        out = sample(sampler, n_id[:batch.batch_size])
        check(data.edge_index, 200, n_id[:batch.batch_size], out, [4, 2])


def test_on_disk_graph_reports_the_files_edge_ids(tmp_path):
    from graphformer.data import convert_edge_list, load_graph, read_edge_list
    data = power_law_graph(60, 400, exponent=0.7)
    path = tmp_path / "edges.txt"
    path.write_text("".join(f"{s} {t}\n" for s, t in data.edge_index.t().tolist()))
    expected = read_edge_list(path)
    convert_edge_list(path, tmp_path / "g", chunk_rows=50)
    graph = load_graph(tmp_path / "g")
    sampler = NeighborSampler(graph.data, [4, 3], seed=0)
    assert sampler.row.data_ptr() == graph.graph_store.csc()[0].data_ptr()  # in place
    for batch in NodeLoader(graph.data, node_sampler=sampler,
                            input_nodes=torch.arange(expected.num_nodes), batch_size=16):
        n_id = batch.n_id
        assert torch.equal(expected.edge_index[:, batch.e_id], n_id[batch.edge_index])
        out = sample(sampler, n_id[:batch.batch_size])
        check(expected.edge_index, expected.num_nodes, n_id[:batch.batch_size], out, [4, 3])


def test_store_without_a_size_counts_sources_past_the_last_target():
    gs = MyGraphStore()
    gs.put_edge_index(torch.tensor([[3, 0], [0, 1]]), edge_type=None, layout="coo", size=None)
    sampler = NeighborSampler((MyFeatureStore(), gs), [-1, -1])
    assert sampler.num_nodes == 4
    out = sample(sampler, [1, 3])
    assert out.node.tolist() == [1, 3, 0] and out.edge.tolist() == [1, 0]


def test_refusals_name_the_problem():
    data = Data(edge_index=torch.tensor([[0], [1]]), num_nodes=2)
    hetero = HeteroData()
    hetero["a", "to", "a"].edge_index = torch.tensor([[0], [1]])
    with pytest.raises(TypeError, match="homogeneous graphs only; got a HeteroData"):
        NeighborSampler(hetero, [2])
    gs = MyGraphStore()
    gs.put_edge_index(torch.tensor([[0], [1]]), edge_type=("a", "to", "a"), layout="coo",
                      size=(2, 2))
    with pytest.raises(TypeError, match="edge type"):
        NeighborSampler((MyFeatureStore(), gs), [2])
    with pytest.raises(TypeError, match="dict per edge type"):
        NeighborSampler(data, {("a", "to", "a"): [2]})
    with pytest.raises(ValueError, match=r"'num_neighbors\[1\]' must be >= 0, or -1"):
        NeighborSampler(data, [2, -3])
    with pytest.raises(TypeError, match=r"'num_neighbors\[0\]' must be an int"):
        NeighborSampler(data, [2.5])
    with pytest.raises(ValueError, match="disjoint=False"):
        NeighborSampler(data, [2], disjoint=True)
    with pytest.raises(ValueError, match="'seed' must be >= 0"):
        NeighborSampler(data, [2], seed=-1)
    with pytest.raises(IndexError, match=r"seed node 5 \(position 1\) is out of range"):
        sample(NeighborSampler(data, [2]), [0, 5])
    with pytest.raises(IndexError, match="data.edge_index"):
        NeighborSampler(Data(edge_index=torch.tensor([[0], [3]]), num_nodes=2), [2])
    with pytest.raises(ValueError, match="not sorted by target"):
        NeighborSampler(Data(edge_index=torch.tensor([[0, 0], [1, 0]]), num_nodes=2), [2],
                        is_sorted=True)
    with pytest.raises(ValueError, match="temporally"):
        NeighborSampler(data, [2]).sample_from_edges(
            EdgeSamplerInput(None, torch.tensor([0]), torch.tensor([1]),
                             time=torch.tensor([3])))
    with pytest.raises(ValueError, match="'backend' must be one of"):
        neighbor_sampler(data, [2], backend="fast")


@pytest.mark.skipif(HAVE_PYG_SAMPLER, reason="PyG's sampler is installed here")
def test_factory_without_pyg_lib_gives_ours():
    data = Data(edge_index=torch.tensor([[0], [1]]), num_nodes=2)
    assert isinstance(neighbor_sampler(data, [2], seed=0), NeighborSampler)
    with pytest.raises(ImportError, match="pyg-lib or torch-sparse"):
        neighbor_sampler(data, [2], backend="pyg")


def test_factory_forces_ours():
    data = Data(edge_index=torch.tensor([[0], [1]]), num_nodes=2)
    assert isinstance(neighbor_sampler(data, [2], backend="graphformer"), NeighborSampler)


@pytest.mark.skipif(not HAVE_PYG_SAMPLER,
                    reason="PyG's NeighborSampler needs pyg-lib or torch-sparse, neither "
                           "installed (no wheels on this package index)")
def test_agrees_with_pyg_on_structure():
    from torch_geometric.sampler import NeighborSampler as PyGSampler
    data = power_law_graph(400, 3000, exponent=0.7)
    seeds = torch.arange(0, 400, 11)
    ours = sample(NeighborSampler(data, [-1, -1]), seeds)
    theirs = sample(PyGSampler(data, [-1, -1]), seeds)
    perm = PyGSampler(data, [-1, -1]).edge_permutation
    their_edge = perm[theirs.edge] if perm is not None else theirs.edge
    assert torch.equal(ours.node[:seeds.numel()], theirs.node[:seeds.numel()])
    assert set(ours.node.tolist()) == set(theirs.node.tolist())
    assert sorted(ours.edge.tolist()) == sorted(their_edge.tolist())
    assert ours.num_sampled_nodes == list(theirs.num_sampled_nodes)
    assert ours.num_sampled_edges == list(theirs.num_sampled_edges)
    ours = sample(NeighborSampler(data, [5, 3], seed=0), seeds)
    theirs = sample(PyGSampler(data, [5, 3]), seeds)
    assert ours.num_sampled_edges[0] == theirs.num_sampled_edges[0]
