"""``graphformer predict CHECKPOINT INPUT.csv -o OUT.csv``: predictions for a
SMILES file."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch
from torch_geometric.loader import DataLoader

from .._files import atomic_write, remove_stale_temporaries
from ..data import from_smiles
from ..data.encodings import encodings
from ..datasets.molecules import check_columns, feature_rows, read_csv
from ..errors import DataError
from ..train import predict
from ..train.checkpoint import load_run
from ._args import add_threads_argument, output_path, positive_int, set_threads
from .evaluate import DEFAULT_THREADS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict properties for the SMILES of a CSV file")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("input", type=Path, help="CSV file with a SMILES column (and the "
                   "checkpoint's feature columns, when it was trained with --feature-columns)")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="CSV file to write (written atomically; never the input file)")
    p.add_argument("--smiles-column", default="smiles")
    p.add_argument("--skip-invalid", action="store_true",
                   help="skip unparsable SMILES (reported by row) instead of failing")
    p.add_argument("--batch-size", type=positive_int, default=128)
    add_threads_argument(p, DEFAULT_THREADS)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    output = output_path(args.output, {"the input file": args.input,
                                       "the checkpoint": args.checkpoint}, "predictions.csv")
    set_threads(args.threads)
    state, cfg, model = load_run(args.checkpoint)
    frame = read_csv(args.input)
    check_columns(frame, args.input, [args.smiles_column])
    if len(frame) == 0:
        raise DataError(f"{args.input} has a header but no rows")
    transform = encodings(cfg.model.rwse_steps, cfg.model.lap_pe)
    # The molecule features the model was trained with, computed as in training:
    # its descriptors, and its feature columns read from the input file.
    sets = cfg.data.molecule_features if cfg.model.mol_features else []
    columns = cfg.data.feature_columns if cfg.model.mol_features else []
    values = feature_rows(frame, args.input, columns) if columns else None
    graphs, rows, invalid = [], [], []
    for k, (row, smiles) in enumerate(frame[args.smiles_column].items()):
        try:
            data = from_smiles(smiles, where=f"{args.input}, row {row}",
                               molecule_feature_sets=sets,
                               feature_values=values[k] if values is not None else None)
        except ValueError as err:
            invalid.append(str(err))
            continue
        graphs.append(transform(data) if transform is not None else data)
        rows.append(row)
    if invalid and not args.skip_invalid:
        shown = "\n".join(f"  {line}" for line in invalid[:20])
        more = f"\n  ... and {len(invalid) - 20} more" if len(invalid) > 20 else ""
        raise DataError(f"{len(invalid)} invalid SMILES in {args.input} (use --skip-invalid "
                        f"to skip them):\n{shown}{more}")
    for line in invalid:
        print(f"skipped: {line}", file=sys.stderr)
    if not graphs:
        raise DataError(f"no valid SMILES in {args.input}: nothing to predict")
    loader = DataLoader(graphs, batch_size=args.batch_size, shuffle=False)
    pred = predict(model, loader, state["y_mean"], state["y_std"], torch.device("cpu"))
    names = cfg.data.target_columns or [f"{state['dataset']}_target"]
    if len(names) != pred.size(1):
        names = [f"target_{k}" for k in range(pred.size(1))]
    out = pd.DataFrame({"row": rows, args.smiles_column: [g.smiles for g in graphs]})
    for k, name in enumerate(names):
        col = pred[:, k]
        name = name if name not in out.columns else f"predicted_{name}"  # never "row"
        out[name] = torch.sigmoid(col).numpy() if cfg.model.task == "classification" \
            else col.numpy()
    output.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(output.parent, [output.name])
    with atomic_write(output, newline="") as fh:
        out.to_csv(fh, index=False)
    print(f"wrote {len(out)} predictions to {output}"
          + (f" ({len(invalid)} invalid rows skipped)" if invalid else ""))
    return 0
