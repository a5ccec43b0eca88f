"""A planted-partition graph (a stochastic block model) with node features and
labels, written streaming as the edge-list files graphformer reads
(``read_edge_list`` / ``convert_edge_list``): the benchmark graph of
``scripts/bench_large_graph.py`` (issue 26).

- ``N`` nodes, each in one of ``C`` communities drawn uniformly; the label of a
  node is its community.
- ``E`` directed edges ``u v``: ``u`` uniform over the nodes; with probability
  ``p_in`` the target ``v`` is uniform over ``u``'s community, otherwise uniform
  over all nodes. In-degrees are about Poisson(E / N).
- Features: ``z = signal * onehot(c) + N(0, 1)`` in ``C`` dimensions, projected
  to ``F`` by one random Gaussian matrix, plus ``N(0, 0.1^2)`` in each of the
  ``F`` dimensions, written with 3 decimals. With the default signal a node's
  own features give a modest accuracy (about 45% for 16 classes: Bayes'
  rule on ``z``); its neighbours, half of which share its community under the
  default ``p_in``, carry the rest.

Files in ``--out``: ``edges.txt`` (``u v`` a line, space-separated), ``x.csv``
(``node,f0,...``, a header line), ``y.csv`` (``node,label``, a header line),
``meta.json`` (the parameters, written last: its presence means the files are
complete). Node ids are ``0..N-1``; a node without an edge is still in the node
files (``convert_edge_list`` adds it as an isolated node).

Everything is written in chunks of ``--chunk`` rows, formatted by vectorised
numpy (no per-number Python), so memory is O(N) for the communities plus one
chunk, never O(E): 100M edges take the same memory as 1M. The same seed and
chunk size give the same files (each chunk draws from its own stream).

    python scripts/make_planted_graph.py --nodes 1000000 --edges 10000000 \
        --classes 16 --features 32 --p-in 0.5 --seed 0 --out /tmp/planted_1m
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

#: the signal of the community indicator in the noisy features (noise 1)
SIGNAL = 1.5
#: the independent noise added to each projected feature
FEATURE_NOISE = 0.1
DECIMALS = 3
FILES = ("edges.txt", "x.csv", "y.csv", "meta.json")

Item = Union[bytes, Tuple[np.ndarray, int], Tuple[np.ndarray, bytes]]


def render(items: Sequence[Item], n: int) -> bytes:
    """``n`` lines of text, each the concatenation of ``items``: a ``bytes``
    constant, ``(values, width)`` (non-negative integers in decimal, zero-padded
    to at least ``width`` digits) or ``(mask, byte)`` (``byte`` where ``mask``).
    Vectorised: a pass per digit, not per number."""
    widths: List[Union[int, np.ndarray]] = []
    for item in items:
        if isinstance(item, bytes):
            widths.append(len(item))
        elif isinstance(item[1], bytes):
            widths.append(item[0].astype(np.int64) * len(item[1]))
        else:
            values, width = item
            digits = np.ones(n, dtype=np.int64)
            power = 10
            while True:
                more = values >= power
                if not more.any():
                    break
                digits += more
                power *= 10
            widths.append(np.maximum(digits, width))
    length = sum(np.broadcast_to(np.asarray(w, dtype=np.int64), (n,)) for w in widths) \
        if widths else np.zeros(n, dtype=np.int64)
    end = np.cumsum(length)
    out = np.empty(int(end[-1]) if n else 0, dtype=np.uint8)
    pos = end - length
    for item, width in zip(items, widths):
        if isinstance(item, bytes):
            for j, b in enumerate(item):
                out[pos + j] = b
        elif isinstance(item[1], bytes):
            mask, byte = item
            out[pos[mask]] = byte[0]
        else:
            values = item[0].astype(np.int64)
            w = np.broadcast_to(width, (n,))
            rest = values.copy()
            for k in range(int(w.max()) if n else 0):
                live = k < w
                out[(pos + w - 1 - k)[live]] = 48 + (rest[live] % 10)
                rest //= 10
        pos = pos + width
    return out.tobytes()


def edge_lines(src: np.ndarray, dst: np.ndarray) -> bytes:
    """``"u v\\n"`` lines."""
    return render([(src, 1), b" ", (dst, 1), b"\n"], src.size)


def float_lines(ids: np.ndarray, x: np.ndarray, decimals: int = DECIMALS) -> bytes:
    """``"id,x0,x1,...\\n"`` lines, each value with ``decimals`` decimals."""
    scaled = np.rint(np.abs(x) * 10 ** decimals).astype(np.int64)
    negative = (x < 0) & (scaled > 0)
    items: List[Item] = [(ids, 1)]
    for f in range(x.shape[1]):
        items += [b",", (negative[:, f], b"-"), (scaled[:, f] // 10 ** decimals, 1), b".",
                  (scaled[:, f] % 10 ** decimals, decimals)]
    items.append(b"\n")
    return render(items, ids.size)


def communities(num_nodes: int, num_classes: int, seed: int) -> np.ndarray:
    """The community (label) of every node."""
    return np.random.default_rng([seed, 0]).integers(num_classes, size=num_nodes,
                                                     dtype=np.int64)


def edge_chunks(labels: np.ndarray, num_edges: int, num_classes: int, p_in: float, seed: int,
                chunk: int):
    """``(src, dst)`` arrays of at most ``chunk`` edges each, ``num_edges`` in
    all; chunk ``i`` draws from its own stream (``[seed, 1, i]``)."""
    n = labels.size
    members = np.argsort(labels, kind="stable")
    sizes = np.bincount(labels, minlength=num_classes)
    start = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    for i, lo in enumerate(range(0, num_edges, chunk)):
        m = min(chunk, num_edges - lo)
        rng = np.random.default_rng([seed, 1, i])
        src = rng.integers(n, size=m, dtype=np.int64)
        dst = rng.integers(n, size=m, dtype=np.int64)
        inside = rng.random(m) < p_in
        c = labels[src[inside]]
        offset = (rng.random(int(inside.sum())) * sizes[c]).astype(np.int64)
        dst[inside] = members[start[c] + np.minimum(offset, sizes[c] - 1)]
        yield src, dst


def features(labels: np.ndarray, num_classes: int, num_features: int, seed: int,
             lo: int, hi: int, signal: float = SIGNAL) -> np.ndarray:
    """The features of nodes ``lo..hi-1`` (float32 ``[hi - lo, F]``)."""
    proj = np.random.default_rng([seed, 2]).standard_normal((num_classes, num_features))
    proj /= np.sqrt(num_classes)
    rng = np.random.default_rng([seed, 3, lo])
    z = rng.standard_normal((hi - lo, num_classes))
    z[np.arange(hi - lo), labels[lo:hi]] += signal
    x = z @ proj + FEATURE_NOISE * rng.standard_normal((hi - lo, num_features))
    return x.astype(np.float32)


def generate(out: Union[str, os.PathLike], num_nodes: int, num_edges: int, num_classes: int = 16,
             num_features: int = 32, p_in: float = 0.5, seed: int = 0,
             chunk: int = 1_000_000, signal: float = SIGNAL,
             log=print) -> dict:
    """Write the graph's files into ``out`` (created) and return its
    ``meta.json`` contents."""
    if num_nodes < 1 or num_edges < 0 or num_classes < 1 or num_features < 1:
        raise ValueError("need nodes >= 1, edges >= 0, classes >= 1, features >= 1")
    if not 0 <= p_in <= 1:
        raise ValueError(f"p_in must be in [0, 1], got {p_in}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)
    started = time.perf_counter()
    labels = communities(num_nodes, num_classes, seed)
    node_chunk = max(1, chunk // max(1, num_features // 4))
    with open(out / "edges.txt", "wb") as fh:
        done = 0
        for src, dst in edge_chunks(labels, num_edges, num_classes, p_in, seed, chunk):
            fh.write(edge_lines(src, dst))
            done += src.size
            if log and done % (10 * chunk) < chunk and done < num_edges:
                log(f"  edges {done:,} / {num_edges:,} ({time.perf_counter() - started:.0f} s)")
    with open(out / "x.csv", "wb") as fh:
        fh.write(("node," + ",".join(f"f{j}" for j in range(num_features)) + "\n").encode())
        for lo in range(0, num_nodes, node_chunk):
            hi = min(num_nodes, lo + node_chunk)
            fh.write(float_lines(np.arange(lo, hi), features(labels, num_classes, num_features,
                                                             seed, lo, hi, signal)))
    with open(out / "y.csv", "wb") as fh:
        fh.write(b"node,label\n")
        for lo in range(0, num_nodes, chunk):
            hi = min(num_nodes, lo + chunk)
            fh.write(render([(np.arange(lo, hi), 1), b",", (labels[lo:hi], 1), b"\n"], hi - lo))
    meta = {"nodes": num_nodes, "edges": num_edges, "classes": num_classes,
            "features": num_features, "p_in": p_in, "seed": seed, "signal": signal,
            "feature_noise": FEATURE_NOISE, "decimals": DECIMALS,
            "bytes": {name: os.path.getsize(out / name) for name in FILES[:3]},
            "seconds": round(time.perf_counter() - started, 3)}
    tmp = out / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1) + "\n")
    os.replace(tmp, out / "meta.json")
    return meta


def matches(out: Union[str, os.PathLike], **params) -> bool:
    """Whether ``out`` holds a complete graph generated with ``params``."""
    try:
        meta = json.loads((Path(out) / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return all(meta.get(k) == v for k, v in params.items())


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1_000_000)
    parser.add_argument("--edges", type=int, default=10_000_000)
    parser.add_argument("--classes", type=int, default=16)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--p-in", type=float, default=0.5,
                        help="probability that an edge stays inside its source's community")
    parser.add_argument("--signal", type=float, default=SIGNAL,
                        help="strength of the community indicator in the features (noise 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk", type=int, default=1_000_000, help="rows written at a time")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    meta = generate(args.out, args.nodes, args.edges, args.classes, args.features, args.p_in,
                    args.seed, args.chunk, args.signal)
    print(json.dumps(meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
