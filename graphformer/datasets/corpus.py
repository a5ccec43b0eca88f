"""Unlabelled molecules for pre-training: a SMILES file, or the MOSES corpus.

:func:`corpus_source` resolves what ``graphformer pretrain --smiles`` names:

- a CSV file (``.csv`` or ``.csv.gz``) with a SMILES column, or a ``.smi`` /
  ``.txt`` file with one SMILES per line (text after the first space or tab
  is the molecule's name, as in the SMILES file format);
- a ``molsets`` wheel (``pip download --no-deps molsets``): its MOSES
  training set ``moses/dataset/data/train.csv.gz`` (1.58M SMILES of ZINC
  clean leads, MIT licence) is read straight from the wheel;
- ``moses`` (or ``moses:test``): the same file of an installed ``molsets``
  package (found without importing it, so its pinned dependencies need not
  be installed).

:class:`PretrainCorpus` turns the SMILES into graphs with their pre-training
targets (:mod:`graphformer.data.pretrain_targets`), once, with a progress bar,
and caches them like every other data set (a folder per key). SMILES that do
not parse are counted and reported (file and row of the first few), not
dropped silently, and do not stop the run.
"""
from __future__ import annotations

import gzip
import importlib.util
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple, Union

import pandas as pd
import torch
from torch_geometric.data import Data
from tqdm.auto import tqdm

from .._files import write_text
from ..data.molecule import from_mol, parse_smiles
from ..data.pretrain_targets import DESCRIPTORS_VERSION, descriptor_names, descriptor_vector
from ..errors import DataError, UsageError
from .molecules import KeyedDataset, check_columns, default_root, describe_transform, \
    file_digest, read_csv

#: where the MOSES training set sits inside the ``molsets`` package
MOSES_MEMBERS = {"train": "moses/dataset/data/train.csv.gz",
                 "test": "moses/dataset/data/test.csv.gz"}
MOSES_ATTRIBUTION = ("MOSES (Polykovskiy et al., 2020, Molecular Sets: A Benchmarking Platform "
                     "for Molecular Generation Models), from the 'molsets' package, "
                     "MIT licence, Copyright 2018 Insilico Medicine, Inc.")
#: how many unparsable SMILES a report lists by row
SHOWN_BAD = 5
_FORMAT_VERSION = 1  # bump when the processed format changes


@dataclass(frozen=True)
class CorpusSource:
    """A resolved corpus: the file to read, the member inside it (for a
    wheel), and how to name rows in messages."""
    path: Path
    member: Optional[str] = None

    @property
    def name(self) -> str:
        return f"{self.path}:{self.member}" if self.member else str(self.path)


def corpus_source(spec: Union[str, Path]) -> CorpusSource:
    """The corpus that ``spec`` names (see the module docstring).

    Raises:
        UsageError: ``moses`` without an installed ``molsets`` package, or a
            wheel without the MOSES files.
        FileNotFoundError: no file at the path.
    """
    text = str(spec)
    if text in ("moses", "moses:train", "moses:test"):
        part = text.partition(":")[2] or "train"
        found = importlib.util.find_spec("moses")
        locations = list(found.submodule_search_locations or []) if found else []
        for folder in locations:
            path = Path(folder).parent / MOSES_MEMBERS[part]
            if path.is_file():
                return CorpusSource(path)
        raise UsageError(f"--smiles {text}: no installed 'molsets' package with its MOSES "
                         f"files; run 'pip download --no-deps molsets -d DIR' and give "
                         f"--smiles DIR/molsets-<version>-py3-none-any.whl")
    path = Path(text)
    if path.is_dir():
        raise UsageError(f"{path} is a directory; give a SMILES file (.csv, .csv.gz, .smi, "
                         f".txt) or a molsets wheel")
    if not path.is_file():
        raise FileNotFoundError(f"no SMILES file at {path}")
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as wheel:
            if MOSES_MEMBERS["train"] not in wheel.namelist():
                raise UsageError(f"{path} holds no {MOSES_MEMBERS['train']}: not a molsets "
                                 f"wheel")
        return CorpusSource(path, MOSES_MEMBERS["train"])
    return CorpusSource(path)


def _text(source: CorpusSource) -> str:
    """The (decompressed) text of a corpus file."""
    if source.member is not None:
        with zipfile.ZipFile(source.path) as wheel:
            raw = wheel.read(source.member)
    else:
        raw = source.path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{source.name} is not a UTF-8 text file ({err.reason} at byte "
                        f"{err.start})") from None


def read_smiles(source: CorpusSource, column: str = "smiles",
                limit: int = 0) -> List[Tuple[int, str]]:
    """``(row, SMILES)`` of the first ``limit`` molecules (0 = all) of a corpus.

    A CSV file's column is matched exactly, else case-insensitively (MOSES
    calls it ``SMILES``); rows are numbered as :func:`read_csv` numbers them
    (row N is on line N + 1). A ``.smi`` / ``.txt`` file has no header: row N
    is line N, and blank lines are skipped.
    """
    name = source.member or source.path.name
    if name.endswith((".smi", ".txt", ".smi.gz", ".txt.gz")):
        rows = [(n, line.split()[0]) for n, line in enumerate(_text(source).splitlines(), 1)
                if line.strip()]
        return rows[:limit] if limit else rows
    if source.member is None and not name.endswith(".gz"):
        frame = read_csv(source.path)
    else:
        frame = pd.read_csv(io.StringIO(_text(source)), dtype=str, keep_default_na=False,
                            nrows=limit or None)
        frame.index = pd.RangeIndex(1, len(frame) + 1, name="row")
    if column not in frame.columns:
        folded = [c for c in frame.columns if c.lower() == column.lower()]
        column = folded[0] if len(folded) == 1 else column
    check_columns(frame, Path(source.name), [column])
    if limit:
        frame = frame.head(limit)
    return list(frame[column].items())


class PretrainCorpus(KeyedDataset):
    """Graphs of a SMILES corpus with their pre-training targets.

    Each molecule is :func:`graphformer.data.from_mol` of its SMILES with
    ``desc`` ``[1, D]`` (float32; :func:`descriptor_vector`, NaN where RDKit
    gives none), after ``pre_transform``. Cached under
    ``root/processed/<key>/`` where the key covers the file's SHA-256, the
    column, ``max_molecules``, the descriptor list and the pre-transform.

    Attributes:
        bad: how many SMILES did not parse.
        bad_examples: the first :data:`SHOWN_BAD` of them, as
            ``"<file>, row <n>: <reason>"``.
        total: how many rows were read.
    """

    def __init__(self, source: CorpusSource, smiles_column: str = "smiles",
                 max_molecules: int = 0, root: Optional[Union[str, Path]] = None,
                 pre_transform: Optional[Callable] = None, log: bool = True) -> None:
        if max_molecules < 0:
            raise UsageError(f"max_molecules must be >= 0 (0 = all), got {max_molecules}")
        self.source, self.smiles_column, self.max_molecules = source, smiles_column, max_molecules
        self._key = self.make_key(file_digest(source.path), source.member, smiles_column,
                                  max_molecules, descriptor_names(), DESCRIPTORS_VERSION,
                                  _FORMAT_VERSION, describe_transform(pre_transform))
        root = Path(root) if root is not None else default_root() / "pretrain"
        super().__init__(str(root), None, pre_transform, log=log)
        self.load(self.processed_paths[0])
        report = json.loads(Path(self.processed_paths[1]).read_text())
        self.total, self.bad = report["total"], report["bad"]
        self.bad_examples: List[str] = report["bad_examples"]

    @property
    def processed_file_names(self) -> List[str]:
        return ["corpus.pt", "report.json"]

    @property
    def key(self) -> str:
        """What the processed corpus depends on, as a short hash."""
        return self._key

    def process(self) -> None:
        rows = read_smiles(self.source, self.smiles_column, self.max_molecules)
        data_list: List[Data] = []
        bad: List[str] = []
        for row, smiles in tqdm(rows, desc=f"Processing {Path(self.source.name).name}",
                                disable=not self.log, unit="mol"):
            try:
                mol = parse_smiles(smiles, where=f"{self.source.name}, row {row}")
            except DataError as err:
                bad.append(str(err))
                continue
            data = from_mol(mol)
            data.desc = torch.from_numpy(descriptor_vector(mol)).float().view(1, -1)
            if self.pre_transform is not None:
                data = self.pre_transform(data)
            data_list.append(data)
        if not data_list:
            raise DataError(f"{self.source.name}: none of its {len(rows)} SMILES parsed "
                            f"({'; '.join(bad[:SHOWN_BAD]) or 'it holds no molecules'})")
        self.save(data_list, self.processed_paths[0])
        report = {"total": len(rows), "bad": len(bad), "bad_examples": bad[:SHOWN_BAD]}
        write_text(self.processed_paths[1], json.dumps(report, indent=2) + "\n")

    @property
    def descriptors(self) -> torch.Tensor:
        """The ``desc`` rows of every molecule, ``[len(self), D]``."""
        return self._data.desc

    def report(self) -> str:
        """One line: molecules kept, and the unparsable ones with examples."""
        line = f"{self.source.name}: {len(self)} of {self.total} molecules"
        if self.bad:
            line += (f"; {self.bad} SMILES did not parse and were left out, e.g. "
                     f"{'; '.join(self.bad_examples)}")
        return line

