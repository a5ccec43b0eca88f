"""``graphformer train --loss`` and the uncertainty section of ``graphformer
evaluate`` (``--interval``)."""
import json

import pytest
import torch

from graphformer.train import load_checkpoint
from graphformer.train.checkpoint import save_checkpoint
from graphformer.train.uncertainty import Calibration
from tests.commands import cli, refused
from tests.train.conftest import tiny_csv  # noqa: F401  (fixture)

TINY = ["--hidden", "16", "--layers", "1", "--heads", "2", "--rwse-steps", "4",
        "--batch-size", "16", "--threads", "1", "--split", "random", "--epochs", "1",
        "--quiet"]


def _train(tmp, csv, name, *flags):
    code, _, err = cli("train", "--dataset", csv, "--target-columns", "y", "--root",
                       tmp / "cache", "--run-dir", tmp / name, *TINY, *flags)
    assert code == 0, err
    return tmp / name / "best.pt"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_csv):  # noqa: F811
    tmp = tmp_path_factory.mktemp("unc-cli")
    return {"mve": _train(tmp, tiny_csv, "mve", "--loss", "mve", "--ensemble", "1"),
            "ensemble": _train(tmp, tiny_csv, "ens", "--ensemble", "2", "--kernel-member", "none"),
            "one": _train(tmp, tiny_csv, "one", "--ensemble", "1"), "tmp": tmp}


def test_train_loss_flags_reach_the_config(runs):
    saved = json.loads((runs["mve"].parent / "config.json").read_text())
    assert saved["train"]["loss"] == "mve" and saved["train"]["evidential_lambda"] == 0.2
    assert saved["model"]["output"] == "mve"
    assert "calibration" in load_checkpoint(runs["mve"])


def test_evaluate_reports_the_uncertainty_of_an_mve_model(runs):
    code, out, err = cli("evaluate", runs["mve"], "--interval", "0.8")
    assert code == 0, err
    result = json.loads(out)
    u = result["uncertainty"]
    assert u["spread"] == "mve" and u["calibration"].startswith("checkpoint")
    state = load_checkpoint(runs["mve"])
    assert u["zscale"] == state["calibration"]["zscale"]
    for part in ("valid", "test"):
        m = u[part]
        assert set(m) >= {"nll", "miscalibration_area", "ence", "spearman", "interval"}
        assert m["interval"]["level"] == 0.8
        assert 0.0 <= m["miscalibration_area"] <= 0.5
        # the validation part has 6 molecules: conformal needs ceil(7 * 0.8) = 6 <= 6
        assert m["interval"]["conformal"] is not None
    # at 0.9 the 6 validation molecules give no conformal interval (9 needed), and say so
    result = json.loads(cli("evaluate", runs["mve"])[1])
    assert result["uncertainty"]["test"]["interval"]["conformal"] is None
    assert result["uncertainty"]["test"]["interval"]["zscale"]["coverage"] is not None


def test_evaluate_calibrates_an_ensemble_without_calibration_now(runs):
    state = load_checkpoint(runs["ensemble"])
    old = runs["tmp"] / "old.pt"
    save_checkpoint({k: v for k, v in state.items() if k not in ("calibration", "format",
                                                                  "version")}, old)
    saved = json.loads(cli("evaluate", runs["ensemble"], "--parts", "test")[1])
    now = json.loads(cli("evaluate", old, "--parts", "test")[1])
    assert saved["uncertainty"]["spread"] == "ensemble of 2 (mse)"
    assert now["uncertainty"]["calibration"].startswith("fitted now on the validation part")
    # the same fit as the one training saved
    assert now["uncertainty"]["zscale"] == pytest.approx(saved["uncertainty"]["zscale"])
    assert now["uncertainty"]["test"]["nll"] == pytest.approx(
        saved["uncertainty"]["test"]["nll"])
    assert Calibration.from_dict(state["calibration"]).num_tasks == 1


def test_evaluate_of_one_mse_model_has_no_uncertainty_and_refuses_interval(runs):
    code, out, _ = cli("evaluate", runs["one"])
    assert code == 0 and "uncertainty" not in json.loads(out)
    refused(cli("evaluate", runs["one"], "--interval", "0.9"), 2, "--loss mse predicts no "
            "spread", "--ensemble K")


def _argparse_refused(capsys, *argv):
    from graphformer.cli import main

    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in argv])
    assert exit_.value.code == 2
    return capsys.readouterr().err


def test_bad_flags_are_named(runs, tiny_csv, capsys):  # noqa: F811
    assert "argument --interval: must be a coverage in (0, 1), e.g. 0.9, got '1.5'" in \
        _argparse_refused(capsys, "evaluate", runs["mve"], "--interval", "1.5")
    base = ["train", "--dataset", tiny_csv, "--target-columns", "y", "--run-dir",
            runs["tmp"] / "never"]
    assert "argument --loss: invalid choice: 'quantile'" in \
        _argparse_refused(capsys, *base, "--loss", "quantile")
    refused(cli(*base, "--evidential-lambda", "-1"), 2, "argument --evidential-lambda",
            ">= 0")
    refused(cli(*base, "--loss", "mve", "--task", "classification", *TINY), 2,
            "argument --loss", "'mve' trains a predictive distribution", "'classification'")
    assert not (runs["tmp"] / "never").exists()
    # a config file that sets the head against the loss names the key
    config = runs["tmp"] / "c.json"
    config.write_text(json.dumps({"model": {"output": "evidential"}, "train": {"loss": "mve"}}))
    refused(cli(*base, "--config", config), 2, "model.output", "train.loss")


def test_predict_distribution_of_a_loaded_checkpoint(runs):
    from torch_geometric.data import Batch

    from graphformer.data import from_smiles
    from graphformer.data.encodings import encodings
    from graphformer.train import load_run
    from graphformer.train.uncertainty import calibration_of, interval, predict_distribution

    state, cfg, model = load_run(runs["ensemble"])
    t = encodings(cfg.model.rwse_steps, cfg.model.lap_pe)
    batch = Batch.from_data_list([t(from_smiles(s, molecule_feature_sets=cfg.data
                                                 .molecule_features))
                                  for s in ("CCO", "c1ccccc1O")])
    mean, std = predict_distribution(model, batch, state)
    torch.testing.assert_close(mean, model(batch).detach() * state["y_std"] + state["y_mean"])
    low, high = interval(mean, std, calibration_of(state, runs["ensemble"]), 0.8)
    assert (low <= mean).all() and (mean <= high).all()
    cal = state["calibration"]
    s = cal["scores"][0]
    calibrated = torch.sqrt((std.double() * cal["zscale"][0]) ** 2 + cal["floor"][0] ** 2)
    torch.testing.assert_close((high - mean).double(), calibrated * s[5], rtol=1e-5,
                               atol=1e-6)     # q = the 6th of 6 scores at 0.8
