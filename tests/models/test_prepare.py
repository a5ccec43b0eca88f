"""GraphTransformer.prepare: the batch's attention edge set computed outside
the model (every data-dependent size), and the model on a prepared batch:
the same outputs and gradients to the bit as on the batch itself, and an
export for inference (ExportableGraphTransformer)."""
import pickle

import pytest
import torch
from torch_geometric.data import Batch

from graphformer.data import from_smiles
from graphformer.data.encodings import encodings
from graphformer.models import GraphTransformer, GraphTransformerConfig
from graphformer.models.graph_transformer import PreparedEdges
from graphformer.nn.cpu_kernels import kernels_available

SMILES = ["CCO", "c1ccccc1O", "C", "CC(=O)Nc1ccc(O)cc1", "[Na+].[Cl-]", "OC(=O)C1CCCCC1"]
OTHER = ["CC#N", "c1ccncc1", "ClCCBr", "O=S(=O)(O)O"]
#: the default model, and the edge sets built otherwise: k-hop and virtual
#: nodes (a union, searched bond positions), edge states per edge
CONFIGS = {
    "default": {},
    "k_hop+virtual": dict(hidden=16, layers=2, heads=2, dropout=0.2,
                          patterns=("bonds", "k_hop"), pooling="virtual"),
    "edge_update": dict(hidden=16, layers=2, heads=2, patterns=("bonds", "k_hop", "full"),
                        pooling="virtual", edge_update=True),
}


def batch_of(smiles, dtype=torch.float32):
    t = encodings(GraphTransformerConfig().rwse_steps)
    batch = Batch.from_data_list([t(from_smiles(s)) for s in smiles])
    batch.rwse = batch.rwse.to(dtype)
    return batch


def output_and_grads(model, batch, seed=1):
    """The model's output on ``batch`` and the gradients of its squared sum."""
    model.zero_grad()
    torch.manual_seed(seed)          # the same dropout draws
    y = model(batch)
    y.pow(2).sum().backward()
    return [y.detach()] + [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_prepared_batch_gives_the_same_outputs_and_gradients_to_the_bit(name, dtype):
    torch.manual_seed(0)
    model = GraphTransformer(GraphTransformerConfig(**CONFIGS[name])).to(dtype).train()
    batch = batch_of(SMILES, dtype)
    ref = output_and_grads(model, batch)
    prepared = model.prepare(batch)
    ours = output_and_grads(model, prepared)
    assert len(ours) == len(ref) > 10
    for a, b in zip(ours, ref):
        assert torch.equal(a, b)
    assert ref[0].abs().sum() > 0


def test_prepare_computes_the_edge_set_and_leaves_the_batch_alone():
    model = GraphTransformer(GraphTransformerConfig()).eval()
    batch = batch_of(["CCO", "C"])
    prepared = model.prepare(batch)
    assert getattr(batch, "prepared_edges", None) is None
    edges = prepared.prepared_edges
    assert isinstance(edges, PreparedEdges)
    # bonds + all pairs of 3 atoms and of 1 atom: 9 + 1 edges, grouped by target
    assert edges.edge_index.tolist() == [[0, 1, 2, 0, 1, 2, 0, 1, 2, 3],
                                         [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]]
    assert edges.ptr.tolist() == [0, 3, 6, 9, 10]
    # membership in (bonds, full): the 4 directed bonds C-C, C-O are also bonds
    bonds = {(0, 1), (1, 0), (1, 2), (2, 1)}
    assert edges.member.tolist() == [[(j, i) in bonds, True]
                                     for j, i in edges.edge_index.t().tolist()]
    # types: non-bond pairs (one type), and the single bonds C-C and C-O (same features)
    assert edges.types.numel() == 2 == int(edges.edge_type.max()) + 1
    assert [bool(m[0]) for m in edges.member.tolist()] == \
        [t == 1 for t in edges.edge_type.tolist()]
    with torch.no_grad():
        y, (edge_index, member, _) = model(prepared, return_attention_weights=True)
        assert torch.equal(y, model(batch))
    assert edge_index is edges.edge_index and member is edges.member


def test_a_prepared_batch_moves_pickles_and_keeps_its_preparation():
    """``batch.to(device)`` moves the prepared tensors with the batch, and a
    prepared batch pickles (as a loader worker hands it over)."""
    model = GraphTransformer(GraphTransformerConfig(hidden=16, layers=1, heads=2)).eval()
    prepared = model.prepare(batch_of(SMILES))
    with torch.no_grad():
        ref = model(prepared)
        for other in (prepared.to("cpu"), pickle.loads(pickle.dumps(prepared))):
            assert isinstance(other.prepared_edges, PreparedEdges)
            assert other.prepared_edges.edge_set == prepared.prepared_edges.edge_set
            assert torch.equal(model(other), ref)


def test_a_batch_prepared_for_another_edge_set_or_changed_since_is_refused():
    model = GraphTransformer(GraphTransformerConfig(hidden=16, layers=1, heads=2))
    k_hop = GraphTransformer(GraphTransformerConfig(hidden=16, layers=1, heads=2,
                                                    patterns=("bonds", "k_hop")))
    batch = batch_of(SMILES)
    with pytest.raises(ValueError, match=r"prepared for the edge set 'bonds\+k_hop\+self, "
                       r"k=3, features=ogb' but this model's is 'bonds\+full, features=ogb'"):
        model(k_hop.prepare(batch))
    stale = model.prepare(batch_of(SMILES[:2]))
    for key in ("x", "ptr", "batch", "rwse"):
        setattr(stale, key, getattr(batch, key))
    with pytest.raises(ValueError, match=r"'batch.prepared_edges.ptr' has shape \[11\] where "
                       r"the batch's 33 atoms need \[34\]"):
        model(stale)


@pytest.mark.skipif(not kernels_available(), reason="the CPU kernels are unavailable")
@pytest.mark.parametrize("name", ["default", "k_hop+virtual"])
def test_the_model_exports_for_inference_and_serves_batches_of_other_sizes(name):
    """torch.export.export of the model on a prepared batch, every size
    dynamic: the program runs the fused attention op and equals eager mode
    on batches of other sizes and edge types, down to one molecule of one
    atom."""
    torch.manual_seed(0)
    model = GraphTransformer(GraphTransformerConfig(**CONFIGS[name])).eval()
    inference = model.for_export()
    program = inference.export(batch_of(SMILES))
    assert "graphformer.fused_attention" in str(program.graph)
    for smiles in (OTHER, ["CCO"], ["C"]):
        other = batch_of(smiles)
        with torch.no_grad():
            ours = program.module()(*inference.inputs(other))
            torch.testing.assert_close(ours, model(other), rtol=1e-6, atol=1e-6)
        assert ours.shape == (len(smiles), 1)
    assert len(inference.inputs(other)) == len(inference.input_names()) == 11


def test_export_names_its_inputs_and_refuses_a_model_in_training_mode():
    model = GraphTransformer(GraphTransformerConfig(hidden=16, layers=1, heads=2, rwse_steps=0),
                             mol_features=2)
    inference = model.for_export()
    assert inference.input_names() == (
        "x", "edge_attr", "edge_index", "ptr", "batch", "mol_x", "prepared_edge_index",
        "prepared_member", "prepared_edge_type", "prepared_types", "prepared_ptr")
    with pytest.raises(ValueError, match="the batch has no \\['mol_x'\\]"):
        inference.inputs(batch_of(SMILES))
    with pytest.raises(ValueError, match=r"call model.eval\(\) first"):
        inference.export(batch_of(SMILES))
    one = GraphTransformer(GraphTransformerConfig(hidden=16, layers=1, heads=2)).eval()
    with pytest.raises(ValueError, match=r"every count is 2 or more .* 'ptr' has size 2 in dim 0, a count of 1"):
        one.for_export().export(batch_of(["CCO"]))
