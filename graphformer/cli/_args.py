"""Checks of command-line arguments shared by the commands."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict

from ..errors import UsageError


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


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
