"""Training speed on molecules: graphformer's default model against PyG's GIN
(and chemprop, when installed), in one run, on the bundled data.

Measured, for each data set (bundled ESOL and Lipophilicity, scaffold split,
the batches `graphformer train` draws):

- molecules per second of a full training step (forward, backward, AdamW),
  through graphformer's own `train_step`, for the default GraphTransformer
  (one row per attention backend asked for) and for GINBaseline (PyG's GIN
  with the same encoders and head);
- molecules per second of evaluation (forward only, no gradients);
- with --floor: the same model with its attention removed, the node-wise
  work that bounds what any attention implementation can reach; and the
  same model with only its attention's four projections left (queries,
  keys, values and output, copies of the layer's own `Linear` modules, the
  attention between them replaced by a sum): the floor of any
  implementation that keeps the layer's projections, which the floor row
  does not count;
- with --compile: the same default model (each backend asked for)
  compiled as `graphformer train --compile` compiles it
  (`graphformer.train.compiled`: `torch.compile(model, dynamic=True)`,
  inductor with its C++ wrapper) beside the eager one, on prepared batches
  (`model.prepare(batch)`: the edge set computed outside the compiled
  graph, which then has no graph break); the preparation runs inside the
  timed step, so the step does all the eager one does; its warm-up (the
  compilation) is reported apart. With --floor, the attention-removed floor
  is compiled too (a row of its own): the table gives every row's rates as
  a fraction of each floor;
- with --cli: the wall time of `graphformer train` with its defaults (and of
  `--dataset NAME` for each of --cli-datasets), as a new user's first run;
- with --chemprop (chemprop installed as a benchmark peer, never a
  dependency): the wall time of `chemprop train` with its defaults on the
  same split. With --cli, chemprop runs on every data set `graphformer
  train` is timed on, right beside it, and the table gives each pair's
  ratio; --cli-repeats times every pair again, the peer that went first
  going second the next time (this machine's speed drifts by tens of
  percent between minutes: only a ratio of neighbouring runs is sound).

The timings interleave the models and repeat them (--repeats); each figure is
the median. Run on an otherwise idle machine: on 2 cores any second busy
process ruins the numbers.

    python scripts/bench_training.py                       # step and eval rates
    python scripts/bench_training.py --cli --cli-datasets freesolv lipophilicity --chemprop \
        --floor --json bench_training.json
    python scripts/bench_training.py --markdown-from bench_training.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from torch_geometric.loader import DataLoader

from graphformer.models import GINBaseline, GraphTransformer
from graphformer.train import RunConfig, prepare
from graphformer.train.compiled import compile_model, model_input
from graphformer.train.config import DataConfig, TrainConfig
from graphformer.train.data_prep import model_config_for, model_for
from graphformer.train.loop import train_step
from graphformer.train.optim import make_optimizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_attention import Projections  # noqa: E402  (sibling script modules)
from chemprop_peer import run_chemprop  # noqa: E402


def machine_line(threads: Optional[int]) -> str:
    """The CPU, its cores, torch, the threads (left out for None: runs that
    differ in them) and Python, for a benchmark's table."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads_part = "" if threads is None else f"{threads} threads, "
    return (f"{cpu}, {cores} cores, torch {torch.__version__}, {threads_part}"
            f"Python {platform.python_version()}")


def _median_rate(fn: Callable[[], int], repeats: int) -> float:
    """Molecules per second: the median over ``repeats`` timed calls of ``fn``
    (which returns the number of molecules it processed)."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        n = fn()
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


#: the row of the default model with its attention removed
FLOOR = "graphformer, attention removed (floor)"


class _NoAttention(torch.nn.Module):
    """Stands in for a block's attention: zeros, at no cost (the floor row)."""

    def forward(self, x, *args, **kwargs):
        return torch.zeros_like(x)


def _models(cfg: RunConfig, prepared, backends: List[str],
            floor: bool, compile: bool = False) -> Dict[str, torch.nn.Module]:
    model_cfg = model_config_for(cfg, prepared.bench)

    def graphformer(backend: str) -> GraphTransformer:
        return model_for(replace(cfg, train=replace(cfg.train, attention_backend=backend)),
                         prepared.bench)

    def stood_in(stand_in: Callable[[torch.nn.Module], torch.nn.Module]) -> GraphTransformer:
        """The default model with each block's attention stood in for."""
        torch.manual_seed(0)
        model = model_for(cfg, prepared.bench)
        for block in model.blocks:
            block.attn = stand_in(block.attn)
        return model

    models: Dict[str, torch.nn.Module] = {}
    for backend in backends:
        torch.manual_seed(0)
        models[f"graphformer ({backend})"] = graphformer(backend)
        if compile:
            # as `graphformer train --compile` compiles it, fed prepared
            # batches (bench_steps): one graph, no break (tests/nn/test_compile.py)
            torch.manual_seed(0)
            models[f"graphformer ({backend}, compiled)"] = compile_model(graphformer(backend))
    if floor:
        models[FLOOR] = stood_in(lambda attn: _NoAttention())
        # its own four projections, q + k + v where the attention would be
        models["graphformer, attention's projections only"] = stood_in(Projections)
        if compile:   # the floor of a compiled model: the floor compiled alike
            models[f"{FLOOR}, compiled"] = compile_model(stood_in(lambda attn: _NoAttention()))
    torch.manual_seed(0)
    models["GIN"] = GINBaseline(model_cfg)
    return models


def bench_steps(name: str, args: argparse.Namespace) -> List[Dict[str, Any]]:
    """Training-step and evaluation rates of every model on ``name``'s batches."""
    cfg = RunConfig(data=DataConfig(dataset=name, split="scaffold"),
                    train=TrainConfig(seed=0))
    prepared = prepare(cfg, log=False)
    torch.manual_seed(0)
    loader = DataLoader(prepared.subset("train"), batch_size=cfg.train.batch_size, shuffle=True)
    batches = [b for _, b in zip(range(args.batches), loader)]
    eval_batches = list(DataLoader(prepared.subset("valid"), batch_size=cfg.train.batch_size))
    models = _models(cfg, prepared, args.backends, args.floor, args.compile)
    optims = {k: make_optimizer(m, 1e-4, cfg.train.weight_decay) for k, m in models.items()}
    task = prepared.bench.task

    def batch_for(key: str) -> Callable[[Any], Any]:
        """A compiled model takes prepared batches (timed with its step)."""
        model = models[key]
        if isinstance(model, torch._dynamo.eval_frame.OptimizedModule):
            return lambda b: model_input(model._orig_mod, b)
        return lambda b: b

    def steps(key: str) -> Callable[[], int]:
        def run() -> int:
            model, batch = models[key].train(), batch_for(key)
            for b in batches:
                train_step(model, batch(b), optims[key], prepared.y_mean, prepared.y_std, task,
                           cfg.train.grad_clip)
            return sum(b.num_graphs for b in batches)
        return run

    def evals(key: str) -> Callable[[], int]:
        @torch.no_grad()
        def run() -> int:
            model, batch = models[key].eval(), batch_for(key)
            for b in eval_batches:
                model(batch(b))
            return sum(b.num_graphs for b in eval_batches)
        return run

    warmup: Dict[str, float] = {}
    for key in models:            # warm-up: first calls allocate, dispatch (and compile)
        start = time.perf_counter()
        steps(key)()
        evals(key)()
        warmup[key] = time.perf_counter() - start
    train_rates: Dict[str, List[float]] = {k: [] for k in models}
    eval_rates: Dict[str, List[float]] = {k: [] for k in models}
    for _ in range(args.repeats):  # interleaved: drift hits every model alike
        for key in models:
            train_rates[key].append(_median_rate(steps(key), 1))
            eval_rates[key].append(_median_rate(evals(key), 1))
    nodes = sum(b.num_nodes for b in batches) / len(batches)
    rows = []
    for key in models:
        rows.append({"dataset": name, "model": key,
                     "train_mol_s": statistics.median(train_rates[key]),
                     "eval_mol_s": statistics.median(eval_rates[key]),
                     "atoms_per_batch": nodes, "batch_size": cfg.train.batch_size,
                     "warmup_s": warmup[key]})
        print(f"{name:14s} {key:40s} train {rows[-1]['train_mol_s']:7.0f} mol/s   "
              f"eval {rows[-1]['eval_mol_s']:7.0f} mol/s   warm-up {warmup[key]:6.1f} s",
              flush=True)
    return rows


def _timed(cmd: List[str], cwd: Path) -> Dict[str, Any]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return {"command": " ".join(cmd), "seconds": seconds, "stdout": proc.stdout[-2000:]}


def bench_cli(extra: List[str]) -> Dict[str, Any]:
    """Wall time of ``graphformer train`` as a new user's first run: a fresh
    process with an empty data cache (processing the data included)."""
    exe = shutil.which("graphformer") or ""
    cmd = ([exe] if exe else [sys.executable, "-m", "graphformer"]) + ["train", "--quiet"] + extra
    with tempfile.TemporaryDirectory() as tmp:
        result = _timed(cmd + ["--run-dir", str(Path(tmp) / "run"),
                               "--root", str(Path(tmp) / "cache")], Path(tmp))
        summary = json.loads((Path(tmp) / "run" / "summary.json").read_text())
    result["command"] = " ".join(["graphformer", "train", *extra])
    result["test_at_best"] = summary[f"test_{summary['metric']}_at_best"]
    result["metric"] = summary["metric"]
    print(f"{result['command']}: {result['seconds']:.1f} s, test {result['metric']} "
          f"{result['test_at_best']:.4f}", flush=True)
    return result


def bench_chemprop(name: str, epochs: Optional[int]) -> Optional[Dict[str, Any]]:
    """chemprop's defaults on the same scaffold split, timed as a whole run
    (see ``chemprop_peer.py``); None when chemprop is not installed or fails
    (a peer's failure is reported, not fatal)."""
    cfg = RunConfig(data=DataConfig(dataset=name, split="scaffold"), train=TrainConfig(seed=0))
    prepared = prepare(cfg, log=False)
    try:
        result = run_chemprop(prepared, seed=0, epochs=epochs)
    except RuntimeError as err:
        print(f"chemprop {name}: {err}", flush=True)
        return None
    if result is None:
        print("chemprop is not installed: skipped (pip install chemprop)", flush=True)
        return None
    result.update(dataset=name, train_molecules=len(prepared.split["train"]))
    print(f"chemprop {name}: {result['seconds']:.1f} s for {result['epochs']} epochs", flush=True)
    return result


def _seconds(runs: List[Dict[str, Any]]) -> str:
    return " / ".join(f"{r['seconds']:.0f}" for r in runs) + " s"


def markdown(results: Dict[str, Any]) -> str:
    lines = [f"Machine: {results['machine']}."]
    # the floors timed (--floor; compiled too with --compile): a column each,
    # every row's rates as a fraction of the floor's (training / evaluation)
    floors = [f for f in (FLOOR, f"{FLOOR}, compiled")
              if any(r["model"] == f for r in results["steps"])]
    if results["datasets"]:
        heads = ["of the floor" if f == FLOOR else "of the compiled floor" for f in floors]
        lines += ["", "| data set | model | training step, mol/s | evaluation, mol/s | "
                  "vs GIN (train) |" + "".join(f" {h} (train / eval) |" for h in heads),
                  "| --- | --- | ---: | ---: | ---: |" + " ---: |" * len(floors)]
    for name in results["datasets"]:
        rows = [r for r in results["steps"] if r["dataset"] == name]
        by_model = {r["model"]: r for r in rows}
        gin = by_model["GIN"]
        for r in rows:
            ratio = r["train_mol_s"] / gin["train_mol_s"]
            cells = "".join(f" {r['train_mol_s'] / by_model[f]['train_mol_s']:.2f}× / "
                            f"{r['eval_mol_s'] / by_model[f]['eval_mol_s']:.2f}× |"
                            for f in floors)
            lines.append(f"| {name} | {r['model']} | {r['train_mol_s']:.0f} | "
                         f"{r['eval_mol_s']:.0f} | {ratio:.2f}× |{cells}")
    cli, peers = results.get("cli", []), [c for c in results.get("chemprop", []) if c]
    if cli:
        lines += ["", "| command | wall time (each run) | chemprop defaults, same split | "
                  "graphformer ÷ chemprop (each pair; median) | test metric at best "
                  "validation epoch |", "| --- | ---: | ---: | ---: | ---: |"]
        for command in dict.fromkeys(r["command"] for r in cli):
            ours = [r for r in cli if r["command"] == command]
            name = ours[0].get("dataset")
            theirs = [c for c in peers if name is not None and c["dataset"] == name]
            pairs = {c.get("repeat"): c for c in theirs}
            ratios = [r["seconds"] / pairs[r.get("repeat")]["seconds"]
                      for r in ours if r.get("repeat") in pairs]
            ratio = (" / ".join(f"{x:.2f}" for x in ratios)
                     + f"; **{statistics.median(ratios):.2f}×**") if ratios else ""
            lines.append(f"| `{command}` | {_seconds(ours)} | "
                         f"{_seconds(theirs) if theirs else ''} | {ratio} | "
                         + ", ".join(dict.fromkeys(f"{r['metric']} {r['test_at_best']:.3f}"
                                                   for r in ours)) + " |")
        timed = {r.get("dataset") for r in cli}
        peers = [c for c in peers if c["dataset"] not in timed]
    if peers:   # chemprop timed without graphformer's run beside it
        lines += ["", "| command | wall time |", "| --- | ---: |"]
        for c in peers:
            lines.append(f"| chemprop defaults, {c['dataset']} ({c['epochs']} epochs) | "
                         f"{c['seconds']:.0f} s |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="*", default=["esol", "lipophilicity"],
                        help="data sets of the step timings (none: time the runs only)")
    parser.add_argument("--backends", nargs="+", default=["auto"],
                        help="attention backends of graphformer to time (auto = the default)")
    parser.add_argument("--floor", action="store_true",
                        help="also time the default model with attention removed: the "
                        "node-wise work (encoders, feed-forward, norms, head, optimiser) that "
                        "no attention implementation can go below")
    parser.add_argument("--compile", action="store_true",
                        help="also time each graphformer model compiled as `graphformer "
                        "train --compile` compiles it (torch.compile, dynamic shapes, "
                        "inductor's C++ wrapper) on prepared batches (model.prepare, timed "
                        "with the step), and with --floor the floor compiled too; the "
                        "warm-up includes the compilation")
    parser.add_argument("--batches", type=int, default=8, help="training batches per timing")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="0 = torch's default")
    parser.add_argument("--cli", action="store_true", help="time `graphformer train`")
    parser.add_argument("--cli-datasets", nargs="*", default=[], metavar="NAME",
                        help="also time `graphformer train --dataset NAME` for each")
    parser.add_argument("--chemprop", action="store_true",
                        help="time chemprop's defaults on the same split, if installed")
    parser.add_argument("--chemprop-epochs", type=int, default=None)
    parser.add_argument("--cli-repeats", type=int, default=1, metavar="N",
                        help="time every `graphformer train` (and chemprop beside it) N "
                        "times, alternating which of the two goes first")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--markdown-from", type=Path, help="print the README table of a --json")
    args = parser.parse_args(argv)
    if args.cli_repeats < 1:
        parser.error(f"--cli-repeats must be >= 1, got {args.cli_repeats}")
    if args.markdown_from:
        print(markdown(json.loads(args.markdown_from.read_text())))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    results: Dict[str, Any] = {"machine": machine_line(threads), "datasets": args.datasets,
                               "steps": [], "cli": [], "chemprop": []}
    print(results["machine"], flush=True)
    def save() -> None:      # after every stage: a late failure keeps the rest
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")

    for name in args.datasets:
        results["steps"] += bench_steps(name, args)
        save()
    runs = ([("esol", [])] if args.cli else []) + \
        [(name, ["--dataset", name]) for name in args.cli_datasets]
    for repeat in range(args.cli_repeats):
        for name, extra in runs:
            order = ["graphformer", "chemprop"] if args.chemprop else ["graphformer"]
            for peer in order if repeat % 2 == 0 else order[::-1]:
                if peer == "graphformer":
                    result: Optional[Dict[str, Any]] = bench_cli(extra)
                    results["cli"].append(result)
                else:
                    result = bench_chemprop(name, args.chemprop_epochs)
                    results["chemprop"].append(result)
                if result is not None:
                    result.update(dataset=name, repeat=repeat)
                save()
    if args.chemprop and not runs:
        for name in args.datasets:
            results["chemprop"].append(bench_chemprop(name, args.chemprop_epochs))
            save()
    print()
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
