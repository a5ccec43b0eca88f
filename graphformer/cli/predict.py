"""``graphformer predict CHECKPOINT INPUT.csv -o OUT.csv``: predictions for a
SMILES file."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch
from torch_geometric.loader import DataLoader

from ..data import from_smiles
from ..data.encodings import encodings
from ..train import RunConfig, load_checkpoint, predict
from .evaluate import load_model


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict properties for the SMILES of a CSV file")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("input", type=Path, help="CSV file with a SMILES column")
    p.add_argument("-o", "--output", type=Path, required=True, help="CSV file to write")
    p.add_argument("--smiles-column", default="smiles")
    p.add_argument("--skip-invalid", action="store_true",
                   help="skip unparsable SMILES (reported by row) instead of failing")
    p.add_argument("--batch-size", type=int, default=128)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    state = load_checkpoint(args.checkpoint)
    cfg = RunConfig.from_dict(state["config"])
    frame = pd.read_csv(args.input, dtype=str, keep_default_na=False)
    if args.smiles_column not in frame.columns:
        print(f"error: {args.input} has no column {args.smiles_column!r}; its columns are "
              f"{list(frame.columns)}", file=sys.stderr)
        return 2
    transform = encodings(cfg.model.rwse_steps, cfg.model.lap_pe)
    graphs, rows, invalid = [], [], []
    for row, smiles in enumerate(frame[args.smiles_column], start=1):
        try:
            data = from_smiles(smiles, where=f"{args.input}, row {row}")
        except ValueError as err:
            invalid.append(str(err))
            continue
        graphs.append(transform(data) if transform is not None else data)
        rows.append(row)
    if invalid and not args.skip_invalid:
        print(f"error: {len(invalid)} invalid SMILES (use --skip-invalid to skip them):",
              file=sys.stderr)
        for line in invalid[:20]:
            print(f"  {line}", file=sys.stderr)
        return 2
    for line in invalid:
        print(f"skipped: {line}", file=sys.stderr)
    model = load_model(state)
    loader = DataLoader(graphs, batch_size=args.batch_size, shuffle=False)
    pred = predict(model, loader, state["y_mean"], state["y_std"], torch.device("cpu"))
    names = cfg.data.target_columns or [f"{state['dataset']}_target"]
    if len(names) != pred.size(1):
        names = [f"target_{k}" for k in range(pred.size(1))]
    out = pd.DataFrame({"row": rows, args.smiles_column: [g.smiles for g in graphs]})
    for k, name in enumerate(names):
        col = pred[:, k]
        out[name] = torch.sigmoid(col).numpy() if cfg.model.task == "classification" \
            else col.numpy()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(args.output, index=False)
    print(f"wrote {len(out)} predictions to {args.output}"
          + (f" ({len(invalid)} invalid rows skipped)" if invalid else ""))
    return 0
