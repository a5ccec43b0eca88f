"""Statistics of an edge-list graph and the size of attention over it.

Prints the graph's size, self-loops, isolated nodes, degrees and weakly
connected components, then, for each attention pattern graphformer can build
(the graph's edges, with self loops, k-hop closures, random keys, one global
token per component, full attention), its edge count and the memory one
attention layer would take on it. Full attention is counted (N^2), never
built: nothing here allocates an N x N array.

    python scripts/graph_stats.py --edges edges.txt
    python scripts/graph_stats.py --edges edges.csv --undirected --k 1 2 3 --heads 8
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Tuple

import numpy as np
import scipy.sparse
from scipy.sparse.csgraph import connected_components
import torch

from graphformer import patterns
from graphformer.data.edge_list import delimiter_from_name, read_edge_list

MIB = 2 ** 20
FLOAT_BYTES = 4


def column_arg(text: str):
    """A column: a 0-based index, or a header name."""
    return int(text) if text.isdigit() else text


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def attention_bytes(num_edges: int, heads: int, head_channels: int) -> Tuple[int, int]:
    """Bytes of one attention layer's forward pass over ``num_edges`` edges
    (float32): ``naive`` = scores and weights ``[E, H]`` plus messages
    ``[E, H, C]``; ``gathered`` adds the per-edge ``q_i``, ``k_j``, ``v_j``
    ``[E, H, C]`` that message passing materialises."""
    naive = num_edges * heads * FLOAT_BYTES * 2 + num_edges * heads * head_channels * FLOAT_BYTES
    gathered = naive + 3 * num_edges * heads * head_channels * FLOAT_BYTES
    return naive, gathered


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", required=True, help="edge list: source target per line")
    parser.add_argument("--delimiter", type=delimiter_from_name, default=None,
                        help="one character, or tab / space / comma (default: detected)")
    parser.add_argument("--header", action=argparse.BooleanOptionalAction, default=None,
                        help="the file has a header line (default: detected)")
    parser.add_argument("--source", type=column_arg, default=0, help="source column (index or name)")
    parser.add_argument("--target", type=column_arg, default=1, help="target column (index or name)")
    parser.add_argument("--comment", default="#", help="comment prefix (default '#')")
    parser.add_argument("--undirected", action="store_true",
                        help="symmetrise the edges (j -> i and i -> j) for degrees and patterns")
    parser.add_argument("--heads", type=positive_int, default=8, help="attention heads H")
    parser.add_argument("--head-channels", type=positive_int, default=32,
                        help="channels per head C")
    parser.add_argument("--k", type=positive_int, nargs="+", default=[2],
                        help="k of the k-hop patterns (one or more)")
    parser.add_argument("--random-keys", type=positive_int, default=8,
                        help="keys per node of the random pattern")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random pattern")
    return parser.parse_args(argv)


def _degree_line(name: str, degree: torch.Tensor) -> str:
    return (f"{name}: min {int(degree.min())}, mean {float(degree.double().mean()):.4f}, "
            f"max {int(degree.max())}")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        data = read_edge_list(args.edges, delimiter=args.delimiter, header=args.header,
                              source=args.source, target=args.target, comment=args.comment)
    except (OSError, TypeError, ValueError) as err:  # names the file, line and value
        raise SystemExit(f"error: {err}") from err
    n = int(data.num_nodes)
    listed = data.edge_index
    distinct = patterns.coalesce(listed, num_nodes=max(n, 1))
    loops = distinct[0] == distinct[1]
    print(f"edges file: {args.edges}")
    print(f"nodes: {n}")
    print(f"edges: {listed.size(1)}")
    print(f"distinct edges: {distinct.size(1)}")
    print(f"self-loops: {int((listed[0] == listed[1]).sum())}")
    if n == 0:
        print("the graph is empty: nothing more to report")
        return 0

    no_loops = distinct[:, ~loops]
    touched = torch.zeros(n, dtype=torch.bool)
    touched[no_loops.reshape(-1)] = True
    print(f"isolated nodes: {int((~touched).sum())} (no edge to or from another node)")
    reciprocated = patterns.intersection(no_loops, no_loops.flip(0), num_nodes=n).size(1)
    print(f"reciprocated edges: {reciprocated} of {no_loops.size(1)} non-loop edges have "
          f"their reverse listed")
    if args.undirected:
        base = patterns.coalesce(torch.cat([distinct, distinct.flip(0)], dim=1), num_nodes=n)
        print(f"--undirected: {base.size(1)} directed edges after symmetrising "
              f"({(base.size(1) - int(loops.sum())) // 2} node pairs, "
              f"{int(loops.sum())} self-loops)")
    else:
        base = distinct
    base_no_loops = base[:, base[0] != base[1]]
    if args.undirected:
        print(_degree_line("degree", torch.bincount(base_no_loops[1], minlength=n))
              + " (distinct neighbours, self-loops excluded)")
    else:
        print(_degree_line("out-degree", torch.bincount(base_no_loops[0], minlength=n))
              + " (distinct edges, self-loops excluded)")
        print(_degree_line("in-degree", torch.bincount(base_no_loops[1], minlength=n)))

    adjacency = scipy.sparse.coo_matrix(
        (np.ones(base.size(1), dtype=np.int8), (base[0].numpy(), base[1].numpy())),
        shape=(n, n)).tocsr()
    num_components, component = connected_components(adjacency, directed=True,
                                                      connection="weak")
    sizes = np.bincount(component, minlength=num_components)
    print(f"weakly connected components: {num_components} (largest: {int(sizes.max())} nodes, "
          f"smallest: {int(sizes.min())})")

    # ---- attention patterns ---------------------------------------------- #
    H, C = args.heads, args.head_channels
    rows: List[Tuple[str, int, str]] = []
    graph_self = patterns.graph(base, self_loops=True, num_nodes=n).size(1)
    rows.append(("graph", base.size(1), "the graph's edges j -> i"))
    rows.append(("graph+self", graph_self, "plus i -> i for every node"))
    for k in args.k:
        count = patterns.k_hop(base, k, num_nodes=n).size(1)
        rows.append((f"k_hop(k={k})", count, f"j != i, a path j -> i of at most {k} edges"))
    generator = torch.Generator().manual_seed(args.seed)
    count = patterns.random(n, args.random_keys, generator=generator).size(1)
    rows.append((f"random(k={args.random_keys})", count,
                 f"N * min(k, N) = {n} * {min(args.random_keys, n)} distinct random keys per node"))
    # One virtual token per component, numbered after its component's nodes:
    # component c becomes a "graph" of n_c + 1 nodes.
    ptr = torch.from_numpy(np.concatenate([[0], np.cumsum(sizes + 1)])).long()
    count = patterns.global_tokens(ptr, ptr[1:] - 1).size(1)
    rows.append(("global(1/component)", count,
                 f"a new token per component: sum_c (2 n_c + 1) = 2N + #components "
                 f"= {2 * n + num_components}"))
    rows.append(("graph+self+global", graph_self + count, "graph+self plus global (disjoint)"))
    rows.append(("full", n * n, f"N^2 = {n}^2, computed, never built"))

    print()
    print(f"attention patterns over the {'symmetrised' if args.undirected else 'directed'} graph")
    print(f"memory of one attention layer, forward pass, float32, H={H} heads, "
          f"C={C} channels per head:")
    print("  naive    = scores E*H*4 B + weights E*H*4 B + messages E*H*C*4 B "
          f"= E*H*(8 + 4*C) B = E * {H * (8 + 4 * C)} B")
    print("  gathered = naive + per-edge q_i, k_j, v_j 3*E*H*C*4 B "
          f"= E * {H * (8 + 16 * C)} B (PyG message passing lifts them to edges)")
    print(f"  (1 MiB = {MIB} B; training keeps these per layer for the backward pass)")
    print(f"{'pattern':<22}{'edges':>12}{'per node':>11}{'naive MiB':>13}{'gathered MiB':>15}"
          f"  what")
    for name, count, what in rows:
        naive, gathered = attention_bytes(count, H, C)
        print(f"{name:<22}{count:>12d}{count / n:>11.2f}{naive / MIB:>13.3f}"
              f"{gathered / MIB:>15.3f}  {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
