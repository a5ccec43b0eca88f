"""Command line interface (``graphformer`` / ``python -m graphformer``).

This package imports nothing heavy: :func:`main` imports the commands
(PyTorch, PyG, RDKit: seconds) inside its handling of Ctrl-C, so an
interrupt at any moment ends in ``graphformer: interrupted`` and exit code
130, never a traceback. The commands themselves are in
:mod:`graphformer.cli.commands`.
"""
import sys
from typing import Any, List, Optional

EXIT_INTERRUPTED = 130


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``) in this process
    and return its exit code (see :func:`graphformer.cli.commands.main`)."""
    try:
        from .commands import main as run_command
    except KeyboardInterrupt:   # Ctrl-C while the commands' imports run
        print("graphformer: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return run_command(argv)


def __getattr__(name: str) -> Any:
    if name == "build_parser":
        from .commands import build_parser
        return build_parser
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["main", "build_parser"]
