"""Compare settings of graphformer's model on validation scores: the evidence
behind its defaults.

Every variant (``default`` or comma-separated ``KEY=VALUE`` overrides of the
model or training config) trains on every data set and seed through
``graphformer.train.train``; each run appends one JSON line (best validation
metric, test metric at that epoch, best epoch, seconds) to ``--out``, so an
interrupted sweep keeps what it measured and a later one adds to it. The
table ranks variants by mean validation metric: choose on that column; the
test column is reported, never used to choose.

    python scripts/sweep.py --datasets esol freesolv --variants default local=gine \\
        dropout=0 batch_size=64 --seeds 0 1 2 --threads 1 --out sweep.jsonl
    python scripts/sweep.py --markdown-from sweep.jsonl
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path
from typing import Any, Dict, List, Optional

from graphformer.models import GraphTransformerConfig
from graphformer.train import RunConfig, train
from graphformer.train.config import TrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_chemprop import config_value  # noqa: E402  (a sibling script module)

MODEL_KEYS = {f.name for f in fields(GraphTransformerConfig)}
TRAIN_KEYS = {f.name for f in fields(TrainConfig)} - {"seed", "threads"}


def parse_variant(text: str) -> Dict[str, Dict[str, Any]]:
    """``"local=gine,dropout=0"`` as ``{"model": {...}, "train": {...}}``
    (``true`` and ``false`` become booleans, as YAML reads them; other values
    stay strings: the config's own rules convert and check them);
    ``"default"`` is no override."""
    sections: Dict[str, Dict[str, Any]] = {"model": {}, "train": {}}
    if text == "default":
        return sections
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"variant {text!r}: {item!r} is not KEY=VALUE")
        if key in MODEL_KEYS:
            sections["model"][key] = value.split("+") if key == "patterns" \
                else config_value(value)
        elif key in TRAIN_KEYS:
            sections["train"][key] = config_value(value)
        else:
            raise SystemExit(f"variant {text!r}: unknown key {key!r}; model keys "
                             f"{sorted(MODEL_KEYS)}, train keys {sorted(TRAIN_KEYS)}")
    return sections


def run(dataset: str, variant: str, seed: int, threads: int) -> Dict[str, Any]:
    sections = parse_variant(variant)
    sections["data"] = {"dataset": dataset, "split": "scaffold"}
    sections["train"].update(seed=seed, threads=threads)
    cfg = RunConfig.from_dict(sections)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        summary = train(cfg, Path(tmp), progress=False)
    metric = summary["metric"]
    return {"dataset": dataset, "variant": variant, "seed": seed, "metric": metric,
            "valid": summary[f"best_valid_{metric}"], "test": summary[f"test_{metric}_at_best"],
            "best_epoch": summary["best_epoch"], "seconds": time.perf_counter() - start}


def markdown(rows: List[Dict[str, Any]]) -> str:
    """Variants per data set, best mean validation metric first."""
    groups: Dict[str, Dict[str, List[Dict[str, Any]]]] = {}
    for r in rows:
        groups.setdefault(r["dataset"], {}).setdefault(r["variant"], []).append(r)
    lines = ["| data set | variant | seeds | validation (mean ± std) | test (mean ± std) | "
             "s/run |", "| --- | --- | --- | ---: | ---: | ---: |"]
    for dataset, variants in groups.items():
        def mean_valid(item):
            return statistics.mean(r["valid"] for r in item[1])
        for variant, runs in sorted(variants.items(), key=mean_valid):
            valid = [r["valid"] for r in runs]
            test = [r["test"] for r in runs]
            seeds = " ".join(str(r["seed"]) for r in runs)
            lines.append(f"| {dataset} | {variant} | {seeds} | {statistics.mean(valid):.3f} ± "
                         f"{statistics.pstdev(valid):.3f} | {statistics.mean(test):.3f} ± "
                         f"{statistics.pstdev(test):.3f} | "
                         f"{statistics.mean(r['seconds'] for r in runs):.0f} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["esol", "freesolv", "lipophilicity"])
    parser.add_argument("--variants", nargs="+", default=["default"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("sweep.jsonl"))
    parser.add_argument("--markdown-from", type=Path, help="print the table of a --out file")
    args = parser.parse_args(argv)
    if args.markdown_from:
        rows = [json.loads(line) for line in args.markdown_from.read_text().splitlines() if line]
        print(markdown(rows))
        return 0
    for variant in args.variants:       # every variant checked before the first run
        parse_variant(variant)
    for dataset in args.datasets:
        for variant in args.variants:
            for seed in args.seeds:
                row = run(dataset, variant, seed, args.threads)
                print(json.dumps(row), flush=True)
                with open(args.out, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
