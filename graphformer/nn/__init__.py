"""Attention as message passing: layers subclassing PyG's ``MessagePassing``,
and the backends that compute them (:mod:`graphformer.nn.backend`)."""
from . import functional
from .attention import RelationalAttention
from .backend import ATTENTION_BACKENDS, AttentionCost, estimate
from .decoder import TransformerDecoderLayer
from .edge_set import EdgeSet
from .feature_scaler import FeatureScaler
from .transformer import Dropout, TransformerLayer, TransformerOutput

__all__ = ["functional", "RelationalAttention", "TransformerLayer", "TransformerOutput", "TransformerDecoderLayer",
           "Dropout", "EdgeSet", "FeatureScaler", "ATTENTION_BACKENDS", "AttentionCost", "estimate"]
