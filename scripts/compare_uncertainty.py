"""graphformer's predictive uncertainty against chemprop's, method by method,
on the same split files and seeds, scored by the same functions.

For every data set, seed and method (``ensemble``: K models trained by MSE,
their spread (graph transformers alone: ``--kernel-member none``, as
chemprop's ensemble is of its D-MPNNs alone); ``mve``: one model with a
mean-variance head; ``evidential``:
one model with an evidential head, regulariser weight ``--evidential-lambda``
for both tools; ``default``: graphformer's defaults as a user trains them,
the ensemble of K with its fingerprint kernel member where ``auto`` adds one,
graphformer only: chemprop has no counterpart, its own ensemble is the row to
compare with):

- ``graphformer train --loss ... --ensemble ...`` runs as a user runs it (a
  fresh process) and ``graphformer evaluate --interval C`` scores its
  checkpoint: its calibration was fitted on the validation part at the end
  of training;
- ``chemprop train`` runs on the train / valid / test files of graphformer's
  split (``--task-type regression`` with ``--ensemble-size K``,
  ``regression-mve``, ``regression-evidential --v-kl LAMBDA``), and
  ``chemprop predict`` gives the validation and test predictions with their
  variances (``--uncertainty-method ensemble`` / ``mve`` /
  ``evidential-total``; the ensemble's variance is computed from the
  members' unrounded predictions, as chemprop's estimator computes it).
  Their calibration (scale and variance floor) is fitted on chemprop's
  validation predictions by the same function as graphformer's
  (:func:`graphformer.train.uncertainty.fit_calibration`), and the test part
  is scored by the same
  :func:`~graphformer.train.uncertainty.uncertainty_metrics`. As a check of
  the z-scaling, chemprop's own ``--calibration-method zscaling`` (fitted on
  the same validation file) is run too, and the NLL of its calibrated test
  variances is reported beside that of our z-scaling alone (no floor).

chemprop is a benchmark peer, never a dependency: install it beside
graphformer (``pip install chemprop``; its own virtual environment is fine)
and give its executable with ``--chemprop`` when it is not on ``PATH``.

    python scripts/compare_uncertainty.py --datasets esol --seeds 0 --json unc.json
    python scripts/compare_uncertainty.py --markdown-from unc.json

With an existing ``--json`` file the comparison continues it: the runs it
holds are kept and not made again (its settings must be the same).
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from graphformer.train import RunConfig, prepare
from graphformer.train.config import DataConfig, TrainConfig
from graphformer.train.uncertainty import (DEFAULT_COVERAGE, DEFAULT_EVIDENTIAL_LAMBDA,
                                           fit_calibration, fit_zscale, gaussian_nll,
                                           uncertainty_metrics)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_training import machine_line  # noqa: E402  (sibling script modules)
from chemprop_peer import read_targets, write_split_files  # noqa: E402

METHODS = ("ensemble", "mve", "evidential", "default")
#: methods chemprop has no counterpart of
GRAPHFORMER_ONLY = ("default",)
TOOLS = ("graphformer", "chemprop")
#: the columns of the table: (label, where in a run's result)
COLUMNS = (("test RMSE", "rmse"), ("NLL", "nll"), ("miscal. area", "miscalibration_area"),
           ("ENCE", "ence"), ("Spearman", "spearman"),
           ("coverage (conformal)", "conformal_coverage"),
           ("width (conformal)", "conformal_width"), ("coverage (z-scaled)", "zscale_coverage"))


def graphformer_flags(method: str, ensemble: int, lam: float) -> List[str]:
    """The ``graphformer train`` flags of a method."""
    if method == "ensemble":
        # graph transformers alone, as chemprop's ensemble is of D-MPNNs alone
        return ["--loss", "mse", "--ensemble", str(ensemble), "--kernel-member", "none"]
    if method == "default":
        return ["--loss", "mse", "--ensemble", str(ensemble)]
    if method == "mve":
        return ["--loss", "mve", "--ensemble", "1"]
    return ["--loss", "evidential", "--ensemble", "1", "--evidential-lambda", str(lam)]


def chemprop_flags(method: str, ensemble: int, lam: float) -> Tuple[List[str], str]:
    """The ``chemprop train`` flags of a method and its ``--uncertainty-method``."""
    if method == "ensemble":
        return ["--task-type", "regression", "--ensemble-size", str(ensemble)], "ensemble"
    if method == "mve":
        return ["--task-type", "regression-mve"], "mve"
    if method == "evidential":
        return ["--task-type", "regression-evidential", "--v-kl", str(lam)], "evidential-total"
    raise ValueError(f"chemprop has no counterpart of the method {method!r}")


def flatten(rmse: float, metrics: Dict[str, Any]) -> Dict[str, Any]:
    """One run's numbers: the test RMSE and the test part's uncertainty
    metrics (z-scaled), with the interval columns of :data:`COLUMNS`."""
    interval = metrics["interval"]
    conformal, zscale = interval.get("conformal") or {}, interval.get("zscale") or {}
    return {"rmse": rmse, "nll": metrics["nll"],
            "miscalibration_area": metrics["miscalibration_area"], "ence": metrics["ence"],
            "spearman": metrics["spearman"], "uncalibrated": metrics["uncalibrated"],
            "conformal_coverage": conformal.get("coverage"),
            "conformal_width": conformal.get("width"),
            "zscale_coverage": zscale.get("coverage"), "level": interval["level"]}


def run_graphformer(name: str, seed: int, method: str, args: argparse.Namespace,
                    root: Path) -> Dict[str, Any]:
    """``graphformer train`` then ``graphformer evaluate --interval``, each in
    a fresh process; the test part's numbers and the seconds of training."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "graphformer", "train", "--quiet", "--dataset", name,
               "--split", "scaffold", "--seed", str(seed), "--epochs", str(args.epochs),
               "--threads", str(args.threads), "--root", str(root), "--run-dir", str(run_dir),
               *graphformer_flags(method, args.ensemble, args.evidential_lambda)]
        start = time.perf_counter()
        _run(cmd)
        seconds = time.perf_counter() - start
        out = _run([sys.executable, "-m", "graphformer", "evaluate", str(run_dir / "best.pt"),
                    "--parts", "test", "--interval", str(args.interval), "--root", str(root)])
    result = json.loads(out)
    return {"seconds": seconds, **flatten(result["test"]["rmse"],
                                          result["uncertainty"]["test"]),
            "spread": result["uncertainty"]["spread"],
            "command": "graphformer train " + " ".join(graphformer_flags(
                method, args.ensemble, args.evidential_lambda))}


def read_predictions(path: Path, tasks: int) -> Tuple[torch.Tensor, Optional[torch.Tensor],
                                                      List[torch.Tensor]]:
    """chemprop's prediction file: the means ``[n, T]``, the variances
    (``*_unc`` columns; None without), and each member's predictions (the
    ``*_individual`` file beside it, when there is one)."""
    def table(p: Path) -> Tuple[List[str], List[List[str]]]:
        with open(p, newline="") as fh:
            rows = list(csv.reader(fh))
        return rows[0], rows[1:]

    header, rows = table(path)
    cols = [f"y{t}" for t in range(tasks)]
    mean = torch.tensor([[float(r[header.index(c)]) for c in cols] for r in rows],
                        dtype=torch.float64)
    var = None
    if all(f"{c}_unc" in header for c in cols):
        var = torch.tensor([[float(r[header.index(f"{c}_unc")]) for c in cols] for r in rows],
                           dtype=torch.float64)
    members: List[torch.Tensor] = []
    individual = path.with_name(path.stem + "_individual" + path.suffix)
    if individual.is_file():
        header, rows = table(individual)
        k = 0
        while f"y0_model_{k}" in header:
            members.append(torch.tensor([[float(r[header.index(f"{c}_model_{k}")]) for c in cols]
                                         for r in rows], dtype=torch.float64))
            k += 1
    return mean, var, members


def run_chemprop(prepared: Any, seed: int, method: str, args: argparse.Namespace
                 ) -> Optional[Dict[str, Any]]:
    """chemprop's method on ``prepared``'s split, scored as graphformer's (see
    the module docstring); None when chemprop is not installed."""
    exe = args.chemprop or shutil.which("chemprop")
    if exe is None:
        return None
    train_flags, estimator = chemprop_flags(method, args.ensemble, args.evidential_lambda)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        paths = write_split_files(prepared, tmp_path)
        tasks = len(read_targets(paths["test"])[0])
        cmd = [exe, "train", "--data-path", str(paths["train"]), str(paths["valid"]),
               str(paths["test"]), "--output-dir", str(tmp_path / "out"), "--num-workers", "0",
               "--pytorch-seed", str(seed), *train_flags]
        if args.chemprop_epochs:
            cmd += ["--epochs", str(args.chemprop_epochs)]
        start = time.perf_counter()
        _run(cmd, tmp_path)
        seconds = time.perf_counter() - start
        models = [str(p) for p in sorted((tmp_path / "out").rglob("best.pt"))]
        predicted = {}
        for part in ("valid", "test"):
            out = tmp_path / f"{part}_pred.csv"
            _run([exe, "predict", "--test-path", str(paths[part]), "--output", str(out),
                  "--model-paths", *models, "--uncertainty-method", estimator,
                  "--num-workers", "0"], tmp_path)
            mean, var, members = read_predictions(out, tasks)
            if estimator == "ensemble":   # unrounded: the members' population variance
                stacked = torch.stack(members)
                mean, var = stacked.mean(0), stacked.var(0, correction=0)
            y = torch.tensor(read_targets(paths[part]), dtype=torch.float64)
            predicted[part] = (mean, var.sqrt(), y)
        own = tmp_path / "test_zscaling.csv"   # chemprop's own z-scaling, for the check
        _run([exe, "predict", "--test-path", str(paths["test"]), "--output", str(own),
              "--model-paths", *models, "--uncertainty-method", estimator,
              "--cal-path", str(paths["valid"]), "--calibration-method", "zscaling",
              "--num-workers", "0"], tmp_path)
        _, own_var, _ = read_predictions(own, tasks)
    calibration = fit_calibration(*predicted["valid"])
    zscale = fit_zscale(*predicted["valid"])
    mean, std, y = predicted["test"]
    labelled = ~torch.isnan(y)
    rmse = float(((mean - y)[labelled] ** 2).mean().sqrt())
    metrics = uncertainty_metrics(mean, std, y, calibration, args.interval)
    return {"seconds": seconds, **flatten(rmse, metrics),
            "chemprop_zscaling_nll": float(gaussian_nll(mean, own_var.sqrt(), y).mean()),
            "zscale_only_nll": float(gaussian_nll(mean, std * zscale.to(std), y).mean()),
            "zscale": calibration.zscale, "floor": calibration.floor,
            "command": "chemprop train " + " ".join(train_flags)
            + f" ; chemprop predict --uncertainty-method {estimator}"}


def _run(cmd: Sequence[str], cwd: Optional[Path] = None) -> str:
    proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    return proc.stdout


def _cell(values: List[Optional[float]]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.pstdev(values):.3f}"


def markdown(results: Dict[str, Any]) -> str:
    """The README table of a results JSON: per data set, method and tool (in
    the order of :data:`METHODS` and :data:`TOOLS` within each data set), the
    mean (± population std over the seeds) of every column."""
    level = results["interval"]
    lines = [f"Machine: {results['machine']}. Scaffold split, seeds "
             f"{' '.join(map(str, results['seeds']))}; graphformer {results['epochs']} epochs, "
             f"chemprop {results['chemprop_epochs'] or 'its default 50'} epochs; ensembles of "
             f"{results['ensemble']}; evidential regulariser {results['evidential_lambda']}. "
             f"Test part; NLL, miscalibration area and ENCE of the calibrated std (scale and "
             f"variance floor fitted on the validation part, the same function for both "
             f"tools); intervals of "
             f"coverage {level} calibrated on the validation part.", "",
             "| data set | method | tool | " + " | ".join(c for c, _ in COLUMNS) + " | s |",
             "| --- | --- | --- |" + " --- |" * (len(COLUMNS) + 1)]
    groups: Dict[Tuple[str, str, str], List[Dict[str, Any]]] = {}
    for r in results["runs"]:
        groups.setdefault((r["dataset"], r["method"], r["tool"]), []).append(r)
    datasets = list(dict.fromkeys(name for name, _, _ in groups))
    order = sorted(groups, key=lambda g: (datasets.index(g[0]), METHODS.index(g[1]),
                                          TOOLS.index(g[2])))
    for name, method, tool in order:
        runs = groups[(name, method, tool)]
        cells = [_cell([r.get(key) for r in runs]) for _, key in COLUMNS]
        seconds = statistics.mean(r["seconds"] for r in runs)
        lines.append(f"| {name} | {method} | {tool} | " + " | ".join(cells)
                     + f" | {seconds:.0f} |")
    checks = [r for r in results["runs"] if "chemprop_zscaling_nll" in r]
    if checks:
        lines += ["", "z-scaling check (chemprop's predictions): NLL with our z-scaling alone "
                  "(no floor) / with chemprop's own: " + "; ".join(
                      f"{r['dataset']} {r['method']} seed {r['seed']}: "
                      f"{r.get('zscale_only_nll', r['nll']):.4f} / "
                      f"{r['chemprop_zscaling_nll']:.4f}" for r in checks)]
    return "\n".join(lines)


def record(results: Dict[str, Any], run: Dict[str, Any], path: Optional[Path]) -> None:
    """Add one run to ``results``, print its line, and write ``results`` to
    ``path`` (after every run: a late failure keeps the rest)."""
    results["runs"].append(run)
    print(f"{run['dataset']} seed {run['seed']} {run['method']:10s} {run['tool']:11s} RMSE "
          f"{run['rmse']:.3f} NLL {_cell([run['nll']])} ({run['seconds']:.0f} s)", flush=True)
    if path is not None:
        path.write_text(json.dumps(results, indent=2) + "\n")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["esol", "freesolv", "lipophilicity"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    parser.add_argument("--json", type=Path, metavar="PATH",
                        help="write the results as JSON here (rewritten after every run)")
    parser.add_argument("--markdown-from", metavar="JSON",
                        help="only print the README table of the results in JSON")
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs,
                        help="graphformer's epochs per model")
    parser.add_argument("--chemprop-epochs", type=int, default=None,
                        help="chemprop's epochs (default: its own, 50; more than its 2 "
                        "warm-up epochs)")
    parser.add_argument("--ensemble", type=int, default=TrainConfig.ensemble,
                        help="models of the ensemble method, for both tools (default: "
                        "graphformer's default ensemble)")
    parser.add_argument("--evidential-lambda", type=float, default=DEFAULT_EVIDENTIAL_LAMBDA,
                        help="evidence regulariser of both tools (chemprop's --v-kl)")
    parser.add_argument("--interval", type=float, default=DEFAULT_COVERAGE,
                        help="coverage of the calibrated intervals")
    parser.add_argument("--threads", type=int, default=0,
                        help="graphformer's torch CPU threads (0 = torch's default)")
    parser.add_argument("--chemprop", help="chemprop's executable (default: on PATH)")
    args = parser.parse_args(argv)
    if args.markdown_from is not None:
        print(markdown(json.loads(Path(args.markdown_from).read_text())))
        return 0
    threads = args.threads or torch.get_num_threads()
    results: Dict[str, Any] = {
        "machine": machine_line(threads), "seeds": args.seeds, "epochs": args.epochs,
        "chemprop_epochs": args.chemprop_epochs, "ensemble": args.ensemble,
        "evidential_lambda": args.evidential_lambda, "interval": args.interval,
        "runs": [], "skipped": []}
    done = set()
    if args.json is not None and args.json.exists():   # continue an interrupted comparison
        saved = json.loads(args.json.read_text())
        keys = ("epochs", "chemprop_epochs", "ensemble", "evidential_lambda", "interval")
        differ = [k for k in keys if saved.get(k) != results[k]]
        if differ:
            parser.error(f"{args.json} holds runs made with other settings "
                         f"({', '.join(f'{k} {saved.get(k)!r}' for k in differ)}): give "
                         f"another --json, or the same settings to continue it")
        results["runs"] = saved.get("runs", [])
        results["seeds"] = sorted(set(saved.get("seeds", [])) | set(args.seeds))
        done = {(r["dataset"], r["seed"], r["method"], r["tool"]) for r in results["runs"]}
    prepared: Dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as root:
        for name, seed, method, tool in itertools.product(args.datasets, args.seeds,
                                                          args.methods, args.tools):
            if (name, seed, method, tool) in done or (
                    tool == "chemprop" and method in GRAPHFORMER_ONLY):
                continue
            if tool == "graphformer":
                result = run_graphformer(name, seed, method, args, Path(root))
            else:   # the split (scaffold: the same for every seed) as chemprop's files
                if name not in prepared:
                    prepared[name] = prepare(RunConfig(data=DataConfig(
                        dataset=name, split="scaffold", root=root)), log=False)
                result = run_chemprop(prepared[name], seed, method, args)
            if result is None:
                print(f"{tool} is not installed: skipped", flush=True)
                results["skipped"].append(tool)
                continue
            record(results, {**result, "dataset": name, "seed": seed, "method": method,
                             "tool": tool}, args.json)
    print()
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
