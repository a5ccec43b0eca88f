"""Large molecules: the graph of a SMILES takes time linear in its atoms and
bonds; RDKit's descriptors (quadratic or worse) are refused above
``MAX_DESCRIPTOR_ATOMS`` atoms, naming the molecule and its row."""
import numpy as np
import pandas as pd
import pytest
import torch
from ogb.utils.features import atom_to_feature_vector, bond_to_feature_vector

from graphformer.data import from_smiles
from graphformer.data.molecule import (MAX_DESCRIPTOR_ATOMS, bonds_of, molecule_set_features,
                                       parse_smiles)
from graphformer.datasets.molecules import bundled_dir
from graphformer.errors import DataError


def reference_graph(smiles):
    """The graph as ``from_mol`` built it before ``bonds_of``: RDKit's
    ``mol.GetBonds()`` (quadratic in the bonds), each bond both ways."""
    mol = parse_smiles(smiles)
    x = [atom_to_feature_vector(a) for a in mol.GetAtoms()]
    src, dst, attr = [], [], []
    for bond in mol.GetBonds():
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        src += [i, j]
        dst += [j, i]
        attr += [bond_to_feature_vector(bond)] * 2
    return (torch.tensor(x, dtype=torch.long), torch.tensor([src, dst], dtype=torch.long),
            torch.tensor(attr, dtype=torch.long).view(-1, 3))


@pytest.mark.parametrize("name", ["ESOL.csv", "FreeSolv.csv"])
def test_graphs_of_the_bundled_sets_are_those_of_rdkits_bond_order(name):
    frame = pd.read_csv(bundled_dir() / name)
    column = next(c for c in frame.columns if c.lower() == "smiles")
    for smiles in frame[column]:
        data = from_smiles(smiles)
        x, edge_index, edge_attr = reference_graph(smiles)
        assert torch.equal(data.x, x) and data.x.dtype == torch.long, smiles
        assert torch.equal(data.edge_index, edge_index), smiles
        assert torch.equal(data.edge_attr, edge_attr), smiles


def test_bonds_of_is_rdkits_bond_order_with_rings_and_fragments():
    mol = parse_smiles("c1ccccc1" * 300 + ".C1CC2CCC1C2.[Na+].[Cl-]")
    assert [b.GetIdx() for b in bonds_of(mol)] == list(range(mol.GetNumBonds()))
    assert [(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in bonds_of(mol)] == \
        [(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds()]


def test_a_30000_atom_chain_becomes_its_graph():
    # mol.GetBonds() took 8 s for 40,000 bonds and a minute for 80,000; the
    # graph is now linear in them (a 200,000-atom chain: about 4 s)
    n = 30000
    data = from_smiles("C" * n)
    assert data.x.shape == (n, 9) and data.edge_attr.shape == (2 * (n - 1), 3)
    i = torch.arange(n - 1)
    expected = torch.stack([torch.stack([i, i + 1], 1).reshape(-1),   # each bond both ways
                            torch.stack([i + 1, i], 1).reshape(-1)])
    assert torch.equal(data.edge_index, expected)


def test_descriptors_of_a_molecule_above_the_limit_are_refused_naming_it():
    big = "C" * (MAX_DESCRIPTOR_ATOMS + 1)
    with pytest.raises(DataError) as err:
        from_smiles(big, molecule_feature_sets=["rdkit2d"], where="big.csv, row 7")
    text = str(err.value)
    assert f"has {MAX_DESCRIPTOR_ATOMS + 1} atoms (big.csv, row 7)" in text
    assert f"at most {MAX_DESCRIPTOR_ATOMS} atoms" in text and "--molecule-features none" in text
    assert len(text) < 400   # the SMILES is shortened, not quoted whole
    # the graph alone is fine, and so is a molecule at the limit
    assert from_smiles(big).num_nodes == MAX_DESCRIPTOR_ATOMS + 1
    # worker path: None for the too-large one, as for one that does not parse
    assert molecule_set_features([big, "CCO"], ["rdkit2d"], workers=1)[0] is None
    assert np.isfinite(molecule_set_features(["CCO"], ["rdkit2d"], workers=1)[0][4])
