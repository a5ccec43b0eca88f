"""Node classification on an edge-list graph with graphformer's NodeTransformer.

Reads the graph (edge list, optional node features, node labels) with
graphformer's edge-list reader, splits the labelled nodes at random per class
(seeded), trains full-batch with AdamW, keeps the epoch with the best
validation accuracy and prints its test accuracy next to the majority-class
baseline.

    python scripts/node_classification.py --edges edges.txt \\
        --node-features features.csv --node-labels labels.csv \\
        --patterns graph k_hop random --k 2 --random-keys 4 --epochs 200
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from graphformer.data.edge_list import delimiter_from_name, read_edge_list
from graphformer.models.node_transformer import (NODE_PATTERNS, NodeTransformer,
                                                 NodeTransformerConfig)



def fraction_arg(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a fraction must be in [0, 1], got {text}")
    return value


def stratified_split(y: torch.Tensor, train_fraction: float, val_fraction: float,
                     seed: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Boolean train / val / test masks: within each class the nodes are
    shuffled (seeded) and the first ``round(f * n_c)`` go to train, the next
    ``round(f_val * n_c)`` to val, the rest to test; every class with at
    least one node keeps at least one training node."""
    if train_fraction <= 0 or val_fraction < 0 or train_fraction + val_fraction >= 1:
        raise ValueError(f"need train-fraction > 0, val-fraction >= 0 and their sum < 1 (the "
                         f"rest is the test set), got {train_fraction} and {val_fraction}")
    generator = torch.Generator().manual_seed(seed)
    masks = [torch.zeros(y.numel(), dtype=torch.bool) for _ in range(3)]
    for c in torch.unique(y).tolist():
        nodes = (y == c).nonzero().view(-1)
        nodes = nodes[torch.randperm(nodes.numel(), generator=generator)]
        n = nodes.numel()
        n_train = min(n, max(1, round(train_fraction * n)))
        n_val = min(n - n_train, round(val_fraction * n))
        masks[0][nodes[:n_train]] = True
        masks[1][nodes[n_train:n_train + n_val]] = True
        masks[2][nodes[n_train + n_val:]] = True
    return masks[0], masks[1], masks[2]


def accuracy(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> float:
    if not bool(mask.any()):
        return float("nan")
    return float((logits[mask].argmax(dim=-1) == y[mask]).float().mean())


class _Inputs(torch.nn.Module):
    """The node features: the given ``x``, or a learnable embedding per node."""

    def __init__(self, x: Optional[torch.Tensor], num_nodes: int, width: int) -> None:
        super().__init__()
        self.register_buffer("x", x)
        self.embedding = torch.nn.Embedding(num_nodes, width) if x is None else None

    def forward(self) -> torch.Tensor:
        return self.x if self.embedding is None else self.embedding.weight


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    files = parser.add_argument_group("input files (see graphformer.data.edge_list)")
    files.add_argument("--edges", required=True, help="edge list: source target per line")
    files.add_argument("--node-features", help="node_id, f_1, ..., f_F per line (default: a "
                       "learnable embedding per node)")
    files.add_argument("--node-labels", required=True, help="node_id, label per line")
    files.add_argument("--delimiter", type=delimiter_from_name, default=None,
                       help="for all three files: one character, or tab / space / comma "
                            "(default: detected per file)")
    files.add_argument("--header", action=argparse.BooleanOptionalAction, default=None,
                       help="the edge file has a header line (default: detected)")
    files.add_argument("--node-header", action=argparse.BooleanOptionalAction, default=None,
                       help="the node files have header lines (default: detected per file)")
    files.add_argument("--comment", default="#", help="comment prefix (default '#')")

    model = parser.add_argument_group("model")
    model.add_argument("--patterns", nargs="+", choices=NODE_PATTERNS, default=["graph"],
                       help="attention edge sets to unite (default: graph)")
    model.add_argument("--k", type=int, default=2, help="k of the k_hop pattern")
    model.add_argument("--random-keys", type=int, default=4, help="keys per node of 'random'")
    model.add_argument("--undirected", action=argparse.BooleanOptionalAction, default=True,
                       help="symmetrise the graph's edges (default: yes)")
    model.add_argument("--self-loops", action=argparse.BooleanOptionalAction, default=True)
    model.add_argument("--hidden", type=int, default=64)
    model.add_argument("--layers", type=int, default=2)
    model.add_argument("--heads", type=int, default=4)
    model.add_argument("--dropout", type=float, default=0.3)

    train = parser.add_argument_group("training")
    train.add_argument("--epochs", type=int, default=200)
    train.add_argument("--lr", type=float, default=0.005)
    train.add_argument("--weight-decay", type=float, default=5e-4)
    train.add_argument("--seed", type=int, default=0,
                       help="seeds the split, the random pattern and the initialisation")
    train.add_argument("--train-fraction", type=fraction_arg, default=0.6)
    train.add_argument("--val-fraction", type=fraction_arg, default=0.2)
    train.add_argument("--log-every", type=int, default=10, help="progress line every N epochs")
    train.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.log_every < 1:
        parser.error("--epochs and --log-every must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    try:
        data = read_edge_list(args.edges, delimiter=args.delimiter, header=args.header,
                              comment=args.comment, node_features=args.node_features,
                              node_labels=args.node_labels, node_header=args.node_header)
    except (OSError, ValueError) as err:  # the message names the file, line and value
        raise SystemExit(f"error: {err}") from err
    n = int(data.num_nodes)
    y = data.y
    names = getattr(data, "label_names", None)
    num_classes = len(names) if names is not None else int(y.max()) + 1
    if int(y.min()) < 0:
        raise SystemExit(f"error: integer labels must be >= 0, {args.node_labels} has {int(y.min())}")
    counts = torch.bincount(y, minlength=num_classes)
    name_of = (lambda c: names[c]) if names is not None else str
    print(f"graph: {n} nodes, {data.edge_index.size(1)} edges, {num_classes} classes "
          f"({', '.join(f'{name_of(c)}: {int(m)}' for c, m in enumerate(counts))})")

    try:
        train_mask, val_mask, test_mask = stratified_split(y, args.train_fraction,
                                                           args.val_fraction, args.seed)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from err
    print(f"split (seed {args.seed}, stratified): {int(train_mask.sum())} train, "
          f"{int(val_mask.sum())} val, {int(test_mask.sum())} test nodes")
    if not bool(test_mask.any()):
        raise SystemExit("error: the test set is empty; lower --train-fraction/--val-fraction")

    if getattr(data, "x", None) is None:
        print(f"no --node-features: every node gets a learnable embedding of size "
              f"{args.hidden} (transductive, like a one-hot identity input)")
        x, in_channels = None, args.hidden
    else:
        x, in_channels = data.x, data.x.size(1)
        print(f"node features: {in_channels} per node from {args.node_features}")

    try:
        config = NodeTransformerConfig(
            in_channels=in_channels, num_classes=num_classes, hidden=args.hidden,
            layers=args.layers, heads=args.heads, dropout=args.dropout,
            patterns=tuple(args.patterns), k=args.k, random_keys=args.random_keys,
            undirected=args.undirected, self_loops=args.self_loops, seed=args.seed)
    except (TypeError, ValueError) as err:
        raise SystemExit(f"error: bad model option: {err}") from err
    device = torch.device(args.device)
    model = NodeTransformer(config).to(device)
    inputs = _Inputs(x, n, in_channels).to(device)
    edge_index, membership = model.edge_set(data.edge_index, n)
    edge_index, membership = edge_index.to(device), membership.to(device)
    per_set = ", ".join(f"{name} {int(m)}" for name, m in
                        zip(config.set_names, membership.sum(dim=0).tolist()))
    print(f"attention edges: {edge_index.size(1)} ({per_set})")
    print(model)

    y = y.to(device)
    train_mask, val_mask, test_mask = (m.to(device) for m in (train_mask, val_mask, test_mask))
    params = list(model.parameters()) + list(inputs.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    select_on_val = bool(val_mask.any())
    if not select_on_val:
        print("no validation nodes: the last epoch is kept")
    best = (-1.0, 0, None)  # (val accuracy, epoch, state)
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        inputs.train()
        optimizer.zero_grad()
        logits = model(inputs(), edge_index, membership)
        loss = F.cross_entropy(logits[train_mask], y[train_mask])
        loss.backward()
        optimizer.step()

        model.eval()
        with torch.no_grad():
            logits = model(inputs(), edge_index, membership)
        train_acc = accuracy(logits, y, train_mask)
        val_acc = accuracy(logits, y, val_mask) if select_on_val else 0.0
        if val_acc > best[0] or not select_on_val:
            best = (val_acc, epoch, (copy.deepcopy(model.state_dict()),
                                     copy.deepcopy(inputs.state_dict())))
        if epoch % args.log_every == 0 or epoch == args.epochs:
            print(f"epoch {epoch:4d}  loss {loss.item():.4f}  train {train_acc:.4f}  "
                  f"val {val_acc:.4f}")

    val_acc, epoch, (model_state, input_state) = best
    model.load_state_dict(model_state)
    inputs.load_state_dict(input_state)
    model.eval()
    with torch.no_grad():
        logits = model(inputs(), edge_index, membership)
    majority = int(torch.bincount(y[train_mask], minlength=num_classes).argmax())
    baseline = float((y[test_mask] == majority).float().mean())
    print(f"trained {args.epochs} epochs in {time.perf_counter() - start:.1f} s; "
          f"best epoch {epoch} (val accuracy {val_acc:.4f})")
    print(f"train accuracy: {accuracy(logits, y, train_mask):.4f}")
    print(f"majority-class baseline: {baseline:.4f} (always '{name_of(majority)}', the most "
          f"frequent training class)")
    print(f"test accuracy: {accuracy(logits, y, test_mask):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
