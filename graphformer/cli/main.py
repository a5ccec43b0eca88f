"""The ``graphformer`` command: one subcommand per module."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from . import evaluate, explain, predict, train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="graphformer", description="Transformers as graph neural networks: train, "
        "evaluate and use graph transformers on molecules.")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (train, evaluate, predict, explain):
        module.add_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"graphformer {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
