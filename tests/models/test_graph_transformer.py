import pytest
import torch
from torch_geometric.data import Batch

from graphformer import patterns as P
from graphformer.data import from_smiles
from graphformer.data.encodings import encodings
from graphformer.models import GraphTransformer, GraphTransformerConfig, masked_loss

SMILES = ["CCO", "c1ccccc1O", "C", "CC(=O)Nc1ccc(O)cc1", "[Na+].[Cl-]"]


def batch_of(smiles, rwse=16):
    t = encodings(rwse)
    return Batch.from_data_list([t(from_smiles(s)) if t else from_smiles(s) for s in smiles])


@pytest.mark.parametrize("pooling", ["mean", "sum", "virtual"])
@pytest.mark.parametrize("pats", [("bonds",), ("bonds", "full"), ("bonds", "k_hop")])
def test_graphs_are_independent_and_order_does_not_matter(pooling, pats):
    torch.manual_seed(0)
    cfg = GraphTransformerConfig(num_tasks=2, hidden=16, layers=2, heads=2, dropout=0.0,
                                 patterns=pats, pooling=pooling, edge_update=True)
    model = GraphTransformer(cfg).eval()
    out = model(batch_of(SMILES))
    assert out.shape == (len(SMILES), 2)
    alone = torch.cat([model(batch_of([s])) for s in SMILES])
    torch.testing.assert_close(out, alone, atol=1e-5, rtol=1e-5)
    reordered = model(batch_of(SMILES[::-1]))
    torch.testing.assert_close(reordered, out.flip(0), atol=1e-5, rtol=1e-5)


def test_attention_edges_and_membership():
    cfg = GraphTransformerConfig(hidden=8, layers=1, heads=2, patterns=("bonds", "full"))
    model = GraphTransformer(cfg).eval()
    batch = batch_of(["CCO", "C"])
    y, (edge_index, member, weights) = model(batch, return_attention_weights=True)
    assert torch.equal(edge_index, P.full(batch.ptr))
    bonds = {tuple(e) for e in batch.edge_index.t().tolist()}
    for (src, dst), m in zip(edge_index.t().tolist(), member.tolist()):
        assert m[0] == ((src, dst) in bonds) and m[1]
    assert len(weights) == 1 and weights[0].shape == (edge_index.size(1), 2)
    sums = torch.zeros(batch.num_nodes, 2).index_add(0, edge_index[1], weights[0])
    torch.testing.assert_close(sums, torch.ones_like(sums))


def test_bond_features_reach_the_output():
    cfg = GraphTransformerConfig(hidden=16, layers=2, heads=2, dropout=0.0)
    model = GraphTransformer(cfg).eval()
    a, b = batch_of(["CC=O"]), batch_of(["CC=O"])
    b.edge_attr = b.edge_attr.clone()
    b.edge_attr[:, 0] = 0  # every bond single
    assert not torch.allclose(model(a), model(b))


def test_zinc_features():
    cfg = GraphTransformerConfig(hidden=8, layers=1, heads=2, features="zinc", rwse_steps=0)
    model = GraphTransformer(cfg)
    data = Batch.from_data_list([type(from_smiles("C"))(
        x=torch.tensor([[0], [3], [1]]), edge_index=torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]]),
        edge_attr=torch.tensor([1, 1, 2, 2]))])
    assert model(data).shape == (1, 1)


def test_masked_loss_ignores_missing_labels():
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    target = torch.tensor([[1.5, float("nan")], [float("nan"), 2.0]])
    loss = masked_loss(pred, target, "regression")
    assert loss.item() == pytest.approx((0.25 + 4.0) / 2)
    loss.backward()
    assert pred.grad[0, 1] == 0 and pred.grad[1, 0] == 0
    bce = masked_loss(torch.zeros(2, 2), torch.tensor([[1.0, float("nan")], [0.0, 1.0]]),
                      "classification")
    assert bce.item() == pytest.approx(torch.log(torch.tensor(2.0)).item())
    assert masked_loss(pred, torch.full((2, 2), float("nan")), "regression").item() == 0


@pytest.mark.parametrize("kwargs, match", [
    ({"hidden": 10, "heads": 4}, "divisible"),
    ({"patterns": ("bonds", "ring")}, "'patterns' must be distinct names"),
    ({"patterns": ()}, "'patterns'"),
    ({"pooling": "max"}, "'pooling'"),
    ({"task": "ranking"}, "'task'"),
    ({"dropout": 1.0}, "'dropout'"),
    ({"features": "qm9"}, "'features'"),
    ({"local": "gcn"}, "'local' must be one of"),
])
def test_config_is_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GraphTransformerConfig(**kwargs)


def test_repr():
    assert repr(GraphTransformer(GraphTransformerConfig(hidden=8, layers=1, heads=2))) == (
        "GraphTransformer(hidden=8, layers=1, heads=2, patterns=['bonds', 'full'], "
        "pooling='mean', edge_update=False, local='none', tasks=1 regression)")


@pytest.mark.parametrize("norm_first", [True, False])
def test_local_gine_step_equals_its_equation(norm_first):
    """x + GINE(LN(x)) (pre-norm) or LN(x + GINE(x)), GINE(h)_i =
    MLP((1 + eps) h_i + sum_{j -> i} ReLU(h_j + b_ji)), computed by hand."""
    torch.manual_seed(0)
    cfg = GraphTransformerConfig(hidden=8, layers=2, heads=2, dropout=0.0, rwse_steps=0,
                                 local="gine", norm_first=norm_first)
    model = GraphTransformer(cfg).double().eval()
    step = model.local[0]
    torch.nn.init.uniform_(step.conv.eps, 0.2, 0.2)
    x = torch.randn(5, 8, dtype=torch.float64)
    bonds = torch.tensor([[0, 1, 1, 2, 3, 4], [1, 0, 2, 1, 4, 3]])
    b = torch.randn(6, 8, dtype=torch.float64)
    h = step.norm(x) if norm_first else x
    agg = torch.zeros_like(h)
    for e in range(bonds.size(1)):
        agg[bonds[1, e]] += torch.relu(h[bonds[0, e]] + b[e])
    mlp = step.conv.nn
    y = mlp((1 + 0.2) * h + agg)
    want = x + y if norm_first else step.norm(x + y)
    torch.testing.assert_close(step(x, bonds, b), want)



def test_edge_type_codes_are_compacted_like_torch_unique():
    """The edge types' presence-table compaction equals torch.unique
    (sorted values and inverse), and falls back to it for large codes."""
    from graphformer.models.graph_transformer import _unique_small

    g = torch.Generator().manual_seed(0)
    for bound, n in [(244, 5000), (244, 0), (7, 3), (10**9, 50)]:
        code = torch.randint(0, bound, (n,), generator=g)
        values, inverse = _unique_small(code, bound)
        ref_values, ref_inverse = torch.unique(code, return_inverse=True)
        assert torch.equal(values, ref_values) and torch.equal(inverse, ref_inverse)
