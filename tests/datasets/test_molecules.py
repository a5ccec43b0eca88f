import math

import pandas as pd
import pytest
import torch

from graphformer.data import from_smiles
from graphformer.datasets.molecules import BUNDLED, MoleculeCSVDataset, bundled_dir, load_bundled


@pytest.mark.parametrize("name, rows, first_y", [
    ("esol", 1128, -0.77), ("freesolv", 642, -11.01), ("lipophilicity", 4200, 3.54),
])
def test_bundled_sets_load_offline(tmp_path, name, rows, first_y):
    ds = load_bundled(name, root=tmp_path, log=False)
    assert len(ds) == rows and ds.num_tasks == 1
    frame = pd.read_csv(bundled_dir() / BUNDLED[name].file)
    assert ds[0].y.item() == pytest.approx(first_y)
    torch.testing.assert_close(ds.y.view(-1), torch.tensor(frame[BUNDLED[name].target_column].values,
                                                             dtype=torch.float))
    k = rows // 2
    assert ds[k].smiles == frame["smiles"][k]
    assert torch.equal(ds[k].x, from_smiles(frame["smiles"][k]).x)


def test_bundled_provenance_ships_beside_the_data():
    text = (bundled_dir() / "PROVENANCE.md").read_text()
    assert "gauche" in text and (bundled_dir() / "LICENSE-gauche").is_file()


def write(path, text):
    path.write_text(text)
    return path


def test_csv_with_several_targets_and_missing_values(tmp_path):
    csv = write(tmp_path / "mols.csv", "id,smi,a,b\nm1,CCO,1.5,\nm2,c1ccccc1,,2\nm3,C,NaN,0.25\n")
    ds = MoleculeCSVDataset(csv, "smi", ["a", "b"], root=tmp_path / "cache", log=False)
    assert len(ds) == 3 and ds.num_tasks == 2
    y = ds.y
    assert y.shape == (3, 2)
    assert y[0, 0] == 1.5 and math.isnan(y[0, 1])
    assert math.isnan(y[1, 0]) and y[1, 1] == 2
    assert math.isnan(y[2, 0]) and y[2, 1] == 0.25
    assert [d.smiles for d in ds] == ["CCO", "c1ccccc1", "C"]


def test_classification_targets(tmp_path):
    csv = write(tmp_path / "tox.csv", "smiles,t1,t2\nCCO,1,0\nCCN,0,\n")
    ds = MoleculeCSVDataset(csv, target_columns=["t1", "t2"], task="classification",
                            root=tmp_path / "c", log=False)
    assert ds.y[0].tolist() == [1.0, 0.0] and ds.y[1, 0] == 0 and math.isnan(ds.y[1, 1])
    bad = write(tmp_path / "bad.csv", "smiles,t1\nCCO,1\nCCN,0.5\n")
    with pytest.raises(ValueError, match=r"bad.csv, row 2, column 't1': .* must be 0 or 1"):
        MoleculeCSVDataset(bad, target_columns=["t1"], task="classification",
                           root=tmp_path / "d", log=False)


@pytest.mark.parametrize("text, match", [
    ("smiles,y\nCCO,1\nC1CC,2\n", r"cannot parse SMILES 'C1CC' \(.*bad.csv, row 2\)"),
    ("smiles,y\nCCO,1\nCCN,abc\n", r"bad.csv, row 2, column 'y': target 'abc' is not a number"),
    ("smi,y\nCCO,1\n", r"bad.csv: no column 'smiles'; the columns are \['smi', 'y'\]"),
    ("smiles,y\nCCO,1\n,2\n", r"empty SMILES '' \(.*bad.csv, row 2\)"),
    # every row one field longer (a trailing comma): pandas would make the
    # SMILES an index and read the targets as SMILES
    ("smiles,y\nCCO,0.5,\nC,1.5,\n", r"bad.csv, row 1: 3 fields, but the header names 2"),
])
def test_bad_rows_are_named(tmp_path, text, match):
    csv = write(tmp_path / "bad.csv", text)
    with pytest.raises(ValueError, match=match):
        MoleculeCSVDataset(csv, target_columns=["y"], root=tmp_path / "cache", log=False)


def test_cache_is_reused_and_refreshed_when_the_source_changes(tmp_path):
    csv = write(tmp_path / "m.csv", "smiles,y\nCCO,1\nCCC,2\n")
    first = MoleculeCSVDataset(csv, target_columns=["y"], root=tmp_path / "cache", log=False)
    processed = list((tmp_path / "cache" / "processed").glob("*/m.pt"))
    assert len(processed) == 1
    stamp = processed[0].stat().st_mtime_ns
    again = MoleculeCSVDataset(csv, target_columns=["y"], root=tmp_path / "cache", log=False)
    assert processed[0].stat().st_mtime_ns == stamp and torch.equal(again.y, first.y)
    write(csv, "smiles,y\nCCO,1\nCCC,2\nCCCC,3\n")
    changed = MoleculeCSVDataset(csv, target_columns=["y"], root=tmp_path / "cache", log=False)
    assert len(changed) == 3 and changed.y.view(-1).tolist() == [1, 2, 3]
    # Other encodings are another cache entry, not a stale hit.
    from torch_geometric.transforms import AddRandomWalkPE
    for steps in (4, 8):
        enc = MoleculeCSVDataset(csv, target_columns=["y"], root=tmp_path / "cache", log=False,
                                 pre_transform=AddRandomWalkPE(steps, attr_name="rwse"))
        assert enc[0].rwse.shape == (3, steps)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no CSV file at"):
        MoleculeCSVDataset(tmp_path / "nope.csv", target_columns=["y"])
