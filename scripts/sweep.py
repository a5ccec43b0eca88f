"""Compare settings of graphformer's model on validation scores: the evidence
behind its defaults.

Every variant (``default`` or comma-separated ``KEY=VALUE`` overrides of the
model or training config) trains on every data set and seed through
``graphformer.train.train``; each run appends one JSON line (best validation
metric, test metric at that epoch, best epoch, seconds) to ``--out``, so an
interrupted sweep keeps what it measured and a later one adds to it. The
table ranks variants by mean validation metric: choose on that column; the
test column is reported, never used to choose.
A variant with a fingerprint kernel member (``kernel_member=morgan``),
whose weight is fitted on the validation part, is ranked by that blend's
cross-fitted validation score (the summary's
``kernel_member.valid_rmse_crossfit``), not by the score its own fit
flatters (kept as ``valid_fitted``); ``valid_transformers`` is its graph
transformers' alone, which are trained as without the member.

    python scripts/sweep.py --datasets esol freesolv --variants default local=gine \\
        dropout=0 batch_size=64 --seeds 0 1 2 --threads 1 --out sweep.jsonl
    python scripts/sweep.py --markdown-from sweep.jsonl

With ``--cv K`` every run is repeated on K scaffold folds of the data set's
training and validation parts (:func:`graphformer.datasets.scaffold_folds`;
the test part is held out of every fold), through a copy of the bundled CSV
file with one split column per fold (``--cv-dir``). The table then ranks
variants by their out-of-fold RMSE: the RMSE over every validated molecule,
each predicted at its fold's best validation epoch, averaged over seeds. It
validates on several times more molecules than the fixed validation part
(FreeSolv's has 64), so it separates settings that the fixed part cannot.

    python scripts/sweep.py --datasets freesolv --variants default lr=0.0005 --cv 5 \\
        --seeds 0 1 2 --out sweep-cv.jsonl
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import pandas as pd

from graphformer.datasets import BUNDLED, bundled_dir, scaffold_folds, scaffold_split
from graphformer.models import GraphTransformerConfig
from graphformer.train import RunConfig, train
from graphformer.train.config import TrainConfig, parse_overrides
from graphformer.train.metrics import LOWER_IS_BETTER


MODEL_KEYS = {f.name for f in fields(GraphTransformerConfig)}
TRAIN_KEYS = {f.name for f in fields(TrainConfig)} - {"seed", "threads"}


def parse_variant(text: str) -> Dict[str, Dict[str, Any]]:
    """``"local=gine,dropout=0,patterns=bonds+full"`` as ``{"model": {...},
    "train": {...}}``, each value read by its field's type
    (:func:`graphformer.train.config.parse_overrides`; a list's items are
    joined by ``+``); ``"default"`` is no override."""
    sections: Dict[str, Dict[str, Any]] = {"model": {}, "train": {}}
    if text == "default":
        return sections
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"variant {text!r}: {item!r} is not KEY=VALUE")
        section = "model" if key in MODEL_KEYS else "train" if key in TRAIN_KEYS else None
        if section is None:
            raise SystemExit(f"variant {text!r}: unknown key {key!r}; model keys "
                             f"{sorted(MODEL_KEYS)}, train keys {sorted(TRAIN_KEYS)}")
        parsed = parse_overrides([f"{section}.{key}={value.replace('+', ',')}"])
        sections[section].update(parsed[section])
    return sections


def cv_file(dataset: str, num_folds: int, folder: Path) -> Path:
    """A copy of a bundled data set's CSV file with split columns ``cv0`` ..
    ``cv{K-1}`` (``train`` / ``val`` / ``test``) of :func:`scaffold_folds`,
    written once (atomically, so parallel sweeps can share it)."""
    spec = BUNDLED.get(dataset)
    if spec is None:
        raise SystemExit(f"--cv needs a bundled data set ({sorted(BUNDLED)}), got {dataset!r}")
    path = folder / f"{dataset}-scaffold-cv{num_folds}.csv"
    if path.exists():
        return path
    frame = pd.read_csv(bundled_dir() / spec.file)
    smiles = list(frame[spec.smiles_column])
    names = {"train": "train", "valid": "val", "test": "test"}
    for k, fold in enumerate(scaffold_folds(smiles, scaffold_split(smiles), num_folds)):
        column = [""] * len(frame)
        for part, rows in fold.items():
            for row in rows.tolist():
                column[row] = names[part]
        frame[f"cv{k}"] = column
    folder.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    frame.to_csv(partial, index=False)
    os.replace(partial, path)
    return path


@dataclass(frozen=True)
class Fold:
    """One fold of a ``--cv`` sweep: the CSV file of :func:`cv_file`, the
    fold's number (its split column ``cv{index}``) and its validation size."""
    csv: Path
    index: int
    valid_size: int


def cv_folds(csv: Path, indices: Sequence[int]) -> List[Fold]:
    """The folds ``indices`` of a :func:`cv_file`, their sizes read once."""
    frame = pd.read_csv(csv, usecols=[f"cv{k}" for k in indices])
    return [Fold(csv, k, int((frame[f"cv{k}"] == "val").sum())) for k in indices]


def run(dataset: str, variant: str, seed: int, threads: int,
        fold: Optional[Fold] = None) -> Dict[str, Any]:
    sections = parse_variant(variant)
    if fold is None:
        sections["data"] = {"dataset": dataset, "split": "scaffold"}
    else:
        sections["data"] = {"dataset": str(fold.csv), "split": f"column:cv{fold.index}",
                            "smiles_column": BUNDLED[dataset].smiles_column,
                            "target_columns": [BUNDLED[dataset].target_column]}
    sections["train"].update(seed=seed, threads=threads)
    cfg = RunConfig.from_dict(sections)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        summary = train(cfg, Path(tmp), progress=False)
    metric = summary["metric"]
    row = {"dataset": dataset, "variant": variant, "seed": seed, "metric": metric,
           "valid": summary[f"best_valid_{metric}"], "test": summary[f"test_{metric}_at_best"],
           "best_epoch": summary["best_epoch"], "seconds": time.perf_counter() - start}
    if "kernel_member" in summary:   # its weight was fitted on the validation part
        row.update(valid=summary["kernel_member"]["valid_rmse_crossfit"],
                   valid_fitted=summary[f"best_valid_{metric}"],
                   valid_transformers=summary["kernel_member"]["valid_rmse_transformers"])
    if fold is not None:
        row.update(fold=fold.index, valid_size=fold.valid_size)
    return row


def by_dataset_and_variant(rows: List[Dict[str, Any]]
                           ) -> Dict[str, Dict[str, List[Dict[str, Any]]]]:
    """Rows grouped by data set, then variant, in their first appearance's order."""
    groups: Dict[str, Dict[str, List[Dict[str, Any]]]] = {}
    for r in rows:
        groups.setdefault(r["dataset"], {}).setdefault(r["variant"], []).append(r)
    return groups


def markdown(rows: List[Dict[str, Any]]) -> str:
    """Variants per data set, best mean validation metric first (the lowest
    RMSE / MAE, the highest ROC-AUC / AP)."""
    groups = by_dataset_and_variant(rows)
    lines = ["| data set | variant | seeds | validation (mean ± std) | test (mean ± std) | "
             "s/run |", "| --- | --- | --- | ---: | ---: | ---: |"]
    for dataset, variants in groups.items():
        def worse_first(item):           # sorted ascending: the best first
            runs = item[1]
            sign = 1 if runs[0].get("metric", "rmse") in LOWER_IS_BETTER else -1
            return sign * statistics.mean(r["valid"] for r in runs)
        for variant, runs in sorted(variants.items(), key=worse_first):
            valid = [r["valid"] for r in runs]
            test = [r["test"] for r in runs]
            seeds = " ".join(str(r["seed"]) for r in runs)
            lines.append(f"| {dataset} | {variant} | {seeds} | {statistics.mean(valid):.3f} ± "
                         f"{statistics.pstdev(valid):.3f} | {statistics.mean(test):.3f} ± "
                         f"{statistics.pstdev(test):.3f} | "
                         f"{statistics.mean(r['seconds'] for r in runs):.0f} |")
    return "\n".join(lines)


def out_of_fold(runs: List[Dict[str, Any]]) -> float:
    """The RMSE over every validated molecule of one seed's folds: each
    fold's best validation RMSE weighted by its validation size."""
    total = sum(r["valid_size"] for r in runs)
    return math.sqrt(sum(r["valid_size"] * r["valid"] ** 2 for r in runs) / total)


def cv_markdown(rows: List[Dict[str, Any]]) -> str:
    """Variants per data set ranked by out-of-fold validation RMSE (mean over
    the seeds that ran every fold the variant ran; a seed still running is
    left out), with the change against the ``default`` variant where it
    ran."""
    groups = by_dataset_and_variant(rows)
    lines = ["| data set | variant | seeds | folds | out-of-fold validation (mean ± std) | "
             "vs default | test (mean ± std) | s/run |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for dataset, variants in groups.items():
        scores, counted = {}, {}
        for variant, runs in variants.items():
            folds = {r["fold"] for r in runs}      # a seed counts once it ran every fold
            counted[variant] = [s for s in sorted({r["seed"] for r in runs})
                                if {r["fold"] for r in runs if r["seed"] == s} == folds]
            scores[variant] = [out_of_fold([r for r in runs if r["seed"] == s])
                               for s in counted[variant]]
        base = statistics.mean(scores["default"]) if "default" in scores else None
        for variant, runs in sorted(variants.items(),
                                    key=lambda item: statistics.mean(scores[item[0]])):
            runs = [r for r in runs if r["seed"] in counted[variant]]
            score = statistics.mean(scores[variant])
            folds = " ".join(str(k) for k in sorted({r["fold"] for r in runs}))
            test = [r["test"] for r in runs]
            change = f"{100 * (score / base - 1):+.1f} %" if base else ""
            seeds = " ".join(str(s) for s in counted[variant])
            lines.append(
                f"| {dataset} | {variant} | {seeds} | {folds} | {score:.3f} ± "
                f"{statistics.pstdev(scores[variant]):.3f} | {change} | "
                f"{statistics.mean(test):.3f} ± {statistics.pstdev(test):.3f} | "
                f"{statistics.mean(r['seconds'] for r in runs):.0f} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["esol", "freesolv", "lipophilicity"])
    parser.add_argument("--variants", nargs="+", default=["default"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("sweep.jsonl"))
    parser.add_argument("--cv", type=int, metavar="K",
                        help="validate on K scaffold folds of the training and validation parts")
    parser.add_argument("--folds", type=int, nargs="+", metavar="k",
                        help="with --cv: run only these folds (0 .. K-1), to share a sweep "
                             "between processes")
    parser.add_argument("--cv-dir", type=Path, default=Path("sweep-cv"),
                        help="where --cv writes the data sets' CSV files with fold columns")
    parser.add_argument("--markdown-from", type=Path, help="print the table of a --out file")
    args = parser.parse_args(argv)
    if args.markdown_from:
        rows = [json.loads(line) for line in args.markdown_from.read_text().splitlines() if line]
        plain, folds = ([r for r in rows if ("fold" in r) == cv] for cv in (False, True))
        print("\n\n".join(table(part) for table, part in ((markdown, plain),
                                                          (cv_markdown, folds)) if part))
        return 0
    if args.cv is not None and args.cv < 2:
        parser.error(f"--cv must be at least 2, got {args.cv}")
    if args.folds is not None and (args.cv is None or not all(0 <= k < args.cv
                                                              for k in args.folds)):
        parser.error("--folds needs --cv K and folds in 0 .. K-1")
    for variant in args.variants:       # every variant checked before the first run
        parse_variant(variant)
    for dataset in args.datasets:
        folds: List[Optional[Fold]] = [None]
        if args.cv is not None:
            folds = list(cv_folds(cv_file(dataset, args.cv, args.cv_dir),
                                  args.folds if args.folds is not None else range(args.cv)))
        for variant in args.variants:
            for seed in args.seeds:
                for fold in folds:
                    row = run(dataset, variant, seed, args.threads, fold)
                    print(json.dumps(row), flush=True)
                    with open(args.out, "a") as fh:
                        fh.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
