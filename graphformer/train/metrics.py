"""Metrics with missing labels masked out, JSON-serialisable (Python floats).

For OGB data sets the metric comes from ogb's own ``Evaluator``; elsewhere the
same definitions are computed here (RMSE / MAE for regression, ROC-AUC / AP
averaged over the tasks that have both classes, as OGB does).
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

LOWER_IS_BETTER = {"rmse", "mae", "loss"}


def _per_task(y_true: np.ndarray, y_pred: np.ndarray, fn) -> float:
    scores = []
    for t in range(y_true.shape[1]):
        mask = ~np.isnan(y_true[:, t])
        labels = y_true[mask, t]
        if labels.size and 0 < labels.sum() < labels.size:  # both classes present
            scores.append(fn(labels, y_pred[mask, t]))
    if not scores:
        return float("nan")
    return float(np.mean(scores))


def compute_metrics(y_true: np.ndarray, y_pred: np.ndarray, task: str,
                    ogb_name: Optional[str] = None) -> Dict[str, float]:
    """All metrics of the task for predictions ``[n, T]`` and targets ``[n, T]``
    (NaN = missing). Classification predictions are logits."""
    y_true = np.asarray(y_true, dtype=np.float64).reshape(len(y_true), -1)
    y_pred = np.asarray(y_pred, dtype=np.float64).reshape(y_true.shape)
    if task == "classification":
        from sklearn.metrics import average_precision_score, roc_auc_score  # 1 s to import

        out = {"rocauc": _per_task(y_true, y_pred, roc_auc_score),
               "ap": _per_task(y_true, y_pred, average_precision_score)}
    else:
        mask = ~np.isnan(y_true)
        err = (y_pred - y_true)[mask]
        out = {"rmse": float(np.sqrt(np.mean(err ** 2))) if err.size else float("nan"),
               "mae": float(np.mean(np.abs(err))) if err.size else float("nan")}
    if ogb_name is not None and ogb_name.startswith("ogbg-"):
        from ogb.graphproppred import Evaluator

        evaluator = Evaluator(ogb_name)
        result = evaluator.eval({"y_true": y_true, "y_pred": y_pred})
        out.update({k: float(v) for k, v in result.items()})
    return out


def is_better(value: float, best: Optional[float], metric: str) -> bool:
    if best is None or np.isnan(best):
        return not np.isnan(value)
    return value < best if metric in LOWER_IS_BETTER else value > best
