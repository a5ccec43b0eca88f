"""``graphformer evaluate CHECKPOINT``: metrics of a trained model.

For a regression checkpoint whose predictions have a spread (an ensemble,
or a model trained with ``--loss mve`` / ``evidential``) the JSON also holds
``uncertainty``: where the spread comes from, which calibration was used
(the checkpoint's, fitted on the validation part at the end of training; or,
for a checkpoint written before calibration existed, one fitted now on the
validation part), and per part the metrics of
:func:`graphformer.train.uncertainty.uncertainty_metrics` (NLL,
miscalibration area, ENCE, Spearman of |error| and std, and the coverage and
width of the intervals of ``--interval`` coverage)."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict

import torch

from ..errors import DataError, UsageError
from ..train import evaluate_split, prepare
from ..train.checkpoint import load_run
from ..train.loop import distribution_split
from ..train.uncertainty import DEFAULT_COVERAGE, calibration_of, check_coverage, \
    fit_calibration, has_spread, spread_of, uncertainty_metrics
from ..train.config import DataConfig
from ..train.data_checks import changed_parts
from ._args import add_threads_argument, positive_int, set_threads

#: ``--threads`` of ``evaluate`` and ``predict`` (1: on shared cores more
#: threads made these small batches slower).
DEFAULT_THREADS = 1


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
    p.add_argument("--data", type=Path, metavar="CSV",
                   help="where the CSV file the checkpoint was trained on is now, when it has "
                   "moved (or was stored relative to another directory by an older "
                   "graphformer); its data are checked against the checkpoint's as always")
    p.add_argument("--root", type=Path, metavar="DIR",
                   help="data cache directory (default: the one training used)")
    p.add_argument("--interval", type=coverage_arg, metavar="COVERAGE",
                   help=f"coverage of the calibrated intervals whose observed coverage and "
                   f"width are reported (regression checkpoints with a spread: an ensemble, "
                   f"--loss mve or evidential; default {DEFAULT_COVERAGE})")
    add_threads_argument(p, DEFAULT_THREADS)
    p.set_defaults(run=run)


def coverage_arg(text: str) -> float:
    """An argparse type: a coverage in (0, 1)."""
    try:
        return check_coverage(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a coverage in (0, 1), e.g. 0.9, got "
                                         f"{text!r}") from None


def located(data: DataConfig, args: argparse.Namespace) -> DataConfig:
    """The checkpoint's data config with the data where they are now:
    ``--data`` and ``--root`` when given. A CSV file that is not found is a
    :class:`UsageError` naming it and ``--data``."""
    changes: Dict[str, Any] = {}
    csv = data.dataset.lower().endswith(".csv")
    if args.root is not None:
        changes["root"] = str(args.root)
    if args.data is not None:
        if not csv:
            raise UsageError(f"--data {args.data}: {args.checkpoint} was trained on the data "
                             f"set {data.dataset!r}, not on a CSV file, so there is no file "
                             f"to relocate; leave --data out")
        changes["dataset"] = str(args.data)
    elif csv and not Path(data.dataset).is_file():
        stored = Path(data.dataset)
        how = "is not found" if stored.is_absolute() else (
            f"was stored relative to the directory training ran in (by an older graphformer) "
            f"and is not found from {Path.cwd()}")
        raise UsageError(f"the data of {args.checkpoint}, {data.dataset}, {how}; give the CSV "
                         f"file's path with --data PATH (its data are checked against the "
                         f"checkpoint's), or run evaluate from the directory training ran in")
    return replace(data, **changes) if changes else data


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    state, cfg, model = load_run(args.checkpoint)
    if args.interval is not None:
        spread_of(model)   # refuses a classifier or one model trained by MSE, saying why
    uncertain = has_spread(model)
    calibration = calibration_of(state, args.checkpoint) if uncertain else None
    # a checkpoint without calibration is calibrated now, on the validation part
    checked = list(dict.fromkeys([*args.parts, *(["valid"] if uncertain and calibration is None
                                                 else [])]))
    cfg = replace(cfg, data=located(cfg.data, args))
    prepared = prepare(cfg, log=False)
    check = "unchanged"
    if state.get("data") is None:
        check = "not recorded"
        print(f"graphformer: warning: {args.checkpoint} holds no data fingerprint (written by "
              f"an older graphformer): cannot check that the data are those it was trained on",
              file=sys.stderr)
    elif prepared.fingerprint is not None:
        changed = changed_parts(state["data"], prepared.fingerprint, checked)
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
    if uncertain:
        result["uncertainty"] = _uncertainty(model, prepared, state, calibration, args)
    print(json.dumps(result, indent=2))
    return 0


def _uncertainty(model: torch.nn.Module, prepared: Any, state: Dict[str, Any],
                 calibration: Any, args: argparse.Namespace) -> Dict[str, Any]:
    """The ``uncertainty`` section of the result (see the module docstring)."""
    cpu = torch.device("cpu")
    parts = {part: distribution_split(model, prepared, part, args.batch_size, cpu)
             for part in args.parts}
    how = "checkpoint (fitted on its validation part at the end of training)"
    if calibration is None:
        valid = parts.get("valid") or distribution_split(model, prepared, "valid",
                                                         args.batch_size, cpu)
        calibration = fit_calibration(*valid, part="valid")
        how = ("fitted now on the validation part (the checkpoint, written before "
               "calibration existed, holds none)")
    coverage = args.interval if args.interval is not None else DEFAULT_COVERAGE
    out: Dict[str, Any] = {"spread": spread_of(model), "calibration": how,
                           "zscale": calibration.zscale, "floor": calibration.floor}
    for part, values in parts.items():
        out[part] = uncertainty_metrics(*values, calibration, coverage)
    return out
