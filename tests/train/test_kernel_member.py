"""The fingerprint kernel member: the MinMax kernel by unary codes against
the direct formula, kernel ridge against scikit-learn's, the weighted
ensemble and its spread, and ``train --kernel-member morgan`` end to end."""
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from sklearn.kernel_ridge import KernelRidge
from torch_geometric.data import Batch

from graphformer.data import from_smiles
from graphformer.errors import ConfigError, DataError
from graphformer.models import Ensemble
from graphformer.models.kernel import MorganKernelRidge, count_fingerprints, minmax_kernel
from graphformer.train import load_run, train
from graphformer.train import uncertainty as unc
from graphformer.train.config import TrainConfig
from graphformer.train.ensemble import crossfit_blend, kernel_weight
from tests.train.conftest import tiny_config

SMILES = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "CCCCCCCCCC", "C", "CCN(CC)CC",
          "c1ccc2ccccc2c1", "OCC(O)CO", "CC(C)Cc1ccc(C(C)C(=O)O)cc1", "ClC(Cl)Cl"]


def test_minmax_kernel_by_hand_and_by_unary_codes():
    a = torch.tensor([[2, 0, 1], [0, 0, 0]], dtype=torch.uint8)
    b = torch.tensor([[1, 1, 1], [0, 0, 0]], dtype=torch.uint8)
    k = minmax_kernel(a, b)
    assert k[0, 0].item() == pytest.approx((1 + 0 + 1) / (2 + 1 + 1))
    assert k[0, 1].item() == 0.0 and k[1, 1].item() == 1.0     # two empty ones: 1
    fp = count_fingerprints(SMILES)
    assert fp.dtype == torch.uint8 and fp.shape == (10, 2048) and fp.max() > 1   # counts
    member = MorganKernelRidge.fit(fp[:6], torch.randn(6, 1, dtype=torch.float64))
    torch.testing.assert_close(member.kernel(fp), minmax_kernel(fp, fp[:6]), rtol=0, atol=1e-12)
    # on 0/1 vectors it is the Tanimoto similarity
    bits = (fp > 0).to(torch.uint8)
    both = bits.double() @ bits[:6].double().t()
    tanimoto = both / (bits.double().sum(1)[:, None] + bits[:6].double().sum(1) - both)
    torch.testing.assert_close(minmax_kernel(bits, bits[:6]), tanimoto)


def test_kernel_ridge_equals_scikit_learns_per_task_on_labelled_molecules():
    fp = count_fingerprints(SMILES)
    g = torch.Generator().manual_seed(0)
    y = torch.randn(7, 2, generator=g, dtype=torch.float64)
    y[2, 1] = float("nan")                                    # unlabelled in task 1
    member = MorganKernelRidge.fit(fp[:7], y, ridge=0.05)
    pred = member.predict_counts(fp[7:]).double()
    for t in range(2):
        keep = ~torch.isnan(y[:, t])
        gram = minmax_kernel(fp[:7][keep], fp[:7][keep]).numpy()
        ref = KernelRidge(alpha=0.05, kernel="precomputed").fit(gram, (y[keep, t] - y[keep, t]
                                                                     .mean()).numpy())
        expected = ref.predict(minmax_kernel(fp[7:], fp[:7][keep]).numpy()) + \
            y[keep, t].mean().item()
        np.testing.assert_allclose(pred[:, t].numpy(), expected, rtol=1e-5, atol=1e-5)
    assert member.alpha[2, 1].item() == 0.0
    # forward reads the batch's SMILES; the state round-trips
    batch = Batch.from_data_list([from_smiles(s) for s in SMILES[7:]])
    torch.testing.assert_close(member(batch), pred.float())
    again = MorganKernelRidge(7, 2)
    again.load_state_dict(member.state_dict())
    torch.testing.assert_close(again(batch), member(batch))
    with pytest.raises(DataError, match="SMILES"):
        member(Batch.from_data_list([from_smiles("CC")]).__class__())


def _shrunk_weight_by_hand(g, k, y):
    r, d = [float(v) for v in y - g], [float(v) for v in k - g]
    n, sdd = len(r), sum(v * v for v in d)
    w = sum(a * b for a, b in zip(r, d)) / sdd
    se2 = sum((a - w * b) ** 2 for a, b in zip(r, d)) / ((n - 1) * sdd)
    return min(1.0, max(0.0, w * max(0.0, 1 - se2 / w ** 2)))


def test_kernel_weight_is_the_least_squares_blend_shrunk_by_its_error_and_clipped():
    g = torch.tensor([[0.0], [1.0], [2.0], [3.0]], dtype=torch.float64)
    k = torch.tensor([[1.0], [1.0], [1.0], [1.0]], dtype=torch.float64)
    y = 0.25 * k + 0.75 * g                       # exactly w = 0.25, no error: no shrinking
    assert kernel_weight(g, k, y).tolist() == [pytest.approx(0.25)]
    assert kernel_weight(g, k, k).tolist() == [pytest.approx(1.0)]
    assert kernel_weight(g, k, 2 * g - k).tolist() == [0.0]  # would be -1: clipped
    y2 = torch.cat([y, torch.full_like(y, float("nan"))], 1)
    assert kernel_weight(torch.cat([g, g], 1), torch.cat([k, k], 1), y2).tolist() == \
        [pytest.approx(0.25), 0.0]
    # with noise: the least-squares weight 0.25 + ..., shrunk by its standard error
    noise = torch.tensor([[0.3], [-0.2], [0.1], [-0.4]], dtype=torch.float64)
    assert kernel_weight(g, k, y + noise).tolist() == \
        [pytest.approx(_shrunk_weight_by_hand(g[:, 0], k[:, 0], (y + noise)[:, 0]))]
    w_ls = float(((y + noise - g) * (k - g)).sum() / ((k - g) ** 2).sum())
    assert 0.0 < kernel_weight(g, k, y + noise).item() < w_ls
    # a weight smaller than its standard error is 0 (two points of pure noise here)
    y_noise = g + torch.tensor([[0.5], [-0.5], [0.5], [-0.5]], dtype=torch.float64)
    assert kernel_weight(g, k, y_noise).tolist() == [0.0]
    # the same signal on more molecules is shrunk less
    rng = torch.Generator().manual_seed(0)
    g_big = torch.randn(400, 1, generator=rng, dtype=torch.float64)
    k_big = torch.randn(400, 1, generator=rng, dtype=torch.float64)
    noise_big = torch.randn(400, 1, generator=rng, dtype=torch.float64)
    y_big = 0.7 * g_big + 0.3 * k_big + 0.5 * noise_big
    small = kernel_weight(g_big[:20], k_big[:20], y_big[:20])
    big = kernel_weight(g_big, k_big, y_big)
    assert big.item() == pytest.approx(
        _shrunk_weight_by_hand(g_big[:, 0], k_big[:, 0], y_big[:, 0]))
    assert abs(big.item() - 0.3) < 0.05 and small.item() == pytest.approx(
        _shrunk_weight_by_hand(g_big[:20, 0], k_big[:20, 0], y_big[:20, 0]))
    assert kernel_weight(g[:2], k[:2], y[:2]).tolist() == [0.0]   # fewer than 3 labels
    # cross-fitted: each half scored with the weight of the other half
    g4 = torch.zeros(6, 1, dtype=torch.float64)
    k4 = torch.ones(6, 1, dtype=torch.float64)
    y4 = torch.tensor([[1.0], [0.0], [1.0], [0.0], [1.0], [0.0]], dtype=torch.float64)
    torch.testing.assert_close(crossfit_blend(g4, k4, y4), torch.tensor(   # even: w 1, odd: 0
        [[0.0], [1.0], [0.0], [1.0], [0.0], [1.0]], dtype=torch.float64))


class _Const(torch.nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value
        self.config = type("C", (), {"task": "regression", "num_tasks": 1, "output": "mean"})()

    def forward(self, batch):
        return torch.full((2, 1), self.value)


def test_a_weighted_ensemble_and_its_spread():
    members = [_Const(1.0), _Const(3.0), _Const(7.0)]
    w = torch.tensor([[0.25], [0.25], [0.5]], dtype=torch.float64)
    ens = Ensemble(members, w)
    assert ens(None)[0, 0].item() == pytest.approx(0.25 + 0.75 + 3.5)
    mean, std = ens.mean_std(None)
    var = 0.25 * (1 - 4.5) ** 2 + 0.25 * (3 - 4.5) ** 2 + 0.5 * (7 - 4.5) ** 2
    assert mean[0, 0].item() == pytest.approx(4.5) and std[0, 0].item() == pytest.approx(
        math.sqrt(var))
    dist = unc.predictive(ens, None)
    assert dist.mean[0, 0].item() == pytest.approx(4.5)
    assert dist.var[0, 0].item() == pytest.approx(var)
    assert Ensemble(members)(None)[0, 0].item() == pytest.approx(11 / 3)   # unweighted
    with pytest.raises(ValueError, match="summing to 1"):
        Ensemble(members, torch.tensor([[0.5], [0.5], [0.5]]))


class _Reaching(_Const):
    """A member with a reach, as the kernel member: value on every molecule."""
    def __init__(self, value, reach):
        super().__init__(value)
        self.reach = torch.tensor(reach, dtype=torch.float64)

    def forward(self, batch):
        return self.forward_with_reach(batch)[0]

    def forward_with_reach(self, batch):
        return torch.full((len(self.reach), 1), self.value), self.reach


class _Const3(_Const):
    def forward(self, batch):
        return torch.full((3, 1), self.value)


def test_a_member_with_a_reach_pulls_each_molecule_by_it():
    reach = [1.0, 0.5, 0.0]
    g = (1.0 + 3.0) / 2
    for w in (0.5, 1.0):      # at 1 the transformers' weights are 0: the rest is shared equally
        ens = Ensemble([_Const3(1.0), _Const3(3.0), _Reaching(7.0, reach)],
                       torch.tensor([[(1 - w) / 2], [(1 - w) / 2], [w]], dtype=torch.float64))
        # g + w r (k - g), molecule by molecule
        expected = torch.tensor([[g + w * r * (7.0 - g)] for r in reach])
        torch.testing.assert_close(ens(None), expected)
        weights = ens.member_weights(None)[:, :, 0]                 # [K, B]
        torch.testing.assert_close(weights.sum(0), torch.ones(3))
        torch.testing.assert_close(weights[2], torch.tensor(reach) * w)
        torch.testing.assert_close(weights[0], weights[1])
        # the spread and the predictive distribution use the same weights
        means = torch.tensor([1.0, 3.0, 7.0])[:, None]
        var = (weights * (means - expected[:, 0]) ** 2).sum(0)
        mean, std = ens.mean_std(None)
        torch.testing.assert_close(mean, expected)
        torch.testing.assert_close(std[:, 0] ** 2, var)
        dist = unc.predictive(ens, None)
        torch.testing.assert_close(dist.mean, expected)
        torch.testing.assert_close(dist.var[:, 0], var)
    # a reach of 1 everywhere is the weighted mean of the members
    ens = Ensemble([_Const3(1.0), _Const3(3.0), _Reaching(7.0, [1.0] * 3)],
                   torch.tensor([[0.25], [0.25], [0.5]], dtype=torch.float64))
    torch.testing.assert_close(ens(None), torch.full((3, 1), 0.25 + 0.75 + 3.5))
    with pytest.raises(ValueError, match="a member without a reach"):
        Ensemble([_Reaching(1.0, reach), _Reaching(2.0, reach)])(None)


def test_the_kernel_members_reach_is_its_nearest_training_molecules_similarity():
    train_smiles = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "CCN(CC)CC"]
    counts = count_fingerprints(train_smiles)
    member = MorganKernelRidge.fit(counts, torch.tensor([[0.1], [0.4], [-0.3], [0.2]]))
    query = count_fingerprints(["CCO", "c1ccccc1N", "CCCCCCCCCC"])
    pred, reach = member.predict_with_reach(query)
    direct = minmax_kernel(query, counts)
    torch.testing.assert_close(reach, direct.max(1).values)
    assert reach[0].item() == 1.0 and 0.0 < reach[1].item() < 1.0
    torch.testing.assert_close(pred, member.predict_counts(query))


def test_workers_compute_the_members_fingerprints_and_the_member_reads_them(tmp_path):
    from graphformer.datasets.stream import CSVChunks, Featuriser, pieces
    smiles = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "CCN(CC)CC", "OCC(O)CO"]
    source = tmp_path / "in.csv"
    source.write_text("smiles\n" + "\n".join(smiles) + "\n")
    (piece,) = list(pieces(CSVChunks(source, chunk_size=10), 10))
    plain = Featuriser(str(source))(piece).batch
    batch = Featuriser(str(source), ecfp_counts=True)(piece).batch
    assert not hasattr(plain, "ecfp_counts")
    assert torch.equal(batch.ecfp_counts, count_fingerprints(smiles))
    member = MorganKernelRidge.fit(count_fingerprints(smiles[:3]),
                                   torch.tensor([[0.1], [0.4], [-0.3]]))
    want = member.predict_with_reach(count_fingerprints(smiles))
    got = member.forward_with_reach(batch)
    torch.testing.assert_close(got, want)
    batch.smiles = ["C"] * len(smiles)       # the counts, not the SMILES, are read
    torch.testing.assert_close(member.forward_with_reach(batch), want)


def test_the_setting_is_checked():
    with pytest.raises(ConfigError, match="ensemble >= 2 and loss 'mse'"):
        TrainConfig(kernel_member="morgan", ensemble=1)
    with pytest.raises(ConfigError, match="ensemble >= 2 and loss 'mse'"):
        TrainConfig(kernel_member="morgan", loss="mve")
    with pytest.raises(ConfigError, match="must be one of"):
        TrainConfig(kernel_member="svm")
    assert TrainConfig(kernel_member="morgan").member(0).kernel_member == "none"


def test_by_default_an_mse_regression_ensemble_on_smiles_gets_the_member(tmp_path, tiny_csv):
    from graphformer.train import prepare
    from graphformer.train.ensemble import MAX_KERNEL_TRAIN, kernel_member_for
    assert TrainConfig().kernel_member == "auto"
    cfg = tiny_config(tiny_csv, tmp_path / "cache", epochs=1, ensemble=2,
                      kernel_member="auto", member_processes=1)
    prepared = prepare(cfg, log=False)
    assert kernel_member_for(cfg, prepared) == "morgan"
    for train_settings in ({"ensemble": 1}, {"loss": "mve"}, {"kernel_member": "none"}):
        other = replace(cfg, train=replace(cfg.train, **train_settings))
        assert kernel_member_for(other, prepared) == "none", train_settings
    classifier = replace(prepared, bench=replace(prepared.bench, task="classification"))
    assert kernel_member_for(cfg, classifier) == "none"
    assert kernel_member_for(cfg, replace(prepared, bench=replace(prepared.bench,
                                                                  smiles=None))) == "none"
    big = replace(prepared, split={**prepared.split,
                                   "train": torch.arange(MAX_KERNEL_TRAIN + 1)})
    assert kernel_member_for(cfg, big) == "none"
    # asked for by name, the same obstacles are errors that say why
    from graphformer.train.ensemble import with_kernel_member
    no_smiles = replace(prepared, bench=replace(prepared.bench, smiles=None))
    for data, message in ((classifier, "is for regression; .* is a classification data set"),
                          (no_smiles, "needs each molecule's SMILES; .* has none"),
                          (big, f"at most {MAX_KERNEL_TRAIN:,} training molecules .* has "
                                f"{MAX_KERNEL_TRAIN + 1:,}")):
        with pytest.raises(DataError, match=message):
            with_kernel_member(None, data, 16, torch.device("cpu"))
    # the run, its checkpoint (which records what auto chose) and the loaded model
    summary = train(cfg, tmp_path / "run", progress=False)
    assert summary["kernel_member"]["kind"] == "morgan"
    state, saved, model = load_run(tmp_path / "run" / "best.pt")
    assert saved.train.kernel_member == "morgan" and isinstance(model.members[2],
                                                                MorganKernelRidge)
    none = replace(cfg, train=replace(cfg.train, loss="mve"))
    summary = train(none, tmp_path / "run-mve", progress=False)
    assert "kernel_member" not in summary
    assert load_run(tmp_path / "run-mve" / "best.pt")[1].train.kernel_member == "none"


def test_train_with_a_kernel_member_end_to_end(tmp_path, tiny_csv):
    cfg = tiny_config(tiny_csv, tmp_path / "cache", epochs=1, ensemble=2,
                      kernel_member="morgan", member_processes=1)
    summary = train(cfg, tmp_path / "run", progress=False)
    info = summary["kernel_member"]
    assert info["kind"] == "morgan" and info["train_molecules"] == 48
    assert 0.0 <= info["weight"][0] <= 1.0 and info["valid_rmse_crossfit"] > 0
    assert 0.0 < info["valid_reach_mean"] <= 1.0
    state, saved, model = load_run(tmp_path / "run" / "best.pt")
    assert saved.train.kernel_member == "morgan"
    assert isinstance(model, Ensemble) and isinstance(model.members[2], MorganKernelRidge)
    w = info["weight"][0]
    torch.testing.assert_close(model.weights[:, 0], torch.tensor(
        [(1 - w) / 2, (1 - w) / 2, w], dtype=torch.float64))
    # the loaded model predicts the weighted mean, and evaluate scores it as train did
    from graphformer.train import prepare
    from graphformer.train.loop import evaluate_split
    prepared = replace(prepare(saved, log=False), y_mean=state["y_mean"], y_std=state["y_std"])
    batch = next(iter(prepared.eval_batches("test", 64)))
    with torch.no_grad():
        g = torch.stack([m(batch) for m in model.members[:2]]).mean(0)
        k, reach = model.members[2].forward_with_reach(batch)
        torch.testing.assert_close(model(batch), g + w * reach.float()[:, None] * (k - g))
    scores = evaluate_split(model, prepared, "test", 64, torch.device("cpu"))
    assert scores["rmse"] == pytest.approx(summary["test"]["rmse"], rel=1e-5)
    assert "calibration" in state and set(summary["uncertainty"]) == {"valid", "test"}
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["kernel_member"] == info
    # member weights that do not sum to 1, or none, are a damaged checkpoint
    from graphformer.train.checkpoint import CheckpointError, model_from_checkpoint
    bad = {**state, "model": {**state["model"], "weights": state["model"]["weights"] * 2}}
    with pytest.raises(CheckpointError, match="member weights are malformed.*summing to 1"):
        model_from_checkpoint(bad, "ck.pt")
    bad["model"].pop("weights")
    with pytest.raises(CheckpointError, match="ck.pt: its config names a kernel member"):
        model_from_checkpoint(bad, "ck.pt")
    # predict streams it as any checkpoint: worker processes give the same bytes
    import pandas as pd
    from tests.commands import cli
    source = tmp_path / "q.csv"
    pd.DataFrame({"smiles": SMILES}).to_csv(source, index=False)
    outs = []
    for flags in ([], ["--workers", "2"]):
        outs.append(tmp_path / f"p{len(outs)}.csv")
        code, _, err = cli("predict", tmp_path / "run" / "best.pt", source, "-o", outs[-1],
                           "--chunk-size", "4", "--threads", "1", "--quiet", *flags)
        assert code == 0, err
    assert outs[0].read_bytes() == outs[1].read_bytes()
    frame = pd.read_csv(outs[0])
    assert list(frame.columns) == ["row", "smiles", "y", "y_std"] and len(frame) == 10
