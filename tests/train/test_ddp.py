"""The same training under 2 processes (gloo, CPU) and in one process."""
import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from graphformer.train import train
from tests.train.conftest import tiny_config


def _worker(rank, world, store, csv, root, run_dir, ema, head_epochs):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        cfg = tiny_config(csv, root, epochs=2, batch_size=8, ema=ema, head_epochs=head_epochs)
        cfg.model.dropout = 0.0
        train(cfg, run_dir, progress=False)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("ema, head_epochs", [(0.0, 0), (0.9, 0), (0.0, 1)])
def test_two_processes_match_one_process_with_the_combined_batch(tmp_path, tiny_csv, ema,
                                                                 head_epochs):
    # 48 training molecules; per process 8 per batch. A DistributedSampler
    # gives rank r the items perm[r::2], so the two ranks' k-th batches are
    # together perm[16k:16k+16], the k-th batch of one process with batch 16;
    # DDP averages the two gradients, which is the gradient of that batch.
    # With a weight average (ema), every rank keeps the same one. With the
    # head trained alone first, DDP computes the trunk's gradients and zeroes
    # them; one process does not compute them: the same steps.
    root = tmp_path / "cache"
    single = tiny_config(tiny_csv, root, epochs=2, batch_size=16, ema=ema,
                         head_epochs=head_epochs)
    single.model.dropout = 0.0
    train(single, tmp_path / "single", progress=False)

    mp.spawn(_worker, args=(2, str(tmp_path / "store"), tiny_csv, root, tmp_path / "ddp", ema,
                            head_epochs),
             nprocs=2, join=True)
    ddp_rows = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    one_rows = json.loads((tmp_path / "single" / "metrics.json").read_text())
    for a, b in zip(ddp_rows, one_rows):
        for key in ("train_loss", "valid_rmse", "test_rmse", "test_mae"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), key
    ddp = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    one = torch.load(tmp_path / "single" / "last.pt", weights_only=True)
    for weights in ("model", "training_model") if ema else ("model",):
        for k in one[weights]:
            torch.testing.assert_close(ddp[weights][k], one[weights][k], atol=1e-5, rtol=1e-4)
    # Only rank 0 wrote files: one set, no per-rank copies.
    assert sorted(os.listdir(tmp_path / "ddp")) == sorted(os.listdir(tmp_path / "single"))


def _config_worker(rank, world, store, cfg, run_dir):
    """Train ``cfg`` (a RunConfig) as rank ``rank`` of ``world``."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        train(cfg, run_dir, progress=False)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_an_ensemble_under_two_processes_matches_one_process(tmp_path, tiny_csv):
    # each member as in the test above; the ensemble is scored on every rank,
    # written by rank 0 alone
    root = tmp_path / "cache"
    single = tiny_config(tiny_csv, root, epochs=2, batch_size=16, ensemble=2)
    single.model.dropout = 0.0
    one = train(single, tmp_path / "single", progress=False)
    per_process = tiny_config(tiny_csv, root, epochs=2, batch_size=8, ensemble=2)
    per_process.model.dropout = 0.0
    mp.spawn(_config_worker, args=(2, str(tmp_path / "store"), per_process, tmp_path / "ddp"),
             nprocs=2, join=True)
    ddp = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    for key in ("best_valid_rmse", "test_rmse_at_best"):
        assert ddp[key] == pytest.approx(one[key], rel=1e-4), key
    assert ddp["best_epoch"] == one["best_epoch"]
    for folder in ("", "member-0", "member-1"):
        assert sorted(os.listdir(tmp_path / "ddp" / folder)) == \
            sorted(os.listdir(tmp_path / "single" / folder))


@pytest.mark.slow
def test_missing_labels_weigh_alike_under_two_processes(tmp_path, tiny_csv):
    """Each process's loss is a mean over its own labelled targets: with a
    target half missing, DDP's plain average of the two means weighed a
    label by how many its process held (weights off by 2e-3); each loss is
    now weighted by its process's share of the labels."""
    import pandas as pd

    frame = pd.read_csv(tiny_csv)
    frame["y2"] = (2 * frame["y"]).where(frame.index % 3 != 0)       # a third missing
    csv = tmp_path / "two.csv"
    frame.to_csv(csv, index=False)
    root = tmp_path / "cache"
    single, per_process = (tiny_config(csv, root, epochs=2, batch_size=b) for b in (16, 8))
    for cfg in (single, per_process):
        cfg.data.target_columns = ["y", "y2"]
        cfg.model.dropout = 0.0
    train(single, tmp_path / "single", progress=False)
    mp.spawn(_config_worker, args=(2, str(tmp_path / "store"), per_process, tmp_path / "ddp"),
             nprocs=2, join=True)
    ddp = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)["model"]
    one = torch.load(tmp_path / "single" / "last.pt", weights_only=True)["model"]
    for k in one:
        torch.testing.assert_close(ddp[k], one[k], atol=1e-5, rtol=1e-4)
    rows = [json.loads((tmp_path / d / "metrics.json").read_text())[-1] for d in ("ddp", "single")]
    assert rows[0]["valid_rmse"] == pytest.approx(rows[1]["valid_rmse"], rel=1e-4)
