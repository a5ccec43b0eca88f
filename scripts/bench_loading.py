"""How fast raw input becomes graphs: molecules per second (SMILES -> Data) and
edges per second (edge-list file -> Data), each beside a peer in the same run.

    python scripts/bench_loading.py                  # bundled molecules + 10M-edge file
    python scripts/bench_loading.py --edges 1000000  # a smaller edge list

Peers: ``ogb.utils.smiles2graph`` wrapped into a PyG ``Data`` (what OGB's own
loaders do per molecule) and ``pandas.read_csv`` of the bare integer columns
(the parsing floor, no id mapping or checks).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from ogb.utils import smiles2graph
from torch_geometric.data import Data

from graphformer.data import from_smiles, read_edge_list
from graphformer.datasets.molecules import BUNDLED, bundled_dir


def timed(fn, repeat: int = 3) -> float:
    """Median wall time of ``fn()`` over ``repeat`` runs."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def ogb_data(smiles: str) -> Data:
    g = smiles2graph(smiles)
    return Data(x=torch.from_numpy(g["node_feat"]), edge_index=torch.from_numpy(g["edge_index"]),
                edge_attr=torch.from_numpy(g["edge_feat"]))


def bench_molecules() -> dict:
    smiles = [s for spec in BUNDLED.values()
              for s in pd.read_csv(bundled_dir() / spec.file)["smiles"]]
    ours = timed(lambda: [from_smiles(s) for s in smiles])
    peer = timed(lambda: [ogb_data(s) for s in smiles])
    return {"molecules": len(smiles), "graphformer_mol_per_s": len(smiles) / ours,
            "ogb_smiles2graph_mol_per_s": len(smiles) / peer, "ratio": peer / ours}


def bench_edges(num_edges: int, num_nodes: int, folder: Path) -> dict:
    path = folder / "edges.txt"
    rng = np.random.default_rng(0)
    pairs = rng.integers(0, num_nodes, size=(num_edges, 2))
    with open(path, "w") as fh:
        fh.write("# random graph, SNAP style\n")
    pd.DataFrame(pairs).to_csv(path, sep=" ", header=False, index=False, mode="a")
    ours = timed(lambda: read_edge_list(path), repeat=1)
    peer = timed(lambda: pd.read_csv(path, sep=" ", header=None, comment="#",
                                     dtype=np.int64, engine="c").to_numpy(), repeat=1)
    return {"edges": num_edges, "file_mb": path.stat().st_size / 1e6,
            "graphformer_s": ours, "graphformer_edges_per_s": num_edges / ours,
            "pandas_floor_s": peer, "ratio_to_floor": ours / peer}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", type=int, default=10_000_000)
    parser.add_argument("--nodes", type=int, default=1_000_000)
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args()
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    result = {"molecules": bench_molecules()}
    with tempfile.TemporaryDirectory() as tmp:
        result["edge_list"] = bench_edges(args.edges, args.nodes, Path(tmp))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    m, e = result["molecules"], result["edge_list"]
    print(f"SMILES -> graph, {m['molecules']} bundled molecules:")
    print(f"  graphformer {m['graphformer_mol_per_s']:9.0f} mol/s | ogb smiles2graph + Data "
          f"{m['ogb_smiles2graph_mol_per_s']:9.0f} mol/s | speed ratio {m['ratio']:.2f}x")
    print(f"edge list -> graph, {e['edges']:,} edges ({e['file_mb']:.0f} MB):")
    print(f"  graphformer {e['graphformer_s']:.2f} s = {e['graphformer_edges_per_s']:,.0f} "
          f"edges/s | pandas bare parse {e['pandas_floor_s']:.2f} s | "
          f"{e['ratio_to_floor']:.2f}x the floor")


if __name__ == "__main__":
    main()
