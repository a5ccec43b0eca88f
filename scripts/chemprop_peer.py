"""chemprop as a benchmark peer: its defaults, run on graphformer's own split.

chemprop is never a dependency of graphformer; install it beside it (its own
virtual environment is fine, as long as ``chemprop`` is on ``PATH``):
``pip install chemprop``. The scripts that compare with it
(``bench_training.py``, ``compare_chemprop.py``) call :func:`run_chemprop`,
which

- writes the train / valid / test parts of a prepared split as three CSV files
  (SMILES and targets, in the split's order);
- runs ``chemprop train`` on them with its defaults (D-MPNN, 50 epochs; the
  checkpoint with the best validation loss is the one tested);
- reads chemprop's test predictions back and computes the test RMSE itself,
  so that both tools are scored by the same function on the same molecules
  (regression sets only);
- predicts the validation part with that checkpoint (``chemprop predict``,
  not counted in the run's seconds) and scores it the same way, so that the
  tools can be compared on the scores a default is chosen by.
"""
from __future__ import annotations

import csv
import math
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence


def write_split_files(prepared: Any, directory: Path) -> Dict[str, Path]:
    """``train.csv``, ``valid.csv``, ``test.csv`` of a prepared split (columns
    ``smiles`` and ``y0 .. y{T-1}``; a missing target is an empty cell)."""
    dataset = prepared.bench.dataset
    paths = {}
    for part in ("train", "valid", "test"):
        paths[part] = directory / f"{part}.csv"
        with open(paths[part], "w", newline="") as fh:
            writer = csv.writer(fh)
            rows = [dataset[i] for i in prepared.split[part].tolist()]
            tasks = rows[0].y.numel() if rows else 1
            writer.writerow(["smiles"] + [f"y{t}" for t in range(tasks)])
            for g in rows:
                values = g.y.view(-1).tolist()
                writer.writerow([g.smiles] + ["" if math.isnan(v) else repr(v) for v in values])
    return paths


def read_targets(path: Path) -> List[List[float]]:
    """The ``y*`` columns of a file from :func:`write_split_files` (NaN where empty)."""
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        next(reader)
        return [[float(v) if v else math.nan for v in row[1:]] for row in reader]


def test_predictions(out_dir: Path) -> Path:
    """chemprop's test-prediction file under its output directory (2.x writes
    ``model_0/test_predictions.csv``)."""
    found = sorted(out_dir.rglob("test_predictions.csv"))
    if not found:
        raise RuntimeError(f"chemprop wrote no test_predictions.csv under {out_dir}")
    return found[0]


def rmse_of(predictions: Path, truth: Path) -> float:
    """Test RMSE of chemprop's predictions against the split file, over every
    labelled entry; the two files must list the same SMILES in the same order."""
    with open(predictions, newline="") as fh:
        rows = list(csv.reader(fh))
    with open(truth, newline="") as fh:
        smiles = [row[0] for row in list(csv.reader(fh))[1:]]
    pred_rows = rows[1:]
    if [r[0] for r in pred_rows] != smiles:
        raise RuntimeError(f"{predictions} does not list the molecules of {truth} in order")
    targets = read_targets(truth)
    errors = [(float(p) - t) ** 2 for row, ts in zip(pred_rows, targets)
              for p, t in zip(row[1:1 + len(ts)], ts) if not math.isnan(t)]
    if not errors:
        raise RuntimeError(f"{truth} has no labelled entry")
    return math.sqrt(sum(errors) / len(errors))


def run_chemprop(prepared: Any, seed: int = 0, epochs: Optional[int] = None,
                 extra: Sequence[str] = (), executable: Optional[str] = None
                 ) -> Optional[Dict[str, Any]]:
    """chemprop's defaults on ``prepared``'s split: ``{"seconds", "test_rmse",
    "valid_rmse", "epochs", "command"}``, the seconds of ``chemprop train``
    as a whole (its start-up included), or None when chemprop is not
    installed. A failed run raises RuntimeError with chemprop's last output."""
    exe = executable or shutil.which("chemprop")
    if exe is None:
        return None
    if prepared.bench.task != "regression":
        raise ValueError("run_chemprop scores regression sets only")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        paths = write_split_files(prepared, tmp_path)
        cmd = [exe, "train", "--data-path", str(paths["train"]), str(paths["valid"]),
               str(paths["test"]), "--task-type", "regression", "--output-dir",
               str(tmp_path / "out"), "--num-workers", "0", "--pytorch-seed", str(seed),
               *extra]
        if epochs:
            cmd += ["--epochs", str(epochs)]
        start = time.perf_counter()
        run_command(cmd, tmp_path)
        seconds = time.perf_counter() - start
        rmse = rmse_of(test_predictions(tmp_path / "out"), paths["test"])
        valid = tmp_path / "valid_predictions.csv"
        run_command([exe, "predict", "--test-path", str(paths["valid"]), "--output", str(valid),
              "--model-paths", str(best_model(tmp_path / "out")), "--num-workers", "0"],
             tmp_path)
        valid_rmse = rmse_of(valid, paths["valid"])
    shown = ["chemprop", "train", "--data-path", "train.csv", "valid.csv", "test.csv",
             "--task-type", "regression", "--pytorch-seed", str(seed), *extra]
    if epochs:
        shown += ["--epochs", str(epochs)]
    return {"seconds": seconds, "test_rmse": rmse, "valid_rmse": valid_rmse,
            "epochs": epochs or 50, "command": " ".join(shown)}


def best_model(out_dir: Path) -> Path:
    """The model file ``chemprop train`` keeps (2.x: ``model_0/best.pt``, the
    checkpoint with the best validation loss)."""
    found = sorted(out_dir.rglob("best.pt"))
    if not found:
        raise RuntimeError(f"chemprop wrote no best.pt under {out_dir}")
    return found[0]


def run_command(cmd: List[str], cwd: Optional[Path] = None) -> None:
    """Run ``cmd``; a failure raises RuntimeError with its last stderr."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
