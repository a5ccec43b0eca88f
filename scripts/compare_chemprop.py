"""graphformer's defaults against chemprop's defaults (and PyG's GIN), side by
side on the same split files and seeds, with the wall time of every run.

For every data set and seed:

- ``graphformer train`` runs as a user runs it (a fresh process, defaults
  plus any ``--set`` overrides) and is scored by its own summary: the test
  metric at the best validation epoch;
- ``chemprop train`` runs with its defaults (``--pytorch-seed SEED``) on the
  train / valid / test files of graphformer's split, and its test
  predictions are scored by the same RMSE (``chemprop_peer.py``); it is a
  benchmark peer, installed beside graphformer, never a dependency;
- GIN (``graphformer.models.GINBaseline``: PyG's GIN with the same encoders,
  loop, schedule and epochs) runs in-process, as in ``compare_gin.py``.

Prints one line per run, then the table (mean ± std over the seeds, each
seed, and seconds per run), and writes everything as JSON.

    python scripts/compare_chemprop.py --seeds 0 1 2 --json compare.json
    python scripts/compare_chemprop.py --datasets freesolv --set model.dropout=0
    python scripts/compare_chemprop.py --markdown-from compare.json

With ``--uncertainty`` it compares predictive uncertainty instead (chemprop's
ensemble, MVE and evidential models against graphformer's, scored by the same
functions): the arguments are then those of ``scripts/compare_uncertainty.py``.

    python scripts/compare_chemprop.py --uncertainty --datasets esol --seeds 0 1 2 --json uncertainty.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from graphformer.models import GINBaseline
from graphformer.train import RunConfig, prepare, train
from graphformer.errors import UsageError
from graphformer.train.config import DataConfig, TrainConfig, parse_overrides
from graphformer.train.data_prep import model_config_for
from graphformer.train.metrics import LOWER_IS_BETTER

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_training import machine_line  # noqa: E402  (sibling script modules)
from chemprop_peer import run_chemprop  # noqa: E402

PEERS = ("chemprop", "graphformer", "gin")


def overrides(items: List[str]) -> Dict[str, Dict[str, Any]]:
    """``--set`` items as config sections (:func:`graphformer.train.config.parse_overrides`:
    each value read by its field's type); a bad one stops the script, named."""
    try:
        return parse_overrides(items)
    except UsageError as err:
        raise SystemExit(f"error: {err}") from err


def run_graphformer(name: str, seed: int, threads: int, epochs: int,
                    sets: Dict[str, Dict[str, Any]], root: Path) -> Dict[str, Any]:
    """``graphformer train`` in a fresh process; its summary and wall time."""
    config = {section: dict(values) for section, values in sets.items()}
    config.setdefault("data", {}).update(dataset=name, split="scaffold")
    config.setdefault("train", {}).update(seed=seed, threads=threads, epochs=epochs)
    RunConfig.from_dict(config)          # a bad --set fails here, before any run
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.json"
        path.write_text(json.dumps(config))
        cmd = [sys.executable, "-m", "graphformer", "train", "--quiet", "--config", str(path),
               "--run-dir", str(Path(tmp) / "run"), "--root", str(root)]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"graphformer train failed ({proc.returncode}):\n"
                               f"{proc.stderr[-3000:]}")
        summary = json.loads((Path(tmp) / "run" / "summary.json").read_text())
    metric = summary["metric"]
    return {"seconds": seconds, "test": summary[f"test_{metric}_at_best"],
            "valid": summary[f"best_valid_{metric}"], "best_epoch": summary["best_epoch"],
            "metric": metric}


def run_gin(name: str, seed: int, threads: int, epochs: int) -> Dict[str, Any]:
    """GINBaseline through graphformer's loop, in this process."""
    cfg = RunConfig(data=DataConfig(dataset=name, split="scaffold"),
                    train=TrainConfig(seed=seed, threads=threads, epochs=epochs, ensemble=1))
    prepared = prepare(cfg, log=False)
    torch.manual_seed(seed)
    model = GINBaseline(model_config_for(cfg, prepared.bench))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        summary = train(cfg, Path(tmp), progress=False, prepared=prepared, model=model)
    metric = summary["metric"]
    return {"seconds": time.perf_counter() - start, "test": summary[f"test_{metric}_at_best"],
            "valid": summary[f"best_valid_{metric}"], "best_epoch": summary["best_epoch"],
            "metric": metric}


def run_peer(peer: str, name: str, seed: int, args: argparse.Namespace,
             sets: Dict[str, Dict[str, Any]], root: Path) -> Optional[Dict[str, Any]]:
    if peer == "graphformer":
        return run_graphformer(name, seed, args.threads, args.epochs, sets, root)
    if peer == "gin":
        return run_gin(name, seed, args.threads, args.epochs)
    cfg = RunConfig(data=DataConfig(dataset=name, split="scaffold"), train=TrainConfig(seed=seed))
    result = run_chemprop(prepare(cfg, log=False), seed=seed, epochs=args.chemprop_epochs)
    if result is None:
        return None
    return {"seconds": result["seconds"], "test": result["test_rmse"],
            "valid": result["valid_rmse"], "metric": "rmse", "command": result["command"]}


def summarise(runs: List[Dict[str, Any]], score: str = "test"
              ) -> Dict[str, Dict[str, Dict[str, Any]]]:
    """Mean ± std (population) of ``score`` (``test``, or ``valid``: the
    validation metric at the best validation epoch) and mean seconds, per
    data set and peer; runs without that score are left out."""
    table: Dict[str, Dict[str, Dict[str, Any]]] = {}
    for r in runs:
        if r.get(score) is None:
            continue
        table.setdefault(r["dataset"], {}).setdefault(
            r["peer"], {"values": [], "seconds": [], "metric": r.get("metric", "rmse")})
        cell = table[r["dataset"]][r["peer"]]
        cell["values"].append(r[score])
        cell["seconds"].append(r["seconds"])
    for peers in table.values():
        for cell in peers.values():
            cell["mean"] = statistics.mean(cell["values"])
            cell["std"] = statistics.pstdev(cell["values"])
    return table


#: how the tables name each metric
METRIC_NAMES = {"rmse": "RMSE", "mae": "MAE", "rocauc": "ROC-AUC", "ap": "AP"}


def markdown(results: Dict[str, Any]) -> str:
    """The README tables of a results JSON: test RMSE at the best validation
    epoch, then the validation RMSE there (the score defaults are chosen by)."""
    seen = list(dict.fromkeys(r["peer"] for r in results["runs"]))   # run order
    peers = [p for p in PEERS if p in seen] + [p for p in seen if p not in PEERS]
    metric = " / ".join(dict.fromkeys(METRIC_NAMES.get(r.get("metric", "rmse"), r["metric"])
                                      for r in results["runs"]))
    lines = [f"Machine: {results['machine']}. Scaffold split, seeds "
             f"{' '.join(map(str, results['seeds']))}; test {metric} at the best validation "
             f"epoch, mean ± std (each seed), seconds per run.", ""]
    lines += _table(summarise(results["runs"]), peers)
    valid = summarise(results["runs"], "valid")
    if valid:
        lines += ["", f"Validation {metric} at the best validation epoch, mean ± std (each "
                  f"seed):", ""]
        lines += _table(valid, [p for p in peers if any(p in row for row in valid.values())],
                        seconds=False)
    if results.get("set"):
        lines += ["", "graphformer settings: " + " ".join(f"`{s}`" for s in results["set"])]
    return "\n".join(lines)


def _table(table: Dict[str, Dict[str, Dict[str, Any]]], peers: List[str],
           seconds: bool = True) -> List[str]:
    names = {"chemprop": "chemprop defaults (D-MPNN)", "graphformer": "graphformer defaults",
             "gin": "GIN (graphformer's loop)"}   # other peers (merged JSONs): their label
    lines = ["| data set | " + " | ".join(names.get(p, p) for p in peers) + " |",
             "| --- |" + " --- |" * len(peers)]
    for name, row in table.items():
        means = [row[p]["mean"] for p in peers if p in row]
        lower = next(iter(row.values()))["metric"] in LOWER_IS_BETTER
        best = min(means) if lower else max(means)      # in bold
        cells = []
        for p in peers:
            if p not in row:
                cells.append("—")
                continue
            c = row[p]
            mean = f"{c['mean']:.3f}"
            mean = f"**{mean}**" if c["mean"] == best else mean
            each = " / ".join(f"{t:.3f}" for t in c["values"])
            cells.append(f"{mean} ± {c['std']:.3f} ({each})" +
                         (f", {statistics.mean(c['seconds']):.0f} s" if seconds else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--uncertainty" in argv:   # the other comparison, on the same splits and seeds
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from compare_uncertainty import main as compare_uncertainty

        return compare_uncertainty([a for a in argv if a != "--uncertainty"])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uncertainty", action="store_true",
                        help="compare predictive uncertainty instead: chemprop's ensemble, MVE "
                        "and evidential models against graphformer's on the same splits "
                        "(scripts/compare_uncertainty.py; the other arguments are its own)")
    parser.add_argument("--datasets", nargs="+", default=["esol", "freesolv", "lipophilicity"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--peers", nargs="+", choices=PEERS, default=list(PEERS))
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs,
                        help="graphformer's and GIN's epochs")
    parser.add_argument("--chemprop-epochs", type=int, default=None,
                        help="chemprop's epochs (default: its own, 50)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads of graphformer and GIN (0 = torch's default, "
                        "which chemprop uses too)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="graphformer config override, e.g. model.dropout=0 (repeatable)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--markdown-from", type=Path, help="print the README table of a --json")
    args = parser.parse_args(argv)
    if args.markdown_from:
        print(markdown(json.loads(args.markdown_from.read_text())))
        return 0
    sets = overrides(args.set)
    threads = args.threads or torch.get_num_threads()
    results: Dict[str, Any] = {"machine": machine_line(threads), "seeds": args.seeds,
                               "set": args.set, "runs": [], "skipped": []}
    with tempfile.TemporaryDirectory() as root:
        for name in args.datasets:
            for seed in args.seeds:
                for peer in args.peers:
                    result = run_peer(peer, name, seed, args, sets, Path(root))
                    if result is None:
                        print(f"{peer} is not installed: skipped", flush=True)
                        results["skipped"].append(peer)
                        continue
                    result.update(dataset=name, peer=peer, seed=seed)
                    results["runs"].append(result)
                    print(f"{name} seed {seed} {peer:11s} test {result['metric']} "
                          f"{result['test']:.4f} ({result['seconds']:.0f} s)", flush=True)
                    if args.json:     # after every run: a late failure keeps the rest
                        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
