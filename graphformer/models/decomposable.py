"""The decomposable attention model of Parikh et al. (EMNLP 2016), "A
Decomposable Attention Model for Natural Language Inference", with its two
soft alignments as cross-attention over complete bipartite edge sets."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, NamedTuple, Tuple, Union

import torch
from torch import Tensor

from .. import patterns
from ..nn import RelationalAttention

__all__ = ["DecomposableAttention", "DecomposableAttentionConfig", "Alignment"]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class DecomposableAttentionConfig:
    """Hyper-parameters of :class:`DecomposableAttention` (checked on creation).

    Attributes:
        vocab_size: number of token ids (rows of the embedding).
        num_classes: number of classes (width of the output logits).
        embed_dim: token embedding size :math:`D`; also the output size of
            :math:`F` (the attention's single head has :math:`C = D` channels).
        hidden: hidden width of :math:`F`, :math:`G` and :math:`H`.
        dropout: dropout on the inputs of every linear layer of
            :math:`F`, :math:`G`, :math:`H` (training only), in ``[0, 1)``.
    """
    vocab_size: int
    num_classes: int
    embed_dim: int = 64
    hidden: int = 64
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "num_classes", "embed_dim", "hidden"):
            value = getattr(self, name)
            if not _is_int(value):
                raise TypeError(f"'{name}' must be an int, got {type(value).__name__} ({value!r})")
            if value < 1:
                raise ValueError(f"'{name}' must be >= 1, got {value}")
        if (isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float))
                or not 0.0 <= self.dropout < 1.0):
            raise ValueError(f"'dropout' must be in [0, 1), got {self.dropout!r}")

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
    """``[Dropout, Linear, ReLU] * len(sizes) - 1`` (the paper's F and G)."""

    def __init__(self, sizes: Tuple[int, ...], dropout: float) -> None:
        layers = []
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            layers += [torch.nn.Dropout(dropout), torch.nn.Linear(n_in, n_out), torch.nn.ReLU()]
        super().__init__(*layers)

    def reset_parameters(self) -> None:
        for module in self:
            if isinstance(module, torch.nn.Linear):
                module.reset_parameters()


class _Scaled(torch.nn.Module):
    """``scale * module(x)``: the attention's tied query/key projection."""

    def __init__(self, module: torch.nn.Module, scale: float) -> None:
        super().__init__()
        self.module = module
        self.scale = scale

    def reset_parameters(self) -> None:
        self.module.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x) * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale:.6g}"


class _Identity(torch.nn.Identity):
    """The attention's value and output maps (no parameters)."""

    def reset_parameters(self) -> None:
        pass


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
    et al., 2016; without the optional intra-sentence attention).

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
        \hat{\mathbf{y}} = H([\mathbf{v}_1; \mathbf{v}_2])

    with :math:`F(x) = \mathrm{ReLU}(W_{F2}\,\mathrm{ReLU}(W_{F1} x + c_{F1}) + c_{F2})`
    (:math:`D \to` ``hidden`` :math:`\to D`),
    :math:`G(x) = \mathrm{ReLU}(W_{G2}\,\mathrm{ReLU}(W_{G1} x + c_{G1}) + c_{G2})`
    (:math:`2D \to` ``hidden`` :math:`\to` ``hidden``) and
    :math:`H(x) = W_{H3}\,\mathrm{ReLU}(W_{H2}\,\mathrm{ReLU}(W_{H1} x + c_{H1}) + c_{H2}) + c_{H3}`
    (``2 hidden`` :math:`\to` ``hidden`` :math:`\to` ``hidden`` :math:`\to`
    ``num_classes``), dropout before every linear layer.

    **As message passing.** :math:`\beta` is one-head
    :class:`~graphformer.nn.RelationalAttention` (``attend_a``) with queries
    :math:`a_i`, keys and values :math:`b_j` on the complete bipartite edge
    set ``patterns.cross(ptr_b, ptr_a)``; :math:`\alpha` is ``attend_b`` with
    queries :math:`b_j`, keys and values :math:`a_i` on
    ``patterns.cross(ptr_a, ptr_b)``. In both, the query and key projections
    are one shared module, :math:`x \mapsto s\,F(x)` with :math:`s = D^{1/4}`
    (so the layer's score :math:`(s F(a_i)) \cdot (s F(b_j)) / \sqrt{D}` is
    exactly :math:`e_{ij}`; ``attend_a.lin_q is attend_a.lin_k is
    attend_b.lin_q is attend_b.lin_k``), and the value and output maps are
    identities, so the attention output is exactly :math:`\beta_i`
    (:math:`\alpha_j`). :math:`e_{ij}` is computed once per direction (``2
    \ell_a \ell_b`` dot products per pair).

    Shapes (:math:`B` pairs, :math:`N_a`, :math:`N_b` tokens in all,
    :math:`E = \sum_b \ell_{a,b} \ell_{b,b}` edges per direction):
        - :meth:`forward`: two token batches with ``x`` :math:`(N_a,)`,
          :math:`(N_b,)` and ``ptr`` :math:`(B + 1,)` -> logits
          :math:`(B, \text{num\_classes})`, and with
          ``return_attention_weights=True`` also an :class:`Alignment`.
        - :meth:`classify`: embedded tokens :math:`(N_a, D)`, :math:`(N_b, D)`
          and the two ``ptr`` -> the same.
    """

    def __init__(self, config: DecomposableAttentionConfig) -> None:
        super().__init__()
        if not isinstance(config, DecomposableAttentionConfig):
            raise TypeError(f"'config' must be a DecomposableAttentionConfig, got "
                            f"{type(config).__name__}")
        self.config = c = config
        D, h = c.embed_dim, c.hidden
        self.embedding = torch.nn.Embedding(c.vocab_size, D)
        self.F = _MLP((D, h, D), c.dropout)
        self.G = _MLP((2 * D, h, h), c.dropout)
        self.H = _MLP((2 * h, h, h), c.dropout)
        self.H.append(torch.nn.Dropout(c.dropout))
        self.H.append(torch.nn.Linear(h, c.num_classes))
        self.score_scale = float(D) ** 0.25
        proj = _Scaled(self.F, self.score_scale)
        self.attend_a = self._attention(proj)
        self.attend_b = self._attention(proj)
        self.reset_parameters()

    def _attention(self, proj: torch.nn.Module) -> RelationalAttention:
        D = self.config.embed_dim
        attn = RelationalAttention((D, D), D, heads=1, head_channels=D, bias=False)
        attn.lin_q = attn.lin_k = proj
        attn.lin_v = _Identity()
        attn.lin_out = _Identity()
        return attn

    def reset_parameters(self) -> None:
        self.embedding.reset_parameters()
        self.F.reset_parameters()
        self.G.reset_parameters()
        self.H.reset_parameters()
        self.H[-1].reset_parameters()

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
        ptr_b = ptr_b.to(ptr_a.device)
        num_pairs = ptr_a.numel() - 1

        # Attend: beta_i over b's tokens (b -> a edges), alpha_j over a's (a -> b).
        ei_beta = patterns.cross(ptr_b, ptr_a)
        ei_alpha = patterns.cross(ptr_a, ptr_b)
        beta, w_beta = self.attend_a((b, a), ei_beta, return_attention_weights=True)
        alpha, w_alpha = self.attend_b((a, b), ei_alpha, return_attention_weights=True)

        # Compare, then aggregate per pair.
        v1 = self.G(torch.cat([a, beta], dim=-1))
        v2 = self.G(torch.cat([b, alpha], dim=-1))
        pair_a = torch.repeat_interleave(torch.arange(num_pairs, device=a.device), ptr_a.diff())
        pair_b = torch.repeat_interleave(torch.arange(num_pairs, device=b.device), ptr_b.diff())
        s1 = v1.new_zeros(num_pairs, v1.size(1)).index_add_(0, pair_a, v1)
        s2 = v2.new_zeros(num_pairs, v2.size(1)).index_add_(0, pair_b, v2)
        logits = self.H(torch.cat([s1, s2], dim=-1))
        if return_attention_weights:
            return logits, Alignment(ei_beta, w_beta.view(-1), ei_alpha, w_alpha.view(-1))
        return logits

    def __repr__(self) -> str:
        c = self.config
        return (f"{self.__class__.__name__}(vocab_size={c.vocab_size}, "
                f"num_classes={c.num_classes}, embed_dim={c.embed_dim}, hidden={c.hidden}, "
                f"dropout={c.dropout})")
