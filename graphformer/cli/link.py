"""``graphformer link train | evaluate | predict``: link prediction on one graph
from edge-list files, trained by mini-batches of subgraphs sampled around
seed links and their negatives (:mod:`graphformer.train.link`)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..data.edge_list import delimiter_from_name
from ..errors import ConfigError, UsageError
from ..models.link_predictor import LINK_SCORES, LinkPredictorConfig
from ..models.node_transformer import NODE_PATTERNS, NodeTransformerConfig
from ..train.link import (LinkDataConfig, LinkRunConfig, LinkTrainConfig,
                          evaluate_link_checkpoint, predict_link_checkpoint, train_links)
from ._args import add_threads_argument, output_path, positive_int, threads_count

#: flag -> (section, key), to name the flag a config error came from
_FLAGS = {
    "edges": ("data", "edges"), "graph": ("data", "graph"),
    "node_features": ("data", "node_features"),
    "val_fraction": ("data", "valid_fraction"), "test_fraction": ("data", "test_fraction"),
    "disjoint_train_ratio": ("data", "disjoint_train_ratio"),
    "split_seed": ("data", "split_seed"),
    "epochs": ("train", "epochs"), "batch_size": ("train", "batch_size"),
    "eval_batch_size": ("train", "eval_batch_size"), "num_neighbors": ("train", "num_neighbors"),
    "negatives": ("train", "negatives"), "eval_negatives": ("train", "eval_negatives"),
    "lr": ("train", "lr"), "weight_decay": ("train", "weight_decay"), "seed": ("train", "seed"),
    "device": ("train", "device"), "threads": ("train", "threads"),
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("link", help="link prediction on one graph (edge-list files)",
                       description="Link prediction on one graph: train by mini-batches of "
                       "subgraphs sampled around seed links and random negatives, evaluate "
                       "(MRR, Hits@1/10/50), score listed links.")
    commands = p.add_subparsers(dest="link_command", required=True)
    t = commands.add_parser("train", help="train a link predictor by mini-batches",
                            description="Train a NodeTransformer link predictor by mini-"
                            "batches of subgraphs sampled around batches of seed links and "
                            "their negatives (fan-outs per hop).")
    add_train_arguments(t)
    t.set_defaults(run=run_train)
    e = commands.add_parser("evaluate", help="MRR and Hits@K of a link checkpoint",
                            description="MRR and Hits@1/10/50 of a link checkpoint on the "
                            "parts of its run's split, each link ranked against the run's "
                            "--eval-negatives negatives sharing its source (seeded).")
    e.add_argument("checkpoint", type=Path)
    e.add_argument("--parts", nargs="+", default=["valid", "test"],
                   choices=["train", "valid", "test"])
    add_threads_argument(e, 1)
    e.set_defaults(run=run_evaluate)
    q = commands.add_parser("predict", help="score the links listed in a file, as CSV",
                            description="Score the links listed in LINKS (source target per "
                            "line, the ids of the graph's files) on the graph of every edge; "
                            "write source, target, score (logit), probability as CSV, batch "
                            "by batch.")
    q.add_argument("checkpoint", type=Path)
    q.add_argument("links", type=Path, help="source target per line (comma, tab or spaces)")
    q.add_argument("-o", "--output", type=Path, required=True)
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    add_threads_argument(q, 1)
    q.set_defaults(run=run_predict)


def add_train_arguments(t: argparse.ArgumentParser) -> None:
    files = t.add_argument_group("graph (an edge list, or a converted graph directory)")
    files.add_argument("--edges", help="edge list: source target per line")
    files.add_argument("--graph", help="a graph converted by graphformer.data.edge_list."
                       "convert_edge_list (memory-mapped; for graphs larger than memory)")
    files.add_argument("--node-features", help="node_id, f_1, ..., f_F per line (default: a "
                       "learnable embedding per node)")
    files.add_argument("--delimiter", type=delimiter_from_name, default=None,
                       help="for both files: one character, or tab / space / comma "
                            "(default: detected per file)")
    files.add_argument("--header", action=argparse.BooleanOptionalAction, default=None,
                       help="the edge file has a header line (default: detected)")
    files.add_argument("--node-header", action=argparse.BooleanOptionalAction, default=None,
                       help="the node file has a header line (default: detected)")
    files.add_argument("--comment", default="#", help="comment prefix (default '#')")
    split = t.add_argument_group("link split (node pairs, as PyG's RandomLinkSplit)")
    split.add_argument("--val-fraction", type=float, default=0.1)
    split.add_argument("--test-fraction", type=float, default=0.2)
    split.add_argument("--disjoint-train-ratio", type=float, default=0.0,
                       help="share of the training links used only as supervision, not as "
                            "messages (default 0)")
    split.add_argument("--split-seed", type=int, default=0)
    model = t.add_argument_group("model")
    model.add_argument("--score", choices=LINK_SCORES, default="dot",
                       help="a link's logit from its endpoints' states: dot product, or an "
                            "MLP of their elementwise product (default dot)")
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
    model.add_argument("--dropout", type=float, default=0.0)
    train = t.add_argument_group("training")
    train.add_argument("--epochs", type=positive_int, default=20)
    train.add_argument("--batch-size", type=positive_int, default=256,
                       help="seed links per step (default 256)")
    train.add_argument("--eval-batch-size", type=positive_int, default=64,
                       help="links per evaluation batch, each with its negatives (default 64)")
    train.add_argument("--negatives", type=int, default=1,
                       help="random negative links per training link (default 1)")
    train.add_argument("--eval-negatives", type=int, default=100,
                       help="negatives sharing its source each evaluated link is ranked "
                            "against (default 100; ogbl-citation2 uses 1000)")
    train.add_argument("--num-neighbors", type=int, nargs="+", default=[10, 10],
                       help="sampled incoming edges per node at each hop, -1 for all "
                            "(default: 10 10)")
    train.add_argument("--lr", type=float, default=0.005)
    train.add_argument("--weight-decay", type=float, default=5e-4)
    train.add_argument("--seed", type=int, default=0,
                       help="seeds the initialisation, and with the epoch the order, "
                            "negatives and sampling")
    train.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    train.add_argument("--threads", type=threads_count, default=0,
                       help="CPU threads (default 0: PyTorch's default)")
    run = t.add_argument_group("run directory")
    run.add_argument("--run-dir", type=Path, help="default: runs/link-<time>")
    run.add_argument("--resume", type=Path, metavar="RUN_DIR",
                     help="continue the run in RUN_DIR from its last.pt")
    run.add_argument("--overwrite", action="store_true",
                     help="replace the run in --run-dir (only what graphformer wrote)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace) -> LinkRunConfig:
    """The run config of the flags; a bad value names its flag."""
    try:
        data = LinkDataConfig(edges=args.edges, graph=args.graph,
                              node_features=args.node_features, delimiter=args.delimiter,
                              header=args.header, node_header=args.node_header,
                              comment=args.comment, valid_fraction=args.val_fraction,
                              test_fraction=args.test_fraction,
                              disjoint_train_ratio=args.disjoint_train_ratio,
                              split_seed=args.split_seed)
        train = LinkTrainConfig(epochs=args.epochs, batch_size=args.batch_size,
                                eval_batch_size=args.eval_batch_size,
                                num_neighbors=list(args.num_neighbors),
                                negatives=args.negatives, eval_negatives=args.eval_negatives,
                                lr=args.lr, weight_decay=args.weight_decay, seed=args.seed,
                                device=args.device, threads=args.threads)
    except ConfigError as err:
        flag = next((f for f, key in _FLAGS.items() if key == (err.section, err.key)), err.key)
        raise UsageError(f"--{flag.replace('_', '-')} {err.reason}") from None
    try:   # in_channels and num_classes (the state width) come from the data
        encoder = NodeTransformerConfig(
            in_channels=1, num_classes=1, hidden=args.hidden, layers=args.layers,
            heads=args.heads, dropout=args.dropout, patterns=tuple(args.patterns), k=args.k,
            random_keys=args.random_keys, undirected=args.undirected,
            self_loops=args.self_loops, seed=args.seed)
        model = LinkPredictorConfig(encoder, args.score)
    except (TypeError, ValueError) as err:
        raise UsageError(f"bad model option: {err}") from None
    return LinkRunConfig(data, model, train)


def run_train(args: argparse.Namespace) -> int:
    progress = not args.quiet
    if args.resume is not None:
        given = ("--edges", "--graph", "--run-dir")
        if args.edges or args.graph or args.run_dir:
            raise UsageError(f"--resume continues a run with its saved settings: leave out "
                             f"{', '.join(given)}")
        train_links(None, args.resume, resume=True, progress=progress)
        return 0
    cfg = config_from_args(args)
    run_dir = args.run_dir or Path("runs") / f"link-{time.strftime('%Y%m%d-%H%M%S')}"
    train_links(cfg, run_dir, overwrite=args.overwrite, progress=progress)
    print(f"run directory: {run_dir}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    scores = evaluate_link_checkpoint(args.checkpoint, args.parts, threads=args.threads)
    for key, value in scores.items():
        print(f"{key}: {value:.4f}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    output = output_path(args.output, {"the checkpoint": args.checkpoint,
                                       "the links file": args.links}, "links.csv")
    count = predict_link_checkpoint(args.checkpoint, args.links, output, threads=args.threads,
                                    progress=not args.quiet)
    print(f"wrote scores for {count} links to {output}")
    return 0
