"""The CPU kernels under :func:`torch.compile` and :func:`torch.export.export`:
as custom ops they are traced, so compiled code keeps the fast path
(``auto`` picks ``fused_cpu`` for typed edges, dropout is the hashed kernel)
instead of falling back to message passing and torch's dropout.

The graph-break tests use the ``aot_eager`` backend (forward and backward
traced, nothing generated): inductor's compile time is measured in
``scripts/bench_training.py --compile`` instead."""
import pytest
import torch
from torch_geometric.data import Batch

from graphformer.data import from_smiles
from graphformer.data.encodings import encodings
from graphformer.models import GraphTransformer, GraphTransformerConfig
from graphformer.nn import EdgeSet, RelationalAttention, TransformerLayer
from graphformer.nn.cpu_kernels import kernels_available, kernels_unavailable

pytestmark = pytest.mark.skipif(
    not kernels_available(), reason=f"the CPU kernels are unavailable: {kernels_unavailable()}")

SMILES = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "CCN(CC)CC", "OC(=O)C1CCCCC1"]


def ops_in(graphs):
    """The graphformer custom ops called in traced graphs."""
    return {str(node.target) for g in graphs for node in g.graph.nodes
            if node.op == "call_function" and "graphformer" in str(node.target)}


def typed_edges(num_nodes=9, num_types=3):
    src = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 2, 4, 6, 8, 1])
    dst = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8, 0, 5, 7, 0, 2, 3, 1])
    etype = torch.arange(src.numel()) % num_types
    return EdgeSet(torch.stack([src, dst]), num_nodes, edge_type=etype, num_types=num_types)


def test_transformer_layer_with_dropout_compiles_whole_on_the_kernels():
    """A layer on typed edges with dropout (attention, residual, GELU
    feed-forward): one graph, no break, the fused attention and both hashed
    dropouts in it; with the same seed the compiled layer equals the eager
    one, forward and backward (same kernels, same seeds)."""
    torch.manual_seed(0)
    layer = TransformerLayer(16, heads=2, edge_dim=5, dropout=0.3, activation="gelu",
                             norm_first=True).train()
    edges = typed_edges()
    x = torch.randn(9, 16, requires_grad=True)
    table = torch.randn(3, 5)
    explanation = torch._dynamo.explain(layer)(x, edges, table)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    ops = ops_in(explanation.graphs)
    assert {"graphformer.fused_attention", "graphformer.hashed_dropout",
            "graphformer.gelu_dropout"} <= ops, ops
    compiled = torch.compile(layer, backend="aot_eager", dynamic=True, fullgraph=True)
    torch.manual_seed(1)
    ours = compiled(x, edges, table).x
    (g_ours,) = torch.autograd.grad(ours.pow(2).sum(), x)
    torch.manual_seed(1)
    ref = layer(x, edges, table).x
    (g_ref,) = torch.autograd.grad(ref.pow(2).sum(), x)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(g_ours, g_ref)
    assert (ours != 0).any()


def test_per_edge_features_compile_whole_on_the_kernels():
    """Per-edge features on edges not grouped by target: the whole attention
    block (cross terms with the quadratic form, attention, value sums: one
    op) reads them through the edge set's permutation; one graph, no break,
    and the compiled layer equals the eager one, forward and both gradients."""
    torch.manual_seed(0)
    layer = RelationalAttention(16, 16, heads=2, edge_dim=5, backend="fused_cpu")
    edges = EdgeSet(torch.tensor([[0, 1, 2, 3, 1, 4, 2, 0], [1, 0, 0, 2, 3, 3, 4, 4]]), 5)
    assert edges.perm is not None
    x = torch.randn(5, 16, requires_grad=True)
    e = torch.randn(8, 5, requires_grad=True)
    explanation = torch._dynamo.explain(layer)(x, edges, e)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert "graphformer.edge_feature_attention" in ops_in(explanation.graphs)
    compiled = torch.compile(layer, backend="aot_eager", dynamic=True, fullgraph=True)
    ours = compiled(x, edges, e)
    ref = layer(x, edges, e)
    torch.testing.assert_close(ours, ref)
    for g_ours, g_ref in zip(torch.autograd.grad(ours.pow(2).sum(), (x, e)),
                             torch.autograd.grad(ref.pow(2).sum(), (x, e))):
        torch.testing.assert_close(g_ours, g_ref)


def molecules():
    t = encodings(GraphTransformerConfig().rwse_steps)
    return Batch.from_data_list([t(from_smiles(s)) for s in SMILES])


def training_step(model, batch):
    """Loss and gradients of one step of the model (a squared-output loss)."""
    model.zero_grad()
    loss = model(batch).pow(2).mean()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def other_molecules():
    """A batch of other sizes and other edge types than :func:`molecules`."""
    t = encodings(GraphTransformerConfig().rwse_steps)
    return Batch.from_data_list([t(from_smiles(s))
                                 for s in ["CC#N", "c1ccncc1", "ClCCBr", "O=S(=O)(O)O"]])


def test_dynamo_runs_with_its_default_settings():
    """The compile tests below run under torch's default dynamo settings:
    data-dependent sizes are not captured (a prepared batch has none)."""
    assert torch._dynamo.config.capture_scalar_outputs is False
    assert torch._dynamo.config.capture_dynamic_output_shape_ops is False


@pytest.mark.slow
def test_default_molecule_model_training_step_on_prepared_batches_compiles_whole():
    """The default molecule model's training step (forward, loss, backward)
    on a prepared batch (model.prepare: the edge set computed outside the
    model) under torch.compile with dynamic shapes and dynamo's default
    settings: no graph break at all (the input checks are eager-only, every
    size is an input's), the attention runs the fused_cpu custom ops inside
    the graph, and loss and gradients equal eager mode's; another batch of
    other sizes and edge types compiles nothing new."""
    torch.manual_seed(0)
    model = GraphTransformer(GraphTransformerConfig()).train()
    batch = model.prepare(molecules())
    explanation = torch._dynamo.explain(model)(batch)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert len(explanation.graphs) == 1
    assert "graphformer.fused_attention" in ops_in(explanation.graphs)
    ref_loss, ref_grads = training_step(model, batch)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = torch.compile(model, backend="aot_eager", dynamic=True, fullgraph=True)
    loss, grads = training_step(compiled, batch)
    assert sum(torch._dynamo.utils.counters["graph_break"].values()) == 0
    torch.testing.assert_close(loss, ref_loss)
    assert len(grads) == len(ref_grads) > 0
    for ours, ref in zip(grads, ref_grads):
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)
    # another batch (other sizes, other edge types): no recompilation
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    other = compiled.prepare(other_molecules())
    other_loss, _ = training_step(compiled, other)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    torch.testing.assert_close(other_loss, training_step(model, other)[0])
    assert sum(torch._dynamo.utils.counters["graph_break"].values()) == 0


@pytest.mark.slow
def test_default_molecule_model_compiles_on_unprepared_batches_too():
    """An unprepared batch (the model computes its edge set itself) still
    compiles, with graph breaks around the data-dependent sizes of the edge
    set, and gives eager mode's loss and gradients (a one-block model:
    the breaks are before the blocks)."""
    torch.manual_seed(0)
    model = GraphTransformer(GraphTransformerConfig(hidden=16, layers=1, heads=2)).train()
    batch = molecules()
    ref_loss, ref_grads = training_step(model, batch)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", dynamic=True)
    loss, grads = training_step(compiled, batch)
    torch.testing.assert_close(loss, ref_loss)
    assert len(grads) == len(ref_grads) > 0
    for ours, ref in zip(grads, ref_grads):
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)


class _TypedAttention(torch.nn.Module):
    """Projections and the fused attention op over an edge set given as
    tensors (grouped by target): what an exported model's attention runs."""

    def __init__(self, channels=8, heads=2, num_types=3):
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(channels, 3 * channels)
        self.target_table = torch.nn.Parameter(torch.randn(heads, 1, num_types))
        self.type_values = torch.nn.Parameter(torch.randn(num_types, heads, channels // heads))

    def forward(self, x, ptr, col, edge_type):
        N, H = x.size(0), self.heads
        q, k, v = self.qkv(x).view(N, 3, H, -1).unbind(1)
        empty = ptr.new_empty(0)
        out, _, _ = torch.ops.graphformer.fused_attention(
            q.contiguous(), k.contiguous(), v.contiguous(), ptr, col, empty, empty, empty, None,
            edge_type, self.target_table.expand(-1, N, -1).contiguous(), None,
            self.type_values, torch.zeros(1, dtype=torch.long), 0.5, 0.0)
        return out.reshape(N, -1)


def test_the_fused_attention_op_exports_for_inference_with_dynamic_shapes():
    """torch.export.export of a module calling the op, with the node and
    edge counts dynamic: the exported program runs the kernel and equals
    eager mode on another graph of other sizes."""
    torch.manual_seed(0)
    module = _TypedAttention().eval()
    edges = typed_edges()
    ptr, col, etype = edges.csr.ptr, edges.csr.col, edges.edge_type
    nodes, num_edges = torch.export.Dim("nodes", min=2), torch.export.Dim("edges", min=2)
    with torch.no_grad():
        program = torch.export.export(
            module, (torch.randn(9, 8), ptr, col, etype),
            dynamic_shapes=({0: nodes}, {0: nodes + 1}, {0: num_edges}, {0: num_edges}))
    assert "graphformer.fused_attention" in str(program.graph)
    other = EdgeSet(torch.tensor([[0, 1, 2, 3, 4, 5, 0, 2], [1, 2, 3, 4, 5, 0, 0, 0]]), 6,
                    edge_type=torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]), num_types=3)
    args = (torch.randn(6, 8), other.csr.ptr, other.csr.col, other.edge_type)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(*args), module(*args))


@pytest.mark.parametrize("make", ["layer", "transformer"])
def test_a_fresh_untyped_edge_set_compiles_whole(make):
    """The edge set's cached properties took a lock (Python 3.11's
    ``functools.cached_property``) that dynamo cannot trace: a fresh
    ``EdgeSet`` broke the graph on message passing, and fullgraph failed."""
    torch.manual_seed(0)
    ei = torch.tensor([[0, 1, 2, 3, 4, 1], [1, 2, 3, 4, 0, 3]])
    x, e = torch.randn(5, 8, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    layer = (RelationalAttention(8, 8, heads=2, edge_dim=3) if make == "layer" else
             TransformerLayer(8, heads=2, edge_dim=3, dropout=0.0)).double().eval()

    def run(module, edges):
        out = module(x, edges, e)
        return out if isinstance(out, torch.Tensor) else out.x

    explanation = torch._dynamo.explain(layer)(x, EdgeSet(ei, 5), e)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(run(compiled, EdgeSet(ei, 5)), run(layer, ei), rtol=0,
                               atol=1e-12)


@pytest.mark.parametrize("backend", ["dense", "fused_cpu", "propagate"])
def test_a_named_backend_compiles_on_a_plain_edge_index(backend):
    """A named backend but message passing needs the edge set, which was not
    built under compile from a plain ``edge_index``: AttributeError. (The
    dense layout's sizes are read off the data: graph breaks there.)"""
    if backend == "fused_cpu" and not kernels_available():
        pytest.skip(kernels_unavailable())
    torch.manual_seed(0)
    ei = torch.tensor([[0, 1, 2, 3, 4], [1, 2, 3, 4, 0]])
    x = torch.randn(5, 8, dtype=torch.float64)
    layer = RelationalAttention(8, 8, heads=2, backend=backend).double()
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=backend != "dense")
    torch.testing.assert_close(compiled(x, ei), layer(x, ei), rtol=0, atol=1e-12)


def test_the_sparse_backend_is_refused_under_compile_by_name():
    """``sparse`` cannot be traced (sparse CSR products): an error naming the
    backends that compile, and a config refusing the pair before the 47 s a
    compile took to fail."""
    from graphformer.errors import ConfigError
    from graphformer.train.config import TrainConfig

    layer = RelationalAttention(8, 8, heads=2, backend="sparse")
    compiled = torch.compile(layer, backend="eager")
    with pytest.raises(Exception, match=r"backend='sparse' does not run under torch.compile.*"
                                        r"'auto', 'fused_cpu' or 'propagate'"):
        compiled(torch.randn(5, 8), torch.tensor([[0, 1], [1, 2]]))
    with pytest.raises(ConfigError, match=r"train.attention_backend.*'sparse' does not run "
                                          r"under compile"):
        TrainConfig(compile=True, attention_backend="sparse")
