"""Metrics with missing labels masked out, JSON-serialisable (Python floats).

For OGB data sets the metric comes from ogb's own ``Evaluator``; elsewhere the
same definitions are computed here, each task scored on its labelled rows and
the scores averaged over the tasks, as OGB does: RMSE / MAE for regression
(over the tasks with a label), ROC-AUC / AP for classification (over the
tasks that have both classes). A task whose predictions include a NaN or an
infinity (a diverged model) scores NaN.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

LOWER_IS_BETTER = {"rmse", "mae", "loss"}


def _per_task(y_true: np.ndarray, y_pred: np.ndarray, fn, classes: bool) -> float:
    """The mean over tasks of ``fn(labels, predictions)`` on each task's
    labelled rows; with ``classes``, over the tasks that have both classes."""
    scores = []
    for t in range(y_true.shape[1]):
        mask = ~np.isnan(y_true[:, t])
        labels, pred = y_true[mask, t], y_pred[mask, t]
        if not labels.size or (classes and not 0 < labels.sum() < labels.size):
            continue
        scores.append(fn(labels, pred) if np.isfinite(pred).all() else float("nan"))
    if not scores:
        return float("nan")
    return float(np.mean(scores))


def _rmse(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.sqrt(np.mean((p - y) ** 2)))


def _mae(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean(np.abs(p - y)))


def compute_metrics(y_true: np.ndarray, y_pred: np.ndarray, task: str,
                    ogb_name: Optional[str] = None) -> Dict[str, float]:
    """All metrics of the task for predictions ``[n, T]`` and targets ``[n, T]``
    (NaN = missing). Classification predictions are logits."""
    y_true = np.asarray(y_true, dtype=np.float64).reshape(len(y_true), -1)
    y_pred = np.asarray(y_pred, dtype=np.float64).reshape(y_true.shape)
    if task == "classification":
        from sklearn.metrics import average_precision_score, roc_auc_score  # 1 s to import

        out = {"rocauc": _per_task(y_true, y_pred, roc_auc_score, classes=True),
               "ap": _per_task(y_true, y_pred, average_precision_score, classes=True)}
    else:
        out = {"rmse": _per_task(y_true, y_pred, _rmse, classes=False),
               "mae": _per_task(y_true, y_pred, _mae, classes=False)}
    if ogb_name is not None and ogb_name.startswith("ogbg-") and np.isfinite(y_pred).all():
        from ogb.graphproppred import Evaluator

        evaluator = Evaluator(ogb_name)
        result = evaluator.eval({"y_true": y_true, "y_pred": y_pred})
        out.update({k: float(v) for k, v in result.items()})
    return out


def is_better(value: float, best: Optional[float], metric: str) -> bool:
    if best is None or np.isnan(best):
        return not np.isnan(value)
    return value < best if metric in LOWER_IS_BETTER else value > best
