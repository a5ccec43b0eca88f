"""Bioactivity: graphformer's defaults, chemprop's defaults and MoleculeACE's
SVM on ECFP fingerprints, on MoleculeACE's own train / test splits.

MoleculeACE (van Tilborg, Alenicheva & Grisoni, JCIM 2022; MIT licence) holds
30 ChEMBL sets of Ki / EC50 values (``y``: -log10 of the value in nM, as the
package gives it) with MoleculeACE's train / test split and an
activity-cliff label per molecule (``cliff_mol``). Get its data from the
package index, without installing it:

    pip download --no-deps moleculeace -d /tmp/mace

For every set and seed, the same molecules go to every method:

- **validation**: 10 % of MoleculeACE's train part, drawn with the seed (the
  rest trains); the test part is MoleculeACE's;
- **graphformer**: ``graphformer train`` in a fresh process, its defaults
  (plus ``--set`` overrides) on a CSV with the split in a column
  (``--split column:split``), then ``graphformer predict`` of the test part
  with the run's ``best.pt``;
- **chemprop**: ``chemprop train`` with its defaults on the same train /
  validation / test files (``--pytorch-seed SEED``); installed beside
  graphformer (``pip install chemprop``), never a dependency;
- **svm**: MoleculeACE's SVM: scikit-learn's ``SVR`` with a precomputed
  Tanimoto kernel on 2048-bit ECFP4 (Morgan radius 2), ``C = 10``, trained on
  the same training molecules.

Every method is scored by the same function: RMSE over the test part and
over its cliff molecules (``cliff_mol == 1``); graphformer's runs also
record the RMSE of the validation part (``valid_rmse``), by which a default
is chosen; with a fingerprint kernel member (``--set
train.kernel_member=morgan``), whose weight is fitted on that part, also
its cross-fitted score (``valid_rmse_crossfit``), the weight, and the
score of its graph transformers alone (``valid_rmse_transformers``,
``test_rmse_transformers``, ``cliff_rmse_transformers``: the defaults',
trained alike; the test ones from the members' own checkpoints). Prints a line per run and the
table (per set and the mean over the sets, mean ± std over seeds), and
writes every run as JSON lines (``--out``, appended as runs finish: an
interrupted comparison continues with the same command, skipping the runs
already in the file).

**Held-out sets.** Five sets are kept aside for an independent measurement
and must not be trained on, tuned on or looked at while developing
(:data:`HELD_OUT`); the default ``--datasets`` are the other 25, and naming
a held-out set is refused unless ``--held-out`` says that this is that
measurement.

    python scripts/compare_moleculeace.py --wheel /tmp/mace/MoleculeACE-3.0.0-py3-none-any.whl --seeds 0 1 2 --out mace.jsonl
    python scripts/compare_moleculeace.py --wheel /tmp/mace/MoleculeACE-3.0.0-py3-none-any.whl --datasets CHEMBL1862_Ki --methods graphformer svm --seeds 0 --set data.molecule_features=rdkit2d,morgan_counts --label morgan --out mace.jsonl
    python scripts/compare_moleculeace.py --markdown-from mace.jsonl
"""
from __future__ import annotations

import argparse
import io
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chemprop_peer import best_model, run_command, test_predictions  # noqa: E402  (sibling)
from compare_chemprop import overrides  # noqa: E402  (one reading of --set for every script)

#: kept aside for an independent measurement: never trained, tuned or looked at
HELD_OUT = ("CHEMBL2034_Ki", "CHEMBL4203_Ki", "CHEMBL2147_Ki", "CHEMBL234_Ki", "CHEMBL237_EC50")
#: MoleculeACE's 30 sets
ALL_SETS = (
    "CHEMBL1862_Ki", "CHEMBL1871_Ki", "CHEMBL2034_Ki", "CHEMBL2047_EC50", "CHEMBL204_Ki",
    "CHEMBL2147_Ki", "CHEMBL214_Ki", "CHEMBL218_EC50", "CHEMBL219_Ki", "CHEMBL228_Ki",
    "CHEMBL231_Ki", "CHEMBL233_Ki", "CHEMBL234_Ki", "CHEMBL235_EC50", "CHEMBL236_Ki",
    "CHEMBL237_EC50", "CHEMBL237_Ki", "CHEMBL238_Ki", "CHEMBL239_EC50", "CHEMBL244_Ki",
    "CHEMBL262_Ki", "CHEMBL264_Ki", "CHEMBL2835_Ki", "CHEMBL287_Ki", "CHEMBL2971_Ki",
    "CHEMBL3979_EC50", "CHEMBL4005_Ki", "CHEMBL4203_Ki", "CHEMBL4616_EC50", "CHEMBL4792_Ki")
DEVELOPMENT_SETS = tuple(s for s in ALL_SETS if s not in HELD_OUT)
METHODS = ("graphformer", "chemprop", "svm")
VALID_FRACTION = 0.1
SVM_C = 10.0


# -- data -----------------------------------------------------------------------------------

def read_set(name: str, wheel: Optional[Path] = None, data_dir: Optional[Path] = None
             ) -> pd.DataFrame:
    """MoleculeACE's ``name`` set (columns ``smiles``, ``y``, ``cliff_mol``,
    ``split`` of ``train`` / ``test``), from the package's wheel or from a
    folder of its CSV files."""
    if (wheel is None) == (data_dir is None):
        raise ValueError("give the MoleculeACE wheel or a folder of its CSV files (one)")
    if wheel is not None:
        member = f"MoleculeACE/Data/benchmark_data/{name}.csv"
        with zipfile.ZipFile(wheel) as z:
            if member not in z.namelist():
                raise ValueError(f"{wheel} holds no {member}")
            frame = pd.read_csv(io.BytesIO(z.read(member)))
    else:
        frame = pd.read_csv(data_dir / f"{name}.csv")
    missing = {"smiles", "y", "cliff_mol", "split"} - set(frame.columns)
    if missing:
        raise ValueError(f"MoleculeACE set {name} lacks the column(s) {sorted(missing)}")
    bad = sorted(set(frame["split"]) - {"train", "test"})
    if bad:
        raise ValueError(f"MoleculeACE set {name}: split values must be train or test, got {bad}")
    return frame[["smiles", "y", "cliff_mol", "split"]].copy()


def with_validation(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    """``frame`` with ``round(10 %)`` of its train rows, drawn by ``seed``,
    moved to ``val``."""
    out = frame.copy()
    train = np.flatnonzero(out["split"].to_numpy() == "train")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(train, size=max(1, round(VALID_FRACTION * train.size)), replace=False)
    out.iloc[chosen, out.columns.get_loc("split")] = "val"
    return out


def scores(predicted: Sequence[float], test: pd.DataFrame) -> Dict[str, float]:
    """RMSE over the test molecules and over their cliff molecules."""
    p = np.asarray(predicted, dtype=np.float64)
    y = test["y"].to_numpy(dtype=np.float64)
    if p.shape != y.shape or not np.isfinite(p).all():
        raise RuntimeError(f"expected {y.size} finite predictions, got {p.shape}")
    cliff = test["cliff_mol"].to_numpy() == 1
    rmse = float(np.sqrt(np.mean((p - y) ** 2)))
    cliff_rmse = float(np.sqrt(np.mean((p[cliff] - y[cliff]) ** 2))) if cliff.any() \
        else math.nan
    return {"test_rmse": rmse, "cliff_rmse": cliff_rmse, "test_count": int(y.size),
            "cliff_count": int(cliff.sum())}


# -- methods --------------------------------------------------------------------------------

def ecfp4(smiles: Iterable[str]) -> np.ndarray:
    """2048-bit ECFP4 (Morgan radius 2) of each SMILES, as booleans."""
    from graphformer.data import parse_smiles
    from graphformer.data.descriptors import morgan

    return np.array([morgan(parse_smiles(s)) for s in smiles], dtype=bool)


def tanimoto(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Tanimoto similarity of every row of ``a`` with every row of ``b``
    (bit vectors): ``|a ∧ b| / (|a| + |b| - |a ∧ b|)``, 1 for two empty ones."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    both = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - both
    return np.where(union > 0, both / np.where(union > 0, union, 1), 1.0)


def run_svm(frame: pd.DataFrame, seed: int) -> List[float]:
    """MoleculeACE's SVM (SVR, precomputed Tanimoto kernel on ECFP4, C = 10)
    trained on the ``train`` rows; its predictions for the ``test`` rows.
    (The SVR is deterministic: ``seed`` only chose the training rows.)"""
    from sklearn.svm import SVR

    train, test = frame[frame["split"] == "train"], frame[frame["split"] == "test"]
    x_train, x_test = ecfp4(train["smiles"]), ecfp4(test["smiles"])
    model = SVR(kernel="precomputed", C=SVM_C)
    model.fit(tanimoto(x_train, x_train), train["y"].to_numpy())
    return model.predict(tanimoto(x_test, x_train)).tolist()


def run_graphformer(frame: pd.DataFrame, seed: int, threads: int,
                    sets: Dict[str, Dict[str, Any]], root: Path) -> Dict[str, Any]:
    """``graphformer train`` (defaults plus ``sets``) on the frame's split,
    in a fresh process, then ``graphformer predict`` of the validation and
    test rows: ``{"val": [...], "test": [...]}``, and the run summary's
    ``kernel_member`` (``--set train.kernel_member=morgan``) when it has one."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        data = tmp_path / "data.csv"
        frame[["smiles", "y", "split"]].to_csv(data, index=False)
        test = tmp_path / "test.csv"
        held = frame[frame["split"] != "train"]
        held[["smiles"]].to_csv(test, index=False)
        config = {section: dict(values) for section, values in sets.items()}
        config.setdefault("data", {}).update(dataset=str(data), target_columns=["y"],
                                             split="column:split")
        config.setdefault("train", {}).update(seed=seed, threads=threads)
        path = tmp_path / "config.json"
        path.write_text(json.dumps(config))
        run_command([sys.executable, "-m", "graphformer", "train", "--quiet", "--config", str(path),
              "--run-dir", str(tmp_path / "run"), "--root", str(root)])
        summary = json.loads((tmp_path / "run" / "summary.json").read_text())
        # with a kernel member, also the graph transformers' own mean (the
        # members' checkpoints share the run's target normalisation)
        transformers = sorted((tmp_path / "run").glob("member-*/best.pt")) \
            if "kernel_member" in summary else []
        predicted = []
        for k, checkpoint in enumerate([tmp_path / "run" / "best.pt", *transformers]):
            run_command([sys.executable, "-m", "graphformer", "predict", str(checkpoint),
                         str(test), "-o", str(tmp_path / f"pred{k}.csv"), "--threads", str(threads)])
            # not y_std (an ensemble adds it)
            predicted.append(pd.read_csv(tmp_path / f"pred{k}.csv")["y"].to_numpy())
    parts = held["split"].to_numpy()
    out: Dict[str, Any] = {part: predicted[0][parts == part].tolist() for part in ("val", "test")}
    if "kernel_member" in summary:
        out["kernel_member"] = summary["kernel_member"]
        mean = np.mean(predicted[1:], axis=0)
        out["test_transformers"] = mean[parts == "test"].tolist()
    return out


def run_chemprop(frame: pd.DataFrame, seed: int, executable: Optional[str] = None
                 ) -> Optional[List[float]]:
    """``chemprop train`` with its defaults on the frame's train / val / test
    rows; its test predictions (None when chemprop is not installed)."""
    exe = executable or shutil.which("chemprop")
    if exe is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        paths = []
        for part in ("train", "val", "test"):
            paths.append(tmp_path / f"{part}.csv")
            frame[frame["split"] == part][["smiles", "y"]].to_csv(paths[-1], index=False)
        run_command([exe, "train", "--data-path", *map(str, paths), "--task-type", "regression",
              "--output-dir", str(tmp_path / "out"), "--num-workers", "0",
              "--pytorch-seed", str(seed)])
        found = pd.read_csv(test_predictions(tmp_path / "out"))
        best_model(tmp_path / "out")      # the checkpoint it tested exists
    expected = frame[frame["split"] == "test"]["smiles"].tolist()
    if found.iloc[:, 0].tolist() != expected:
        raise RuntimeError("chemprop's test predictions do not list the test molecules in order")
    return found.iloc[:, 1].tolist()


# -- the table ------------------------------------------------------------------------------

def summarise(rows: List[Dict[str, Any]]) -> str:
    """A markdown table: per set and method (label), mean ± std over seeds of
    the test and cliff RMSE, and the mean over the sets every method ran."""
    methods = sorted({r["method"] for r in rows}, key=lambda m: (
        METHODS.index(m.split(":")[0]) if m.split(":")[0] in METHODS else 9, m))
    names = sorted({r["dataset"] for r in rows})

    def cell(values: List[float]) -> str:
        if not values:
            return "–"
        if len(values) == 1:
            return f"{values[0]:.3f}"
        return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"

    def values(name: str, method: str, key: str) -> List[float]:
        return [r[key] for r in rows if r["dataset"] == name and r["method"] == method]

    head = "| set | " + " | ".join(f"{m} test | {m} cliff" for m in methods) + " |"
    lines = [head, "|" + " --- |" * (1 + 2 * len(methods))]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(
            f"{cell(values(name, m, 'test_rmse'))} | {cell(values(name, m, 'cliff_rmse'))}"
            for m in methods) + " |")
    common = [n for n in names if all(values(n, m, "test_rmse") for m in methods)]
    if common:
        means = []
        for m in methods:
            test = statistics.mean(statistics.mean(values(n, m, "test_rmse")) for n in common)
            cliff = statistics.mean(statistics.mean(values(n, m, "cliff_rmse")) for n in common)
            means.append(f"**{test:.3f}** | **{cliff:.3f}**")
        lines.append(f"| mean of {len(common)} sets | " + " | ".join(means) + " |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--wheel", type=Path, help="MoleculeACE's wheel (pip download "
                        "--no-deps moleculeace)")
    source.add_argument("--data-dir", type=Path, help="a folder of MoleculeACE's CSV files")
    parser.add_argument("--datasets", nargs="+", default=list(DEVELOPMENT_SETS),
                        help="default: the 25 development sets")
    parser.add_argument("--held-out", action="store_true",
                        help="allow the five held-out sets: only for their one independent "
                             "measurement")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="graphformer setting to change (repeatable)")
    parser.add_argument("--label", default=None,
                        help="name of this graphformer variant in the table (default: "
                             "graphformer, or graphformer:<label> with --set)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) /
                        "graphformer-mace-cache", help="graphformer's data cache")
    parser.add_argument("--out", type=Path, help="JSON lines of the runs (appended; runs "
                        "already there are skipped)")
    parser.add_argument("--markdown-from", type=Path, help="print the table of a --out file "
                        "and stop")
    args = parser.parse_args(argv)
    if args.markdown_from:
        rows = [json.loads(line) for line in args.markdown_from.read_text().splitlines()
                if line.strip()]
        print(summarise(rows))
        return 0
    if args.wheel is None and args.data_dir is None:
        parser.error("give --wheel or --data-dir (pip download --no-deps moleculeace)")
    unknown = [d for d in args.datasets if d not in ALL_SETS]
    if unknown:
        parser.error(f"unknown MoleculeACE set(s) {unknown}; known: {list(ALL_SETS)}")
    held = [d for d in args.datasets if d in HELD_OUT]
    if held and not args.held_out:
        parser.error(f"{held} are held out for an independent measurement: never trained, "
                     f"tuned or looked at while developing (pass --held-out only for that "
                     f"measurement)")
    sets = overrides(args.set)
    label = args.label or ("custom" if sets else None)
    done = set()
    rows: List[Dict[str, Any]] = []
    if args.out is not None and args.out.exists():
        rows = [json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]
        done = {(r["dataset"], r["method"], r["seed"]) for r in rows}
        ours = f"graphformer:{label}" if label else "graphformer"
        same = json.loads(json.dumps(sets))           # as the file holds them
        other = next((r for r in rows if r["method"] == ours and r.get("settings") != same),
                     None)
        if "graphformer" in args.methods and other is not None:
            parser.error(f"{args.out} holds runs of {ours} with other settings "
                         f"({other.get('settings')}; these: {same}): they would be skipped as "
                         f"done and their scores shown as this variant's; name this one with "
                         f"--label, or give another --out")
    for name in args.datasets:
        frame = read_set(name, args.wheel, args.data_dir)
        for seed in args.seeds:
            split = with_validation(frame, seed)
            test = split[split["split"] == "test"]
            for method in args.methods:
                shown = f"graphformer:{label}" if method == "graphformer" and label else method
                if (name, shown, seed) in done:
                    continue
                start = time.perf_counter()
                valid: Dict[str, float] = {}
                if method == "svm":
                    predicted = run_svm(split, seed)
                elif method == "graphformer":
                    both = run_graphformer(split, seed, args.threads, sets, args.root)
                    predicted = both["test"]
                    valid = {"valid_rmse": scores(both["val"],
                                                  split[split["split"] == "val"])["test_rmse"]}
                    if "kernel_member" in both:   # the weight was fitted on that part
                        kernel = both["kernel_member"]
                        alone = scores(both["test_transformers"], test)
                        valid.update(valid_rmse_crossfit=kernel["valid_rmse_crossfit"],
                                     valid_rmse_transformers=kernel["valid_rmse_transformers"],
                                     test_rmse_transformers=alone["test_rmse"],
                                     cliff_rmse_transformers=alone["cliff_rmse"],
                                     kernel_weight=kernel["weight"][0])
                else:
                    predicted = run_chemprop(split, seed)
                    if predicted is None:
                        print("chemprop is not installed (pip install chemprop): skipped",
                              file=sys.stderr)
                        continue
                row = {"dataset": name, "method": shown, "seed": seed,
                       "seconds": round(time.perf_counter() - start, 1),
                       "settings": sets if method == "graphformer" else {},
                       **scores(predicted, test), **valid}
                rows.append(row)
                print(f"{name} {shown} seed {seed}: test RMSE {row['test_rmse']:.3f}, cliff "
                      f"RMSE {row['cliff_rmse']:.3f} ({row['seconds']:.0f} s)", flush=True)
                if args.out is not None:
                    with open(args.out, "a") as fh:
                        fh.write(json.dumps(row) + "\n")
    print(summarise(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
