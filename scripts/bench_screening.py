"""Screening speed (issue 27): ``graphformer predict`` against ``chemprop
predict`` on the same file of N SMILES, in one run.

1. The input: the first ``-n`` SMILES of ``--smiles`` (default the MOSES
   training set inside a ``molsets`` wheel: ``pip download --no-deps
   molsets==0.3.1 -d /tmp/molsets``; any SMILES file ``graphformer pretrain
   --smiles`` reads will do), written once as ``WORK/screen-N.csv``.
2. The models, trained quickly on the same small data set (ESOL, bundled):
   ``graphformer train --dataset esol`` with its defaults (an ensemble of
   two, RDKit descriptors) for ``--epochs`` epochs, unless ``--checkpoint``
   names one; ``chemprop train`` (its defaults, D-MPNN) on ESOL for
   ``--chemprop-epochs`` epochs. Training is not measured; both are kept in
   ``WORK`` and reused when there.
3. Each measured command runs as a child process of its own, one after the
   other: ``graphformer predict`` with each of ``--workers`` (1: in process;
   2: two featurising processes beside the model's), then with each of
   ``--graph-only-workers`` a second graphformer checkpoint trained with
   ``--molecule-features none`` (the graph alone, as chemprop's default), then
   ``chemprop predict``. For each: wall time, molecules per second (the molecules it
   wrote), the peak RSS of its largest process (``getrusage(RUSAGE_CHILDREN)``
   of a wrapper process around it) and the largest total RSS of its process
   tree (``/proc``, sampled every 0.2 s: the worker processes count). Both
   tools' CPU work runs on ``--threads`` threads (chemprop's torch through
   ``OMP_NUM_THREADS``); the table ends with each graphformer run's ratio to
   chemprop's molecules per second.
4. The floor: the checkpoint's molecule features (the RDKit descriptors of
   the default) computed alone in one process on the first
   ``--floor-sample`` molecules. A ``predict`` that computes them cannot be
   faster in one process, nor with W featurising processes faster than W
   times it: where chemprop (which computes no descriptors) is faster than
   that on the machine's cores, the descriptors rule the target out, and
   ``--molecule-features none`` is the comparison of the models.

Run it on an otherwise idle machine (see DEVELOPERS.md, "Benchmarks").

    pip download --no-deps molsets==0.3.1 -d /tmp/molsets
    python scripts/bench_screening.py -n 1000000 --threads 1 --json screening.json
    python scripts/bench_screening.py -n 1000000 --workers 2 --graph-only-workers 2 --threads 1
    python scripts/bench_screening.py -n 2000 --peers none
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MOSES_WHEEL = "/tmp/molsets/molsets-0.3.1-py3-none-any.whl"
PEERS = ("chemprop", "none")
#: the tool column of the runs of ``--graph-only-workers``
GRAPH_ONLY = "graphformer --molecule-features none"
ESOL_TARGET = "measured log solubility in mols per litre"
#: runs a command and prints the peak RSS (KiB) of its largest process: the
#: wrapper's RUSAGE_CHILDREN covers the command and every process it waited for
WRAPPER = ("import resource, subprocess, sys\n"
           "code = subprocess.call(sys.argv[2:])\n"
           "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN)"
           ".ru_maxrss))\n"
           "sys.exit(code)\n")


# -- memory of a process tree ------------------------------------------------------------------

def _tree_rss(root: int) -> int:
    """The summed RSS (bytes) of ``root`` and its descendants, from /proc."""
    children: Dict[int, List[int]] = {}
    rss: Dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo.extend(children.get(pid, []))
    return total


class TreeWatch:
    """The largest summed RSS of a process tree, sampled every ``interval`` s."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if os.path.isdir("/proc"):
                self.peak = max(self.peak, _tree_rss(self.pid))
            self._stop.wait(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def measure(name: str, cmd: List[str], work: Path, threads: int) -> Dict[str, Any]:
    """Run ``cmd`` in a wrapper process: seconds, the peak RSS of its largest
    process, the largest total RSS of its tree. A failure raises
    RuntimeError with the command's last output."""
    peak_file = work / f".peak-{name}.txt"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log = work / f"{name}.log"
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", WRAPPER, str(peak_file), *cmd],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=work)
        watch = TreeWatch(proc.pid)
        code = proc.wait()
        tree = watch.stop()
    seconds = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({code}):\n{log.read_text()[-3000:]}")
    peak_kib = int(peak_file.read_text())
    return {"seconds": seconds, "peak_rss_mb": peak_kib * 1024 / 1e6,
            "tree_rss_mb": tree / 1e6}


# -- input and models --------------------------------------------------------------------------

def write_input(smiles_spec: str, n: int, work: Path) -> Path:
    """The first ``n`` SMILES of ``smiles_spec`` as ``WORK/screen-N.csv``
    (one ``smiles`` column; reused when there)."""
    path = work / f"screen-{n}.csv"
    if path.is_file():
        return path
    from graphformer.datasets.corpus import corpus_source, read_smiles

    rows = read_smiles(corpus_source(smiles_spec), limit=n)
    if len(rows) < n:
        raise SystemExit(f"{smiles_spec} holds {len(rows)} SMILES, fewer than -n {n}")
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["smiles"])
        writer.writerows([s] for _, s in rows)
    tmp.replace(path)
    return path


def graphformer_checkpoint(args: argparse.Namespace, work: Path) -> Path:
    if args.checkpoint is not None:
        return args.checkpoint
    features = ["--molecule-features", *args.molecule_features] if args.molecule_features \
        else []
    suffix = "".join(f"-{name}" for name in args.molecule_features or [])
    run_dir = work / f"graphformer-esol-e{args.epochs}{suffix}"
    if not (run_dir / "best.pt").is_file():
        with open(work / f"{run_dir.name}.log", "w") as log:
            subprocess.run([sys.executable, "-m", "graphformer", "train", "--dataset", "esol",
                            "--epochs", str(args.epochs), "--threads", str(args.threads),
                            *features, "--run-dir", str(run_dir), "--overwrite", "--quiet"],
                           check=True, cwd=work, stdout=log, stderr=subprocess.STDOUT)
    return run_dir / "best.pt"


def chemprop_model(exe: str, args: argparse.Namespace, work: Path) -> Path:
    sys.path.insert(0, str(HERE))
    from chemprop_peer import best_model

    out = work / f"chemprop-esol-e{args.chemprop_epochs}"
    try:
        return best_model(out)
    except RuntimeError:
        pass
    from graphformer.datasets.molecules import bundled_dir

    shutil.rmtree(out, ignore_errors=True)
    subprocess.run([exe, "train", "--data-path", str(bundled_dir() / "ESOL.csv"),
                    "--smiles-columns", "smiles", "--target-columns", ESOL_TARGET,
                    "--task-type", "regression", "--epochs", str(args.chemprop_epochs),
                    "--output-dir", str(out), "--num-workers", "0", "--accelerator", "cpu"],
                   check=True, cwd=work,
                   capture_output=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    return best_model(out)


#: times the molecule features of a checkpoint alone, in one process, on the
#: first SMILES of a file: argv = checkpoint, csv, count; prints sets, mol/s
FLOOR = ("import csv, sys, time, torch\n"
         "from rdkit import Chem, RDLogger\n"
         "from graphformer.data.descriptors import set_values\n"
         "RDLogger.DisableLog('rdApp.*')\n"
         "ckpt = torch.load(sys.argv[1], map_location='cpu', weights_only=False)\n"
         "sets = ckpt['config']['data'].get('molecule_features') or []\n"
         "with open(sys.argv[2], newline='') as fh:\n"
         "    rows = [r[0] for _, r in zip(range(int(sys.argv[3]) + 1), csv.reader(fh))][1:]\n"
         "mols = [m for m in map(Chem.MolFromSmiles, rows) if m is not None]\n"
         "start = time.perf_counter()\n"
         "for m in mols:\n"
         "    set_values(m, sets)\n"
         "seconds = time.perf_counter() - start\n"
         "print(' '.join(sets) or 'none', len(mols) / seconds if sets else float('inf'))\n")


def feature_floor(ckpt: Path, source: Path, count: int, threads: int) -> Dict[str, Any]:
    """Molecules per second of the checkpoint's molecule features (RDKit
    descriptors, fingerprints) alone, in one process, on the file's first
    ``count`` molecules (parsing not counted): no ``graphformer predict``
    computing them in one process can be faster, nor W processes than W
    times it."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", FLOOR, str(ckpt), str(source), str(count)],
                         check=True, capture_output=True, text=True, env=env).stdout.split()
    return {"sets": out[0], "molecules": count, "mol_per_s": float(out[1])}


def replace_features(args: argparse.Namespace, features: List[str]) -> argparse.Namespace:
    """``args`` with other ``--molecule-features``."""
    return argparse.Namespace(**{**vars(args), "molecule_features": features,
                                 "checkpoint": None})


def count_rows(path: Path) -> int:
    with open(path, newline="") as fh:
        return sum(1 for _ in csv.reader(fh)) - 1


# -- the runs ----------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> Dict[str, Any]:
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    source = write_input(args.smiles, args.n, work)
    ckpt = graphformer_checkpoint(args, work).resolve()
    results: List[Dict[str, Any]] = []
    floor = feature_floor(ckpt, source, min(args.n, args.floor_sample), args.threads) \
        if args.floor_sample > 0 else None
    runs = [("graphformer", ckpt, w) for w in args.workers]
    if args.graph_only_workers:
        graph_only = graphformer_checkpoint(replace_features(args, ["none"]), work).resolve()
        runs += [(GRAPH_ONLY, graph_only, w) for w in args.graph_only_workers]
    for tool, model, workers in runs:
        name = f"graphformer{'-none' if tool == GRAPH_ONLY else ''}-w{workers}"
        out = work / f"{name}.csv"
        cmd = [sys.executable, "-m", "graphformer", "predict", str(model), str(source), "-o",
               str(out), "--workers", str(workers), "--threads", str(args.threads),
               "--batch-size", str(args.batch_size), "--quiet"]
        row = {"tool": tool, "workers": workers, **measure(name, cmd, work, args.threads)}
        row["molecules"] = count_rows(out)
        results.append(row)
    if args.peers == "chemprop":
        exe = args.chemprop or shutil.which("chemprop")
        if exe is None:
            raise SystemExit("chemprop is not installed: pip install chemprop (in its own "
                             "virtual environment; see DEVELOPERS.md) and put it on PATH, or "
                             "give --chemprop PATH, or --peers none")
        model = chemprop_model(exe, args, work)
        out = work / "chemprop.csv"
        cmd = [exe, "predict", "--test-path", str(source), "--model-paths", str(model),
               "--output", str(out), "--num-workers", "0", "--batch-size",
               str(args.batch_size), "--accelerator", "cpu"]
        row = {"tool": "chemprop", "workers": 0, **measure("chemprop", cmd, work, args.threads)}
        row["molecules"] = count_rows(out)
        results.append(row)
    for row in results:
        row["mol_per_s"] = row["molecules"] / row["seconds"]
    sys.path.insert(0, str(HERE))
    from bench_training import machine_line

    return {"n": args.n, "smiles": args.smiles, "threads": args.threads,
            "batch_size": args.batch_size, "checkpoint": str(ckpt),
            "machine": machine_line(args.threads), "results": results, "feature_floor": floor}


def table(report: Dict[str, Any]) -> str:
    rows = report["results"]
    peer = next((r for r in rows if r["tool"] == "chemprop"), None)
    lines = [f"{report['n']:,} SMILES, {report['threads']} thread(s), batch size "
             f"{report['batch_size']}; {report['machine']}", "",
             "| tool | featurising workers | wall s | molecules/s | peak RSS, largest process "
             "(MB) | peak RSS, all processes (MB) | molecules/s vs chemprop |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        ratio = f"{r['mol_per_s'] / peer['mol_per_s']:.2f}x" if peer else "-"
        workers = "in process" if r["workers"] <= 1 else str(r["workers"])
        if r["tool"] == "chemprop":
            workers, ratio = "in process", "1.00x"
        lines.append(f"| {r['tool']} | {workers} | {r['seconds']:.1f} | {r['mol_per_s']:,.0f} | "
                     f"{r['peak_rss_mb']:,.0f} | {r['tree_rss_mb']:,.0f} | {ratio} |")
    floor = report.get("feature_floor")
    if floor and floor["sets"] != "none":
        ratio = f"{floor['mol_per_s'] / peer['mol_per_s']:.2f}x" if peer else "-"
        lines.append(f"| {floor['sets']} features alone (the floor; first "
                     f"{floor['molecules']:,}) | in process | - | {floor['mol_per_s']:,.0f} | - "
                     f"| - | {ratio} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=1_000_000, help="SMILES to predict (default 1M)")
    p.add_argument("--smiles", default=MOSES_WHEEL,
                   help=f"where the SMILES come from: a molsets wheel (default {MOSES_WHEEL}), "
                   f"'moses', a CSV or .smi file")
    p.add_argument("--work", type=Path, default=Path("bench-screening"),
                   help="folder for the input, the models and the outputs (reused)")
    p.add_argument("--checkpoint", type=Path, help="graphformer checkpoint to use (default: "
                   "train one on ESOL with --epochs)")
    p.add_argument("--epochs", type=int, default=5, help="graphformer's training epochs")
    p.add_argument("--molecule-features", nargs="+",
                   help="graphformer train --molecule-features (default: its own, rdkit2d "
                   "descriptors; 'none' for the graph alone, as chemprop's default)")
    p.add_argument("--chemprop-epochs", type=int, default=5)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                   help="graphformer predict --workers values, one run each")
    p.add_argument("--graph-only-workers", type=int, nargs="*", default=[],
                   help="also predict, in the same run, with a checkpoint trained with "
                   "--molecule-features none (the graph alone, as chemprop's default), once "
                   "per value of --workers given here (default: not)")
    p.add_argument("--peers", choices=PEERS, default="chemprop")
    p.add_argument("--chemprop", help="the chemprop executable (default: on PATH)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128,
                   help="molecules per model step, both tools")
    p.add_argument("--floor-sample", type=int, default=2000,
                   help="time the checkpoint's molecule features alone on this many of the "
                   "SMILES, in one process: the floor of any predict that computes them "
                   "(0: skip)")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.n < 1 or args.threads < 1 or any(w < 0 for w in args.workers
                                              + args.graph_only_workers):
        raise SystemExit("-n and --threads must be >= 1, --workers >= 0")
    report = run(args)
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
