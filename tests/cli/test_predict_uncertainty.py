"""``graphformer predict`` of a regression model with a spread: the calibrated
``<target>_std`` column, ``--interval`` / ``--interval-method`` and their
``_low`` / ``_high`` columns, the cases refused, and ``--resume``
(graphformer.cli.predict, graphformer.train.screen.SpreadColumns). Tiny
models of one epoch; every number is checked against the model's members
or head computed directly and the checkpoint's saved calibration."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch_geometric.data import Batch

import graphformer.cli.predict as predict_cli
from graphformer.data import from_smiles
from graphformer.data.encodings import encodings
from graphformer.datasets.molecules import bundled_dir
from graphformer.train import load_checkpoint, prepare
from graphformer.train.checkpoint import load_run, save_checkpoint
from graphformer.train.screen import partial_folder
from graphformer.train.uncertainty import Calibration, normal_quantile
from tests.cli.test_predict_stream import crash_in_chunk, write_input
from tests.commands import cli, refused

ESOL = pd.read_csv(bundled_dir() / "ESOL.csv").head(120)
SMILES = list(ESOL["smiles"])
Y = ESOL["measured log solubility in mols per litre"].to_numpy()
#: 120 molecules, a random split of 96 / 12 / 12: 12 validation molecules give
#: a conformal interval of coverage 0.9 (it needs ceil(13 * 0.9) = 12 <= 12)
TINY = ["--epochs", "1", "--hidden", "8", "--layers", "1", "--heads", "2", "--rwse-steps", "4",
        "--threads", "1", "--batch-size", "16", "--quiet", "--split", "random",
        "--molecule-features", "none"]
FAST = ["--threads", "1", "--quiet"]


#: the runs trained once for the module: run name -> (data file, its target, flags)
RUNS = {"ensemble": ("data.csv", "y", ["--ensemble", "2", "--kernel-member", "none"]),
        "mve": ("data.csv", "y", ["--ensemble", "1", "--loss", "mve"]),
        "single": ("data.csv", "y", ["--ensemble", "1"]),
        "classifier": ("classes.csv", "active", ["--ensemble", "2", "--task",
                                                 "classification"])}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict-unc")
    pd.DataFrame({"smiles": SMILES, "y": Y}).to_csv(tmp / "data.csv", index=False)
    pd.DataFrame({"smiles": SMILES, "active": (Y > np.median(Y)).astype(int)}).to_csv(
        tmp / "classes.csv", index=False)
    return tmp


def trained(work, name):
    """The checkpoint of run ``name`` of :data:`RUNS`, trained now."""
    data, target, flags = RUNS[name]
    code, _, err = cli("train", "--dataset", work / data, "--target-columns", target,
                       "--root", work / "cache", "--run-dir", work / name, *TINY, *flags)
    assert code == 0, err
    return work / name / "best.pt"


def checkpoint_fixture(name):
    """A fixture ``name``: the checkpoint of run ``name`` of :data:`RUNS`,
    trained once for the module."""
    @pytest.fixture(name=name, scope="module")
    def fixture(work):
        return trained(work, name)
    return fixture


ensemble, mve, single, classifier = (checkpoint_fixture(name) for name in RUNS)


@pytest.fixture(scope="module")
def old(work, ensemble):
    """The ensemble's checkpoint as graphformer wrote it before calibration existed."""
    state = load_checkpoint(ensemble)
    path = work / "old.pt"
    save_checkpoint({k: v for k, v in state.items()
                     if k not in ("calibration", "format", "version")}, path)
    return path


@pytest.fixture(scope="module")
def source(work):
    return write_input(work / "in.csv", SMILES[:30])


def batch_of(cfg, smiles):
    transform = encodings(cfg.model.rwse_steps, cfg.model.lap_pe)
    return Batch.from_data_list([transform(from_smiles(s)) for s in smiles])


def predicted(ckpt, src, out, *flags):
    code, _, err = cli("predict", ckpt, src, "-o", out, *FAST, *flags)
    assert code == 0, err
    return pd.read_csv(out)


def zscale_and_q(ckpt, coverage):
    """The saved calibration's scale, floor and split conformal quantile of task 0."""
    calibration = Calibration.from_dict(load_checkpoint(ckpt)["calibration"])
    scores = calibration.scores[0]
    k = math.ceil((scores.numel() + 1) * coverage - 1e-9)
    assert k <= scores.numel()
    return calibration.zscale[0], calibration.floor[0], float(scores[k - 1])


def calibrated(sigma, s, b):
    """The calibrated std of raw ``sigma``: sqrt((s sigma)^2 + b^2)."""
    return np.sqrt((s * np.asarray(sigma)) ** 2 + b ** 2)


# --------------------------------------------------------------------------- values

def test_an_ensembles_std_is_its_members_population_std_calibrated(ensemble, source,
                                                                   tmp_path):
    frame = predicted(ensemble, source, tmp_path / "p.csv", "--chunk-size", "7")
    assert list(frame.columns) == ["row", "smiles", "y", "y_std"]
    state, cfg, model = load_run(ensemble)
    with torch.no_grad():
        members = torch.stack([m(batch_of(cfg, SMILES[:30]))[:, 0] for m in model.members])
    members = members * state["y_std"] + state["y_mean"]
    s, b, _ = zscale_and_q(ensemble, 0.9)
    assert s != pytest.approx(1.0) or b > 0       # the calibration is visible
    np.testing.assert_allclose(frame["y"], members.mean(0).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(frame["y_std"],
                               calibrated(members.std(0, correction=0).numpy(), s, b),
                               rtol=1e-5, atol=1e-6)
    assert (frame["y_std"] > 0).all()


def test_interval_columns_are_the_mean_plus_minus_q_sigma_of_each_method(ensemble, source,
                                                                         tmp_path):
    s, b, q = zscale_and_q(ensemble, 0.9)
    z = normal_quantile(0.95)
    plain = predicted(ensemble, source, tmp_path / "plain.csv")
    std = plain["y_std"].to_numpy()                  # calibrated: sqrt((s sigma)^2 + b^2)
    state, cfg, model = load_run(ensemble)
    with torch.no_grad():
        members = torch.stack([m(batch_of(cfg, SMILES[:30]))[:, 0] for m in model.members])
    raw = (members * state["y_std"]).std(0, correction=0).numpy()
    for method, width in (("conformal", q * std), ("zscale", z * std), ("gaussian", z * raw)):
        flags = ["--interval", "0.9"] + (["--interval-method", method]
                                         if method != "conformal" else [])
        frame = predicted(ensemble, source, tmp_path / f"{method}.csv", *flags)
        assert list(frame.columns) == ["row", "smiles", "y", "y_std", "y_low", "y_high"]
        # the prediction and its std do not depend on the interval
        assert frame[["row", "smiles", "y", "y_std"]].equals(plain)
        np.testing.assert_allclose(frame["y_high"] - frame["y"], width, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(frame["y"] - frame["y_low"], width, rtol=1e-5, atol=1e-5)


def test_the_conformal_interval_covers_the_validation_part(ensemble, tmp_path):
    state, cfg, _ = load_run(ensemble)
    prepared = prepare(cfg, log=False)
    valid = prepared.split["valid"].tolist()
    assert len(valid) == 12
    smiles = [prepared.bench.smiles[i] for i in valid]
    y = np.array([float(prepared.bench.dataset[i].y) for i in valid])
    src = write_input(tmp_path / "valid.csv", smiles)
    for coverage in (0.5, 0.75, 0.9):
        frame = predicted(ensemble, src, tmp_path / "v.csv", "--interval", str(coverage))
        slack = 1e-5 * (frame["y_high"] - frame["y_low"])   # the quantile's own molecule
        inside = ((frame["y_low"] - slack <= y) & (y <= frame["y_high"] + slack)).mean()
        assert inside >= coverage
    # at 0.9 the quantile is the largest of the 12 validation molecules' scores
    _, _, q = zscale_and_q(ensemble, 0.9)
    assert q == float(Calibration.from_dict(state["calibration"]).scores[0][-1])


def test_an_mve_models_std_is_the_root_of_its_predicted_variance_scaled(mve, source, tmp_path):
    s, b, q = zscale_and_q(mve, 0.8)
    frame = predicted(mve, source, tmp_path / "p.csv", "--interval", "0.8")
    state, cfg, model = load_run(mve)
    with torch.no_grad():
        params = model(batch_of(cfg, SMILES[:30]), distribution=True)[:, :, 0]
    mean = params[:, 0] * state["y_std"] + state["y_mean"]
    sigma = params[:, 1].sqrt() * state["y_std"]
    np.testing.assert_allclose(frame["y"], mean.numpy(), rtol=1e-5, atol=1e-5)
    std = calibrated(sigma.numpy(), s, b)
    np.testing.assert_allclose(frame["y_std"], std, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(frame["y_high"], mean.numpy() + q * std, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- refused, unchanged

def test_one_mse_model_and_a_classifier_write_no_std_and_refuse_interval(single, classifier,
                                                                         source, tmp_path):
    out = tmp_path / "p.csv"
    assert list(predicted(single, source, out).columns) == ["row", "smiles", "y"]
    refused(cli("predict", single, source, "-o", out, "--interval", "0.9", *FAST), 2,
            "--interval 0.9 for", str(single), "--loss mse predicts no spread", "--ensemble K")
    frame = predicted(classifier, source, out)
    assert list(frame.columns) == ["row", "smiles", "active"]
    assert frame["active"].between(0, 1).all()
    refused(cli("predict", classifier, source, "-o", out, "--interval", "0.9", *FAST), 2,
            str(classifier), "this one is a classifier")
    assert not partial_folder(out).exists()


def test_a_checkpoint_without_calibration(old, ensemble, source, tmp_path):
    out = tmp_path / "p.csv"
    for method in ("conformal", "zscale"):
        refused(cli("predict", old, source, "-o", out, "--interval", "0.9",
                    "--interval-method", method, *FAST), 2,
                f"--interval-method {method} needs the calibration", f"{old} holds none",
                "--interval-method gaussian", f"graphformer evaluate {old} --interval 0.9",
                "saves no calibration")
    assert not out.exists() and not partial_folder(out).exists()
    # without --interval, or with gaussian intervals: the raw spread, and a note saying so
    code, _, err = cli("predict", old, source, "-o", out, *FAST, "--interval", "0.9",
                       "--interval-method", "gaussian")
    assert code == 0 and f"note: {old} holds no calibration" in err, err
    raw = pd.read_csv(out)
    scaled = predicted(ensemble, source, tmp_path / "c.csv")
    s, b, _ = zscale_and_q(ensemble, 0.9)
    np.testing.assert_allclose(calibrated(raw["y_std"], s, b), scaled["y_std"], rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(raw["y_high"] - raw["y"], normal_quantile(0.95) * raw["y_std"],
                               rtol=1e-5, atol=1e-5)


def test_bad_interval_requests_are_one_line(ensemble, source, tmp_path, capsys):
    out = tmp_path / "p.csv"
    # 12 validation molecules: a conformal 0.95 needs ceil(13 * 0.95) = 13 of them
    refused(cli("predict", ensemble, source, "-o", out, "--interval", "0.95", *FAST), 1,
            str(ensemble), "coverage 0.95 needs at least 19 labelled valid molecules",
            "task 0 has 12", "--interval-method zscale")
    assert not partial_folder(out).exists()
    assert "y_high" in predicted(ensemble, source, out, "--interval", "0.95",
                                 "--interval-method", "zscale")
    refused(cli("predict", ensemble, source, "-o", out, "--interval-method", "zscale", *FAST),
            2, "--interval-method zscale", "give --interval too")
    for bad in ("1.5", "0", "x"):
        assert "argument --interval: must be a coverage in (0, 1)" in argparse_refused(
            capsys, "predict", ensemble, source, "-o", out, "--interval", bad)
    assert "argument --interval-method: invalid choice: 'quantile'" in argparse_refused(
        capsys, "predict", ensemble, source, "-o", out, "--interval", "0.9",
        "--interval-method", "quantile")


def argparse_refused(capsys, *argv):
    """An argument argparse refuses: exit 2 and its one line on stderr."""
    from graphformer.cli import main

    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("graphformer: error: ") and len(err.strip().splitlines()) == 1
    return err


# --------------------------------------------------------------------------- --resume

def test_resume_with_an_interval_gives_the_same_bytes_and_refuses_another(
        ensemble, source, tmp_path, monkeypatch):
    flags = ["--chunk-size", "8", "--batch-size", "3", "--interval", "0.9", *FAST]
    whole = tmp_path / "whole.csv"
    assert cli("predict", ensemble, source, "-o", whole, *flags)[0] == 0
    out = tmp_path / "out.csv"
    with monkeypatch.context() as m:
        crash_in_chunk(m, predict_cli, "prediction_columns", 4)   # in chunk 2
        assert cli("predict", ensemble, source, "-o", out, *flags)[0] == 130
    base = ["predict", ensemble, source, "-o", out, "--resume", "--chunk-size", "8",
            "--batch-size", "3", *FAST]
    refused(cli(*base, "--interval", "0.8"), 2, "--interval 0.8 differs from the partial "
            "output's --interval 0.9", "resume with --interval 0.9")
    refused(cli(*base), 2, "no --interval differs from the partial output's --interval 0.9")
    refused(cli(*base, "--interval", "0.9", "--interval-method", "zscale"), 2,
            "--interval-method zscale differs", "--interval-method conformal")
    code, _, err = cli(*base, "--interval", "0.9")
    assert code == 0, err
    assert out.read_bytes() == whole.read_bytes()
    assert not partial_folder(out).exists()


def test_resume_refuses_a_partial_output_with_other_columns(ensemble, source, tmp_path,
                                                            monkeypatch):
    """A partial output an older graphformer wrote for an ensemble (no _std
    column) is not continued with one."""
    out = tmp_path / "out.csv"
    real = predict_cli.prediction_columns

    def old_columns(*args, spread=None, **kwargs):
        return real(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(predict_cli, "prediction_columns", old_columns)
        crash_in_chunk(m, predict_cli, "prediction_columns", 2)
        assert cli("predict", ensemble, source, "-o", out, "--chunk-size", "8", *FAST)[0] == 130
    refused(cli("predict", ensemble, source, "-o", out, "--resume", "--chunk-size", "8", *FAST),
            1, "cannot resume", "has the columns row,smiles,y,", "writes row,smiles,y,y_std",
            "without --resume")
    assert cli("predict", ensemble, source, "-o", out, "--chunk-size", "8", *FAST)[0] == 0
    assert list(pd.read_csv(out).columns) == ["row", "smiles", "y", "y_std"]
