"""Attention as message passing: layers subclassing PyG's ``MessagePassing``."""
from . import functional
from .attention import RelationalAttention
from .transformer import TransformerLayer

__all__ = ["functional", "RelationalAttention", "TransformerLayer"]
