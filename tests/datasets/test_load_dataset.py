"""load_dataset / make_split, and one training epoch, on real-layout OGB and
ZINC directories with the network blocked."""
import json

import pytest
import torch
from ogb.utils import smiles2graph

from graphformer.datasets import load_dataset, make_split
from graphformer.models import GraphTransformerConfig
from graphformer.train import RunConfig, train
from graphformer.train.config import DataConfig, TrainConfig
from tests.datasets.layouts import block_network, esol, write_ogbg_mol, write_zinc

SMALL = GraphTransformerConfig(hidden=16, layers=1, heads=2, rwse_steps=4)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    block_network(monkeypatch)


@pytest.mark.parametrize("name", ["ogbg-molesol", "molesol"])
def test_ogb_by_name_with_official_split(tmp_path, name):
    smiles, targets = esol(40)
    write_ogbg_mol(tmp_path / "ogb", smiles, targets)
    bench = load_dataset(name, tmp_path, log=False)
    assert bench.name == "ogbg-molesol" and bench.ogb_name == "ogbg-molesol"
    assert (bench.task, bench.num_tasks, bench.metric) == ("regression", 1, "rmse")
    assert len(bench.dataset) == 40
    g = smiles2graph(smiles[7])
    assert torch.equal(bench.dataset[7].x, torch.from_numpy(g["node_feat"]))
    split = make_split(bench)
    assert torch.equal(split["test"], bench.official_split["test"])
    assert sum(len(v) for v in split.values()) == 40


def test_train_on_ogb_uses_ogb_evaluator(tmp_path):
    smiles, targets = esol(40)
    write_ogbg_mol(tmp_path / "ogb", smiles, targets)
    cfg = RunConfig(DataConfig(dataset="ogbg-molesol", root=str(tmp_path)), SMALL,
                    TrainConfig(epochs=1, batch_size=16, threads=1, ensemble=1))
    summary = train(cfg, tmp_path / "run", progress=False)
    assert summary["metric"] == "rmse" and summary["test_rmse_at_best"] > 0
    row = json.loads((tmp_path / "run" / "metrics.json").read_text())[0]
    assert row["test_rmse"] == pytest.approx(row["test_rmse"])  # present and finite
    assert set(row) >= {"valid_rmse", "valid_mae", "test_rmse", "test_mae"}


def test_zinc_by_name_and_one_epoch(tmp_path):
    smiles, targets = esol(30)
    write_zinc(tmp_path / "zinc", smiles, targets)
    bench = load_dataset("zinc", tmp_path, log=False)
    assert (bench.features, bench.metric) == ("zinc", "mae")
    split = make_split(bench)
    assert sum(len(v) for v in split.values()) == len(bench.dataset)
    cfg = RunConfig(DataConfig(dataset="zinc", root=str(tmp_path)), SMALL,
                    TrainConfig(epochs=1, batch_size=8, threads=1, ensemble=1))
    summary = train(cfg, tmp_path / "run", progress=False)
    assert summary["metric"] == "mae" and summary["test_mae_at_best"] > 0


def test_unknown_name_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match="unknown data set 'qm7'"):
        load_dataset("qm7", tmp_path)
    with pytest.raises(FileNotFoundError, match="edge.csv.gz"):
        load_dataset("ogbg-molhiv", tmp_path)
