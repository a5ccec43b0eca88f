"""``train.head_epochs``: the head trained alone, then the whole model (LP-FT)."""
import copy

import pytest
import torch

import graphformer.train.loop as loop
from graphformer.errors import ConfigError, UsageError
from graphformer.train import load_checkpoint, train
from graphformer.train.config import TrainConfig
from graphformer.train.optim import freeze, lr_factor, make_optimizer, optimizer_step
from graphformer.train.pretrain import PretrainConfig
from tests.train.conftest import tiny_config, train_until_crash
from tests.train.test_train import history


def _states_per_epoch(monkeypatch):
    """Record the model's weights at the end of every epoch of a run."""
    states = []
    real = loop._Run.end_epoch

    def end_epoch(self, epoch, row):
        states.append(copy.deepcopy(self.model.state_dict()))
        return real(self, epoch, row)

    monkeypatch.setattr(loop._Run, "end_epoch", end_epoch)
    return states


def _split(state):
    head = {k: v for k, v in state.items() if k.startswith("head.")}
    trunk = {k: v for k, v in state.items()
             if not k.startswith(("head.", "mol_scaler."))}
    return head, trunk


def test_the_trunk_keeps_its_weights_exactly_until_the_head_epochs_end(tmp_path, tiny_csv,
                                                                      monkeypatch):
    cfg = tiny_config(tiny_csv, tmp_path / "cache", epochs=2, head_epochs=2,
                      weight_decay=0.1)   # a weight decay that would show
    cfg.model.dropout = 0.0
    model = loop.model_for(cfg, loop.prepare(cfg, log=False).bench)
    start_head, start_trunk = _split(copy.deepcopy(model.state_dict()))
    states = _states_per_epoch(monkeypatch)
    train(cfg, tmp_path / "run", progress=False, model=model)

    assert len(states) == 4
    for epoch in (1, 2):      # head alone: the trunk as it started, the head moves
        head, trunk = _split(states[epoch - 1])
        assert all(torch.equal(trunk[k], start_trunk[k]) for k in trunk)
        assert not all(torch.equal(head[k], start_head[k]) for k in head)
    for epoch in (3, 4):      # then the whole model
        _, trunk = _split(states[epoch - 1])
        assert sum(not torch.equal(trunk[k], start_trunk[k]) for k in trunk) > len(trunk) // 2
    assert all(p.requires_grad for p in model.parameters())

    rows = history(tmp_path / "run")
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    # a row's rate is its epoch's last step's: the head's epochs at the full
    # rate, then warm-up over 1 epoch of 3 steps (1/3, 2/3, 1) and cosine decay
    # to 0 over the next 3 (1, 3/4, 1/4)
    assert [r["lr"] / cfg.train.lr for r in rows] == pytest.approx([1, 1, 1, 1 / 4])
    # fine-tuning started with fresh AdamW moments: 2 epochs of 3 steps counted
    state = load_checkpoint(tmp_path / "run" / "last.pt")["optimizer"]["state"]
    assert {float(s["step"]) for s in state.values()} == {6.0}
    assert {g["weight_decay"] for g in
            load_checkpoint(tmp_path / "run" / "last.pt")["optimizer"]["param_groups"]} == {0.1}


@pytest.mark.parametrize("crash_epoch", [2, 3])  # inside the head's epochs; the first after
def test_a_resumed_run_repeats_the_uninterrupted_one(tmp_path, tiny_csv, monkeypatch,
                                                    crash_epoch):
    cfg = tiny_config(tiny_csv, tmp_path / "cache", epochs=2, head_epochs=2)
    train(cfg, tmp_path / "straight", progress=False)

    train_until_crash(cfg, tmp_path / "crashed", monkeypatch, evaluation=2 * crash_epoch - 1)
    train(cfg, tmp_path / "crashed", resume=True, progress=False)

    assert history(tmp_path / "crashed") == history(tmp_path / "straight")
    a = load_checkpoint(tmp_path / "crashed" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("flat", [True, False])
@pytest.mark.parametrize("autograd", [True, False])
def test_freeze_leaves_frozen_parameters_exactly_and_thaw_moves_them(flat, autograd):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    if flat:
        opt = make_optimizer(model, lr=0.1, weight_decay=0.5)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)
    trunk = list(model[0].parameters())
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(8, 3)
    zero = freeze(opt, trunk, True, 0.5, autograd=autograd)
    assert (zero == []) == autograd
    for _ in range(3):
        optimizer_step(model, model(x).square().mean(), opt, 1.0, zero)
    after = list(model.parameters())
    assert torch.equal(after[0], before[0]) and torch.equal(after[1], before[1])
    assert not torch.equal(after[2], before[2])
    assert all(g["weight_decay"] == 0.0 for g in opt.param_groups)

    assert freeze(opt, trunk, False, 0.5, autograd=autograd) == []
    assert all(p.requires_grad for p in model.parameters())
    assert all(g["weight_decay"] == 0.5 for g in opt.param_groups)
    optimizer_step(model, model(x).square().mean(), opt, 1.0)
    assert not torch.equal(model[0].weight, before[0])


def test_lr_factor_is_constant_over_the_head_steps_then_warms_up_and_decays():
    f = [lr_factor(s, warmup=2, total=10, head=4) for s in range(10)]
    assert f[:4] == [1.0] * 4
    assert f[4:6] == [0.5, 1.0]
    assert f[6] == pytest.approx(1.0) and f[9] == pytest.approx(0.5 * (1 + torch.cos(
        torch.tensor(torch.pi * 3 / 4)).item()))
    assert [lr_factor(s, 2, 6) for s in range(6)] == [lr_factor(s + 4, 2, 10, 4)
                                                      for s in range(6)]


def test_head_epochs_are_checked_and_refused_where_they_mean_nothing(tmp_path, tiny_csv):
    with pytest.raises(ConfigError, match="head_epochs"):
        TrainConfig(head_epochs=-1)
    assert TrainConfig(head_epochs=3, epochs=5).total_epochs == 8
    with pytest.raises(ConfigError, match="head_epochs.*pretrain"):
        PretrainConfig(train=TrainConfig(head_epochs=1))

    cfg = tiny_config(tiny_csv, tmp_path / "cache", epochs=1, head_epochs=1)
    model = loop.model_for(cfg, loop.prepare(cfg, log=False).bench)
    del model.head
    model.head = torch.nn.Parameter(torch.zeros(1))   # not a module
    with pytest.raises(UsageError, match="--head-epochs 1.*no 'head' module"):
        train(cfg, tmp_path / "run", progress=False, model=model)
