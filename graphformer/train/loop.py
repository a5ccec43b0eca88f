"""Training and evaluation of one :class:`~graphformer.models.GraphTransformer`.

:func:`train_model` runs a whole training job of one model into a run
directory, or continues one (:func:`graphformer.train.train` and
:func:`graphformer.train.resume` call it, or the ensemble's training):

- ``config.json``: the run's configuration;
- ``metrics.csv`` / ``metrics.json``: one row per epoch, written as it ends;
- ``last.pt`` (every epoch) and ``best.pt`` (best validation metric):
  checkpoints; ``resume(run_dir)`` continues from ``last.pt`` and ends with
  exactly the metrics of an uninterrupted run;
- ``summary.json`` and ``learning_curve.png`` at the end, and TensorBoard logs
  when installed.

The epochs, files, checkpoints and resuming are the skeleton's
(:mod:`graphformer.train.run`); this module adds the molecule model's
training step (:func:`train_step`), the head-only epochs, the weight
average, and inference: :func:`predict`, :func:`evaluate_split`,
:func:`distribution_split`, :func:`calibrate`. The data comes from
:mod:`graphformer.train.data_prep`.

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

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.loader import DataLoader

from ..errors import DataError, UsageError
from ..models import GraphTransformer, masked_loss
from .average import WeightAverage
from .checkpoint import RESUME_FIELDS, RUN_FIELDS, check_fields, load_checkpoint, \
    run_config, save_checkpoint
from .compiled import compile_model, model_input
from .config import RunConfig
from .data_checks import changed_parts
from .data_prep import EVAL_BATCH_GRAPHS, Prepared, model_config_for, model_for, prepare
from .init import PRETRAIN_KIND, init_trunk, resolve_init
from .metrics import compute_metrics, is_better
from .optim import flat_parameter, freeze, optimizer_step
from .plots import plot_learning_curve
from .run import EpochRun, make_training, open_run_directory, restore_training
from .run_dir import RunDirectory, resume_config
from .uncertainty import DEFAULT_EVIDENTIAL_LAMBDA, Calibration, distribution_loss, \
    fit_calibration, has_spread, predictive, uncertainty_metrics


def check_start(cfg: RunConfig, prepared: Prepared) -> None:
    """Build the model of ``cfg`` for ``prepared``'s data and load the trunk
    it starts from (``--init``, the shipped checkpoint), as a new run does:
    an ensemble checks this before it replaces an old run."""
    model = model_for(cfg, prepared.bench)
    start = resolve_init(cfg.train.init, cfg.train.pretrained, model)
    if start is not None:
        init_trunk(model, start)


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
    ``evidential_lambda``).

    Under ``torchrun`` the loss, a mean over this process's labelled
    targets, is weighted by its share of all processes' labelled targets
    (:func:`label_share`), so that DDP's average of the gradients weighs
    every labelled target alike, as one process with the combined batch
    does (with missing labels the processes' counts differ)."""
    num_tasks = y_mean.numel()
    target = (batch.y.view(-1, num_tasks).float() - y_mean) / y_std
    if output == "mean":
        loss = masked_loss(net(batch), target, task)  # type: ignore[arg-type]
    else:
        loss = distribution_loss(net(batch, distribution=True), target, output,
                                 evidential_lambda)
    optimizer_step(net, loss * label_share(target), optimizer, grad_clip, frozen)
    return loss.detach()


def label_share(target: Tensor) -> float:
    """``W · n / N``: this process's labelled targets ``n`` (not NaN) against
    all ``W`` processes' ``N`` (one all-reduce); 1 in one process, and 1
    exactly when every process holds as many."""
    import torch.distributed as dist     # (in this module `dist` also names distributions)

    world = dist.get_world_size() if dist.is_initialized() else 1
    if world == 1:
        return 1.0
    count = (~torch.isnan(target)).sum().to(torch.float64).view(1)
    total = count.clone()
    dist.all_reduce(total)
    if float(total) == 0:
        return 1.0
    return world * float(count) / float(total)


def train_model(cfg: Optional[RunConfig], run_dir: Union[str, Path], resume: bool = False,
                progress: bool = True, prepared: Optional[Prepared] = None,
                model: Optional[torch.nn.Module] = None, overwrite: bool = False,
                curve: bool = True, label: str = "") -> Dict[str, Any]:
    """Train one model as ``cfg`` says into ``run_dir`` (or resume its run),
    whatever ``train.ensemble`` says: the arguments and the result of
    :func:`graphformer.train.train`, which also trains ensembles and is
    what to call. ``label`` goes before every progress line (and turns the
    progress bar off): ensemble members trained side by side."""
    run_dir = Path(run_dir)
    if cfg is not None:   # stored absolute: its checkpoints evaluate from any directory
        cfg = replace(cfg, data=cfg.data.with_absolute_paths())
    with open_run_directory(run_dir, resume, overwrite) as directory:
        return _Run(cfg, directory, progress, prepared, model, curve, label).run_epochs()


class _Run(EpochRun):
    """One training run of one model (:func:`train_model`): its data, model,
    optimiser, weight average and history on the skeleton of
    :class:`~graphformer.train.run.EpochRun`."""

    def __init__(self, cfg: Optional[RunConfig], directory: RunDirectory, progress: bool,
                 prepared: Optional[Prepared], model: Optional[torch.nn.Module],
                 curve: bool = True, label: str = "") -> None:
        """Read the checkpoint when resuming (the run directory has been
        checked), set the process up (threads, seed, device), prepare the
        data and build the model and its training."""
        super().__init__(directory, progress)
        self.curve, self.label = curve, label
        run_dir = self.dir
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
        if cfg.train.compile and self.world > 1:
            raise UsageError("--compile (train.compile) is not supported under torchrun yet: "
                             "run without it")
        self.cfg = cfg
        self.setup(cfg.train)
        self.prepared = self._prepare(prepared, state)
        self._build(model, state)

    def _prepare(self, prepared: Optional[Prepared],
                 state: Optional[Dict[str, Any]]) -> Prepared:
        if prepared is None:
            prepared = self.processes.main_first(lambda: prepare(self.cfg, log=self.show))
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
        self.model = (model if model is not None else model_for(cfg, bench)).to(device)
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
        if cfg.train.compile:
            self.net = compile_model(self.net)
        # the weights evaluated, selected and saved: the model's, or their average
        self.average = WeightAverage(self.model, cfg.train.ema, flat_parameter(self.optimizer)) \
            if cfg.train.ema > 0 else None
        self.metric = bench.metric
        self.best = {"epoch": None, "valid": None}
        if state is not None:
            self.history, self.best, self.start_epoch = restore_training(
                state, self.model, self.optimizer, self.scheduler, self.average,
                world=self.world, path=self.dir / "last.pt")
        self.full_cfg = RunConfig(cfg.data, self.model_cfg, cfg.train).to_dict()
        self.open_files(self.full_cfg)  # config, data and start checked: an old run goes now
        if self.show and self.start_epoch == 1:
            print(f"{self.label}{bench.name}: {len(bench.dataset)} graphs, split "
                  f"{ {k: len(v) for k, v in prepared.split.items()} }, task {bench.task}, "
                  f"metric {self.metric}; "
                  f"{sum(p.numel() for p in self.model.parameters()):,} parameters; "
                  f"device {device}, {self.world} process(es)", file=sys.stderr)
            if self.init is not None:
                print(f"{self.label}trunk from {self.init['path']} "
                      f"(sha256 {self.init['sha256'][:12]}...)", file=sys.stderr)
            if cfg.train.compile:
                print(f"{self.label}--compile: the training step compiles on the first batch "
                      f"(tens of seconds)", file=sys.stderr)

    def begin_epoch(self, epoch: int) -> None:
        self.frozen = self._phase(epoch)
        self.y_mean = self.prepared.y_mean.to(self.device)
        self.y_std = self.prepared.y_std.to(self.device)

    def step(self, batch: Any) -> Dict[str, Tensor]:
        cfg = self.cfg.train
        if cfg.compile:
            batch = model_input(self.model, batch)
        loss = train_step(self.net, batch, self.optimizer, self.y_mean, self.y_std,
                          self.model_cfg.task, cfg.grad_clip, self.frozen,
                          output=self.model_cfg.output, evidential_lambda=cfg.evidential_lambda)
        if self.average is not None:
            self.average.update()
        return {"loss": loss}

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

    def checkpoint(self, epoch: int) -> Dict[str, Any]:
        prepared = self.prepared
        # "model" is what was evaluated (what evaluate and predict load)
        weights = {"model": self.model.state_dict()} if self.average is None else \
            {"model": self.average.state_dict(), "training_model": self.model.state_dict()}
        return {"config": self.full_cfg, **weights,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "epoch": epoch, "history": self.history, "best": self.best,
                "processes": self.world, "y_mean": prepared.y_mean, "y_std": prepared.y_std,
                "dataset": prepared.bench.name, "metric": self.metric,
                "task": prepared.bench.task, "data": prepared.fingerprint, "init": self.init,
                "mol_feature_names": list(prepared.bench.feature_names)}

    def record_best(self, epoch: int, row: Dict[str, float]) -> bool:
        metric = self.metric
        improved = is_better(row[f"valid_{metric}"], self.best["valid"], metric)
        if improved:
            self.best = {"epoch": epoch, "valid": row[f"valid_{metric}"],
                         "test": row[f"test_{metric}"]}
        return improved

    def epoch_line(self, row: Dict[str, float]) -> str:
        metric = self.metric
        return (f"valid {metric} {row[f'valid_{metric}']:.4f}  "
                f"test {metric} {row[f'test_{metric}']:.4f}")

    def _calibrate_best(self) -> Dict[str, Any]:
        """Fit the calibration of ``best.pt``'s model (one with a distribution
        head) on the validation part and write it into ``best.pt``; the
        uncertainty metrics of the validation and test parts (empty for a
        model without spread)."""
        if self.model_cfg.output == "mean" or not isinstance(self.model, GraphTransformer):
            return {}
        path = self.dir / "best.pt"
        state = load_checkpoint(path)
        trained = self.model
        model = GraphTransformer(trained.config, mol_feature_names=trained.mol_feature_names,
                                 mol_features=trained.mol_features,
                                 attention_backend=trained.attention_backend)
        model.load_state_dict(state["model"])
        calibration, metrics = calibrate(model.to(self.device), self.prepared,
                                         max(self.cfg.train.batch_size, EVAL_BATCH_GRAPHS),
                                         self.device)
        if calibration is not None:
            save_checkpoint({**state, "calibration": calibration.to_dict()}, path)
        return metrics

    def finish(self) -> Dict[str, Any]:
        """Summary files (and the learning curve unless the run was told
        not to draw it); no valid score is an error, not a KeyError."""
        metric, best, history = self.metric, self.best, self.history
        summary = {"dataset": self.prepared.bench.name, "metric": metric,
                   "best_epoch": best["epoch"], f"best_valid_{metric}": best["valid"],
                   f"test_{metric}_at_best": best.get("test"),
                   "final": history[-1] if history else {}, "init": self.init}
        if self.is_main and best["epoch"] is not None:
            uncertainty = self._calibrate_best()
            if uncertainty:
                summary["uncertainty"] = uncertainty
        self.write_summary(summary)
        if self.is_main and history and self.curve:
            plot_learning_curve(history, metric, self.dir / "learning_curve.png")
        self.close(f"no epoch of the run in {self.dir} had a valid validation {metric} "
                   f"(every one was NaN: did the loss diverge? try a lower --lr); "
                   f"nothing was selected, no best.pt was written")
        return summary
