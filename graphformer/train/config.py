"""Run configuration: explicit dataclasses, checked on creation, stored with
every run and checkpoint as plain data (JSON/YAML)."""
from __future__ import annotations

import math
import re
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from .._settings import setting
from ..data.descriptors import MOLECULE_FEATURE_SETS
from ..datasets.molecules import TASKS, takes_molecule_features
from ..errors import ConfigError, UsageError
from ..models import GraphTransformerConfig
from ..models.graph_transformer import MOVED_KEYS
from ..models.kernel import KERNEL_MEMBERS
from ..nn.backend import ATTENTION_BACKENDS, NOT_COMPILABLE
from .uncertainty import DEFAULT_EVIDENTIAL_LAMBDA, LOSSES

#: The columns predict writes beside a target ``t`` with uncertainty:
#: ``t_std``, and with an interval ``t_low``, ``t_high``.
UNCERTAINTY_SUFFIXES = ("_std", "_low", "_high")

DEVICES = ("auto", "cpu", "cuda")
SPLITS = ("scaffold", "random", "official")
MAX_SEED = 2**32
MAX_INT = 2**63  # what a torch int64 holds
#: whether ``train`` starts from the shipped pre-trained checkpoint by default
#: (when the model has its trunk): it lowered the mean validation RMSE on all
#: three bundled sets over seeds 0-2 (docs/training.md, "Pre-training")
DEFAULT_PRETRAINED = True

_INT_TEXT = re.compile(r"[+-]?\d+")


def _kind(value: Any) -> str:
    """A value as an error message shows it: its repr (cut at 60 characters)
    and its type."""
    text = repr(value)
    return f"{text if len(text) <= 60 else text[:57] + '...'} ({type(value).__name__})"


def coerce(section: str, key: str, value: Any, hint: Any) -> Any:
    """``value`` as the type ``hint`` of config key ``section.key``, by one rule:

    - ``int``: an int, a float with no fractional part, or a string of digits;
    - ``float``: a finite int, float or numeric string (YAML 1.1 reads
      ``1e-3`` as a string);
    - ``bool``: ``true`` / ``false`` only;
    - ``str`` and ``Literal``: a string;
    - ``List[str]`` / ``Tuple[str, ...]``: a list of strings, or one string as
      a one-element list; ``List[int]`` (any other element type): a list of
      such values, or one as a one-element list;
    - ``Optional[X]``: ``None`` or an ``X``.

    Anything else is a :class:`~graphformer.errors.ConfigError` naming the key,
    the value and what would be accepted.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return coerce(section, key, value, inner)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(section, key, f"must be true or false, got {_kind(value)}")
    if hint is int:
        whole: Optional[int] = None
        if isinstance(value, int) and not isinstance(value, bool):
            whole = value
        elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
            whole = int(value)
        elif isinstance(value, str) and _INT_TEXT.fullmatch(value.strip()) \
                and len(value.strip()) <= 20:
            whole = int(value)
        if whole is None or not -MAX_INT <= whole < MAX_INT:
            raise ConfigError(section, key, f"must be a whole number (int) of magnitude "
                              f"below 2**63, got {_kind(value)}")
        return whole
    if hint is float:
        number: Optional[float] = None
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            try:
                number = float(value)
            except (ValueError, OverflowError):
                number = None
        if number is None or not math.isfinite(number):
            raise ConfigError(section, key, f"must be a finite number (float), got "
                              f"{_kind(value)}")
        return number
    if hint is str or origin is typing.Literal:
        if isinstance(value, str):
            return value
        raise ConfigError(section, key, f"must be a string, got {_kind(value)}")
    if origin in (list, tuple) and args and args[0] is not str:   # List[int], ...
        items = value if isinstance(value, (list, tuple)) else [value]
        return origin(coerce(section, key, v, args[0]) for v in items)
    if origin in (list, tuple):
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
            raise ConfigError(section, key, f"must be a list of strings (or one string), got "
                              f"{_kind(value)}")
        return origin(items)
    raise TypeError(f"no coercion rule for config key '{section}.{key}' of type {hint}")


def coerce_fields(obj: Any, section: str) -> None:
    """Apply :func:`coerce` to every field of the dataclass ``obj`` in place."""
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        setattr(obj, f.name, coerce(section, f.name, getattr(obj, f.name), hints[f.name]))


def default_molecule_features(dataset: str) -> List[str]:
    """The descriptor sets a data set gets by default: RDKit 2D descriptors
    for the bundled sets and SMILES CSV files, none for the others (whose
    loaders take no molecule features)."""
    return ["rdkit2d"] if takes_molecule_features(dataset) else []


@dataclass
class DataConfig:
    """Which data set and split.

    Attributes:
        dataset: a bundled name (``esol``, ``freesolv``, ``lipophilicity``), an
            ``ogbg-mol*`` name, ``zinc`` / ``zinc-full``, ``pcqm4mv2``, or the
            path of a SMILES CSV file.
        smiles_column / target_columns / task: for a CSV file.
        split: ``scaffold``, ``random`` or ``official`` (OGB / ZINC / PCQM4Mv2
            splits; the default for those sets); ``column:NAME`` takes it from
            a CSV column of ``train`` / ``val`` / ``test``.
        split_seed: the seed of a ``random`` split (default ``None``: the
            run's ``train.seed``); the members of an ensemble share their
            run's split through it.
        root: where data sets are cached (default ``~/.cache/graphformer``).
        molecule_features: descriptor sets computed per molecule (``rdkit2d``:
            RDKit's 2D descriptors, :data:`graphformer.data.RDKIT2D_NAMES`),
            for the bundled sets and CSV files; empty = none. Default
            (``None``): ``["rdkit2d"]`` for the bundled sets and CSV files
            (better on the validation part of all three bundled sets, see the
            docs/results.md), none for OGB, ZINC and PCQM4Mv2; the resolved list is
            what the run stores.
        feature_columns: numeric columns of the CSV file (or bundled set)
            given to the model as molecule features, after the descriptors.
            With either, the model's readout takes the molecule features,
            scaled by statistics of the training split.
    """
    dataset: str = setting("esol", help="esol | freesolv | lipophilicity | ogbg-mol* | zinc | "
                           "zinc-full | pcqm4mv2 | path/to/file.csv (default esol)")
    smiles_column: str = setting("smiles", help="SMILES column of a CSV file (default smiles)")
    target_columns: List[str] = setting(default_factory=list,
                                        help="target column(s) of a CSV file")
    task: str = setting("regression", choices=TASKS,
                        help="of a CSV file's targets (default regression)")
    split: Optional[str] = setting(None, help="scaffold | random | official | column:NAME "
                                   "(default: official for OGB / ZINC / PCQM4Mv2, else "
                                   "scaffold)")
    split_seed: Optional[int] = setting(None, help="seed of a random split (default: --seed)")
    root: Optional[str] = setting(None, help="data cache directory (default "
                                  "~/.cache/graphformer)")
    molecule_features: Optional[List[str]] = setting(
        None, choices=(*MOLECULE_FEATURE_SETS, "none"),
        help="descriptors per molecule for the readout (rdkit2d: RDKit's 2D descriptors; "
        "morgan / morgan_counts: ECFP4 bits / counts), scaled by statistics of the training "
        "split; default rdkit2d for the bundled sets and CSV files, none for OGB / ZINC / "
        "PCQM4Mv2; 'none' turns them off")
    feature_columns: List[str] = setting(
        default_factory=list, metavar="COLUMN",
        help="numeric columns of the CSV file as molecule features for the readout (an "
        "empty cell is a missing value)")

    def __post_init__(self) -> None:
        coerce_fields(self, "data")
        if self.molecule_features is None:
            self.molecule_features = default_molecule_features(self.dataset)
        if "none" in self.molecule_features:      # the default turned off
            others = [f for f in self.molecule_features if f != "none"]
            if others:
                raise ConfigError("data", "molecule_features", f"'none' cannot be combined "
                                  f"with {others}")
            self.molecule_features = []
        unknown = [f for f in self.molecule_features if f not in MOLECULE_FEATURE_SETS]
        if unknown or len(set(self.molecule_features)) != len(self.molecule_features):
            raise ConfigError("data", "molecule_features", f"must be distinct names from "
                              f"{list(MOLECULE_FEATURE_SETS)}, got {self.molecule_features}")
        if len(set(self.feature_columns)) != len(self.feature_columns):
            raise ConfigError("data", "feature_columns", f"must name each column once, got "
                              f"{self.feature_columns}")
        taken = [c for c in self.feature_columns
                 if c == self.smiles_column or c in self.target_columns]
        if taken:
            raise ConfigError("data", "feature_columns", f"must not hold the SMILES or a "
                              f"target column, got {taken[0]!r}")
        clash = [(t, u) for t in self.target_columns for u in self.target_columns
                 if any(u == t + suffix for suffix in UNCERTAINTY_SUFFIXES)]
        if clash:
            raise ConfigError("data", "target_columns", f"{clash[0][1]!r} would be the "
                              f"uncertainty column of target {clash[0][0]!r} in predict's "
                              f"output: "
                              f"rename one of the two targets, got {self.target_columns}")
        if self.split_seed is not None and not 0 <= self.split_seed < MAX_SEED:
            raise ConfigError("data", "split_seed", f"must be in [0, 2**32), got "
                              f"{self.split_seed}")
        if self.task not in TASKS:
            raise ConfigError("data", "task", f"must be 'regression' or 'classification', "
                              f"got {self.task!r}")
        if self.split is not None and self.split not in SPLITS and not (
                self.split.startswith("column:") and len(self.split) > len("column:")):
            raise ConfigError("data", "split", f"must be one of {SPLITS} or 'column:NAME', "
                              f"got {self.split!r}")
        if not self.dataset.strip():
            raise ConfigError("data", "dataset", "must name a data set or a .csv file, got ''")
        if self.dataset.lower().endswith(".csv") and not self.target_columns:
            raise ConfigError("data", "target_columns", f"must name the target column(s) of "
                              f"the CSV data set {self.dataset} (--target-columns)")

    def with_absolute_paths(self) -> "DataConfig":
        """This config with ``root`` and the path of a CSV data set made
        absolute, against the current directory. A run stores them so: its
        checkpoints are then evaluated from any directory (and a resumed run
        given the config it started with, relative paths and all, from the
        same directory is given the saved one)."""
        changes: Dict[str, Any] = {}
        if self.dataset.lower().endswith(".csv"):
            changes["dataset"] = str(Path(self.dataset).absolute())
        if self.root is not None:
            changes["root"] = str(Path(self.root).absolute())
        return replace(self, **changes) if changes else self


@dataclass
class TrainConfig:
    """How to train.

    Attributes:
        epochs: passes over the training set, per model (default 20, for
            each of the default ensemble's two members; with the shipped
            pre-trained trunk one model was best at 30, and one trained
            from scratch wants more: see docs/defaults.md, "Choosing the
            defaults").
        batch_size: graphs per batch (per process under ``torchrun``).
        lr: peak learning rate of AdamW (linear warm-up, cosine decay).
        weight_decay: AdamW weight decay.
        warmup_epochs: epochs of linear warm-up.
        grad_clip: gradient-norm clip (0 = off).
        seed: seed of everything random (initialisation, shuffling, dropout),
            in ``[0, 2**32)``.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        threads: torch CPU threads (0 = torch's default).
        attention_backend: how the model computes attention (``auto``: by a
            cost model; ``sparse``, ``dense``, ``fused``, ...: see
            :mod:`graphformer.nn.backend`). Changes speed and memory, not
            results (beyond float rounding), so a resumed run may change it
            (as ``device`` and ``threads``). A config of an older graphformer
            had it as ``model.attention_backend``; that key is still read
            and moved here (:func:`move_old_keys`).
        compile: run the training step through ``torch.compile`` (inductor
            with its C++ wrapper, dynamic shapes; the batches prepared
            outside the compiled code, see
            :mod:`graphformer.train.compiled`): faster steps after a compile
            that takes tens of seconds, so for long runs. Like
            ``attention_backend``, speed and not results (beyond float
            rounding): a resumed run may change it.
        init: a checkpoint of ``graphformer pretrain`` (or ``train``) whose
            trunk the model starts from (the head starts fresh); the trunk
            keys of the model config must match it.
        pretrained: without ``init``, start from the shipped pre-trained
            checkpoint when there is one and the model config matches it
            (``--no-pretrained``: from scratch).
        ema: decay of an exponential moving average of the weights, updated
            after every step; validation, test, ``best.pt`` and predictions
            use the averaged weights (:mod:`graphformer.train.average`;
            0 = off, else in ``(0, 1)``).
        head_epochs: passes that train the head alone before the ``epochs``
            that train the whole model (linear probing, then fine-tuning:
            "LP-FT", Kumar et al., ICLR 2022). In them the trunk (every
            parameter outside the model's ``head``) gets no gradient and no
            weight decay, so it keeps its starting weights exactly, and the
            learning rate is ``lr`` throughout; the fine-tuning then starts
            with fresh AdamW moments and its own warm-up and cosine decay.
            0 = off. Meant for a pre-trained start, whose features a fresh
            head's first gradients would otherwise distort.
        ensemble: train this many models (each a whole run of these
            settings, member ``k`` with the seed of :meth:`member`, in
            ``member-k/`` of the run directory) and predict with their mean
            (:class:`~graphformer.models.Ensemble`); 1 = one model. Default
            2 (of 20 epochs each): lower out-of-fold validation RMSE than one
            model of 30 epochs on all three bundled sets, at less wall time
            than chemprop's defaults (docs/defaults.md).
        loss: what the model predicts and is trained by (regression only):
            ``mse`` (a mean, mean squared error), ``mve`` (a Gaussian's mean
            and variance, its negative log-likelihood) or ``evidential`` (a
            Normal-Inverse-Gamma, its negative log-likelihood plus
            ``evidential_lambda`` times the evidence regulariser); sets the
            model's ``output`` (:mod:`graphformer.train.uncertainty`). With
            any of them the checkpoint of a run whose predictions have a
            spread (``mve``, ``evidential``, or an ensemble) holds
            calibrated intervals fitted on the validation part. The best
            epoch is chosen by the validation metric (RMSE) in every case.
        evidential_lambda: the evidence regulariser's weight (``loss:
            evidential``; >= 0). Default 0.2, chemprop's ``EvidentialLoss``
            default and Soleimany et al.'s (2021) recommendation (chemprop's
            command line defaults to 0).
        kernel_member: ``morgan`` adds a fingerprint member to the ensemble
            (regression, ``loss: mse``, ``ensemble`` >= 2; SMILES data):
            kernel ridge regression with the MinMax kernel on ECFP4 counts
            of the training molecules
            (:class:`~graphformer.models.kernel.MorganKernelRidge`), fitted
            when the graph transformers have finished. The prediction is
            g + w·r·(k − g): g the transformers' mean, k the member's, r the
            molecule's similarity to its nearest training molecule, and w
            the validation part's least-squares weight, shrunk towards 0 by
            its standard error, per task in [0, 1]
            (:func:`graphformer.train.ensemble.kernel_weight`). ``auto``
            (default): ``morgan`` where it can join (a regression ensemble
            trained by MSE on SMILES, at most
            :data:`~graphformer.train.ensemble.MAX_KERNEL_TRAIN` training
            molecules), else ``none``; the checkpoint records which.
            ``none``: no such member.

    Values are converted by :func:`coerce` (a numeric string is a number), and
    every range error names its key.
    """
    epochs: int = setting(20, help="passes over the training set, per model (default 20)")
    batch_size: int = setting(32, help="graphs per batch, per process (default 32)")
    lr: float = setting(1e-3, help="peak learning rate of AdamW (default 0.001)")
    weight_decay: float = setting(1e-5, help="AdamW weight decay (default 1e-5)")
    warmup_epochs: int = setting(5, help="epochs of linear warm-up (default 5)")
    grad_clip: float = setting(1.0, help="gradient-norm clip, 0 = off (default 1)")
    seed: int = setting(0, help="seed of everything random, in [0, 2**32) (default 0)")
    device: str = setting("auto", choices=DEVICES, help="default auto: CUDA when available")
    threads: int = setting(0, help="torch CPU threads (default 0: torch's default)")
    attention_backend: str = setting("auto", choices=ATTENTION_BACKENDS,
                                     help="how attention is computed (default auto: by a "
                                     "cost model); speed and memory, not results")
    compile: bool = setting(False, help="compile the training step with torch.compile "
                            "(inductor, C++ wrapper): faster steps after a compile of tens of "
                            "seconds, for long runs; speed, not results (default: off)")
    init: Optional[str] = setting(None, metavar="CKPT",
                                  help="start the model's trunk from this checkpoint of "
                                  "'graphformer pretrain' (best.pt of its run); the model "
                                  "flags must match it")
    pretrained: bool = setting(DEFAULT_PRETRAINED,
                               help="without --init, start from the shipped pre-trained "
                               "checkpoint when the model matches it (--no-pretrained: from "
                               "scratch)")
    ema: float = setting(0.0, metavar="DECAY",
                         help="evaluate, select and save an exponential moving average of "
                         "the weights with this decay per step (e.g. 0.99; default 0: off)")
    head_epochs: int = setting(0, metavar="N",
                               help="first train the head alone for N epochs (the trunk "
                               "frozen), then the whole model for --epochs (linear probing, "
                               "then fine-tuning; default 0: off)")
    ensemble: int = setting(2, metavar="K",
                            help="train K models (seeds derived from --seed, each a run in "
                            "RUN_DIR/member-k) and predict with their mean (default 2; 1 = "
                            "one model)")
    member_processes: int = setting(0, metavar="P",
                                    help="ensemble members trained side by side, each in a "
                                    "process of its own (CPU, Linux). Default 0: as many as "
                                    "the cores allow when --threads is 0 (each member then on "
                                    "cores/P threads), else one after the other; 1: one after "
                                    "the other. Speed, not results")
    loss: str = setting("mse", choices=tuple(LOSSES),
                        help="regression: mse (a mean; default), mve (a Gaussian's mean and "
                        "variance, its negative log-likelihood) or evidential "
                        "(Normal-Inverse-Gamma parameters, deep evidential regression). A run "
                        "whose predictions have a spread (mve, evidential, or an ensemble) "
                        "saves intervals calibrated on the validation part in best.pt")
    evidential_lambda: float = setting(DEFAULT_EVIDENTIAL_LAMBDA, metavar="LAMBDA",
                                       help="weight of the evidence regulariser of --loss "
                                       "evidential (default 0.2, as chemprop's "
                                       "EvidentialLoss; >= 0)")
    kernel_member: str = setting("auto", choices=("auto",) + KERNEL_MEMBERS,
                                 help="morgan: add a fingerprint member to the ensemble "
                                 "(kernel ridge regression, MinMax kernel on ECFP4 counts), "
                                 "weighted against the graph transformers by the validation "
                                 "part (regression, --loss mse, --ensemble >= 2); default "
                                 "auto: morgan where it can join, else none")

    @property
    def total_epochs(self) -> int:
        """Every pass of the run: ``head_epochs`` then ``epochs``."""
        return self.head_epochs + self.epochs

    def member(self, k: int) -> "TrainConfig":
        """The settings of ensemble member ``k``: these, as one model, with
        the seed ``(seed + 1000003 k) mod 2**32`` (member 0 has ``seed``)."""
        if not 0 <= k < self.ensemble:
            raise ValueError(f"member {k} of an ensemble of {self.ensemble}")
        return replace(self, ensemble=1, seed=(self.seed + 1_000_003 * k) % MAX_SEED,
                       kernel_member="none")

    def __post_init__(self) -> None:
        coerce_fields(self, "train")
        if self.init is not None and not self.init.strip():
            raise ConfigError("train", "init", "must name a checkpoint file, got ''")
        for key in ("epochs", "batch_size", "ensemble"):
            if getattr(self, key) < 1:
                raise ConfigError("train", key, f"must be >= 1, got {getattr(self, key)}")
        if self.lr <= 0:
            raise ConfigError("train", "lr", f"must be > 0, got {self.lr}")
        for key in ("weight_decay", "warmup_epochs", "grad_clip", "threads", "head_epochs",
                    "member_processes"):
            if getattr(self, key) < 0:
                raise ConfigError("train", key, f"must be >= 0, got {getattr(self, key)}")
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError("train", "ema", f"must be in [0, 1) (0 = off), got {self.ema}")
        if not 0 <= self.seed < MAX_SEED:
            raise ConfigError("train", "seed", f"must be in [0, 2**32), got {self.seed}")
        if self.device not in DEVICES:
            raise ConfigError("train", "device", f"must be 'auto', 'cpu' or 'cuda', got "
                              f"{self.device!r}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ConfigError("train", "attention_backend", f"must be one of "
                              f"{list(ATTENTION_BACKENDS)}, got {self.attention_backend!r}")
        if self.compile and self.attention_backend in NOT_COMPILABLE:
            raise ConfigError("train", "attention_backend", f"{self.attention_backend!r} does "
                              f"not run under compile (train.compile, --compile): "
                              f"{NOT_COMPILABLE[self.attention_backend]}; use 'auto', "
                              f"'fused_cpu' or 'propagate'")
        if self.loss not in LOSSES:
            raise ConfigError("train", "loss", f"must be one of {list(LOSSES)}, got "
                              f"{self.loss!r}")
        if self.evidential_lambda < 0:
            raise ConfigError("train", "evidential_lambda", f"must be >= 0, got "
                              f"{self.evidential_lambda}")
        if self.kernel_member not in ("auto",) + KERNEL_MEMBERS:
            raise ConfigError("train", "kernel_member", f"must be one of "
                              f"{['auto', *KERNEL_MEMBERS]}, got {self.kernel_member!r}")
        if self.kernel_member not in ("auto", "none") and \
                (self.ensemble < 2 or self.loss != "mse"):
            raise ConfigError("train", "kernel_member", f"{self.kernel_member!r} joins an "
                              f"ensemble of graph transformers trained by MSE: it needs "
                              f"ensemble >= 2 and loss 'mse', got ensemble {self.ensemble} "
                              f"and loss {self.loss!r}")


@dataclass
class RunConfig:
    """Everything a run needs; saved as ``config.json`` in the run directory."""
    data: DataConfig = field(default_factory=DataConfig)
    model: GraphTransformerConfig = field(default_factory=GraphTransformerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.train.loss != "mse" and self.data.task != "regression":
            raise ConfigError("train", "loss", f"{self.train.loss!r} trains a predictive "
                              f"distribution of a regression target; data.task is "
                              f"{self.data.task!r} (use 'mse')")
        # the head's output follows train.loss (the loop sets it); a config
        # may leave it at its default, or name the same
        wanted = LOSSES[self.train.loss]
        if self.model.output not in ("mean", wanted):
            raise ConfigError("model", "output", f"is set by train.loss (--loss); "
                              f"{self.model.output!r} does not go with loss "
                              f"{self.train.loss!r} (which needs {wanted!r}): leave it out")

    def to_dict(self) -> Dict[str, Any]:
        return {"data": asdict(self.data), "model": self.model.to_dict(),
                "train": asdict(self.train)}

    def split_seed(self) -> int:
        """The seed of a random split: ``data.split_seed``, else ``train.seed``."""
        return self.train.seed if self.data.split_seed is None else self.data.split_seed

    @classmethod
    def from_saved(cls, d: Dict[str, Any]) -> "RunConfig":
        """A run config as a run or checkpoint stored it. One saved before
        molecule features existed has no ``data.molecule_features`` and was
        trained without them; one saved before ensembles has no
        ``train.ensemble`` and was one model (a config file without them
        gets the defaults)."""
        if isinstance(d, dict) and isinstance(d.get("data"), dict) \
                and "molecule_features" not in d["data"]:
            d = {**d, "data": {**d["data"], "molecule_features": []}}
        if isinstance(d, dict) and isinstance(d.get("train"), dict) \
                and "ensemble" not in d["train"]:
            d = {**d, "train": {**d["train"], "ensemble": 1}}
        return cls.from_dict(d)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "RunConfig":
        """A run config from plain data (a config file, ``config.json``, a
        checkpoint's ``config``); every error names the section and key."""
        if not isinstance(d, dict):
            raise UsageError(f"a config holds the sections data, model, train; got "
                             f"{_kind(d)}")
        unknown = set(d) - {"data", "model", "train"}
        if unknown:
            raise UsageError(f"unknown config section(s) {sorted(map(str, unknown))}; "
                             f"expected data, model, train")
        d = move_old_keys(d)
        return cls(data=build_section(DataConfig, d.get("data"), "data"),
                   model=build_section(GraphTransformerConfig, d.get("model"), "model"),
                   train=build_section(TrainConfig, d.get("train"), "train"))


def move_old_keys(d: Dict[str, Any]) -> Dict[str, Any]:
    """A config (dict of sections) with the model keys of an older
    graphformer (:data:`~graphformer.models.graph_transformer.MOVED_KEYS`)
    moved out of its ``model`` section: ``model.attention_backend`` becomes
    ``train.attention_backend`` (unless the config, or a flag, sets that
    too: it wins); ``model.mol_features`` / ``mol_feature_names`` are
    dropped (the data decides them; a checkpoint's are read by
    :func:`graphformer.train.checkpoint.mol_features_of`). ``d`` is not
    changed."""
    model = d.get("model")
    if not isinstance(model, dict) or not set(model) & set(MOVED_KEYS):
        return d
    moved = {k: v for k, v in model.items() if k in MOVED_KEYS}
    d = {**d, "model": {k: v for k, v in model.items() if k not in MOVED_KEYS}}
    train = d.get("train")
    if "attention_backend" in moved and (train is None or isinstance(train, dict)):
        d["train"] = {"attention_backend": moved["attention_backend"], **(train or {})}
    return d


def build_section(cls, values: Optional[Dict[str, Any]], section: str):
    """One config section from plain data: ``cls(**values)`` with unknown keys and wrong types named. The
    ``model`` section's types are checked here (``GraphTransformerConfig``
    checks only ranges); ``data`` and ``train`` check their own."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise UsageError(f"config section '{section}' must map keys to values, got "
                         f"{_kind(values)}")
    names = {f.name for f in fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise UsageError(f"unknown key(s) {sorted(map(str, unknown))} in config section "
                         f"'{section}'; known: {sorted(names)}")
    if cls is GraphTransformerConfig:
        hints = typing.get_type_hints(cls)
        values = {k: coerce(section, k, v, hints[k]) for k, v in values.items()}
    try:
        return cls(**values)
    except UsageError:
        raise
    except ValueError as err:  # GraphTransformerConfig's range checks name the key
        raise UsageError(f"config section '{section}': {err}") from None


def read_config_file(path: Union[str, Path]) -> Dict[str, Any]:
    """A YAML (``.yaml``/``.yml``) or JSON config file as a dict of sections."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"config file {path} is a directory")
    if not path.is_file():
        raise UsageError(f"no config file at {path}")
    try:
        text = path.read_text()
    except UnicodeDecodeError as err:
        raise UsageError(f"{path}: not a text file ({err.reason} at byte {err.start})") from None
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:   # one line: the place and PyYAML's reason
            mark = getattr(err, "problem_mark", None)
            where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            reason = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise UsageError(f"{path}{where}: not valid YAML: {reason}") from None
    else:
        import json

        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise UsageError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(values, dict):
        raise UsageError(f"{path}: a config file holds sections data / model / train")
    return values


def parse_overrides(items: List[str]) -> Dict[str, Dict[str, Any]]:
    """``["model.dropout=0", "data.molecule_features=rdkit2d,morgan", ...]``
    (the ``--set SECTION.KEY=VALUE`` of the comparison scripts) as config
    sections for :meth:`RunConfig.from_dict`, each value read by its field's
    type: a list or tuple field splits at commas, a bool field takes
    ``true`` / ``false`` (any case), anything else stays a string for
    :func:`coerce` to convert and check.

    Raises:
        UsageError: an item that is not ``SECTION.KEY=VALUE``, or a section or
            key :class:`RunConfig` does not have (naming it).
    """
    sections: Dict[str, Dict[str, Any]] = {}
    classes = typing.get_type_hints(RunConfig)
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or section not in classes:
            raise UsageError(f"--set {item!r}: expected SECTION.KEY=VALUE with SECTION one of "
                             f"{', '.join(classes)}")
        hints = typing.get_type_hints(classes[section])
        if name not in hints:
            raise UsageError(f"--set {item!r}: '{section}' has no key {name!r}")
        hint = hints[name]
        if typing.get_origin(hint) is Union:
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        parsed: Any = value
        if typing.get_origin(hint) in (list, tuple):
            parsed = [v.strip() for v in value.split(",")] if value.strip() else []
        elif hint is bool and value.strip().lower() in ("true", "false"):
            parsed = value.strip().lower() == "true"
        sections.setdefault(section, {})[name] = parsed
    return sections
