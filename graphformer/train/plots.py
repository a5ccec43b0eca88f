"""Pictures of a run: the learning curve (``learning_curve.png``) that
molecule training, ensembles, node and link training draw at the end.

matplotlib is imported when a picture is drawn, not with this module.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .._files import atomic_write


def plot_learning_curve(history: List[Dict[str, float]], metric: str, path: Path,
                        members: Sequence[List[Dict[str, float]]] = (),
                        ensemble: Optional[Dict[str, float]] = None) -> None:
    """Training loss and validation / test ``metric`` per epoch, as a PNG; for
    an ensemble (``history`` empty), every member's, with the validation and
    test ``metric`` of their mean prediction (``ensemble``) as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    runs = [("", history)] if history else [(f"member {k}: ", h) for k, h in enumerate(members)]
    for label, rows in runs:
        epochs = [row["epoch"] for row in rows]
        ax_loss.plot(epochs, [row["train_loss"] for row in rows], label=f"{label}train loss")
        for part in ("valid", "test"):
            ax_metric.plot(epochs, [row[f"{part}_{metric}"] for row in rows],
                           label=f"{label}{part}")
    if ensemble is not None:
        for part, style in (("valid", "--"), ("test", ":")):
            ax_metric.axhline(ensemble[part], color="black", linestyle=style,
                              label=f"ensemble {part}")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss (normalised targets)")
    # a negative log-likelihood (--loss mve / evidential) can be negative
    if all(row["train_loss"] > 0 for _, rows in runs for row in rows):
        ax_loss.set_yscale("log")
    ax_loss.legend()
    ax_metric.set_xlabel("epoch")
    ax_metric.set_ylabel(metric)
    ax_metric.legend()
    # fixed margins: tight_layout measures every text, a third of a second a picture
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.12, top=0.96, wspace=0.25)
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)
