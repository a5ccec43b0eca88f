"""The flags and the train command shared by ``graphformer node`` and
``graphformer link`` (one graph from edge-list files, mini-batch training)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, Dict, Tuple

from ..data.edge_list import delimiter_from_name
from ..errors import ConfigError, UsageError
from ..models.node_transformer import NODE_PATTERNS, NodeTransformerConfig
from ._args import add_threads_argument, positive_int, threads_count
from .train import default_run_dir, init_distributed

#: flags a resumed run takes: where it runs, not what it computes
RESUME_FLAGS = ("help", "resume", "quiet", "device", "threads")


def add_graph_arguments(t: argparse.ArgumentParser, labels: bool) -> None:
    """The graph: an edge list (with node feature and, for ``labels``, label
    files), or a converted graph directory."""
    files = t.add_argument_group("graph (an edge list, or a converted graph directory)")
    files.add_argument("--edges", help="edge list: source target per line")
    files.add_argument("--graph", help="a graph converted by 'graphformer node convert' "
                       "(memory-mapped; for graphs larger than memory)")
    files.add_argument("--node-features", help="node_id, f_1, ..., f_F per line (default: a "
                       "learnable embedding per node)")
    if labels:
        files.add_argument("--node-labels", help="node_id, label per line")
    files.add_argument("--delimiter", type=delimiter_from_name, default=None,
                       help="for all the files: one character, or tab / space / comma "
                            "(default: detected per file)")
    files.add_argument("--header", action=argparse.BooleanOptionalAction, default=None,
                       help="the edge file has a header line (default: detected)")
    files.add_argument("--node-header", action=argparse.BooleanOptionalAction, default=None,
                       help="the node files have header lines (default: detected per file)")
    files.add_argument("--comment", default="#", help="comment prefix (default '#')")


def add_model_arguments(t: argparse.ArgumentParser, dropout: float) -> argparse._ArgumentGroup:
    """The NodeTransformer's flags (the group, for a command's own)."""
    model = t.add_argument_group("model")
    model.add_argument("--patterns", nargs="+", choices=NODE_PATTERNS, default=["graph"],
                       help="attention edge sets to unite on each sampled subgraph "
                            "(default: graph)")
    model.add_argument("--k", type=int, default=2, help="k of the k_hop pattern")
    model.add_argument("--random-keys", type=int, default=4, help="keys per node of 'random'")
    model.add_argument("--undirected", action=argparse.BooleanOptionalAction, default=True,
                       help="symmetrise the sampled edges (default: yes)")
    model.add_argument("--self-loops", action=argparse.BooleanOptionalAction, default=True)
    model.add_argument("--hidden", type=int, default=64)
    model.add_argument("--layers", type=int, default=2)
    model.add_argument("--heads", type=int, default=4)
    model.add_argument("--dropout", type=float, default=dropout)
    return model


def add_training_arguments(t: argparse.ArgumentParser, unit: str, batch_size: int,
                           eval_batch_size: int) -> argparse._ArgumentGroup:
    """Mini-batches of ``unit`` (seed nodes, seed links), the optimiser, the
    seed and where it runs (the group, for a command's own)."""
    train = t.add_argument_group("training")
    train.add_argument("--epochs", type=positive_int, default=20)
    train.add_argument("--batch-size", type=positive_int, default=batch_size,
                       help=f"{unit} per step (default {batch_size})")
    train.add_argument("--eval-batch-size", type=positive_int, default=eval_batch_size,
                       help=f"{unit} per evaluation batch (default {eval_batch_size})")
    train.add_argument("--num-neighbors", type=int, nargs="+", default=[10, 10],
                       help="sampled incoming edges per node at each hop, -1 for all "
                            "(default: 10 10)")
    train.add_argument("--lr", type=float, default=0.005)
    train.add_argument("--weight-decay", type=float, default=5e-4)
    train.add_argument("--seed", type=int, default=0,
                       help="seeds the initialisation, and with the epoch the order and the "
                            "sampling")
    train.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    train.add_argument("--threads", type=threads_count, default=0,
                       help="CPU threads (default 0: PyTorch's default)")
    return train


def add_run_arguments(t: argparse.ArgumentParser, name: str) -> None:
    """The run directory's flags; call last: ``--resume`` refuses every flag
    added before that is not a runtime one (:data:`RESUME_FLAGS`)."""
    run = t.add_argument_group("run directory")
    run.add_argument("--run-dir", type=Path, help=f"default: runs/{name}-<time>")
    run.add_argument("--resume", type=Path, metavar="RUN_DIR",
                     help="continue the run in RUN_DIR from its last.pt (only --device, "
                          "--threads and --quiet may be given with it)")
    run.add_argument("--overwrite", action="store_true",
                     help="replace the run in --run-dir (only what graphformer wrote)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(resume_refuses={a.dest: a.default for a in t._actions
                                   if a.dest not in RESUME_FLAGS})


def add_evaluate_parser(commands: argparse._SubParsersAction,
                        evaluate: Callable[..., Dict[str, float]], help: str,
                        description: str) -> None:
    """``graphformer node|link evaluate CHECKPOINT [--parts ...]``: prints
    ``evaluate(checkpoint, parts, threads=...)``'s scores, one a line."""
    e = commands.add_parser("evaluate", help=help, description=description)
    e.add_argument("checkpoint", type=Path)
    e.add_argument("--parts", nargs="+", default=["valid", "test"],
                   choices=["train", "valid", "test"])
    add_threads_argument(e, 1)
    e.set_defaults(run=_run_evaluate, evaluate=evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    for key, value in args.evaluate(args.checkpoint, args.parts, threads=args.threads).items():
        print(f"{key}: {value:.4f}")
    return 0


def flag_error(err: ConfigError, flags: Dict[str, Tuple[str, str]]) -> UsageError:
    """A config error as the error of the flag it came from."""
    flag = next((f for f, key in flags.items() if key == (err.section, err.key)), err.key)
    return UsageError(f"--{flag.replace('_', '-')} {err.reason}")


def encoder_config(args: argparse.Namespace) -> NodeTransformerConfig:
    """The NodeTransformer of the model flags (``in_channels`` and
    ``num_classes`` are placeholders: the data sets them)."""
    try:
        return NodeTransformerConfig(
            in_channels=1, num_classes=1, hidden=args.hidden, layers=args.layers,
            heads=args.heads, dropout=args.dropout, patterns=tuple(args.patterns), k=args.k,
            random_keys=args.random_keys, undirected=args.undirected,
            self_loops=args.self_loops, seed=args.seed)
    except (TypeError, ValueError) as err:
        raise UsageError(f"bad model option: {err}") from None


def train_command(args: argparse.Namespace, train: Callable[..., Any],
                  make_config: Callable[[argparse.Namespace], Any], name: str) -> int:
    """Run ``train`` (``train_nodes`` / ``train_links``) for the flags: a new
    run of ``make_config(args)``, or ``--resume``. Under ``torchrun`` every
    process joins the process group first (DDP averages the gradients)."""
    import torch.distributed as dist

    started = init_distributed(args.device)
    try:
        progress = not args.quiet
        if args.resume is not None:
            given = [f"--{dest.replace('_', '-')}" for dest, default in
                     args.resume_refuses.items() if getattr(args, dest) != default]
            if given:
                raise UsageError(f"--resume continues a run with its saved settings; only "
                                 f"--device, --threads and --quiet may be given with it, not "
                                 f"{', '.join(given)}")
            train(None, args.resume, resume=True, progress=progress,
                  runtime={"device": args.device, "threads": args.threads})
            return 0
        cfg = make_config(args)
        run_dir = args.run_dir or default_run_dir(name)
        train(cfg, run_dir, overwrite=args.overwrite, progress=progress)
        if not dist.is_initialized() or dist.get_rank() == 0:    # rank 0 names the run
            print(f"run directory: {run_dir}")
        return 0
    finally:
        if started:
            dist.destroy_process_group()
