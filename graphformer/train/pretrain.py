"""Self-supervised pre-training on unlabelled molecules (``graphformer pretrain``).

:func:`pretrain` trains a :class:`~graphformer.models.pretrain.PretrainModel`
(the ``GraphTransformer`` trunk with a masked-atom head and an RDKit
descriptor head) on a SMILES corpus
(:class:`~graphformer.datasets.corpus.PretrainCorpus`), and writes a run
directory as :func:`~graphformer.train.train` does: ``config.json``,
``metrics.csv`` / ``metrics.json`` (one row per epoch), ``last.pt`` every
epoch and ``best.pt`` at the lowest validation loss (atomic writes), and
``summary.json``. ``pretrain(..., resume=True)`` continues from ``last.pt``
and ends with exactly the metrics of an uninterrupted run. Under ``torchrun``
the model is wrapped in ``DistributedDataParallel`` and each process reads
its share of every epoch; only rank 0 writes.

A random ``valid_fraction`` of the corpus (seeded by ``train.seed``) is held
out; its loss picks ``best.pt``. Descriptor targets are normalised with the
mean and standard deviation of the training part (finite values only) and
clipped to ``[-descriptor_clip, descriptor_clip]``.

``graphformer train --init RUN_DIR/best.pt`` starts from the trunk
(:mod:`graphformer.train.init`).
"""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor
from torch.utils.data import Subset
from torch_geometric.loader import DataLoader

from .._settings import setting
from ..data.encodings import encodings
from ..data.pretrain_targets import descriptor_names
from ..datasets.corpus import PretrainCorpus, corpus_source
from ..errors import ConfigError, DataError, UsageError
from ..models import GraphTransformerConfig
from ..models.pretrain import PretrainModel, mask_atoms, pretrain_losses
from .checkpoint import RESUME_FIELDS, RUN_FIELDS, check_fields, load_checkpoint
from .config import TrainConfig, build_section, coerce_fields, move_old_keys
from .init import PRETRAIN_KIND
from .metrics import is_better
from .optim import optimizer_step
from .ensemble import saved_ensemble
from .run import EpochRun, make_training, open_run_directory, restore_training
from .run_dir import RunDirectory, resume_config

#: the training settings ``pretrain`` uses where none are given
PRETRAIN_TRAIN_DEFAULTS = {"epochs": 10, "batch_size": 128, "warmup_epochs": 1, "ensemble": 1}
SECTIONS = ("data", "model", "objective", "train")
# What a checkpoint written by ``pretrain`` holds, and the types that are checked.
PRETRAIN_FIELDS = {"config": dict, "model": dict, "epoch": int, "history": list, "best": dict,
                   "desc_mean": Tensor, "desc_std": Tensor, "descriptors": list,
                   "corpus": dict, "kind": str}


@dataclass
class CorpusConfig:
    """The pre-training corpus.

    Attributes:
        smiles: a SMILES file (``.csv``, ``.csv.gz``, ``.smi``, ``.txt``), a
            ``molsets`` wheel, or ``moses`` (see
            :func:`~graphformer.datasets.corpus.corpus_source`).
        smiles_column: the SMILES column of a CSV file (matched
            case-insensitively when no column has exactly this name).
        max_molecules: read only the first this many rows (0 = all).
        valid_fraction: the share of molecules held out for validation.
        root: where processed corpora are cached.
    """
    smiles: str = setting("moses", metavar="FILE",
                          help="SMILES file (.csv, .csv.gz, .smi, .txt), a molsets wheel "
                          "(pip download --no-deps molsets), or 'moses' (an installed "
                          "molsets)")
    smiles_column: str = setting("smiles", help="SMILES column of a CSV file (default "
                                 "smiles, matched case-insensitively)")
    max_molecules: int = setting(0, help="read only the first N rows (0 = all)")
    valid_fraction: float = setting(0.05, help="share held out for validation (default 0.05)")
    root: Optional[str] = setting(None, help="data cache directory")

    def __post_init__(self) -> None:
        coerce_fields(self, "data")
        if not self.smiles.strip():
            raise ConfigError("data", "smiles", "must name a SMILES file, a molsets wheel or "
                              "'moses', got ''")
        if self.max_molecules < 0:
            raise ConfigError("data", "max_molecules", f"must be >= 0 (0 = all), got "
                              f"{self.max_molecules}")
        if not 0.0 < self.valid_fraction < 1.0:
            raise ConfigError("data", "valid_fraction", f"must be in (0, 1), got "
                              f"{self.valid_fraction}")


@dataclass
class ObjectiveConfig:
    """What the model is pre-trained to predict.

    Attributes:
        mask_rate: the share of a batch's atoms that are masked.
        atom_weight: weight of the masked-atom cross-entropy in the loss.
        descriptor_weight: weight of the descriptor MSE in the loss.
        descriptor_clip: normalised descriptor targets are clipped to
            ``[-descriptor_clip, descriptor_clip]`` (outliers).
    """
    mask_rate: float = setting(0.15, help="share of atoms masked (default 0.15)")
    atom_weight: float = setting(1.0, help="weight of the masked-atom loss (default 1)")
    descriptor_weight: float = setting(1.0, help="weight of the descriptor loss (default 1)")
    descriptor_clip: float = setting(10.0, help="normalised descriptor targets are clipped "
                                     "to [-C, C] (default 10)")

    def __post_init__(self) -> None:
        coerce_fields(self, "objective")
        if not 0.0 < self.mask_rate < 1.0:
            raise ConfigError("objective", "mask_rate", f"must be in (0, 1), got "
                              f"{self.mask_rate}")
        for key in ("atom_weight", "descriptor_weight"):
            if getattr(self, key) < 0:
                raise ConfigError("objective", key, f"must be >= 0, got {getattr(self, key)}")
        if self.atom_weight == 0 and self.descriptor_weight == 0:
            raise ConfigError("objective", "atom_weight", "and descriptor_weight are both 0: "
                              "nothing to learn")
        if self.descriptor_clip <= 0:
            raise ConfigError("objective", "descriptor_clip", f"must be > 0, got "
                              f"{self.descriptor_clip}")


def _pretrain_train_config() -> TrainConfig:
    return TrainConfig(**PRETRAIN_TRAIN_DEFAULTS)  # type: ignore[arg-type]


@dataclass
class PretrainConfig:
    """Everything a pre-training run needs; saved as ``config.json``. The
    ``model`` section is the trunk's (``features`` must be ``ogb``;
    ``num_tasks`` and ``task`` are unused); ``train.init`` is not used."""
    data: CorpusConfig = field(default_factory=CorpusConfig)
    model: GraphTransformerConfig = field(default_factory=GraphTransformerConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=_pretrain_train_config)

    def __post_init__(self) -> None:
        if self.model.features != "ogb":
            raise ConfigError("model", "features", f"must be 'ogb' for pre-training (atom "
                              f"classes are OGB atom features), got {self.model.features!r}")
        if self.train.init is not None:
            raise ConfigError("train", "init", "is not used by pretrain (it starts from "
                              "scratch or resumes)")
        if self.train.ema:
            raise ConfigError("train", "ema", "is not used by pretrain (it selects its "
                              "checkpoint by the held-out loss of the trained weights)")
        if self.train.head_epochs:
            raise ConfigError("train", "head_epochs", "is not used by pretrain (it trains "
                              "the trunk and its heads together from the start)")
        if self.train.loss != "mse":
            raise ConfigError("train", "loss", f"is not used by pretrain (its objectives "
                              f"have their own losses), got {self.train.loss!r}")
        if self.train.compile:
            raise ConfigError("train", "compile", "is not used by pretrain yet (graphformer "
                              "train compiles its training step; pretrain runs eagerly)")
        if self.train.ensemble != 1:
            raise ConfigError("train", "ensemble", f"must be 1 for pretrain (one trunk is "
                              f"pre-trained; TrainConfig's default, {TrainConfig.ensemble}, is "
                              f"for fine-tuning), got {self.train.ensemble}")

    def to_dict(self) -> Dict[str, Any]:
        return {"data": asdict(self.data), "model": self.model.to_dict(),
                "objective": asdict(self.objective), "train": asdict(self.train)}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "PretrainConfig":
        """A pre-training config from plain data; ``train`` keys not given
        take :data:`PRETRAIN_TRAIN_DEFAULTS`, then ``TrainConfig``'s."""
        if not isinstance(d, dict):
            raise UsageError(f"a pretrain config holds the sections {', '.join(SECTIONS)}; "
                             f"got {type(d).__name__}")
        unknown = set(d) - set(SECTIONS)
        if unknown:
            raise UsageError(f"unknown config section(s) {sorted(map(str, unknown))}; "
                             f"expected {', '.join(SECTIONS)}")
        d = move_old_keys(d)
        train = {**PRETRAIN_TRAIN_DEFAULTS, **(d.get("train") or {})}
        return cls(data=build_section(CorpusConfig, d.get("data"), "data"),
                   model=build_section(GraphTransformerConfig, d.get("model"), "model"),
                   objective=build_section(ObjectiveConfig, d.get("objective"), "objective"),
                   train=build_section(TrainConfig, train, "train"))


def load_corpus(cfg: PretrainConfig, log: bool = True) -> PretrainCorpus:
    """The corpus of ``cfg.data``, with the encodings ``cfg.model`` uses."""
    d = cfg.data
    return PretrainCorpus(corpus_source(d.smiles), d.smiles_column, d.max_molecules,
                          root=d.root,
                          pre_transform=encodings(cfg.model.rwse_steps, cfg.model.lap_pe),
                          log=log)


def corpus_split(size: int, valid_fraction: float, seed: int) -> Dict[str, Tensor]:
    """A random ``train`` / ``valid`` split of ``size`` molecules (seeded)."""
    if size < 2:
        raise DataError(f"a pre-training corpus needs at least 2 molecules (one to train on, "
                        f"one to validate), got {size}")
    n_valid = min(size - 1, max(1, round(size * valid_fraction)))
    perm = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
    return {"train": perm[n_valid:].sort().values, "valid": perm[:n_valid].sort().values}


def descriptor_stats(values: Tensor) -> Tuple[Tensor, Tensor]:
    """Mean and standard deviation of each column over its finite values
    (0 and 1 for a column without any; a std of at least 1e-6)."""
    finite = torch.isfinite(values)
    count = finite.sum(0).clamp_min(1)
    zeroed = torch.where(finite, values, torch.zeros_like(values))
    mean = zeroed.sum(0) / count
    centred = torch.where(finite, values - mean, torch.zeros_like(values))
    std = (centred.pow(2).sum(0) / count).sqrt()
    std = torch.where(finite.any(0), std.clamp_min(1e-6), torch.ones_like(std))
    return mean, std


def normalise_descriptors(desc: Tensor, mean: Tensor, std: Tensor, clip: float) -> Tensor:
    """Descriptor targets in units of the corpus statistics, clipped to
    ``[-clip, clip]``; a non-finite value becomes NaN (missing)."""
    out = ((desc - mean) / std).clamp(-clip, clip)
    return torch.where(torch.isfinite(desc), out, torch.full_like(out, float("nan")))


def pretrain(cfg: Optional[PretrainConfig], run_dir: Union[str, Path], resume: bool = False,
             progress: bool = True, overwrite: bool = False) -> Dict[str, Any]:
    """Pre-train as ``cfg`` says, writing everything into ``run_dir``.

    Args:
        cfg: the config; when resuming, ``None`` for the saved one or one
            that differs from it only in where the run runs
            (``train.device``, ``train.threads``, ``data.root``).
        run_dir: the run directory (one holding a run is refused unless
            ``overwrite`` or ``resume``).
        resume: continue from ``run_dir/last.pt``; the corpus must be the
            one it was trained on (else ``DataError``).
        progress: progress bars and per-epoch lines (rank 0 only).
        overwrite: replace the run in ``run_dir``.

    Returns:
        The summary also written to ``run_dir/summary.json``.
    """
    run_dir = Path(run_dir)
    if resume and saved_ensemble(run_dir) is not None:
        raise UsageError(f"cannot resume {run_dir} with 'graphformer pretrain': it is an "
                         f"ensemble of 'graphformer train' (resume it with: graphformer train "
                         f"--resume {run_dir})")
    with open_run_directory(run_dir, resume, overwrite) as directory:
        return _Pretraining(cfg, directory, progress).run_epochs()


def load_pretrain_run(run_dir: Path) -> Dict[str, Any]:
    """``run_dir/last.pt`` of a pre-training run, checked for resuming; the
    run of ``graphformer train`` is a :class:`UsageError` saying how to
    resume it instead."""
    last = run_dir / "last.pt"
    state = load_checkpoint(last)
    if state.get("kind") != PRETRAIN_KIND and all(k in state for k in RUN_FIELDS):
        raise UsageError(f"cannot resume {run_dir} with 'graphformer pretrain': it is a run of "
                         f"'graphformer train' (resume it with: graphformer train --resume "
                         f"{run_dir})")
    check_fields(state, last, (PRETRAIN_FIELDS, RESUME_FIELDS))
    return state


class _Pretraining(EpochRun):
    """One pre-training run: corpus, model, optimiser, history and files on
    the skeleton of :class:`~graphformer.train.run.EpochRun`."""

    loss_names = ("loss", "atom_loss", "descriptor_loss")

    def __init__(self, cfg: Optional[PretrainConfig], directory: RunDirectory,
                 progress: bool) -> None:
        super().__init__(directory, progress)
        run_dir = self.dir
        state: Optional[Dict[str, Any]] = None
        if directory.resume:
            last = run_dir / "last.pt"
            state = load_pretrain_run(run_dir)
            try:
                saved = PretrainConfig.from_dict(state["config"])
            except ValueError as err:
                raise DataError(f"{last} holds an invalid pretrain config: {err}") from None
            cfg = resume_config(saved, cfg)  # type: ignore[arg-type]
        if cfg is None:
            raise ValueError("pretrain() needs a PretrainConfig unless it resumes a run")
        self.cfg: PretrainConfig = cfg
        self.setup(cfg.train)
        self._load_data(state)
        self._build(state)

    def _load_data(self, state: Optional[Dict[str, Any]]) -> None:
        cfg = self.cfg
        self.corpus = corpus = self.processes.main_first(lambda: load_corpus(cfg, log=self.show))
        if self.show:
            print(corpus.report(), file=sys.stderr)
        if state is not None and state["corpus"].get("key") != corpus.key:
            raise DataError(f"cannot resume {self.dir}: its corpus changed since the checkpoint "
                            f"({cfg.data.smiles}); restore it or start a new run")
        self.split = corpus_split(len(corpus), cfg.data.valid_fraction, cfg.train.seed)
        if state is not None:
            self.desc_mean, self.desc_std = state["desc_mean"], state["desc_std"]
        else:
            self.desc_mean, self.desc_std = descriptor_stats(
                corpus.descriptors[self.split["train"]])

    def _build(self, state: Optional[Dict[str, Any]]) -> None:
        cfg, device = self.cfg, self.device
        self.model = PretrainModel(cfg.model, len(descriptor_names())).to(device)
        self.model.trunk.set_attention_backend(cfg.train.attention_backend)
        self.net, self.sampler, self.loader, self.optimizer, self.scheduler = make_training(
            self.model, Subset(self.corpus, self.split["train"].tolist()), cfg.train,
            self.rank, self.world, device)
        self.valid_batches: Optional[List[Any]] = None
        self.best = {"epoch": None, "valid_loss": None}
        if state is not None:
            self.history, self.best, self.start_epoch = restore_training(
                state, self.model, self.optimizer, self.scheduler, world=self.world,
                path=self.dir / "last.pt")
        self.open_files(cfg.to_dict())  # corpus and config checked: an old run goes now
        if self.show and self.start_epoch == 1:
            print(f"pretrain: {len(self.split['train'])} molecules to train on, "
                  f"{len(self.split['valid'])} to validate; masked atoms "
                  f"({cfg.objective.mask_rate:.0%}) and {len(descriptor_names())} descriptors; "
                  f"{sum(p.numel() for p in self.model.parameters()):,} parameters; "
                  f"device {device}, {self.world} process(es)", file=sys.stderr)

    def _losses(self, batch: Any, generator: Optional[torch.Generator]) -> Dict[str, Tensor]:
        """The objectives of one batch and the weighted ``loss``."""
        o = self.cfg.objective
        mask = mask_atoms(batch.num_nodes, o.mask_rate, generator, device=self.device)
        target = normalise_descriptors(batch.desc, self.desc_mean.to(self.device),
                                       self.desc_std.to(self.device), o.descriptor_clip)
        out = pretrain_losses(self.net, batch, mask, target)
        out["loss"] = o.atom_weight * out["atom"] + o.descriptor_weight * out["descriptors"]
        out["masked"] = mask.sum()
        return out

    def step(self, batch: Any) -> Dict[str, Tensor]:
        out = self._losses(batch, None)
        optimizer_step(self.net, out["loss"], self.optimizer, self.cfg.train.grad_clip)
        return {"loss": out["loss"], "atom_loss": out["atom"],
                "descriptor_loss": out["descriptors"]}

    @torch.no_grad()
    def evaluate(self) -> Dict[str, float]:
        """Validation losses and masked-atom accuracy, with the same masks
        every epoch (seeded by ``train.seed``)."""
        if self.valid_batches is None:
            self.valid_batches = list(DataLoader(Subset(self.corpus, self.split["valid"].tolist()),
                                                 batch_size=self.cfg.train.batch_size))
        self.model.eval()
        generator = torch.Generator().manual_seed(self.cfg.train.seed)
        # loss, atom, descriptors (x graphs), graphs, atoms right, atoms masked
        sums = torch.zeros(6, dtype=torch.float64)
        for batch in self.valid_batches:
            batch = batch.to(self.device)
            out = self._losses(batch, generator)
            n = batch.num_graphs
            sums += torch.tensor([out["loss"].item() * n, out["atom"].item() * n,
                                  out["descriptors"].item() * n, n, out["atom_correct"].item(),
                                  out["masked"].item()], dtype=torch.float64)
        return {"valid_loss": float(sums[0] / sums[3]), "valid_atom_loss": float(sums[1] / sums[3]),
                "valid_atom_accuracy": float(sums[4] / sums[5]),
                "valid_descriptor_loss": float(sums[2] / sums[3])}

    def checkpoint(self, epoch: int) -> Dict[str, Any]:
        corpus = self.corpus
        return {"kind": PRETRAIN_KIND, "config": self.cfg.to_dict(),
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "epoch": epoch,
                "history": self.history, "best": self.best, "processes": self.world,
                "desc_mean": self.desc_mean, "desc_std": self.desc_std,
                "descriptors": list(descriptor_names()),
                "corpus": {"key": corpus.key, "source": corpus.source.name,
                           "molecules": len(corpus), "rows": corpus.total, "bad": corpus.bad}}

    def record_best(self, epoch: int, row: Dict[str, float]) -> bool:
        improved = is_better(row["valid_loss"], self.best["valid_loss"], "loss")
        if improved:
            self.best = {"epoch": epoch, "valid_loss": row["valid_loss"]}
        return improved

    def epoch_line(self, row: Dict[str, float]) -> str:
        return (f"valid loss {row['valid_loss']:.4f}  atom accuracy "
                f"{row['valid_atom_accuracy']:.3f}  "
                f"descriptors {row['valid_descriptor_loss']:.4f}")

    def finish(self) -> Dict[str, Any]:
        best = self.best
        summary = {"corpus": self.corpus.source.name, "molecules": len(self.corpus),
                   "bad_smiles": self.corpus.bad, "best_epoch": best["epoch"],
                   "best_valid_loss": best["valid_loss"],
                   "final": self.history[-1] if self.history else {}}
        self.write_summary(summary)
        self.close(f"no epoch of the pretraining run in {self.dir} had a finite "
                   f"validation loss (did it diverge? try a lower --lr)")
        return summary
