import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ogb.utils import smiles2graph

from graphformer.data import from_smiles
from graphformer.datasets.molecules import BUNDLED, bundled_dir

import pandas as pd


def assert_same_as_ogb(data, smiles):
    ref = smiles2graph(smiles)
    assert torch.equal(data.x, torch.from_numpy(ref["node_feat"]))
    assert torch.equal(data.edge_index, torch.from_numpy(ref["edge_index"]))
    assert torch.equal(data.edge_attr, torch.from_numpy(ref["edge_feat"]))
    assert data.num_nodes == ref["num_nodes"]
    assert data.x.dtype == data.edge_index.dtype == data.edge_attr.dtype == torch.long


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_every_bundled_molecule_parses_and_equals_ogb(name):
    frame = pd.read_csv(bundled_dir() / BUNDLED[name].file)
    assert len(frame) in (1128, 642, 4200)
    for smiles in frame["smiles"]:
        assert_same_as_ogb(from_smiles(smiles), smiles)


@pytest.mark.parametrize("smiles, atoms, bonds", [
    ("C", 1, 0), ("[Na+].[Cl-]", 2, 0), ("O", 1, 0), ("c1ccccc1", 6, 6),
    ("Cl[C@H](/C=C/C)Br", 6, 5),
])
def test_small_and_single_atom_molecules(smiles, atoms, bonds):
    data = from_smiles(smiles, y=[1.5, float("nan")])
    assert data.num_nodes == atoms and data.edge_index.size(1) == 2 * bonds
    assert data.edge_attr.shape == (2 * bonds, 3) and data.x.shape == (atoms, 9)
    assert data.smiles == smiles
    assert data.y.shape == (1, 2) and data.y[0, 0] == 1.5 and torch.isnan(data.y[0, 1])
    assert_same_as_ogb(data, smiles)


def test_chiral_atom_features_match_ogb_example():
    # The example in ogb.utils.features: the chiral carbon of Cl[C@H](/C=C/C)Br.
    assert from_smiles("Cl[C@H](/C=C/C)Br").x[1].tolist() == [5, 2, 4, 5, 1, 0, 2, 0, 0]


@pytest.mark.parametrize("bad, match", [
    ("C1CC", "cannot parse SMILES 'C1CC'"),
    ("", "empty SMILES"),
    ("   ", "empty SMILES"),
    ("CC(", "cannot parse SMILES 'CC\\('"),
    ("CCO ethanol", "contains the character ' '"),
    ("CC\x00C", "contains the character"),
    (None, "must be a string"),
    (42, "must be a string"),
])
def test_bad_smiles_are_quoted(bad, match):
    with pytest.raises(ValueError, match=match):
        from_smiles(bad)


def test_error_names_the_source():
    with pytest.raises(ValueError, match=r"'C1CC' \(mols.csv, row 7\)"):
        from_smiles("C1CC", where="mols.csv, row 7")


ALPHABET = "CNOSPFIBrcnos()[]=#@+-1234567890%/\\.Hl* \t\n\x00é"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=ALPHABET, max_size=30))
def test_fuzz_smiles_gives_a_graph_or_a_value_error(text):
    try:
        data = from_smiles(text)
    except ValueError as err:
        assert repr(text)[1:-1][:10] in str(err) or "string" in str(err)
        return
    # Nothing silently shortened: the graph has every heavy atom RDKit sees.
    ref = smiles2graph(text.strip())
    assert data.num_nodes == ref["num_nodes"] > 0
    assert np.array_equal(data.edge_index.numpy(), ref["edge_index"])
