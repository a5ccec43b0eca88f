"""Token sequences become graphs: one node per token, edges from a pattern."""
from __future__ import annotations

from typing import Callable, Dict, Hashable, Iterable, List, Optional, Sequence, Union

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data
from torch_geometric.transforms import BaseTransform


Tokens = Union[Sequence[Hashable], Tensor]
Pattern = Callable[[Tensor], Tensor]  # ptr -> edge_index, e.g. patterns.causal


def build_vocab(sequences: Iterable[Sequence[Hashable]],
                specials: Sequence[str] = ("<pad>", "<unk>")) -> Dict[Hashable, int]:
    """A vocabulary: ``specials`` first, then tokens in order of first appearance."""
    vocab: Dict[Hashable, int] = {s: k for k, s in enumerate(specials)}
    for seq in sequences:
        for tok in seq:
            vocab.setdefault(tok, len(vocab))
    return vocab


def _token_ids(tokens: Tokens, vocab: Optional[Dict[Hashable, int]], unk: Optional[str]) -> Tensor:
    if isinstance(tokens, Tensor):
        if tokens.dim() != 1 or tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise ValueError(f"token ids must be a 1-D integer tensor, got dtype "
                             f"{tokens.dtype} and shape {list(tokens.shape)}")
        if tokens.numel() and int(tokens.min()) < 0:
            pos = int((tokens < 0).nonzero()[0])
            raise ValueError(f"token id at position {pos} is negative: {int(tokens[pos])}")
        return tokens.long()
    if isinstance(tokens, str):
        raise ValueError("tokens must be a sequence of tokens, not one string: split it "
                         "first (e.g. text.split())")
    tokens = list(tokens)
    if vocab is None:
        for pos, tok in enumerate(tokens):
            if isinstance(tok, bool) or not isinstance(tok, int) or tok < 0:
                raise ValueError(f"without a vocab, tokens must be non-negative ints; token "
                                 f"at position {pos} is {tok!r}")
        return torch.tensor(tokens, dtype=torch.long)
    ids = []
    for pos, tok in enumerate(tokens):
        idx = vocab.get(tok)
        if idx is None:
            if unk is None or unk not in vocab:
                raise ValueError(f"token {tok!r} at position {pos} is not in the vocabulary")
            idx = vocab[unk]
        ids.append(idx)
    return torch.tensor(ids, dtype=torch.long)


def from_tokens(tokens: Tokens, vocab: Optional[Dict[Hashable, int]] = None,
                pattern: Optional[Pattern] = None, unk: Optional[str] = "<unk>") -> Data:
    """A token sequence as a graph.

    Args:
        tokens: token ids (ints or a 1-D integer tensor), or hashable tokens
            looked up in ``vocab``.
        vocab: token -> id. Unknown tokens map to ``vocab[unk]``, or raise a
            ``ValueError`` naming the token and position when ``unk`` is None
            or not in the vocabulary.
        pattern: an edge-set builder taking ``ptr`` (e.g.
            ``patterns.causal`` or ``lambda p: patterns.window(p, 8)``); by
            default no edges are stored and the caller builds them per batch.

    Returns:
        ``Data`` with ``x`` (``LongTensor [T]`` token ids), ``pos``
        (``LongTensor [T]`` position in the sequence), ``num_nodes = T`` and,
        with ``pattern``, ``edge_index``.
    """
    ids = _token_ids(tokens, vocab, unk)
    data = Data(x=ids, pos=torch.arange(ids.numel()), num_nodes=ids.numel())
    if pattern is not None:
        data.edge_index = pattern(torch.tensor([0, ids.numel()]))
    return data


def from_token_batch(sequences: Sequence[Tokens], vocab: Optional[Dict[Hashable, int]] = None,
                     pattern: Optional[Pattern] = None, unk: Optional[str] = "<unk>") -> Batch:
    """Many sequences as one PyG ``Batch`` (``ptr`` = sequence boundaries).

    With ``pattern``, ``edge_index`` is built once for the whole batch in its
    global numbering (no per-sequence loop).
    """
    datas: List[Data] = [from_tokens(seq, vocab, None, unk) for seq in sequences]
    batch = Batch.from_data_list(datas)
    if pattern is not None:
        batch.edge_index = pattern(batch.ptr)
    return batch


class RelativePosition(BaseTransform):
    r"""Writes the clipped relative position of every edge as an edge feature,
    so that :class:`~graphformer.nn.RelationalAttention` expresses
    relative-position attention (Shaw et al., 2018) with no extra code.

    For edge :math:`j \to i` the offset is
    :math:`d_{ij} = \operatorname{clip}(\text{pos}_j - \text{pos}_i, -k, k)`;
    with ``one_hot=True`` (default) ``edge_attr`` is the one-hot of
    :math:`d_{ij} + k`, shape ``[E, 2k + 1]``, so ``lin_edge_k`` and
    ``lin_edge_v`` are exactly Shaw's learned tables :math:`a^K`, :math:`a^V`
    (and ``lin_edge_q`` adds a query-side term). With ``one_hot=False`` it is
    the integer offset, ``LongTensor [E]``.

    Args:
        max_distance (int): the clip distance :math:`k`.
        one_hot (bool): one-hot floats instead of integer offsets.
        pattern: when given, ``edge_index`` is (re)built with it first
            (from ``data.ptr`` for a batch, else from the node count).
        cat (bool): append to an existing ``edge_attr`` instead of replacing it.
    """

    def __init__(self, max_distance: int, one_hot: bool = True,
                 pattern: Optional[Pattern] = None, cat: bool = False) -> None:
        if isinstance(max_distance, bool) or not isinstance(max_distance, int) or max_distance < 0:
            raise ValueError(f"'max_distance' must be an int >= 0, got {max_distance!r}")
        self.max_distance = max_distance
        self.one_hot = one_hot
        self.pattern = pattern
        self.cat = cat

    def forward(self, data: Data) -> Data:
        if self.pattern is not None:
            ptr = data.ptr if "ptr" in data else torch.tensor([0, data.num_nodes])
            data.edge_index = self.pattern(ptr)
        if "edge_index" not in data or data.edge_index is None:
            raise ValueError("RelativePosition needs 'edge_index' (or a 'pattern' to build it)")
        pos = data.pos if "pos" in data and data.pos is not None else None
        if pos is None:
            raise ValueError("RelativePosition needs 'pos' (token positions); build the "
                             "graph with graphformer.data.from_tokens")
        src, dst = data.edge_index
        k = self.max_distance
        offset = (pos[src] - pos[dst]).clamp(-k, k)
        feat = offset
        if self.one_hot:
            feat = torch.nn.functional.one_hot(offset + k, 2 * k + 1).float()
        if self.cat and data.edge_attr is not None:
            feat = torch.cat([data.edge_attr.view(feat.size(0), -1),
                              feat.view(feat.size(0), -1).to(data.edge_attr.dtype)], dim=1)
        data.edge_attr = feat
        return data

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(max_distance={self.max_distance}, "
                f"one_hot={self.one_hot})")
