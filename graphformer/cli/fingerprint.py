"""``graphformer fingerprint CHECKPOINT INPUT.csv -o OUT.npz|OUT.csv``: the
molecule vectors of a trained model (what its prediction head reads), for a
SMILES file of any size, streamed as ``predict`` is (same flags, same partial
output and ``--resume``; see :mod:`graphformer.train.screen`)."""
from __future__ import annotations

import argparse

from ..errors import UsageError
from ..train.checkpoint import check_reads_smiles, load_run, mol_features_of
from ..train.screen import MEMBERS, CSVSink, NPZSink, fingerprint_columns
from ._args import output_path, set_threads
from .predict import add_screen_arguments, run_screen

#: the output formats, by the output's suffix
FORMATS = (".npz", ".csv")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fingerprint", help="a trained model's molecule vectors for the SMILES of a CSV file",
        description="The molecule vector a trained model's prediction head reads (the pooled "
        "readout of its last block, then its scaled molecule features when it takes them), "
        "for every SMILES of a CSV file, streamed as 'graphformer predict' is. Output by "
        "suffix: .npz with the arrays row (int64 [N]), smiles ([N]) and fingerprint "
        "(float32 [N, D], or [N, K, D] with --members all), or .csv with the columns row, "
        "smiles, fingerprint_0 .. fingerprint_{D-1} (fingerprint_{k}_{j} with --members all). "
        "Invalid rows (--skip-invalid) are left out; row holds the input's row numbers.")
    add_screen_arguments(p, "output file, .npz or .csv (written at the end, atomically; never "
                         "the input file)")
    p.add_argument("--members", choices=MEMBERS, default="mean",
                   help="for an ensemble checkpoint: the mean of the members' vectors (default) "
                   "or every member's, one block each ([N, K, D])")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    output = output_path(args.output, {"the input file": args.input,
                                       "the checkpoint": args.checkpoint}, "fingerprints.npz")
    if output.suffix.lower() not in FORMATS:
        raise UsageError(f"-o {output}: the output must end in .npz (NumPy arrays) or .csv")
    set_threads(args.threads)
    state, cfg, model = load_run(args.checkpoint)
    check_reads_smiles(cfg, args.checkpoint, "fingerprint")

    def columns(batch):
        return fingerprint_columns(model, batch, members=args.members)

    sink = NPZSink() if output.suffix.lower() == ".npz" else CSVSink(args.smiles_column)
    mol_features = mol_features_of(state, args.checkpoint)[0]
    result = run_screen(args, output, cfg, mol_features, columns, sink,
                        {"--members": args.members})
    width = cfg.model.hidden + mol_features
    shape = f"{cfg.train.ensemble} x {width}" if args.members == "all" else f"{width}"
    print(f"wrote {result.molecules} fingerprints ({shape} values each) to {output}"
          + (f" ({result.skipped} invalid rows skipped)" if result.skipped else ""))
    return 0
