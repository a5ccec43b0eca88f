"""Typed edges and shared edge sets compute the same function as the per-edge
formulation: ``layer(x, edge_index, table, edge_type=t)`` and
``layer(x, EdgeSet(...), table)`` against ``layer(x, edge_index, table[t])``
through PyG message passing (the per-edge reference path), values and
gradients in float64, on every backend, with and without per-head masks, and
with edge updates; and the molecule model's typed edge set against the
per-edge edge features it replaces."""
import pytest
import torch
from torch_geometric.data import Batch

from graphformer import patterns as P
from graphformer.data import from_smiles
from graphformer.data.encodings import encodings
from graphformer.models import GraphTransformer, GraphTransformerConfig
from graphformer.nn import EdgeSet, RelationalAttention, TransformerLayer
from graphformer.nn.fused import fused_available
from graphformer.nn.fused_cpu import fused_cpu_available, fused_cpu_unavailable
from tests.helpers import ptr_of

SIZES = [6, 1, 9, 4, 0, 7]
IN, OUT, H, D, R = 10, 12, 3, 5, 4

PATTERNS = {
    "full": lambda ptr: P.full(ptr),
    "causal": lambda ptr: P.causal(ptr),
    "window": lambda ptr: P.window(ptr, 2, causal=False),
    "union": lambda ptr: P.union(P.window(ptr, 1), P.strided(ptr, 2))[0],
}


def _backend_or_skip(backend):
    if backend == "fused" and not fused_available(torch.device("cpu")):
        pytest.skip("triton is not installed (or TRITON_INTERPRET is not set)")
    if backend == "fused_cpu" and not fused_cpu_available():
        pytest.skip(f"the fused CPU kernels are unavailable: {fused_cpu_unavailable()}")


def _inputs(pattern, head_mask, seed=0):
    g = torch.Generator().manual_seed(seed)
    ptr = ptr_of(SIZES)
    batch = torch.repeat_interleave(torch.arange(len(SIZES)), ptr.diff())
    ei = PATTERNS[pattern](ptr)
    E = ei.size(1)
    x = torch.randn(int(ptr[-1]), IN, dtype=torch.float64, generator=g, requires_grad=True)
    table = torch.randn(R, D, dtype=torch.float64, generator=g, requires_grad=True)
    types = torch.randint(0, R, (E,), generator=g)
    hm = torch.rand(E, H, generator=g) > 0.3 if head_mask else None
    return ptr, batch, ei, x, table, types, hm


def _grads(out, inputs, params, seed=1):
    g = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(seed))
    return torch.autograd.grad((out * g).sum(), inputs + params, allow_unused=True)


def _assert_all_close(a, b, **kw):
    for x, y in zip(a, b):
        if x is None or y is None:
            assert x is None and y is None
        else:
            torch.testing.assert_close(x, y, **kw)


@pytest.mark.parametrize("backend", ["sparse", "dense", "fused", "fused_cpu", "propagate"])
@pytest.mark.parametrize("pattern", sorted(PATTERNS))
@pytest.mark.parametrize("head_mask", [False, True], ids=["all-heads", "head-mask"])
@pytest.mark.parametrize("shared", [False, True], ids=["edge_type", "EdgeSet"])
def test_typed_edges_equal_per_edge_features(backend, pattern, head_mask, shared):
    _backend_or_skip(backend)
    dtype = torch.float32 if backend == "fused" else torch.float64
    tol = dict(atol=2e-5, rtol=2e-4) if backend == "fused" else {}
    ptr, batch, ei, x, table, types, hm = _inputs(pattern, head_mask)
    x, table = (x.detach().to(dtype).requires_grad_(), table.detach().to(dtype).requires_grad_())
    torch.manual_seed(0)
    ref = RelationalAttention(IN, OUT, heads=H, edge_dim=D, backend="propagate").to(dtype)
    layer = RelationalAttention(IN, OUT, heads=H, edge_dim=D, backend=backend).to(dtype)
    layer.load_state_dict(ref.state_dict())

    out_ref, alpha_ref = ref(x, ei, table[types], head_mask=hm, batch=batch,
                             return_attention_weights=True)
    if shared:
        edges = EdgeSet(ei, x.size(0), batch=batch, edge_type=types, num_types=R)
        out, alpha = layer(x, edges, table, head_mask=hm, return_attention_weights=True)
    else:
        out, alpha = layer(x, ei, table, head_mask=hm, batch=batch, edge_type=types,
                           return_attention_weights=True)
    torch.testing.assert_close(out, out_ref, **tol)
    torch.testing.assert_close(alpha, alpha_ref, **tol)
    params_ref, params = list(ref.parameters()), list(layer.parameters())
    _assert_all_close(_grads(out, [x, table], params), _grads(out_ref, [x, table], params_ref),
                      **tol)


@pytest.mark.parametrize("backend", ["sparse", "dense", "fused_cpu", "propagate"])
def test_edge_set_in_any_order_returns_weights_in_that_order(backend):
    _backend_or_skip(backend)
    ptr, batch, ei, x, table, types, _ = _inputs("window", False)
    order = torch.randperm(ei.size(1), generator=torch.Generator().manual_seed(3))
    layer = RelationalAttention(IN, OUT, heads=H, edge_dim=D, backend=backend).double()
    edges = EdgeSet(ei[:, order], x.size(0), batch=batch, edge_type=types[order])
    out, alpha = layer(x, edges, table, return_attention_weights=True)
    out_ref, alpha_ref = layer(x, ei, table[types], batch=batch, return_attention_weights=True)
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(alpha, alpha_ref[order])
    # per-edge features with a shared (unsorted) edge set: given order too
    out_e = layer(x, EdgeSet(ei[:, order], x.size(0), batch=batch), table[types][order])
    torch.testing.assert_close(out_e, out_ref)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("backend", ["sparse", "dense", "fused_cpu", "propagate"])
def test_transformer_layer_with_edge_updates_typed_equals_per_edge(norm_first, backend):
    _backend_or_skip(backend)
    ptr, batch, ei, x, table, types, hm = _inputs("full", True)
    x = torch.randn(x.size(0), 8, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(0)
    kw = dict(heads=2, dropout=0.0, norm_first=norm_first, edge_dim=D, edge_update=True)
    ref = TransformerLayer(8, backend="propagate", **kw).double()
    layer = TransformerLayer(8, backend=backend, **kw).double()
    layer.load_state_dict(ref.state_dict())
    hm2 = hm[:, :2]
    x_ref, e_ref, _ = ref(x, ei, table[types], head_mask=hm2, batch=batch)
    edges = EdgeSet(ei, x.size(0), batch=batch, edge_type=types)
    x_new, e_new, no_weights = layer(x, edges, table, head_mask=hm2)
    assert no_weights is None
    torch.testing.assert_close(x_new, x_ref)
    torch.testing.assert_close(e_new, e_ref)
    loss_ref = (x_ref.sum(1) ** 2).sum() + e_ref.pow(2).sum()
    loss = (x_new.sum(1) ** 2).sum() + e_new.pow(2).sum()
    _assert_all_close(torch.autograd.grad(loss, [x, table] + list(layer.parameters())),
                      torch.autograd.grad(loss_ref, [x, table] + list(ref.parameters())))


def test_typed_edges_bad_input_names_the_problem():
    layer = RelationalAttention(4, 4, heads=2, edge_dim=3)
    x, ei = torch.randn(5, 4), P.full(5)
    with pytest.raises(IndexError, match=r"edge_type\[\d+\] = 7 but 'edge_attr' has 2 rows"):
        layer(x, ei, torch.randn(2, 3), edge_type=torch.full((25,), 7))
    with pytest.raises(ValueError, match=r"'edge_type' must have shape \[E\] = \[25\]"):
        layer(x, ei, torch.randn(2, 3), edge_type=torch.zeros(24, dtype=torch.long))
    with pytest.raises(ValueError, match="typed edges need their features"):
        layer(x, EdgeSet(ei, 5, edge_type=torch.zeros(25, dtype=torch.long)))
    with pytest.raises(ValueError, match=r"the EdgeSet is over 5 source and 5 target nodes"):
        layer(torch.randn(6, 4), EdgeSet(ei, 5))
    with pytest.raises(IndexError, match=r"'edge_type' is out of range: edge_type\[0\] = -1"):
        EdgeSet(ei, 5, edge_type=torch.full((25,), -1))
    with pytest.raises(ValueError, match=r"has 2 rows \(one per edge type\) but the edge set "
                                         r"has 3 types"):
        layer(x, EdgeSet(ei, 5, edge_type=torch.zeros(25, dtype=torch.long), num_types=3),
              torch.randn(2, 3))


def _per_edge_reference(model, batch):
    """The molecule model as it was before typed edges: edge features
    BondEnc(b)·[bond] + W_m m materialised per edge, every block on
    ``edge_index`` with the PyG message-passing backend."""
    x = model.atom_encoder(batch.x) + model.rwse(batch.rwse)
    edge_index, member = model.attention_edges(batch.edge_index, batch.ptr, x.size(0),
                                               batch.ptr.new_zeros(0))
    keys = P.edge_keys(edge_index, x.size(0))
    pos = torch.searchsorted(keys, P.edge_keys(batch.edge_index, x.size(0)))
    e = x.new_zeros(edge_index.size(1), model.config.hidden)
    e[pos] = model.bond_encoder(batch.edge_attr)
    e = e + model.membership(member.to(x.dtype))
    for layer, block in enumerate(model.blocks):
        if model.local is not None:
            x = model.local[layer](x, batch.edge_index, model.bond_encoder(batch.edge_attr))
        block.attn.backend = "propagate"
        x, e, _ = block(x, edge_index, e, batch=batch.batch)
    x = model.final_norm(x)
    from torch_geometric.utils import scatter
    return model.head(scatter(x, batch.batch, dim=0, dim_size=batch.num_graphs, reduce="mean"))


@pytest.mark.parametrize("pats, local", [(("bonds", "full"), "none"), (("bonds", "full"), "gine"),
                                         (("bonds", "k_hop"), "none"), (("bonds",), "none")])
@pytest.mark.parametrize("edge_update", [False, True])
def test_molecule_model_typed_edges_equal_per_edge_features(pats, local, edge_update):
    smiles = ["CC(=O)Nc1ccc(O)cc1", "C", "C/C=C/C(=O)O", "[Na+].[Cl-]", "c1ccc2ccccc2c1"]
    t = encodings(16)
    batch = Batch.from_data_list([t(from_smiles(s)) for s in smiles])
    torch.manual_seed(0)
    cfg = GraphTransformerConfig(hidden=16, layers=2, heads=4, dropout=0.0, patterns=pats,
                                 edge_update=edge_update, local=local)
    model = GraphTransformer(cfg).double().eval()
    batch.rwse = batch.rwse.double()
    out = model(batch)
    params = list(model.parameters())
    grads = torch.autograd.grad(out.sum(), params, allow_unused=True)
    ref = _per_edge_reference(model, batch)
    torch.testing.assert_close(out, ref)
    _assert_all_close(grads, torch.autograd.grad(ref.sum(), params, allow_unused=True))


@pytest.mark.parametrize("backend", ["auto", "sparse", "dense", "fused", "fused_cpu",
                                     "propagate"])
@pytest.mark.parametrize("typed", [False, True])
@pytest.mark.parametrize("isolated", [False, True], ids=["causal", "isolated"])
def test_values_no_edge_reads_never_reach_an_output_or_gradient(backend, typed, isolated):
    """NaN / inf in the last token of each sequence. Causal attention: no edge
    reads that token from any other, so every earlier output is that of clean
    input. With the token cut off (no edge into or out of it) the gradients
    of every other input are clean too (with the causal set autograd's
    0 · NaN reaches them through the token's own row, as in PyTorch's MHA)."""
    _backend_or_skip(backend)
    ptr = ptr_of([5, 3])
    ei = P.causal(ptr)
    if isolated:
        ei = ei[:, (ei[0] != 4) & (ei[1] != 4) & (ei[0] != 7) & (ei[1] != 7)]
    batch = torch.repeat_interleave(torch.arange(2), ptr.diff())
    types = (ei[0] == ei[1]).long()
    table = torch.randn(2, 3, dtype=torch.float64)
    e = table if typed else table[types]
    kw = dict(edge_type=types) if typed else {}
    dtype = torch.float32 if backend == "fused" else torch.float64
    layer = RelationalAttention(4, 4, heads=2, edge_dim=3, backend=backend).to(dtype)
    clean = torch.randn(8, 4, dtype=dtype)
    dirty = clean.clone()
    dirty[4], dirty[7] = float("nan"), float("inf")
    keep = torch.tensor([0, 1, 2, 3, 5, 6])
    outs, grads = [], []
    for x in (clean, dirty):
        x = x.clone().requires_grad_()
        out = layer(x, ei, e.to(dtype), batch=batch, **kw)
        if isolated:
            out[keep].sum().backward()
            grads.append(x.grad[keep])
        outs.append(out[keep])
    assert torch.isfinite(outs[1]).all()
    torch.testing.assert_close(outs[1], outs[0])
    if isolated:
        assert torch.isfinite(grads[1]).all()
        torch.testing.assert_close(grads[1], grads[0])


@pytest.mark.parametrize("bad", [torch.randn(8), torch.randn(2, 4, 8), torch.ones(5, 8).long()])
def test_malformed_node_features_are_refused_before_any_kernel(bad):
    layer = RelationalAttention(8, 8, heads=2)
    with pytest.raises((ValueError, TypeError), match="'x' must"):
        layer(bad, P.full(5))
