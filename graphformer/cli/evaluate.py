"""``graphformer evaluate CHECKPOINT``: metrics of a trained model."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict

import torch

from ..errors import DataError
from ..train import evaluate_split, prepare
from ..train.checkpoint import load_run
from ..train.data_checks import changed_parts
from ._args import positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="metrics of a checkpoint on its data set's split",
                       description="Metrics of a checkpoint on its data set's split, with the "
                       "checkpoint's own target normalisation. The data must be the data the "
                       "checkpoint was trained on (its fingerprint is checked).")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--parts", nargs="+", default=["valid", "test"],
                   choices=["train", "valid", "test"])
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--allow-changed-data", action="store_true",
                   help="evaluate even when the data differ from those the checkpoint was "
                   "trained on (a warning instead of an error)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    state, cfg, model = load_run(args.checkpoint)
    prepared = prepare(cfg, log=False)
    check = "unchanged"
    if state.get("data") is None:
        check = "not recorded"
        print(f"graphformer: warning: {args.checkpoint} holds no data fingerprint (written by "
              f"an older graphformer): cannot check that the data are those it was trained on",
              file=sys.stderr)
    elif prepared.fingerprint is not None:
        changed = changed_parts(state["data"], prepared.fingerprint, args.parts)
        if changed:
            check = "changed: " + ", ".join(changed)
            message = (f"the data of {state['dataset']} differ from those {args.checkpoint} was "
                       f"trained on (parts {', '.join(changed)}: SMILES, targets, molecule "
                       f"features or split changed), so its metrics would not be the "
                       f"checkpoint's")
            if not args.allow_changed_data:
                raise DataError(f"{message}; restore the data, or pass --allow-changed-data to "
                                f"evaluate on the data as they are now")
            print(f"graphformer: warning: {message}", file=sys.stderr)
    # The checkpoint's normalisation, never one recomputed from today's data.
    prepared = replace(prepared, y_mean=state["y_mean"], y_std=state["y_std"])
    result: Dict[str, Any] = {"checkpoint": str(args.checkpoint), "dataset": state["dataset"],
                              "epoch": state["epoch"], "metric": state["metric"],
                              "data": check}
    for part in args.parts:
        result[part] = evaluate_split(model, prepared, part, args.batch_size, torch.device("cpu"))
    print(json.dumps(result, indent=2))
    return 0
