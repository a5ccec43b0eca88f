"""Run configuration: explicit dataclasses, checked on creation, stored with
every run and checkpoint as plain data (JSON/YAML)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from ..models import GraphTransformerConfig

SPLITS = ("scaffold", "random", "official")


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
        root: where data sets are cached (default ``~/.cache/graphformer``).
    """
    dataset: str = "esol"
    smiles_column: str = "smiles"
    target_columns: List[str] = field(default_factory=list)
    task: str = "regression"
    split: Optional[str] = None
    root: Optional[str] = None

    def __post_init__(self) -> None:
        if isinstance(self.target_columns, str):
            self.target_columns = [self.target_columns]
        if self.task not in ("regression", "classification"):
            raise ValueError(f"'task' must be 'regression' or 'classification', got {self.task!r}")
        if self.split is not None and self.split not in SPLITS and not self.split.startswith("column:"):
            raise ValueError(f"'split' must be one of {SPLITS} or 'column:NAME', got {self.split!r}")
        if self.dataset.lower().endswith(".csv") and not self.target_columns:
            raise ValueError(f"a CSV data set needs 'target_columns' (--target-columns) for "
                             f"{self.dataset}")


@dataclass
class TrainConfig:
    """How to train.

    Attributes:
        epochs: passes over the training set.
        batch_size: graphs per batch (per process under ``torchrun``).
        lr: peak learning rate of AdamW (linear warm-up, cosine decay).
        weight_decay: AdamW weight decay.
        warmup_epochs: epochs of linear warm-up.
        grad_clip: gradient-norm clip (0 = off).
        seed: seed of everything random (initialisation, shuffling, dropout).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        threads: torch CPU threads (0 = torch's default).
    """
    epochs: int = 60
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-5
    warmup_epochs: int = 5
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    threads: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"'epochs' and 'batch_size' must be >= 1, got {self.epochs}, "
                             f"{self.batch_size}")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_epochs < 0 or self.grad_clip < 0:
            raise ValueError("'lr' must be > 0 and 'weight_decay', 'warmup_epochs', "
                             "'grad_clip' >= 0")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"'device' must be 'auto', 'cpu' or 'cuda', got {self.device!r}")


@dataclass
class RunConfig:
    """Everything a run needs; saved as ``config.json`` in the run directory."""
    data: DataConfig = field(default_factory=DataConfig)
    model: GraphTransformerConfig = field(default_factory=GraphTransformerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> Dict[str, Any]:
        return {"data": asdict(self.data), "model": self.model.to_dict(),
                "train": asdict(self.train)}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "RunConfig":
        unknown = set(d) - {"data", "model", "train"}
        if unknown:
            raise ValueError(f"unknown config section(s) {sorted(unknown)}; expected data, "
                             f"model, train")
        return cls(data=_build(DataConfig, d.get("data", {}), "data"),
                   model=_build(GraphTransformerConfig, d.get("model", {}), "model"),
                   train=_build(TrainConfig, d.get("train", {}), "train"))


def _build(cls, values: Dict[str, Any], section: str):
    names = {f.name for f in fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)} in config section '{section}'; "
                         f"known: {sorted(names)}")
    return cls(**values)


def read_config_file(path: Union[str, Path]) -> Dict[str, Any]:
    """A YAML (``.yaml``/``.yml``) or JSON config file as a dict of sections."""
    path = Path(path)
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML: {err}") from None
    else:
        import json

        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a config file holds sections data / model / train")
    return values
