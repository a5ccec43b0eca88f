import json

import matplotlib.image
import pytest
import torch

from graphformer.train.checkpoint import model_from_checkpoint
from graphformer.train import (CheckpointError, evaluate_split, load_checkpoint, prepare,
                               save_checkpoint, train)
from tests.train.conftest import tiny_config, train_until_crash


def history(run_dir):
    rows = json.loads((run_dir / "metrics.json").read_text())
    for row in rows:
        row.pop("seconds")
    return rows


def test_a_run_writes_metrics_curves_checkpoints_and_config(tmp_path, tiny_csv):
    cfg = tiny_config(tiny_csv, tmp_path / "cache")
    summary = train(cfg, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    rows = history(run)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert (run / "metrics.csv").read_text().splitlines()[0].startswith("epoch,train_loss,lr,")
    assert len((run / "metrics.csv").read_text().splitlines()) == 4
    saved = json.loads((run / "config.json").read_text())
    assert saved["train"]["epochs"] == 3 and saved["model"]["hidden"] == 16
    image = matplotlib.image.imread(run / "learning_curve.png")
    assert image.shape[:2] == (400, 1000) and image.std() > 0.01  # drawn, not blank

    best = summary["best_epoch"]
    assert summary["test_rmse_at_best"] == rows[best - 1]["test_rmse"]
    # The best checkpoint reproduces the metrics logged for its epoch.
    state = load_checkpoint(run / "best.pt")
    assert state["epoch"] == best
    prepared = prepare(cfg, log=False)
    again = evaluate_split(model_from_checkpoint(state), prepared, "test", 16, torch.device("cpu"))
    assert again["rmse"] == pytest.approx(rows[best - 1]["test_rmse"], rel=1e-6)


def test_same_seed_same_run_other_seed_other_run(tmp_path, tiny_csv):
    cfg = tiny_config(tiny_csv, tmp_path / "cache", epochs=2)
    train(cfg, tmp_path / "a", progress=False)
    train(cfg, tmp_path / "b", progress=False)
    assert history(tmp_path / "a") == history(tmp_path / "b")
    other = tiny_config(tiny_csv, tmp_path / "cache", epochs=2, seed=1)
    train(other, tmp_path / "c", progress=False)
    assert history(tmp_path / "a") != history(tmp_path / "c")


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_resume_after_a_crash_gives_the_uninterrupted_metrics(tmp_path, tiny_csv, monkeypatch,
                                                               ema):
    cfg = tiny_config(tiny_csv, tmp_path / "cache", epochs=4, ema=ema)
    train(cfg, tmp_path / "straight", progress=False)

    train_until_crash(cfg, tmp_path / "crashed", monkeypatch, evaluation=5)  # epoch 3's first
    assert load_checkpoint(tmp_path / "crashed" / "last.pt")["epoch"] == 2
    train(cfg, tmp_path / "crashed", resume=True, progress=False)

    assert history(tmp_path / "crashed") == history(tmp_path / "straight")
    crashed = load_checkpoint(tmp_path / "crashed" / "last.pt")
    straight = load_checkpoint(tmp_path / "straight" / "last.pt")
    for weights in ("model", "training_model") if ema else ("model",):
        a, b = crashed[weights], straight[weights]
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)

    def broken_save(obj, fh):
        fh.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file left


class NotData:
    pass


def test_corrupt_truncated_or_foreign_checkpoints_are_refused(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint({"epoch": 1, "w": torch.randn(100)}, good)
    data = good.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "noise.pt").write_bytes(b"\x00garbage" * 50)
    torch.save({"weights": torch.ones(2)}, tmp_path / "foreign.pt")
    torch.save({"format": "graphformer-checkpoint", "version": 1, "obj": NotData()},
               tmp_path / "code.pt")
    for name in ("truncated", "noise"):
        with pytest.raises(CheckpointError, match=rf"{name}.pt is not a readable checkpoint"):
            load_checkpoint(tmp_path / f"{name}.pt")
    with pytest.raises(CheckpointError, match="not a graphformer checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="code.pt is not a readable checkpoint"):
        load_checkpoint(tmp_path / "code.pt")  # weights_only: no arbitrary objects
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")


def test_resume_takes_the_very_config_the_run_started_with(tmp_path, tiny_csv, monkeypatch):
    """``resume(run_dir, cfg)`` with the config given to ``train``: a relative
    CSV path (stored absolute) and a distribution loss (the head's output
    filled in from it) were refused as changed settings."""
    import shutil
    from dataclasses import replace

    from graphformer.train import resume, train

    monkeypatch.chdir(tmp_path)
    shutil.copy(tiny_csv, tmp_path / "tiny.csv")
    cfg = tiny_config("tiny.csv", tmp_path / "root", epochs=2, loss="mve")
    whole = train(cfg, tmp_path / "whole", progress=False)
    train_until_crash(cfg, tmp_path / "run", monkeypatch, evaluation=3)   # in epoch 2
    resumed = resume(tmp_path / "run", cfg, progress=False)
    assert resumed["test_rmse_at_best"] == pytest.approx(whole["test_rmse_at_best"], rel=1e-6)
    other = replace(cfg, train=replace(cfg.train, lr=0.1))
    with pytest.raises(ValueError, match=r"train.lr: saved 0.001, given 0.1"):
        resume(tmp_path / "run", other, progress=False)


def test_the_lr_column_is_a_rate_the_epoch_used(tmp_path, tiny_csv):
    """``metrics.csv``'s ``lr`` was the next epoch's first rate (0 in the last
    row of a run: a rate never used); it is the epoch's last step's."""
    import math

    from graphformer.train import train
    from graphformer.train.optim import lr_factor

    cfg = tiny_config(tiny_csv, tmp_path / "root", epochs=3, warmup_epochs=1)
    train(cfg, tmp_path / "run", progress=False)
    rows = json.loads((tmp_path / "run" / "metrics.json").read_text())
    steps = math.ceil(48 / 16)                             # 48 training molecules
    used = [1e-3 * lr_factor(epoch * steps - 1, steps, 3 * steps) for epoch in (1, 2, 3)]
    assert [r["lr"] for r in rows] == pytest.approx(used, rel=1e-9)
    assert rows[-1]["lr"] > 0


def test_a_warm_up_as_long_as_the_run_is_warned_of(tmp_path, tiny_csv):
    from graphformer.train import train

    cfg = tiny_config(tiny_csv, tmp_path / "root", epochs=2, warmup_epochs=5)
    with pytest.warns(UserWarning, match=r"warm-up of 5 epochs \(--warmup-epochs\) in a run of "
                                         r"2 \(--epochs\): the learning rate rises through the "
                                         r"whole run, to 0.4x --lr, and never decays"):
        train(cfg, tmp_path / "run", progress=False)


def test_a_run_resumes_only_under_the_process_count_that_wrote_it(tmp_path, tiny_csv,
                                                                  monkeypatch):
    """The batch size is per process: a run of two processes resumed in one
    ran other batches and a longer schedule, and did not end as the
    uninterrupted run. Checkpoints record the count; another is refused."""
    from graphformer.errors import UsageError
    from graphformer.train import resume
    from graphformer.train.checkpoint import check_processes, save_checkpoint

    cfg = tiny_config(tiny_csv, tmp_path / "root", epochs=2)
    train_until_crash(cfg, tmp_path / "run", monkeypatch, evaluation=3)   # in epoch 2
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["processes"] == 1
    state["processes"] = 2
    save_checkpoint(state, tmp_path / "run" / "last.pt")
    with pytest.raises(UsageError, match=r"last.pt was written by a run of 2 process\(es\), and "
                                         r"this one has 1: the batch size is per process"):
        resume(tmp_path / "run", progress=False)
    del state["processes"]                 # an older graphformer's checkpoint: not checked
    check_processes(state, 1, "old.pt")
