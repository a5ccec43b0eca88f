"""RandomWalkSE against PyG's AddRandomWalkPE, which it replaces for speed."""
import pytest
import torch
from torch_geometric.data import Data
from torch_geometric.transforms import AddRandomWalkPE

from graphformer.data import RandomWalkSE, encodings, from_smiles

SMILES = ["C", "CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "[Na+].[Cl-]", "C1CC2CCC1CC2",
          "OC[C@H]1OC(O)[C@H](O)[C@@H](O)[C@@H]1O", "c1ccc2c(c1)ccc1ccccc12"]


def pyg(data, steps):
    return AddRandomWalkPE(steps, attr_name="rwse")(data.clone()).rwse


@pytest.mark.parametrize("steps", [1, 2, 16])
def test_equals_pyg_on_molecules(steps):
    for smiles in SMILES:
        data = from_smiles(smiles)
        out = RandomWalkSE(steps)(data.clone()).rwse
        assert out.shape == (data.num_nodes, steps) and out.dtype == torch.float32
        torch.testing.assert_close(out, pyg(data, steps), rtol=1e-6, atol=1e-7)


def test_known_values():
    # a path a - b - c: return after 2 steps from a is 1/2 (a->b->a);
    # from b it is 1 (b->a->b or b->c->b); odd walks never return
    data = Data(edge_index=torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]]), num_nodes=3)
    out = RandomWalkSE(4)(data).rwse
    torch.testing.assert_close(out, torch.tensor([[0, .5, 0, .5], [0, 1, 0, 1], [0, .5, 0, .5]]))


def test_odd_graphs_equal_pyg():
    # isolated nodes (degree clamped to 1), a self loop, a repeated edge,
    # a directed edge, no edges at all
    graphs = [Data(edge_index=torch.tensor([[0, 0, 0, 1, 2], [1, 1, 0, 0, 0]]), num_nodes=4),
              Data(edge_index=torch.zeros(2, 0, dtype=torch.long), num_nodes=3)]
    for data in graphs:
        torch.testing.assert_close(RandomWalkSE(5)(data.clone()).rwse, pyg(data, 5))


@pytest.mark.filterwarnings("ignore:Sparse:UserWarning")
def test_weighted_and_large_graphs_take_pygs_path():
    data = Data(edge_index=torch.tensor([[0, 1], [1, 0]]), edge_weight=torch.tensor([2., 3.]),
                num_nodes=2)
    torch.testing.assert_close(RandomWalkSE(3)(data.clone()).rwse, pyg(data, 3))
    n = 2_001
    ring = torch.arange(n)
    big = Data(edge_index=torch.stack([ring, (ring + 1) % n]), num_nodes=n)
    torch.testing.assert_close(RandomWalkSE(2)(big.clone()).rwse, pyg(big, 2))


def test_bad_length_and_repr():
    with pytest.raises(ValueError, match="'walk_length' must be >= 1, got 0"):
        RandomWalkSE(0)
    assert repr(RandomWalkSE(16)) == "RandomWalkSE(walk_length=16, attr_name='rwse')"
    assert isinstance(encodings(8), RandomWalkSE)


@pytest.mark.parametrize("smiles", ["c1ccccc1CCO", "CC(=O)Nc1ccc(O)cc1", "CCO", "C"])
def test_laplacian_encoding_is_the_same_in_every_run(smiles):
    """PyG draws each eigenvector's sign from the global random state; the
    encoding is the same whatever that state (so ``predict`` gives the same
    numbers in every run), and each column is still an eigenvector of the
    normalised Laplacian: PyG's up to its sign, where PyG computes it."""
    from torch_geometric.transforms import AddLaplacianEigenvectorPE

    from graphformer.data.encodings import LaplacianPE

    graph = from_smiles(smiles)
    k = 3
    outs = []
    for seed in range(4):
        torch.manual_seed(seed)
        outs.append(LaplacianPE(k)(graph.clone()).lap_pe)
    for out in outs[1:]:
        assert torch.equal(out, outs[0])
    assert outs[0].shape == (graph.num_nodes, k)
    if graph.num_nodes > k + 1:
        torch.manual_seed(0)
        pyg = AddLaplacianEigenvectorPE(k, attr_name="pe")(graph.clone()).pe
        for c in range(k):
            same = torch.allclose(outs[0][:, c], pyg[:, c], atol=1e-5)
            flipped = torch.allclose(outs[0][:, c], -pyg[:, c], atol=1e-5)
            assert same or flipped
        top = outs[0].abs().argmax(0)
        assert (outs[0][top, torch.arange(k)] > 0).all()
