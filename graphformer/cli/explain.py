"""``graphformer explain CHECKPOINT --smiles S -o OUT.png``: a molecule coloured
by the attention of a trained model."""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from torch_geometric.data import Batch

from ..data import from_smiles
from ..data.encodings import encodings
from ..errors import UsageError
from ..models import Ensemble, GraphTransformer
from ..train import predict
from ..train.checkpoint import check_reads_smiles, load_run
from ..viz import MAX_PICTURE_SIDE, molecule_attention
from ._args import output_path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="draw a molecule coloured by the model's attention")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--smiles", required=True, help="the molecule")
    p.add_argument("-o", "--output", type=Path, required=True, help="PNG file to write")
    p.add_argument("--layer", type=int, default=-1,
                   help="attention layer (default: the last; negative counts from the end)")
    p.add_argument("--head", type=int, default=None,
                   help="attention head (default: the mean over heads)")
    p.add_argument("--pattern", default=None,
                   help="only the attention edges of this pattern (e.g. bonds, full)")
    p.add_argument("--size", type=picture_side, nargs=2, default=(500, 400), metavar=("W", "H"),
                   help=f"the picture's width and height in pixels, each 1 to "
                   f"{MAX_PICTURE_SIDE} (default 500 400)")
    p.set_defaults(run=run)


def picture_side(text: str) -> int:
    """An argparse type: a picture side in pixels, 1 to :data:`MAX_PICTURE_SIDE`."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_PICTURE_SIDE:
        raise argparse.ArgumentTypeError(f"each side must be a whole number of pixels from 1 "
                                         f"to {MAX_PICTURE_SIDE}, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    output_path(args.output, {"the checkpoint": args.checkpoint}, "attention.png")
    state, cfg, model = load_run(args.checkpoint)
    check_reads_smiles(cfg, args.checkpoint, "explain")
    if isinstance(model, Ensemble):   # K models, K attention maps: draw one of them
        attending = sum(isinstance(m, GraphTransformer) for m in model.members)
        raise UsageError(f"{args.checkpoint} is an ensemble of {attending} graph transformers, "
                         f"each with its own attention; explain one of them: "
                         f"{Path(args.checkpoint).parent / 'member-0' / 'best.pt'}")
    mol = bool(model.mol_features)
    columns = cfg.data.feature_columns if mol else []
    if columns:
        print(f"graphformer: warning: {args.checkpoint} also takes the feature column(s) "
              f"{columns}, which --smiles cannot give: they count as missing (the training "
              f"median)", file=sys.stderr)
    try:
        data = from_smiles(args.smiles, where="--smiles",
                           molecule_feature_sets=cfg.data.molecule_features if mol else (),
                           feature_values=[math.nan] * len(columns) if columns else None)
    except ValueError as err:  # the SMILES is an argument: a usage error
        raise UsageError(str(err)) from None
    transform = encodings(cfg.model.rwse_steps, cfg.model.lap_pe)
    data = transform(data) if transform is not None else data
    names = model._set_names()
    pattern = None
    if args.pattern is not None:
        if args.pattern not in names:
            raise UsageError(f"--pattern {args.pattern!r} is not one of this model's "
                             f"{list(names)}")
        pattern = names.index(args.pattern)
    layers = cfg.model.layers
    if not -layers <= args.layer < layers:
        raise UsageError(f"--layer {args.layer} out of range: the model has {layers} layers "
                         f"(0..{layers - 1}, or negative from the end)")
    if args.head is not None and not 0 <= args.head < cfg.model.heads:
        raise UsageError(f"--head {args.head} out of range: the model has {cfg.model.heads} "
                         f"heads (0..{cfg.model.heads - 1})")

    batch = Batch.from_data_list([data])
    pred = predict(model, [batch], state["y_mean"], state["y_std"], torch.device("cpu"))[0]
    with torch.no_grad():
        _, (edge_index, member, weights) = model(batch, return_attention_weights=True)
    layer = args.layer % layers
    head = "mean over heads" if args.head is None else f"head {args.head}"
    legend = f"layer {layer}, {head}" + (f", {args.pattern} edges" if args.pattern else "")
    molecule_attention(args.smiles, edge_index, weights[layer], member=member, head=args.head,
                       pattern=pattern, path=args.output, size=tuple(args.size),
                       offset=1 if cfg.model.pooling == "virtual" else 0, legend=legend)

    target_names = cfg.data.target_columns or [f"{state['dataset']}_target"]
    if len(target_names) != pred.numel():
        target_names = [f"target_{k}" for k in range(pred.numel())]
    for name, value in zip(target_names, pred.tolist()):
        if cfg.model.task == "classification":
            value = float(torch.sigmoid(torch.tensor(value)))
        print(f"prediction {name}: {value!r}")
    print(f"wrote the attention picture ({legend}) to {args.output}")
    return 0
