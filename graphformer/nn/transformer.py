"""The transformer encoder block over an edge set."""
from __future__ import annotations

from typing import Any, Literal, NamedTuple, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import LayerNorm, Linear
from torch_geometric import is_compiling
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.typing import OptTensor

from .._checks import check_node_features, refuse_softmax_backend
from .attention import RelationalAttention
from .backend import AttentionBackend
from .edge_set import EdgeSet
from .functional import dropout, gelu_dropout

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


def feed_forward(x: Tensor, lin1: Linear, lin2: Linear, activation: str, p: float,
                 training: bool) -> Tensor:
    r"""The feed-forward branch of a transformer block,
    :math:`\mathrm{Dropout}(\mathbf{W}_2\,\mathrm{Dropout}(\sigma(\mathbf{W}_1 \mathbf{x})))`
    (GELU and its dropout in one pass on the CPU: :func:`.functional.gelu_dropout`)."""
    if activation == "gelu":
        h = gelu_dropout(lin1(x), p=p, training=training)
    else:
        h = dropout(ACTIVATIONS[activation](lin1(x)), p=p, training=training)
    return dropout(lin2(h), p=p, training=training)


class TransformerOutput(NamedTuple):
    """What a :class:`TransformerLayer` returns, whatever its flags.

    Attributes:
        x (Tensor [N, channels]): the new node states.
        edge_attr (Tensor or None): the edge states after the block: updated
            per edge ``[E, D]`` with ``edge_update=True`` (also for typed
            input), else the ``edge_attr`` given (None without one).
        attention (Tensor [E, H] or None): the attention weights with
            ``return_attention_weights=True``, else None.
    """
    x: Tensor
    edge_attr: Optional[Tensor]
    attention: Optional[Tensor]


class Dropout(torch.nn.Dropout):
    """:class:`torch.nn.Dropout` computed by :func:`graphformer.nn.functional.dropout`
    (the same distribution, several times faster on CPU)."""

    def forward(self, input: Tensor) -> Tensor:
        return dropout(input, self.p, self.training)


class TransformerLayer(MessagePassing):
    r"""A transformer encoder block whose self-attention runs over an edge set.

    Post-norm (``norm_first=False``, as in :class:`torch.nn.TransformerEncoderLayer`):

    .. math::
        \mathbf{x} &\leftarrow \mathrm{LN}_1\big(\mathbf{x} +
            \mathrm{Dropout}(\mathrm{Attn}(\mathbf{x}, \mathcal{E}, \mathbf{e}))\big)

        \mathbf{x} &\leftarrow \mathrm{LN}_2\big(\mathbf{x} + \mathrm{FF}(\mathbf{x})\big),
        \qquad \mathrm{FF}(\mathbf{x}) = \mathrm{Dropout}(\mathbf{W}_2\,
            \mathrm{Dropout}(\sigma(\mathbf{W}_1 \mathbf{x})))

    and pre-norm (``norm_first=True``):
    :math:`\mathbf{x} \leftarrow \mathbf{x} + \mathrm{Dropout}(\mathrm{Attn}(\mathrm{LN}_1(\mathbf{x})))`,
    :math:`\mathbf{x} \leftarrow \mathbf{x} + \mathrm{FF}(\mathrm{LN}_2(\mathbf{x}))`.
    Attn is :class:`RelationalAttention`.

    With ``edge_update=True`` the edge states are updated afterwards as in the
    Relational Transformer, from the new node states:

    .. math::
        \mathbf{e}_{ij} &\leftarrow \mathrm{LN}_{e1}\big(\mathbf{e}_{ij} + \mathrm{Dropout}(
            \mathrm{MLP}([\mathbf{e}_{ij} \Vert \mathbf{x}_i \Vert \mathbf{x}_j]))\big)

        \mathbf{e}_{ij} &\leftarrow \mathrm{LN}_{e2}\big(\mathbf{e}_{ij} +
            \mathrm{FF}_e(\mathbf{e}_{ij})\big)

    (pre-norm: the layer norms move onto the branch inputs, as for nodes).

    Args:
        channels (int): node feature size (input = output).
        heads (int): attention heads :math:`H` (``channels`` divisible by it).
        ff_channels (int, optional): hidden size of the feed-forward
            network (default: ``4 * channels``).
        dropout (float): dropout on attention weights, branch outputs and the
            feed-forward hidden layer.
        activation (str): ``"relu"`` or ``"gelu"``.
        norm_first (bool): pre-norm instead of post-norm.
        edge_dim (int, optional): edge feature size :math:`D`.
        edge_update (bool): update edge states (needs ``edge_dim``).
        edge_ff_channels (int, optional): hidden size of the edge MLPs
            (default: ``2 * edge_dim``).
        layer_norm_eps (float): epsilon of the layer norms.
        bias (bool): biases in linear layers and layer norms.
        backend (str): attention backend, see :class:`RelationalAttention`.

    Shapes:
        - **input:** ``x`` :math:`(N, \text{channels})`, or a pair
          ``(x_src, x_dst)`` :math:`((N_s, \text{channels}), (N_t,
          \text{channels}))` as PyG's convolutions take it: only the targets
          are updated (e.g. the first rows of a sampled mini-batch, whose
          sources are the rest), ``edge_index``
          :math:`(2, E)` or an :class:`~graphformer.nn.EdgeSet`, ``edge_attr``
          :math:`(E, D)` (or :math:`(R, D)` per type with ``edge_type``
          :math:`(E)`, see :class:`RelationalAttention`), ``head_mask``
          :math:`(E, H)` (optional), ``batch`` :math:`(N,)` (optional, sorted
          graph index of each node, used by the dense attention backend).
        - **output:** a :class:`TransformerOutput` ``(x, edge_attr,
          attention)``: ``x`` :math:`(N_t, \text{channels})`; with ``edge_update``
          the pair ``(x, edge_attr)`` (edge states per edge, ``[E, D]``, also
          for typed input); with ``return_attention_weights=True``
          the attention weights :math:`(E, H)` are appended to that.
    """

    def __init__(
        self,
        channels: int,
        heads: int = 1,
        ff_channels: Optional[int] = None,
        dropout: float = 0.1,
        activation: Literal["relu", "gelu"] = "relu",
        norm_first: bool = False,
        edge_dim: Optional[int] = None,
        edge_update: bool = False,
        edge_ff_channels: Optional[int] = None,
        layer_norm_eps: float = 1e-5,
        bias: bool = True,
        backend: AttentionBackend = "auto",
        **removed: Any,
    ) -> None:
        refuse_softmax_backend(type(self).__name__, removed)
        if removed:
            raise TypeError(f"{type(self).__name__}() got unexpected keyword argument(s) "
                            f"{sorted(removed)}")
        super().__init__(node_dim=0)
        if activation not in ACTIVATIONS:
            raise ValueError(f"'activation' must be one of {sorted(ACTIVATIONS)}, "
                             f"got {activation!r}")
        if edge_update and edge_dim is None:
            raise ValueError("'edge_update=True' needs 'edge_dim'")
        ff_channels = 4 * channels if ff_channels is None else ff_channels
        self.channels = channels
        self.heads = heads
        self.ff_channels = ff_channels
        self.dropout = dropout
        self.activation = activation
        self.norm_first = norm_first
        self.edge_dim = edge_dim
        self.edge_update_enabled = edge_update

        self.attn = RelationalAttention(channels, channels, heads=heads, edge_dim=edge_dim,
                                        dropout=dropout, bias=bias,
                                        backend=backend)
        self.linear1 = Linear(channels, ff_channels, bias=bias)
        self.linear2 = Linear(ff_channels, channels, bias=bias)
        self.norm1 = LayerNorm(channels, eps=layer_norm_eps, bias=bias)
        self.norm2 = LayerNorm(channels, eps=layer_norm_eps, bias=bias)
        if edge_update:
            assert edge_dim is not None
            hidden = 2 * edge_dim if edge_ff_channels is None else edge_ff_channels
            self.edge_linear1 = Linear(edge_dim + 2 * channels, hidden, bias=bias)
            self.edge_linear2 = Linear(hidden, edge_dim, bias=bias)
            self.edge_ff1 = Linear(edge_dim, hidden, bias=bias)
            self.edge_ff2 = Linear(hidden, edge_dim, bias=bias)
            self.edge_norm1 = LayerNorm(edge_dim, eps=layer_norm_eps, bias=bias)
            self.edge_norm2 = LayerNorm(edge_dim, eps=layer_norm_eps, bias=bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for module in self.children():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()

    def _mlp(self, x: Tensor, lin1: Linear, lin2: Linear) -> Tensor:
        return feed_forward(x, lin1, lin2, self.activation, self.dropout, self.training)

    def _attend(self, x: Union[Tensor, Tuple[Tensor, Tensor]],
                edge_index: Union[Tensor, EdgeSet], edge_attr: OptTensor,
                head_mask: OptTensor, batch: OptTensor, edge_type: OptTensor,
                need_weights: bool) -> Tuple[Tensor, OptTensor]:
        alpha = None
        if need_weights:
            h, alpha = self.attn(x, edge_index, edge_attr, head_mask,
                                 return_attention_weights=True, batch=batch, edge_type=edge_type)
        else:
            h = self.attn(x, edge_index, edge_attr, head_mask, batch=batch, edge_type=edge_type)
        return dropout(h, p=self.dropout, training=self.training), alpha

    def forward(
        self,
        x: Union[Tensor, Tuple[Tensor, Tensor]],
        edge_index: Union[Tensor, EdgeSet],
        edge_attr: OptTensor = None,
        head_mask: OptTensor = None,
        return_attention_weights: bool = False,
        batch: OptTensor = None,
        edge_type: OptTensor = None,
    ) -> TransformerOutput:
        bipartite = not isinstance(x, Tensor)
        if self.edge_update_enabled and edge_attr is None:
            raise ValueError("this layer updates edge states (edge_update=True): "
                             "'edge_attr' is required")
        if bipartite and self.edge_update_enabled:
            raise ValueError("edge_update=True updates edges between nodes of one set: give "
                             "'x' as one tensor, not a pair (x_src, x_dst)")
        x_src, x_dst = (x[0], x[1]) if bipartite else (x, x)
        if not is_compiling():     # before the layer norm meets x
            dtype = self.linear1.weight.dtype
            for name, t in (((("x[0] (sources)", x_src), ("x[1] (targets)", x_dst)))
                            if bipartite else (("x", x_dst),)):
                check_node_features(t, name, self.channels, dtype)
        if self.norm_first:
            source = (self.norm1(x_src), self.norm1(x_dst)) if bipartite else self.norm1(x_dst)
            h, alpha = self._attend(source, edge_index, edge_attr, head_mask, batch,
                                    edge_type, return_attention_weights)
            x = x_dst + h
            x = x + self._mlp(self.norm2(x), self.linear1, self.linear2)
        else:
            h, alpha = self._attend((x_src, x_dst) if bipartite else x_dst, edge_index,
                                    edge_attr, head_mask, batch, edge_type,
                                    return_attention_weights)
            x = self.norm1(x_dst + h)
            x = self.norm2(x + self._mlp(x, self.linear1, self.linear2))

        if self.edge_update_enabled:
            assert edge_attr is not None
            if isinstance(edge_index, EdgeSet):
                edge_type = edge_index.edge_type_given
                edge_index = edge_index.edge_index
            if edge_type is not None:     # typed edges: their states become per edge
                edge_attr = edge_attr.index_select(0, edge_type)
            # edge_updater_type: (x: Tensor, edge_attr: Tensor)
            edge_attr = self.edge_updater(edge_index, x=x, edge_attr=edge_attr)
        return TransformerOutput(x, edge_attr, alpha)

    def edge_update(self, x_i: Tensor, x_j: Tensor, edge_attr: Tensor) -> Tensor:
        e = edge_attr
        if self.norm_first:
            e = e + self._mlp(torch.cat([self.edge_norm1(e), x_i, x_j], dim=-1),
                              self.edge_linear1, self.edge_linear2)
            return e + self._mlp(self.edge_norm2(e), self.edge_ff1, self.edge_ff2)
        e = self.edge_norm1(e + self._mlp(torch.cat([e, x_i, x_j], dim=-1),
                                          self.edge_linear1, self.edge_linear2))
        return self.edge_norm2(e + self._mlp(e, self.edge_ff1, self.edge_ff2))

    @classmethod
    def from_torch(cls, layer: torch.nn.TransformerEncoderLayer,
                   backend: AttentionBackend = "auto", **removed: Any) -> "TransformerLayer":
        """The block with the weights of a :class:`torch.nn.TransformerEncoderLayer`
        (post- or pre-norm, relu or exact gelu), on its device, of its dtype and
        in its mode (training or evaluation)."""
        refuse_softmax_backend(f"{cls.__name__}.from_torch", removed)
        kind = getattr(layer, "activation_relu_or_gelu", 0)
        # PyTorch's flag says gelu for any nn.GELU, its tanh approximation too
        if kind not in (1, 2) or getattr(layer.activation, "approximate", "none") != "none":
            raise ValueError("only relu and gelu (exact, approximate='none') activations can "
                             f"be converted, got {layer.activation!r}")
        mha = layer.self_attn
        new = cls(
            mha.embed_dim, heads=mha.num_heads, ff_channels=layer.linear1.out_features,
            dropout=layer.dropout.p, activation="relu" if kind == 1 else "gelu",
            norm_first=layer.norm_first, layer_norm_eps=layer.norm1.eps,
            bias=layer.linear1.bias is not None, backend=backend,
        )
        new.attn = RelationalAttention.from_torch(mha, backend=backend)
        # in the source's dtype before the copy: a float64 weight copied into a
        # float32 layer would be rounded
        new = new.to(device=layer.linear1.weight.device, dtype=layer.linear1.weight.dtype)
        for name in ("linear1", "linear2", "norm1", "norm2"):
            getattr(new, name).load_state_dict(getattr(layer, name).state_dict())
        return new.train(layer.training)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.channels}, heads={self.heads}, "
                f"ff_channels={self.ff_channels}, dropout={self.dropout}, "
                f"activation={self.activation!r}, norm_first={self.norm_first}, "
                f"edge_dim={self.edge_dim}, edge_update={self.edge_update_enabled})")
