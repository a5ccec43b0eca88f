"""What every attention backend takes: :class:`AttentionCall`.

Its own module, below the backends (:mod:`graphformer.nn.sparse`,
:mod:`~graphformer.nn.dense`, :mod:`~graphformer.nn.fused`,
:mod:`~graphformer.nn.fused_cpu`) and below the registry that names them
(:mod:`graphformer.nn.backend`, which re-exports it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional, Tuple, Union

from torch import Tensor

if TYPE_CHECKING:  # imported for annotations only
    from .edge_set import EdgeSet
    from .edge_terms import PerEdgeTerms, TypedEdgeTerms

__all__ = ["AttentionCall", "BackendFn"]


@dataclass
class AttentionCall:
    """What every attention backend takes.

    Attributes:
        q (Tensor [N_t, H, C]), k, v (Tensor [N_s, H, C]): projected nodes.
        edge_index (LongTensor [2, E]): the edges in the order of the per-edge
            tensors below (grouped by target when ``edges`` is given; read by
            the ``"propagate"`` backend only, the others read ``edges``).
        edges (EdgeSet or None): the prepared edge set (None only for the
            ``"propagate"`` backend under :func:`torch.compile`).
        terms (PerEdgeTerms or TypedEdgeTerms or None): the edge-feature terms.
        head_mask (BoolTensor [E, H] or None): edge ``e`` seen by head ``h``.
        dropout (float), training (bool): attention dropout.
        need_weights (bool): return the attention weights [E, H].
        message_passing (callable or None): the calling layer's own PyG
            message passing (``MessagePassing.propagate`` with per-edge
            messages), which the ``"propagate"`` backend runs; None where the
            caller is no message-passing layer.
    """
    q: Tensor
    k: Tensor
    v: Tensor
    edge_index: Tensor
    edges: Optional["EdgeSet"]
    terms: Optional[Union["PerEdgeTerms", "TypedEdgeTerms"]]
    head_mask: Optional[Tensor]
    dropout: float
    training: bool
    need_weights: bool
    message_passing: Optional[Callable[["AttentionCall"], Tuple[Tensor, Optional[Tensor]]]] = None


#: An attention backend: an :class:`AttentionCall` in, ``(out [N_t, H, C],
#: alpha [E, H] or None)`` out (alpha before dropout, in target order).
BackendFn = Callable[[AttentionCall], Tuple[Tensor, Optional[Tensor]]]
