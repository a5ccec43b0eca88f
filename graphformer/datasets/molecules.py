"""Molecule data sets from SMILES CSV files, and the bundled MoleculeNet sets."""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Literal, Optional, Sequence, Tuple, Union, get_args

import pandas as pd
from torch_geometric.data import Data, InMemoryDataset
from tqdm.auto import tqdm

from ..data.descriptors import molecule_feature_names
from ..data.molecule import from_smiles, iter_molecule_set_features
from ..errors import DataError, UsageError

Task = Literal["regression", "classification"]
#: the tasks a data set can have (the values of :data:`Task`)
TASKS = get_args(Task)
_FORMAT_VERSION = 1  # bump when the processed format changes


def default_root() -> Path:
    """Where processed data sets are cached: ``$XDG_CACHE_HOME/graphformer``
    (``~/.cache/graphformer``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "graphformer"


def file_digest(path: Path) -> str:
    """The SHA-256 of a file, as hex."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def describe_transform(transform: Optional[Callable]) -> Optional[str]:
    """A stable description of a pre-transform for the cache key (its repr and
    its attributes, so ``AddRandomWalkPE(8)`` and ``AddRandomWalkPE(16)`` differ)."""
    if transform is None:
        return None
    parts = [repr(transform)]
    for t in getattr(transform, "transforms", [transform]):
        parts.append(type(t).__name__ + json.dumps(
            {k: v for k, v in sorted(vars(t).items()) if isinstance(v, (int, float, str, bool))}))
    return "|".join(parts)


def _row_numbers(path: Path, count: int) -> List[int]:
    """The row number of each of the ``count`` records pandas read from
    ``path``: the line number minus one (row N is on line N + 1 when the header
    is line 1), so a blank line, which pandas skips, does not shift the rows
    after it. Files whose records span lines (quoted line breaks) are numbered
    by record instead (1, 2, ...)."""
    with open(path, "rb") as fh:
        lines = [n for n, line in enumerate(fh, start=1) if line.strip()]
    if len(lines) == count + 1:  # the header, then one line per record
        return [n - 1 for n in lines[1:]]
    return list(range(1, count + 1))


def read_csv(path: Union[str, Path]) -> pd.DataFrame:
    """A CSV file with every cell as a string (no NaN guessing: an empty cell
    is ``""``), indexed by row number (see :func:`_row_numbers`: row N is on
    line N + 1; blank lines are skipped but counted). Every reader of molecule
    CSV files uses it, so all messages number rows alike.

    Raises:
        FileNotFoundError / UsageError: no file at ``path``, or a directory.
        DataError: an empty file (no header), or one pandas cannot parse (the
            message names the file and pandas' reason, which names the line).
    """
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path} is a directory, not a CSV file")
    if not path.is_file():
        raise FileNotFoundError(f"no CSV file at {path}")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty: a CSV file needs a header line naming its "
                        f"columns, then one row per molecule") from None
    except pd.errors.ParserError as err:
        raise DataError(f"{path} is not a valid CSV file: {str(err).strip()}") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not a UTF-8 text file ({err.reason} at byte "
                        f"{err.start})") from None
    rows = _row_numbers(path, len(frame))
    if not isinstance(frame.index, pd.RangeIndex):
        # every data row has more fields than the header: pandas made the
        # first ones an index and shifted the columns (a trailing comma)
        width = len(frame.columns)
        extra = frame.index.nlevels
        raise DataError(f"{path}, row {rows[0]}: {width + extra} fields, but the header names "
                        f"{width} columns (a trailing delimiter, or a field holding a comma "
                        f"without double quotes)")
    frame.index = pd.Index(rows, name="row")
    return frame


def check_columns(frame: pd.DataFrame, path: Path, columns: Sequence[str]) -> None:
    """A :class:`UsageError` naming the first of ``columns`` that ``frame``
    lacks, and the columns it has."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise UsageError(f"{path}: no column {missing[0]!r}; the columns are "
                         f"{list(frame.columns)}")


#: The cell texts read as a missing value (NaN), whatever their case.
MISSING = ("", "nan", "na", "none")


def parse_number(text: str) -> float:
    """A CSV cell as a float: NaN for a missing value (:data:`MISSING`, after
    stripping white space); ``ValueError`` for text that is not a number."""
    text = text.strip()
    if text.lower() in MISSING:
        return math.nan
    return float(text)


def feature_rows(frame: pd.DataFrame, path: Path, columns: Sequence[str]) -> List[List[float]]:
    """The numeric feature ``columns`` of every row of ``frame`` (read by
    :func:`read_csv` from ``path``), one list of floats per row; a missing
    value is NaN, and so is ``inf`` (both are imputed by the model's
    :class:`~graphformer.nn.FeatureScaler`).

    Raises:
        UsageError: a missing column (naming the columns there are).
        DataError: a value that is not a number, naming the file, the row and
            the column.
    """
    check_columns(frame, path, columns)
    out: List[List[float]] = [[] for _ in range(len(frame))]
    for name in columns:
        for k, (row, text) in enumerate(frame[name].items()):
            try:
                out[k].append(parse_number(text))
            except ValueError:
                raise DataError(f"{path}, row {row}, column {name!r}: feature value "
                                f"{text.strip()!r} is not a number (leave the cell empty "
                                f"for a missing value)") from None
    return out


class KeyedDataset(InMemoryDataset):
    """An in-memory data set built from local input and cached under
    ``root/processed/<key>/``: one folder per key (a hash of everything the
    processed graphs depend on), so another set-up is processed anew instead
    of meeting a stale cache, and PyG's own pre-transform bookkeeping never
    compares two different set-ups. Subclasses set ``self._key`` before
    ``super().__init__`` and implement ``process``."""

    _key: str

    @staticmethod
    def make_key(*parts: object) -> str:
        return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]

    @property
    def raw_file_names(self) -> List[str]:
        return []

    @property
    def processed_dir(self) -> str:
        return os.path.join(self.root, "processed", self._key)

    @property
    def processed_file_names(self) -> List[str]:
        return ["data.pt"]

    def download(self) -> None:  # the input is local
        pass


class MoleculeCSVDataset(KeyedDataset):
    """A molecular property data set from a CSV file of SMILES and targets.

    Each row becomes :func:`graphformer.data.from_smiles` of its SMILES, with
    ``y`` ``[1, T]`` (float; NaN where a target is missing, to be masked out
    of losses and metrics), and with molecule features ``mol_x`` ``[1, F]``
    when ``molecule_features`` or ``feature_columns`` are given (computed
    once, here, and cached). The processed graphs are cached under ``root``
    in a file named after the CSV's SHA-256, the column choice, the molecule
    features (with RDKit's version for descriptors) and the pre-transform, so
    an edited source file, other columns, other features or other encodings
    are processed anew.

    Args:
        path: the CSV file.
        smiles_column: name of the SMILES column.
        target_columns: names of the target columns (one or more).
        task: ``"regression"`` or ``"classification"`` (targets 0/1).
        molecule_features: descriptor sets per molecule (``["rdkit2d"]``; see
            :func:`graphformer.data.molecule_feature_names`).
        feature_columns: numeric columns of the CSV, as features after the
            descriptors (an empty cell is NaN, a missing value).
        root: cache directory (default: :func:`default_root` / ``csv/<stem>``).
        transform, pre_transform: as in PyG datasets.
        log: show progress while processing.

    Raises:
        UsageError: a missing column (naming the columns there are), a
            feature column that is the SMILES or a target column, an unknown
            descriptor set.
        DataError: an empty or header-only file, an unparsable SMILES, a
            non-numeric feature value, or a non-numeric, infinite (or, for
            classification, non-0/1) target, naming the file, the column and
            the row (row N is on line N + 1;
            blank lines are skipped but counted, see :func:`read_csv`).
            Both subclass ``ValueError``.
    """

    def __init__(self, path: Union[str, Path], smiles_column: str = "smiles",
                 target_columns: Sequence[str] = (), task: Task = "regression",
                 root: Optional[Union[str, Path]] = None,
                 transform: Optional[Callable] = None, pre_transform: Optional[Callable] = None,
                 log: bool = True, molecule_features: Sequence[str] = (),
                 feature_columns: Sequence[str] = ()) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise UsageError(f"{self.path} is a directory, not a CSV file")
        if not self.path.is_file():
            raise FileNotFoundError(f"no CSV file at {self.path}")
        if isinstance(target_columns, str):
            target_columns = [target_columns]
        if task not in TASKS:
            raise ValueError(f"'task' must be 'regression' or 'classification', got {task!r}")
        self.smiles_column = smiles_column
        self.target_columns: List[str] = list(target_columns)
        self.task = task
        self.molecule_features: Tuple[str, ...] = tuple(molecule_features)
        self.feature_columns: Tuple[str, ...] = tuple(feature_columns)
        try:
            self.feature_names = molecule_feature_names(self.molecule_features,
                                                        self.feature_columns)
        except ValueError as err:
            raise UsageError(str(err)) from None
        taken = [c for c in self.feature_columns if c == smiles_column or
                 c in self.target_columns]
        if taken:
            raise UsageError(f"{self.path}: column {taken[0]!r} cannot be a feature column: it "
                             f"is the {'SMILES' if taken[0] == smiles_column else 'target'} "
                             f"column")
        features = []
        if self.feature_names:  # absent without features: earlier caches stay valid
            from rdkit import rdBase

            features = [list(self.molecule_features), list(self.feature_columns),
                        rdBase.rdkitVersion if self.molecule_features else None]
        self._key = self.make_key(file_digest(self.path), smiles_column, self.target_columns,
                                  task, _FORMAT_VERSION, describe_transform(pre_transform),
                                  *features)
        root = Path(root) if root is not None else default_root() / "csv" / self.path.stem
        super().__init__(str(root), transform, pre_transform, log=log)
        self.load(self.processed_paths[0])

    @property
    def processed_file_names(self) -> List[str]:
        return [f"{self.path.stem}.pt"]

    @property
    def num_tasks(self) -> int:
        return len(self.target_columns)

    def process(self) -> None:
        frame = read_csv(self.path)
        check_columns(frame, self.path, [self.smiles_column, *self.target_columns,
                                         *self.feature_columns])
        if len(frame) == 0:
            raise DataError(f"{self.path} has a header but no molecules")
        targets = [self._targets(frame[c], c) for c in self.target_columns]
        values = feature_rows(frame, self.path, self.feature_columns) \
            if self.feature_columns else None
        data_list: List[Data] = []
        smiles_list = list(frame[self.smiles_column])
        rows = tqdm(frame[self.smiles_column].items(), desc=f"Processing {self.path.name}",
                    disable=not self.log, unit="mol", total=len(frame))
        # the slow part (RDKit descriptors) runs ahead in worker processes
        # while this loop builds the graphs of the molecules already done
        ahead = iter_molecule_set_features(smiles_list, self.molecule_features) \
            if self.molecule_features else contextlib.nullcontext(None)
        with ahead as computed:
            for k, (row, smiles) in enumerate(rows):
                y = [t[k] for t in targets] if targets else None
                features = next(computed) if computed is not None else None
                data = from_smiles(smiles, y=y, where=f"{self.path}, row {row}",
                                   molecule_feature_sets=self.molecule_features,
                                   feature_values=values[k] if values is not None else None,
                                   set_features=features)
                if self.pre_transform is not None:
                    data = self.pre_transform(data)
                data_list.append(data)
        self.save(data_list, self.processed_paths[0])

    def _targets(self, column: pd.Series, name: str) -> List[float]:
        values = []
        for row, text in column.items():
            text = text.strip()
            if text.lower() in MISSING:
                values.append(math.nan)
                continue
            try:
                value = float(text)
            except ValueError:
                raise DataError(f"{self.path}, row {row}, column {name!r}: target "
                                f"{text!r} is not a number") from None
            if not math.isfinite(value):
                raise DataError(f"{self.path}, row {row}, column {name!r}: target {text!r} "
                                f"is not finite (leave the cell empty for a missing value)")
            if self.task == "classification" and value not in (0.0, 1.0):
                raise DataError(f"{self.path}, row {row}, column {name!r}: a "
                                f"classification target must be 0 or 1, got {text!r}")
            values.append(value)
        return values

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.path.name}, {len(self)} molecules, "
                f"targets={self.target_columns}, task={self.task!r})")


@dataclass(frozen=True)
class BundledSet:
    """A data set shipped in the repository's ``datasets/`` folder."""
    file: str
    target_column: str
    unit: str
    smiles_column: str = "smiles"
    task: Task = "regression"


BUNDLED = {
    "esol": BundledSet("ESOL.csv", "measured log solubility in mols per litre",
                       "log10(mol/L)"),
    "freesolv": BundledSet("FreeSolv.csv", "expt", "kcal/mol"),
    "lipophilicity": BundledSet("Lipophilicity.csv", "exp", "logD"),
}


def takes_molecule_features(dataset: str) -> bool:
    """Whether a data set (a name or a CSV path) can hold molecule features:
    the bundled sets and SMILES CSV files can, OGB, ZINC and PCQM4Mv2 cannot."""
    name = dataset.lower()
    return name in BUNDLED or name.endswith(".csv")


def bundled_dir() -> Path:
    """The folder of the bundled MoleculeNet CSV files (with PROVENANCE.md)."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[2] / "datasets" / "moleculenet",
                      here.parents[1] / "bundled" / "moleculenet"):
        if (candidate / "ESOL.csv").is_file():
            return candidate
    raise FileNotFoundError(
        "the bundled data sets are missing: expected ESOL.csv, FreeSolv.csv and "
        f"Lipophilicity.csv in {here.parents[2] / 'datasets' / 'moleculenet'}")


def load_bundled(name: str, root: Optional[Union[str, Path]] = None,
                 **kwargs) -> MoleculeCSVDataset:
    """One of the bundled sets: ``"esol"``, ``"freesolv"``, ``"lipophilicity"``."""
    spec = BUNDLED.get(name.lower())
    if spec is None:
        raise ValueError(f"no bundled data set {name!r}; choose one of {sorted(BUNDLED)}")
    root = Path(root) / name.lower() if root is not None else default_root() / name.lower()
    return MoleculeCSVDataset(bundled_dir() / spec.file, spec.smiles_column,
                              [spec.target_column], spec.task, root=root, **kwargs)
