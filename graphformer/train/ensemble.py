"""Training an ensemble (``train.ensemble = K > 1``): K whole runs, one model.

Member ``k`` is an ordinary run of the same settings with its own seed
(:meth:`TrainConfig.member`) in ``RUN_DIR/member-k/``: its own metrics,
checkpoints and summary, each selecting its best validation epoch. When
all have finished, the run directory gets

- ``config.json`` (written first: the run's settings, ``ensemble`` K);
- ``best.pt``: an :class:`~graphformer.models.Ensemble` of the members'
  best models, read by ``evaluate``, ``predict`` and :func:`load_run` like
  any checkpoint of ``train``; for regression, with the calibration of the
  ensemble's predictive distribution (the members' spread, and their own
  variances with ``--loss mve`` / ``evidential``) fitted on the validation
  part (``calibration``, :mod:`graphformer.train.uncertainty`);
- ``summary.json``: the ensemble's validation and test metrics (of the mean
  prediction), its uncertainty metrics (``uncertainty``, regression), and
  each member's summary;
- ``learning_curve.png``: every member's curves (a member draws none of
  its own), and the ensemble's metrics.

``resume`` skips the members that finished, resumes the one that was
interrupted, and ends with the metrics of an uninterrupted run.

The run directory is locked while the ensemble runs, and its manifest lists
the members' runs, so ``--overwrite`` (by an ensemble or by one model)
removes them (:mod:`graphformer.train.run_dir`).
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch.distributed as dist

from ..errors import DataError
from ..models import Ensemble
from . import loop  # each member is one model's run of loop.train_model
from .checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from .config import RunConfig
from .data_prep import EVAL_BATCH_GRAPHS, Prepared, prepare
from .plots import plot_learning_curve
from .run import Processes, open_run_directory, resolve_device, write_json
from .run_dir import resume_config


def member_dir(run_dir: Path, k: int) -> Path:
    return run_dir / f"member-{k}"


def member_config(cfg: RunConfig, k: int) -> RunConfig:
    """The run of member ``k``: ``cfg`` as one model with the member's seed
    (:meth:`TrainConfig.member`), on the ensemble's split (a random split
    keeps the ensemble's seed through ``data.split_seed``)."""
    return replace(cfg, data=replace(cfg.data, split_seed=cfg.split_seed()),
                   train=cfg.train.member(k))


def saved_ensemble(run_dir: Path) -> Optional[RunConfig]:
    """The settings of the ensemble's run that ``run_dir`` holds (from its
    ``config.json``, written when the run started), or ``None`` when it
    holds none (a run of one model has a ``last.pt``)."""
    path = run_dir / "config.json"
    if not path.is_file() or (run_dir / "last.pt").exists():
        return None
    try:
        saved = json.loads(path.read_text())
        if int(saved["train"].get("ensemble", 1)) <= 1:
            return None
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return RunConfig.from_saved(saved)


def train_ensemble(cfg: Optional[RunConfig], run_dir: Path, saved: Optional[RunConfig],
                   progress: bool, prepared: Optional[Prepared],
                   overwrite: bool) -> Dict[str, Any]:
    """Train the members of ``cfg`` one after the other, each with
    :func:`graphformer.train.loop.train_model`, then score their mean. ``saved``
    (:func:`saved_ensemble`) resumes the run in ``run_dir``, whose settings
    ``cfg`` may then change only where the run runs. See the module
    docstring for the files; the other arguments are those of
    :func:`graphformer.train.train`."""
    processes = Processes.current()
    writer, world = processes.is_main, processes.world
    resume = saved is not None
    with open_run_directory(run_dir, resume, overwrite, ensemble=True) as directory:
        if saved is not None:
            cfg = resume_config(saved, cfg)
        assert cfg is not None
        show = progress and writer
        if prepared is None and world == 1:   # the data once for all members
            prepared = prepare(member_config(cfg, 0), log=show)
        if not resume and prepared is not None:
            loop.check_start(member_config(cfg, 0), prepared)
        k_total = cfg.train.ensemble
        directory.start(members=k_total)  # checked: an overwritten run goes now
        if writer and not resume:
            write_json(run_dir / "config.json", cfg.to_dict())
        members: List[Dict[str, Any]] = []
        for k in range(k_total):
            folder = member_dir(run_dir, k)
            member_cfg = member_config(cfg, k)
            if show:
                print(f"ensemble member {k + 1}/{k_total} (seed {member_cfg.train.seed}) in "
                      f"{folder}", file=sys.stderr)
            if resume and (folder / "summary.json").is_file() and \
                    (folder / "best.pt").is_file():
                members.append(json.loads((folder / "summary.json").read_text()))
            elif resume and (folder / "last.pt").is_file():
                members.append(loop.train_model(member_cfg, folder, resume=True,
                                                progress=progress, prepared=prepared,
                                                curve=False))
            else:
                members.append(loop.train_model(member_cfg, folder, progress=progress,
                                                prepared=prepared, overwrite=True,
                                                curve=False))
        if world > 1:   # rank 0 has written the last member's best.pt before any rank reads it
            dist.barrier()
        return _finish(cfg, run_dir, members, writer, prepared)


def _finish(cfg: RunConfig, run_dir: Path, members: List[Dict[str, Any]], writer: bool,
            prepared: Optional[Prepared]) -> Dict[str, Any]:
    """The ensemble of the members' best checkpoints: its checkpoint and summary."""
    paths = [member_dir(run_dir, k) / "best.pt" for k in range(len(members))]
    states = [load_checkpoint(p) for p in paths]
    model = Ensemble([model_from_checkpoint(s, p) for s, p in zip(states, paths)])
    first = states[0]
    if prepared is None:
        prepared = prepare(member_config(cfg, 0), log=False)
    prepared = replace(prepared, y_mean=first["y_mean"], y_std=first["y_std"])
    device = resolve_device(cfg.train.device)
    model = model.to(device)
    metric = first["metric"]
    batch_size = max(cfg.train.batch_size, EVAL_BATCH_GRAPHS)
    scores = {part: loop.evaluate_split(model, prepared, part, batch_size, device)
              for part in ("valid", "test")}
    calibration, uncertainty = loop.calibrate(model, prepared, batch_size, device)
    model = model.cpu()
    summary = {"dataset": first["dataset"], "metric": metric,
               "best_epoch": [m["best_epoch"] for m in members],
               f"best_valid_{metric}": scores["valid"][metric],
               f"test_{metric}_at_best": scores["test"][metric],
               "valid": scores["valid"], "test": scores["test"],
               "final": {}, "init": first.get("init"), "members": members}
    if uncertainty:
        summary["uncertainty"] = uncertainty
    config = dict(first["config"], train=dict(first["config"]["train"],
                                              **{"ensemble": cfg.train.ensemble,
                                                 "seed": cfg.train.seed}))
    if writer:
        save_checkpoint({"config": config, "model": model.state_dict(),
                         "epoch": cfg.train.total_epochs, "history": [],
                         "best": {"epoch": None, "valid": scores["valid"][metric],
                                  "test": scores["test"][metric],
                                  "members": [s["best"] for s in states]},
                         "y_mean": first["y_mean"], "y_std": first["y_std"],
                         "dataset": first["dataset"], "metric": metric, "task": first["task"],
                         "data": first.get("data"), "init": first.get("init"),
                         **({"mol_feature_names": first["mol_feature_names"]}
                            if "mol_feature_names" in first else {}),
                         **({"calibration": calibration.to_dict()}
                            if calibration is not None else {})},
                        run_dir / "best.pt")
        write_json(run_dir / "summary.json", summary)
        plot_learning_curve([], metric, run_dir / "learning_curve.png",
                                 members=[json.loads((p.parent / "metrics.json").read_text())
                                          for p in paths],
                                 ensemble={part: scores[part][metric] for part in scores})
    if not math.isfinite(scores["valid"][metric]):
        raise DataError(f"the ensemble in {run_dir} has no finite validation {metric}")
    return summary
