"""``graphformer predict CHECKPOINT INPUT.csv -o OUT.csv [--interval 0.9]``:
predictions for a SMILES file of any size, streamed (see
:mod:`graphformer.train.screen`). A regression model with a spread adds each
target's calibrated standard deviation and, with ``--interval``, its interval
(:class:`~graphformer.train.screen.SpreadColumns`, :func:`spread_columns`).

The flags and the set-up shared with ``graphformer fingerprint`` live here
(:func:`add_screen_arguments`, :func:`run_screen`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from .._files import remove_stale_temporaries
from ..datasets.molecules import file_digest
from ..datasets.stream import CHUNK_SIZE, Featuriser, csv_file
from ..errors import DataError, UsageError
from ..train.checkpoint import check_reads_smiles, load_run, mol_features_of
from ..train.config import RunConfig
from ..train.screen import (CSVSink, Columns, Identity, PartialOutput, ScreenInput, ScreenResult,
                            SpreadColumns, input_identity, prediction_columns, screen)
from ..train.uncertainty import METHODS, calibration_of, has_spread, spread_of
from ._args import add_threads_argument, output_path, positive_int, set_threads
from .evaluate import DEFAULT_THREADS, coverage_arg


def workers_count(text: str) -> int:
    """An argparse type: a number of worker processes, a whole number >= 0."""
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0 (0 or 1: in this "
                                         f"process), got {text!r}")
    return int(text)


def add_screen_arguments(p: argparse.ArgumentParser, output_help: str) -> None:
    """The arguments of a command that runs a checkpoint over a CSV file
    chunk by chunk (``predict``, ``fingerprint``)."""
    p.add_argument("checkpoint", type=Path)
    p.add_argument("input", type=Path, help="CSV file with a SMILES column (and the "
                   "checkpoint's feature columns, when it was trained with --feature-columns)")
    p.add_argument("-o", "--output", type=Path, required=True, help=output_help)
    p.add_argument("--smiles-column", default="smiles")
    p.add_argument("--skip-invalid", action="store_true",
                   help="skip unparsable SMILES (each reported on stderr by row, and left out "
                   "of the output; the row column keeps the input's row numbers) instead of "
                   "failing at the first chunk that holds one")
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--chunk-size", type=positive_int, default=CHUNK_SIZE, metavar="ROWS",
                   help=f"rows committed to the output at a time (default {CHUNK_SIZE}): "
                   f"--resume continues after the last complete chunk; memory holds one "
                   f"chunk's SMILES, never the file's")
    p.add_argument("--workers", type=workers_count, default=0, metavar="N",
                   help="processes that turn SMILES into graphs while the model runs "
                   "(default 0: in this process; worth it when RDKit descriptors are "
                   "computed, with free cores)")
    p.add_argument("--resume", action="store_true",
                   help="continue the partial output an interrupted run left beside -o "
                   "(.NAME.partial/) after its last complete chunk; refused when the "
                   "checkpoint, the input or an output-changing flag differs")
    p.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    add_threads_argument(p, DEFAULT_THREADS)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="predict properties for the SMILES of a CSV file",
        description="Predictions for every SMILES of a CSV file, streamed: the file is read "
        "--chunk-size rows at a time, so it may be larger than memory. Output: row, the "
        "SMILES, one column per target (a probability for classification); an ensemble "
        "predicts its mean. A regression model with a spread (an ensemble, the default, or "
        "--loss mve / evidential) adds <target>_std after each target: the predictive "
        "standard deviation in target units, calibrated (z-scaled on the validation part "
        "at the end of training), and with --interval, <target>_low and <target>_high. "
        "Nothing appears at -o until the end (a partial output is kept beside it, continued "
        "by --resume).")
    add_screen_arguments(p, "CSV file to write (written at the end, in one rename; never the "
                         "input file)")
    p.add_argument("--interval", type=coverage_arg, metavar="COVERAGE",
                   help="also write <target>_low and <target>_high, the central interval of "
                   "this coverage (e.g. 0.9) around each prediction (regression models with "
                   "a spread: an ensemble, or --loss mve / evidential)")
    p.add_argument("--interval-method", choices=METHODS, metavar="METHOD",
                   help="how --interval is made: conformal (default: split conformal on the "
                   "validation part's errors, covering at least COVERAGE of molecules like "
                   "those), zscale (a Gaussian of the calibrated <target>_std), gaussian (a "
                   "Gaussian of the raw, uncalibrated spread; for a checkpoint without a "
                   "calibration)")
    p.set_defaults(run=run)


def spread_columns(args: argparse.Namespace, state: Dict[str, Any], model: Any,
                   names: List[str]) -> Optional[SpreadColumns]:
    """What ``predict`` writes beside each prediction of ``model`` (targets
    ``names``; None: the predictions alone: a classifier, one model trained
    by MSE). ``--interval`` is refused, saying why, where it cannot be made."""
    if args.interval_method is not None and args.interval is None:
        raise UsageError(f"--interval-method {args.interval_method} makes the interval of "
                         f"--interval COVERAGE; give --interval too (e.g. --interval 0.9)")
    if args.interval is not None:
        try:
            spread_of(model)
        except UsageError as err:
            raise UsageError(f"--interval {args.interval} for {args.checkpoint}: {err}"
                             ) from None
    elif not has_spread(model):
        return None
    calibration = calibration_of(state, args.checkpoint)
    method = args.interval_method or "conformal"
    if calibration is None:
        if args.interval is not None and method != "gaussian":
            raise UsageError(
                f"--interval with --interval-method {method} needs the calibration training "
                f"saves in the checkpoint, and {args.checkpoint} holds none (it was written "
                f"before graphformer saved one); use --interval-method gaussian for "
                f"uncalibrated intervals, or retrain it ('graphformer evaluate "
                f"{args.checkpoint} --interval {args.interval}' reports how intervals "
                f"calibrated now would cover, but saves no calibration)")
        print(f"note: {args.checkpoint} holds no calibration (written before graphformer "
              f"saved one): the _std columns are the model's raw, uncalibrated spread",
              file=sys.stderr)
    spread = SpreadColumns(calibration, args.interval, method)
    try:   # before any row: a conformal interval the validation part is too small for,
        # a target name that collides with another's uncertainty column
        spread.columns(torch.zeros(1, len(names)), torch.ones(1, len(names)), names)
    except DataError as err:
        raise DataError(f"{args.checkpoint}: {err}".replace(
            "(method 'zscale')", "(--interval-method zscale)")) from None
    return spread


def screen_input(args: argparse.Namespace, cfg: RunConfig, mol_features: int) -> ScreenInput:
    """The input of a checkpoint's screening run: the molecule features the
    model was trained with (``mol_features`` of them, 0 = none), computed as
    in training (its descriptor sets, and its feature columns read from the
    input file), its encodings, and the fingerprints of its kernel member."""
    mol = bool(mol_features)
    featuriser = Featuriser(str(args.input),
                            tuple(cfg.data.molecule_features) if mol else (),
                            cfg.model.rwse_steps, cfg.model.lap_pe,
                            # fingerprint leaves the kernel member out
                            ecfp_counts=cfg.train.kernel_member == "morgan"
                            and args.command == "predict")
    return ScreenInput(args.input, featuriser, args.smiles_column,
                       tuple(cfg.data.feature_columns) if mol else (), args.chunk_size,
                       args.batch_size)


def run_screen(args: argparse.Namespace, output: Path, cfg: RunConfig, mol_features: int,
               columns: Columns, sink: Any, settings: Dict[str, Any]) -> ScreenResult:
    """Run ``columns`` over the input of ``args`` into ``output`` through
    ``sink``; ``settings`` are the command's own flags that change the
    output (checked on ``--resume``)."""
    identity = Identity(args.command, file_digest(args.checkpoint),
                        input_identity(csv_file(args.input)),
                        {"--smiles-column": args.smiles_column, "--chunk-size": args.chunk_size,
                         "--batch-size": args.batch_size, **settings})
    output.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(output.parent, [output.name])
    partial = PartialOutput(output, identity, sink, sys.stderr)
    return screen(screen_input(args, cfg, mol_features), columns, partial, resume=args.resume,
                  skip_invalid=args.skip_invalid, workers=args.workers, report=sys.stderr,
                  progress=None if args.quiet else args.command)


def run(args: argparse.Namespace) -> int:
    output = output_path(args.output, {"the input file": args.input,
                                       "the checkpoint": args.checkpoint}, "predictions.csv")
    set_threads(args.threads)
    state, cfg, model = load_run(args.checkpoint)
    check_reads_smiles(cfg, args.checkpoint, "predict")
    names = cfg.data.target_columns or [f"{state['dataset']}_target"]
    if len(names) != cfg.model.num_tasks:
        names = [f"target_{k}" for k in range(cfg.model.num_tasks)]
    y_mean, y_std = state["y_mean"], state["y_std"]
    spread = spread_columns(args, state, model, names)

    def columns(batch):
        return prediction_columns(model, batch, y_mean=y_mean, y_std=y_std, names=names,
                                  spread=spread)

    interval = {"--interval": args.interval,
                "--interval-method": spread.method if args.interval is not None else None}
    result = run_screen(args, output, cfg, mol_features_of(state, args.checkpoint)[0], columns,
                        CSVSink(args.smiles_column), interval)
    print(f"wrote {result.molecules} predictions to {output}"
          + (f" ({result.skipped} invalid rows skipped)" if result.skipped else ""))
    return 0
