"""The transformer decoder block over two edge sets: self-attention among the
target tokens and cross-attention from the memory (encoder output)."""
from __future__ import annotations

from typing import Literal, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import LayerNorm, Linear
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.typing import OptTensor

from .attention import RelationalAttention
from .transformer import ACTIVATIONS, feed_forward



class TransformerDecoderLayer(MessagePassing):
    r"""A transformer decoder block whose two attentions run over edge sets.

    Post-norm (``norm_first=False``, as in :class:`torch.nn.TransformerDecoderLayer`),
    for target states :math:`\mathbf{x}` and memory :math:`\mathbf{m}`:

    .. math::
        \mathbf{x} &\leftarrow \mathrm{LN}_1\big(\mathbf{x} + \mathrm{Dropout}(
            \mathrm{Attn}_{\text{self}}(\mathbf{x}, \mathcal{E}_{\text{self}}))\big)

        \mathbf{x} &\leftarrow \mathrm{LN}_2\big(\mathbf{x} + \mathrm{Dropout}(
            \mathrm{Attn}_{\text{cross}}((\mathbf{m}, \mathbf{x}),
            \mathcal{E}_{\text{cross}}))\big)

        \mathbf{x} &\leftarrow \mathrm{LN}_3\big(\mathbf{x} + \mathrm{FF}(\mathbf{x})\big),
        \qquad \mathrm{FF}(\mathbf{x}) = \mathrm{Dropout}(\mathbf{W}_2\,
            \mathrm{Dropout}(\sigma(\mathbf{W}_1 \mathbf{x})))

    and pre-norm (``norm_first=True``; the memory is not normalised, as in
    PyTorch):
    :math:`\mathbf{x} \leftarrow \mathbf{x} + \mathrm{Dropout}(\mathrm{Attn}_{\text{self}}(\mathrm{LN}_1(\mathbf{x})))`,
    :math:`\mathbf{x} \leftarrow \mathbf{x} + \mathrm{Dropout}(\mathrm{Attn}_{\text{cross}}((\mathbf{m}, \mathrm{LN}_2(\mathbf{x}))))`,
    :math:`\mathbf{x} \leftarrow \mathbf{x} + \mathrm{FF}(\mathrm{LN}_3(\mathbf{x}))`.

    Both attentions are :class:`RelationalAttention`. The self-attention edge
    set :math:`\mathcal{E}_{\text{self}}` is any edge set among target nodes,
    typically ``patterns.causal(ptr_tgt)`` (PyTorch's ``tgt_mask`` with
    ``tgt_is_causal``); the cross-attention edge set
    :math:`\mathcal{E}_{\text{cross}}` is bipartite, row 0 a memory node and
    row 1 a target node, typically ``patterns.cross(ptr_mem, ptr_tgt)`` (every
    target token sees every memory token of its own pair: PyTorch's
    ``memory_key_padding_mask``); a subset of it plays ``memory_mask``.

    Args:
        channels (int): target feature size (input = output).
        heads (int): attention heads :math:`H` of both attentions
            (``channels`` divisible by it).
        memory_channels (int, optional): memory feature size (default:
            ``channels``).
        ff_channels (int, optional): hidden size of the feed-forward network
            (default: ``4 * channels``).
        dropout (float): dropout on attention weights, branch outputs and the
            feed-forward hidden layer.
        activation (str): ``"relu"`` or ``"gelu"``.
        norm_first (bool): pre-norm instead of post-norm.
        layer_norm_eps (float): epsilon of the layer norms.
        bias (bool): biases in linear layers and layer norms.

    Shapes:
        - **input:** ``x`` :math:`(N_t, \text{channels})`, ``memory``
          :math:`(N_m, \text{memory\_channels})`, ``edge_index``
          :math:`(2, E_s)` (target -> target), ``cross_edge_index``
          :math:`(2, E_c)` (memory -> target), ``batch`` :math:`(N_t,)`
          (optional, sorted graph index of each target node, passed to the
          self-attention).
        - **output:** :math:`(N_t, \text{channels})`; with
          ``return_attention_weights=True`` the triple ``(x, alpha_self
          (E_s, H), alpha_cross (E_c, H))``.
    """

    def __init__(
        self,
        channels: int,
        heads: int = 1,
        memory_channels: Optional[int] = None,
        ff_channels: Optional[int] = None,
        dropout: float = 0.1,
        activation: Literal["relu", "gelu"] = "relu",
        norm_first: bool = False,
        layer_norm_eps: float = 1e-5,
        bias: bool = True,
    ) -> None:
        super().__init__(node_dim=0)
        if activation not in ACTIVATIONS:
            raise ValueError(f"'activation' must be one of {sorted(ACTIVATIONS)}, "
                             f"got {activation!r}")
        for name, value in (("channels", channels), ("heads", heads),
                            ("memory_channels", memory_channels), ("ff_channels", ff_channels)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise ValueError(f"'{name}' must be an int >= 1, got {value!r}")
        if channels % heads != 0:
            raise ValueError(f"'channels' ({channels}) is not divisible by 'heads' ({heads})")
        memory_channels = channels if memory_channels is None else memory_channels
        ff_channels = 4 * channels if ff_channels is None else ff_channels
        self.channels = channels
        self.heads = heads
        self.memory_channels = memory_channels
        self.ff_channels = ff_channels
        self.dropout = dropout
        self.activation = activation
        self.norm_first = norm_first

        self.self_attn = RelationalAttention(channels, channels, heads=heads, dropout=dropout,
                                             bias=bias)
        self.cross_attn = RelationalAttention((memory_channels, channels), channels, heads=heads,
                                              dropout=dropout, bias=bias)
        self.linear1 = Linear(channels, ff_channels, bias=bias)
        self.linear2 = Linear(ff_channels, channels, bias=bias)
        self.norm1 = LayerNorm(channels, eps=layer_norm_eps, bias=bias)
        self.norm2 = LayerNorm(channels, eps=layer_norm_eps, bias=bias)
        self.norm3 = LayerNorm(channels, eps=layer_norm_eps, bias=bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for module in self.children():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()

    def _drop(self, x: Tensor) -> Tensor:
        return F.dropout(x, p=self.dropout, training=self.training)

    def _ff(self, x: Tensor) -> Tensor:
        return feed_forward(x, self.linear1, self.linear2, self.activation, self.dropout,
                            self.training)

    def _attend(self, attn: RelationalAttention, x, edge_index: Tensor, batch: OptTensor,
                need_weights: bool) -> Tuple[Tensor, OptTensor]:
        if need_weights:
            h, alpha = attn(x, edge_index, return_attention_weights=True, batch=batch)
            return self._drop(h), alpha
        return self._drop(attn(x, edge_index, batch=batch)), None

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        edge_index: Tensor,
        cross_edge_index: Tensor,
        batch: OptTensor = None,
        return_attention_weights: bool = False,
    ) -> Union[Tensor, Tuple[Tensor, Tensor, Tensor]]:
        for name, t, width in (("x", x, self.channels), ("memory", memory, self.memory_channels)):
            if not isinstance(t, Tensor) or t.dim() != 2 or t.size(1) != width:
                shape = list(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(f"'{name}' must have shape [N, {width}], got {shape}")
        need = return_attention_weights
        if self.norm_first:
            h, a_self = self._attend(self.self_attn, self.norm1(x), edge_index, batch, need)
            x = x + h
            h, a_cross = self._attend(self.cross_attn, (memory, self.norm2(x)),
                                      cross_edge_index, None, need)
            x = x + h
            x = x + self._ff(self.norm3(x))
        else:
            h, a_self = self._attend(self.self_attn, x, edge_index, batch, need)
            x = self.norm1(x + h)
            h, a_cross = self._attend(self.cross_attn, (memory, x), cross_edge_index, None, need)
            x = self.norm2(x + h)
            x = self.norm3(x + self._ff(x))
        if return_attention_weights:
            assert a_self is not None and a_cross is not None
            return x, a_self, a_cross
        return x

    @classmethod
    def from_torch(cls, layer: torch.nn.TransformerDecoderLayer) -> "TransformerDecoderLayer":
        """The block with the weights of a :class:`torch.nn.TransformerDecoderLayer`
        (post- or pre-norm, relu or gelu), on its device, of its dtype and in
        its mode (training or evaluation)."""
        act = layer.activation
        if act is F.relu or isinstance(act, torch.nn.ReLU):
            activation = "relu"
        elif act is F.gelu or (isinstance(act, torch.nn.GELU) and act.approximate == "none"):
            activation = "gelu"
        else:
            raise ValueError(f"only relu and gelu activations can be converted, got {act!r}")
        sa, ca = layer.self_attn, layer.multihead_attn
        new = cls(
            sa.embed_dim, heads=sa.num_heads, memory_channels=ca.kdim,
            ff_channels=layer.linear1.out_features, dropout=layer.dropout.p,
            activation=activation, norm_first=layer.norm_first, layer_norm_eps=layer.norm1.eps,
            bias=layer.linear1.bias is not None,
        )
        new.self_attn = RelationalAttention.from_torch(sa)
        new.cross_attn = RelationalAttention.from_torch(ca)
        # in the source's dtype before the copy: a float64 weight copied into a
        # float32 layer would be rounded
        new = new.to(device=layer.linear1.weight.device, dtype=layer.linear1.weight.dtype)
        for name in ("linear1", "linear2", "norm1", "norm2", "norm3"):
            getattr(new, name).load_state_dict(getattr(layer, name).state_dict())
        return new.train(layer.training)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.channels}, heads={self.heads}, "
                f"memory_channels={self.memory_channels}, ff_channels={self.ff_channels}, "
                f"dropout={self.dropout}, activation={self.activation!r}, "
                f"norm_first={self.norm_first})")
