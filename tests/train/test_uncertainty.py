"""graphformer.train.uncertainty: distributions, losses, calibration and
metrics against hand-computed values and scipy; the heads and the ensemble's
spread; calibration written at the end of training."""
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import optimize, stats

from graphformer.errors import ConfigError, DataError, UsageError
from graphformer.models import Ensemble, GINBaseline, GraphTransformer, GraphTransformerConfig
from graphformer.train import load_checkpoint, load_run, prepare, train
from graphformer.train import uncertainty as unc
from graphformer.train.checkpoint import CheckpointError, save_checkpoint
from graphformer.train.config import RunConfig, TrainConfig
from graphformer.train.loop import model_config_for
from tests.train.conftest import tiny_config

Z90 = 1.6448536269514722      # scipy.stats.norm.ppf(0.95)


def col(*values):
    return torch.tensor(values, dtype=torch.float64).view(-1, 1)


# ------------------------------------------------------------ distributions

def test_evidential_mean_and_variances_by_hand():
    d = unc.evidential(torch.tensor([[0.5]]), torch.tensor([[2.0]]), torch.tensor([[3.0]]),
                       torch.tensor([[4.0]]))
    # aleatoric beta / (alpha - 1) = 2, epistemic beta / (nu (alpha - 1)) = 1
    assert d.mean.item() == 0.5 and d.aleatoric.item() == 2.0 and d.epistemic.item() == 1.0
    assert d.var.item() == 3.0
    # the total is the variance of the marginal Student-t: df 2 alpha, scale^2
    # beta (1 + nu) / (nu alpha)
    t = stats.t(df=6.0, loc=0.5, scale=math.sqrt(4.0 * 3.0 / (2.0 * 3.0)))
    assert d.var.item() == pytest.approx(t.var())


def test_mixture_is_mean_of_variances_plus_variance_of_means():
    a = unc.gaussian(torch.tensor([[1.0]]), torch.tensor([[0.5]]))
    b = unc.evidential(torch.tensor([[3.0]]), torch.tensor([[1.0]]), torch.tensor([[2.0]]),
                       torch.tensor([[1.0]]))       # aleatoric 1, epistemic 1
    m = unc.mixture([a, b])
    assert m.mean.item() == 2.0
    assert m.aleatoric.item() == pytest.approx(0.75)           # (0.5 + 1) / 2
    assert m.epistemic.item() == pytest.approx(0.5 + 1.0)      # (0 + 1) / 2 + var(1, 3)
    # the mixture's variance from its second moment: E[x^2] = mean(var_k + mu_k^2)
    assert m.var.item() == pytest.approx(((0.5 + 1 ** 2) + (2 + 3 ** 2)) / 2 - 2 ** 2)
    # points (MSE members): the population variance of the members
    pts = unc.from_parameters(torch.tensor([1.0, 2.0, 6.0]).view(3, 1, 1, 1), "mean")
    assert pts.mean.item() == 3.0 and pts.var.item() == pytest.approx(np.var([1, 2, 6]))
    assert pts.aleatoric.item() == 0.0


def test_to_target_units_scales_the_variances_by_y_std_squared():
    d = unc.gaussian(torch.tensor([[1.0, -1.0]]), torch.tensor([[0.25, 4.0]]))
    t = d.to_target_units(torch.tensor([10.0, 0.0]), torch.tensor([2.0, 0.5]))
    torch.testing.assert_close(t.mean, torch.tensor([[12.0, -0.5]]))
    torch.testing.assert_close(t.std, torch.tensor([[1.0, 1.0]]))


# ------------------------------------------------------------ losses

def test_gaussian_nll_loss_is_torchs_full_gaussian_nll_and_skips_missing():
    mean = torch.tensor([[0.0, 1.0], [2.0, -1.0]])
    var = torch.tensor([[1.0, 0.5], [2.0, 3.0]])
    y = torch.tensor([[0.5, float("nan")], [1.0, 0.0]])
    mask = ~torch.isnan(y)
    ref = torch.nn.functional.gaussian_nll_loss(mean[mask], y[mask], var[mask], full=True)
    assert unc.gaussian_nll_loss(mean, var, y).item() == pytest.approx(ref.item())
    expected = np.mean([-stats.norm(m, math.sqrt(v)).logpdf(t)
                        for m, v, t in [(0, 1, 0.5), (2, 2, 1), (-1, 3, 0)]])
    assert unc.gaussian_nll_loss(mean, var, y).item() == pytest.approx(expected)


def test_evidential_loss_is_the_student_t_nll_plus_the_regulariser():
    gamma, nu, alpha, beta = (torch.tensor([v], dtype=torch.float64)
                              for v in (0.3, 1.5, 2.5, 0.8))
    y = torch.tensor([1.1], dtype=torch.float64)
    student = stats.t(df=2 * 2.5, loc=0.3, scale=math.sqrt(0.8 * (1 + 1.5) / (1.5 * 2.5)))
    nll = -student.logpdf(1.1)
    assert unc.evidential_loss(gamma, nu, alpha, beta, y, lam=0.0).item() == pytest.approx(nll)
    reg = 0.8 * (2 * 1.5 + 2.5)                 # |y - gamma| (2 nu + alpha)
    assert unc.evidential_loss(gamma, nu, alpha, beta, y, lam=0.2).item() == \
        pytest.approx(nll + 0.2 * reg)
    params = torch.stack([gamma, nu, alpha, beta]).view(1, 4, 1)
    assert unc.distribution_loss(params, y.view(1, 1), "evidential", 0.2).item() == \
        pytest.approx(nll + 0.2 * reg)
    with pytest.raises(ValueError, match="MSE"):
        unc.distribution_loss(params, y.view(1, 1), "mean")


def test_mve_loss_learns_the_noise_variance():
    g = torch.Generator().manual_seed(0)
    y = 2.0 + 0.5 * torch.randn(1000, 1, generator=g)
    mean, raw = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([mean, raw], lr=0.05)
    for _ in range(400):
        opt.zero_grad()
        unc.gaussian_nll_loss(mean.expand(1000, 1), torch.nn.functional.softplus(raw)
                              .expand(1000, 1), y).backward()
        opt.step()
    assert mean.item() == pytest.approx(y.mean().item(), abs=1e-3)
    assert torch.nn.functional.softplus(raw).item() == pytest.approx(y.var(correction=0).item(),
                                                                      rel=1e-2)


# ------------------------------------------------------------ calibration

def test_zscale_is_the_minimiser_of_the_gaussian_nll():
    mean, std = col(0.0, 1.0, 2.0, 3.0, 4.0), col(1.0, 0.5, 2.0, 1.0, 0.1)
    y = col(1.0, 1.5, -1.0, 3.5, 4.3)
    s = unc.fit_zscale(mean, std, y).item()
    z = ((y - mean) / std).view(-1).numpy()
    assert s == pytest.approx(math.sqrt(np.mean(z ** 2)))           # sqrt(6.125 / 5 ...)
    assert s == pytest.approx(math.sqrt((1 + 1 + 2.25 + 0.25 + 9) / 5))

    def nll(scale):
        sig = std.view(-1).numpy() * scale
        return np.sum(np.log(2 * np.pi * sig ** 2) / 2 + (y - mean).view(-1).numpy() ** 2
                      / (2 * sig ** 2))

    found = optimize.minimize_scalar(nll, bounds=(0.01, 10), method="bounded",
                                     options={"xatol": 1e-10})
    assert s == pytest.approx(found.x, rel=1e-6)
    # missing labels and std = 0 are left out; a task without any gets 1
    y2 = torch.cat([y, torch.full_like(y, float("nan"))], 1)
    std2 = torch.cat([std, std], 1)
    std2[0, 0] = 0.0
    s2 = unc.fit_zscale(torch.cat([mean, mean], 1), std2, y2)
    assert s2[0].item() == pytest.approx(math.sqrt((1 + 2.25 + 0.25 + 9) / 4))
    assert s2[1].item() == 1.0


def test_conformal_quantile_takes_the_ceil_n_plus_1_c_th_score():
    scores = torch.arange(10, 0, -1, dtype=torch.float64)          # 10 .. 1, unsorted
    assert unc.conformal_quantile(scores, 0.9) == 10.0             # ceil(11 * 0.9) = 10
    assert unc.conformal_quantile(scores, 0.8) == 9.0              # ceil(8.8) = 9
    assert unc.conformal_quantile(scores, 0.5) == 6.0              # ceil(5.5) = 6
    assert unc.conformal_quantile(scores, 0.95) == math.inf        # ceil(10.45) = 11 > 10
    # (n + 1) c that is whole up to rounding: n = 9, c = 0.9 -> the 9th
    assert unc.conformal_quantile(torch.arange(1.0, 10.0), 0.9) == 9.0


def test_conformal_intervals_cover_at_least_the_coverage():
    g = torch.Generator().manual_seed(1)
    hits, trials = [], 300
    for _ in range(trials):                 # heavy tails: Gaussian intervals would not do
        std = 0.5 + torch.rand(40, 1, generator=g)
        y = std * torch.distributions.StudentT(3.0).sample((40, 1))
        cal = unc.fit_calibration(torch.zeros(20, 1), std[:20], y[:20])
        low, high = unc.interval(torch.zeros(20, 1), std[20:], cal, 0.8)
        hits.append(((low <= y[20:]) & (y[20:] <= high)).double().mean().item())
    # E[coverage] is in [0.8, 0.8 + 1/21] for exchangeable scores
    assert 0.78 <= np.mean(hits) <= 0.8 + 1 / 21 + 0.02


def test_intervals_by_hand():
    mean, std = col(1.0, 2.0), col(0.5, 2.0)
    scores = torch.tensor([0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
                          dtype=torch.float64)
    cal = unc.Calibration([2.0], [scores])                 # no floor: z-scaling alone
    low, high = unc.interval(mean, std, cal, 0.9, "zscale")
    torch.testing.assert_close(high - mean, std * 2.0 * Z90)
    low, high = unc.interval(mean, std, cal, 0.8, "conformal")     # the 9th score: 7
    torch.testing.assert_close(high, col(1.0 + 7 * 1.0, 2.0 + 7 * 4.0))   # 7 * (2 * std)
    torch.testing.assert_close(low, col(1.0 - 7.0, 2.0 - 28.0))
    # scale 2 and floor 3: calibrated std sqrt((2 std)^2 + 9) = sqrt(10), 5
    floored = unc.Calibration([2.0], [scores], floor=[3.0])
    torch.testing.assert_close(floored.calibrated(std), col(math.sqrt(10.0), 5.0))
    low, high = unc.interval(mean, std, floored, 0.9, "zscale")
    torch.testing.assert_close(high - mean, col(math.sqrt(10.0), 5.0) * Z90)
    low, high = unc.interval(mean, std, floored, 0.8, "conformal")
    torch.testing.assert_close(high - mean, col(7 * math.sqrt(10.0), 35.0))
    low, high = unc.interval(mean, std, None, 0.9, "gaussian")
    torch.testing.assert_close(high, mean + Z90 * std)
    with pytest.raises(DataError, match="at least 19 labelled valid molecules"):
        unc.interval(mean, std, cal, 0.95)
    with pytest.raises(UsageError, match="needs a calibration"):
        unc.interval(mean, std, None, 0.9, "zscale")
    with pytest.raises(UsageError, match=r"coverage in \(0, 1\)"):
        unc.interval(mean, std, cal, 1.0)
    with pytest.raises(UsageError, match="method"):
        unc.interval(mean, std, cal, 0.9, "isotonic")


def _nll(mean, std, y, s, b):
    sig2 = (s * std) ** 2 + b ** 2
    return float((0.5 * torch.log(2 * math.pi * sig2) + (y - mean) ** 2 / (2 * sig2)).mean())


def test_scale_and_floor_are_the_minimiser_of_the_gaussian_nll():
    g = torch.Generator().manual_seed(0)
    n = 400                                   # a spread that misses a noise floor of 0.3
    std = 0.02 + 0.3 * torch.rand(n, 1, generator=g, dtype=torch.float64)
    y = torch.randn(n, 1, generator=g, dtype=torch.float64) * torch.sqrt((1.5 * std) ** 2 + 0.09)
    mean = torch.zeros(n, 1, dtype=torch.float64)
    s, b = unc.fit_scale_floor(mean, std, y)
    found = optimize.minimize(lambda p: _nll(mean, std, y, math.exp(p[0]), math.exp(p[1])),
                              x0=[0.0, math.log(0.1)], method="Nelder-Mead",
                              options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 10000})
    assert _nll(mean, std, y, s.item(), b.item()) <= found.fun + 1e-9
    assert s.item() == pytest.approx(math.exp(found.x[0]), rel=1e-3)
    assert b.item() == pytest.approx(math.exp(found.x[1]), rel=1e-3)
    assert 1.2 < s.item() < 1.8 and 0.25 < b.item() < 0.35      # the planted 1.5 and 0.3
    # never worse than z-scaling alone on the part it is fitted on
    z = unc.fit_zscale(mean, std, y).item()
    assert _nll(mean, std, y, s.item(), b.item()) < _nll(mean, std, y, z, 0.0) - 0.1
    cal = unc.fit_calibration(mean, std, y)
    assert cal.zscale == [pytest.approx(s.item())] and cal.floor == [pytest.approx(b.item())]
    # the scores are in units of the calibrated std
    expected = torch.sort((y / cal.calibrated(std)).abs().view(-1)).values
    torch.testing.assert_close(cal.scores[0], expected)


def test_floor_is_zero_when_z_scaling_fits_and_takes_in_a_zero_spread():
    # a constant spread: a floor only restates the scale, so plain z-scaling wins the tie
    std, y = torch.ones(6, 1, dtype=torch.float64), col(0.5, -0.5, 0.5, -0.5, 0.5, -0.5)
    s, b = unc.fit_scale_floor(torch.zeros(6, 1, dtype=torch.float64), std, y)
    assert s.item() == pytest.approx(0.5) and b.item() == 0.0
    # errors that grow with the spread exactly: z-scaling alone is best
    std = col(0.1, 0.2, 0.4, 0.8, 1.6, 3.2)
    y = std * col(1.0, -1.0, 1.0, -1.0, 1.0, -1.0) * 2.0
    s, b = unc.fit_scale_floor(torch.zeros_like(y), std, y)
    assert s.item() == pytest.approx(2.0) and b.item() == 0.0
    # two members that agree (std 0) no longer leave their molecule out: a floor takes it in
    std = col(0.0, 0.5, 1.0, 2.0)
    y = col(1.0, -1.0, 1.5, -2.0)
    cal = unc.fit_calibration(torch.zeros_like(y), std, y)
    assert cal.floor[0] > 0 and cal.scores[0].numel() == 4
    # missing labels are left out; a task without any gets scale 1, floor 0
    y2 = torch.cat([y, torch.full_like(y, float("nan"))], 1)
    s2, b2 = unc.fit_scale_floor(torch.zeros_like(y2), torch.cat([std, std], 1), y2)
    assert (s2[1].item(), b2[1].item()) == (1.0, 0.0)
    assert (s2[0].item(), b2[0].item()) == (cal.zscale[0], cal.floor[0])


def test_calibration_round_trips_and_refuses_bad_content():
    cal = unc.fit_calibration(col(0.0, 0.0, 0.0), col(1.0, 2.0, 1.0), col(3.0, -2.0, 0.5))
    again = unc.Calibration.from_dict(cal.to_dict())
    assert again.zscale == cal.zscale and again.floor == cal.floor and again.part == "valid"
    torch.testing.assert_close(again.scores[0], cal.scores[0])
    assert cal.to_dict()["n"] == [3] and cal.to_dict()["version"] == 2
    # version 1 (z-scaling alone, scores in units of the raw std) gives the same intervals
    v1 = unc.Calibration.from_dict({"version": 1, "zscale": [2.0], "part": "valid",
                                    "scores": [torch.tensor([0.5, 1.0, 3.0, 4.0] * 3,
                                                            dtype=torch.float64).sort().values]})
    assert v1.floor == [0.0]
    low, high = unc.interval(col(0.0), col(1.5), v1, 0.75, "conformal")   # 10th of 12: 4
    assert high.item() == pytest.approx(4.0 * 1.5)
    with pytest.raises(ValueError, match="floor of task 0"):
        unc.Calibration([1.0], [torch.tensor([1.0])], floor=[-1.0])
    with pytest.raises(ValueError, match="sorted"):
        unc.Calibration([1.0], [torch.tensor([2.0, 1.0])])
    with pytest.raises(ValueError, match="> 0"):
        unc.Calibration([0.0], [torch.tensor([1.0])])
    with pytest.raises(ValueError, match="one z-scale, one floor"):
        unc.Calibration([1.0, 1.0], [torch.tensor([1.0])])
    state = {"calibration": {"version": 1, "zscale": [1.0], "scores": ["x"]},
             "y_mean": torch.zeros(1)}
    with pytest.raises(DataError, match="ckpt.pt: its calibration is malformed"):
        unc.calibration_of(state, "ckpt.pt")
    state["calibration"] = cal.to_dict()
    state["y_mean"] = torch.zeros(2)
    with pytest.raises(DataError, match="1 task"):
        unc.calibration_of(state, "ckpt.pt")
    assert unc.calibration_of({"y_mean": torch.zeros(1)}) is None


# ------------------------------------------------------------ metrics

def test_gaussian_nll_metric_is_scipys_and_per_task():
    mean = torch.tensor([[0.0, 1.0], [1.0, 2.0], [2.0, 0.0]])
    std = torch.tensor([[1.0, 2.0], [0.5, 1.0], [2.0, 1.0]])
    y = torch.tensor([[0.3, float("nan")], [1.5, 2.5], [0.0, -1.0]])
    got = unc.gaussian_nll(mean, std, y)
    t0 = -np.mean(stats.norm.logpdf([0.3, 1.5, 0.0], [0, 1, 2], [1, 0.5, 2]))
    t1 = -np.mean(stats.norm.logpdf([2.5, -1.0], [2, 0], [1, 1]))
    torch.testing.assert_close(got, torch.tensor([t0, t1], dtype=torch.float64))


def test_miscalibration_area_by_hand():
    # errors 0.5, 1, 2 with std 1: inside the central interval of level p when
    # sqrt(2) erfinv(p) >= |error|, i.e. p >= 2 Phi(|error|) - 1
    mean, std, y = col(0.0, 0.0, 0.0), col(1.0, 1.0, 1.0), col(0.5, -1.0, 2.0)
    thresholds = 2 * stats.norm.cdf([0.5, 1.0, 2.0]) - 1
    p = np.arange(1, 100) / 100
    observed = (p[:, None] >= thresholds[None, :]).mean(1)
    expected = np.abs(observed - p).sum() / 100
    assert unc.miscalibration_area(mean, std, y).item() == pytest.approx(expected)
    # with 4 levels: p = .25 .5 .75 -> thresholds .383 .683 .954 -> observed 0 1/3 2/3
    assert unc.miscalibration_area(mean, std, y, levels=4).item() == pytest.approx(
        (0.25 + 1 / 6 + 1 / 12) / 4)
    # perfectly calibrated residuals (the normal quantiles) have a small area
    n = 2000
    q = torch.tensor(stats.norm.ppf((np.arange(n) + 0.5) / n)).view(-1, 1)
    assert unc.miscalibration_area(torch.zeros(n, 1), torch.ones(n, 1), q).item() < 0.01


def test_ence_by_hand():
    std = col(1.0, 1.0, 2.0, 2.0, 3.0)
    y = col(1.0, -3.0, 2.0, 2.0, 0.0)          # errors against mean 0
    # 2 bins by std: {1, 1, 2} and {2, 3} (tensor_split: the first bin takes the extra)
    rmv1, rmse1 = math.sqrt((1 + 1 + 4) / 3), math.sqrt((1 + 9 + 4) / 3)
    rmv2, rmse2 = math.sqrt((4 + 9) / 2), math.sqrt((4 + 0) / 2)
    expected = (abs(rmv1 - rmse1) / rmv1 + abs(rmv2 - rmse2) / rmv2) / 2
    assert unc.ence(torch.zeros(5, 1), std, y, bins=2).item() == pytest.approx(expected)
    # more bins than entries: one entry a bin
    per = [abs(s - abs(e)) / s for s, e in [(1, 1), (1, -3), (2, 2), (2, 2), (3, 0)]]
    assert unc.ence(torch.zeros(5, 1), std, y, bins=100).item() == pytest.approx(np.mean(per))


def test_spearman_is_scipys_with_ties():
    g = torch.Generator().manual_seed(3)
    a = torch.randint(0, 5, (30,), generator=g).double()
    b = a + torch.randint(0, 4, (30,), generator=g).double()
    assert unc.spearman(a, b) == pytest.approx(stats.spearmanr(a.numpy(), b.numpy())[0])
    np.testing.assert_allclose(unc.rank(a).numpy(), stats.rankdata(a.numpy()))
    assert math.isnan(unc.spearman(torch.ones(4), torch.arange(4.0)))
    mean, std = col(0.0, 0.0, 0.0, 0.0), col(1.0, 2.0, 3.0, 4.0)
    y = col(0.1, -0.5, 0.4, 2.0)               # |error| ranks 1 3 2 4 against 1 2 3 4
    assert unc.error_spearman(mean, std, y).item() == pytest.approx(0.8)


def test_coverage_and_width_and_the_metric_dict():
    low, high, y = col(0.0, 0.0, 1.0, 0.0), col(1.0, 2.0, 2.0, 4.0), col(0.5, 2.0, 0.0, 9.0)
    covered, width = unc.coverage_width(low, high, y)
    assert covered.item() == 0.5 and width.item() == pytest.approx((1 + 2 + 1 + 4) / 4)
    mean, std = torch.zeros(10, 1), torch.ones(10, 1)
    y = torch.linspace(-2, 2, 10).view(-1, 1)
    cal = unc.fit_calibration(mean, std, y)
    m = unc.uncertainty_metrics(mean, std, y, cal, 0.8)
    s = cal.zscale[0]
    assert m["calibrated"] == "zscale" and m["interval"]["level"] == 0.8
    assert m["nll"] == pytest.approx(unc.gaussian_nll(mean, std * s, y).item())
    assert m["uncalibrated"]["nll"] == pytest.approx(unc.gaussian_nll(mean, std, y).item())
    assert m["spearman"] is None               # a constant std ranks nothing
    assert m["interval"]["gaussian"]["width"] == pytest.approx(2 * 1.2815515655446004)
    assert m["interval"]["zscale"]["width"] == pytest.approx(2 * 1.2815515655446004 * s)
    # the 9th of the |y| scores sorted (0.22 0.22 0.67 ... 1.56 2 2): ceil(11 * 0.8) = 9
    q = sorted(np.abs(y.view(-1).numpy()))[8]
    assert q == 2.0 and m["interval"]["conformal"] == {"coverage": 1.0, "width": 4.0}
    json.dumps(m, allow_nan=False)             # JSON-ready, no NaN
    none = unc.uncertainty_metrics(mean, std, y, None, 0.8)
    assert none["calibrated"] == "none" and none["interval"]["conformal"] is None


# ------------------------------------------------------------ heads and models

def _batch():
    from torch_geometric.data import Batch

    from graphformer.data import from_smiles
    from graphformer.data.encodings import encodings

    t = encodings(4, 0)
    return Batch.from_data_list([t(from_smiles(s)) for s in ("CCO", "c1ccccc1", "CC(=O)O")])


def _model(output="mean", tasks=2, seed=0):
    torch.manual_seed(seed)
    return GraphTransformer(GraphTransformerConfig(num_tasks=tasks, hidden=16, layers=1,
                                                   heads=2, rwse_steps=4, output=output)).eval()


def test_heads_keep_the_mean_first_and_constrain_the_rest():
    batch = _batch()
    plain = _model("mean")
    assert plain.head[-1].out_features == 2               # an old model's head, unchanged
    torch.testing.assert_close(plain(batch, distribution=True)[:, 0], plain(batch))
    for output, p in (("mve", 2), ("evidential", 4)):
        model = _model(output)
        assert model.head[-1].out_features == 2 * p
        params = model.forward_distribution(batch)
        assert params.shape == (3, p, 2)
        raw = model.head[-1].weight  # the mean is the first num_tasks outputs of the head
        assert raw.shape[0] == 2 * p
        torch.testing.assert_close(model(batch), params[:, 0])
        assert (params[:, 1:] > 0).all()
        if output == "evidential":
            assert (params[:, 2] > 1).all()              # alpha > 1: a finite variance
    with pytest.raises(ValueError, match="regression"):
        GraphTransformerConfig(task="classification", output="mve")
    with pytest.raises(ValueError, match="'output' must be one of"):
        GraphTransformerConfig(output="quantile")


def test_an_old_checkpoint_state_loads_into_a_mean_model():
    old = _model("mean").state_dict()
    GraphTransformer(GraphTransformerConfig(num_tasks=2, hidden=16, layers=1, heads=2,
                                            rwse_steps=4)).load_state_dict(old)
    with pytest.raises(RuntimeError):
        _model("mve").load_state_dict(old)


def test_predict_distribution_in_target_units():
    batch = _batch()
    state = {"y_mean": torch.tensor([1.0, -2.0]), "y_std": torch.tensor([2.0, 0.5])}
    mve = _model("mve")
    mean, std = unc.predict_distribution(mve, batch, state)
    params = mve.forward_distribution(batch).detach()
    torch.testing.assert_close(mean, params[:, 0] * state["y_std"] + state["y_mean"])
    torch.testing.assert_close(std, params[:, 1].sqrt() * state["y_std"])
    # an ensemble of MSE models: the members' spread, population std
    ens = Ensemble([_model("mean", seed=s) for s in range(3)]).eval()
    mean, std = unc.predict_distribution(ens, batch, state)
    each = torch.stack([m(batch) for m in ens.members]).detach()
    torch.testing.assert_close(mean, each.mean(0) * state["y_std"] + state["y_mean"])
    torch.testing.assert_close(std, each.std(0, correction=0) * state["y_std"])
    m, s = ens.mean_std(batch)
    torch.testing.assert_close(m, each.mean(0))
    torch.testing.assert_close(s, each.std(0, correction=0))
    assert unc.spread_of(ens) == "ensemble of 3 (mse)" and unc.spread_of(mve) == "mve"
    # an ensemble of MVE members: the mixture
    ens = Ensemble([_model("mve", seed=s) for s in range(2)]).eval()
    params = ens.member_parameters(batch).detach()
    assert params.shape == (2, 3, 2, 2)
    _, std = unc.predict_distribution(ens, batch, state)
    var = params[:, :, 1].mean(0) + params[:, :, 0].var(0, correction=0)
    torch.testing.assert_close(std, var.sqrt() * state["y_std"])
    low, high = unc.interval(mean, std, None, 0.9, "gaussian")
    torch.testing.assert_close((high - low) / 2, Z90 * std)


def test_classifiers_and_one_mse_model_are_refused():
    batch = _batch()
    state = {"y_mean": torch.zeros(2), "y_std": torch.ones(2)}
    with pytest.raises(UsageError, match="--ensemble K"):
        unc.predict_distribution(_model("mean"), batch, state)
    torch.manual_seed(0)
    cls = GraphTransformer(GraphTransformerConfig(num_tasks=2, task="classification", hidden=16,
                                                  layers=1, heads=2, rwse_steps=4))
    with pytest.raises(UsageError, match="classifier"):
        unc.predict_distribution(Ensemble([cls, cls]), batch, state)
    with pytest.raises(ValueError, match="regression only"):
        Ensemble([cls, cls]).member_parameters(batch)
    assert not unc.has_spread(cls) and unc.has_spread(_model("evidential"))


# ------------------------------------------------------------ config and training

def test_loss_config_and_its_checks():
    assert TrainConfig().loss == "mse" and TrainConfig().evidential_lambda == 0.2
    with pytest.raises(ConfigError, match="train.loss"):
        TrainConfig(loss="quantile")
    with pytest.raises(ConfigError, match="evidential_lambda"):
        TrainConfig(evidential_lambda=-1)
    with pytest.raises(ConfigError, match="model.output"):
        RunConfig.from_dict({"model": {"output": "evidential"}, "train": {"loss": "mve"}})
    # a saved config (before the loss existed) is a mean model trained by MSE
    cfg = RunConfig.from_saved({"data": {}, "model": {}, "train": {}})
    assert cfg.train.loss == "mse" and cfg.model.output == "mean"


def test_a_distribution_loss_on_classification_data_is_refused(tmp_path, tiny_csv):
    cfg = tiny_config(tiny_csv, tmp_path / "cache", loss="mve")
    prepared = prepare(cfg, log=False)
    bench = SimpleNamespace(**{**vars(prepared.bench), "task": "classification"})
    with pytest.raises(UsageError, match="--loss mve .* classification data set"):
        model_config_for(cfg, bench)
    assert model_config_for(cfg, prepared.bench).output == "mve"


def test_a_model_without_a_distribution_head_cannot_train_mve(tmp_path, tiny_csv):
    cfg = tiny_config(tiny_csv, tmp_path / "cache", loss="mve")
    prepared = prepare(cfg, log=False)
    gin = GINBaseline(model_config_for(cfg, prepared.bench))
    with pytest.raises(UsageError, match="needs a GraphTransformer"):
        train(cfg, tmp_path / "run", progress=False, prepared=prepared, model=gin)


def test_an_mve_run_saves_its_calibration_in_best_pt(tmp_path, tiny_csv):
    cfg = tiny_config(tiny_csv, tmp_path / "cache", loss="mve", epochs=2)
    summary = train(cfg, tmp_path / "run", progress=False)
    state, saved, model = load_run(tmp_path / "run" / "best.pt")   # the checksum holds
    assert saved.train.loss == "mve" and saved.model.output == "mve"
    cal = unc.calibration_of(state)
    assert cal is not None and cal.part == "valid" and [r.numel() for r in cal.scores] == [6]
    assert "calibration" not in load_checkpoint(tmp_path / "run" / "last.pt")
    # the calibration is the one fitted on the validation part of the best model
    prepared = prepare(cfg, log=False)
    from graphformer.train.loop import distribution_split

    mean, std, y = distribution_split(model, prepared, "valid", 64, torch.device("cpu"))
    refit = unc.fit_calibration(mean, std, y)
    assert (cal.zscale, cal.floor) == (refit.zscale, refit.floor)
    test = distribution_split(model, prepared, "test", 64, torch.device("cpu"))
    assert summary["uncertainty"]["test"]["nll"] == pytest.approx(
        unc.uncertainty_metrics(*test, cal)["nll"])
    # a calibration edited after saving breaks the checksum
    raw = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    raw["calibration"]["scores"][0][0] += 1.0
    torch.save(raw, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(tmp_path / "edited.pt")


def test_an_ensemble_saves_the_calibration_of_its_spread(tmp_path, tiny_csv):
    cfg = tiny_config(tiny_csv, tmp_path / "cache", epochs=1, ensemble=2)
    summary = train(cfg, tmp_path / "ens", progress=False)
    state, _, model = load_run(tmp_path / "ens" / "best.pt")
    cal = unc.calibration_of(state)
    prepared = prepare(cfg, log=False)
    from graphformer.train.loop import distribution_split

    mean, std, y = distribution_split(model, prepared, "valid", 64, torch.device("cpu"))
    refit = unc.fit_calibration(mean, std, y)
    assert (cal.zscale, cal.floor) == (refit.zscale, refit.floor)
    assert set(summary["uncertainty"]) == {"valid", "test"}
    # a member (one MSE model) has none
    member = load_checkpoint(tmp_path / "ens" / "member-0" / "best.pt")
    assert "calibration" not in member
    assert "uncertainty" not in json.loads((tmp_path / "ens" / "member-0" / "summary.json")
                                           .read_text())
    # an ensemble of evidential members trains and is calibrated too
    cfg = tiny_config(tiny_csv, tmp_path / "cache", epochs=1, ensemble=2, loss="evidential")
    summary = train(cfg, tmp_path / "evi", progress=False)
    assert unc.calibration_of(load_checkpoint(tmp_path / "evi" / "best.pt")) is not None
    assert summary["uncertainty"]["test"]["interval"]["level"] == 0.9
    # resaving without a calibration (a checkpoint of an older graphformer) still loads
    save_checkpoint({k: v for k, v in state.items() if k not in ("calibration", "format",
                                                                  "version")},
                    tmp_path / "old.pt")
    assert unc.calibration_of(load_checkpoint(tmp_path / "old.pt")) is None


def test_pretraining_refuses_a_distribution_loss():
    from graphformer.errors import ConfigError
    from graphformer.train.config import TrainConfig
    from graphformer.train.pretrain import PretrainConfig

    with pytest.raises(ConfigError, match="train.loss.*is not used by pretrain.*'mve'"):
        PretrainConfig(train=TrainConfig(loss="mve", ensemble=1))


@pytest.mark.parametrize("suffix", ["_std", "_low", "_high"])
def test_target_names_that_are_another_targets_uncertainty_columns_are_refused(suffix):
    """predict writes ``y_std`` (and ``y_low``, ``y_high``) beside target ``y``:
    targets named so are refused before training, not by every predict."""
    from graphformer.train.config import DataConfig

    with pytest.raises(ConfigError, match=rf"data.target_columns.*'y{suffix}' would be the "
                                          r"uncertainty column of target 'y'"):
        DataConfig(dataset="x.csv", target_columns=["y", f"y{suffix}"])
    DataConfig(dataset="x.csv", target_columns=["y", "std_y", "z"])
