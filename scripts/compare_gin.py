"""graphformer's default model against PyG's GIN, trained the same way.

Both models get the same OGB atom encoder (and the same RWSE encoding), the
same data set, scaffold split, epochs, optimiser, schedule and seed, through
the same training loop, both from fresh weights and without molecule
descriptors (GIN reads neither the shipped pre-trained trunk nor the RDKit
descriptors that graphformer's defaults add); only the message passing
differs. Prints both test metrics (at the best validation epoch) per data
set, and a JSON summary.

    python scripts/compare_gin.py                       # all bundled sets
    python scripts/compare_gin.py --datasets esol --epochs 60 --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from graphformer.models import GINBaseline
from graphformer.train import RunConfig, prepare, train
from graphformer.train.config import DataConfig, TrainConfig
from graphformer.train.data_prep import model_config_for


def run_config(dataset: str, epochs: int, seed: int, threads: int) -> RunConfig:
    """One model each, from fresh weights, on the atoms' and bonds' features
    alone (what GIN reads): no pre-trained trunk, no molecule descriptors,
    no fingerprint member."""
    return RunConfig(data=DataConfig(dataset=dataset, split="scaffold", molecule_features=["none"]),
                     train=TrainConfig(epochs=epochs, seed=seed, threads=threads, ensemble=1,
                                       kernel_member="none", pretrained=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["esol", "freesolv", "lipophilicity"])
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads per run (0 = torch's default)")
    parser.add_argument("--out", type=Path, help="write the JSON summary here too")
    args = parser.parse_args()

    results = {}
    for name in args.datasets:
        rows = {"graphformer": [], "gin": []}
        seconds = {"graphformer": [], "gin": []}
        for seed in args.seeds:
            cfg = run_config(name, args.epochs, seed, args.threads)
            prepared = prepare(cfg, log=False)
            for kind in ("graphformer", "gin"):
                torch.manual_seed(seed)
                model = None
                if kind == "gin":
                    model = GINBaseline(model_config_for(cfg, prepared.bench))
                start = time.perf_counter()
                with tempfile.TemporaryDirectory() as tmp:
                    summary = train(replace(cfg), Path(tmp), progress=False,
                                    prepared=prepared, model=model)
                seconds[kind].append(time.perf_counter() - start)
                metric = summary["metric"]
                rows[kind].append(summary[f"test_{metric}_at_best"])
                print(f"{name} seed {seed} {kind:11s} test {metric} "
                      f"{summary[f'test_{metric}_at_best']:.4f} (best epoch "
                      f"{summary['best_epoch']}, {seconds[kind][-1]:.0f} s)", flush=True)
        results[name] = {
            kind: {"mean": statistics.mean(v), "std": statistics.pstdev(v), "runs": v,
                   "seconds": seconds[kind]}
            for kind, v in rows.items()}
        results[name]["metric"] = metric
    print("\ndata set        metric  graphformer (s/run)       GIN (s/run)")
    for name, r in results.items():
        g, b = r["graphformer"], r["gin"]
        print(f"{name:15s} {r['metric']:6s}  {g['mean']:.3f} ± {g['std']:.3f} "
              f"({statistics.mean(g['seconds']):.0f})    {b['mean']:.3f} ± {b['std']:.3f} "
              f"({statistics.mean(b['seconds']):.0f})")
    text = json.dumps({"epochs": args.epochs, "seeds": args.seeds, "split": "scaffold",
                       "results": results}, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
