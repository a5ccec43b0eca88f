"""Token sequences become graphs: one node per token, edges from a pattern."""
from __future__ import annotations

import math
from typing import Callable, Dict, Hashable, Iterable, List, Optional, Sequence, Union

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data
from torch_geometric.transforms import BaseTransform


Tokens = Union[Sequence[Hashable], Tensor]
Pattern = Callable[[Tensor], Tensor]  # ptr -> edge_index, e.g. patterns.causal


def build_vocab(sequences: Iterable[Sequence[Hashable]],
                specials: Sequence[str] = ("<pad>", "<unk>"),
                min_freq: int = 1) -> Dict[Hashable, int]:
    """A vocabulary: ``specials`` first, then the tokens that occur at least
    ``min_freq`` times, in order of first appearance (rarer ones are left to
    the ``"<unk>"`` special)."""
    if isinstance(min_freq, bool) or not isinstance(min_freq, int) or min_freq < 1:
        raise ValueError(f"'min_freq' must be an int >= 1, got {min_freq!r}")
    counts: Dict[Hashable, int] = {}
    for seq in sequences:
        for tok in seq:
            counts[tok] = counts.get(tok, 0) + 1
    vocab: Dict[Hashable, int] = {s: k for k, s in enumerate(specials)}
    for tok, count in counts.items():
        if count >= min_freq:
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
    if not datas:      # PyG's from_data_list fails on an empty list with an IndexError
        raise ValueError("from_token_batch needs at least one sequence (an empty sequence, "
                         "[], is one), got none")
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


def _positions(data: Data) -> Tensor:
    """Position of every node within its own sequence, from ``ptr`` (a PyG
    batch), else ``batch`` (sorted graph index), else ``0 .. N - 1``."""
    num_nodes = data.num_nodes
    ptr = data.ptr if "ptr" in data and data.ptr is not None else None
    batch = data.batch if "batch" in data and data.batch is not None else None
    if ptr is None and batch is not None:
        if batch.numel() > 1 and not bool((batch[1:] >= batch[:-1]).all()):
            k = int((batch[1:] < batch[:-1]).nonzero()[0]) + 1
            raise ValueError(f"'batch' must be sorted (each sequence contiguous); node {k} has "
                             f"batch {int(batch[k])} after {int(batch[k - 1])}")
        counts = torch.bincount(batch, minlength=int(batch.max()) + 1 if batch.numel() else 0)
        ptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    if ptr is None:
        return torch.arange(num_nodes)
    if int(ptr[-1]) != num_nodes:
        raise ValueError(f"'ptr' ends at {int(ptr[-1])} but the graph has {num_nodes} nodes")
    starts = torch.repeat_interleave(ptr[:-1], ptr.diff())
    return torch.arange(num_nodes, device=ptr.device) - starts


def sinusoidal_encoding(position: Tensor, dim: int, base: float = 10000.0,
                        dtype: torch.dtype = torch.float32) -> Tensor:
    r"""The sinusoidal table of Vaswani et al. (2017) at integer ``position``
    :math:`(N,)`: :math:`(N, \text{dim})` with
    :math:`PE_{p, 2i} = \sin(p / \text{base}^{2i/\text{dim}})` and
    :math:`PE_{p, 2i+1} = \cos(p / \text{base}^{2i/\text{dim}})`
    (an odd ``dim`` ends with a sine column)."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"'dim' must be an int >= 1, got {dim!r}")
    if not base > 1.0:
        raise ValueError(f"'base' must be > 1, got {base!r}")
    # 1 / base^(2i/dim), computed in float64 and rounded once at the end.
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64,
                                      device=position.device) * (-math.log(base) / dim))
    angle = position.to(torch.float64).unsqueeze(1) * inv_freq       # [N, ceil(dim / 2)]
    out = torch.empty(position.numel(), dim, dtype=torch.float64, device=position.device)
    out[:, 0::2] = angle.sin()
    out[:, 1::2] = angle[:, :dim // 2].cos()
    return out.to(dtype)


class SinusoidalPosition(BaseTransform):
    r"""Absolute sinusoidal positional encoding (Vaswani et al., 2017) of the
    tokens of a sequence graph, counted within each sequence of a batch.

    For the token at position :math:`p` of its own sequence (from ``ptr`` of
    a PyG batch, else from a sorted ``batch`` vector, else :math:`0 \dots
    N-1` for one sequence):

    .. math::
        PE_{p, 2i} = \sin\big(p / 10000^{2i/d}\big), \qquad
        PE_{p, 2i+1} = \cos\big(p / 10000^{2i/d}\big)

    (an odd :math:`d` ends with a sine column). By default the table is
    written to ``data.pos_enc`` :math:`(N, d)`, because token graphs carry
    integer token ids in ``x`` that are embedded later by the model (which
    then adds ``pos_enc`` to the embeddings, as the original transformer
    does). With ``add=True`` it is added to a float ``x`` of width :math:`d`
    instead. Applying the transform to each sequence and then batching gives
    the same values as applying it to the batch.

    **Absolute or relative.** Where the position lives decides what
    attention can see:

    ==================  ================================  ====================================
    choice              absolute (this transform, or a    relative (:class:`RelativePosition`,
                        learned ``nn.Embedding`` on       Shaw et al. 2018)
                        ``data.pos``)
    ==================  ================================  ====================================
    stored on           nodes: ``pos_enc [N, d]``         edges: ``edge_attr [E, 2k + 1]``,
                        (or added to ``x``)               one-hot of clip(j - i, -k, k)
    enters attention    through the node states: in       through ``lin_edge_q/k/v`` of
                        queries, keys and values alike    :class:`RelationalAttention`:
                                                          per-edge score and value terms
    parameters          none (sinusoids) or               :math:`3 (2k + 1) C H` in the
                        ``max_len * d`` (learned)         edge projections
    longer sequences    defined for any position, but     offsets beyond :math:`k` share
                        unseen positions are out of       one clipped bucket: any length
                        distribution
    shift invariance    no: a token's encoding is its     yes: only offsets are seen
                        index                             (within the edge set)
    ==================  ================================  ====================================

    Both can be combined (absolute on nodes, relative on edges).

    Args:
        dim (int): encoding width :math:`d`.
        base (float): the wavelength base (10000 in the paper).
        add (bool): add to ``data.x`` (float, width ``dim``) instead of
            writing ``data.pos_enc``.
        dtype: dtype of ``pos_enc`` (with ``add=True``, that of ``x``).
    """

    def __init__(self, dim: int, base: float = 10000.0, add: bool = False,
                 dtype: torch.dtype = torch.float32) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"'dim' must be an int >= 1, got {dim!r}")
        if isinstance(base, bool) or not isinstance(base, (int, float)) or not base > 1.0:
            raise ValueError(f"'base' must be a number > 1, got {base!r}")
        self.dim = dim
        self.base = float(base)
        self.add = add
        self.dtype = dtype

    def forward(self, data: Data) -> Data:
        position = _positions(data)
        if self.add:
            x = data.x if "x" in data else None
            if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != 2 \
                    or x.size(1) != self.dim:
                got = (f"dtype {x.dtype} and shape {list(x.shape)}" if isinstance(x, Tensor)
                       else type(x).__name__)
                raise ValueError(f"SinusoidalPosition(add=True) needs a float 'x' of shape "
                                 f"[N, {self.dim}], got {got}; with integer token ids use "
                                 f"add=False (writes 'pos_enc')")
            data.x = x + sinusoidal_encoding(position.to(x.device), self.dim, self.base,
                                             x.dtype)
        else:
            data.pos_enc = sinusoidal_encoding(position, self.dim, self.base, self.dtype)
        return data

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(dim={self.dim}, base={self.base:g}, "
                f"add={self.add})")
