"""Wall time of a default ``graphformer train`` (an ensemble of two) with its
members one after the other against side by side, in one run.

Each variant is ``graphformer train --dataset D --epochs E --no-pretrained``
in a fresh process, with

- ``in turn``: ``--member-processes 1`` (one process; torch's default
  threads, as before members could run side by side),
- ``in turn, 1 thread``: ``--member-processes 1 --threads 1``,
- ``side by side``: the default (``--member-processes 0``: one process per
  member, each on cores / members threads),

alternating over ``--repeats`` rounds; the table gives each variant's median
wall time (the whole command: start-up, data, training, the ensemble's
evaluation) and the speed-up of side by side over each. Run it on an
otherwise idle machine (DEVELOPERS.md, "Benchmarks").

    python scripts/bench_ensemble.py --dataset lipophilicity --epochs 5 --repeats 3
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
from typing import Any, Dict, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
VARIANTS = {
    "in turn": ["--member-processes", "1"],
    "in turn, 1 thread": ["--member-processes", "1", "--threads", "1"],
    "side by side": [],
}


def run_once(dataset: str, epochs: int, flags: List[str], root: Path, extra: List[str]) -> float:
    """Seconds of one ``graphformer train`` in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "graphformer", "train", "--dataset", dataset, "--epochs",
               str(epochs), "--no-pretrained", "--root", str(root), "--run-dir",
               str(Path(tmp) / "run"), "--quiet", *flags, *extra]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return seconds


def measure(args: argparse.Namespace) -> Dict[str, Any]:
    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="bench-ensemble-"))
    # the data cache (descriptors) is built once, outside the timed runs
    run_once(args.dataset, 1, ["--ensemble", "1"], root, args.extra)
    times: Dict[str, List[float]] = {name: [] for name in VARIANTS}
    for r in range(args.repeats):
        for name, flags in VARIANTS.items():
            seconds = run_once(args.dataset, args.epochs, flags, root, args.extra)
            times[name].append(seconds)
            print(f"round {r + 1}/{args.repeats}  {name:18s} {seconds:7.1f} s", file=sys.stderr)
    sys.path.insert(0, str(HERE))
    from bench_training import machine_line

    return {"dataset": args.dataset, "epochs": args.epochs, "repeats": args.repeats,
            "machine": machine_line(None), "times": times,
            "median": {name: statistics.median(t) for name, t in times.items()}}


def table(report: Dict[str, Any]) -> str:
    median = report["median"]
    side = median["side by side"]
    lines = [f"graphformer train --dataset {report['dataset']} --epochs {report['epochs']} "
             f"(an ensemble of 2), median of {report['repeats']}; {report['machine']}", "",
             "| members | wall s | side by side is faster by |", "| --- | ---: | ---: |"]
    for name, seconds in median.items():
        ratio = "-" if name == "side by side" else f"{seconds / side:.2f}x"
        lines.append(f"| {name} | {seconds:.1f} | {ratio} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="lipophilicity")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--root", help="graphformer's data cache (default: a new temporary folder)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                   help="further flags for every graphformer train (last on the line)")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.repeats < 1:
        raise SystemExit("--epochs and --repeats must be >= 1")
    report = measure(args)
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
