import json
import subprocess
import sys

import pandas as pd
import pytest

from graphformer.cli import main
from tests.train.conftest import tiny_csv  # noqa: F401  (fixture)

TINY = ["--hidden", "16", "--layers", "1", "--heads", "2", "--rwse-steps", "4",
        "--batch-size", "16", "--threads", "1", "--split", "random", "--ensemble", "1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_csv):  # noqa: F811
    tmp = tmp_path_factory.mktemp("cli")
    code = main(["train", "--dataset", str(tiny_csv), "--target-columns", "y", "--epochs", "2",
                 "--root", str(tmp / "cache"), "--run-dir", str(tmp / "run"), "--quiet", *TINY])
    assert code == 0
    return tmp


def test_train_prints_the_test_metric(trained, capsys):
    summary = json.loads((trained / "run" / "summary.json").read_text())
    assert summary["metric"] == "rmse" and summary["final"]["epoch"] == 2


def test_config_file_then_flags(tmp_path, tiny_csv, capsys):  # noqa: F811
    config = tmp_path / "c.yaml"
    config.write_text(f"data:\n  dataset: {tiny_csv}\n  target_columns: [y]\n  split: random\n"
                      f"  root: {tmp_path / 'cache'}\nmodel:\n  hidden: 8\n  layers: 1\n"
                      f"  heads: 2\n  rwse_steps: 0\ntrain:\n  epochs: 3\n  threads: 1\n")
    assert main(["train", "--config", str(config), "--epochs", "1", "--heads", "4",
                 "--head-epochs", "1", "--ensemble", "1", "--run-dir", str(tmp_path / "run"),
                 "--quiet"]) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["train"]["epochs"] == 1 and saved["model"]["heads"] == 4
    assert saved["train"]["head_epochs"] == 1    # the head alone, then the whole model
    assert len(json.loads((tmp_path / "run" / "metrics.json").read_text())) == 2
    assert saved["model"]["hidden"] == 8 and saved["model"]["rwse_steps"] == 0
    out = capsys.readouterr().out
    assert "test rmse: " in out and f"run directory: {tmp_path / 'run'}" in out


def test_bad_config_key_is_named(tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"model": {"hiden": 8}}))
    assert main(["train", "--config", str(config)]) == 2
    assert "unknown key(s) ['hiden'] in config section 'model'" in capsys.readouterr().err


def test_evaluate_prints_json_metrics(trained, capsys):
    assert main(["evaluate", str(trained / "run" / "best.pt")]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = json.loads((trained / "run" / "metrics.json").read_text())
    best = rows[result["epoch"] - 1]
    assert result["test"]["rmse"] == pytest.approx(best["test_rmse"], rel=1e-6)
    assert result["valid"]["mae"] == pytest.approx(best["valid_mae"], rel=1e-6)


def test_predict_reports_invalid_rows_and_skips_only_when_asked(trained, tmp_path, capsys):
    src = tmp_path / "in.csv"
    src.write_text("smiles,name\nCCO,ethanol\nC1CC,broken\nc1ccccc1,benzene\n")
    out = tmp_path / "out.csv"
    # An invalid SMILES in the input is a data error: exit code 1.
    assert main(["predict", str(trained / "run" / "best.pt"), str(src), "-o", str(out)]) == 1
    assert "cannot parse SMILES 'C1CC'" in capsys.readouterr().err and not out.exists()
    assert main(["predict", str(trained / "run" / "best.pt"), str(src), "-o", str(out),
                 "--skip-invalid"]) == 0
    assert "row 2" in capsys.readouterr().err
    pred = pd.read_csv(out)
    assert pred["row"].tolist() == [1, 3] and pred["smiles"].tolist() == ["CCO", "c1ccccc1"]
    assert pred["y"].notna().all()


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["evaluate", str(bad)]) == 1  # a data error
    assert "bad.pt is not a readable checkpoint" in capsys.readouterr().err


def test_python_dash_m_and_help():
    result = subprocess.run([sys.executable, "-m", "graphformer", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and \
        "{train,pretrain,evaluate,predict,fingerprint,explain,node,link}" in result.stdout


def test_every_shipped_config_is_valid():
    from pathlib import Path

    from graphformer.train import RunConfig, read_config_file

    configs = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
    assert {p.stem for p in configs} >= {"esol", "ogbg-molhiv", "ogbg-molpcba", "zinc",
                                         "pcqm4mv2"}
    for path in configs:
        cfg = RunConfig.from_dict(read_config_file(path))
        assert cfg.data.dataset == path.stem
    # the bundled sets' configs are the defaults of `graphformer train`, spelled out
    for name in ("esol", "freesolv", "lipophilicity"):
        cfg = RunConfig.from_dict(read_config_file(configs[0].parent / f"{name}.yaml"))
        default = RunConfig.from_dict({"data": {"dataset": name, "split": "scaffold"}})
        assert (cfg.model, cfg.train) == (default.model, default.train), name


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path, tiny_csv):  # noqa: F811
    # The README's `torchrun --nproc-per-node 2 -m graphformer train ...`, on CPU (gloo),
    # with an empty data cache: rank 0 must process it before the others read it.
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--standalone", "-m", "graphformer", "train", "--dataset", str(tiny_csv),
         "--target-columns", "y", "--epochs", "1", "--root", str(tmp_path / "cache"),
         "--run-dir", str(tmp_path / "run"), "--quiet", *TINY],
        capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-8000:]
    assert result.stdout.count("test rmse: ") == 1  # rank 0 alone reports
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["final"]["epoch"] == 1


def test_under_torchrun_every_rank_names_rank_0s_default_run_directory(monkeypatch):
    """Each rank read its own clock: across a second boundary the ranks of a
    default ensemble named two folders and rank 1 found no member checkpoint.
    (Here rank 1 of two, its clock a second on, rank 0's time broadcast.)"""
    import time

    import torch.distributed as dist

    from graphformer.cli.train import default_run_dir

    sent = []

    def broadcast(objects, src, device=None):
        sent.append((list(objects), src, device))
        objects[0] = "20261208-045959"              # what rank 0 read

    monkeypatch.setattr(time, "strftime", lambda fmt: "20261208-050000")
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_backend", lambda: "gloo")
    monkeypatch.setattr(dist, "broadcast_object_list", broadcast)
    assert str(default_run_dir("esol")) == "runs/esol-20261208-045959"
    assert sent == [(["20261208-050000"], 0, None)]
    monkeypatch.setattr(dist, "get_world_size", lambda: 1)
    assert str(default_run_dir("esol")) == "runs/esol-20261208-050000"


def test_a_config_file_that_is_not_yaml_is_one_line_naming_its_place(tmp_path):
    from graphformer.errors import UsageError
    from graphformer.train import read_config_file

    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: {3\n")
    with pytest.raises(UsageError) as err:
        read_config_file(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}, line ")
    assert "not valid YAML" in message
