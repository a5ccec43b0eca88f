"""The run directory: what it holds, who may write it, and what a resumed
run may change.

- **One writer.** A run holds an exclusive ``fcntl.flock`` on
  ``RUN_DIR/.graphformer.lock`` while it runs (train, each ensemble member,
  pretrain; under ``torchrun`` rank 0, the rank that writes); the file names
  its process (PID, host). A second run on the same directory is refused
  with a :class:`UsageError` naming that process. The lock goes with the
  process: a crash or a kill releases it.
- **A manifest.** A run lists what graphformer writes for it in
  ``RUN_DIR/.graphformer-run.json`` (:data:`MANIFEST`): the run files, the
  TensorBoard folder, an ensemble's ``member-k`` runs. ``--overwrite``
  removes only those (a member run by its own manifest), and only once the
  new run's config and data have been checked (:meth:`RunDirectory.start`):
  a new run that fails its checks leaves the old run as it was. A run of an
  older graphformer (no manifest) is recognised by a graphformer checkpoint
  or a ``config.json`` with graphformer's sections (:func:`looks_like_run`);
  then its :data:`RUN_FILES` are its files.
- **Nobody else's files.** A file named like a run file (``config.json``,
  ...) that graphformer did not write is never written over or removed: a
  new run there is refused, with or without ``--overwrite``.
- Stale temporaries of a killed write (``.<file>.<random>.tmp``) are removed
  whenever a run starts or resumes (an ensemble's top-level ones too).
- A resumed run keeps its saved settings: only :data:`RUNTIME_KEYS` (where it
  runs, not what it computes) may differ.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple, TypeVar

import torch

from .._files import remove_stale_temporaries, write_text
from ..errors import UsageError
from .checkpoint import FORMAT

try:
    import fcntl
except ImportError:  # not on POSIX: runs are not locked
    fcntl = None  # type: ignore[assignment]

CHECKPOINTS = ("last.pt", "best.pt")
RUN_FILES = ("config.json", "metrics.csv", "metrics.json", *CHECKPOINTS, "summary.json",
             "learning_curve.png")
TENSORBOARD = "tensorboard"
#: the lock file of a run directory (held by the process that writes the run)
LOCK = ".graphformer.lock"
#: the manifest of a run directory: what graphformer wrote there
MANIFEST = ".graphformer-run.json"
MANIFEST_FORMAT = "graphformer-run"
#: the sections of a graphformer config.json (pretrain's have ``objective``)
CONFIG_SECTIONS = {"data", "model", "objective", "train"}
MEMBER = re.compile(r"member-\d+")
# (section, key) that a resumed run may change: where it runs, not what it computes.
RUNTIME_KEYS = {("train", "device"), ("train", "threads"), ("train", "attention_backend"),
                ("train", "compile"), ("train", "member_processes"), ("data", "root")}
# Set from the data set (or, the head's output, from train.loss), not by the
# user: not compared when resuming.
DERIVED_KEYS = {("model", "num_tasks"), ("model", "task"), ("model", "features"),
                ("model", "output")}
#: a run config (molecule, node or link run)
C = TypeVar("C")


def read_manifest(run_dir: Path) -> Optional[List[str]]:
    """The names the manifest of ``run_dir`` lists (plain names inside it),
    or ``None`` without a readable manifest."""
    try:
        manifest = json.loads((run_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if manifest.get("format") != MANIFEST_FORMAT or not isinstance(files, list):
        return None
    return [n for n in files if isinstance(n, str) and n not in ("", ".", "..", LOCK, MANIFEST)
            and "/" not in n and os.sep not in n]


def _is_checkpoint(path: Path) -> bool:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - not a (readable) torch file
        return False
    return isinstance(state, dict) and state.get("format") == FORMAT


def _is_config(path: Path) -> bool:
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(saved, dict) and set(saved) <= CONFIG_SECTIONS and \
        all(isinstance(saved.get(section), dict) for section in ("model", "train"))


def looks_like_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a graphformer run: a manifest, a graphformer
    checkpoint, or a ``config.json`` of graphformer's sections (a ``model``
    and a ``train`` section, nothing but data / model / objective / train)."""
    return read_manifest(run_dir) is not None or \
        any((run_dir / n).is_file() and _is_checkpoint(run_dir / n) for n in CHECKPOINTS) or \
        _is_config(run_dir / "config.json")


def graphformer_files(run_dir: Path) -> List[str]:
    """What graphformer wrote in ``run_dir`` and is still there: what its
    manifest lists; for a run of an older graphformer (no manifest,
    :func:`looks_like_run`), its :data:`RUN_FILES`, TensorBoard folder and
    ``member-k`` runs; nothing for a folder that holds no run."""
    if not run_dir.is_dir():
        return []
    listed = read_manifest(run_dir)
    if listed is None:
        if not looks_like_run(run_dir):
            return []
        listed = [*RUN_FILES, TENSORBOARD,
                  *sorted(p.name for p in run_dir.iterdir()
                          if MEMBER.fullmatch(p.name) and p.is_dir() and looks_like_run(p))]
    return [n for n in listed if (run_dir / n).exists() or (run_dir / n).is_symlink()]


def _remove(path: Path) -> None:
    """Remove what graphformer wrote at ``path``: a member run by its own
    manifest (then its folder, when nothing else is left in it), the
    TensorBoard folder, a file."""
    if MEMBER.fullmatch(path.name) and path.is_dir() and not path.is_symlink():
        with RunDirectory(path, resume=False, overwrite=True) as member:
            member.remove_run()
            (path / LOCK).unlink(missing_ok=True)
            try:
                path.rmdir()
            except OSError:  # the user's own files are left, and their folder
                pass
    elif path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


class RunDirectory:
    """The run directory of one run, as its process sees it: ``with
    RunDirectory(...)`` checks it at once (:meth:`check`) and releases its
    lock at the end; :meth:`start`, called when the run's config and data
    have been checked, removes an overwritten run and writes the manifest.
    Only the ``writer`` (rank 0 under ``torchrun``) locks, removes or writes:
    another rank could see the files rank 0 has just begun to write.
    ``ensemble``: the run of an ensemble (resumed from its ``config.json``,
    not from a ``last.pt``)."""

    def __init__(self, path: Path, resume: bool, overwrite: bool, writer: bool = True,
                 ensemble: bool = False) -> None:
        self.path, self.resume, self.overwrite = Path(path), resume, overwrite
        self.writer, self.ensemble = writer, ensemble
        self._fd: Optional[int] = None

    def __enter__(self) -> "RunDirectory":
        try:
            self.check()
        except BaseException:
            self.release()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    # -- the lock --
    def lock(self) -> None:
        """Take the directory's lock (creating the directory), or refuse
        naming the process that holds it."""
        if self._fd is not None or not self.writer or fcntl is None:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip()
            os.close(fd)
            raise UsageError(f"run directory {self.path} is in use by another graphformer run "
                             f"({holder or 'a process that has just started'}); wait for it to "
                             f"end, or choose another --run-dir") from None
        me = (f"PID {os.getpid()} on host {socket.gethostname()}, since "
              f"{time.strftime('%Y-%m-%d %H:%M:%S')}").encode()
        os.pwrite(fd, me, 0)
        os.ftruncate(fd, len(me))
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the flock
            self._fd = None

    # -- the checks --
    def check(self) -> None:
        """The checks that need no data: the path's kind, what a resumed run
        needs, and for a new run an old run (refused without ``overwrite``)
        or files graphformer did not write (always refused). Locks the
        directory when it exists, and removes stale temporaries."""
        run_dir = self.path
        if run_dir.exists() and not run_dir.is_dir():
            raise UsageError(f"run directory {run_dir} is a file, not a directory; give "
                             f"--run-dir a new or existing directory")
        if self.resume:
            if self.overwrite:
                raise UsageError("--resume continues a run and --overwrite replaces it: give one")
            if not run_dir.is_dir():
                raise UsageError(f"cannot resume {run_dir}: no such directory")
            self.lock()
            if not self.ensemble and not (run_dir / "last.pt").is_file():
                raise UsageError(f"cannot resume {run_dir}: it holds no last.pt (not a run, or "
                                 f"one killed before its first epoch ended: start it anew with "
                                 f"--run-dir {run_dir} --overwrite)")
        elif self.writer and run_dir.is_dir():
            self._refuse_foreign(graphformer_files(run_dir))  # before the lock: no trace left
            self.lock()
            self._old_run()
        if self.writer and run_dir.is_dir():
            remove_stale_temporaries(run_dir, (*RUN_FILES, MANIFEST))

    def _old_run(self) -> List[str]:
        """What a new run would replace; refuses files graphformer did not
        write, and an old run without ``overwrite``."""
        run_dir = self.path
        old = graphformer_files(run_dir)
        self._refuse_foreign(old)
        if old and not self.overwrite:
            members = [n for n in old if MEMBER.fullmatch(n)]
            files = [n for n in old if n not in members]
            what = f"an ensemble's members ({', '.join(members)})" + \
                (f" and its files ({', '.join(files)})" if files else "") if members else \
                f"a run ({', '.join(old)})"
            raise UsageError(f"run directory {run_dir} already holds {what}; pass --overwrite "
                             f"to replace it, --resume {run_dir} to continue it, or choose "
                             f"another --run-dir")
        return old

    def _refuse_foreign(self, old: List[str]) -> None:
        """Refuse run files, or a TensorBoard folder, in the directory that
        graphformer did not write (not among ``old``): the run would list them
        as its own, and a later ``--overwrite`` remove them."""
        run_dir = self.path
        foreign = [n for n in (*RUN_FILES, TENSORBOARD)
                   if ((run_dir / n).exists() or (run_dir / n).is_symlink()) and n not in old]
        if foreign:
            them = "it" if len(foreign) == 1 else "them"
            raise UsageError(
                f"run directory {run_dir} holds {', '.join(foreign)}, which graphformer did not "
                f"write (no graphformer run is recorded there): a run would write over {them}, "
                f"and --overwrite removes only what graphformer wrote; move {them} away or "
                f"choose another --run-dir")

    # -- the start --
    def start(self, members: int = 0) -> None:
        """Called once the run's config and data have been checked, before
        its first file: lock (a new directory is created now), remove the
        overwritten run's files (checked again, under the lock), and write
        the manifest: the run files, the TensorBoard folder and ``members``
        member runs."""
        if not self.writer:
            return
        self.lock()
        listed = [*RUN_FILES, TENSORBOARD, *(f"member-{k}" for k in range(members))]
        if self.resume:
            known = read_manifest(self.path)
            if known is not None and set(listed) <= set(known):
                return
            listed = [*(known or []), *(n for n in listed if n not in (known or []))]
        else:
            self.remove_run()
        write_text(self.path / MANIFEST, json.dumps(
            {"format": MANIFEST_FORMAT, "version": 1, "files": listed}, indent=2) + "\n")

    def remove_run(self) -> None:
        """Remove the old run's files (after :meth:`_old_run`'s checks) and
        its manifest."""
        for name in self._old_run():
            _remove(self.path / name)
        (self.path / MANIFEST).unlink(missing_ok=True)


def differences(saved: Any, given: Any, exempt: Set[Tuple[str, str]]
                ) -> List[Tuple[str, object, object]]:
    """``(section.key, saved value, given value)`` for every setting of the
    configs' sections (the dicts of their ``to_dict()``) that a resumed run
    may not change (not in ``exempt``) but ``given`` does."""
    a, b = saved.to_dict(), given.to_dict()
    out = []
    for section, values in a.items():
        if not isinstance(values, dict):      # e.g. a node run's "kind"
            continue
        for key, value in values.items():
            if (section, key) not in exempt and b[section].get(key) != value:
                out.append((f"{section}.{key}", value, b[section].get(key)))
    return out


def resume_config(saved: C, given: Optional[C],
                  runtime: Set[Tuple[str, str]] = RUNTIME_KEYS,
                  derived: Set[Tuple[str, str]] = DERIVED_KEYS) -> C:
    """The config of a resumed run: the saved one, with the ``runtime``
    settings of ``given`` (when given). Any other difference, but for the
    ``derived`` settings, is refused by name: the resumed run must compute
    what the interrupted one would have. The defaults are a molecule run's
    sets; node and link runs pass their own."""
    if given is None:
        return saved
    diff = differences(saved, given, runtime | derived)
    if diff:
        listed = "; ".join(f"{k}: saved {a!r}, given {b!r}" for k, a, b in diff)
        raise UsageError(f"a resumed run keeps its saved settings, but these differ: {listed}; "
                         f"start a new run to change them")
    values: Dict[str, Dict[str, object]] = {}
    for section, key in runtime:
        values.setdefault(section, {})[key] = getattr(getattr(given, section), key)
    return replace(saved, **{section: replace(getattr(saved, section), **settings)
                             for section, settings in values.items()})
