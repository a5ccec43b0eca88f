"""The ``graphformer`` command: one subcommand per module.

Every failure the user can cause ends in one line on stderr,
``graphformer: error: <what is wrong, where, and what would be accepted>``,
and an exit code: 2 for usage errors (flags, config values, paths of the
wrong kind, a run directory that would be overwritten; argparse's own errors
too), 1 for data errors (unreadable or bad data files, checkpoints that do not
fit, data changed since training, no valid score), 130 when interrupted.
Anything else is a bug in graphformer and keeps its traceback.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from ..errors import EXIT_DATA, EXIT_USAGE, DataError, UsageError
from . import EXIT_INTERRUPTED, evaluate, explain, fingerprint, link, node, predict, pretrain, \
    train
from ._args import Parser


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="graphformer", description="Transformers as graph neural networks: train, "
        "evaluate and use graph transformers on molecules, and on one graph's nodes.",
        epilog="Exit codes: 0 success, 1 data error, 2 usage error, 130 interrupted.")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (train, pretrain, evaluate, predict, fingerprint, explain, node, link):
        module.add_parser(sub)
    return parser


def _out_of_memory(err: BaseException) -> bool:
    text = str(err)
    return isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError" or (
        isinstance(err, RuntimeError) and ("allocate" in text or "out of memory" in text))


def error_exit(err: BaseException) -> Optional[int]:
    """The exit code for an error the user caused (``None``: a bug, re-raise),
    after printing its one-line message."""
    if isinstance(err, (UsageError, DataError)):
        code = err.exit_code
        message = str(err)
    elif isinstance(err, (FileNotFoundError, IsADirectoryError, NotADirectoryError,
                          PermissionError, FileExistsError)):
        code, message = EXIT_USAGE, str(err)  # a path given on the command line
    elif isinstance(err, ValueError):
        code, message = EXIT_USAGE, str(err)  # an argument checked by a plain ValueError
    elif _out_of_memory(err):
        code = EXIT_DATA
        message = (f"out of memory ({str(err).splitlines()[0][:200]}): the model or a batch "
                   f"is too large for this machine; reduce --hidden, --layers or --batch-size")
    elif isinstance(err, OSError):
        code, message = EXIT_DATA, str(err)  # disk full, I/O error, ...
    else:
        return None
    print(f"graphformer: error: {message}", file=sys.stderr)
    return code


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``) in this process
    and return its exit code. argparse's own errors (one line, exit 2) and
    ``--help`` (exit 0) raise ``SystemExit`` as argparse does."""
    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
    except KeyboardInterrupt:
        print("graphformer: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001 - mapped to a message or re-raised
        code = error_exit(err)
        if code is None:
            raise
        return code


if __name__ == "__main__":
    sys.exit(main())
