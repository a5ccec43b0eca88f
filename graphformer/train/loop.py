"""Training and evaluation of a :class:`~graphformer.models.GraphTransformer`.

:func:`train` runs a whole training job into a run directory, and
:func:`resume` continues one:

- ``config.json``: the run's configuration;
- ``metrics.csv`` / ``metrics.json``: one row per epoch, written as it ends;
- ``last.pt`` (every epoch) and ``best.pt`` (best validation metric):
  checkpoints; ``resume(run_dir)`` continues from ``last.pt`` and ends with
  exactly the metrics of an uninterrupted run;
- ``summary.json`` and ``learning_curve.png`` at the end, and TensorBoard logs
  when installed.

A regression model whose predictions have a spread (``--loss mve`` or
``evidential``; an ensemble, see :mod:`graphformer.train.ensemble`) gets, at
the end, a calibration fitted on the validation part in its ``best.pt``
(``calibration``, :mod:`graphformer.train.uncertainty`), and the uncertainty
metrics of its validation and test parts in ``summary.json``
(``uncertainty``).

Every file is written atomically (a temporary name, then a rename). A new
run refuses a directory that holds a run unless ``overwrite=True``, and one
that another run is writing (a lock); a resumed run refuses changed settings
or changed data (see
:mod:`graphformer.train.run_dir` and :mod:`graphformer.train.data_checks`).

Under ``torchrun`` (``torch.distributed`` initialised) the model is wrapped in
``DistributedDataParallel``, each process reads its share of every epoch
through a ``DistributedSampler``, and only rank 0 writes files or prints.
"""
from __future__ import annotations

import csv
import json
import random
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader as TorchDataLoader
from torch.utils.data import Dataset, DistributedSampler, Subset
from torch_geometric.loader import DataLoader
from tqdm.auto import tqdm

from .._files import atomic_write, write_text
from ..data.encodings import encodings
from ..datasets import Benchmark, load_dataset, make_split
from ..errors import DataError, UsageError
from ..models import GraphTransformer, GraphTransformerConfig, masked_loss
from .average import WeightAverage
from .batches import batch_loader
from .checkpoint import RESUME_FIELDS, RUN_FIELDS, check_fields, load_checkpoint, \
    run_config, save_checkpoint
from .config import RunConfig, TrainConfig
from .data_checks import (all_mol_features, all_targets, changed_parts, check_scorable,
                          check_split, check_targets, fingerprint)
from .ensemble import saved_ensemble, train_ensemble
from .init import PRETRAIN_KIND, init_trunk, resolve_init
from .metrics import compute_metrics, is_better
from .optim import flat_parameter, freeze, load_optimizer_state, lr_factor, make_optimizer, \
    optimizer_step
from .run_dir import RunDirectory, resume_config
from .uncertainty import DEFAULT_EVIDENTIAL_LAMBDA, LOSSES, Calibration, distribution_loss, fit_calibration, has_spread, \
    predictive, uncertainty_metrics


@dataclass
class Prepared:
    """Data ready for training: the benchmark, its split, the regression
    target normalisation (train mean and std per task), the data's
    fingerprint (:func:`~graphformer.train.data_checks.fingerprint`), and
    the training part's molecule features ``[N_train, F]`` (None without
    any), which the model's feature scaler is fitted on."""
    bench: Benchmark
    split: Dict[str, Tensor]
    y_mean: Tensor
    y_std: Tensor
    fingerprint: Optional[Dict[str, Any]] = None
    train_mol_x: Optional[Tensor] = None
    _batches: Dict[Tuple[str, int], List[Any]] = field(default_factory=dict, repr=False)

    def subset(self, part: str) -> Subset:
        return Subset(self.bench.dataset, self.split[part].tolist())

    def eval_batches(self, part: str, batch_size: int) -> Iterable[Any]:
        """The batches of one part in order, collated once and kept for every
        later evaluation (parts of up to :data:`EVAL_CACHE_GRAPHS` graphs;
        larger ones are collated as they are read)."""
        key = (part, batch_size)
        if key in self._batches:
            return self._batches[key]
        loader = batch_loader(self.subset(part), batch_size)
        if len(self.split[part]) > EVAL_CACHE_GRAPHS:
            return loader
        self._batches[key] = list(loader)
        return self._batches[key]


#: Evaluation parts of up to this many graphs are collated once per run.
EVAL_CACHE_GRAPHS = 100_000
#: Graphs per evaluation batch at least (the training batch size when larger):
#: without gradients, larger batches cost no more memory than training's and
#: evaluate the bundled sets about 1.25x faster than batches of 32. The
#: metrics do not depend on it beyond float rounding.
EVAL_BATCH_GRAPHS = 128


def prepare(cfg: RunConfig, log: bool = True) -> Prepared:
    """Load the data set of ``cfg.data`` with the encodings ``cfg.model`` uses,
    split it and check it (:mod:`~graphformer.train.data_checks`: finite
    targets, no empty part, scorable validation and test parts). Molecule
    features (``cfg.data.molecule_features`` / ``feature_columns``) are
    computed with the graphs; only the training part's are kept for fitting
    their scaling."""
    d = cfg.data
    bench = load_dataset(d.dataset, d.root, smiles_column=d.smiles_column,
                         target_columns=d.target_columns, task=d.task,
                         pre_transform=encodings(cfg.model.rwse_steps, cfg.model.lap_pe),
                         log=log, molecule_features=d.molecule_features,
                         feature_columns=d.feature_columns)
    split = make_split(bench, d.split, seed=cfg.split_seed())
    y_all = all_targets(bench)
    check_targets(bench, y_all)
    check_split(bench, split, d.split)
    check_scorable(bench, split, y_all, d.target_columns)
    y = y_all[split["train"]]
    if bench.task == "regression":
        mean = torch.nanmean(y, dim=0)
        centred = torch.where(torch.isnan(y), torch.zeros_like(y), y - mean)
        count = (~torch.isnan(y)).sum(0).clamp_min(1)
        std = (centred.pow(2).sum(0) / count).sqrt().clamp_min(1e-6)
    else:
        mean, std = torch.zeros(y.size(1)), torch.ones(y.size(1))
    mol_x = all_mol_features(bench)
    return Prepared(bench, split, mean, std, fingerprint(bench, split, y_all, mol_x),
                    mol_x[split["train"]] if mol_x is not None else None)


def model_config_for(cfg: RunConfig, bench: Benchmark) -> GraphTransformerConfig:
    """The model config with the data set's task, task count, features and
    molecule features, and the head's ``output`` of ``train.loss``. A
    distribution loss on a classification data set is a :class:`UsageError`."""
    if cfg.train.loss != "mse" and bench.task != "regression":
        raise UsageError(f"--loss {cfg.train.loss} (train.loss) trains a predictive "
                         f"distribution of a regression target; {bench.name} is a "
                         f"{bench.task} data set (use --loss mse)")
    return replace(cfg.model, num_tasks=bench.num_tasks, task=bench.task,  # type: ignore[arg-type]
                   features=bench.features,  # type: ignore[arg-type]
                   mol_features=len(bench.feature_names),
                   mol_feature_names=tuple(bench.feature_names),
                   output=LOSSES[cfg.train.loss])


def check_start(cfg: RunConfig, prepared: Prepared) -> None:
    """Build the model of ``cfg`` for ``prepared``'s data and load the trunk
    it starts from (``--init``, the shipped checkpoint), as a new run does:
    an ensemble checks this before it replaces an old run."""
    model = GraphTransformer(model_config_for(cfg, prepared.bench))
    start = resolve_init(cfg.train.init, cfg.train.pretrained, model)
    if start is not None:
        init_trunk(model, start)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        why = "built without CUDA" if torch.version.cuda is None else "no GPU visible"
        raise UsageError(f"device 'cuda' (--device cuda, train.device) was asked for but CUDA "
                         f"is not available (torch {torch.__version__}, {why}); use --device "
                         f"cpu or auto")
    if name == "cuda" and dist.is_initialized():
        return torch.device("cuda", dist.get_rank() % torch.cuda.device_count())
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's random number generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@torch.no_grad()
def _run(model: GraphTransformer, loader: Iterable[Any], y_mean: Tensor, y_std: Tensor,
         device: torch.device, with_targets: bool) -> Tuple[Tensor, Optional[Tensor]]:
    """One pass over ``loader``: predictions in target units (regression) or
    logits (classification), and the batches' targets when asked for."""
    model.eval()
    out, ys = [], []
    for batch in loader:
        batch = batch.to(device)
        pred = model(batch).cpu()
        out.append(pred)
        if with_targets:
            ys.append(batch.y.view(pred.shape).float().cpu())
    pred = torch.cat(out) if out else torch.zeros(0, y_mean.numel())
    if model.config.task == "regression":
        pred = pred * y_std + y_mean
    y = (torch.cat(ys) if ys else torch.zeros_like(pred)) if with_targets else None
    return pred, y


def predict(model: GraphTransformer, loader: DataLoader, y_mean: Tensor, y_std: Tensor,
            device: torch.device) -> Tensor:
    """Predictions in target units (regression) or logits (classification)."""
    return _run(model, loader, y_mean, y_std, device, with_targets=False)[0]


@torch.no_grad()
def distribution_split(model: torch.nn.Module, prepared: Prepared, part: str, batch_size: int,
                       device: torch.device) -> Tuple[Tensor, Tensor, Tensor]:
    """The predictive mean and standard deviation of every molecule of one
    part and its targets, each ``[n, T]`` in target units (``prepared``'s
    normalisation; see :func:`graphformer.train.uncertainty.predictive`). A
    model without spread is a ``UsageError``."""
    model.eval()
    means, stds, ys = [], [], []
    for batch in prepared.eval_batches(part, batch_size):
        batch = batch.to(device)
        dist = predictive(model, batch).to_target_units(prepared.y_mean.to(device),
                                                         prepared.y_std.to(device))
        means.append(dist.mean.cpu())
        stds.append(dist.std.cpu())
        ys.append(batch.y.view(dist.mean.shape).float().cpu())
    if not means:
        empty = torch.zeros(0, prepared.y_mean.numel())
        return empty, empty, empty
    return torch.cat(means), torch.cat(stds), torch.cat(ys)


def calibrate(model: torch.nn.Module, prepared: Prepared, batch_size: int,
              device: torch.device) -> Tuple[Optional[Calibration], Dict[str, Any]]:
    """The calibration of a trained model, fitted on the validation part, and
    the uncertainty metrics of the validation and test parts with it
    (:func:`~graphformer.train.uncertainty.uncertainty_metrics`):
    ``(None, {})`` for a model without spread (a classifier, one model
    trained by MSE)."""
    if not has_spread(model):
        return None, {}
    parts = {part: distribution_split(model, prepared, part, batch_size, device)
             for part in ("valid", "test")}
    calibration = fit_calibration(*parts["valid"], part="valid")
    return calibration, {part: uncertainty_metrics(*values, calibration)
                         for part, values in parts.items()}


def evaluate_split(model: GraphTransformer, prepared: Prepared, part: str, batch_size: int,
                   device: torch.device) -> Dict[str, float]:
    """Metrics of ``model`` on one part of the split (ogb's Evaluator for OGB sets).
    Predictions and targets come from the same single pass over the data."""
    pred, y = _run(model, prepared.eval_batches(part, batch_size), prepared.y_mean,
                   prepared.y_std, device, with_targets=True)
    assert y is not None
    return compute_metrics(y.numpy(), pred.numpy(), prepared.bench.task,
                           ogb_name=prepared.bench.ogb_name)


class RunFiles:
    """What rank 0 writes into the run directory: the config, the metrics
    (CSV, JSON, TensorBoard when installed)."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.dir, self.enabled = run_dir, enabled
        self.tb = None
        if enabled:
            run_dir.mkdir(parents=True, exist_ok=True)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except Exception:  # tensorboard is optional
                self.tb = None

    def config(self, cfg: Dict[str, Any]) -> None:
        if self.enabled:
            write_text(self.dir / "config.json", json.dumps(cfg, indent=2) + "\n")

    def metrics(self, history: List[Dict[str, float]]) -> None:
        if not self.enabled or not history:
            return
        write_text(self.dir / "metrics.json", json.dumps(history, indent=2) + "\n")
        keys = list(history[0])
        with atomic_write(self.dir / "metrics.csv", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(history)
        if self.tb is not None:
            row = history[-1]
            for k, v in row.items():
                if k != "epoch":
                    self.tb.add_scalar(k.replace("_", "/", 1), v, int(row["epoch"]))

    def end_epoch(self, history: List[Dict[str, float]], state: Dict[str, Any],
                  improved: bool) -> None:
        """The metrics so far, ``last.pt``, and ``best.pt`` when ``improved``."""
        if not self.enabled:
            return
        self.metrics(history)
        if improved:
            save_checkpoint(state, self.dir / "best.pt")
        save_checkpoint(state, self.dir / "last.pt")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


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


def train_step(net: torch.nn.Module, batch: Any, optimizer: torch.optim.Optimizer,
               y_mean: Tensor, y_std: Tensor, task: str, grad_clip: float = 0.0,
               frozen: Sequence[Tensor] = (), output: str = "mean",
               evidential_lambda: float = DEFAULT_EVIDENTIAL_LAMBDA) -> Tensor:
    """One optimisation step on one batch: forward, the masked loss on
    normalised targets, backward, gradient clipping, optimiser step (the
    gradients of ``frozen`` zeroed first). Returns the loss (a 0-dim tensor).

    The loss is MSE (regression) or binary cross-entropy (classification)
    of ``net(batch)`` for a head of ``output`` ``"mean"``; for ``"mve"`` and
    ``"evidential"`` it is the negative log-likelihood of
    ``net(batch, distribution=True)``
    (:func:`~graphformer.train.uncertainty.distribution_loss`, with
    ``evidential_lambda``)."""
    num_tasks = y_mean.numel()
    target = (batch.y.view(-1, num_tasks).float() - y_mean) / y_std
    if output == "mean":
        loss = masked_loss(net(batch), target, task)  # type: ignore[arg-type]
    else:
        loss = distribution_loss(net(batch, distribution=True), target, output,
                                 evidential_lambda)
    optimizer_step(net, loss, optimizer, grad_clip, frozen)
    return loss.detach()


def make_training(model: torch.nn.Module, train_set: Dataset, cfg: TrainConfig, rank: int,
                  world: int, device: torch.device
                  ) -> Tuple[torch.nn.Module, DistributedSampler, TorchDataLoader,
                             torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """What trains ``model`` on ``train_set`` as ``cfg`` says: the network
    to call (``model`` in ``DistributedDataParallel`` when ``world`` > 1),
    the sampler (this rank's share, reshuffled per epoch), the loader, AdamW
    and its schedule (stepped per batch: constant over ``cfg.head_epochs``,
    then linear warm-up and cosine decay over ``cfg.epochs``)."""
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay)  # before DDP: see its doc
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True,
                                 seed=cfg.seed)
    loader = batch_loader(train_set, cfg.batch_size, sampler=sampler)
    steps_per_epoch = max(1, len(loader))
    total_steps = cfg.total_epochs * steps_per_epoch
    warmup = cfg.warmup_epochs * steps_per_epoch
    head = cfg.head_epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup, total_steps, head))
    return net, sampler, loader, optimizer, scheduler


def restore_training(state: Dict[str, Any], model: torch.nn.Module,
                     optimizer: torch.optim.Optimizer, scheduler: Any,
                     average: Optional[WeightAverage] = None
                     ) -> Tuple[List[Dict[str, float]], Dict[str, Any], int]:
    """Load a checkpoint's model, optimiser and schedule states (and the
    weight average's: the checkpoint's ``model`` then, the trained weights
    in ``training_model``); returns its history, its best epoch record and
    the epoch to continue at."""
    if average is not None:
        average.load_state_dict(state["model"])
        model.load_state_dict(state["training_model"])
    else:
        model.load_state_dict(state["model"])
    load_optimizer_state(optimizer, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return state["history"], state["best"], int(state["epoch"]) + 1


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
        cfg = replace(cfg, data=cfg.data.with_absolute_paths(dataset=not resume))
    saved = saved_ensemble(run_dir) if resume else None
    if saved is not None or not resume and cfg is not None and cfg.train.ensemble > 1:
        if model is not None:
            raise UsageError("an ensemble trains GraphTransformers of its config; it takes no "
                             "'model'")
        return train_ensemble(cfg, run_dir, saved, progress, prepared, overwrite)
    writer = not dist.is_initialized() or dist.get_rank() == 0
    with RunDirectory(run_dir, resume, overwrite, writer) as directory:
        run = _Run.open(cfg, directory, progress, prepared, model)
        for epoch in range(run.start_epoch, run.cfg.train.total_epochs + 1):
            row = run.train_epoch(epoch)
            row.update(run.evaluate())
            run.end_epoch(epoch, row)
        return run.finish(curve)


def resume(run_dir: Union[str, Path], cfg: Optional[RunConfig] = None,
           progress: bool = True) -> Dict[str, Any]:
    """Continue the run in ``run_dir`` from its ``last.pt`` to the end; it
    ends with exactly the metrics of an uninterrupted run. ``cfg`` may change
    only where the run runs (see :func:`train`)."""
    return train(cfg, run_dir, resume=True, progress=progress)


class _Run:
    """One training run: its files, data, model, optimiser and history. The
    epoch loop of :func:`train` calls :meth:`train_epoch`, :meth:`evaluate`
    and :meth:`end_epoch`; :meth:`finish` writes the summary."""

    @classmethod
    def open(cls, cfg: Optional[RunConfig], directory: RunDirectory, progress: bool,
             prepared: Optional[Prepared], model: Optional[torch.nn.Module]) -> "_Run":
        """Read the checkpoint when resuming (the run directory has been
        checked), set the process up (threads, seed, device) and prepare the
        data."""
        run = cls()
        run.directory = directory
        run.dir = run_dir = directory.path
        run.rank = dist.get_rank() if dist.is_initialized() else 0
        run.world = dist.get_world_size() if dist.is_initialized() else 1
        state: Optional[Dict[str, Any]] = None
        if directory.resume:
            state = load_checkpoint(run_dir / "last.pt")
            if state.get("kind") == PRETRAIN_KIND:
                raise UsageError(f"cannot resume {run_dir} with 'graphformer train': it is a run "
                                 f"of 'graphformer pretrain' (resume it with: graphformer "
                                 f"pretrain --resume {run_dir})")
            check_fields(state, run_dir / "last.pt", (RUN_FIELDS, RESUME_FIELDS))
            cfg = resume_config(run_config(state, run_dir / "last.pt"), cfg)
            if cfg.train.ema > 0:  # the trained weights beside their average
                check_fields(state, run_dir / "last.pt", ({"training_model": dict},))
        if cfg is None:
            raise ValueError("train() needs a RunConfig unless it resumes a run")
        run.cfg = cfg
        run.is_main = run.rank == 0
        run.show = progress and run.is_main
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        seed_everything(cfg.train.seed)
        run.device = resolve_device(cfg.train.device)
        run.prepared = run._prepare(prepared, state)
        run._build(model, state)
        return run

    def _prepare(self, prepared: Optional[Prepared],
                 state: Optional[Dict[str, Any]]) -> Prepared:
        if prepared is None:
            if self.world > 1:
                # Rank 0 processes and caches the data set first; the others then
                # read the finished cache instead of racing to write the same files.
                if self.rank == 0:
                    prepared = prepare(self.cfg, log=self.show)
                dist.barrier()
                if self.rank != 0:
                    prepared = prepare(self.cfg, log=False)
            else:
                prepared = prepare(self.cfg, log=self.show)
        assert prepared is not None
        if state is not None:  # -- the data must be the one the run was trained on --
            changed = changed_parts(state.get("data"), prepared.fingerprint) \
                if prepared.fingerprint is not None else []
            if changed:
                raise DataError(f"cannot resume {self.dir}: its data changed since the "
                                f"checkpoint (parts {', '.join(changed)}); restore the data or "
                                f"start a new run")
            prepared = replace(prepared, y_mean=state["y_mean"], y_std=state["y_std"])
        return prepared

    def _build(self, model: Optional[torch.nn.Module], state: Optional[Dict[str, Any]]) -> None:
        """Model (wrapped in DDP under torchrun), loader, optimiser, schedule,
        and the state of a resumed run."""
        cfg, prepared, device = self.cfg, self.prepared, self.device
        bench = prepared.bench
        self.model_cfg = model_config_for(cfg, bench)
        if model is not None and cfg.train.loss != "mse" and not isinstance(model,
                                                                             GraphTransformer):
            raise UsageError(f"--loss {cfg.train.loss} needs a GraphTransformer (its "
                             f"distribution head); {type(model).__name__} predicts a mean only")
        self.model = (model if model is not None else GraphTransformer(self.model_cfg)).to(device)
        self.init = state.get("init") if state is not None else None
        start = resolve_init(cfg.train.init, cfg.train.pretrained, self.model) \
            if state is None else None
        if start is not None:  # a pre-trained trunk; the head starts fresh
            self.init = init_trunk(self.model, start)  # type: ignore[arg-type]
        if state is None and prepared.train_mol_x is not None and \
                getattr(self.model, "mol_scaler", None) is not None:
            self.model.fit_mol_features(prepared.train_mol_x)  # train part only
        self.net, self.sampler, self.loader, self.optimizer, self.scheduler = make_training(
            self.model, prepared.subset("train"), cfg.train, self.rank, self.world, device)
        # the weights evaluated, selected and saved: the model's, or their average
        self.average = WeightAverage(self.model, cfg.train.ema, flat_parameter(self.optimizer)) \
            if cfg.train.ema > 0 else None
        self.metric = bench.metric
        self.history: List[Dict[str, float]] = []
        self.best: Dict[str, Any] = {"epoch": None, "valid": None}
        self.start_epoch = 1
        if state is not None:
            self.history, self.best, self.start_epoch = restore_training(
                state, self.model, self.optimizer, self.scheduler, self.average)
        self.directory.start()  # config, data and start checked: an old run goes now
        self.files = RunFiles(self.dir, self.is_main)
        self.full_cfg = RunConfig(cfg.data, self.model_cfg, cfg.train).to_dict()
        self.files.config(self.full_cfg)
        if self.show and self.start_epoch == 1:
            print(f"{bench.name}: {len(bench.dataset)} graphs, split "
                  f"{ {k: len(v) for k, v in prepared.split.items()} }, task {bench.task}, "
                  f"metric {self.metric}; "
                  f"{sum(p.numel() for p in self.model.parameters()):,} parameters; "
                  f"device {device}, {self.world} process(es)", file=sys.stderr)
            if self.init is not None:
                print(f"trunk from {self.init['path']} (sha256 {self.init['sha256'][:12]}...)",
                      file=sys.stderr)

    def train_epoch(self, epoch: int) -> Dict[str, float]:
        """One pass over the training part; the epoch's row so far."""
        cfg, device = self.cfg, self.device
        # Reseeding per epoch makes dropout and shuffling a function of
        # (seed, epoch) alone: a resumed run repeats the uninterrupted one.
        torch.manual_seed(cfg.train.seed * 1_000_003 + epoch)
        self.sampler.set_epoch(epoch)
        self.net.train()
        self.started, total_loss, seen = time.perf_counter(), 0.0, 0
        frozen = self._phase(epoch)
        bar = tqdm(self.loader, desc=f"epoch {epoch}/{cfg.train.total_epochs}", unit="batch",
                   disable=not self.show, leave=False, file=sys.stderr)
        y_mean, y_std = self.prepared.y_mean.to(device), self.prepared.y_std.to(device)
        for batch in bar:
            batch = batch.to(device)
            loss = train_step(self.net, batch, self.optimizer, y_mean, y_std,
                              self.model_cfg.task, cfg.train.grad_clip, frozen,
                              output=self.model_cfg.output,
                              evidential_lambda=cfg.train.evidential_lambda)
            self.scheduler.step()
            if self.average is not None:
                self.average.update()
            total_loss += loss.item() * batch.num_graphs
            seen += batch.num_graphs
            bar.set_postfix(refresh=False, loss=f"{loss.item():.4f}",
                            mol_s=f"{seen / (time.perf_counter() - self.started):.0f}")
        bar.close()
        train_loss = total_loss / max(seen, 1)
        if self.world > 1:  # the mean training loss over all processes
            t = torch.tensor([total_loss, seen], dtype=torch.float64, device=device)
            dist.all_reduce(t)
            train_loss = float(t[0] / t[1].clamp_min(1))
        return {"epoch": epoch, "train_loss": train_loss,
                "lr": self.optimizer.param_groups[0]["lr"]}

    def _phase(self, epoch: int) -> List[Tensor]:
        """Set the training phase of ``epoch`` up: in the first
        ``head_epochs`` only the head trains (the trunk frozen, see
        :func:`~graphformer.train.optim.freeze`); the first epoch after them
        thaws the trunk and starts AdamW's moments afresh. A function of the
        epoch alone, so a resumed run does the same. Returns the parameters
        whose gradients each step must zero."""
        head_epochs = self.cfg.train.head_epochs
        if not head_epochs or epoch > head_epochs + 1:
            return []
        head = getattr(self.model, "head", None)
        if not isinstance(head, torch.nn.Module):
            raise UsageError(f"--head-epochs {head_epochs}: the model "
                             f"({type(self.model).__name__}) has no 'head' module to train alone")
        head_params = {id(p) for p in head.parameters()}
        trunk = [p for p in self.model.parameters() if id(p) not in head_params]
        frozen = epoch <= head_epochs
        if not frozen:   # fine-tuning starts: fresh moments for every parameter
            self.optimizer.state.clear()
        return freeze(self.optimizer, trunk, frozen, self.cfg.train.weight_decay,
                      autograd=self.world == 1)

    def evaluate(self) -> Dict[str, float]:
        """Validation and test metrics of the model as it is now (of its
        weight average with ``train.ema``)."""
        row: Dict[str, float] = {}
        model = self.average.module if self.average is not None else self.model
        for part in ("valid", "test"):
            for k, v in evaluate_split(model, self.prepared, part,
                                       max(self.cfg.train.batch_size, EVAL_BATCH_GRAPHS),
                                       self.device).items():
                row[f"{part}_{k}"] = v
        return row

    def _checkpoint(self, epoch: int) -> Dict[str, Any]:
        prepared = self.prepared
        # "model" is what was evaluated (what evaluate and predict load)
        weights = {"model": self.model.state_dict()} if self.average is None else \
            {"model": self.average.state_dict(), "training_model": self.model.state_dict()}
        return {"config": self.full_cfg, **weights,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "epoch": epoch, "history": self.history, "best": self.best,
                "y_mean": prepared.y_mean, "y_std": prepared.y_std,
                "dataset": prepared.bench.name, "metric": self.metric,
                "task": prepared.bench.task, "data": prepared.fingerprint, "init": self.init}

    def end_epoch(self, epoch: int, row: Dict[str, float]) -> None:
        """Record the epoch: history, best epoch, files and checkpoints, the
        progress line."""
        metric = self.metric
        row["seconds"] = time.perf_counter() - self.started
        self.history.append(row)
        improved = is_better(row[f"valid_{metric}"], self.best["valid"], metric)
        if improved:
            self.best = {"epoch": epoch, "valid": row[f"valid_{metric}"],
                         "test": row[f"test_{metric}"]}
        if self.is_main:
            self.files.end_epoch(self.history, self._checkpoint(epoch), improved)
        if self.show:
            print(f"epoch {epoch:3d}/{self.cfg.train.total_epochs}  "
                  f"loss {row['train_loss']:.4f}  "
                  f"valid {metric} {row[f'valid_{metric}']:.4f}  "
                  f"test {metric} {row[f'test_{metric}']:.4f}"
                  f"{'  *best' if improved else ''}  ({row['seconds']:.1f}s)", file=sys.stderr)

    def _calibrate_best(self) -> Dict[str, Any]:
        """Fit the calibration of ``best.pt``'s model (one with a distribution
        head) on the validation part and write it into ``best.pt``; the
        uncertainty metrics of the validation and test parts (empty for a
        model without spread)."""
        if self.model_cfg.output == "mean" or not isinstance(self.model, GraphTransformer):
            return {}
        path = self.dir / "best.pt"
        state = load_checkpoint(path)
        model = GraphTransformer(self.model.config)
        model.load_state_dict(state["model"])
        calibration, metrics = calibrate(model.to(self.device), self.prepared,
                                         max(self.cfg.train.batch_size, EVAL_BATCH_GRAPHS),
                                         self.device)
        if calibration is not None:
            save_checkpoint({**state, "calibration": calibration.to_dict()}, path)
        return metrics

    def finish(self, curve: bool = True) -> Dict[str, Any]:
        """Summary files (and the learning curve when ``curve``); no valid
        score is an error, not a KeyError."""
        metric, best, history = self.metric, self.best, self.history
        summary = {"dataset": self.prepared.bench.name, "metric": metric,
                   "best_epoch": best["epoch"], f"best_valid_{metric}": best["valid"],
                   f"test_{metric}_at_best": best.get("test"),
                   "final": history[-1] if history else {}, "init": self.init}
        if self.is_main and best["epoch"] is not None:
            uncertainty = self._calibrate_best()
            if uncertainty:
                summary["uncertainty"] = uncertainty
        if self.is_main:
            write_text(self.dir / "summary.json", json.dumps(summary, indent=2) + "\n")
            if history and curve:
                plot_learning_curve(history, metric, self.dir / "learning_curve.png")
        self.files.close()
        if best["epoch"] is None:
            raise DataError(f"no epoch of the run in {self.dir} had a valid validation {metric} "
                            f"(every one was NaN: did the loss diverge? try a lower --lr); "
                            f"nothing was selected, no best.pt was written")
        return summary
