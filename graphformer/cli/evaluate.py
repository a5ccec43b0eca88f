"""``graphformer evaluate CHECKPOINT``: metrics of a trained model."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..models import GraphTransformer
from ..train import RunConfig, evaluate_split, load_checkpoint, prepare


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="metrics of a checkpoint on its data set's split")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--parts", nargs="+", default=["valid", "test"],
                   choices=["train", "valid", "test"])
    p.add_argument("--batch-size", type=int, default=128)
    p.set_defaults(run=run)


def load_model(state) -> GraphTransformer:
    """The trained model of a checkpoint's state (in eval mode)."""
    model = GraphTransformer(RunConfig.from_dict(state["config"]).model)
    model.load_state_dict(state["model"])
    return model.eval()


def run(args: argparse.Namespace) -> int:
    state = load_checkpoint(args.checkpoint)
    cfg = RunConfig.from_dict(state["config"])
    prepared = prepare(cfg, log=False)
    model = load_model(state)
    result = {"checkpoint": str(args.checkpoint), "dataset": state["dataset"],
              "epoch": state["epoch"], "metric": state["metric"]}
    for part in args.parts:
        result[part] = evaluate_split(model, prepared, part, args.batch_size, torch.device("cpu"))
    print(json.dumps(result, indent=2))
    return 0
