"""``train.ensemble`` / ``--ensemble K``: K whole runs, predicting their mean."""
import json
import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

import graphformer.train.loop as loop
from graphformer.cli import main
from graphformer.errors import ConfigError, UsageError
from graphformer.models import Ensemble
from graphformer.train import evaluate_split, load_checkpoint, load_run, prepare, train
from graphformer.train.config import TrainConfig
from graphformer.train.pretrain import PretrainConfig
from tests.train.conftest import tiny_config, train_until_crash
from tests.train.test_train import history


class _Constant(torch.nn.Module):
    def __init__(self, value, task):
        super().__init__()
        self.value = torch.tensor(value)
        self.config = SimpleNamespace(task=task, num_tasks=self.value.numel())

    def forward(self, batch):
        return self.value.expand(batch, -1)


def test_the_ensemble_predicts_the_mean_of_its_members():
    reg = Ensemble([_Constant([1.0, -2.0], "regression"), _Constant([3.0, 0.0], "regression")])
    torch.testing.assert_close(reg(4), torch.tensor([[2.0, -1.0]] * 4))
    cls = Ensemble([_Constant([0.0, 2.0], "classification"),
                    _Constant([math.log(3.0), -2.0], "classification")])
    p = (torch.sigmoid(torch.tensor([0.0, 2.0])) + torch.sigmoid(
        torch.tensor([math.log(3.0), -2.0]))) / 2      # mean probability: 0.625, 0.5
    torch.testing.assert_close(cls(1), torch.logit(p).view(1, 2))
    assert torch.sigmoid(cls(1))[0, 0].item() == pytest.approx(0.625)
    with pytest.raises(ValueError, match="share task"):
        Ensemble([_Constant([0.0], "regression"), _Constant([0.0], "classification")])
    with pytest.raises(ValueError, match="at least one"):
        Ensemble([])


def test_member_seeds_and_checks():
    cfg = TrainConfig(seed=5, ensemble=3)
    assert [cfg.member(k).seed for k in range(3)] == [5, 1_000_008, 2_000_011]
    assert all(cfg.member(k).ensemble == 1 for k in range(3))
    assert TrainConfig(seed=2**32 - 1, ensemble=2).member(1).seed == 1_000_002
    with pytest.raises(ValueError, match="member 3 of an ensemble of 3"):
        cfg.member(3)
    with pytest.raises(ConfigError, match="ensemble"):
        TrainConfig(ensemble=0)
    with pytest.raises(ConfigError, match="ensemble.*pretrain"):
        PretrainConfig(train=TrainConfig(ensemble=2))
    assert PretrainConfig.from_dict({}).train.ensemble == 1


def _members_mean(run, prepared, part):
    preds = []
    for k in range(2):
        state, _, model = load_run(run / f"member-{k}" / "best.pt")
        preds.append(loop._run(model, prepared.eval_batches(part, 64), state["y_mean"],
                               state["y_std"], torch.device("cpu"), with_targets=True))
    y = preds[0][1]
    return math.sqrt(float((((preds[0][0] + preds[1][0]) / 2 - y) ** 2).mean()))


def test_an_ensemble_is_its_members_runs_and_scores_their_mean(tmp_path, tiny_csv):
    cfg = tiny_config(tiny_csv, tmp_path / "cache", epochs=2, ensemble=2, seed=3)
    summary = train(cfg, tmp_path / "ens", progress=False)
    run = tmp_path / "ens"

    # member k is the ordinary run of the same settings with its own seed, on
    # the ensemble's (random) split
    alone = tiny_config(tiny_csv, tmp_path / "cache", epochs=2, seed=1_000_006)
    alone.data.split_seed = 3
    one = train(alone, tmp_path / "one", progress=False)
    assert history(run / "member-1") == history(tmp_path / "one")
    for member in (summary["members"][1], one):
        member["final"].pop("seconds")
    assert summary["members"][1] == one
    assert json.loads((run / "member-0" / "config.json").read_text())["train"]["seed"] == 3
    assert summary["best_epoch"] == [m["best_epoch"] for m in summary["members"]]

    state, saved, model = load_run(run / "best.pt")
    assert isinstance(model, Ensemble) and len(model.members) == 2
    assert saved.train.ensemble == 2 and saved.train.seed == 3
    prepared = prepare(cfg, log=False)
    for part, key in (("valid", "best_valid_rmse"), ("test", "test_rmse_at_best")):
        expected = _members_mean(run, prepared, part)
        assert summary[key] == pytest.approx(expected, rel=1e-6)
        got = evaluate_split(model, prepared, part, 64, torch.device("cpu"))["rmse"]
        assert got == pytest.approx(expected, rel=1e-6)
    assert json.loads((run / "summary.json").read_text())["test_rmse_at_best"] == \
        summary["test_rmse_at_best"]


def test_a_resumed_ensemble_repeats_the_uninterrupted_one(tmp_path, tiny_csv, monkeypatch):
    cfg = tiny_config(tiny_csv, tmp_path / "cache", epochs=2, ensemble=2)
    train(cfg, tmp_path / "straight", progress=False)

    # member 0: 4 evaluations; then member 1, epoch 2, the first
    train_until_crash(cfg, tmp_path / "crashed", monkeypatch, evaluation=7)
    assert not (tmp_path / "crashed" / "best.pt").exists()
    # through the command line, with a runtime flag, which reaches the members
    assert main(["train", "--resume", str(tmp_path / "crashed"), "--device", "cpu",
                 "--quiet"]) == 0
    member = json.loads((tmp_path / "crashed" / "member-1" / "config.json").read_text())
    assert member["train"]["device"] == "cpu" and cfg.train.device == "auto"
    again = json.loads((tmp_path / "crashed" / "summary.json").read_text())
    straight = json.loads((tmp_path / "straight" / "summary.json").read_text())

    for run in (again, straight):
        for member in run["members"]:
            member["final"].pop("seconds")
    assert again == straight
    assert history(tmp_path / "crashed" / "member-1") == history(tmp_path / "straight" /
                                                                 "member-1")
    a = load_checkpoint(tmp_path / "crashed" / "best.pt")["model"]
    b = load_checkpoint(tmp_path / "straight" / "best.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_ensemble_refuses_an_old_run_a_model_and_explain(tmp_path, tiny_csv, capsys):
    cfg = tiny_config(tiny_csv, tmp_path / "cache", epochs=1, ensemble=2)
    train(cfg, tmp_path / "ens", progress=False)
    with pytest.raises(UsageError, match="already holds an ensemble's members"):
        train(cfg, tmp_path / "ens", progress=False)
    (tmp_path / "ens" / "member-1" / "notes.txt").write_text("mine")
    train(cfg, tmp_path / "ens", progress=False, overwrite=True)
    assert (tmp_path / "ens" / "member-1" / "notes.txt").read_text() == "mine"
    with pytest.raises(UsageError, match="takes no 'model'"):
        train(cfg, tmp_path / "other", progress=False, model=torch.nn.Linear(1, 1))

    checkpoint = tmp_path / "ens" / "best.pt"
    assert main(["explain", str(checkpoint), "--smiles", "CCO", "-o",
                 str(tmp_path / "a.png")]) == 2
    assert f"explain one of them: {tmp_path / 'ens' / 'member-0' / 'best.pt'}" in \
        capsys.readouterr().err

    # predict: the mean of the members' predictions
    pd.DataFrame({"smiles": ["CCO", "c1ccccc1O"]}).to_csv(tmp_path / "m.csv", index=False)
    outs = []
    for path in (checkpoint, *(tmp_path / "ens" / f"member-{k}" / "best.pt" for k in (0, 1))):
        assert main(["predict", str(path), str(tmp_path / "m.csv"), "-o",
                     str(tmp_path / "p.csv")]) == 0
        outs.append(pd.read_csv(tmp_path / "p.csv")["y"].to_numpy())
    assert outs[0] == pytest.approx((outs[1] + outs[2]) / 2, rel=1e-5)


def _summary_without_times(run):
    summary = json.loads((run / "summary.json").read_text())
    for member in summary["members"]:
        member["final"].pop("seconds")
    return summary


def test_members_side_by_side_train_as_one_after_the_other(tmp_path, tiny_csv, capsys):
    """``member_processes=2``: the members in two forked processes give the
    files, metrics and weights of the run that trains them in turn (same
    threads per member)."""
    one_by_one = tiny_config(tiny_csv, tmp_path / "cache", epochs=2, ensemble=2,
                             member_processes=1)
    side = tiny_config(tiny_csv, tmp_path / "cache", epochs=2, ensemble=2, member_processes=2)
    train(one_by_one, tmp_path / "turns", progress=False)
    capsys.readouterr()
    train(side, tmp_path / "side", progress=True)
    err = capsys.readouterr().err
    assert "ensemble: 2 members side by side in 2 processes of 1 thread(s) each" in err
    assert _summary_without_times(tmp_path / "side") == _summary_without_times(tmp_path / "turns")
    for k in range(2):
        assert history(tmp_path / "side" / f"member-{k}") == \
            history(tmp_path / "turns" / f"member-{k}")
    a = load_checkpoint(tmp_path / "side" / "best.pt")["model"]
    b = load_checkpoint(tmp_path / "turns" / "best.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_members_side_by_side_stop_together_and_resume(tmp_path, tiny_csv, monkeypatch):
    """Interrupted in both member processes (each at its own 3rd evaluation:
    epoch 2), the ensemble stops with KeyboardInterrupt and no best.pt;
    ``--resume`` (side by side again) ends as the uninterrupted run."""
    cfg = tiny_config(tiny_csv, tmp_path / "cache", epochs=2, ensemble=2, member_processes=2)
    train(cfg, tmp_path / "straight", progress=False)
    train_until_crash(cfg, tmp_path / "cut", monkeypatch, evaluation=3)
    assert not (tmp_path / "cut" / "best.pt").exists()
    for k in range(2):
        assert len(history(tmp_path / "cut" / f"member-{k}")) == 1
    assert main(["train", "--resume", str(tmp_path / "cut"), "--quiet"]) == 0
    assert _summary_without_times(tmp_path / "cut") == \
        _summary_without_times(tmp_path / "straight")


def test_who_trains_side_by_side():
    from graphformer._process import usable_cores
    from graphformer.train.ensemble import side_by_side

    def cfg(**train):
        return SimpleNamespace(train=TrainConfig(**{"device": "cpu", **train}))

    cores = usable_cores()
    if cores < 2:
        pytest.skip("one core")
    assert side_by_side(cfg(threads=0), 1, 2) == (2, cores // 2)
    assert side_by_side(cfg(threads=1), 1, 2) == (1, 1)          # threads chosen: in turn
    assert side_by_side(cfg(threads=1, member_processes=2), 1, 2) == (2, 1)
    assert side_by_side(cfg(threads=0, member_processes=1), 1, 2) == (1, 0)
    assert side_by_side(cfg(threads=0), 2, 2) == (1, 0)          # under torchrun: in turn
    assert side_by_side(cfg(threads=0), 1, 1) == (1, 0)          # one model
    with pytest.raises(ConfigError, match="member_processes"):
        TrainConfig(member_processes=-1)


def test_a_member_process_that_dies_is_an_error_not_a_hang(tmp_path, tiny_csv, monkeypatch):
    """A member's process that ends without a word (killed for memory, say)
    stops the ensemble with an error naming the member and its exit code,
    once the other member has finished; nothing waits for it for ever."""
    import os

    cfg = tiny_config(tiny_csv, tmp_path / "cache", epochs=1, ensemble=2, member_processes=2)
    real = loop.train_model

    def member_1_dies(member_cfg, folder, **kwargs):
        if folder.name == "member-1":
            os._exit(7)
        return real(member_cfg, folder, **kwargs)

    monkeypatch.setattr(loop, "train_model", member_1_dies)
    with pytest.raises(RuntimeError, match=r"ensemble member 1: its process ended without a "
                                           r"result \(exit code 7"):
        train(cfg, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "member-0" / "best.pt").is_file()
    assert not (tmp_path / "run" / "best.pt").exists()
