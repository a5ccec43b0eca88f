"""The run directory: what it holds, when it may be written, and what a
resumed run may change.

- A new run refuses a directory that already holds a run (any of
  :data:`RUN_FILES`) unless told to overwrite it; overwriting removes the old
  run's files first (and only those), so no mix of two runs is left.
- Stale temporaries of a killed write (``.<file>.<random>.tmp``) are removed
  whenever a run starts or resumes.
- A resumed run keeps its saved settings: only :data:`RUNTIME_KEYS` (where it
  runs, not what it computes) may differ.
"""
from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import List, Optional, Tuple

from .._files import remove_stale_temporaries
from ..errors import UsageError
from .config import RunConfig

CHECKPOINTS = ("last.pt", "best.pt")
RUN_FILES = ("config.json", "metrics.csv", "metrics.json", *CHECKPOINTS, "summary.json",
             "learning_curve.png")
TENSORBOARD = "tensorboard"
# (section, key) that a resumed run may change: where it runs, not what it computes.
RUNTIME_KEYS = {("train", "device"), ("train", "threads"), ("data", "root")}
# Set from the data set, not by the user: not compared when resuming.
DERIVED_KEYS = {("model", "num_tasks"), ("model", "task"), ("model", "features"),
                ("model", "mol_features"), ("model", "mol_feature_names")}  # from the data


def existing_run_files(run_dir: Path) -> List[str]:
    """The run files (and the TensorBoard folder) in ``run_dir``."""
    names = [n for n in RUN_FILES if (run_dir / n).exists()]
    return names + ([TENSORBOARD] if (run_dir / TENSORBOARD).is_dir() else [])


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool, writer: bool = True) -> None:
    """Check ``run_dir`` for a new run (``resume=False``) or a resumed one, and
    remove what must go: stale temporaries always, the old run's files when
    ``overwrite``. Raises :class:`UsageError` naming the directory and the way
    out (``--overwrite`` or ``--resume``). Only the process that writes
    (``writer``; rank 0 under ``torchrun``) checks for an old run and removes
    files: another rank could see the files rank 0 has just begun to write."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"run directory {run_dir} is a file, not a directory; give "
                         f"--run-dir a new or existing directory")
    if resume:
        if overwrite:
            raise UsageError("--resume continues a run and --overwrite replaces it: give one")
        if not run_dir.is_dir():
            raise UsageError(f"cannot resume {run_dir}: no such directory")
        if not (run_dir / "last.pt").is_file():
            raise UsageError(f"cannot resume {run_dir}: it holds no last.pt (not a run, or "
                             f"one killed before its first epoch ended: start it anew with "
                             f"--run-dir {run_dir} --overwrite)")
    else:
        old = existing_run_files(run_dir) if writer and run_dir.is_dir() else []
        if old and not overwrite:
            raise UsageError(f"run directory {run_dir} already holds a run ({', '.join(old)}); "
                             f"pass --overwrite to replace it, --resume {run_dir} to continue "
                             f"it, or choose another --run-dir")
        for name in old:
            path = run_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    if writer and run_dir.is_dir():
        remove_stale_temporaries(run_dir, RUN_FILES)


def differences(saved: RunConfig, given: RunConfig) -> List[Tuple[str, object, object]]:
    """``(section.key, saved value, given value)`` for every setting that a
    resumed run may not change but ``given`` does."""
    a, b = saved.to_dict(), given.to_dict()
    out = []
    for section, values in a.items():
        for key, value in values.items():
            if (section, key) in RUNTIME_KEYS | DERIVED_KEYS:
                continue
            if b[section][key] != value:
                out.append((f"{section}.{key}", value, b[section][key]))
    return out


def resume_config(saved: RunConfig, given: Optional[RunConfig]) -> RunConfig:
    """The config of a resumed run: the saved one, with the runtime settings
    of ``given`` (when given). Any other difference is refused by name: the
    resumed run must compute what the interrupted one would have."""
    if given is None:
        return saved
    diff = differences(saved, given)
    if diff:
        listed = "; ".join(f"{k}: saved {a!r}, given {b!r}" for k, a, b in diff)
        raise UsageError(f"a resumed run keeps its saved settings, but these differ: {listed}; "
                         f"start a new run to change them")
    return replace(saved, train=replace(saved.train, device=given.train.device,
                                        threads=given.train.threads),
                   data=replace(saved.data, root=given.data.root))
