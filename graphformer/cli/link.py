"""``graphformer link train | evaluate | predict``: link prediction on one graph
from edge-list files, trained by mini-batches of subgraphs sampled around
seed links and their negatives (:mod:`graphformer.train.link`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError, UsageError
from ..models.link_predictor import LINK_SCORES, LinkPredictorConfig
from ..train.link import (LinkDataConfig, LinkRunConfig, LinkTrainConfig,
                          evaluate_link_checkpoint, predict_link_checkpoint, train_links)
from ._args import add_threads_argument, output_path
from ._graph_args import (add_evaluate_parser, add_graph_arguments, add_model_arguments, add_run_arguments,
                          add_training_arguments, encoder_config, flag_error, train_command)

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
    add_evaluate_parser(commands, evaluate_link_checkpoint,
                        help="MRR and Hits@K of a link checkpoint",
                        description="MRR and Hits@1/10/50 of a link checkpoint on the parts "
                        "of its run's split, each link ranked against the run's "
                        "--eval-negatives negatives sharing its source (seeded).")
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
    add_graph_arguments(t, labels=False)
    split = t.add_argument_group("link split (node pairs, as PyG's RandomLinkSplit)")
    split.add_argument("--val-fraction", type=float, default=0.1)
    split.add_argument("--test-fraction", type=float, default=0.2)
    split.add_argument("--disjoint-train-ratio", type=float, default=0.0,
                       help="share of the training links used only as supervision, not as "
                            "messages (default 0)")
    split.add_argument("--split-seed", type=int, default=0)
    model = add_model_arguments(t, dropout=0.0)
    model.add_argument("--score", choices=LINK_SCORES, default="dot",
                       help="a link's logit from its endpoints' states: dot product, or an "
                            "MLP of their elementwise product (default dot)")
    train = add_training_arguments(t, "seed links", batch_size=256, eval_batch_size=64)
    train.add_argument("--negatives", type=int, default=1,
                       help="random negative links per training link (default 1)")
    train.add_argument("--eval-negatives", type=int, default=100,
                       help="negatives sharing its source each evaluated link is ranked "
                            "against (default 100; ogbl-citation2 uses 1000)")
    add_run_arguments(t, "link")


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
        raise flag_error(err, _FLAGS) from None
    try:
        model = LinkPredictorConfig(encoder_config(args), args.score)
    except (TypeError, ValueError) as err:
        raise UsageError(f"bad model option: {err}") from None
    return LinkRunConfig(data, model, train)


def run_train(args: argparse.Namespace) -> int:
    return train_command(args, train_links, config_from_args, "link")


def run_predict(args: argparse.Namespace) -> int:
    output = output_path(args.output, {"the checkpoint": args.checkpoint,
                                       "the links file": args.links}, "links.csv")
    count = predict_link_checkpoint(args.checkpoint, args.links, output, threads=args.threads,
                                    progress=not args.quiet)
    print(f"wrote scores for {count} links to {output}")
    return 0
