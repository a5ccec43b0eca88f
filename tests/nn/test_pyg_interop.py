"""RelationalAttention inside ordinary PyG models."""
import pytest
import torch
from torch_geometric.data import HeteroData
from torch_geometric.nn import GPSConv, Sequential, to_hetero

from graphformer import patterns as P
from graphformer.nn import RelationalAttention, TransformerLayer
from tests.nn.test_attention import batch_of
from tests.conftest import force_softmax


def test_inside_pyg_sequential(backend):
    model = Sequential("x, edge_index", [
        (RelationalAttention(8, 16, heads=2), "x, edge_index -> x"),
        torch.nn.ReLU(),
        (RelationalAttention(16, 4), "x, edge_index -> x"),
    ])
    x, ei = torch.randn(6, 8), P.causal(torch.tensor([0, 4, 6]))
    expected = model[2](torch.relu(model[0](x, ei)), ei)
    torch.testing.assert_close(model(x, ei), expected)


def test_as_the_local_conv_of_gps(backend):
    # GPSConv (norm=None, dropout 0) computes
    #   s = (conv(x) + x) + (MHA(x) + x);  out = s + mlp(s).
    # With our layer as `conv`, and MHA re-expressed as our layer on the full
    # edge set, the whole block is reproduced from graphformer parts.
    ptr, batch = batch_of([5, 3, 6])
    bonds = P.window(ptr, 1, causal=False)
    conv = RelationalAttention(16, 16, heads=2, edge_dim=4)
    gps = GPSConv(16, conv, heads=4, norm=None, dropout=0.0).eval()
    x = torch.randn(int(ptr[-1]), 16)
    e = torch.randn(bonds.size(1), 4)
    out = gps(x, bonds, batch=batch, edge_attr=e)
    global_attn = RelationalAttention.from_torch(gps.attn)
    s = (conv(x, bonds, e) + x) + (global_attn(x, P.full(ptr)) + x)
    torch.testing.assert_close(out, s + gps.mlp(s), atol=1e-5, rtol=1e-5)


class Net(torch.nn.Module):
    def __init__(self, backend):
        super().__init__()
        self.conv1 = RelationalAttention(-1, 16, heads=2)
        self.conv2 = RelationalAttention(-1, 8, heads=2)

    def forward(self, x, edge_index):
        return self.conv2(self.conv1(x, edge_index).relu(), edge_index)


def test_through_to_hetero(backend):
    data = HeteroData()
    data["paper"].x = torch.randn(6, 5)
    data["author"].x = torch.randn(4, 3)
    data["author", "writes", "paper"].edge_index = torch.tensor([[0, 1, 2, 3, 3], [0, 0, 2, 4, 5]])
    data["paper", "rev_writes", "author"].edge_index = torch.tensor([[0, 0, 2, 4, 5],
                                                                     [0, 1, 2, 3, 3]])
    data["paper", "cites", "paper"].edge_index = P.window(6, 1)
    model = to_hetero(Net(backend), data.metadata(), aggr="sum")
    out = model(data.x_dict, data.edge_index_dict)
    assert out["paper"].shape == (6, 8) and out["author"].shape == (4, 8)

    # By hand: every edge type has its own bipartite copy; per target type the
    # results are summed.
    def layer(name, key):
        return getattr(model, name)["__".join(key)]

    def step(name, xs, act):
        res = {}
        for key, ei in data.edge_index_dict.items():
            src, _, dst = key
            h = layer(name, key)((xs[src], xs[dst]), ei)
            res[dst] = res.get(dst, 0) + h
        return {k: v.relu() if act else v for k, v in res.items()}

    expected = step("conv2", step("conv1", data.x_dict, True), False)
    for node_type in ("paper", "author"):
        torch.testing.assert_close(out[node_type], expected[node_type])


@pytest.mark.parametrize("softmax", ["native", "auto"])
def test_torch_compile_has_no_graph_breaks(softmax, monkeypatch):
    # "auto" picks torch-scatter in eager mode when it is installed, and the
    # native backend under torch.compile.
    ptr = torch.tensor([0, 5, 9])
    ei, member = P.union(P.causal(ptr), P.window(ptr, 1, causal=False))
    e = torch.randn(ei.size(1), 3)
    if softmax != "auto":
        force_softmax(monkeypatch, softmax)
    layer = RelationalAttention(8, 8, heads=2, edge_dim=3)
    x = torch.randn(9, 8)
    explanation = torch._dynamo.explain(layer)(x, ei, e, member)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, ei, e, member), layer(x, ei, e, member))


def test_transformer_layer_compiles_whole():
    ptr = torch.tensor([0, 5, 9])
    ei = P.causal(ptr)
    layer = TransformerLayer(8, heads=2, edge_dim=3, edge_update=True, dropout=0.0)
    x, e = torch.randn(9, 8), torch.randn(ei.size(1), 3)
    explanation = torch._dynamo.explain(layer)(x, ei, e)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    ours, ref = compiled(x, ei, e), layer(x, ei, e)
    torch.testing.assert_close(ours.x, ref.x)
    torch.testing.assert_close(ours.edge_attr, ref.edge_attr)
    assert ours.attention is None and ref.attention is None


@pytest.mark.parametrize("backend", ["auto", "sparse", "dense", "fused_cpu", "propagate"])
@pytest.mark.parametrize("as_edge_set", [False, True], ids=["edge_index", "EdgeSet"])
def test_explain_mode_masks_the_edges_in_the_order_given(backend, as_edge_set):
    """PyG's explainers (``set_masks``) weigh each edge's message by its mask,
    in the order the caller gave the edges: whatever backend the layer names
    and whether the edges come as an ``edge_index`` or an ``EdgeSet`` (which
    keeps them grouped by target), the output is the masked sum of the
    unmasked layer's weights times the values (float64, edges shuffled)."""
    from torch_geometric.explain.algorithm.utils import clear_masks, set_masks

    from graphformer.nn import EdgeSet

    torch.manual_seed(8)
    ptr, batch = batch_of([4, 3])
    ei = P.union(P.full(ptr), P.window(ptr, 1))[0]
    ei = ei[:, torch.randperm(ei.size(1))]
    x = torch.randn(int(ptr[-1]), 4, dtype=torch.float64)
    layer = RelationalAttention(4, 4, heads=2, backend=backend).double().eval()
    _, alpha = layer(x, ei, return_attention_weights=True)          # [E, H], given order
    mask = (torch.rand(ei.size(1)) > 0.5).double()
    v = layer.lin_v(x).view(-1, 2, 2)
    agg = torch.zeros_like(v).index_add_(0, ei[1], (mask[:, None] * alpha)[..., None]
                                         * v.index_select(0, ei[0]))
    expected = layer.lin_out(agg.reshape(-1, 4))
    set_masks(layer, mask, ei, apply_sigmoid=False)
    try:
        edges = EdgeSet(ei, x.size(0), batch=batch) if as_edge_set else ei
        out = layer(x, edges)
    finally:
        clear_masks(layer)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)


def test_a_pyg_explainer_explains_a_model_of_relational_attention():
    """PyG's ``Explainer`` with ``GNNExplainer`` runs on a model whose layer
    names a backend other than ``"propagate"``: an edge mask per edge,
    finite, in [0, 1]."""
    from torch_geometric.explain import Explainer, GNNExplainer

    torch.manual_seed(0)
    model = Sequential("x, edge_index", [
        (RelationalAttention(4, 8, heads=2, backend="sparse"), "x, edge_index -> x"),
        torch.nn.ReLU(),
        (torch.nn.Linear(8, 3), "x -> x"),
    ])
    ptr, _ = batch_of([5, 4])
    ei = P.window(ptr, 1, causal=False)
    x = torch.randn(int(ptr[-1]), 4)
    explainer = Explainer(model, GNNExplainer(epochs=3), explanation_type="model",
                          node_mask_type=None, edge_mask_type="object",
                          model_config=dict(mode="multiclass_classification",
                                            task_level="node", return_type="raw"))
    explanation = explainer(x, ei, index=2)
    assert explanation.edge_mask.shape == (ei.size(1),)
    assert torch.isfinite(explanation.edge_mask).all()
    assert ((explanation.edge_mask >= 0) & (explanation.edge_mask <= 1)).all()
