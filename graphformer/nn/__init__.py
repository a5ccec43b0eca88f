"""Attention as message passing: layers subclassing PyG's ``MessagePassing``,
and the backends that compute them (:mod:`graphformer.nn.backend`)."""
from . import functional
from .attention import RelationalAttention
from .backend import ATTENTION_BACKENDS, AttentionCost, estimate
from .decoder import TransformerDecoderLayer
from .transformer import TransformerLayer

__all__ = ["functional", "RelationalAttention", "TransformerLayer", "ATTENTION_BACKENDS",
           "AttentionCost", "estimate", "TransformerDecoderLayer"]
