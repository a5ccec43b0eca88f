"""Node classification on an edge-list graph with graphformer's NodeTransformer.

A thin example over ``graphformer node train`` (:mod:`graphformer.train.node`):
reads the graph (edge list, optional node features, node labels), splits the
labelled nodes at random per class (seeded), trains by mini-batches of
subgraphs sampled around batches of seed nodes (``--batch-size``,
``--num-neighbors`` per hop) with AdamW, keeps the epoch with the best
validation accuracy and prints its test accuracy next to the majority-class
baseline (with ``--task regression``: the test RMSE next to that of always
predicting the training mean). The run directory (``--run-dir``) holds the checkpoints, metrics and
learning curve, as ``graphformer node train`` writes them.

    python scripts/node_classification.py --edges edges.txt \\
        --node-features features.csv --node-labels labels.csv \\
        --patterns graph k_hop random --k 2 --random-keys 4 --epochs 200
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from graphformer.cli import node as node_cli
from graphformer.errors import DataError, UsageError
from graphformer.train.node import evaluate_node_checkpoint, load_node_graph, train_nodes


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    node_cli.add_train_arguments(parser)
    parser.add_argument("--log-every", type=int, default=10, help="progress line every N epochs")
    parser.set_defaults(epochs=200, batch_size=512)
    args = parser.parse_args(argv)
    if args.log_every < 1:
        parser.error("--log-every must be >= 1")
    if args.edges is None or args.node_labels is None:
        parser.error("--edges and --node-labels are required")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = node_cli.config_from_args(args)
        graph = load_node_graph(cfg.data)
    except (OSError, ValueError) as err:  # the message names the file, line and value
        raise SystemExit(f"error: {err}") from err
    regression = graph.task == "regression"
    names = graph.label_names or [str(c) for c in range(graph.num_classes)]
    if regression:
        print(f"graph: {graph.num_nodes} nodes, {graph.num_edges} edges, regression targets "
              f"(mean {float(graph.y.mean()):.4g}, std {float(graph.y.std()):.4g})")
    else:
        counts = torch.bincount(graph.y, minlength=graph.num_classes)
        print(f"graph: {graph.num_nodes} nodes, {graph.num_edges} edges, {graph.num_classes} "
              f"classes ({', '.join(f'{names[c]}: {int(m)}' for c, m in enumerate(counts))})")
    split = graph.split(cfg.data)
    print(f"split (seed {cfg.data.split_seed}, {'random' if regression else 'stratified'}): "
          f"{split['train'].numel()} train, "
          f"{split['valid'].numel()} val, {split['test'].numel()} test nodes")
    if graph.num_features is None:
        print(f"no --node-features: every node gets a learnable embedding of size "
              f"{args.hidden} (transductive, like a one-hot identity input)")
    else:
        print(f"node features: {graph.num_features} per node from {args.node_features}")
    print(f"mini-batches: {cfg.train.batch_size} seed nodes, fan-outs "
          f"{cfg.train.num_neighbors} per hop")

    def log(line: str) -> None:   # every --log-every-th epoch line, and the rest
        if line.startswith("epoch"):
            epoch = int(line.split()[1])
            if epoch % args.log_every and epoch != cfg.train.epochs:
                return
        if not line.startswith("graph:"):
            print(line)

    run_dir = args.run_dir or Path("runs") / f"node-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        summary = train_nodes(cfg, run_dir, overwrite=args.overwrite, progress=not args.quiet,
                              log=log)
        metric = "rmse" if regression else "accuracy"
        train_score = evaluate_node_checkpoint(run_dir / "best.pt", ["train"],
                                               threads=cfg.train.threads)[f"train_{metric}"]
    except (UsageError, DataError) as err:
        raise SystemExit(f"error: {err}") from err
    y_train = graph.y[split["train"]]
    if regression:
        baseline = float((graph.y[split["test"]].double() - y_train.double().mean())
                         .pow(2).mean().sqrt())
        print(f"train RMSE: {train_score:.4f}")
        print(f"mean baseline: {baseline:.4f} (always the training mean)")
        print(f"test RMSE: {summary['test_rmse']:.4f}")
        print(f"run directory: {run_dir}")
        return 0
    majority = int(torch.bincount(y_train, minlength=graph.num_classes).argmax())
    baseline = float((graph.y[split["test"]] == majority).float().mean())
    print(f"train accuracy: {train_score:.4f}")
    print(f"majority-class baseline: {baseline:.4f} (always '{names[majority]}', the most "
          f"frequent training class)")
    print(f"test accuracy: {summary['test_accuracy']:.4f}")
    print(f"run directory: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
