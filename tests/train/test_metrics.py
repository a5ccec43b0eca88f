"""Metrics: OGB's definitions (a score per task on its labelled rows, averaged
over the tasks), against scikit-learn and from-scratch references."""
import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from graphformer.train.metrics import compute_metrics

NAN = float("nan")


def test_multi_task_regression_averages_each_tasks_score():
    # task 0: 3 labels, errors 10, 10, 30; task 1: 3 labels, errors 0.5, 1, 0.5
    y = np.array([[100, 1], [200, NAN], [300, 3], [NAN, 4]])
    p = np.array([[110, 1.5], [190, 0], [330, 2], [0, 4.5]])
    rmse = [math.sqrt((100 + 100 + 900) / 3), math.sqrt((0.25 + 1 + 0.25) / 3)]
    mae = [50 / 3, 2 / 3]
    out = compute_metrics(y, p, "regression")
    assert out["rmse"] == pytest.approx(sum(rmse) / 2, rel=1e-12)   # 9.928, not 13.55 pooled
    assert out["mae"] == pytest.approx(sum(mae) / 2, rel=1e-12)


def test_uneven_labels_weigh_each_task_equally():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(105, 2))
    y[5:, 1] = NAN                                  # task 1: 5 labels
    p = y.copy()
    p[:, 0] += 1.0                                  # rmse 1 on 105 rows
    p[:5, 1] += 3.0                                 # rmse 3 on 5 rows
    assert compute_metrics(y, p, "regression")["rmse"] == pytest.approx(2.0, rel=1e-12)


def test_a_task_without_labels_is_left_out_and_none_is_nan():
    y = np.array([[1.0, NAN], [2.0, NAN]])
    assert compute_metrics(y, np.array([[1.5, 0], [2.5, 0]]), "regression")["rmse"] == \
        pytest.approx(0.5)
    assert math.isnan(compute_metrics(y[:, 1:], np.zeros((2, 1)), "regression")["rmse"])


def test_classification_equals_scikit_learn_per_task():
    rng = np.random.default_rng(1)
    y = (rng.random((40, 3)) < 0.4).astype(float)
    y[rng.random((40, 3)) < 0.2] = NAN
    y[:, 2] = np.where(np.isnan(y[:, 2]), NAN, 1.0)     # one class only: left out
    p = rng.normal(size=(40, 3)).round(1)               # ties
    out = compute_metrics(y, p, "classification")
    for name, fn in (("rocauc", roc_auc_score), ("ap", average_precision_score)):
        scores = [fn(y[~np.isnan(y[:, t]), t], p[~np.isnan(y[:, t]), t]) for t in (0, 1)]
        assert out[name] == pytest.approx(np.mean(scores), rel=1e-12)


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_non_finite_predictions_score_nan_for_either_task(task):
    """A diverged model's NaN outputs are a NaN score, which the run reports as
    divergence, for classification as for regression (scikit-learn raised)."""
    y = np.array([[0.0], [1.0], [1.0]])
    for bad in (NAN, math.inf):
        out = compute_metrics(y, np.array([[bad], [0.2], [0.3]]), task)
        assert out and all(math.isnan(v) for v in out.values())
