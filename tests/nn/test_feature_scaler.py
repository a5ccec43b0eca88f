"""The robust scaler of molecule features: fitted on training rows, finite
and bounded on any input."""
import math

import numpy as np
import pytest
import torch

from graphformer.nn import FeatureScaler

INF, NAN = math.inf, math.nan


def pathological():
    """Columns: ordinary, one 1e30 outlier, inf / -inf / NaN mixed in,
    constant, all NaN, all inf."""
    base = torch.linspace(-1.0, 1.0, 40, dtype=torch.float64)
    cols = [
        base * 3 + 2,
        torch.cat([base[:-1], torch.tensor([1e30], dtype=torch.float64)]),
        torch.cat([base[:-3], torch.tensor([INF, -INF, NAN], dtype=torch.float64)]),
        torch.full((40,), 7.0, dtype=torch.float64),
        torch.full((40,), NAN, dtype=torch.float64),
        torch.full((40,), INF, dtype=torch.float64),
    ]
    return torch.stack(cols, dim=1).float()


def test_statistics_are_those_of_the_finite_training_values():
    x = pathological()
    s = FeatureScaler(6).fit(x)
    for j in (0, 1, 2):
        v = x[:, j].double().numpy()
        v = v[np.isfinite(v)]
        q = np.quantile(v, [0.005, 0.25, 0.5, 0.75, 0.995])
        assert s.median[j].item() == pytest.approx(q[2])
        assert s.low[j].item() == pytest.approx(q[0]) and s.high[j].item() == pytest.approx(q[4])
        assert s.scale[j].item() == pytest.approx((q[3] - q[1]) / 1.3489795)
    # the 1e30 outlier moves neither the centre nor the scale
    assert abs(s.median[1].item()) < 0.1
    assert s.scale[1].item() == pytest.approx(s.scale[0].item() / 3, rel=0.05)
    # constant: scale 1 (not 0); all NaN / all inf: every statistic neutral
    assert s.scale[3].item() == 1.0 and s.median[3].item() == 7.0
    for j in (4, 5):
        assert (s.median[j], s.low[j], s.high[j], s.scale[j]) == (0, 0, 0, 1)


def test_a_mostly_constant_column_is_scaled_by_its_std():
    """A rare substructure count (IQR 0): the standard deviation scales it."""
    x = torch.zeros(100, 1)
    x[:10] = 1.0
    s = FeatureScaler(1).fit(x)
    assert s.median.item() == 0.0 and s.scale.item() == pytest.approx(0.3)
    assert s(torch.tensor([[0.0], [1.0], [40.0]])).flatten().tolist() == \
        pytest.approx([0.0, 1 / 0.3, 1 / 0.3])  # 40 is clipped to the 99.5 % quantile


def test_output_is_finite_and_bounded_for_any_input():
    x = pathological()
    s = FeatureScaler(6).fit(x)
    probe = torch.tensor([[1e38, -1e38, INF, NAN, -INF, 1e30],
                          [NAN, INF, -INF, 7.0, 3.0, NAN],
                          [0.0, 0.5, 0.2, -1e30, 0.0, 0.0]])
    for inp in (x, probe, probe.double()):
        out = s(inp)
        assert out.dtype == inp.dtype and torch.isfinite(out).all()
        assert out.abs().max() <= 5.0
    out = s(probe)
    # a constant or all-missing training column gives 0 for every value
    assert torch.equal(out[:, 3:6], torch.zeros(3, 3))
    # a missing value is the training median (0 out); an extreme one is clipped
    assert out[1, 0].item() == 0.0 and out[0, 2].item() == 0.0
    clip = ((s.high[0] - s.median[0]) / s.scale[0]).item()
    assert out[0, 0].item() == pytest.approx(min(clip, 5.0))
    # ordinary values are standardised: the training column's quartiles at ±0.674
    col = s(x)[:, 0].double()
    assert col.median().abs().item() < 0.1
    assert torch.quantile(col, 0.75).item() == pytest.approx(0.6745, abs=1e-3)


def test_statistics_travel_in_the_state_dict():
    x = pathological()
    fitted = FeatureScaler(6).fit(x)
    other = FeatureScaler(6)
    other.load_state_dict(fitted.state_dict())
    assert torch.equal(other(x), fitted(x))
    assert set(fitted.state_dict()) == {"median", "low", "high", "scale"}


def test_wrong_widths_and_settings_are_named():
    with pytest.raises(ValueError, match=r"must be \[N, 3\].*got \[2, 4\]"):
        FeatureScaler(3)(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="'quantile'"):
        FeatureScaler(3, quantile=0.5)
    with pytest.raises(ValueError, match="'num_features'"):
        FeatureScaler(0)
    with pytest.raises(ValueError, match="at least one training row, got 0"):
        FeatureScaler(3).fit(torch.zeros(0, 3))
