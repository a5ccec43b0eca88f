"""graphformer's default model against PyG's GIN, trained the same way.

Both models get the same OGB atom encoder (and the same RWSE encoding), the
same data set, scaffold split, epochs, optimiser, schedule and seed, through
the same training loop; only the message passing differs. Prints both test
metrics (at the best validation epoch) per data set, and a JSON summary.

    python scripts/compare_gin.py                       # all bundled sets
    python scripts/compare_gin.py --datasets esol --epochs 60 --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from ogb.graphproppred.mol_encoder import AtomEncoder
from torch_geometric.nn import global_mean_pool
from torch_geometric.nn.models import GIN

from graphformer.models import GraphTransformerConfig
from graphformer.train import RunConfig, prepare, train
from graphformer.train.config import DataConfig, TrainConfig
from graphformer.train.loop import model_config_for


class GINBaseline(torch.nn.Module):
    """AtomEncoder (+ RWSE) -> PyG GIN -> mean pool -> MLP head."""

    def __init__(self, config: GraphTransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.atom_encoder = AtomEncoder(config.hidden)
        self.rwse = torch.nn.Linear(config.rwse_steps, config.hidden) if config.rwse_steps else None
        self.gin = GIN(config.hidden, config.hidden, num_layers=config.layers,
                       dropout=config.dropout, norm="batch_norm")
        self.head = torch.nn.Sequential(
            torch.nn.Linear(config.hidden, config.hidden), torch.nn.GELU(),
            torch.nn.Dropout(config.dropout), torch.nn.Linear(config.hidden, config.num_tasks))

    def forward(self, batch):
        x = self.atom_encoder(batch.x)
        if self.rwse is not None:
            x = x + self.rwse(batch.rwse)
        x = self.gin(x, batch.edge_index)
        return self.head(global_mean_pool(x, batch.batch, size=batch.num_graphs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["esol", "freesolv", "lipophilicity"])
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads per run (0 = torch's default)")
    parser.add_argument("--out", type=Path, help="write the JSON summary here too")
    args = parser.parse_args()

    results = {}
    for name in args.datasets:
        rows = {"graphformer": [], "gin": []}
        for seed in args.seeds:
            cfg = RunConfig(data=DataConfig(dataset=name, split="scaffold"),
                            train=TrainConfig(epochs=args.epochs, seed=seed,
                                              threads=args.threads))
            prepared = prepare(cfg, log=False)
            for kind in ("graphformer", "gin"):
                torch.manual_seed(seed)
                model = None
                if kind == "gin":
                    model = GINBaseline(model_config_for(cfg, prepared.bench))
                with tempfile.TemporaryDirectory() as tmp:
                    summary = train(replace(cfg), Path(tmp), progress=False,
                                    prepared=prepared, model=model)
                metric = summary["metric"]
                rows[kind].append(summary[f"test_{metric}_at_best"])
                print(f"{name} seed {seed} {kind:11s} test {metric} "
                      f"{summary[f'test_{metric}_at_best']:.4f} (best epoch "
                      f"{summary['best_epoch']})", flush=True)
        results[name] = {
            kind: {"mean": statistics.mean(v), "std": statistics.pstdev(v), "runs": v}
            for kind, v in rows.items()}
        results[name]["metric"] = metric
    print("\ndata set        metric  graphformer        GIN")
    for name, r in results.items():
        g, b = r["graphformer"], r["gin"]
        print(f"{name:15s} {r['metric']:6s}  {g['mean']:.3f} ± {g['std']:.3f}    "
              f"{b['mean']:.3f} ± {b['std']:.3f}")
    text = json.dumps({"epochs": args.epochs, "seeds": args.seeds, "split": "scaffold",
                       "results": results}, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
