"""The skeleton of a training run, shared by molecule training
(:mod:`~graphformer.train.loop`), pre-training
(:mod:`~graphformer.train.pretrain`) and ensembles
(:mod:`~graphformer.train.ensemble`):

- the processes (:class:`Processes`: this one's rank and how many there are
  under ``torchrun``; only rank 0 writes or prints) and their setup
  (:func:`setup_process`: threads, seeds, device);
- the run directory (:func:`open_run_directory`: a
  :class:`~graphformer.train.run_dir.RunDirectory` that rank 0 writes) and
  what a run writes into it (:class:`RunFiles`: ``config.json``, the
  metrics, ``last.pt`` and ``best.pt``; :func:`write_json`);
- what trains a model (:func:`make_training`: the network, sampler, loader,
  AdamW and its schedule) and what a resumed run restores
  (:func:`restore_training`);
- the epoch loop (:class:`EpochRun`): every epoch trains
  (:meth:`EpochRun.train_epoch`, one :meth:`EpochRun.step` per batch),
  evaluates, records the epoch and writes the checkpoints
  (:meth:`EpochRun.end_epoch`). A run subclasses it with its data, model,
  evaluation, best-epoch rule and checkpoint contents.

Reseeding torch per epoch makes dropout, masks and shuffling a function of
(seed, epoch) alone, so a run resumed from ``last.pt`` ends with exactly the
metrics of an uninterrupted one.
"""
from __future__ import annotations

import csv
import json
import random
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader as TorchDataLoader
from torch.utils.data import Dataset, DistributedSampler
from tqdm.auto import tqdm

from .._files import atomic_write, write_text
from ..errors import DataError, UsageError
from .average import WeightAverage
from .batches import batch_loader
from .checkpoint import check_processes, save_checkpoint
from .config import TrainConfig
from .optim import load_optimizer_state, lr_factor, make_optimizer
from .run_dir import RunDirectory

T = TypeVar("T")


@dataclass(frozen=True)
class Processes:
    """This process's ``rank`` among ``world`` processes (``torchrun``; one
    process otherwise). Rank 0 is the main one: it writes and prints."""
    rank: int = 0
    world: int = 1

    def __post_init__(self) -> None:
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} of {self.world} processes: need "
                             f"0 <= rank < world and world >= 1")

    @classmethod
    def current(cls) -> "Processes":
        """The processes of ``torch.distributed`` when it is initialised."""
        if dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def main_first(self, load: Callable[[], T]) -> T:
        """``load()`` in every process, rank 0's first: it processes and
        caches a data set, and the others then read the finished cache
        instead of racing to write the same files."""
        if self.world == 1:
            return load()
        if self.is_main:
            value = load()
        dist.barrier()
        if not self.is_main:
            value = load()
        return value


def resolve_device(name: str) -> torch.device:
    """The device ``train.device`` names: ``auto`` is CUDA when available;
    under ``torchrun`` each process takes the GPU of its rank. ``cuda``
    without CUDA is a :class:`UsageError`."""
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


def setup_process(cfg: TrainConfig) -> torch.device:
    """Set this process up as ``cfg`` says (torch's threads when
    ``cfg.threads``, every seed to ``cfg.seed``); returns its device."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    return resolve_device(cfg.device)


def open_run_directory(run_dir: Path, resume: bool, overwrite: bool,
                       ensemble: bool = False) -> RunDirectory:
    """The run directory of a new or resumed run, written by rank 0 only
    (the lock, the checks, ``--overwrite``: see
    :mod:`graphformer.train.run_dir`). Use it as a context manager."""
    return RunDirectory(run_dir, resume, overwrite, Processes.current().is_main,
                        ensemble=ensemble)


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented JSON with a final newline, written atomically."""
    write_text(path, json.dumps(data, indent=2) + "\n")


class RunFiles:
    """What rank 0 writes into the run directory: the config, the metrics
    (CSV, JSON, TensorBoard when installed), the checkpoints."""

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
            write_json(self.dir / "config.json", cfg)

    def metrics(self, history: List[Dict[str, float]]) -> None:
        if not self.enabled or not history:
            return
        write_json(self.dir / "metrics.json", history)
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
    if cfg.warmup_epochs >= cfg.epochs:
        warnings.warn(f"warm-up of {cfg.warmup_epochs} epochs (--warmup-epochs) in a run of "
                      f"{cfg.epochs} (--epochs): the learning rate rises through the whole run, "
                      f"to {cfg.epochs / cfg.warmup_epochs:.2g}x --lr, and never decays",
                      UserWarning, stacklevel=2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup, total_steps, head))
    return net, sampler, loader, optimizer, scheduler


def restore_training(state: Dict[str, Any], model: torch.nn.Module,
                     optimizer: torch.optim.Optimizer, scheduler: Any,
                     average: Optional[WeightAverage] = None, *, world: int = 1,
                     path: Union[str, Path] = "last.pt"
                     ) -> Tuple[List[Dict[str, float]], Dict[str, Any], int]:
    """Load a checkpoint's model, optimiser and schedule states (and the
    weight average's: the checkpoint's ``model`` then, the trained weights
    in ``training_model``); returns its history, its best epoch record and
    the epoch to continue at. A checkpoint of another number of processes
    than ``world`` is refused (:func:`~graphformer.train.checkpoint.check_processes`)."""
    check_processes(state, world, path)
    if average is not None:
        average.load_state_dict(state["model"])
        model.load_state_dict(state["training_model"])
    else:
        model.load_state_dict(state["model"])
    load_optimizer_state(optimizer, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return state["history"], state["best"], int(state["epoch"]) + 1


class EpochRun:
    """One training run in its run directory, epoch by epoch.

    A subclass sets the run up (:meth:`setup`, the data, the model, then
    the attributes of :func:`make_training`, ``history``, ``best`` and
    ``start_epoch``, restored by :func:`restore_training` when resuming, and
    :meth:`open_files`) and provides :meth:`step` (one batch),
    :meth:`evaluate` (the epoch's validation row), :meth:`record_best`,
    :meth:`checkpoint`, :meth:`epoch_line` and ``finish``;
    :meth:`run_epochs` runs the epochs from ``start_epoch`` to the last and
    returns what ``finish`` returns.
    """

    #: the names of the losses :meth:`step` returns, the optimised one first
    loss_names: Tuple[str, ...] = ("loss",)
    train_cfg: TrainConfig
    device: torch.device
    files: RunFiles
    net: torch.nn.Module
    sampler: DistributedSampler
    loader: TorchDataLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR

    def __init__(self, directory: RunDirectory, progress: bool) -> None:
        self.directory = directory
        self.dir = directory.path
        processes = Processes.current()
        self.processes = processes
        self.rank, self.world, self.is_main = processes.rank, processes.world, processes.is_main
        self.show = progress and self.is_main
        #: put before every progress line, and no progress bar, when set (a
        #: run beside others writing to the same terminal: ensemble members)
        self.label = ""
        self.history: List[Dict[str, float]] = []
        self.best: Dict[str, Any] = {"epoch": None}
        self.start_epoch = 1
        self.started = time.perf_counter()

    def setup(self, cfg: TrainConfig) -> None:
        """The run's training settings; threads, seeds and device as they say."""
        self.train_cfg = cfg
        self.device = setup_process(cfg)

    def open_files(self, config: Dict[str, Any]) -> None:
        """Everything checked: an old run in the directory goes now
        (``--overwrite``), before the run's first file, ``config.json``."""
        self.directory.start()
        self.files = RunFiles(self.dir, self.is_main)
        self.files.config(config)

    def run_epochs(self) -> Dict[str, Any]:
        """Every epoch from ``start_epoch`` on: train, evaluate, record; then
        ``finish``."""
        for epoch in range(self.start_epoch, self.train_cfg.total_epochs + 1):
            row = self.train_epoch(epoch)
            row.update(self.evaluate())
            self.end_epoch(epoch, row)
        return self.finish()

    def begin_epoch(self, epoch: int) -> None:
        """Set up what changes with the epoch before it trains (nothing here)."""

    def step(self, batch: Any) -> Dict[str, Tensor]:
        """One optimisation step on ``batch`` (on the device): its losses
        (0-dim tensors) by the names of :attr:`loss_names`; the row gets the
        mean of each, ``train_<name>``."""
        raise NotImplementedError

    def train_epoch(self, epoch: int) -> Dict[str, float]:
        """One pass over the training part (this rank's share), a
        :meth:`step` and a schedule step per batch; the epoch's row so far:
        ``epoch``, the mean of every loss of :meth:`step` over the graphs
        of all processes, and the learning rate."""
        cfg = self.train_cfg
        torch.manual_seed(cfg.seed * 1_000_003 + epoch)   # see the module docstring
        self.sampler.set_epoch(epoch)
        self.net.train()
        self.started = time.perf_counter()
        self.begin_epoch(epoch)
        sums = [0.0] * len(self.loss_names)   # each loss times the graphs of its batch
        seen = 0
        rate = self.optimizer.param_groups[0]["lr"]
        bar = tqdm(self.loader, desc=f"epoch {epoch}/{cfg.total_epochs}", unit="batch",
                   disable=not self.show or bool(self.label), leave=False, file=sys.stderr)
        for batch in bar:
            batch = batch.to(self.device)
            losses = self.step(batch)
            rate = self.optimizer.param_groups[0]["lr"]       # the rate this step used
            self.scheduler.step()
            n = batch.num_graphs
            values = [losses[name].item() for name in self.loss_names]
            sums = [s + v * n for s, v in zip(sums, values)]
            seen += n
            bar.set_postfix(refresh=False, loss=f"{values[0]:.4f}",
                            mol_s=f"{seen / (time.perf_counter() - self.started):.0f}")
        bar.close()
        totals = [*sums, float(seen)]
        if self.world > 1:  # the sums over all processes
            t = torch.tensor(totals, dtype=torch.float64, device=self.device)
            dist.all_reduce(t)
            totals = t.tolist()
        graphs = max(totals[-1], 1.0)
        row: Dict[str, float] = {"epoch": epoch}
        row.update({f"train_{name}": total / graphs
                    for name, total in zip(self.loss_names, totals)})
        row["lr"] = rate        # of the epoch's last step (not the next epoch's first)
        return row

    def evaluate(self) -> Dict[str, float]:
        """The validation (and test) columns of the epoch's row."""
        raise NotImplementedError

    def record_best(self, epoch: int, row: Dict[str, float]) -> bool:
        """Whether ``row`` beats ``best``; if so, ``best`` becomes its record."""
        raise NotImplementedError

    def checkpoint(self, epoch: int) -> Dict[str, Any]:
        """What ``last.pt`` (and ``best.pt``) hold after ``epoch``."""
        raise NotImplementedError

    def epoch_line(self, row: Dict[str, float]) -> str:
        """The progress line's validation part for ``row``."""
        raise NotImplementedError

    def end_epoch(self, epoch: int, row: Dict[str, float]) -> None:
        """Record the epoch: history, best epoch, files and checkpoints, the
        progress line."""
        row["seconds"] = time.perf_counter() - self.started
        self.history.append(row)
        improved = self.record_best(epoch, row)
        if self.is_main:
            self.files.end_epoch(self.history, self.checkpoint(epoch), improved)
        if self.show:
            print(f"{self.label}epoch {epoch:3d}/{self.train_cfg.total_epochs}  "
                  f"loss {row['train_loss']:.4f}  {self.epoch_line(row)}"
                  f"{'  *best' if improved else ''}  ({row['seconds']:.1f}s)", file=sys.stderr)

    def finish(self) -> Dict[str, Any]:
        """The end of the run (:meth:`write_summary`, :meth:`close`); its summary."""
        raise NotImplementedError

    def write_summary(self, summary: Dict[str, Any]) -> None:
        """``summary.json`` (rank 0)."""
        if self.is_main:
            write_json(self.dir / "summary.json", summary)

    def close(self, no_best: str) -> None:
        """Close the files; a run without a best epoch is a :class:`DataError`
        saying ``no_best``."""
        self.files.close()
        if self.best["epoch"] is None:
            raise DataError(no_best)
