"""``graphformer node convert | train | evaluate | predict``: node
classification and regression on one graph from edge-list files, trained by mini-batches of sampled subgraphs
(:mod:`graphformer.train.node`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..data.edge_list import delimiter_from_name
from ..errors import ConfigError
from ..train.node import (NodeDataConfig, NodeRunConfig, NodeTrainConfig,
                          evaluate_node_checkpoint, predict_node_checkpoint, train_nodes)
from ._args import add_threads_argument, output_path, positive_int
from ._graph_args import (add_evaluate_parser, add_graph_arguments, add_model_arguments, add_run_arguments,
                          add_training_arguments, encoder_config, flag_error, train_command)

#: flag -> (section, key), to name the flag a config error came from
_FLAGS = {
    "edges": ("data", "edges"), "graph": ("data", "graph"),
    "node_features": ("data", "node_features"), "node_labels": ("data", "node_labels"),
    "task": ("data", "task"),
    "train_fraction": ("data", "train_fraction"), "val_fraction": ("data", "valid_fraction"),
    "split_seed": ("data", "split_seed"),
    "epochs": ("train", "epochs"), "batch_size": ("train", "batch_size"),
    "eval_batch_size": ("train", "eval_batch_size"), "num_neighbors": ("train", "num_neighbors"),
    "lr": ("train", "lr"), "weight_decay": ("train", "weight_decay"), "seed": ("train", "seed"),
    "device": ("train", "device"), "threads": ("train", "threads"),
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("node", help="node classification or regression on one graph "
                       "(edge-list files)",
                       description="Node classification or regression on one graph: train "
                       "by mini-batches of sampled subgraphs, evaluate, predict every node.")
    commands = p.add_subparsers(dest="node_command", required=True)
    c = commands.add_parser("convert", help="convert an edge list once into an on-disk graph",
                            description="Convert an edge list (and its node feature and label "
                            "files) once, streaming, into a memory-mapped on-disk graph for "
                            "'graphformer node train --graph DIR': peak memory is one chunk of "
                            "lines plus a few numbers per node, whatever the file's size.")
    c.add_argument("--edges", required=True, help="edge list: source target per line")
    c.add_argument("--node-features", help="node_id, f_1, ..., f_F per line")
    c.add_argument("--node-labels", help="node_id, label per line")
    c.add_argument("--label-type", choices=["class", "value"], default="class",
                   help="the labels are classes (integers or names; default) or numbers "
                        "(regression targets, for 'node train --task regression')")
    c.add_argument("-o", "--output", type=Path, required=True, help="the graph's folder")
    c.add_argument("--delimiter", type=delimiter_from_name, default=None)
    c.add_argument("--header", action=argparse.BooleanOptionalAction, default=None)
    c.add_argument("--node-header", action=argparse.BooleanOptionalAction, default=None)
    c.add_argument("--comment", default="#")
    c.add_argument("--undirected", action="store_true",
                   help="add the reverse of every edge listed one way only")
    c.add_argument("--chunk-rows", type=positive_int, default=1_000_000,
                   help="lines parsed at a time (default 1000000)")
    c.add_argument("--overwrite", action="store_true", help="replace an earlier conversion")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(run=run_convert)
    add_train_parser(commands)
    add_evaluate_parser(commands, evaluate_node_checkpoint,
                        help="accuracy (or RMSE, MAE, R²) of a node checkpoint on its split",
                        description="Accuracy, or for regression RMSE, MAE and R², of a node "
                        "checkpoint on the parts of its run's split (sampled batches, seeded).")
    q = commands.add_parser("predict", help="class probabilities (or values) of every node, "
                            "as CSV",
                            description="The class probabilities of every node of the "
                            "checkpoint's graph, written batch by batch to a CSV file "
                            "(node, predicted, p_<class> ...); for regression node, predicted.")
    q.add_argument("checkpoint", type=Path)
    q.add_argument("-o", "--output", type=Path, required=True)
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    add_threads_argument(q, 1)
    q.set_defaults(run=run_predict)


def add_train_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``graphformer node train``'s flags (also those of
    ``scripts/node_classification.py``)."""
    t = commands.add_parser("train", help="train a node classifier or regressor by mini-batches",
                            description="Train a NodeTransformer by mini-batches of subgraphs "
                            "sampled around batches of seed nodes (fan-outs per hop).")
    add_train_arguments(t)
    t.set_defaults(run=run_train)
    return t


def add_train_arguments(t: argparse.ArgumentParser) -> None:
    add_graph_arguments(t, labels=True)
    t.add_argument("--task", choices=["classification", "regression"], default="classification",
                   help="classification (class labels; default) or regression (numeric "
                        "labels: trained on standardised targets with the squared error; "
                        "RMSE picks the best epoch)")
    add_model_arguments(t, dropout=0.3)
    train = add_training_arguments(t, "seed nodes", batch_size=512, eval_batch_size=2048)
    train.add_argument("--split-seed", type=int, default=0,
                       help="seed of the split (stratified by class for classification)")
    train.add_argument("--train-fraction", type=float, default=0.6)
    train.add_argument("--val-fraction", type=float, default=0.2)
    add_run_arguments(t, "node")


def config_from_args(args: argparse.Namespace) -> NodeRunConfig:
    """The run config of the flags; a bad value names its flag."""
    try:
        data = NodeDataConfig(edges=args.edges, graph=args.graph,
                              node_features=args.node_features, node_labels=args.node_labels,
                              task=args.task, delimiter=args.delimiter, header=args.header,
                              node_header=args.node_header, comment=args.comment,
                              train_fraction=args.train_fraction,
                              valid_fraction=args.val_fraction, split_seed=args.split_seed)
        train = NodeTrainConfig(epochs=args.epochs, batch_size=args.batch_size,
                                eval_batch_size=args.eval_batch_size,
                                num_neighbors=list(args.num_neighbors), lr=args.lr,
                                weight_decay=args.weight_decay, seed=args.seed,
                                device=args.device, threads=args.threads)
    except ConfigError as err:
        raise flag_error(err, _FLAGS) from None
    return NodeRunConfig(data, encoder_config(args), train)


def run_train(args: argparse.Namespace) -> int:
    return train_command(args, train_nodes, config_from_args, "node")


def run_predict(args: argparse.Namespace) -> int:
    output = output_path(args.output, {"the checkpoint": args.checkpoint}, "predictions.csv")
    count = predict_node_checkpoint(args.checkpoint, output, threads=args.threads,
                                    progress=not args.quiet)
    print(f"wrote predictions for {count} nodes to {output}")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from ..data.edge_list import convert_edge_list

    graph = convert_edge_list(args.edges, args.output, node_features=args.node_features,
                              node_labels=args.node_labels, label_type=args.label_type,
                              delimiter=args.delimiter,
                              header=args.header, node_header=args.node_header,
                              comment=args.comment, directed=not args.undirected,
                              chunk_rows=args.chunk_rows, progress=not args.quiet,
                              overwrite=args.overwrite)
    print(f"converted {graph.num_nodes} nodes, {graph.num_edges} edges"
          f"{f', {graph.num_features} features' if graph.num_features else ''} to "
          f"{args.output}")
    return 0
