"""RASP selectors as attention heads of :class:`graphformer.nn.RelationalAttention`.

A selector is an edge set, so a head restricted to it attends exactly to the
selected keys. With equal scores on those edges (e.g. zero query/key weights)
the softmax is uniform and the head computes the mean of the values over the
selected keys: RASP's :func:`~graphformer.rasp.aggregate`. A query that selects
nothing gets a zero attention sum, i.e. aggregate's default 0 (with no output
bias).
"""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch
from torch import Tensor

from .. import patterns
from .._checks import check_edge_index
from ..nn.attention import RelationalAttention
from ..patterns import edge_keys
from ._core import Selector, common_context


def selector_to_head(*selectors: Selector) -> Tuple[Tensor, Tensor]:
    """The fixed attention pattern of one or several selectors.

    Returns:
        ``(edge_index [2, E], head_mask [E, k] bool)``. With one selector,
        ``edge_index`` is the selector's edge set and ``head_mask`` is all True
        (``[E, 1]``). With ``k`` selectors packed into the ``k`` heads of one
        :class:`~graphformer.nn.RelationalAttention`, ``edge_index`` is their
        union and ``head_mask[e, h]`` says whether edge ``e`` belongs to
        ``selectors[h]``; pass both to the layer's ``forward``.
    """
    if not selectors:
        raise ValueError("selector_to_head needs at least one selector")
    for k, s in enumerate(selectors):
        if not isinstance(s, Selector):
            raise TypeError(f"selector {k} must be a Selector, got {type(s).__name__}")
    ctx = common_context(*selectors, op="selector_to_head")
    if len(selectors) == 1:
        ei = selectors[0].edge_index
        return ei, torch.ones(ei.size(1), 1, dtype=torch.bool, device=ei.device)
    return patterns.union(*(s.edge_index for s in selectors), num_nodes=ctx.num_nodes)


def uniform_attention(heads: int = 1) -> RelationalAttention:
    """A :class:`~graphformer.nn.RelationalAttention` that computes RASP
    aggregates: ``heads`` heads of one channel, zero query and key weights
    (equal scores, so uniform attention over each head's edges), identity value
    and output maps, no biases.

    ``layer(x, edge_index, head_mask=mask)[:, h]`` is
    ``aggregate(selectors[h], values_h)`` when ``x[:, h]`` holds the numerical
    values ``values_h`` and ``(edge_index, mask) = selector_to_head(*selectors)``.
    """
    layer = RelationalAttention(heads, heads, heads=heads, head_channels=1, bias=False)
    eye = torch.eye(heads)
    with torch.no_grad():
        layer.lin_q.weight.zero_()
        layer.lin_k.weight.zero_()
        layer.lin_v.weight.copy_(eye)
        layer.lin_out.weight.copy_(eye)
    return layer


def attention_match(alpha: Tensor, edge_index: Tensor,
                    selector: Union[Selector, Sequence[Selector]]) -> Tensor:
    """Per head, the share of attention mass that falls on the selector's edges.

    Args:
        alpha (Tensor [E, H] or [E]): attention weights on ``edge_index``, e.g.
            from ``RelationalAttention(..., return_attention_weights=True)``.
        edge_index (LongTensor [2, E]): the edges ``alpha`` lives on (same node
            numbering as the selector's batch).
        selector: one selector for every head, or a sequence of ``H``
            selectors, one per head.

    Returns:
        Tensor ``[H]``: ``sum(alpha on selector edges) / sum(alpha)`` per head;
        1.0 when the head's attention is confined to the selector. A head with
        no attention mass at all scores 1.0 (vacuously confined).
    """
    check_edge_index(edge_index)
    if alpha.dim() == 1:
        alpha = alpha.unsqueeze(-1)
    if alpha.dim() != 2 or alpha.size(0) != edge_index.size(1):
        raise ValueError(f"'alpha' must have shape [E, H] with E = {edge_index.size(1)} "
                         f"edges, got {list(alpha.shape)}")
    heads = alpha.size(1)
    sels = [selector] * heads if isinstance(selector, Selector) else list(selector)
    if len(sels) != heads:
        raise ValueError(f"got {len(sels)} selectors for {heads} heads")
    for k, s in enumerate(sels):
        if not isinstance(s, Selector):
            raise TypeError(f"selector {k} must be a Selector, got {type(s).__name__}")
    n = sels[0].context.num_nodes
    if edge_index.numel() and int(edge_index.max()) >= n:
        raise ValueError(f"'edge_index' uses node {int(edge_index.max())} but the "
                         f"selector's batch has {n} tokens")
    keys = edge_keys(edge_index.long(), n)
    out = alpha.new_ones(heads, dtype=torch.float64)
    for h, s in enumerate(sels):
        inside = torch.isin(keys, edge_keys(s.edge_index, n))
        a = alpha[:, h].detach().double()
        total = a.sum()
        if float(total) > 0:
            out[h] = a[inside].sum() / total
    return out.to(alpha.dtype if alpha.dtype.is_floating_point else torch.float64)


__all__ = ["selector_to_head", "uniform_attention", "attention_match"]
