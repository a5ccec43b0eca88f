import pytest
import torch
import torch.nn.functional as F
from torch_geometric.datasets import KarateClub

from graphformer import patterns as P
from graphformer.models.node_transformer import NodeTransformer, NodeTransformerConfig

# A directed graph with a duplicate edge, a self loop and an isolated node (6).
EDGES = torch.tensor([[0, 1, 2, 3, 3, 4, 5, 0, 2],
                      [1, 2, 3, 4, 0, 5, 5, 1, 2]])
N = 7


@pytest.fixture(scope="module")
def karate():
    return KarateClub()[0]


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(patterns=("graph", "bonds")), ValueError, "unknown pattern 'bonds'"),
    (dict(patterns=("graph", "graph")), ValueError, "repeated"),
    (dict(patterns=()), ValueError, "at least one"),
    (dict(patterns="graph"), TypeError, "the string 'graph'"),
    (dict(hidden=30, heads=4), ValueError, r"'hidden' \(30\) must be divisible by 'heads' \(4\)"),
    (dict(dropout=1.0), ValueError, "'dropout' must be in"),
    (dict(k=0), ValueError, "'k' must be >= 1, got 0"),
    (dict(random_keys=0), ValueError, "'random_keys' must be >= 1"),
    (dict(layers=-1), ValueError, "'layers' must be >= 0"),
    (dict(in_channels=0), ValueError, "'in_channels' must be >= 1"),
    (dict(num_classes=True), TypeError, "'num_classes' must be an int"),
    (dict(hidden=8.0), TypeError, "'hidden' must be an int"),
    (dict(undirected="yes"), TypeError, "'undirected' must be a bool"),
])
def test_config_checks(kwargs, error, match):
    args = dict(in_channels=3, num_classes=2)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        NodeTransformerConfig(**args)


def test_config_set_names_and_dict():
    c = NodeTransformerConfig(3, 2, patterns=["random", "graph"], self_loops=True)
    assert c.patterns == ("random", "graph")
    assert c.set_names == ("random", "graph", "self")
    assert NodeTransformerConfig(3, 2, self_loops=False).set_names == ("graph",)
    d = c.to_dict()
    assert d["patterns"] == ["random", "graph"] and d["in_channels"] == 3
    assert NodeTransformerConfig(**{**d, "patterns": tuple(d["patterns"])}) == c


def _expected(edge_index, n, cfg, seed):
    """The union as built directly with graphformer.patterns."""
    sym = torch.cat([edge_index, edge_index.flip(0)], dim=1) if cfg.undirected else edge_index
    base = P.graph(sym, num_nodes=n)
    sets = {
        "graph": base,
        "k_hop": P.k_hop(base, cfg.k, num_nodes=n),
        "random": P.random(torch.tensor([0, n]), cfg.random_keys,
                           generator=torch.Generator().manual_seed(seed)),
        "self": torch.arange(n).expand(2, -1),
    }
    return P.union(*(sets[s] for s in cfg.set_names), num_nodes=n)


@pytest.mark.parametrize("undirected", [True, False])
def test_edge_set_is_the_union_of_the_patterns(undirected):
    cfg = NodeTransformerConfig(4, 3, hidden=8, heads=2, patterns=("graph", "k_hop", "random"),
                                k=2, random_keys=3, undirected=undirected, seed=5)
    model = NodeTransformer(cfg)
    edge_index, member = model.edge_set(EDGES, N)
    exp_index, exp_member = _expected(EDGES, N, cfg, seed=5)
    assert torch.equal(edge_index, exp_index) and torch.equal(member, exp_member)
    assert member.shape == (edge_index.size(1), 4) and member.dtype == torch.bool
    assert bool(member.any(dim=1).all())

    # Independent checks of each column, edge by edge.
    listed = {tuple(e) for e in EDGES.t().tolist()}
    graph = listed | ({(j, i) for i, j in listed} if undirected else set())
    adj = {v: {i for j, i in graph if j == v} for v in range(N)}
    two_hop = {(j, i) for j in range(N) for m in adj[j] | {j} for i in adj[m]} - {
        (v, v) for v in range(N)}
    rows = {tuple(e): m for e, m in zip(edge_index.t().tolist(), member.tolist())}
    for (j, i), (g, kh, rnd, self) in rows.items():
        assert g == ((j, i) in graph)
        assert kh == ((j, i) in two_hop)
        assert self == (i == j)
    assert {e for e, m in rows.items() if m[0]} == graph
    assert {e for e, m in rows.items() if m[1]} == two_hop
    # 3 random keys per query, every query; isolated node 6 gets them too.
    per_query = torch.zeros(N, dtype=torch.long).index_add_(
        0, edge_index[1], member[:, 2].long())
    assert per_query.tolist() == [3] * N
    # Node 6 (isolated) has no graph or k-hop edge, only its self loop and random keys.
    assert not any(m[0] or m[1] for (j, i), m in rows.items() if 6 in (i, j))
    assert rows[(6, 6)][3]
    if undirected:
        assert (1, 0) in rows and rows[(1, 0)][0]
    else:
        assert (1, 0) not in rows or not rows[(1, 0)][0]


def test_random_set_is_seeded():
    cfg = NodeTransformerConfig(4, 3, hidden=8, heads=2, patterns=("random",), random_keys=2)
    model = NodeTransformer(cfg)
    a = model.edge_set(EDGES, N)
    b = model.edge_set(EDGES, N)
    assert torch.equal(a[0], b[0])  # the default generator is seeded with config.seed
    c = model.edge_set(EDGES, N, generator=torch.Generator().manual_seed(123))
    d = model.edge_set(EDGES, N, generator=torch.Generator().manual_seed(123))
    assert torch.equal(c[0], d[0]) and not torch.equal(a[0], c[0])


def test_edge_set_rejects_bad_input():
    model = NodeTransformer(NodeTransformerConfig(4, 3, hidden=8, heads=2))
    with pytest.raises(IndexError, match=r"edge_index\[1, 0\] = 9"):
        model.edge_set(torch.tensor([[0], [9]]), 5)
    with pytest.raises(ValueError, match="'num_nodes' must be an int >= 0, got -1"):
        model.edge_set(EDGES, -1)
    with pytest.raises(TypeError, match="integer dtype"):
        model.edge_set(EDGES.float(), N)


def test_forward_rejects_bad_input():
    model = NodeTransformer(NodeTransformerConfig(4, 3, hidden=8, heads=2, patterns=("graph", "k_hop")))
    edge_index, member = model.edge_set(EDGES, N)
    x = torch.randn(N, 4)
    with pytest.raises(ValueError, match=r"'x' must have shape \[N, in_channels=4\], got \[7, 5\]"):
        model(torch.randn(N, 5), edge_index, member)
    with pytest.raises(ValueError, match=r"'membership' must have shape \[E, 3\]"):
        model(x, edge_index, member[:, :2])
    with pytest.raises(ValueError, match="'membership' has 3 rows but 'edge_index' has"):
        model(x, edge_index, member[:3])
    with pytest.raises(IndexError, match="out of range"):
        model(x[:3], edge_index, member)


def test_permutation_equivariance():
    torch.manual_seed(0)
    cfg = NodeTransformerConfig(5, 3, hidden=16, heads=4, layers=2, dropout=0.0,
                                patterns=("graph", "k_hop"), k=2)
    model = NodeTransformer(cfg).eval()
    x = torch.randn(N, 5)
    out = model(x, *model.edge_set(EDGES, N))
    assert out.shape == (N, 3)

    perm = torch.tensor([3, 6, 0, 5, 1, 4, 2])  # new node a is old node perm[a]
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(N)
    edge_order = torch.randperm(EDGES.size(1))
    permuted_edges = inverse[EDGES][:, edge_order]
    out_perm = model(x[perm], *model.edge_set(permuted_edges, N))
    torch.testing.assert_close(out_perm, out[perm], atol=1e-5, rtol=1e-5)
    # and it is not trivially constant: nodes get different outputs
    assert (out - out.mean(dim=0)).abs().max() > 1e-3


def test_membership_reaches_the_output():
    torch.manual_seed(0)
    cfg = NodeTransformerConfig(5, 3, hidden=16, heads=4, dropout=0.0, patterns=("graph", "k_hop"))
    model = NodeTransformer(cfg).eval()
    x = torch.randn(N, 5)
    edge_index, member = model.edge_set(EDGES, N)
    flipped = member.clone()
    flipped[:, 0] = ~flipped[:, 0]
    assert not torch.allclose(model(x, edge_index, member), model(x, edge_index, flipped))


def test_reset_parameters_and_repr():
    cfg = NodeTransformerConfig(5, 3, hidden=16, heads=4, patterns=("graph", "random"),
                                random_keys=2, seed=3)
    model = NodeTransformer(cfg)
    torch.manual_seed(1)
    model.reset_parameters()
    first = [p.detach().clone() for p in model.parameters()]
    torch.manual_seed(1)
    model.reset_parameters()
    assert all(torch.equal(a, b) for a, b in zip(first, model.parameters()))
    torch.manual_seed(2)
    model.reset_parameters()
    assert not torch.equal(first[0], next(model.parameters()))
    assert repr(model) == ("NodeTransformer(5 -> 3, hidden=16, layers=2, heads=4, dropout=0.1, "
                           "sets=['graph', 'random', 'self'], random_keys=2, seed=3, "
                           "undirected=True)")
    assert len(model.blocks) == 2 and model.blocks[0].edge_dim == 16
    assert model.edge_encoder.in_features == 3


def test_trains_on_karate(karate, one_thread):
    """Zachary's karate club (34 nodes, 4 communities, identity features):
    half of each community for training, the other half for testing."""
    torch.manual_seed(0)
    y = karate.y
    generator = torch.Generator().manual_seed(0)
    train = torch.zeros(34, dtype=torch.bool)
    for c in range(4):
        nodes = (y == c).nonzero().view(-1)
        nodes = nodes[torch.randperm(nodes.numel(), generator=generator)]
        train[nodes[: (nodes.numel() + 1) // 2]] = True
    test = ~train
    assert int(train.sum()) == 18 and int(test.sum()) == 16

    cfg = NodeTransformerConfig(34, 4, hidden=32, heads=4, layers=2, dropout=0.3)
    model = NodeTransformer(cfg)
    edge_index, member = model.edge_set(karate.edge_index, 34)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.005, weight_decay=5e-4)
    for _ in range(80):
        model.train()
        optimizer.zero_grad()
        loss = F.cross_entropy(model(karate.x, edge_index, member)[train], y[train])
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        pred = model(karate.x, edge_index, member).argmax(dim=-1)
    train_acc = float((pred[train] == y[train]).float().mean())
    test_acc = float((pred[test] == y[test]).float().mean())
    majority = int(torch.bincount(y[train]).argmax())
    baseline = float((y[test] == majority).float().mean())
    assert baseline == pytest.approx(6 / 16)
    assert train_acc >= 0.95, train_acc
    assert test_acc >= max(0.75, baseline + 0.3), (test_acc, baseline)


def _per_edge_reference(model, x, edge_index, membership):
    """The model's equations with an edge feature per edge (the membership
    vector's projection), every node updated by every block."""
    h = model.lin_in(x)
    if model.virtual is not None:
        h = torch.cat([h, model.virtual.unsqueeze(0)])
    e = model.edge_encoder(membership.to(h.dtype))
    for block in model.blocks:
        h = block(h, edge_index, e).x
    return model.lin_out(h[:x.size(0)])


@pytest.mark.parametrize("patterns,undirected", [(("graph",), True), (("graph",), False),
                                                 (("graph", "k_hop", "random"), True),
                                                 (("graph", "global"), False)])
@pytest.mark.parametrize("layers", [1, 2, 3])
def test_typed_edges_and_trimming_to_the_targets_are_exact(patterns, undirected, layers):
    """Edges typed by their membership give the per-edge model; updating
    only what later blocks read gives the targets' logits of the whole pass."""
    torch.manual_seed(layers)
    cfg = NodeTransformerConfig(in_channels=5, num_classes=3, hidden=8, layers=layers,
                                heads=2, dropout=0.0, patterns=patterns, undirected=undirected)
    model = NodeTransformer(cfg).double().eval()
    N = 60
    ei = torch.stack([torch.randint(0, N, (150,)), torch.randint(0, N, (150,))])
    edge_index, membership = model.edge_set(ei, N)
    x = torch.randn(N, 5, dtype=torch.float64)
    full = model(x, edge_index, membership)
    torch.testing.assert_close(full, _per_edge_reference(model, x, edge_index, membership))
    for targets in (0, 1, 7, N):
        torch.testing.assert_close(model(x, edge_index, membership, num_targets=targets),
                                   full[:targets])
    with pytest.raises(ValueError, match=r"'num_targets' must be an int in \[0, N = 60\]"):
        model(x, edge_index, membership, num_targets=61)


def test_the_global_pattern_joins_every_node_through_a_virtual_one():
    """Two components: without "global" no output of one depends on the
    other's features; with it, every one does, through node N (the virtual
    node, its own edges typed "global"); trimming to the targets stays exact."""
    torch.manual_seed(0)
    N = 8
    ei = torch.tensor([[0, 1, 2, 4, 5, 6], [1, 2, 3, 5, 6, 7]])   # 0-3 and 4-7
    outputs = {}
    for pats in (("graph",), ("graph", "global")):
        cfg = NodeTransformerConfig(in_channels=3, num_classes=2, hidden=8, layers=2, heads=2,
                                    dropout=0.0, patterns=pats)
        model = NodeTransformer(cfg).double().eval()
        edge_index, member = model.edge_set(ei, N)
        x = torch.randn(N, 3, dtype=torch.float64)
        moved = x.clone()
        moved[4:] += 1.0
        out, out_moved = model(x, edge_index, member), model(moved, edge_index, member)
        assert out.shape == (N, 2)
        outputs[pats] = (out[:4] - out_moved[:4]).abs().max()
        if "global" in pats:
            assert int(edge_index.max()) == N and model.extra_nodes == 1
            glob = member[:, cfg.set_names.index("global")]
            assert sorted(edge_index[:, glob].t().tolist()) == sorted(
                [[i, N] for i in range(N)] + [[N, i] for i in range(N)])
            torch.testing.assert_close(model(x, edge_index, member, num_targets=3), out[:3])
    assert outputs[("graph",)] == 0
    assert outputs[("graph", "global")] > 1e-6
