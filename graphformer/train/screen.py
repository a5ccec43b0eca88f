"""A trained model over a CSV file of any size, chunk by chunk: what
``graphformer predict`` and ``graphformer fingerprint`` share.

The file is read and featurised as it goes (:mod:`graphformer.datasets.stream`:
chunks of ``chunk_size`` records, pieces of ``batch_size`` molecules, in
``workers`` processes); every batch goes through the model, and its output
columns (:func:`prediction_columns`, :func:`fingerprint_columns`: one function
from a batch to named tensors) are appended to the output as they come. Memory
is bounded by a chunk and the pieces in flight, never by the file: the loop
gives the C heap's free pages back to the system after every chunk
(:func:`~graphformer._process.release_free_memory`; without it, glibc's heap
crept up by a few hundred bytes a molecule, 683 MB after 20,000 molecules
and 909 MB after a million).

**Partial output and ``--resume``.** Nothing is written at the output path
until the end: the rows go into a hidden folder beside it,
``.<output name>.partial/`` (:class:`PartialOutput`), with ``state.json``
recording, after every complete chunk (its data flushed to disk first), the
chunks done, where the input stands (byte offset and line), the rows read,
written and skipped, the size of every data file, and what the output
depends on: the command, the checkpoint's SHA-256, the input's identity (its
size and the SHA-256 of its first and last MiB) and the flags that change
the output (``--chunk-size``, ``--batch-size``, ``--smiles-column``, ...). At
the end the data become the output in one rename (CSV) or one atomic write
(``.npz``), and the folder is removed. A run that stops (killed, interrupted,
an error) leaves the folder: ``--resume`` cuts the data files back to the
last complete chunk and continues from there, so every row is written exactly
once and the output is byte for byte that of an uninterrupted run. A resume
whose checkpoint, input or output-changing flags differ is refused, naming
what changed (``predict``'s ``--interval`` and ``--interval-method`` are
such flags); a CSV output also goes on only with the columns its header
names (a partial output of an older graphformer, before an ensemble's
``_std`` column, is refused). ``--skip-invalid`` and ``--workers`` may
change on resume (neither changes a row already written). A second run on
the same output while one runs is refused (a lock on the folder). A run
without ``--resume`` discards an earlier run's partial output, and says so.

**Invalid SMILES.** Rows are numbered as in every graphformer message (row N
on line N + 1). Without ``skip_invalid`` the first chunk holding an invalid
SMILES ends the run with a :class:`~graphformer.errors.DataError` naming its
invalid rows (all of that chunk's, 20 shown); no output file is written, and
the chunks before it stay in the partial output (``--skip-invalid --resume``
continues past them). With ``skip_invalid`` each invalid row is reported on
``report`` (``skipped: <file>, row N ...``) and left out of the output: the
``row`` column keeps the input's row numbers, so the rows after it are never
shifted (a skipped row is absent, not an empty prediction).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Dict, Iterator, List, Literal, Optional, Sequence, \
    TextIO, Tuple, get_args

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .._files import atomic_write, write_text
from .._process import release_free_memory
from ..datasets.stream import CSVChunks, Featurised, Featuriser, Position, featurise, pieces
from ..errors import DataError, UsageError
from ..models import Ensemble, GraphTransformer
from .config import UNCERTAINTY_SUFFIXES
from .uncertainty import METHODS, Calibration, check_coverage, interval, predict_distribution

try:
    import fcntl
except ImportError:  # not on POSIX: partial outputs are not locked
    fcntl = None  # type: ignore[assignment]

#: a batch -> its output columns, each ``[B]`` or ``[B, ...]`` (rows in batch order)
Columns = Callable[[Any], Dict[str, Tensor]]
Members = Literal["mean", "all"]
MEMBERS = get_args(Members)
PARTIAL_FORMAT = "graphformer-partial-output"
PARTIAL_VERSION = 1
#: how many invalid rows an error message lists
SHOWN_INVALID = 20
#: the bytes hashed at each end of the input for its identity
IDENTITY_BYTES = 1 << 20
#: the time stamp of every member of an ``.npz`` output (so that equal
#: arrays give equal files)
ZIP_TIME = (1980, 1, 1, 0, 0, 0)


# --------------------------------------------------------------------------- columns

@dataclass(frozen=True)
class SpreadColumns:
    """What ``predict`` writes beside each prediction of a regression model
    with a spread (an ensemble of K >= 2, or a ``--loss mve`` / ``evidential``
    model: :func:`~graphformer.train.uncertainty.spread_of`), for every
    target ``<name>``:

    - ``<name>_std``: the predictive standard deviation in target units
      (:func:`~graphformer.train.uncertainty.predict_distribution`: an
      ensemble's population std over its members plus the members' own
      variances), **calibrated**: ``sqrt((s * std)**2 + b**2)`` with the
      ``calibration``'s scale and floor, so a Gaussian of that std fits the
      validation part's errors. Without a
      ``calibration`` (a checkpoint written before calibration was saved) it
      is the model's raw, uncalibrated spread;
    - with ``coverage``: ``<name>_low`` and ``<name>_high``, the central
      interval of that coverage by ``method``
      (:func:`~graphformer.train.uncertainty.interval`): ``conformal``
      (split conformal on the validation part's normalised residuals:
      ``mean -/+ q * <name>_std``), ``zscale`` (``mean -/+ z * <name>_std``, z
      the standard normal's quantile) or ``gaussian`` (``mean -/+ z * raw
      std``, uncalibrated; the only one without a ``calibration``).
    """
    calibration: Optional[Calibration] = None
    coverage: Optional[float] = None
    method: str = "conformal"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.coverage is not None:
            check_coverage(self.coverage)
            if self.method != "gaussian" and self.calibration is None:
                raise ValueError(f"a {self.method} interval needs a calibration")

    def names(self, name: str) -> List[str]:
        """The columns of target ``name``, in output order."""
        std, low, high = (name + suffix for suffix in UNCERTAINTY_SUFFIXES)
        return [name, std, *([low, high] if self.coverage is not None else [])]

    def columns(self, mean: Tensor, std: Tensor, names: Sequence[str]) -> Dict[str, Tensor]:
        """The columns of predictions ``mean`` with raw standard deviations
        ``std`` (``[B, T]``, target units), target by target."""
        scaled = std if self.calibration is None else self.calibration.calibrated(std)
        parts = [mean, scaled]
        if self.coverage is not None:
            parts += list(interval(mean, std, self.calibration, self.coverage, self.method))
        out: Dict[str, Tensor] = {}
        for k, name in enumerate(names):
            for key, values in zip(self.names(name), parts):
                out[key] = values[:, k]
        if len(out) != len(names) * len(parts):
            raise DataError(f"the target names {list(names)} collide with their uncertainty "
                            f"columns ({', '.join(self.names(names[0]))}, ...)")
        return out


@torch.no_grad()
def prediction_columns(model: torch.nn.Module, batch: Any, *, y_mean: Tensor, y_std: Tensor,
                       names: Sequence[str], spread: Optional[SpreadColumns] = None
                       ) -> Dict[str, Tensor]:
    """The output columns of one batch: one per target, named ``names``, in
    target units (regression: the model's normalised output times ``y_std``
    plus ``y_mean``) or as a probability (classification: the sigmoid of
    the logit). An ensemble predicts its mean (:class:`~graphformer.models.
    Ensemble`). With ``spread`` (a regression model with a spread only),
    each target's column is followed by its standard deviation and interval
    (:class:`SpreadColumns`). The columns appear in ``predict``'s output in
    this order."""
    if spread is not None:
        if len(names) != len(y_mean):
            raise ValueError(f"{len(names)} column names for {len(y_mean)} outputs")
        mean, std = predict_distribution(model, batch, {"y_mean": y_mean, "y_std": y_std})
        return spread.columns(mean.float(), std.float(), names)
    pred = model(batch).float()
    if len(names) != pred.size(1):
        raise ValueError(f"{len(names)} column names for {pred.size(1)} outputs")
    if model.config.task == "regression":
        pred = pred * y_std + y_mean
    else:
        pred = torch.sigmoid(pred)
    return {name: pred[:, k] for k, name in enumerate(names)}


@torch.no_grad()
def molecule_vectors(model: torch.nn.Module, batch: Any) -> Tensor:
    """The molecule vectors a :class:`~graphformer.models.GraphTransformer`'s
    prediction head reads, ``[B, hidden + mol_features]``: the pooled readout
    of its last block (:meth:`~graphformer.models.GraphTransformer.encode`'s
    graph vectors), then its scaled molecule features when it takes them.
    Taken at the head's input during a forward pass, so they are exactly what
    the head sees."""
    seen: List[Tensor] = []
    hook = model.head.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        model(batch)
    finally:
        hook.remove()
    return seen[0].float()


@torch.no_grad()
def fingerprint_columns(model: torch.nn.Module, batch: Any, *, members: Members = "mean"
                        ) -> Dict[str, Tensor]:
    """``{"fingerprint": vectors}``: :func:`molecule_vectors` of the model,
    ``[B, D]``; for an ensemble of K members their mean (``members="mean"``,
    ``[B, D]``) or each member's (``"all"``, ``[B, K, D]``; a single model
    is then K = 1)."""
    if members not in MEMBERS:
        raise ValueError(f"members must be one of {MEMBERS}, got {members!r}")
    models = [m for m in model.members if isinstance(m, GraphTransformer)] \
        if isinstance(model, Ensemble) else [model]   # a kernel member has no readout
    vectors = torch.stack([molecule_vectors(m, batch) for m in models], dim=1)
    return {"fingerprint": vectors.mean(1) if members == "mean" else vectors}


# --------------------------------------------------------------------------- sinks

def _fsync(fh: IO) -> None:
    fh.flush()
    os.fsync(fh.fileno())


def _truncate(path: Path, size: int) -> None:
    """Cut ``path`` back to ``size`` bytes (a resumed run drops what was
    written after the last complete chunk); shorter is a damaged partial."""
    have = path.stat().st_size if path.is_file() else -1
    if have < size:
        raise DataError(f"{path} holds {max(have, 0)} bytes, fewer than the {size} its "
                        f"state.json records: the partial output is damaged; run without "
                        f"--resume to start again")
    with open(path, "r+b") as fh:
        fh.truncate(size)


class CSVSink:
    """The output as CSV: ``row``, the SMILES column, then every output
    column; a column ``[B, D]`` becomes ``name_0 .. name_{D-1}`` (``[B, K,
    D]``: ``name_{k}_{j}``). Floats as pandas writes them (float32 to its
    shortest text). Its data file is ``data.csv``, renamed to the output."""

    FILE = "data.csv"

    def __init__(self, smiles_column: str) -> None:
        self.smiles_column = smiles_column
        self._fh: Optional[IO[bytes]] = None
        self._path: Optional[Path] = None
        self._resumed = False

    def open(self, folder: Path, state: Optional[Dict[str, Any]]) -> None:
        self._path = folder / self.FILE
        if state is not None:
            _truncate(self._path, int(state["sizes"][self.FILE]))
        self._fh = open(self._path, "ab" if state is not None else "wb")
        self._resumed = state is not None

    def append(self, rows: Sequence[int], smiles: Sequence[str],
               columns: Dict[str, Tensor]) -> None:
        assert self._fh is not None
        frame = {"row": np.asarray(rows, dtype=np.int64), self.smiles_column: list(smiles)}
        for name, values in columns.items():
            values = values.detach().cpu().numpy()
            flat = values.reshape(len(values), -1)
            if values.ndim == 1:
                keys = [name]
            else:
                keys = [f"{name}_{'_'.join(map(str, k))}"
                        for k in np.ndindex(*values.shape[1:])]
            for j, key in enumerate(keys):
                if key in frame:  # never "row" or the SMILES column
                    key = f"predicted_{key}"
                frame[key] = flat[:, j]
        if self._resumed:
            self._check_header(list(frame))
        text = pd.DataFrame(frame).to_csv(header=self._fh.tell() == 0, index=False,
                                          lineterminator="\n")
        self._fh.write(text.encode("utf-8"))

    def _check_header(self, keys: List[str]) -> None:
        """A resumed output must go on with the columns it started with (a
        partial output of an older graphformer may lack a column this one
        writes, e.g. an ensemble's ``_std``)."""
        assert self._path is not None
        self._resumed = False
        header = pd.DataFrame(columns=keys).to_csv(index=False, lineterminator="\n").encode()
        with open(self._path, "rb") as fh:
            start = fh.read(len(header))
        if start and start != header:
            had = start.split(b"\n")[0].decode("utf-8", "replace")
            raise DataError(f"cannot resume: the partial output {self._path.parent} has the "
                            f"columns {had}, this run writes {header.decode().strip()} (it "
                            f"was written by another graphformer version); run without "
                            f"--resume to start again")

    def state(self) -> Dict[str, Any]:
        assert self._fh is not None
        _fsync(self._fh)
        return {"sizes": {self.FILE: self._fh.tell()}}

    def finish(self, output: Path) -> None:
        assert self._fh is not None and self._path is not None
        _fsync(self._fh)
        self.close()
        os.replace(self._path, output)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class NPZSink:
    """The output as a NumPy ``.npz`` (uncompressed, as ``np.savez``):
    ``row`` (int64 ``[N]``), ``smiles`` (unicode ``[N]``) and every output
    column as float32 ``[N, ...]``. While running, each array is its own raw
    file in the partial folder (the SMILES one JSON string per line); the
    ``.npz`` is assembled from them at the end, array by array, never whole
    in memory."""

    def __init__(self) -> None:
        self._files: Dict[str, IO[bytes]] = {}
        self._shapes: Optional[Dict[str, List[int]]] = None
        self._folder: Optional[Path] = None

    def _names(self) -> List[str]:
        return ["row.bin", "smiles.jsonl", *(f"{k}.bin" for k in self._shapes or {})]

    def open(self, folder: Path, state: Optional[Dict[str, Any]]) -> None:
        self._folder = folder
        if state is not None and state.get("shapes") is not None:
            self._shapes = state["shapes"]
            for name in self._names():
                _truncate(folder / name, int(state["sizes"][name]))
            self._files = {name: open(folder / name, "ab") for name in self._names()}

    def append(self, rows: Sequence[int], smiles: Sequence[str],
               columns: Dict[str, Tensor]) -> None:
        assert self._folder is not None
        shapes = {k: list(v.shape[1:]) for k, v in columns.items()}
        if self._shapes is None:
            self._shapes = shapes
            self._files = {name: open(self._folder / name, "wb") for name in self._names()}
        elif shapes != self._shapes:
            raise ValueError(f"output columns of shapes {shapes} after {self._shapes}")
        self._files["row.bin"].write(np.asarray(rows, dtype="<i8").tobytes())
        self._files["smiles.jsonl"].write("".join(json.dumps(s) + "\n"
                                                  for s in smiles).encode())
        for name, values in columns.items():
            data = values.detach().cpu().numpy().astype("<f4", copy=False)
            self._files[f"{name}.bin"].write(np.ascontiguousarray(data).tobytes())

    def state(self) -> Dict[str, Any]:
        for fh in self._files.values():
            _fsync(fh)
        return {"shapes": self._shapes,
                "sizes": {name: fh.tell() for name, fh in self._files.items()}}

    def finish(self, output: Path) -> None:
        import zipfile

        assert self._folder is not None and self._shapes is not None
        for fh in self._files.values():
            _fsync(fh)
        self.close()
        folder = self._folder
        n = (folder / "row.bin").stat().st_size // 8
        with open(folder / "smiles.jsonl", "rb") as fh:
            width = max((len(json.loads(line)) for line in fh), default=0)
        arrays: List[Tuple[str, str, Tuple[int, ...]]] = [("row", "<i8", (n,)),
                                                          ("smiles", f"<U{max(width, 1)}", (n,))]
        arrays += [(k, "<f4", (n, *shape)) for k, shape in self._shapes.items()]
        with atomic_write(output, "wb") as out, \
                zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name, dtype, shape in arrays:
                info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_TIME)  # same bytes each run
                with archive.open(info, "w", force_zip64=True) as member:
                    np.lib.format.write_array_header_1_0(member, {
                        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                        "fortran_order": False, "shape": shape})
                    if name == "smiles":
                        self._copy_smiles(folder / "smiles.jsonl", member, dtype)
                    else:
                        with open(folder / ("row.bin" if name == "row" else f"{name}.bin"),
                                  "rb") as src:
                            shutil.copyfileobj(src, member, 1 << 22)

    @staticmethod
    def _copy_smiles(path: Path, member: IO[bytes], dtype: str, block: int = 65536) -> None:
        with open(path, "rb") as fh:
            lines: List[str] = []
            for line in fh:
                lines.append(json.loads(line))
                if len(lines) == block:
                    member.write(np.asarray(lines, dtype=dtype).tobytes())
                    lines = []
            if lines:
                member.write(np.asarray(lines, dtype=dtype).tobytes())

    def close(self) -> None:
        for fh in self._files.values():
            fh.close()
        self._files = {}


# --------------------------------------------------------------------------- partial output

def input_identity(path: Path) -> Dict[str, Any]:
    """What identifies an input file for ``--resume``: its size and the
    SHA-256 of its first and last :data:`IDENTITY_BYTES` (a copy or a
    ``touch`` is the same input; an edit at either end or a change of size
    is another)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = hashlib.sha256(fh.read(IDENTITY_BYTES)).hexdigest()
        fh.seek(max(size - IDENTITY_BYTES, 0))
        tail = hashlib.sha256(fh.read(IDENTITY_BYTES)).hexdigest()
    return {"size": size, "head_sha256": head, "tail_sha256": tail}


@dataclass(frozen=True)
class Identity:
    """What a partial output depends on: the ``command``, the checkpoint's
    SHA-256, the input's :func:`input_identity`, and the flags that change
    the output (``{"--chunk-size": 10000, ...}``)."""
    command: str
    checkpoint_sha256: str
    input: Dict[str, Any]
    settings: Dict[str, Any]

    def __post_init__(self) -> None:
        if len(self.checkpoint_sha256) != 64:
            raise ValueError(f"checkpoint_sha256 is a SHA-256 in hex, got "
                             f"{self.checkpoint_sha256!r}")

    def to_dict(self) -> Dict[str, Any]:
        return {"command": self.command, "checkpoint_sha256": self.checkpoint_sha256,
                "input": self.input, "settings": self.settings}


@dataclass
class Done:
    """How far a partial output has come: chunks, where the input stands
    and the SHA-256 of its bytes before that, and the rows read, written
    (``molecules``) and skipped."""
    chunks: int = 0
    position: Optional[Position] = None
    rows: int = 0
    molecules: int = 0
    skipped: int = 0
    digest: str = ""

    def __post_init__(self) -> None:
        if min(self.chunks, self.rows, self.molecules, self.skipped) < 0 or \
                self.molecules + self.skipped != self.rows:
            raise ValueError(f"a Done counts rows = molecules + skipped, all >= 0, got {self}")

    def to_dict(self) -> Dict[str, Any]:
        pos = self.position
        return {"chunks": self.chunks, "offset": pos.offset if pos else None,
                "line": pos.line if pos else None, "rows": self.rows,
                "molecules": self.molecules, "skipped": self.skipped, "sha256": self.digest}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Done":
        pos = Position(int(d["offset"]), int(d["line"])) if d["offset"] is not None else None
        return cls(int(d["chunks"]), pos, int(d["rows"]), int(d["molecules"]),
                   int(d["skipped"]), str(d["sha256"]))


def partial_folder(output: Path) -> Path:
    """Where the partial output of ``output`` is kept: ``.<name>.partial``
    beside it."""
    return output.with_name(f".{output.name}.partial")


class PartialOutput:
    """The partial output of one run (see the module docstring): :meth:`open`
    (fresh, or resumed after its checks), :meth:`commit` after every chunk,
    :meth:`finish` at the end; :meth:`close` releases the lock."""

    STATE = "state.json"
    LOCK = "lock"

    def __init__(self, output: Path, identity: Identity, sink: Any, report: TextIO) -> None:
        self.output, self.identity, self.sink, self.report = output, identity, sink, report
        self.folder = partial_folder(output)
        self._lock: Optional[int] = None

    def open(self, resume: bool) -> Done:
        """Lock the folder, and return where to start: a resumed run's
        :class:`Done`, else a fresh one (an earlier partial output removed)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        try:
            return self._open(resume)
        except BaseException:
            self.close()
            raise

    def _open(self, resume: bool) -> Done:
        state_path = self.folder / self.STATE
        saved = None
        if state_path.is_file():
            try:
                saved = self._read_state(state_path)
            except DataError:
                if resume:
                    raise
        if resume and saved is not None:
            self._check(saved)
            done = Done.from_dict(saved["done"])
            self.sink.open(self.folder, saved["sink"] if done.chunks else None)
            return done
        if resume:
            print(f"note: no partial output of {self.output} to resume: starting from the "
                  f"first row", file=self.report)
        elif saved is not None and saved.get("done", {}).get("chunks"):
            print(f"note: discarding the partial output of an earlier run "
                  f"({saved['done']['rows']} rows read; --resume would have continued it)",
                  file=self.report)
        for entry in self.folder.iterdir():
            if entry.name != self.LOCK:
                entry.unlink() if not entry.is_dir() else shutil.rmtree(entry)
        done = Done()
        self.sink.open(self.folder, None)
        self._write_state(done, None)
        return done

    def commit(self, done: Done) -> None:
        """Record ``done`` after its chunk's data are on disk."""
        self._write_state(done, self.sink.state())

    def finish(self) -> None:
        """Make the data the output (one rename or one atomic write) and
        remove the folder."""
        self.sink.finish(self.output)
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def discard(self) -> None:
        """Remove the partial output (nothing worth resuming)."""
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def close(self) -> None:
        self.sink.close()
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    # -- pieces --
    def _take_lock(self) -> None:
        if fcntl is None:
            return
        fd = os.open(self.folder / self.LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise UsageError(f"{self.output} is being written by another graphformer run "
                             f"(its partial output {self.folder} is locked); wait for it to "
                             f"end, or choose another -o") from None
        self._lock = fd

    def _read_state(self, path: Path) -> Dict[str, Any]:
        try:
            saved = json.loads(path.read_text())
            if saved.get("format") != PARTIAL_FORMAT:
                raise ValueError("not a partial-output state")
            Done.from_dict(saved["done"])
            return saved
        except (ValueError, KeyError, TypeError) as err:
            raise DataError(f"{path} is damaged ({err}): run without --resume to start "
                            f"again") from None

    def _write_state(self, done: Done, sink_state: Optional[Dict[str, Any]]) -> None:
        write_text(self.folder / self.STATE, json.dumps({
            "format": PARTIAL_FORMAT, "version": PARTIAL_VERSION,
            "identity": self.identity.to_dict(), "done": done.to_dict(),
            "sink": sink_state}, indent=1) + "\n")

    def _check(self, saved: Dict[str, Any]) -> None:
        """Refuse to resume a partial output of other settings, another
        checkpoint or another input, naming what differs."""
        then, now = saved.get("identity", {}), self.identity.to_dict()
        where = f"cannot resume {self.output}"
        again = "run without --resume to start again"
        if then.get("command") != now["command"]:
            raise UsageError(f"{where}: its partial output was written by 'graphformer "
                             f"{then.get('command')}', not '{now['command']}'; {again}")
        for flag, value in now["settings"].items():
            old = then.get("settings", {}).get(flag)
            if old != value:
                def given(v: Any) -> str:
                    return f"{flag} {v}" if v is not None else f"no {flag}"
                fix = f"resume with {flag} {old}" if old is not None else \
                    f"resume without {flag}"
                raise UsageError(f"{where}: {given(value)} differs from the partial output's "
                                 f"{given(old)}; {fix}, or {again}")
        if then.get("checkpoint_sha256") != now["checkpoint_sha256"]:
            raise DataError(f"{where}: the checkpoint changed since its partial output was "
                            f"started (SHA-256 {str(then.get('checkpoint_sha256'))[:12]}... "
                            f"then, {now['checkpoint_sha256'][:12]}... now); {again}")
        if then.get("input") != now["input"]:
            was, now_in = then.get("input") or {}, now["input"]
            what = f"size differs: {was.get('size')} bytes then, {now_in['size']} now" \
                if was.get("size") != now_in["size"] else "first or last MiB differs"
            raise DataError(f"{where}: the input changed since its partial output was started "
                            f"(its {what}); {again}")


# --------------------------------------------------------------------------- progress

def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    """A progress line on ``stream``: molecules done, molecules per second
    (this run's), how far into the file, and the time left (from the bytes
    read: the file's molecules are not counted ahead). On a terminal it is
    rewritten in place every half second; otherwise a line every
    ``every`` seconds (a log file stays short)."""

    def __init__(self, what: str, total_bytes: int, stream: Optional[TextIO],
                 start_bytes: int = 0, start_molecules: int = 0, every: float = 30.0) -> None:
        self.what, self.total, self.stream = what, max(total_bytes, 1), stream
        self.start_bytes, self.start_molecules = start_bytes, start_molecules
        self.tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())
        self.every = 0.5 if self.tty else every
        self.started = self.last = time.perf_counter()
        self.molecules, self.bytes = start_molecules, start_bytes

    def line(self) -> str:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        rate = (self.molecules - self.start_molecules) / elapsed
        read = self.bytes - self.start_bytes
        left = (self.total - self.bytes) * elapsed / read if read > 0 else float("nan")
        eta = _duration(left) if left == left else "?"
        return (f"{self.what}: {self.molecules:,} molecules, {rate:,.0f} mol/s, "
                f"{100 * self.bytes / self.total:.1f}% of the file, ETA {eta}")

    def update(self, molecules: int, position: int) -> None:
        self.molecules, self.bytes = molecules, position
        now = time.perf_counter()
        if self.stream is None or now - self.last < self.every:
            return
        self.last = now
        if self.tty:
            self.stream.write("\r" + self.line() + "\033[K")
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.stream is not None and self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()


# --------------------------------------------------------------------------- the run

@dataclass(frozen=True)
class ScreenInput:
    """The input of a screening run: the CSV file, its SMILES column, the
    feature columns the model reads, how molecules become graphs, and how
    many rows make a chunk and molecules a batch."""
    path: Path
    featuriser: Featuriser
    smiles_column: str = "smiles"
    feature_columns: Tuple[str, ...] = ()
    chunk_size: int = 10_000
    batch_size: int = 128

    def __post_init__(self) -> None:
        if self.chunk_size < 1 or self.batch_size < 1:
            raise ValueError(f"chunk_size and batch_size must be >= 1, got {self.chunk_size}, "
                             f"{self.batch_size}")

    def chunks(self, done: Done) -> CSVChunks:
        return CSVChunks(self.path, self.smiles_column, self.feature_columns, self.chunk_size,
                         start=done.position, first_index=done.chunks)


@dataclass
class ScreenResult:
    """What a run wrote: rows read, molecules written and rows skipped over
    the whole output, and how many of the rows an earlier run had written
    (``resumed``)."""
    rows: int
    molecules: int
    skipped: int
    resumed: int = 0


def _invalid_error(path: Path, invalid: List[Tuple[int, str]], done: Done) -> DataError:
    shown = "\n".join(f"  {message}" for _, message in invalid[:SHOWN_INVALID])
    more = f"\n  ... and {len(invalid) - SHOWN_INVALID} more in this chunk" \
        if len(invalid) > SHOWN_INVALID else ""
    kept = (f"; the {done.rows} rows before them are kept in the partial output: "
            f"--skip-invalid --resume continues past them") if done.chunks else ""
    rows = ", ".join(str(r) for r, _ in invalid[:SHOWN_INVALID])
    return DataError(f"invalid SMILES in {path}, row(s) {rows}{' ...' if more else ''} (use "
                     f"--skip-invalid to skip them{kept}):\n{shown}{more}")


def screen(source: ScreenInput, columns: Columns, partial: PartialOutput, *,
           resume: bool = False, skip_invalid: bool = False, workers: int = 0,
           report: TextIO = sys.stderr, progress: Optional[str] = None) -> ScreenResult:
    """Run ``columns`` over every molecule of ``source`` and write the
    output through ``partial`` (see the module docstring): ``resume``
    continues its partial output, ``skip_invalid`` leaves invalid rows out
    (each reported on ``report``), ``workers`` processes featurise, and
    ``progress`` names a progress line on ``report`` (None: none).

    Raises:
        DataError: an invalid SMILES without ``skip_invalid`` (its chunk's
            rows named), a header without rows, no valid molecule, a bad
            record or feature value (file and row named), a changed input
            or checkpoint on resume.
        UsageError: a missing column, a resume with other flags, an output
            another run is writing.
    """
    done = partial.open(resume)
    resumed = done.molecules
    try:
        reader = source.chunks(done)
    except BaseException:
        partial.close()
        if not done.chunks:
            partial.discard()
        raise
    if done.position is not None and reader.start_digest != done.digest:
        reader.close()
        partial.close()
        raise DataError(f"cannot resume {partial.output}: the first {done.rows} rows of "
                        f"{source.path} (its first {done.position.offset} bytes) changed since "
                        f"they were written; run without --resume to start again")
    try:
        meter = Progress(progress or "", reader.size, report if progress else None,
                         start_bytes=done.position.offset if done.position else 0,
                         start_molecules=done.molecules)
        with contextlib.closing(reader), contextlib.closing(
                featurise(pieces(reader, source.batch_size), source.featuriser, workers)
        ) as results:
            _consume(results, columns, partial, done, skip_invalid, report, meter, source.path)
        meter.close()
        if done.rows == 0:
            raise DataError(f"{source.path} has a header but no rows")
        if done.molecules == 0:
            raise DataError(f"no valid SMILES in {source.path}: nothing to write")
        partial.finish()
    except BaseException as err:
        partial.close()
        if not done.chunks or (isinstance(err, DataError) and done.molecules == 0):
            partial.discard()
        elif not isinstance(err, DataError):
            print(f"note: the first {done.rows} rows are kept in the partial output "
                  f"{partial.folder}: run the same command with --resume to continue",
                  file=report)
        elif "invalid SMILES" not in str(err):
            print(f"note: the first {done.rows} rows are kept in the partial output "
                  f"{partial.folder} (--resume continues after them if they are left as "
                  f"they are; a run without --resume discards them)", file=report)
        raise
    return ScreenResult(done.rows, done.molecules, done.skipped, resumed)


def _consume(results: Iterator[Featurised], columns: Columns, partial: PartialOutput,
             done: Done, skip_invalid: bool, report: TextIO, meter: Progress,
             path: Path) -> None:
    """The main loop of :func:`screen`: predict and append piece by piece,
    commit chunk by chunk (``done`` is updated in place)."""
    invalid: List[Tuple[int, str]] = []
    rows = molecules = 0
    for item in results:
        piece = item.piece
        invalid.extend(item.invalid)
        rows += piece.stop - piece.first
        if item.batch is not None and (skip_invalid or not invalid):
            partial.sink.append(item.rows, item.smiles, columns(item.batch))
            molecules += len(item.rows)
        chunk = piece.chunk
        span = chunk.end.offset - chunk.start.offset
        meter.update(done.molecules + molecules,
                     chunk.start.offset + span * piece.stop // max(len(chunk.rows), 1))
        if not piece.last:
            continue
        if invalid and not skip_invalid:
            raise _invalid_error(path, invalid, done)
        for _, message in invalid:
            print(f"skipped: {message}", file=report)
        done.chunks, done.position, done.digest = chunk.index + 1, chunk.end, chunk.digest
        done.rows += rows
        done.molecules += molecules
        done.skipped += len(invalid)
        partial.commit(done)
        invalid, rows, molecules = [], 0, 0
        release_free_memory()   # else glibc's heap creeps up chunk after chunk


__all__ = ["prediction_columns", "SpreadColumns", "molecule_vectors", "fingerprint_columns",
           "CSVSink", "NPZSink", "input_identity", "Identity", "Done", "PartialOutput",
           "partial_folder", "Progress", "ScreenInput", "ScreenResult", "screen", "MEMBERS"]
