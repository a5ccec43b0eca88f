"""The weight average (train.ema) against PyTorch's AveragedModel, and a run
that evaluates, selects and saves it."""
import json

import pytest
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from graphformer.errors import ConfigError
from graphformer.train import train
from graphformer.train.average import WeightAverage
from graphformer.train.checkpoint import load_checkpoint, load_run
from graphformer.train.config import TrainConfig
from graphformer.train.loop import evaluate_split, prepare
from graphformer.train.optim import flat_parameter, make_optimizer, zero_grad
from graphformer.train.pretrain import PretrainConfig
from tests.train.conftest import tiny_config


def _net():
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                               torch.nn.Linear(8, 1))


@pytest.mark.parametrize("flat", [True, False])
def test_the_average_is_pytorchs_ema(flat):
    """Over AdamW steps, the average is PyTorch's AveragedModel with
    get_ema_multi_avg_fn (parameters) with the model's buffers (batch-norm
    statistics) copied; in one flat buffer or per tensor alike."""
    torch.manual_seed(0)
    model = _net()
    reference = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.8), use_buffers=False)
    optimizer = make_optimizer(model, lr=0.05, weight_decay=0.01) if flat else \
        torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.01)
    average = WeightAverage(model, 0.8, flat_parameter(optimizer) if flat else None)
    # with the flat parameter, the averages are views of one buffer too
    shared = {p.untyped_storage().data_ptr() for p in average.module.parameters()}
    assert (len(shared) == 1) == flat
    for _ in range(12):
        x = torch.randn(16, 5)
        loss = model(x).square().mean()
        zero_grad(optimizer)
        loss.backward()
        optimizer.step()
        average.update()
        reference.update_parameters(model)
    got, want = average.state_dict(), reference.module.state_dict()
    for key, value in model.state_dict().items():
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(got[key], value), key              # copied
        else:
            torch.testing.assert_close(got[key], want[key], rtol=1e-6, atol=1e-7)
            assert not torch.equal(got[key], value), key          # averaged, not copied
    assert not any(p.requires_grad for p in average.module.parameters())


def test_decay_out_of_range_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"train\.ema.*\[0, 1\)"):
        TrainConfig(ema=1.0)
    with pytest.raises(ConfigError, match=r"train\.ema"):
        TrainConfig(ema=-0.1)
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(_net(), 1.5)
    with pytest.raises(ConfigError, match=r"train\.ema.*not used by pretrain"):
        PretrainConfig(train=TrainConfig(ema=0.9))


def test_a_run_evaluates_selects_and_saves_the_average(tmp_path, tiny_csv):
    """Every epoch's validation and test scores are those of the averaged
    weights, which last.pt and best.pt hold as their model (what evaluate and
    predict load), the trained weights beside them."""
    cfg = tiny_config(tiny_csv, tmp_path / "cache", epochs=3, ema=0.9)
    train(cfg, tmp_path / "run", progress=False)
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    prepared = prepare(cfg, log=False)
    for name, epoch in (("last.pt", 3), ("best.pt", summary["best_epoch"])):
        state = load_checkpoint(tmp_path / "run" / name)
        assert state["epoch"] == epoch
        assert any(not torch.equal(state["model"][k], state["training_model"][k])
                   for k in state["model"])
        model = load_run(tmp_path / "run" / name)[2]
        row = history[epoch - 1]
        for part in ("valid", "test"):
            got = evaluate_split(model, prepared, part, 64, torch.device("cpu"))["rmse"]
            assert got == pytest.approx(row[f"{part}_rmse"], rel=1e-6)
