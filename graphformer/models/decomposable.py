"""The decomposable attention model of Parikh et al. (EMNLP 2016), "A
Decomposable Attention Model for Natural Language Inference", as in Dive into
Deep Learning (section 16.5), with its two soft alignments as attention over
one complete bipartite edge set per pair."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor

from .. import patterns
from .._checks import refuse_softmax_backend
from ..nn.functional import segment_softmax

__all__ = ["DecomposableAttention", "DecomposableAttentionConfig", "Alignment"]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class DecomposableAttentionConfig:
    r"""Hyper-parameters of :class:`DecomposableAttention` (checked on creation).

    :meth:`d2l` gives Dive into Deep Learning's setting (embedding 100,
    hidden 200, dropout 0.2, 3 classes).

    Attributes:
        vocab_size: number of token ids (rows of the embedding).
        num_classes: number of classes (width of the output logits).
        embed_dim: token embedding size :math:`D`.
        hidden: hidden width of :math:`F`, :math:`G` and :math:`H`.
        attend_dim: output width :math:`K` of :math:`F`, the space in which
            :math:`e_{ij}` is a dot product (default: ``hidden``, as in the
            paper and D2L; ``attend_dim=embed_dim`` gives the :math:`D \to h
            \to D` shape this model had before, with :math:`F`'s output
            tied to the embedding).
        dropout: dropout on the inputs of the linear layers of :math:`F`,
            :math:`G`, :math:`H` (not the final classifier; training only),
            in ``[0, 1)``.
    """
    vocab_size: int
    num_classes: int
    embed_dim: int = 64
    hidden: int = 64
    dropout: float = 0.0
    attend_dim: Optional[int] = None

    @classmethod
    def d2l(cls, vocab_size: int, num_classes: int = 3) -> "DecomposableAttentionConfig":
        r"""D2L's ``DecomposableAttention(vocab, embed_size=100, num_hiddens=200)``:
        :math:`F: 100 \to 200 \to 200`, :math:`G: 200 \to 200 \to 200`,
        :math:`H: 400 \to 200 \to 200`, then ``Linear(200, 3)``; dropout 0.2."""
        return cls(vocab_size=vocab_size, num_classes=num_classes, embed_dim=100, hidden=200,
                   dropout=0.2)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "num_classes", "embed_dim", "hidden", "attend_dim"):
            value = getattr(self, name)
            if value is None and name == "attend_dim":
                continue
            if not _is_int(value):
                raise TypeError(f"'{name}' must be an int, got {type(value).__name__} ({value!r})")
            if value < 1:
                raise ValueError(f"'{name}' must be >= 1, got {value}")
        if (isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float))
                or not 0.0 <= self.dropout < 1.0):
            raise ValueError(f"'dropout' must be in [0, 1), got {self.dropout!r}")

    @property
    def attend_width(self) -> int:
        """:math:`K`, the output width of :math:`F`."""
        return self.hidden if self.attend_dim is None else self.attend_dim

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


class Alignment(NamedTuple):
    r"""The two soft alignments of one forward pass, one weight per edge.

    - ``beta_edge_index`` :math:`(2, E)` = ``patterns.cross(ptr_b, ptr_a)``
      (row 0 the hypothesis token :math:`j`, row 1 the premise token
      :math:`i`) and ``beta_weight`` :math:`(E,)` =
      :math:`\operatorname{softmax}_j(e_{ij})`: each premise token's weights
      sum to 1.
    - ``alpha_edge_index`` :math:`(2, E)` = ``patterns.cross(ptr_a, ptr_b)``
      (row 0 the premise token :math:`i`, row 1 the hypothesis token
      :math:`j`) and ``alpha_weight`` :math:`(E,)` =
      :math:`\operatorname{softmax}_i(e_{ij})`: each hypothesis token's
      weights sum to 1.

    Indices are the batches' global node numbers (``ptr_a`` / ``ptr_b``).
    """
    beta_edge_index: Tensor
    beta_weight: Tensor
    alpha_edge_index: Tensor
    alpha_weight: Tensor


class _MLP(torch.nn.Sequential):
    """``[Dropout, Linear, ReLU] * (len(sizes) - 1)``: D2L's ``mlp(num_inputs,
    num_hiddens)`` for ``sizes = (num_inputs, num_hiddens, num_hiddens)``."""

    def __init__(self, sizes: Tuple[int, ...], dropout: float) -> None:
        layers = []
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            layers += [torch.nn.Dropout(dropout), torch.nn.Linear(n_in, n_out), torch.nn.ReLU()]
        super().__init__(*layers)

    def reset_parameters(self) -> None:
        for module in self:
            if isinstance(module, torch.nn.Linear):
                module.reset_parameters()


def _check_tokens(batch: Any, name: str, vocab_size: int) -> Tuple[Tensor, Tensor]:
    x, ptr = getattr(batch, "x", None), getattr(batch, "ptr", None)
    if not isinstance(x, Tensor) or not isinstance(ptr, Tensor):
        raise TypeError(f"'{name}' must be a token batch with tensors 'x' (token ids) and 'ptr' "
                        f"(as from graphformer.data.from_token_batch), got {type(batch).__name__}")
    if x.dim() != 1 or x.dtype.is_floating_point or x.dtype == torch.bool:
        raise ValueError(f"'{name}.x' must be a 1-D integer tensor of token ids, got dtype "
                         f"{x.dtype} and shape {list(x.shape)}")
    if x.numel() and (int(x.min()) < 0 or int(x.max()) >= vocab_size):
        k = int(((x < 0) | (x >= vocab_size)).nonzero()[0])
        raise IndexError(f"'{name}.x[{k}]' = {int(x[k])} is not a token id of the vocabulary "
                         f"(valid ids 0..{vocab_size - 1})")
    return x, ptr


class DecomposableAttention(torch.nn.Module):
    r"""Natural language inference by attend, compare and aggregate (Parikh
    et al., 2016, without the optional intra-sentence attention; as in Dive
    into Deep Learning, section 16.5).

    For a pair of sentences :math:`a = (a_1, \dots, a_{\ell_a})` (premise) and
    :math:`b = (b_1, \dots, b_{\ell_b})` (hypothesis) of embedded tokens
    :math:`a_i, b_j \in \mathbb{R}^D`:

    .. math::
        e_{ij} &= F(a_i)^\top F(b_j)

        \beta_i &= \sum_{j=1}^{\ell_b} \frac{\exp e_{ij}}{\sum_{k=1}^{\ell_b} \exp e_{ik}} b_j,
        \qquad
        \alpha_j = \sum_{i=1}^{\ell_a} \frac{\exp e_{ij}}{\sum_{k=1}^{\ell_a} \exp e_{kj}} a_i

        \mathbf{v}_{1,i} &= G([a_i; \beta_i]), \qquad
        \mathbf{v}_{2,j} = G([b_j; \alpha_j])

        \mathbf{v}_1 &= \sum_i \mathbf{v}_{1,i}, \qquad
        \mathbf{v}_2 = \sum_j \mathbf{v}_{2,j}, \qquad
        \hat{\mathbf{y}} = W_o H([\mathbf{v}_1; \mathbf{v}_2]) + c_o

    where each of :math:`F` (:math:`D \to h \to K`), :math:`G`
    (:math:`2D \to h \to h`) and :math:`H` (:math:`2h \to h \to h`) is D2L's
    ``mlp``: Dropout, Linear, ReLU, Dropout, Linear, ReLU (:math:`h` =
    ``hidden``, :math:`K` = ``attend_dim``, by default :math:`h`); the final
    classifier :math:`W_o` (:math:`h \to` ``num_classes``) has no dropout.

    **One F per token, one e per pair.** :math:`F` runs once on the
    premise's tokens and once on the hypothesis's (:math:`\ell_a + \ell_b`
    rows per pair, one dropout draw each), and :math:`e_{ij}` is computed
    once, on the edges :math:`j \to i` of ``patterns.cross(ptr_b, ptr_a)``
    (:math:`\ell_a \ell_b` dot products). :math:`\beta` normalises it over
    each premise token's incoming edges (a segment softmax by target) and
    aggregates the hypothesis tokens as messages; :math:`\alpha` normalises
    the same scores over each hypothesis token's outgoing edges (by source)
    and sends the premise tokens the other way. Both alignments therefore
    see the same :math:`e` in training too, as in D2L's dense
    ``e = f(A) f(B)^T``.

    **Padding.** Sentences are not padded: a pair's edge set contains only
    its real tokens. (D2L pads every sentence to 50 tokens and lets the
    ``<pad>`` tokens take part in attention and in the sums; to reproduce
    that, pad the token lists before batching.)

    Shapes (:math:`B` pairs, :math:`N_a`, :math:`N_b` tokens in all,
    :math:`E = \sum_b \ell_{a,b} \ell_{b,b}` edges):
        - :meth:`forward`: two token batches with ``x`` :math:`(N_a,)`,
          :math:`(N_b,)` and ``ptr`` :math:`(B + 1,)` -> logits
          :math:`(B, \text{num\_classes})`, and with
          ``return_attention_weights=True`` also an :class:`Alignment`.
        - :meth:`classify`: embedded tokens :math:`(N_a, D)`, :math:`(N_b, D)`
          and the two ``ptr`` -> the same.

    Args:
        config: the hyper-parameters. (``softmax_backend`` was removed:
            :func:`graphformer.nn.functional.segment_softmax` chooses its
            implementation itself.)
    """

    def __init__(self, config: DecomposableAttentionConfig, **removed: Any) -> None:
        refuse_softmax_backend(type(self).__name__, removed)
        if removed:
            raise TypeError(f"{type(self).__name__}() got unexpected keyword argument(s) "
                            f"{sorted(removed)}")
        super().__init__()
        if not isinstance(config, DecomposableAttentionConfig):
            raise TypeError(f"'config' must be a DecomposableAttentionConfig, got "
                            f"{type(config).__name__}")
        self.config = c = config
        D, h, K = c.embed_dim, c.hidden, c.attend_width
        self.embedding = torch.nn.Embedding(c.vocab_size, D)
        self.F = _MLP((D, h, K), c.dropout)
        self.G = _MLP((2 * D, h, h), c.dropout)
        self.H = _MLP((2 * h, h, h), c.dropout)
        self.H.append(torch.nn.Linear(h, c.num_classes))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.embedding.reset_parameters()
        self.F.reset_parameters()
        self.G.reset_parameters()
        self.H.reset_parameters()

    def forward(self, premise: Any, hypothesis: Any, return_attention_weights: bool = False
                ) -> Union[Tensor, Tuple[Tensor, Alignment]]:
        """Logits ``[B, num_classes]`` for token batches ``premise`` and
        ``hypothesis`` (each with ``x`` token ids and ``ptr``, e.g. from
        :func:`graphformer.data.from_token_batch`; pair ``b`` is sentence ``b``
        of each)."""
        x_a, ptr_a = _check_tokens(premise, "premise", self.config.vocab_size)
        x_b, ptr_b = _check_tokens(hypothesis, "hypothesis", self.config.vocab_size)
        return self.classify(self.embedding(x_a), ptr_a, self.embedding(x_b), ptr_b,
                             return_attention_weights=return_attention_weights)

    def align(self, f_a: Tensor, f_b: Tensor, a: Tensor, b: Tensor, ptr_a: Tensor,
              ptr_b: Tensor) -> Tuple[Tensor, Tensor, Alignment]:
        r"""The attend step on :math:`F`'s outputs ``f_a [N_a, K]``, ``f_b
        [N_b, K]``: returns :math:`\beta` ``[N_a, D]``, :math:`\alpha`
        ``[N_b, D]`` and the :class:`Alignment`."""
        edge_index = patterns.cross(ptr_b, ptr_a)               # j (b) -> i (a), by i then j
        j, i = edge_index
        e = (f_a.index_select(0, i) * f_b.index_select(0, j)).sum(-1)      # [E]
        w_beta = segment_softmax(e, i, a.size(0))
        w_alpha = segment_softmax(e, j, b.size(0))
        beta = a.new_zeros(a.size(0), b.size(1)).index_add_(
            0, i, w_beta.unsqueeze(1) * b.index_select(0, j))
        alpha = b.new_zeros(b.size(0), a.size(1)).index_add_(
            0, j, w_alpha.unsqueeze(1) * a.index_select(0, i))
        # The alpha edges a -> b in patterns.cross(ptr_a, ptr_b)'s order (by b, then a).
        perm = torch.argsort(j * a.size(0) + i)
        alignment = Alignment(edge_index, w_beta, edge_index.flip(0)[:, perm], w_alpha[perm])
        return beta, alpha, alignment

    def classify(self, a: Tensor, ptr_a: Tensor, b: Tensor, ptr_b: Tensor,
                 return_attention_weights: bool = False
                 ) -> Union[Tensor, Tuple[Tensor, Alignment]]:
        """The model on embedded tokens ``a [N_a, D]``, ``b [N_b, D]`` (pairs
        delimited by ``ptr_a``, ``ptr_b``; every sentence non-empty)."""
        D = self.config.embed_dim
        ptr_a = patterns.as_ptr(ptr_a, name="ptr_a")
        ptr_b = patterns.as_ptr(ptr_b, name="ptr_b")
        for name, x, ptr in (("a", a, ptr_a), ("b", b, ptr_b)):
            if not isinstance(x, Tensor) or x.dim() != 2 or x.size(1) != D:
                shape = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
                raise ValueError(f"'{name}' must have shape [N_{name}, embed_dim={D}], got {shape}")
            if int(ptr[-1]) != x.size(0):
                raise ValueError(f"'ptr_{name}' ends at {int(ptr[-1])} but '{name}' has "
                                 f"{x.size(0)} tokens")
            empty = (ptr.diff() == 0).nonzero()
            if empty.numel():
                raise ValueError(f"sentence {int(empty[0])} of '{name}' is empty; every "
                                 f"sentence needs at least one token")
        if ptr_a.numel() != ptr_b.numel():
            raise ValueError(f"'ptr_a' describes {ptr_a.numel() - 1} sentences but 'ptr_b' "
                             f"describes {ptr_b.numel() - 1}; they must pair up")
        ptr_a, ptr_b = ptr_a.to(a.device), ptr_b.to(a.device)
        num_pairs = ptr_a.numel() - 1

        # Attend (F once per token, in D2L's order: premise, then hypothesis).
        f_a = self.F(a)
        f_b = self.F(b)
        beta, alpha, alignment = self.align(f_a, f_b, a, b, ptr_a, ptr_b)

        # Compare, then aggregate per pair.
        v1 = self.G(torch.cat([a, beta], dim=-1))
        v2 = self.G(torch.cat([b, alpha], dim=-1))
        pairs = torch.arange(num_pairs, device=a.device)
        s1 = v1.new_zeros(num_pairs, v1.size(1)).index_add_(
            0, torch.repeat_interleave(pairs, ptr_a.diff()), v1)
        s2 = v2.new_zeros(num_pairs, v2.size(1)).index_add_(
            0, torch.repeat_interleave(pairs, ptr_b.diff()), v2)
        logits = self.H(torch.cat([s1, s2], dim=-1))
        if return_attention_weights:
            return logits, alignment
        return logits

    def __repr__(self) -> str:
        c = self.config
        return (f"{self.__class__.__name__}(vocab_size={c.vocab_size}, "
                f"num_classes={c.num_classes}, embed_dim={c.embed_dim}, hidden={c.hidden}, "
                f"attend_dim={c.attend_width}, dropout={c.dropout})")
