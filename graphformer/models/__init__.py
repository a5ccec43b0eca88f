"""Models built from graphformer layers."""
from .baselines import GINBaseline
from .decomposable import DecomposableAttention, DecomposableAttentionConfig
from .ensemble import Ensemble
from .graph_transformer import GraphTransformer, GraphTransformerConfig, masked_loss
from .kernel import MorganKernelRidge
from .link_predictor import LinkPredictor, LinkPredictorConfig
from .node_transformer import NodeClassifier, NodeTransformer, NodeTransformerConfig

__all__ = ["GraphTransformer", "GraphTransformerConfig", "masked_loss",
           "NodeTransformer", "NodeTransformerConfig", "NodeClassifier",
           "LinkPredictor", "LinkPredictorConfig",
           "DecomposableAttention", "DecomposableAttentionConfig", "GINBaseline", "Ensemble",
           "MorganKernelRidge"]
