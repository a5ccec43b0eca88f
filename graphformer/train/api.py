"""The public :func:`train` and :func:`resume` of molecule training: one
model (:func:`graphformer.train.loop.train_model`) or, with
``train.ensemble`` K > 1 or the run directory of an ensemble, K of them
(:func:`graphformer.train.ensemble.train_ensemble`, which trains each
member with ``train_model``). This module sits above both, so neither
imports the other's caller.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from ..errors import UsageError
from .config import RunConfig
from .data_prep import Prepared
from .ensemble import saved_ensemble, train_ensemble
from .loop import train_model


def train(cfg: Optional[RunConfig], run_dir: Union[str, Path], resume: bool = False,
          progress: bool = True, prepared: Optional[Prepared] = None,
          model: Optional[torch.nn.Module] = None, overwrite: bool = False,
          curve: bool = True) -> Dict[str, Any]:
    """Train a model as ``cfg`` says, writing everything into ``run_dir``.

    Args:
        cfg: the run configuration. When resuming (see :func:`resume`):
            ``None`` for the saved one, or a config that differs from it at
            most in where the run runs (``train.device``, ``train.threads``,
            ``data.root``), which then apply; any other difference is a
            ``UsageError`` naming it.
        run_dir: the run directory; one that already holds a run is refused
            (``UsageError``) unless ``overwrite`` or ``resume``.
        resume: continue from ``run_dir/last.pt`` (``resume(run_dir)`` says
            the same); the data must be the one it was trained on (else
            ``DataError``).
        progress: show progress bars and per-epoch lines (rank 0 only).
        prepared: already prepared data (to share it between runs).
        model: train this model instead of the ``GraphTransformer`` of
            ``cfg.model`` (a baseline, say); it must take a PyG ``Batch`` and
            return ``[B, num_tasks]``, and carry a ``config`` with ``task``.
        overwrite: replace the run in ``run_dir``: the files graphformer
            wrote for it are removed once the new run's config and data have
            been checked, before its first file, so the directory never
            mixes two runs (see :mod:`graphformer.train.run_dir`).
        curve: draw ``learning_curve.png`` at the end (an ensemble draws its
            members' curves in one picture, and not each member's).

    Returns:
        The summary also written to ``run_dir/summary.json``: best epoch, its
        validation and test metrics, and the final epoch's metrics.

    With ``train.ensemble`` K > 1 it trains K members, each such a run in
    ``run_dir/member-k``, and writes their ensemble (see
    :mod:`graphformer.train.ensemble`); its summary holds the metrics of
    their mean prediction and ``best_epoch`` is the list of theirs.

    Raises:
        DataError: no epoch had a valid validation metric (the summary is
            written first, with ``best_epoch`` null).
    """
    run_dir = Path(run_dir)
    if cfg is not None:   # stored absolute: its checkpoints evaluate from any directory
        cfg = replace(cfg, data=cfg.data.with_absolute_paths())
    saved = saved_ensemble(run_dir) if resume else None
    if saved is not None or not resume and cfg is not None and cfg.train.ensemble > 1:
        if model is not None:
            raise UsageError("an ensemble trains GraphTransformers of its config; it takes no "
                             "'model'")
        return train_ensemble(cfg, run_dir, saved, progress, prepared, overwrite)
    return train_model(cfg, run_dir, resume=resume, progress=progress, prepared=prepared,
                       model=model, overwrite=overwrite, curve=curve)


def resume(run_dir: Union[str, Path], cfg: Optional[RunConfig] = None,
           progress: bool = True) -> Dict[str, Any]:
    """Continue the run in ``run_dir`` from its ``last.pt`` to the end; it
    ends with exactly the metrics of an uninterrupted run. ``cfg`` may change
    only where the run runs (see :func:`train`)."""
    return train(cfg, run_dir, resume=True, progress=progress)
