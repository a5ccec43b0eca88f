"""graphformer.datasets.zinc on a local copy of ZINC's raw layout built from
ESOL molecules, with the network and stdin unreachable."""
import os

import pytest
import torch

from graphformer.datasets.zinc import (
    ZINC_ATOM_TYPES,
    ZINC_BOND_TYPES,
    OfflineZINC,
    load_zinc,
    parse_zinc_atom_type,
)
from tests.datasets.layouts import block_network, esol, write_zinc, zinc_kekulized

N = 60
RDKIT_BOND = {"SINGLE": 1, "DOUBLE": 2, "TRIPLE": 3}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    block_network(monkeypatch)


@pytest.fixture(scope="module")
def zinc_root(tmp_path_factory):
    """One raw layout, shared: the loaders only add processed/ folders to it."""
    root = tmp_path_factory.mktemp("zinc")
    smiles, targets = esol(N)
    return write_zinc(root, smiles, targets)


def edges_of(data):
    return {(int(i), int(j)): int(t)
            for (i, j), t in zip(data.edge_index.t().tolist(), data.edge_attr.tolist())}


def assert_matches_rdkit(data, smiles):
    """Atom types and bond types of ``data`` are RDKit's (kekulé form)."""
    mol = zinc_kekulized(smiles)
    assert data.x.shape == (mol.GetNumAtoms(), 1) and data.x.dtype == torch.long
    for atom, t in zip(mol.GetAtoms(), data.x.view(-1).tolist()):
        assert parse_zinc_atom_type(t) == (atom.GetSymbol(), atom.GetNumExplicitHs(),
                                           atom.GetFormalCharge())
    expected = {}
    for b in mol.GetBonds():
        i, j, t = b.GetBeginAtomIdx(), b.GetEndAtomIdx(), RDKIT_BOND[str(b.GetBondType())]
        expected[(i, j)] = expected[(j, i)] = t
    assert edges_of(data) == expected
    assert data.edge_index.size(1) == 2 * mol.GetNumBonds()


def test_subset_split_values(zinc_root):
    lay = zinc_root
    # Every molecule is in a pickle, unless the fixture skipped it (none of
    # these 60: aromatic [nH] kekulizes to an implicit-H 'N', as in ZINC).
    assert sum(len(v) for v in lay.smiles.values()) + len(lay.skipped) == N
    for split in ("train", "val", "test"):
        ds = load_zinc(lay.root, subset=True, split=split)
        index = lay.index[split]
        assert len(ds) == len(index)
        for k, i in enumerate(index):
            g = ds[k]
            assert_matches_rdkit(g, lay.smiles[split][i])
            assert g.y.shape == (1,)
            assert g.y.item() == pytest.approx(lay.targets[split][i], rel=1e-6)
    assert (lay.root / "subset" / "processed" / "train.pt").is_file()


def test_full_set_keeps_pickle_order(zinc_root):
    lay = zinc_root
    ds = load_zinc(lay.root, subset=False, split="train")
    assert len(ds) == len(lay.smiles["train"]) > len(lay.index["train"])
    for k, s in enumerate(lay.smiles["train"]):
        assert_matches_rdkit(ds[k], s)
        assert ds[k].y.item() == pytest.approx(lay.targets["train"][k], rel=1e-6)


def test_fenfuram_by_hand(zinc_root):
    """ESOL's 2nd molecule, Cc1occc1C(=O)Nc2ccccc2 (C12 H11 N O2), checked
    without RDKit: 15 atoms, 16 bonds, 6 of them double in kekulé form."""
    lay = zinc_root
    smiles = "Cc1occc1C(=O)Nc2ccccc2"
    k = lay.smiles["train"].index(smiles)
    g = load_zinc(lay.root, subset=False, split="train")[k]
    types = [ZINC_ATOM_TYPES[t] for t in g.x.view(-1).tolist()]
    assert sorted(types) == sorted(["C"] * 12 + ["O"] * 2 + ["N"])
    bonds = [ZINC_BOND_TYPES[t] for (i, j), t in edges_of(g).items() if i < j]
    assert len(bonds) == 16
    assert bonds.count("DOUBLE") == 6 and bonds.count("SINGLE") == 10
    assert g.y.item() == pytest.approx(-3.3)


def test_charged_atoms_nitro(zinc_root):
    """ESOL writes nitro groups uncharged (N(=O)=O); RDKit, like ZINC, makes
    them N+ (double bond to one O) and O-, ZINC's types 'N +' and 'O -'."""
    lay = zinc_root
    all_smiles = [(s, split, k) for split in ("train", "val", "test")
                  for k, s in enumerate(lay.smiles[split])]
    s, split, k = next(t for t in all_smiles if "N(=O)=O" in t[0])
    g = load_zinc(lay.root, subset=False, split=split)[k]
    types = g.x.view(-1).tolist()
    n_plus, o_minus = ZINC_ATOM_TYPES.index("N +"), ZINC_ATOM_TYPES.index("O -")
    assert n_plus in types and o_minus in types
    e = edges_of(g)
    n = types.index(n_plus)
    oxygens = {j: t for (i, j), t in e.items() if i == n and ZINC_ATOM_TYPES[types[j]][0] == "O"}
    assert sorted(oxygens.values()) == [1, 2]
    assert types[min(oxygens, key=oxygens.get)] == o_minus  # the single-bonded O is O-


def test_second_load_uses_the_cache(zinc_root, monkeypatch):
    lay = zinc_root
    first = load_zinc(lay.root, subset=True, split="val")
    path = lay.root / "subset" / "processed" / "val.pt"
    stamp = os.stat(path).st_mtime_ns

    def no_reprocess(self):
        raise AssertionError("processed again")

    monkeypatch.setattr(OfflineZINC, "process", no_reprocess)
    second = load_zinc(lay.root, subset=True, split="val")
    assert os.stat(path).st_mtime_ns == stamp
    assert len(second) == len(first)
    assert torch.equal(second[0].edge_index, first[0].edge_index)


def test_missing_raw_files_name_paths_and_url(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_zinc(tmp_path)
    msg = str(err.value)
    for f in ("train.pickle", "val.pickle", "test.pickle", "train.index", "val.index",
              "test.index"):
        assert str(tmp_path / "raw" / f) in msg
    assert "molecules.zip" in msg and "benchmarking-gnns" in msg
    assert list(tmp_path.iterdir()) == []


def test_one_missing_index_file(tmp_path):
    smiles, targets = esol(12)
    lay = write_zinc(tmp_path, smiles, targets)
    (lay.root / "raw" / "val.index").unlink()
    with pytest.raises(FileNotFoundError) as err:
        load_zinc(tmp_path, subset=False)
    assert str(tmp_path / "raw" / "val.index") in str(err.value)
    assert str(tmp_path / "raw" / "train.pickle") not in str(err.value)


def test_an_index_file_without_its_line_break_is_refused(tmp_path):
    """PyG's reader drops an .index file's last character (its line break):
    without one, the last index would lose a digit and pick another molecule."""
    smiles, targets = esol(12)
    lay = write_zinc(tmp_path, smiles, targets)
    path = lay.root / "raw" / "test.index"
    path.write_text(path.read_text().rstrip("\n"))
    with pytest.raises(ValueError, match=r"test.index does not end with a line break"):
        load_zinc(tmp_path, subset=True, split="train")


def test_bad_split_and_atom_type_names():
    with pytest.raises(ValueError, match="split"):
        load_zinc("unused", split="valid")
    assert parse_zinc_atom_type("N H1 +") == ("N", 1, 1)
    assert parse_zinc_atom_type(7) == ("O", 0, -1)
    assert parse_zinc_atom_type("C H2 -") == ("C", 2, -1)
    with pytest.raises(ValueError):
        parse_zinc_atom_type(28)
