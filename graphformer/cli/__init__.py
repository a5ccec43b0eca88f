"""Command line interface (``graphformer`` / ``python -m graphformer``).

This package imports nothing heavy: :func:`main` imports the commands
(PyTorch, PyG, RDKit: seconds) inside its handling of Ctrl-C, so an
interrupt at any moment ends in ``graphformer: interrupted`` and exit code
130, never a traceback. The commands themselves are in
:mod:`graphformer.cli.main`.
"""
import sys
import types
from typing import Any, List, Optional

EXIT_INTERRUPTED = 130


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``) in this process
    and return its exit code (see :func:`graphformer.cli.main.main`)."""
    try:
        from .main import main as run_command
    except KeyboardInterrupt:   # Ctrl-C while the commands' imports run
        print("graphformer: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return run_command(argv)


def __getattr__(name: str) -> Any:
    if name == "build_parser":
        from .main import build_parser
        return build_parser
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Package(types.ModuleType):
    """This package. Importing its submodule ``graphformer.cli.main`` (on the
    first call of :func:`main`, or anywhere) would bind the submodule to the
    package's name ``main``, over the function: the function stays."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "main" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = ["main", "build_parser"]
