"""Molecule CSV files read in chunks and turned into graphs as they are read:
screening files larger than memory (``graphformer predict`` and
``graphformer fingerprint``; the model's side is :mod:`graphformer.train.screen`).

- :class:`CSVChunks` reads a CSV file ``chunk_size`` records at a time with
  Python's :mod:`csv` module (the dialect pandas reads by default: commas,
  double quotes, UTF-8 with or without a byte-order mark). Rows are numbered
  as :func:`~graphformer.datasets.molecules.read_csv` numbers them: row N is on
  line N + 1, blank (or white-space) lines are skipped but counted. A record
  whose quoted field spans lines is numbered by its first line (``read_csv``
  numbers such a file's records 1, 2, ...: it reads the whole file first). A
  missing trailing field is an empty cell (as pandas); a record with more
  fields than the header, a line that is not UTF-8 and a record the
  :mod:`csv` module refuses are a :class:`~graphformer.errors.DataError`
  naming the file and the row or line. Each chunk ends at a
  :class:`Position` (byte offset and line), where a later reader can start
  (``--resume``).
- :func:`pieces` cuts chunks into pieces of at most ``batch_size`` molecules;
  :class:`Featuriser` turns a piece into one collated PyG ``Batch`` (as
  ``graphformer predict`` always did: :func:`~graphformer.data.from_smiles`
  with the checkpoint's descriptor sets and feature columns, then its
  encodings), setting aside the rows whose SMILES does not parse, by row.
- :func:`featurise` runs the featuriser in ``workers`` processes
  (``concurrent.futures.ProcessPoolExecutor``, forked on Linux, each worker on
  one thread and ending with its caller), with a bounded number of pieces in
  flight, and yields the results in input order. Memory is bounded by that
  window and one chunk, never by the file.
"""
from __future__ import annotations

import collections
import csv
import hashlib
import multiprocessing
import sys
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Deque, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import pandas as pd
import torch
from torch_geometric.data import Batch

from .._process import end_with_parent
from ..data.encodings import encodings
from ..data.molecule import ECFP_COUNTS, count_fingerprints, from_smiles
from ..errors import DataError, UsageError
from .molecules import check_columns, feature_rows

#: default records per chunk: the unit that is committed to the output (and
#: that ``--resume`` continues after)
CHUNK_SIZE = 10_000
#: pieces in flight per worker process
AHEAD_PER_WORKER = 4


@dataclass(frozen=True)
class Position:
    """Where a reader stands in a file: ``offset`` bytes and ``line`` lines
    read (the next record starts on line ``line + 1``)."""
    offset: int
    line: int

    def __post_init__(self) -> None:
        if self.offset < 0 or self.line < 0:
            raise ValueError(f"a Position has offset and line >= 0, got {self}")


@dataclass(frozen=True)
class Chunk:
    """``chunk_size`` records (fewer at the end of the file): their row
    numbers, SMILES and feature values (``None`` without feature columns),
    where the reader stood before and after them, and the SHA-256 (hex) of
    the file's bytes before ``end`` (what a resumed run checks is unchanged)."""
    index: int
    rows: Tuple[int, ...]
    smiles: Tuple[str, ...]
    features: Optional[Tuple[Tuple[float, ...], ...]]
    start: Position
    end: Position
    digest: str = ""

    def __post_init__(self) -> None:
        if len(self.smiles) != len(self.rows) or (
                self.features is not None and len(self.features) != len(self.rows)):
            raise ValueError("a Chunk has one SMILES (and one feature row) per row")
        if self.end.offset < self.start.offset:
            raise ValueError(f"a Chunk ends after it starts, got {self.start} .. {self.end}")


def _prefix_digest(fh: IO[bytes], size: int) -> Any:
    """The SHA-256 of the first ``size`` bytes of ``fh`` (read in blocks)."""
    digest = hashlib.sha256()
    fh.seek(0)
    left = size
    while left > 0:
        block = fh.read(min(left, 1 << 22))
        if not block:
            break
        digest.update(block)
        left -= len(block)
    return digest


def csv_file(path: Union[str, Path]) -> Path:
    """``path`` when it is a file; a :class:`UsageError` for a directory, a
    ``FileNotFoundError`` (``no CSV file at ...``) when there is none."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path} is a directory, not a CSV file")
    if not path.is_file():
        raise FileNotFoundError(f"no CSV file at {path}")
    return path


class CSVChunks:
    """The records of a CSV file, ``chunk_size`` at a time (see the module
    docstring), from its start or from ``start`` (a chunk's ``end`` of an
    earlier reading of the same file; chunks are then numbered from
    ``first_index``, and :attr:`start_digest` is the SHA-256 of the bytes
    before ``start``, read once to compare with that chunk's ``digest``).

    Raises (on creation, or while iterating):
        FileNotFoundError / UsageError: no file, a directory, a missing
            column (naming the columns there are).
        DataError: an empty file, a bad record, a line that is not UTF-8,
            a feature value that is not a number (naming file, row, column).
    """

    def __init__(self, path: Union[str, Path], smiles_column: str = "smiles",
                 feature_columns: Sequence[str] = (), chunk_size: int = CHUNK_SIZE,
                 start: Optional[Position] = None, first_index: int = 0) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.path = csv_file(path)
        self.chunk_size, self.first_index = chunk_size, first_index
        self.feature_columns = tuple(feature_columns)
        self.size = self.path.stat().st_size
        self._fh: IO[bytes] = open(self.path, "rb")
        self._offset = self._line = 0
        self._last_line = ""
        self._digest = hashlib.sha256()
        try:
            # strict: a quote left open at the end of the file is an error, not
            # a last field that swallowed every line after it
            self._records = csv.reader(self._lines(), strict=True)
            self.header = self._read_header()
            check_columns(pd.DataFrame(columns=self.header), self.path,
                          [smiles_column, *self.feature_columns])
            self._smiles = self.header.index(smiles_column)
            self._features = [self.header.index(c) for c in self.feature_columns]
            if start is not None and (start.offset, start.line) > (self._offset, self._line):
                self._digest = _prefix_digest(self._fh, start.offset)
                self._fh.seek(start.offset)
                self._offset, self._line = start.offset, start.line
            self.start_digest = self._digest.hexdigest()
        except BaseException:
            self.close()
            raise

    # -- reading --
    def _lines(self) -> Iterator[str]:
        for raw in self._fh:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{self.path} is not a UTF-8 text file ({err.reason} at byte "
                                f"{self._offset + err.start}, line {self._line + 1})") from None
            if self._offset == 0 and text.startswith("\ufeff"):
                text = text[1:]  # the byte-order mark, as pandas drops it
            self._offset += len(raw)
            self._line += 1
            self._digest.update(raw)
            self._last_line = text
            yield text

    def _next_record(self) -> Optional[Tuple[int, List[str]]]:
        """The next record that is not a blank line, with the number of its
        first line; None at the end of the file."""
        while True:
            first = self._line + 1
            try:
                record = next(self._records, None)
            except csv.Error as err:
                where = f"line {first}" + (f" (to line {self._line})" if self._line > first
                                           else "")
                raise DataError(f"{self.path}, {where}: not a valid CSV record ({err}; a "
                                f"double quote opens a field that runs to the next double "
                                f"quote)") from None
            if record is None:
                return None
            if record and (self._line > first or self._last_line.strip()):
                return first, record

    def _read_header(self) -> List[str]:
        found = self._next_record()
        if found is None:
            raise DataError(f"{self.path} is empty: a CSV file needs a header line naming its "
                            f"columns, then one row per molecule")
        return found[1]

    def __iter__(self) -> Iterator[Chunk]:
        index = self.first_index
        width = len(self.header)
        try:
            while True:
                start = Position(self._offset, self._line)
                rows: List[int] = []
                cells: List[List[str]] = []
                while len(rows) < self.chunk_size:
                    found = self._next_record()
                    if found is None:
                        break
                    line, record = found
                    if len(record) > width:
                        raise DataError(f"{self.path}, row {line - 1}: {len(record)} fields, "
                                        f"but the header names {width} columns (a field "
                                        f"holding a comma needs double quotes)")
                    rows.append(line - 1)
                    cells.append(record + [""] * (width - len(record)))
                if not rows:
                    return
                yield Chunk(index, tuple(rows), tuple(c[self._smiles] for c in cells),
                            self._feature_values(rows, cells), start,
                            Position(self._offset, self._line), self._digest.hexdigest())
                index += 1
        finally:
            self.close()

    def _feature_values(self, rows: List[int], cells: List[List[str]]
                        ) -> Optional[Tuple[Tuple[float, ...], ...]]:
        if not self.feature_columns:
            return None
        frame = pd.DataFrame({name: [c[k] for c in cells] for name, k in
                              zip(self.feature_columns, self._features)},
                             index=pd.Index(rows, name="row"))
        return tuple(tuple(v) for v in feature_rows(frame, self.path, self.feature_columns))

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "CSVChunks":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Piece:
    """At most one batch of molecules of a chunk; ``last`` marks the chunk's
    last piece, and ``chunk`` carries the chunk's numbers and position."""
    chunk: Chunk
    first: int
    stop: int
    last: bool

    def __post_init__(self) -> None:
        if not 0 <= self.first <= self.stop <= len(self.chunk.rows):
            raise ValueError(f"a Piece is a slice of its chunk, got {self.first}:{self.stop} "
                             f"of {len(self.chunk.rows)}")

    @property
    def rows(self) -> Tuple[int, ...]:
        return self.chunk.rows[self.first:self.stop]

    def __reduce__(self):
        # to a worker, only this piece's records travel (not the whole chunk)
        c = self.chunk
        part = Chunk(c.index, self.rows, c.smiles[self.first:self.stop],
                     c.features[self.first:self.stop] if c.features is not None else None,
                     c.start, c.end, c.digest)
        return (Piece, (part, 0, self.stop - self.first, self.last))


def pieces(chunks: Iterable[Chunk], batch_size: int) -> Iterator[Piece]:
    """Every chunk cut into pieces of ``batch_size`` molecules (the last one
    of a chunk shorter)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for chunk in chunks:
        n = len(chunk.rows)
        for first in range(0, n, batch_size):
            yield Piece(chunk, first, min(first + batch_size, n), first + batch_size >= n)


@dataclass
class Featurised:
    """A featurised piece: the valid molecules' ``rows``, their ``smiles``
    and their collated ``batch`` (None when none was valid), and the rows
    set aside as ``(row, message)`` (the message names file and row)."""
    piece: Piece
    rows: List[int]
    smiles: List[str]
    batch: Optional[Batch]
    invalid: List[Tuple[int, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.rows) != len(self.smiles) or (self.batch is None) != (not self.rows):
            raise ValueError("a Featurised piece has one SMILES per row, and a batch iff a row")


@dataclass(frozen=True)
class Featuriser:
    """Graphs of a piece as ``graphformer predict`` has always built them:
    :func:`~graphformer.data.from_smiles` (``where``: the file, for messages)
    with the descriptor ``molecule_feature_sets`` and the piece's feature
    values, then the model's encodings (``rwse_steps``, ``lap_pe``), collated
    into one ``Batch``; with ``ecfp_counts`` (a model with a fingerprint
    kernel member) also the molecules' ECFP4 counts as the batch's
    ``ecfp_counts`` ``[B, 2048]`` (:func:`~graphformer.data.molecule.
    count_fingerprints`), so that workers compute them. A SMILES that does
    not parse (or is too large for the descriptors) is set aside with its
    message."""
    where: str
    molecule_feature_sets: Tuple[str, ...] = ()
    rwse_steps: int = 0
    lap_pe: int = 0
    ecfp_counts: bool = False

    def __post_init__(self) -> None:
        if self.rwse_steps < 0 or self.lap_pe < 0:
            raise ValueError(f"rwse_steps and lap_pe must be >= 0, got {self.rwse_steps}, "
                             f"{self.lap_pe}")

    def __call__(self, piece: Piece) -> Featurised:
        chunk = piece.chunk
        transform = encodings(self.rwse_steps, self.lap_pe)
        graphs, rows, smiles, invalid = [], [], [], []
        for k in range(piece.first, piece.stop):
            row = chunk.rows[k]
            try:
                data = from_smiles(chunk.smiles[k], where=f"{self.where}, row {row}",
                                   molecule_feature_sets=self.molecule_feature_sets,
                                   feature_values=chunk.features[k]
                                   if chunk.features is not None else None)
            except ValueError as err:
                invalid.append((row, str(err)))
                continue
            graphs.append(transform(data) if transform is not None else data)
            rows.append(row)
            smiles.append(chunk.smiles[k])
        batch = Batch.from_data_list(graphs) if graphs else None
        if batch is not None and self.ecfp_counts:
            setattr(batch, ECFP_COUNTS, count_fingerprints(smiles))
        return Featurised(piece, rows, smiles, batch, invalid)


def _worker_start() -> None:
    """In each worker: one thread (the workers are the parallelism), and
    end with the caller (Linux ``PR_SET_PDEATHSIG``), never outliving it."""
    torch.set_num_threads(1)
    end_with_parent()


def featurise(items: Iterable[Piece], featuriser: Featuriser, workers: int = 0
              ) -> Iterator[Featurised]:
    """``featuriser`` of every piece, in order: in this process for
    ``workers`` 0 or 1, else in ``workers`` processes with at most
    :data:`AHEAD_PER_WORKER` pieces per worker in flight (the input is read
    only that far ahead). The workers stop when the iterator is closed or
    garbage-collected (also on an error); a worker that dies (killed for
    memory, say) is a :class:`~graphformer.errors.DataError` saying so."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if workers <= 1:
        yield from map(featuriser, items)
        return
    method = "fork" if sys.platform.startswith("linux") else None
    executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method),
                                   initializer=_worker_start)
    pending: Deque[Future] = collections.deque()
    try:
        for item in items:
            pending.append(executor.submit(featuriser, item))
            if len(pending) >= AHEAD_PER_WORKER * workers:
                yield _result(pending.popleft())
        while pending:
            yield _result(pending.popleft())
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _result(future: Future) -> Featurised:
    try:
        return future.result()
    except BrokenProcessPool as err:
        raise DataError(f"a worker process that turns SMILES into graphs died ({err}): killed "
                        f"for memory? Use fewer --workers or a smaller --batch-size") from None


__all__ = ["CHUNK_SIZE", "csv_file", "Position", "Chunk", "CSVChunks", "Piece", "pieces", "Featurised",
           "Featuriser", "featurise"]
