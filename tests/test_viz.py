import numpy as np
import pytest
import torch
from matplotlib.image import imread
from torch_geometric.data import Batch

from graphformer.data import from_smiles
from graphformer.models import GraphTransformer, GraphTransformerConfig
from graphformer.viz import (MAX_PICTURE_SIDE, atom_bond_scores, attention_heatmap,
                             attention_mass_from_model, dense_attention, molecule_attention,
                             pattern_attention_mass)


def assert_picture(path, width, height):
    img = imread(path)
    assert img.shape[0] == height and img.shape[1] == width
    rgb = img[..., :3].reshape(-1, 3)
    assert rgb.std() > 0.02
    assert len(np.unique(np.round(rgb * 255).astype(int), axis=0)) > 10


@pytest.fixture(scope="module")
def attention():
    torch.manual_seed(0)
    model = GraphTransformer(GraphTransformerConfig(hidden=8, layers=2, heads=2, rwse_steps=0,
                                                    patterns=("bonds", "k_hop"), k=2)).eval()
    batch = Batch.from_data_list([from_smiles("CCO"), from_smiles("c1ccccc1O")])
    with torch.no_grad():
        _, (edge_index, member, weights) = model(batch, return_attention_weights=True)
    return model, batch, edge_index, member, weights


def test_heatmap_image_is_the_masked_attention_matrix(attention, tmp_path):
    model, batch, edge_index, member, weights = attention
    graph = 1
    start, stop = int(batch.ptr[graph]), int(batch.ptr[graph + 1])
    t = stop - start
    fig = attention_heatmap(edge_index, weights[1], ptr=batch.ptr, graph=graph,
                            tokens=[f"a{k}" for k in range(t)], layer_name="layer 1",
                            path=tmp_path / "h.png")
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 2  # one per head
    for h, ax in enumerate(panels):
        expected = np.full((t, t), np.nan)
        for e in range(edge_index.size(1)):
            j, i = int(edge_index[0, e]), int(edge_index[1, e])
            if start <= i < stop:
                expected[i - start, j - start] = float(weights[1][e, h])
        arr = ax.images[0].get_array()
        assert np.array_equal(np.ma.getmaskarray(arr), np.isnan(expected))
        assert np.allclose(arr.filled(np.nan), expected, equal_nan=True)
        # the phenol ring's para atoms are 3 bonds apart: not a 2-hop edge -> masked
        assert np.ma.getmaskarray(arr)[0, 3]
        assert "no edge" in ax.get_title()
        assert [t.get_text() for t in ax.get_xticklabels()] == [f"a{k}" for k in range(t)]
    w, h = fig.canvas.get_width_height()
    assert_picture(tmp_path / "h.png", w, h)


def test_heatmap_grid_of_layers_and_selected_heads(attention, tmp_path):
    _, batch, edge_index, _, weights = attention
    fig = attention_heatmap(edge_index, weights, ptr=batch.ptr, graph=0, heads=[1],
                            path=tmp_path / "g.png")
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title().splitlines()[0] for ax in panels] == ["layer 0 head 1",
                                                                  "layer 1 head 1"]
    for layer, ax in enumerate(panels):
        dense = dense_attention(edge_index, weights[layer], batch.ptr, 0)[1]
        assert dense.shape == (3, 3)
        assert np.ma.allequal(ax.images[0].get_array(), dense)
        # every query's weights sum to 1 (softmax over its incoming edges)
        assert np.allclose(dense.sum(axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="head 5 out of range"):
        attention_heatmap(edge_index, weights[0], ptr=batch.ptr, heads=[5])
    assert (tmp_path / "g.png").stat().st_size > 0


def test_atom_bond_scores_by_hand():
    # 3 atoms, bonds 0-1 and 1-2; attention edges (j -> i) with 2 heads,
    # node 0 a virtual token (offset 1), so atoms are nodes 1..3
    edge_index = torch.tensor([[1, 2, 2, 3, 1, 0, 3],
                               [2, 1, 3, 2, 3, 1, 1]])
    weights = torch.tensor([[0.1, 0.3], [0.2, 0.4], [0.5, 0.1], [0.6, 0.2], [0.7, 0.5],
                            [0.9, 0.9], [0.3, 0.7]])
    member = torch.tensor([[1, 0], [1, 0], [1, 0], [1, 0], [0, 1], [0, 1], [0, 1]], dtype=bool)
    bonds = [(0, 1), (1, 2)]
    atoms, bond = atom_bond_scores(edge_index, weights, bonds, 3, head=0, offset=1)
    # atom a receives sum of w over edges whose source is node a+1; the edge from
    # the virtual node 0 is left out
    assert np.allclose(atoms, [0.1 + 0.7, 0.2 + 0.5, 0.6 + 0.3])
    assert np.allclose(bond, [0.1 + 0.2, 0.5 + 0.6])
    atoms, bond = atom_bond_scores(edge_index, weights, bonds, 3, offset=1)  # mean of heads
    mean = weights.mean(1).double().numpy()
    assert np.allclose(atoms, [mean[0] + mean[4], mean[1] + mean[2], mean[3] + mean[6]])
    assert np.allclose(bond, [mean[0] + mean[1], mean[2] + mean[3]])
    atoms, bond = atom_bond_scores(edge_index, weights, bonds, 3, member=member, head=1,
                                   pattern=1, offset=1)
    assert np.allclose(atoms, [0.5, 0.0, 0.7]) and np.allclose(bond, [0.0, 0.0])


def test_molecule_picture(attention, tmp_path):
    model, batch, edge_index, member, weights = attention
    # graph 0 (CCO) is nodes 0..2 of the batch: its edges only touch those nodes
    keep = edge_index[1] < int(batch.ptr[1])
    png = molecule_attention("CCO", edge_index[:, keep], weights[0][keep], member=member[keep],
                             head=1, pattern=0, path=tmp_path / "m.png", size=(320, 240))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "m.png").read_bytes() == png
    assert_picture(tmp_path / "m.png", 320, 240)
    with pytest.raises(ValueError, match="cannot parse SMILES 'C1CC'"):
        molecule_attention("C1CC", edge_index, weights[0])
    # Cairo draws no side above 32,767 pixels (RDKit's "PNG header not
    # recognized"): the size is refused by name, before any drawing
    for size in [(32768, 240), (320, 0), (320, MAX_PICTURE_SIDE + 1), (320,)]:
        with pytest.raises(ValueError, match=rf"size \(.*\) must be a width and a height in "
                                             rf"pixels, each from 1 to {MAX_PICTURE_SIDE}"):
            molecule_attention("CCO", edge_index, weights[0], size=size,
                               path=tmp_path / "big.png")
    assert not (tmp_path / "big.png").exists()


def test_pattern_mass_by_hand(tmp_path):
    names = ("bonds", "full", "virtual")
    w1 = torch.tensor([[0.2, 0.5], [0.8, 0.5], [1.0, 1.0]])
    m1 = torch.tensor([[1, 1, 0], [0, 1, 0], [0, 0, 1]], dtype=bool)
    w2 = torch.tensor([[0.5], [0.5]]).expand(2, 2)
    m2 = torch.tensor([[1, 1, 0], [1, 1, 0]], dtype=bool)
    shares, fig = pattern_attention_mass([w1, w2], [m1, m2], names, path=tmp_path / "p.png")
    # graph 1: total 4.0, bonds 0.7, full 2.0, virtual 2.0; graph 2: all bonds + full
    assert shares["bonds"] == pytest.approx((0.7 / 4 + 1.0) / 2)
    assert shares["full"] == pytest.approx((2.0 / 4 + 1.0) / 2)
    assert shares["virtual"] == pytest.approx((2.0 / 4 + 0.0) / 2)
    bars = fig.axes[0].patches
    assert [b.get_height() for b in bars] == pytest.approx(list(shares.values()))
    w, h = fig.canvas.get_width_height()
    assert_picture(tmp_path / "p.png", w, h)


def test_pattern_mass_from_a_model_with_virtual_tokens():
    torch.manual_seed(1)
    model = GraphTransformer(GraphTransformerConfig(hidden=8, layers=1, heads=2, rwse_steps=0,
                                                    pooling="virtual")).eval()
    graphs = [from_smiles(s) for s in ("CCO", "c1ccccc1", "CC(=O)N")]
    shares, _ = attention_mass_from_model(model, [Batch.from_data_list(graphs)])
    assert list(shares) == ["bonds", "full", "virtual"]
    assert shares["full"] == pytest.approx(1.0)  # every pair of a molecule incl. the token
    # by hand, graph by graph
    expected = []
    for g in graphs:
        with torch.no_grad():
            _, (ei, member, weights) = model(Batch.from_data_list([g]),
                                             return_attention_weights=True)
        w = weights[0].sum(1)
        expected.append([float(w[member[:, k]].sum() / w.sum()) for k in range(3)])
    assert list(shares.values()) == pytest.approx(np.mean(expected, axis=0).tolist(), abs=1e-5)


def test_a_heatmap_names_every_layer_or_is_refused():
    """Fewer names than layers drew only the named layers, without a word."""
    ei = torch.tensor([[0, 1, 0, 1], [0, 0, 1, 1]])
    w = [torch.full((4, 2), 0.5), torch.full((4, 2), 0.5)]          # 2 layers x 2 heads
    with pytest.raises(ValueError, match="'layer_name' names 1 layers, but 2 layers"):
        attention_heatmap(ei, w, layer_name=["first"])
    fig = attention_heatmap(ei, w, layer_name=["first", "second"])
    assert sum(1 for a in fig.axes if a.images) == 4
