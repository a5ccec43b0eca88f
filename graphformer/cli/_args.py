"""Checks of command-line arguments shared by the commands."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, NoReturn

from ..errors import EXIT_USAGE, UsageError


class Parser(argparse.ArgumentParser):
    """argparse's parser, but its own errors (an unknown flag, a bad value, a
    missing argument) are one line, ``graphformer: error: <message> (see:
    graphformer <command> --help)``, and exit code 2, as graphformer's own;
    ``--help`` still prints the whole usage. Subcommand parsers made by
    ``add_subparsers`` are of this class too."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"graphformer: error: {message} (see: {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def threads_count(text: str) -> int:
    """An argparse type: a number of CPU threads, a whole number >= 0 (0:
    PyTorch's default, one per core)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0 (0: PyTorch's "
                                         f"default, one per core), got {text!r}")
    return value


def add_threads_argument(p: argparse.ArgumentParser, default: int) -> None:
    """``--threads N`` of a command that runs a trained model (see
    :func:`set_threads`)."""
    p.add_argument("--threads", type=threads_count, default=default, metavar="N",
                   help=f"CPU threads of the model (default {default}; 0: PyTorch's "
                   f"default, one per core). The model's steps on small molecules gain "
                   f"little from more threads, and lose much when the cores are busy")


def set_threads(threads: int) -> None:
    """Run PyTorch's CPU work on ``threads`` threads (0: leave its default)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def output_path(output: Path, protected: Dict[str, Path], example: str) -> Path:
    """Check an output file argument: not a directory, and not one of the
    ``protected`` files (``{"the input": path, ...}``), which a command must
    never write over (same path, or the same file through a link). Raises
    :class:`UsageError` naming both."""
    if output.is_dir():
        raise UsageError(f"output {output} is a directory; give a file name, e.g. "
                         f"-o {output / example}")
    for what, path in protected.items():
        same_file = output.exists() and path.exists() and output.samefile(path)
        if same_file or output.resolve() == path.resolve():
            raise UsageError(f"output {output} is {what} ({path}): refusing to write over it; "
                             f"choose another -o")
    return output
