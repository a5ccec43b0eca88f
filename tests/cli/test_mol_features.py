"""Molecule features on the command line: ``train --molecule-features rdkit2d
--feature-columns ...``, then ``evaluate`` and ``predict`` from the
checkpoint, which must give what the model gave in training."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch_geometric.loader import DataLoader

from graphformer.cli import main
from graphformer.data import RDKIT2D_NAMES
from graphformer.datasets.molecules import bundled_dir
from graphformer.models import GraphTransformer
from graphformer.train import predict, prepare
from graphformer.train.checkpoint import load_run
from graphformer.train.metrics import compute_metrics
from tests.cli.test_bad_input import assert_error, cli

TINY = ["--hidden", "16", "--layers", "1", "--heads", "2", "--rwse-steps", "4",
        "--batch-size", "16", "--threads", "1", "--split", "random", "--quiet",
        "--ensemble", "1"]
FEATURES = ["--molecule-features", "rdkit2d", "--feature-columns", "mw", "rings"]


@pytest.fixture(scope="module")
def csv(tmp_path_factory):
    """40 ESOL molecules with two numeric columns, one with missing cells."""
    frame = pd.read_csv(bundled_dir() / "ESOL.csv").head(40)
    rings = frame["Number of Rings"].astype(object)
    rings[[3, 17]] = ""
    path = tmp_path_factory.mktemp("feat") / "mols.csv"
    pd.DataFrame({"smiles": frame["smiles"], "mw": frame["Molecular Weight"], "rings": rings,
                  "y": frame["measured log solubility in mols per litre"]}
                 ).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def run(csv, tmp_path_factory, one_thread_module):
    tmp = tmp_path_factory.mktemp("feat-run")
    code = main(["train", "--dataset", str(csv), "--target-columns", "y", "--epochs", "2",
                 "--root", str(tmp / "cache"), "--run-dir", str(tmp / "run"), *FEATURES, *TINY])
    assert code == 0
    return tmp


@pytest.fixture(scope="module")
def one_thread_module():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_checkpoint_knows_its_features_and_scaling(run):
    state, cfg, model = load_run(run / "run" / "best.pt")
    names = RDKIT2D_NAMES + ("mw", "rings")
    assert cfg.data.molecule_features == ["rdkit2d"] and cfg.data.feature_columns == ["mw", "rings"]
    assert model.mol_features == len(names) and model.mol_feature_names == names
    assert state["mol_feature_names"] == list(names)    # beside the config, not in it
    saved = json.loads((run / "run" / "config.json").read_text())
    assert not {"mol_features", "mol_feature_names", "attention_backend"} & set(saved["model"])
    assert saved["train"]["attention_backend"] == "auto"
    # the scaler's statistics are the training part's, stored with the weights
    prepared = prepare(cfg, log=False)
    fresh = GraphTransformer(cfg.model, mol_feature_names=names)
    fresh.fit_mol_features(prepared.train_mol_x)
    for key in ("median", "low", "high", "scale"):
        assert torch.equal(state["model"][f"mol_scaler.{key}"],
                           getattr(fresh.mol_scaler, key))
    train_mw = prepared.train_mol_x[:, -2].double().numpy()
    assert model.mol_scaler.median[-2].item() == pytest.approx(np.median(train_mw))


def test_evaluate_and_predict_give_the_models_training_predictions(run, csv, tmp_path, capsys):
    state, cfg, model = load_run(run / "run" / "best.pt")
    prepared = prepare(cfg, log=False)
    # in memory: the cached graphs of the data set, through the trained model
    loader = DataLoader(list(prepared.bench.dataset), batch_size=7)
    expected = predict(model, loader, state["y_mean"], state["y_std"], torch.device("cpu"))
    # the metrics recorded in training at the best epoch are these predictions'
    test = prepared.split["test"]
    y = torch.stack([prepared.bench.dataset[i].y.view(-1) for i in test.tolist()])
    recorded = json.loads((run / "run" / "metrics.json").read_text())[state["epoch"] - 1]
    metrics = compute_metrics(y.numpy(), expected[test].numpy(), "regression")
    assert metrics["rmse"] == pytest.approx(recorded["test_rmse"], rel=1e-5)

    assert main(["evaluate", str(run / "run" / "best.pt")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["data"] == "unchanged"
    assert result["test"]["rmse"] == pytest.approx(recorded["test_rmse"], rel=1e-5)
    assert result["valid"]["rmse"] == pytest.approx(recorded["valid_rmse"], rel=1e-5)

    # predict computes the descriptors anew from the SMILES and reads the columns
    out = tmp_path / "pred.csv"
    assert main(["predict", str(run / "run" / "best.pt"), str(csv), "-o", str(out)]) == 0
    got = pd.read_csv(out)["y"].to_numpy()
    np.testing.assert_allclose(got, expected[:, 0].numpy(), rtol=1e-5, atol=1e-5)


def test_predict_needs_the_feature_columns(run, csv, tmp_path):
    frame = pd.read_csv(csv).drop(columns=["rings"])
    src = tmp_path / "no_rings.csv"
    frame.to_csv(src, index=False)
    assert_error(cli("predict", run / "run" / "best.pt", src, "-o", tmp_path / "p.csv"), 2,
                 "no column 'rings'", "no_rings.csv")
    frame = pd.read_csv(csv)
    frame["mw"] = frame["mw"].astype(object)
    frame.loc[5, "mw"] = "heavy"
    src = tmp_path / "bad.csv"
    frame.to_csv(src, index=False)
    assert_error(cli("predict", run / "run" / "best.pt", src, "-o", tmp_path / "p.csv"), 1,
                 "bad.csv, row 6, column 'mw'", "'heavy' is not a number")


def test_bad_feature_column_value_and_missing_column_are_named(csv, tmp_path):
    text = csv.read_text().splitlines()
    cells = text[3].split(",")
    cells[1] = "12,5kg"
    text[3] = ",".join(cells[:1] + ['"12,5kg"'] + cells[2:])
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(text) + "\n")
    args = ["train", "--target-columns", "y", "--root", tmp_path / "cache", "--run-dir",
            tmp_path / "run", "--epochs", "1", *TINY]
    assert_error(cli(*args, "--dataset", bad, "--feature-columns", "mw"), 1,
                 "bad.csv, row 3, column 'mw'", "'12,5kg' is not a number")
    assert_error(cli(*args, "--dataset", csv, "--feature-columns", "mw", "weight"), 2,
                 "no column 'weight'", "mols.csv")
    assert_error(cli(*args, "--dataset", csv, "--feature-columns", "y"), 2,
                 "--feature-columns", "'y'")
    assert_error(cli(*args, "--dataset", csv, "--molecule-features", "rdkit3d"), 2,
                 "--molecule-features", "rdkit3d")


def test_explain_computes_the_descriptors_and_leaves_the_columns_missing(run, tmp_path,
                                                                         capsys):
    smiles = "CC(=O)Oc1ccccc1C(=O)O"
    assert main(["explain", str(run / "run" / "best.pt"), "--smiles", smiles,
                 "-o", str(tmp_path / "a.png")]) == 0
    captured = capsys.readouterr()
    assert "feature column(s) ['mw', 'rings'], which --smiles cannot give" in captured.err
    value = float(captured.out.split("prediction y: ")[1].split()[0])
    src = tmp_path / "in.csv"
    src.write_text(f"smiles,mw,rings\n{smiles},,\n")  # both columns missing
    assert main(["predict", str(run / "run" / "best.pt"), str(src), "-o",
                 str(tmp_path / "p.csv")]) == 0
    assert value == pytest.approx(pd.read_csv(tmp_path / "p.csv")["y"][0], rel=1e-5, abs=1e-6)
