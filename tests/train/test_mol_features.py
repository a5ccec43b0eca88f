"""Molecule features in training: cached with the graphs under their own key,
scaled by statistics of the training part only, off by default."""
import math
import multiprocessing

import pandas as pd
import pytest
import torch

from graphformer.data import RDKIT2D_NAMES
from graphformer.datasets import MoleculeCSVDataset, load_dataset
from graphformer.errors import ConfigError, DataError, UsageError
from graphformer.models import GraphTransformer, GraphTransformerConfig
from graphformer.train import prepare
from graphformer.train.config import DataConfig
from graphformer.train.data_checks import changed_parts
from tests.train.conftest import tiny_config


@pytest.fixture
def csv(tmp_path, tiny_csv):
    """The tiny set (60 molecules) with a numeric column ``w``."""
    frame = pd.read_csv(tiny_csv)
    frame["w"] = [float(k) for k in range(len(frame))]
    path = tmp_path / "w.csv"
    frame.to_csv(path, index=False)
    return path


def feature_config(csv, root):
    cfg = tiny_config(csv, root)
    cfg.data.molecule_features, cfg.data.feature_columns = ["rdkit2d"], ["w"]
    return cfg


def fitted_scaler(prepared, cfg):
    model = GraphTransformer(GraphTransformerConfig(
        hidden=8, layers=0, heads=1, rwse_steps=cfg.model.rwse_steps),
        mol_feature_names=prepared.bench.feature_names)
    model.fit_mol_features(prepared.train_mol_x)
    return model.mol_scaler.state_dict()


def test_scaling_statistics_come_from_the_training_part_only(csv, tmp_path):
    cfg = feature_config(csv, tmp_path / "cache")
    before = prepare(cfg, log=False)
    split = before.split
    assert before.train_mol_x.shape == (len(split["train"]), len(RDKIT2D_NAMES) + 1)
    assert before.train_mol_x[:, -1].tolist() == [float(i) for i in split["train"].tolist()]
    stats = fitted_scaler(before, cfg)

    frame = pd.read_csv(csv)
    t, v = int(split["test"][0]), int(split["train"][0])
    frame.loc[t, "w"] = 1e30                 # a test molecule's column value
    frame.loc[t, "smiles"] = "C" * 30        # and its descriptors
    frame.to_csv(csv, index=False)
    after = prepare(cfg, log=False)
    assert torch.equal(after.split["test"], split["test"])
    assert torch.equal(after.train_mol_x, before.train_mol_x)
    for key, value in fitted_scaler(after, cfg).items():
        assert torch.equal(value, stats[key]), key
    assert changed_parts(before.fingerprint, after.fingerprint) == [
        "test (6 molecules then, 6 now)"]

    frame.loc[v, "w"] = 1e30                 # a training value does move them
    frame.to_csv(csv, index=False)
    moved = fitted_scaler(prepare(cfg, log=False), cfg)
    assert moved["high"][-1] > stats["high"][-1]


def test_the_cache_key_changes_with_the_features(csv, tmp_path):
    root = tmp_path / "cache"
    plain = MoleculeCSVDataset(csv, "smiles", ["y"], root=root, log=False)
    desc = MoleculeCSVDataset(csv, "smiles", ["y"], root=root, log=False,
                              molecule_features=["rdkit2d"])
    both = MoleculeCSVDataset(csv, "smiles", ["y"], root=root, log=False,
                              molecule_features=["rdkit2d"], feature_columns=["w"])
    assert len({plain.processed_dir, desc.processed_dir, both.processed_dir}) == 3
    assert "mol_x" not in plain[0]
    assert desc[0].mol_x.shape == (1, len(RDKIT2D_NAMES))
    assert both[0].mol_x.shape == (1, len(RDKIT2D_NAMES) + 1) and both[3].mol_x[0, -1] == 3.0
    assert both.feature_names == RDKIT2D_NAMES + ("w",)
    again = MoleculeCSVDataset(csv, "smiles", ["y"], root=root, log=False)
    assert again.processed_dir == plain.processed_dir and "mol_x" not in again[0]


def test_features_are_off_by_default_and_checked():
    model = GraphTransformer(GraphTransformerConfig(hidden=8, layers=1, heads=2))
    assert model.mol_scaler is None
    assert not any(k.startswith("mol_scaler") for k in model.state_dict())
    assert model.head[0].in_features == 8
    wide = GraphTransformer(GraphTransformerConfig(hidden=8, layers=1, heads=2), mol_features=3)
    assert wide.head[0].in_features == 11 and wide.mol_feature_names == ()
    named = GraphTransformer(GraphTransformerConfig(hidden=8, layers=1, heads=2),
                             mol_feature_names=["a", "b"])
    assert named.mol_features == 2 and named.mol_feature_names == ("a", "b")
    assert named.head[0].in_features == 10
    with pytest.raises(ValueError, match="'mol_feature_names' must be empty or name each"):
        GraphTransformer(GraphTransformerConfig(), mol_features=2, mol_feature_names=("a",))
    with pytest.raises(ValueError, match="'mol_features' must be >= 0"):
        GraphTransformer(GraphTransformerConfig(), mol_features=-1)
    with pytest.raises(ValueError, match="a sequence of names"):
        GraphTransformer(GraphTransformerConfig(), mol_feature_names="ab")
    with pytest.raises(ConfigError, match="data.molecule_features"):
        DataConfig(molecule_features=["rdkit3d"])
    with pytest.raises(ConfigError, match="data.feature_columns"):
        DataConfig(dataset="a.csv", target_columns=["y"], feature_columns=["y"])
    with pytest.raises(UsageError, match="bundled data sets and SMILES CSV files only"):
        load_dataset("zinc", molecule_features=["rdkit2d"])


def test_a_batch_without_features_is_named(csv, tmp_path):
    from torch_geometric.data import Batch

    from graphformer.data import from_smiles

    model = GraphTransformer(GraphTransformerConfig(hidden=8, layers=1, heads=2, rwse_steps=0),
                             mol_features=2)
    with pytest.raises(ValueError, match="takes 2 molecule features but the batch has no"):
        model(Batch.from_data_list([from_smiles("CCO")]))
    out = model(Batch.from_data_list([from_smiles("CCO", feature_values=[1.0, math.nan])]))
    assert out.shape == (1, 1) and torch.isfinite(out).all()


def test_descriptors_are_the_default_for_smiles_data_sets_only():
    from graphformer.train.config import DataConfig, RunConfig

    assert DataConfig().molecule_features == ["rdkit2d"]                     # bundled ESOL
    assert DataConfig(dataset="Lipophilicity").molecule_features == ["rdkit2d"]
    assert DataConfig(dataset="my.csv", target_columns=["y"]).molecule_features == ["rdkit2d"]
    assert DataConfig(dataset="ogbg-molhiv").molecule_features == []
    assert DataConfig(dataset="zinc").molecule_features == []
    assert DataConfig(molecule_features=[]).molecule_features == []         # off, explicitly
    assert DataConfig(molecule_features=["none"]).molecule_features == []   # as the CLI says it
    assert DataConfig(molecule_features="none").molecule_features == []     # a config file's
    with pytest.raises(ConfigError, match="'none' cannot be combined with \\['rdkit2d'\\]"):
        DataConfig(molecule_features=["rdkit2d", "none"])
    # a saved run from before molecule features had none; a config file gets the default
    saved = RunConfig.from_saved({"data": {"dataset": "esol"}, "model": {}, "train": {}})
    assert saved.data.molecule_features == []
    assert RunConfig.from_dict({"data": {"dataset": "esol"}}).data.molecule_features == [
        "rdkit2d"]
    assert RunConfig.from_saved(saved.to_dict()).data.molecule_features == []


def test_cli_turns_the_default_descriptors_off_with_none():
    from graphformer.cli.commands import build_parser
    from graphformer.cli.train import config_from_args
    from graphformer.errors import UsageError

    parser = build_parser()
    assert config_from_args(parser.parse_args(["train"])).data.molecule_features == ["rdkit2d"]
    args = parser.parse_args(["train", "--molecule-features", "none"])
    assert config_from_args(args).data.molecule_features == []
    args = parser.parse_args(["train", "--molecule-features", "none", "rdkit2d"])
    with pytest.raises(UsageError, match="'none' cannot be combined"):
        config_from_args(args)


def test_descriptors_from_worker_processes_equal_in_process(csv, tmp_path, monkeypatch):
    """Descriptors are computed in worker processes for larger files, ahead of
    the graphs built from them: the cached features are exactly those of the
    in-process path, in row order, and a bad SMILES is still reported with
    its row (and stops the workers)."""
    import graphformer.data.molecule as molecule

    serial = MoleculeCSVDataset(csv, "smiles", ["y"], root=tmp_path / "a", log=False,
                                molecule_features=["rdkit2d"], feature_columns=["w"])
    monkeypatch.setattr(molecule, "PARALLEL_ABOVE", 2)
    smiles = list(pd.read_csv(csv)["smiles"])
    rows = molecule.molecule_set_features(smiles, ["rdkit2d"], workers=2)
    assert rows == molecule.molecule_set_features(smiles, ["rdkit2d"], workers=1)
    parallel = MoleculeCSVDataset(csv, "smiles", ["y"], root=tmp_path / "b", log=False,
                                  molecule_features=["rdkit2d"], feature_columns=["w"])
    assert len(parallel) == len(serial) == len(smiles)
    for a, b in zip(parallel, serial):
        torch.testing.assert_close(a.mol_x, b.mol_x, atol=0, rtol=0, equal_nan=True)
    frame = pd.read_csv(csv)
    frame.loc[4, "smiles"] = "C1CC"                     # an unclosed ring
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)
    assert molecule.molecule_set_features(list(frame["smiles"]), ["rdkit2d"], workers=2)[4] \
        is None
    with pytest.raises(DataError, match=r"bad.csv, row 5\)"):   # rows count from 1
        MoleculeCSVDataset(bad, "smiles", ["y"], root=tmp_path / "c", log=False,
                           molecule_features=["rdkit2d"])
    assert multiprocessing.active_children() == []      # the error stopped the workers
