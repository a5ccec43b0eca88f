"""Fine-tuning from a pre-trained checkpoint against training from scratch.

The same data set, scaffold split, model, epochs and seeds through the same
training loop; only the trunk's starting weights differ (``--init CKPT``
against ``--no-pretrained``). Prints the validation and test metric at the
best validation epoch of every run, the mean ± std per data set, and a JSON
summary. Decide on the validation columns: the test ones are for reporting.

    python scripts/compare_pretrained.py --init runs/pre/best.pt \\
        --datasets freesolv esol --seeds 0 1 2 --threads 1

``--starts init`` (or ``scratch``) runs one side only, to split the work
between processes; ``--set model.dropout=0.1`` (repeatable) changes a setting
of both sides.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

from graphformer.train import RunConfig, prepare, train
from graphformer.train.config import TrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_chemprop import overrides  # noqa: E402  (a sibling script module)


def _mean_std(values: List[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {std:.3f}"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init", required=True, help="checkpoint of 'graphformer pretrain'")
    parser.add_argument("--datasets", nargs="+", default=["freesolv", "esol"])
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads per run (0 = torch's default)")
    parser.add_argument("--starts", nargs="+", choices=["scratch", "init"],
                        default=["scratch", "init"],
                        help="which starts to run (default both; one of them to split the "
                             "work between processes)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a config setting of every run (e.g. model.dropout=0.1)")
    parser.add_argument("--out", type=Path, help="write the JSON summary here too")
    args = parser.parse_args(argv)

    results: Dict[str, Dict[str, Dict[str, List[float]]]] = {}
    settings = overrides(args.set)   # a malformed --set stops here, before any run
    for name in args.datasets:
        runs: Dict[str, Dict[str, List[float]]] = {
            kind: {"valid": [], "test": []} for kind in args.starts}
        for seed in args.seeds:
            sections = {section: dict(values) for section, values in settings.items()}
            sections.setdefault("data", {}).update(dataset=name, split="scaffold")
            sections.setdefault("train", {}).update(
                epochs=args.epochs, seed=seed, batch_size=args.batch_size, lr=args.lr,
                threads=args.threads, pretrained=False)
            cfg = RunConfig.from_dict(sections)
            prepared = prepare(cfg, log=False)
            for kind in args.starts:
                cfg.train.init = args.init if kind == "init" else None
                with tempfile.TemporaryDirectory() as tmp:
                    summary = train(cfg, Path(tmp), progress=False, prepared=prepared)
                metric = summary["metric"]
                runs[kind]["valid"].append(summary[f"best_valid_{metric}"])
                runs[kind]["test"].append(summary[f"test_{metric}_at_best"])
                # an ensemble's best epochs are its members' (a list)
                print(f"{name} seed {seed} {kind:7s} best epoch {str(summary['best_epoch']):>3}  "
                      f"valid {metric} {runs[kind]['valid'][-1]:.4f}  "
                      f"test {metric} {runs[kind]['test'][-1]:.4f}", flush=True)
        results[name] = runs
    print("\n| data set | start | valid (best epoch) | test at best valid |")
    print("| --- | --- | --- | --- |")
    for name, runs in results.items():
        for kind, scores in runs.items():
            print(f"| {name} | {kind} | {_mean_std(scores['valid'])} | "
                  f"{_mean_std(scores['test'])} |")
    text = json.dumps({"init": args.init, "epochs": args.epochs,
                       "batch_size": args.batch_size, "lr": args.lr, "set": args.set,
                       "seeds": args.seeds,
                       "results": results}, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
