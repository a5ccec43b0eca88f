"""Node classification on one large graph (issue 26): graphformer against PyG's
GraphSAGE and SGFormer, through the same sampler and the same training loop,
in one run.

The graph is a planted partition (``scripts/make_planted_graph.py``: C
communities, each edge inside its source's community with probability
``p_in``, noisy community features, label = community), generated once (and
reused when its files match the flags). Then, each phase in a child process of
its own, so that no phase's peak memory is inherited by the next:

1. conversion: ``convert_edge_list`` of the edge list and the node files into an
   on-disk, memory-mapped graph (seconds, peak RSS, bytes on disk);
2. for each model, training by mini-batches drawn from the on-disk graph
   through PyG's ``NodeLoader`` and graphformer's neighbour sampler (fan-outs
   ``--fanout``, ``--batch-size`` seeds, at most ``--max-steps`` steps of at
   most ``--epochs`` epochs; the same seeds in the same order and the same
   sampled subgraphs for every model, AdamW with the same settings), then
   inference of every node (``--infer all``) or of the validation and test
   nodes (``--infer eval``) by sampled batches of ``--eval-batch-size``, which
   gives the validation and test accuracy.

Peak RSS is the child's ``VmHWM`` (its high-water mark: it counts the pages of
the memory-mapped graph files it touched, which the kernel can drop); the
largest anonymous RSS (``RssAnon``, sampled every 50 ms) is the memory the
process cannot give back.

Models (``--models``): ``graphformer`` (``NodeClassifier``: the NodeTransformer
over the sampled subgraph's edges, undirected, with self loops),
``graphformer-khop`` (the same with the 2-hop pattern added), ``graphsage``
(``torch_geometric.nn.models.GraphSAGE``), ``sgformer``
(``torch_geometric.nn.models.SGFormer``: linear global attention over the
sampled subgraph plus a GCN). All have ``--hidden`` channels and ``--layers``
layers (SGFormer: that many GCN layers and one attention layer).

    python scripts/bench_large_graph.py --nodes 1000000 --edges 10000000 \
        --max-steps 150 --threads 1 --json bench_large_graph.json
    python scripts/bench_large_graph.py --nodes 10000000 --edges 100000000 \
        --models graphformer --max-steps 30 --infer none --threads 1
    python scripts/bench_large_graph.py --markdown-from bench_large_graph.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

HERE = Path(__file__).resolve().parent
MODELS = ("graphformer", "graphformer-khop", "graphsage", "sgformer")
PEER = "graphsage"
GIB = 1024 ** 3


# -- memory ------------------------------------------------------------------------------------

def _status() -> Dict[str, int]:
    """``/proc/self/status`` memory fields in bytes (empty where it is absent)."""
    out: Dict[str, int] = {}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


class MemoryWatch:
    """The largest anonymous RSS seen (sampled every ``interval`` s) and the
    process's high-water RSS."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.max_anon = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.max_anon = max(self.max_anon, _status().get("RssAnon", 0))
            self._stop.wait(self.interval)

    def __enter__(self) -> "MemoryWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def snapshot(self) -> Dict[str, float]:
        s = _status()
        self.max_anon = max(self.max_anon, s.get("RssAnon", 0))
        peak = s.get("VmHWM")
        if peak is None:   # not Linux: getrusage's peak (KiB on Linux, bytes on macOS)
            import resource
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            peak *= 1 if sys.platform == "darwin" else 1024
        return {"peak_rss_gb": peak / GIB, "peak_anon_gb": self.max_anon / GIB}


# -- the machine -------------------------------------------------------------------------------

def machine_line(threads: int) -> str:
    """``scripts/bench_training.py``'s machine line, with the PyG version, the
    memory and the allocator."""
    sys.path.insert(0, str(HERE))
    import torch_geometric
    from bench_training import machine_line as base_line

    mmap = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    allocator = "glibc malloc, defaults" if mmap is None else \
        f"glibc malloc, MALLOC_MMAP_THRESHOLD_={mmap} " \
        f"MALLOC_TRIM_THRESHOLD_={os.environ.get('MALLOC_TRIM_THRESHOLD_', 'default')}"
    try:
        memory = f", {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / GIB:.0f} GB RAM"
    except (ValueError, OSError, AttributeError):
        memory = ""
    return f"{base_line(threads)}{memory}, PyG {torch_geometric.__version__}, {allocator}"


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


# -- the phases (each runs in a child process) -------------------------------------------------

def _graph_dirs(args) -> Dict[str, Path]:
    name = f"planted_n{args.nodes}_e{args.edges}_c{args.classes}_f{args.features}_p{args.p_in}" \
           f"_s{args.seed}"
    return {"files": Path(args.workdir) / name, "graph": Path(args.workdir) / f"{name}.graph"}


def phase_generate(args) -> Dict[str, Any]:
    sys.path.insert(0, str(HERE))
    import make_planted_graph as mpg

    dirs = _graph_dirs(args)
    with MemoryWatch() as watch:
        started = time.perf_counter()
        meta = mpg.generate(dirs["files"], args.nodes, args.edges, args.classes, args.features,
                            args.p_in, args.seed, log=None)
        seconds = time.perf_counter() - started
        return {"seconds": seconds, **watch.snapshot(),
                "bytes": sum(meta["bytes"].values())}


def phase_convert(args) -> Dict[str, Any]:
    import torch

    from graphformer.data.edge_list.convert import convert_edge_list

    torch.set_num_threads(args.threads)
    dirs = _graph_dirs(args)
    with MemoryWatch() as watch:
        started = time.perf_counter()
        graph = convert_edge_list(dirs["files"] / "edges.txt", dirs["graph"],
                                  node_features=dirs["files"] / "x.csv",
                                  node_labels=dirs["files"] / "y.csv",
                                  chunk_rows=args.chunk_rows, overwrite=True)
        seconds = time.perf_counter() - started
        size = sum(p.stat().st_size for p in dirs["graph"].iterdir())
        return {"seconds": seconds, **watch.snapshot(), "bytes": size,
                "nodes": graph.num_nodes, "edges": graph.num_edges,
                "features": graph.num_features}


def build_model(name: str, num_features: int, num_classes: int, num_nodes: int, args):
    """The model ``name`` and a function ``(model, batch, generator) -> seed logits``."""
    import torch

    if name.startswith("graphformer"):
        from graphformer.models.node_transformer import NodeClassifier, NodeTransformerConfig

        patterns = ("graph", "k_hop") if name == "graphformer-khop" else ("graph",)
        cfg = NodeTransformerConfig(in_channels=num_features, num_classes=num_classes,
                                    hidden=args.hidden, layers=args.layers, heads=args.heads,
                                    dropout=args.dropout, patterns=patterns, k=2)
        model = NodeClassifier(cfg, num_nodes, features=True)
        return model, lambda m, b, g: m(b, generator=g)
    if name == "graphsage":
        from torch_geometric.nn.models import GraphSAGE

        model = GraphSAGE(num_features, args.hidden, num_layers=args.layers,
                          out_channels=num_classes, dropout=args.dropout)
        return model, lambda m, b, g: m(b.x, b.edge_index)[:b.batch_size]
    if name == "sgformer":
        from torch_geometric.nn import models as pyg_models

        if not hasattr(pyg_models, "SGFormer"):
            raise RuntimeError("torch_geometric.nn.models has no SGFormer in this PyG")
        model = pyg_models.SGFormer(num_features, args.hidden, num_classes,
                                    trans_num_layers=1, trans_num_heads=1,
                                    trans_dropout=args.dropout, gnn_num_layers=args.layers,
                                    gnn_dropout=args.dropout)

        def run(m, b, g):
            one_graph = torch.zeros(b.x.size(0), dtype=torch.long)
            return m(b.x, b.edge_index, one_graph)[:b.batch_size]
        return model, run
    raise ValueError(f"unknown model {name!r}; choose from {MODELS}")


def phase_train(args) -> Dict[str, Any]:
    import torch
    import torch.nn.functional as F
    from torch_geometric.loader import NodeLoader

    from graphformer.data.sampling import neighbor_sampler
    from graphformer.datasets.splits import stratified_split
    from graphformer.train.node import NodeDataConfig, load_node_graph

    torch.set_num_threads(args.threads)
    name = args.model
    dirs = _graph_dirs(args)
    result: Dict[str, Any] = {"model": name}
    with MemoryWatch() as watch:
        started = time.perf_counter()
        graph = load_node_graph(NodeDataConfig(graph=str(dirs["graph"])))
        split = stratified_split(graph.y, 0.6, 0.2, args.seed)
        result["load_seconds"] = time.perf_counter() - started

        def loader(nodes, batch_size, shuffle, seed):
            sampler = neighbor_sampler(graph.source, list(args.fanout), backend="graphformer",
                                       seed=seed)
            return NodeLoader(graph.source, node_sampler=sampler, input_nodes=nodes,
                              batch_size=batch_size, shuffle=shuffle,
                              generator=torch.Generator().manual_seed(seed))

        torch.manual_seed(args.seed)
        model, forward = build_model(name, graph.num_features, graph.num_classes,
                                     graph.num_nodes, args)
        result["parameters"] = sum(p.numel() for p in model.parameters())
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr,
                                      weight_decay=args.weight_decay)
        generator = torch.Generator().manual_seed(args.seed)
        steps = seeds = timed_seeds = 0
        sample_s = step_s = 0.0
        sampled_nodes = sampled_edges = 0
        model.train()
        for epoch in range(args.epochs):
            batches = iter(loader(split["train"], args.batch_size, True, args.seed + epoch))
            while steps < args.max_steps:
                t0 = time.perf_counter()
                batch = next(batches, None)
                if batch is None:
                    break
                t1 = time.perf_counter()
                optimizer.zero_grad()
                logits = forward(model, batch, generator)
                loss = F.cross_entropy(logits, batch.y[:batch.batch_size])
                loss.backward()
                optimizer.step()
                t2 = time.perf_counter()
                steps += 1
                seeds += batch.batch_size
                if steps > args.warmup:
                    sample_s += t1 - t0
                    step_s += t2 - t1
                    timed_seeds += batch.batch_size
                    sampled_nodes += batch.num_nodes
                    sampled_edges += batch.edge_index.size(1)
            if steps >= args.max_steps:
                break
        timed = max(steps - args.warmup, 0)
        result.update({
            "steps": steps, "seeds_trained": seeds, "timed_steps": timed,
            "final_loss": float(loss.detach()) if steps else float("nan"),
            "train_seeds_s": timed_seeds / (sample_s + step_s) if timed else float("nan"),
            "step_seeds_s": timed_seeds / step_s if timed else float("nan"),
            "sample_ms": 1e3 * sample_s / timed if timed else float("nan"),
            "step_ms": 1e3 * step_s / timed if timed else float("nan"),
            "nodes_per_batch": sampled_nodes / timed if timed else float("nan"),
            "edges_per_batch": sampled_edges / timed if timed else float("nan"),
        })
        train_mem = watch.snapshot()
        result.update({f"train_{k}": v for k, v in train_mem.items()})

        if args.infer != "none":
            model.eval()
            if args.infer == "all":
                nodes = torch.arange(graph.num_nodes)
            elif args.infer == "eval":
                nodes = torch.cat([split["valid"], split["test"]])
            else:   # a uniform sample of all nodes; the accuracy of its valid/test nodes
                gen = torch.Generator().manual_seed(args.seed + 20_000)
                nodes = torch.randperm(graph.num_nodes, generator=gen)[:args.infer_nodes]
                nodes = nodes.sort().values
            preds = torch.full((graph.num_nodes,), -1, dtype=torch.long)
            t0 = time.perf_counter()
            with torch.no_grad():
                for batch in loader(nodes, args.eval_batch_size, False, args.seed + 10_000):
                    ids = batch.n_id[:batch.batch_size]
                    preds[ids] = forward(model, batch, generator).argmax(-1)
            seconds = time.perf_counter() - t0
            result.update({"infer": args.infer, "infer_nodes": int(nodes.numel()),
                           "infer_seconds": seconds,
                           "infer_nodes_s": nodes.numel() / seconds,
                           "infer_all_seconds": graph.num_nodes * seconds / nodes.numel()})
            for part in ("valid", "test"):
                idx = split[part][preds[split[part]] >= 0]
                result[f"{part}_nodes"] = int(idx.numel())
                result[f"{part}_accuracy"] = float((preds[idx] == graph.y[idx]).float().mean())
        result.update(watch.snapshot())
    return result


PHASES = {"generate": phase_generate, "convert": phase_convert, "train": phase_train}


def run_child(phase: str, args, extra: Sequence[str] = ()) -> Dict[str, Any]:
    """Run ``phase`` in a fresh Python process (its own peak RSS) and return its result."""
    out = Path(args.workdir) / f".bench_{phase}_{os.getpid()}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--phase", phase,
           "--phase-out", str(out), *args.child_argv, *extra]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    root = str(HERE.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    load = load_average()
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"phase {phase} {' '.join(extra)} failed (exit {proc.returncode})")
    result = json.loads(out.read_text())
    out.unlink()
    result["load_before"] = load
    return result


# -- the report --------------------------------------------------------------------------------

def _fmt(v: Any, spec: str = ",.0f") -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "–"
    return format(v, spec)


def markdown(results: Dict[str, Any]) -> str:
    g = results["graph"]
    lines = [f"Machine: {results['machine']}", "",
             f"Graph: planted partition, {g['nodes']:,} nodes, {g['edges']:,} directed edges, "
             f"{g['classes']} classes, {g['features']} features, p_in {g['p_in']}, seed "
             f"{g['seed']}; split 60/20/20 (stratified); fan-outs {results['fanout']}, batches "
             f"of {results['batch_size']} seeds, AdamW lr {results['lr']}, hidden "
             f"{results['hidden']}, {results['layers']} layers.", ""]
    if any(results.get(phase) for phase in ("generate", "convert")):
        lines += ["| phase | seconds | peak RSS (GB) | peak anon. RSS (GB) | on disk (GB) | load |",
                  "| --- | ---: | ---: | ---: | ---: | --- |"]
    for phase in ("generate", "convert"):
        r = results.get(phase)
        if r:
            lines.append(f"| {phase} | {r['seconds']:.1f} | {r['peak_rss_gb']:.2f} | "
                         f"{r['peak_anon_gb']:.2f} | {r['bytes'] / GIB:.2f} | "
                         f"{r.get('load_before', '')} |")
    lines += ["", "| model | params | steps (seeds) | seeds/s (sample + step) | sample ms | "
              "step ms | nodes / edges per batch | train peak RSS (GB) | infer | infer s "
              "(nodes/s) | valid acc (nodes) | test acc (nodes) | seeds/s ÷ GraphSAGE | load |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: "
              "| ---: | --- |"]
    peer = next((r for r in results["models"] if r["model"] == PEER), None)
    for r in results["models"]:
        if "error" in r:
            lines.append(f"| {r['model']} | failed: {r['error']} |" + " |" * 12)
            continue
        ratio = r["train_seeds_s"] / peer["train_seeds_s"] if peer and "error" not in peer \
            else None
        infer = f"{_fmt(r.get('infer_seconds'), '.1f')} ({_fmt(r.get('infer_nodes_s'))})" \
            if r.get("infer") else "–"
        if r.get("infer") == "sample":
            infer += f"; all: {_fmt(r['infer_all_seconds'], '.0f')}"
        lines.append(
            f"| {r['model']} | {r['parameters']:,} | {r['steps']} ({r['seeds_trained']:,}) | "
            f"{_fmt(r['train_seeds_s'])} | {_fmt(r['sample_ms'], '.0f')} | "
            f"{_fmt(r['step_ms'], '.0f')} | {_fmt(r['nodes_per_batch'])} / "
            f"{_fmt(r['edges_per_batch'])} | {r['train_peak_rss_gb']:.2f} | "
            f"{r.get('infer', 'none')} {_fmt(r.get('infer_nodes'), ',')} | {infer} | "
            f"{_fmt(r.get('valid_accuracy'), '.4f')} ({_fmt(r.get('valid_nodes'), ',')}) | "
            f"{_fmt(r.get('test_accuracy'), '.4f')} ({_fmt(r.get('test_nodes'), ',')}) | "
            f"{_fmt(ratio, '.2f')}{'×' if ratio is not None else ''} | "
            f"{r.get('load_before', '')} |")
    return "\n".join(lines)


# -- the command -------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("graph")
    g.add_argument("--nodes", type=int, default=1_000_000)
    g.add_argument("--edges", type=int, default=10_000_000)
    g.add_argument("--classes", type=int, default=16)
    g.add_argument("--features", type=int, default=32)
    g.add_argument("--p-in", type=float, default=0.5)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--workdir", default="/tmp/bench_large_graph",
                   help="where the generated files and the converted graph go")
    g.add_argument("--chunk-rows", type=int, default=1_000_000,
                   help="convert_edge_list's chunk")
    g.add_argument("--skip-convert", action="store_true",
                   help="reuse an earlier conversion in --workdir (not measured)")
    g.add_argument("--cleanup", action="store_true",
                   help="remove the generated files and the converted graph at the end")
    t = p.add_argument_group("training")
    t.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS)
    t.add_argument("--fanout", type=int, nargs="+", default=[10, 10])
    t.add_argument("--batch-size", type=int, default=1024)
    t.add_argument("--eval-batch-size", type=int, default=4096)
    t.add_argument("--epochs", type=int, default=1)
    t.add_argument("--max-steps", type=int, default=100, help="training steps per model")
    t.add_argument("--warmup", type=int, default=2, help="steps left out of the timings")
    t.add_argument("--hidden", type=int, default=64)
    t.add_argument("--layers", type=int, default=2)
    t.add_argument("--heads", type=int, default=4)
    t.add_argument("--dropout", type=float, default=0.1)
    t.add_argument("--lr", type=float, default=0.005)
    t.add_argument("--weight-decay", type=float, default=5e-4)
    t.add_argument("--infer", choices=("all", "eval", "sample", "none"), default="all",
                   help="after training, predict every node, the validation and test "
                        "nodes, --infer-nodes nodes drawn uniformly (the accuracy of the "
                        "validation and test nodes among them; the time of all nodes "
                        "extrapolated), or nothing (no accuracy)")
    t.add_argument("--infer-nodes", type=int, default=100_000)
    t.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--markdown-from", help="print the tables of an earlier --json and exit")
    p.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    p.add_argument("--phase-out", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    if args.markdown_from:
        print(markdown(json.loads(Path(args.markdown_from).read_text())))
        return 0
    if args.phase:
        result = PHASES[args.phase](args)
        Path(args.phase_out).write_text(json.dumps(result))
        return 0
    args.child_argv = argv  # a child ignores what is not its phase's
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(HERE))
    import make_planted_graph as mpg

    dirs = _graph_dirs(args)
    results: Dict[str, Any] = {
        "machine": machine_line(args.threads),
        "command": "python scripts/bench_large_graph.py " + " ".join(argv),
        "graph": {"nodes": args.nodes, "edges": args.edges, "classes": args.classes,
                  "features": args.features, "p_in": args.p_in, "seed": args.seed},
        "fanout": args.fanout, "batch_size": args.batch_size, "lr": args.lr,
        "hidden": args.hidden, "layers": args.layers, "max_steps": args.max_steps,
        "epochs": args.epochs, "models": []}
    print(results["machine"], flush=True)
    params = dict(nodes=args.nodes, edges=args.edges, classes=args.classes,
                  features=args.features, p_in=args.p_in, seed=args.seed)
    if mpg.matches(dirs["files"], **params):
        print(f"reusing the generated graph in {dirs['files']}", flush=True)
    else:
        results["generate"] = run_child("generate", args)
        print(f"generated in {results['generate']['seconds']:.1f} s", flush=True)
    if args.skip_convert and (dirs["graph"] / "meta.json").exists():
        print(f"reusing the converted graph in {dirs['graph']}", flush=True)
    else:
        results["convert"] = run_child("convert", args)
        print(f"converted in {results['convert']['seconds']:.1f} s, peak RSS "
              f"{results['convert']['peak_rss_gb']:.2f} GB", flush=True)
    for name in args.models:
        try:
            r = run_child("train", args, ["--model", name])
        except RuntimeError as err:
            r = {"model": name, "error": str(err)}
        results["models"].append(r)
        if "error" not in r:
            print(f"{name}: {r['train_seeds_s']:,.0f} seeds/s, valid "
                  f"{r.get('valid_accuracy', float('nan')):.4f}, test "
                  f"{r.get('test_accuracy', float('nan')):.4f}, peak RSS "
                  f"{r['peak_rss_gb']:.2f} GB", flush=True)
    ours = next((r for r in results["models"] if r["model"] == "graphformer"
                 and "error" not in r), None)
    peer = next((r for r in results["models"] if r["model"] == PEER and "error" not in r), None)
    if ours and peer:
        results["ratio"] = ours["train_seeds_s"] / peer["train_seeds_s"]
        print(f"graphformer / GraphSAGE training throughput: {results['ratio']:.2f}×; "
              f"test accuracy {ours.get('test_accuracy', float('nan')):.4f} vs "
              f"{peer.get('test_accuracy', float('nan')):.4f}", flush=True)
    print()
    print(markdown(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    if args.cleanup:
        shutil.rmtree(dirs["files"], ignore_errors=True)
        shutil.rmtree(dirs["graph"], ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
