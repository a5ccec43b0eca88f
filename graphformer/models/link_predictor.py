"""Link prediction on one graph: a :class:`NodeClassifier` encoder (the
:class:`NodeTransformer`'s patterns on each sampled subgraph) whose node
states score a link ``(i, j)`` by a dot product or a small MLP."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor

from .node_transformer import NodeClassifier, NodeTransformerConfig

#: how :class:`LinkPredictor` scores a link from its endpoints' states
LINK_SCORES = ("dot", "mlp")


@dataclass
class LinkPredictorConfig:
    """Hyper-parameters of :class:`LinkPredictor` (checked on creation).

    Attributes:
        encoder: the :class:`NodeTransformer` (its ``num_classes`` is the width
            of the node states the scorer reads; :meth:`for_graph` sets it to
            ``hidden``).
        score: ``"dot"``: :math:`s_{ij} = \\langle h_i, h_j \\rangle`;
            ``"mlp"``: :math:`s_{ij} = \\mathrm{MLP}(h_i \\odot h_j)` (one
            hidden ReLU layer of the states' width). Both are symmetric in
            ``i, j``; the logit of the link is :math:`s_{ij}`.
    """
    encoder: NodeTransformerConfig
    score: str = "dot"

    def __post_init__(self) -> None:
        if not isinstance(self.encoder, NodeTransformerConfig):
            raise TypeError(f"'encoder' must be a NodeTransformerConfig, got "
                            f"{type(self.encoder).__name__}")
        if self.score not in LINK_SCORES:
            raise ValueError(f"'score' must be one of {', '.join(LINK_SCORES)}, got "
                             f"{self.score!r}")

    def to_dict(self) -> Dict[str, Any]:
        """The encoder's fields and ``score``, in one flat dict."""
        return {**self.encoder.to_dict(), "score": self.score}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "LinkPredictorConfig":
        d = dict(d)
        score = d.pop("score", "dot")
        d["patterns"] = tuple(d["patterns"])
        return cls(NodeTransformerConfig(**d), score)

    def for_graph(self, in_channels: int) -> "LinkPredictorConfig":
        """The config with the input width of the graph and states of width
        ``hidden``."""
        return replace(self, encoder=replace(self.encoder, in_channels=in_channels,
                                             num_classes=self.encoder.hidden))


class LinkPredictor(torch.nn.Module):
    r"""Scores links on sampled subgraphs (PyG mini-batches of ``LinkLoader``).

    The encoder (a :class:`NodeClassifier` without a seed cut: every node of
    the subgraph) gives states :math:`h` of width ``encoder.num_classes``;
    :meth:`score` turns pairs of them into logits.

    Args:
        config (LinkPredictorConfig): the model.
        num_nodes (int): nodes of the whole graph (for the embedding).
        features (bool): batches carry node features ``batch.x``; without
            them every node has a learnable input vector.

    Shapes:
        :meth:`forward`: a batch of :math:`N_b` nodes -> states
        :math:`(N_b, \text{num\_classes})`; :meth:`score`: ``h_src``,
        ``h_dst`` of broadcastable shapes ``(..., D)`` -> ``(...)``.
    """

    def __init__(self, config: LinkPredictorConfig, num_nodes: int,
                 features: bool = True) -> None:
        super().__init__()
        if not isinstance(config, LinkPredictorConfig):
            raise TypeError(f"'config' must be a LinkPredictorConfig, got "
                            f"{type(config).__name__}")
        self.config = config
        self.encoder = NodeClassifier(config.encoder, num_nodes, features)
        width = config.encoder.num_classes
        self.mlp = None
        if config.score == "mlp":
            self.mlp = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(),
                                           torch.nn.Linear(width, 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.encoder.reset_parameters()
        if self.mlp is not None:
            for layer in self.mlp:
                if hasattr(layer, "reset_parameters"):
                    layer.reset_parameters()

    def forward(self, batch: Any, generator: Optional[torch.Generator] = None) -> Tensor:
        """The states of every node of ``batch`` (``generator``: the random
        keys' generator, CPU)."""
        if hasattr(batch, "batch_size"):
            raise ValueError("a link batch has no 'batch_size' (seed nodes): every node's "
                             "state is needed")
        return self.encoder(batch, generator=generator)

    def score(self, h_src: Tensor, h_dst: Tensor) -> Tensor:
        """The logits of links whose endpoints have states ``h_src`` and
        ``h_dst`` (broadcast against each other)."""
        if self.mlp is None:
            return (h_src * h_dst).sum(-1)
        return self.mlp(h_src * h_dst).squeeze(-1)

    def score_pairs(self, h: Tensor, index: Tensor) -> Tensor:
        """The logits of the links ``index`` ``[2, L]`` (local ids into ``h``)."""
        return self.score(h[index[0]], h[index[1]])

    def score_triplets(self, h: Tensor, src: Tensor, dst_pos: Tensor,
                       dst_neg: Tensor) -> Tuple[Tensor, Tensor]:
        """The logits of the positive links ``(src, dst_pos)`` ``[B]`` and of
        the negatives sharing their source ``(src, dst_neg)`` ``[B, K]``.
        ``dst_neg`` is ``[B, K]``, or ``[B]`` for one negative a link (what
        PyG's triplet sampling gives then: it squeezes ``K = 1``)."""
        if dst_neg.dim() != 2:
            if dst_neg.dim() != 1 or dst_neg.numel() != src.numel():
                raise ValueError(f"'dst_neg' must be [B, K] or [B] with B = {src.numel()} "
                                 f"links, got shape {list(dst_neg.shape)}")
            dst_neg = dst_neg.unsqueeze(1)
        h_src = h[src]
        return self.score(h_src, h[dst_pos]), self.score(h_src.unsqueeze(1), h[dst_neg])

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.encoder!r}, score={self.config.score!r})"


__all__ = ["LINK_SCORES", "LinkPredictorConfig", "LinkPredictor"]
