"""graphformer: transformers as graph neural networks.

Tokens and molecules become graph nodes, attention masks become edge sets
(:mod:`graphformer.patterns`), and attention is message passing
(:mod:`graphformer.nn`).
"""
import importlib
from typing import Any

__version__ = "0.1.0"

__all__ = ["nn", "patterns", "__version__"]


def __getattr__(name: str) -> Any:
    # ``graphformer.nn`` and ``graphformer.patterns`` are imported on first
    # use, not with the package: the command line (``graphformer.cli``) must
    # start without PyTorch, so that Ctrl-C while PyTorch loads is handled.
    if name in ("nn", "patterns"):
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
