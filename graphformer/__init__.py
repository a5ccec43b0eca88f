"""graphformer: transformers as graph neural networks.

Tokens and molecules become graph nodes, attention masks become edge sets
(:mod:`graphformer.patterns`), and attention is message passing
(:mod:`graphformer.nn`).
"""
from . import nn, patterns

__version__ = "0.1.0"

__all__ = ["nn", "patterns", "__version__"]
