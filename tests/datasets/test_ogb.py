"""graphformer.datasets.ogb on local copies of the real ogbg-molesol and
PCQM4Mv2 downloads, with the network and stdin unreachable."""
import json
import math
import os
import warnings

import numpy as np
import pytest
import torch
from ogb.utils import smiles2graph
from torch_geometric.data import Data

from graphformer.datasets.ogb import (
    OGBMolDataset,
    PCQM4Mv2Dataset,
    canonical_name,
    evaluate,
    load_ogb,
    ogb_mol_names,
)
from tests.datasets.layouts import (
    block_network,
    esol,
    read_gz_lines,
    write_ogbg_mol,
    write_pcqm4mv2,
)

N = 80
ESOL_URL = "http://snap.stanford.edu/ogb/data/graphproppred/csv_mol_download/esol.zip"
PCQM_URL = "https://dgl-data.s3-accelerate.amazonaws.com/dataset/OGB-LSC/pcqm4m-v2.zip"
RAW = ["edge.csv.gz", "node-feat.csv.gz", "edge-feat.csv.gz", "num-node-list.csv.gz",
       "num-edge-list.csv.gz", "graph-label.csv.gz"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    block_network(monkeypatch)


@pytest.fixture(scope="module")
def molecules():
    return esol(N)


def assert_graph_is_smiles2graph(data: Data, smiles: str) -> None:
    ref = smiles2graph(smiles)
    assert data.num_nodes == ref["num_nodes"]
    assert data.x.dtype == data.edge_index.dtype == data.edge_attr.dtype == torch.long
    assert torch.equal(data.x, torch.from_numpy(ref["node_feat"]))
    assert torch.equal(data.edge_index, torch.from_numpy(ref["edge_index"]))
    assert torch.equal(data.edge_attr, torch.from_numpy(ref["edge_feat"]))


def release_warnings(record):
    return [w for w in record if "RELEASE_v1.txt" in str(w.message)]


# ------------------------------------------------------------------ ogbg-molesol

def test_layout_is_ogbs_headerless_gzip_csv(tmp_path, molecules):
    smiles, targets = molecules
    lay = write_ogbg_mol(tmp_path, smiles, targets)
    assert sorted(p.name for p in (lay.folder / "raw").iterdir()) == sorted(RAW)
    ref0 = smiles2graph(smiles[0])
    # The first line is molecule 0's first bond, not a header.
    assert read_gz_lines(lay.folder / "raw" / "edge.csv.gz")[0] == \
        ",".join(map(str, ref0["edge_index"][:, 0]))
    assert read_gz_lines(lay.folder / "raw" / "num-node-list.csv.gz")[0] == str(ref0["num_nodes"])
    assert len(read_gz_lines(lay.folder / "raw" / "graph-label.csv.gz")) == N
    assert read_gz_lines(lay.folder / "mapping" / "mol.csv.gz")[0].endswith(",smiles,mol_id")


def test_molesol_values_labels_split(tmp_path, molecules, recwarn):
    smiles, targets = molecules
    lay = write_ogbg_mol(tmp_path, smiles, targets)
    ds = load_ogb("ogbg-molesol", tmp_path)
    assert isinstance(ds, OGBMolDataset)
    assert not release_warnings(recwarn)
    assert len(ds) == N
    assert (ds.num_tasks, ds.eval_metric, ds.task_type) == (1, "rmse", "regression")
    for k in range(N):
        g = ds[k]
        assert_graph_is_smiles2graph(g, smiles[k])
        assert g.y.shape == (1, 1) and g.y.dtype == torch.float32
        assert g.y.item() == pytest.approx(targets[k], rel=1e-6)
    split = ds.get_idx_split()
    assert set(split) == {"train", "valid", "test"}
    for key, idx in split.items():
        assert idx.dtype == torch.long
        assert idx.tolist() == lay.split[key]
    assert sorted(sum((v.tolist() for v in split.values()), [])) == list(range(N))
    # Indexing with the split gives the listed molecules.
    test = ds[split["test"]]
    assert torch.equal(test[0].x, torch.from_numpy(smiles2graph(smiles[lay.split["test"][0]])["node_feat"]))


def test_every_mol_name_is_known_and_aliases_resolve():
    names = ogb_mol_names()
    assert {"ogbg-molhiv", "ogbg-molpcba", "ogbg-molesol", "ogbg-molfreesolv",
            "ogbg-mollipo"} <= set(names)
    assert all(n.startswith("ogbg-mol") for n in names)
    assert canonical_name("molhiv") == canonical_name(" OGBG-MOLHIV ") == "ogbg-molhiv"
    assert canonical_name("PCQM4Mv2") == canonical_name("pcqm4m-v2") == "pcqm4mv2"
    with pytest.raises(ValueError, match="ogbg-molhiv"):
        canonical_name("ogbg-ppa")
    with pytest.raises(ValueError, match="unknown"):
        load_ogb("ogbg-molnothing", "unused")


def test_second_load_uses_the_cache(tmp_path, molecules, monkeypatch):
    smiles, targets = molecules
    write_ogbg_mol(tmp_path, smiles, targets)
    first = load_ogb("ogbg-molesol", tmp_path)
    processed = first.processed_paths[0]
    assert os.path.isfile(processed)
    stamp = os.stat(processed).st_mtime_ns

    def no_reprocess(self):
        raise AssertionError("processed again")

    monkeypatch.setattr(OGBMolDataset, "process", no_reprocess)
    second = load_ogb("ogbg-molesol", tmp_path)
    assert os.stat(processed).st_mtime_ns == stamp
    assert len(second) == N
    for k in (0, N // 2, N - 1):
        assert torch.equal(second[k].edge_index, first[k].edge_index)
        assert torch.equal(second[k].x, first[k].x)
        assert torch.equal(second[k].y, first[k].y)


def test_processed_file_in_pygs_own_format_loads_too(tmp_path, molecules):
    smiles, targets = molecules
    write_ogbg_mol(tmp_path, smiles, targets)
    ds = load_ogb("ogbg-molesol", tmp_path)
    # Re-save in PyG's format, (dict, slices, cls), instead of ogb's (Data, slices).
    torch.save((ds._data.to_dict(), ds.slices, Data), ds.processed_paths[0])
    again = load_ogb("ogbg-molesol", tmp_path)
    assert len(again) == N
    assert_graph_is_smiles2graph(again[3], smiles[3])


def test_missing_release_file_warns_and_never_reads_stdin(tmp_path, molecules):
    smiles, targets = molecules
    write_ogbg_mol(tmp_path, smiles, targets, release=False)
    # builtins.input raises (block_network), so a prompt would fail the test.
    with pytest.warns(UserWarning, match="RELEASE_v1.txt.*never prompts.*keeps using"):
        ds = load_ogb("ogbg-molesol", tmp_path)
    assert len(ds) == N
    assert_graph_is_smiles2graph(ds[5], smiles[5])
    assert (tmp_path / "ogbg_molesol" / "raw" / "edge.csv.gz").is_file()  # nothing deleted


def test_missing_raw_files_name_paths_and_url(tmp_path, molecules):
    smiles, targets = molecules
    lay = write_ogbg_mol(tmp_path, smiles, targets)
    (lay.folder / "raw" / "node-feat.csv.gz").unlink()
    (lay.folder / "raw" / "graph-label.csv.gz").unlink()
    with pytest.raises(FileNotFoundError) as err:
        load_ogb("ogbg-molesol", tmp_path)
    msg = str(err.value)
    assert str(lay.folder / "raw" / "node-feat.csv.gz") in msg
    assert str(lay.folder / "raw" / "graph-label.csv.gz") in msg
    assert str(lay.folder / "raw" / "edge.csv.gz") not in msg  # present, not listed
    assert ESOL_URL in msg and str(lay.folder) in msg
    assert not (lay.folder / "processed").exists()


def test_empty_root_raises_before_creating_anything(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_ogb("ogbg-molhiv", tmp_path)
    msg = str(err.value)
    for f in RAW:
        assert str(tmp_path / "ogbg_molhiv" / "raw" / f) in msg
    assert "csv_mol_download/hiv.zip" in msg
    assert list(tmp_path.iterdir()) == []


def test_missing_split_files_raise_clearly(tmp_path, molecules):
    smiles, targets = molecules
    lay = write_ogbg_mol(tmp_path, smiles, targets)
    ds = load_ogb("ogbg-molesol", tmp_path)
    (lay.folder / "split" / "scaffold" / "valid.csv.gz").unlink()
    with pytest.raises(FileNotFoundError, match="valid.csv.gz"):
        ds.get_idx_split()


def test_split_dict_pt_shortcut_with_numpy_arrays(tmp_path, molecules):
    smiles, targets = molecules
    lay = write_ogbg_mol(tmp_path, smiles, targets)
    ds = load_ogb("ogbg-molesol", tmp_path)
    custom = {"train": np.arange(0, 50), "valid": np.arange(50, 60), "test": np.arange(60, N)}
    torch.save(custom, lay.folder / "split" / "scaffold" / "split_dict.pt")
    split = ds.get_idx_split()
    assert {k: v.tolist() for k, v in split.items()} == {k: v.tolist() for k, v in custom.items()}


# ---------------------------------------------------------------------- PCQM4Mv2

def test_pcqm4mv2_values_labels_split(tmp_path, molecules, recwarn):
    smiles, targets = molecules
    lay = write_pcqm4mv2(tmp_path, smiles, targets)
    ds = load_ogb("pcqm4mv2", tmp_path)
    assert isinstance(ds, PCQM4Mv2Dataset)
    assert not release_warnings(recwarn)
    assert len(ds) == N
    for k in range(N):
        g = ds[k]
        assert_graph_is_smiles2graph(g, smiles[k])
        assert g.y.shape == (1,)
        if math.isnan(lay.targets[k]):
            assert torch.isnan(g.y).item()
        else:
            assert g.y.item() == pytest.approx(lay.targets[k], rel=1e-6)
    split = ds.get_idx_split()
    assert {k: v.tolist() for k, v in split.items()} == lay.split
    assert all(not torch.isnan(ds[i].y).item() for i in split["train"].tolist())


@pytest.mark.parametrize("fmt", ["numpy1", "torch"])
def test_pcqm4mv2_split_dict_formats(tmp_path, molecules, fmt):
    smiles, targets = molecules
    lay = write_pcqm4mv2(tmp_path, smiles[:30], targets[:30], split_format=fmt)
    ds = PCQM4Mv2Dataset(tmp_path)
    split = ds.get_idx_split()
    assert all(v.dtype == torch.long for v in split.values())
    assert {k: v.tolist() for k, v in split.items()} == lay.split


def test_pcqm4mv2_cache_release_and_missing_files(tmp_path, molecules, monkeypatch):
    smiles, targets = molecules
    lay = write_pcqm4mv2(tmp_path, smiles[:30], targets[:30], release=False)
    with pytest.warns(UserWarning, match="RELEASE_v1.txt"):
        first = load_ogb("pcqm4mv2", tmp_path)
    stamp = os.stat(first.processed_paths[0]).st_mtime_ns
    monkeypatch.setattr(PCQM4Mv2Dataset, "process",
                        lambda self: (_ for _ in ()).throw(AssertionError("processed again")))
    with pytest.warns(UserWarning, match="RELEASE_v1.txt"):
        second = load_ogb("pcqm4mv2", tmp_path)
    assert os.stat(first.processed_paths[0]).st_mtime_ns == stamp
    assert torch.equal(second[7].x, first[7].x)

    (lay.folder / "split_dict.pt").unlink()
    (lay.folder / "raw" / "data.csv.gz").unlink()
    with pytest.raises(FileNotFoundError) as err, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_ogb("pcqm4mv2", tmp_path)
    msg = str(err.value)
    assert str(lay.folder / "raw" / "data.csv.gz") in msg
    assert str(lay.folder / "split_dict.pt") in msg
    assert PCQM_URL in msg


def test_pcqm4mv2_empty_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="pcqm4m-v2.zip"):
        load_ogb("PCQM4Mv2", tmp_path)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------- evaluate

def test_evaluate_rmse_matches_hand_computation(molecules):
    _, targets = molecules
    y_true = np.asarray(targets[:40])
    y_pred = y_true + np.sin(np.arange(40))
    rmse = math.sqrt(sum((a - b) ** 2 for a, b in zip(y_true, y_pred)) / 40)
    for true, pred in [(y_true, y_pred), (y_true.reshape(-1, 1), y_pred.reshape(-1, 1)),
                       (torch.tensor(y_true), torch.tensor(y_pred))]:
        out = evaluate("ogbg-molesol", true, pred)
        assert set(out) == {"rmse"} and type(out["rmse"]) is float
        assert out["rmse"] == pytest.approx(rmse, rel=1e-12)
    json.dumps(out)


def test_evaluate_rocauc_and_pcqm_mae():
    y_true = np.array([0, 0, 1, 1, 0, 1])
    y_pred = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    # Pairs (positive, negative) ranked correctly: 8 of 9.
    assert evaluate("molhiv", y_true, y_pred) == {"rocauc": pytest.approx(8 / 9)}
    out = evaluate("pcqm4mv2", torch.tensor([[1.0], [2.0], [4.0]]), torch.tensor([1.5, 2.0, 3.0]))
    assert out == {"mae": pytest.approx(0.5)} and type(out["mae"]) is float
    json.dumps(out)


def test_encoded_graphs_follow_a_data_set_processed_again(tmp_path, molecules, monkeypatch):
    """With encodings the graphs are cached per transform: a data set replaced
    by another release of the same size (OGB's advice: delete the folder,
    unpack the new one) served the old labels from that cache."""
    import shutil

    from graphformer.data.encodings import encodings
    from graphformer.datasets import load_dataset
    from graphformer.datasets.encoded import EncodedDataset

    smiles, targets = molecules
    enc = encodings(rwse_steps=4)
    write_ogbg_mol(tmp_path / "ogb", smiles, targets)
    first = load_dataset("ogbg-molesol", tmp_path, pre_transform=enc, log=False).dataset
    assert first[0].y.item() == pytest.approx(targets[0])

    def no_encoding(self):
        raise AssertionError("encoded again")

    with monkeypatch.context() as m:                      # the same data: the cache
        m.setattr(EncodedDataset, "process", no_encoding)
        again = load_dataset("ogbg-molesol", tmp_path, pre_transform=enc, log=False).dataset
        assert torch.equal(again[0].rwse, first[0].rwse)
    shutil.rmtree(tmp_path / "ogb" / "ogbg_molesol")
    write_ogbg_mol(tmp_path / "ogb", smiles, [t + 100 for t in targets])
    new = load_dataset("ogbg-molesol", tmp_path, pre_transform=enc, log=False).dataset
    assert [round(new[k].y.item() - 100, 4) for k in (0, N - 1)] == \
        [round(targets[k], 4) for k in (0, N - 1)]
