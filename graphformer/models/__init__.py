"""Models built from graphformer layers."""
from .graph_transformer import GraphTransformer, GraphTransformerConfig, masked_loss

__all__ = ["GraphTransformer", "GraphTransformerConfig", "masked_loss"]
