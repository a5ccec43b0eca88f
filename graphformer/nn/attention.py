"""Multi-head relational attention as a PyG message-passing layer."""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric import is_compiling
from torch_geometric.nn import Linear
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.typing import OptTensor, PairTensor
from torch_geometric.utils.sparse import index2ptr

from .._checks import check_edge_index, check_node_range
from . import fused as fused_mod
from .backend import ATTENTION_BACKENDS, AttentionBackend, choose_backend, prefers_propagate
from .dense import DenseLayout, dense_attention
from .functional import BACKENDS, SoftmaxBackend, segment_softmax
from .sparse import SDDMM, EdgeCSR, edge_scores, sparse_attention


class RelationalAttention(MessagePassing):
    r"""Multi-head relational attention (Diao & Loynd, ICLR 2023) over any edge
    set, with edge-augmented queries, keys and values:

    .. math::
        \mathbf{q}_{ij} &= \mathbf{W}_q \mathbf{x}_i + \mathbf{W}_{qe} \mathbf{e}_{ij}, \quad
        \mathbf{k}_{ij} = \mathbf{W}_k \mathbf{x}_j + \mathbf{W}_{ke} \mathbf{e}_{ij}, \quad
        \mathbf{v}_{ij} = \mathbf{W}_v \mathbf{x}_j + \mathbf{W}_{ve} \mathbf{e}_{ij}

        \alpha^h_{ij} &= \operatorname{softmax}_{j \in \mathcal{N}(i)}
            \left( \frac{\mathbf{q}^h_{ij} \cdot \mathbf{k}^h_{ij}}{\sqrt{C}} \right)

        \mathbf{x}'_i &= \mathbf{W}_o \, \big\Vert_{h=1}^{H}
            \sum_{j \in \mathcal{N}(i)} \alpha^h_{ij} \mathbf{v}^h_{ij}

    where :math:`\mathcal{N}(i)` are the sources of the edges into :math:`i`,
    :math:`h` indexes heads and :math:`C` is ``head_channels``. Without edge
    features and with the edge set :func:`graphformer.patterns.full` (or
    ``causal``, ...) this is exactly :class:`torch.nn.MultiheadAttention` with
    the matching mask (see :meth:`from_torch`). A node with no incoming edges
    gets a zero attention sum (so its output is ``lin_out``'s bias), never NaN.

    Args:
        in_channels (int or tuple): input size; ``-1`` for lazy initialisation;
            a pair ``(src, dst)`` for bipartite input (cross-attention).
        out_channels (int): output size.
        heads (int): number of heads :math:`H`.
        head_channels (int, optional): channels per head :math:`C`
            (default: ``out_channels // heads``).
        edge_dim (int, optional): edge feature size; enables
            ``lin_edge_q``, ``lin_edge_k``, ``lin_edge_v``.
        dropout (float): dropout on the attention weights (training only).
        bias (bool): biases in ``lin_q``, ``lin_k``, ``lin_v`` and ``lin_out``.
        softmax_backend (str): ``"auto"``, ``"native"`` or ``"scatter"``: the
            segment softmax of the ``"propagate"`` backend (see
            :func:`graphformer.nn.functional.segment_softmax`; the sparse
            backend uses :func:`~graphformer.nn.functional.csr_softmax`).
        backend (str): how attention is computed: ``"auto"`` (default: by the
            cost model of :mod:`graphformer.nn.backend`), ``"sparse"``,
            ``"dense"``, ``"fused"`` or ``"propagate"``. All give the same
            result to float tolerance, forward and backward.

    Shapes:
        - **input:** ``x`` :math:`(N, F)` or a pair :math:`((N_s, F_s), (N_t, F_t))`;
          ``edge_index`` :math:`(2, E)` (row 0 source, row 1 target);
          ``edge_attr`` :math:`(E, D)` (optional); ``head_mask`` :math:`(E, H)`
          bool (optional: edge ``e`` is seen by head ``h`` only where True);
          ``batch`` :math:`(N,)` (optional, sorted graph index of each node,
          lets the dense backend pad per graph).
        - **output:** :math:`(N_t, \text{out\_channels})`, and with
          ``return_attention_weights=True`` also :math:`\alpha` :math:`(E, H)`
          (before dropout; each target's weights sum to 1 per head; with the
          ``"fused"`` backend they are recomputed from the kernel's
          log-sum-exp and carry no gradient).
    """

    def __init__(
        self,
        in_channels: Union[int, Tuple[int, int]],
        out_channels: int,
        heads: int = 1,
        head_channels: Optional[int] = None,
        edge_dim: Optional[int] = None,
        dropout: float = 0.0,
        bias: bool = True,
        softmax_backend: SoftmaxBackend = "auto",
        backend: AttentionBackend = "auto",
        **kwargs,
    ) -> None:
        kwargs.setdefault("aggr", "add")
        super().__init__(node_dim=0, **kwargs)
        if heads < 1:
            raise ValueError(f"'heads' must be >= 1, got {heads}")
        if out_channels < 1:
            raise ValueError(f"'out_channels' must be >= 1, got {out_channels}")
        if head_channels is None:
            if out_channels % heads != 0:
                raise ValueError(f"'out_channels' ({out_channels}) is not divisible by "
                                 f"'heads' ({heads}); pass 'head_channels' explicitly")
            head_channels = out_channels // heads
        if head_channels < 1:
            raise ValueError(f"'head_channels' must be >= 1, got {head_channels}")
        if edge_dim is not None and edge_dim < 1:
            raise ValueError(f"'edge_dim' must be >= 1 or None, got {edge_dim}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"'dropout' must be in [0, 1), got {dropout}")
        if softmax_backend not in BACKENDS:
            raise ValueError(f"unknown softmax backend {softmax_backend!r}; "
                             f"choose one of {BACKENDS}")
        if backend not in ATTENTION_BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; "
                             f"choose one of {ATTENTION_BACKENDS}")

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.heads = heads
        self.head_channels = head_channels
        self.edge_dim = edge_dim
        self.dropout = dropout
        self.softmax_backend = softmax_backend
        self.backend = backend

        src_ch, dst_ch = (in_channels, in_channels) if isinstance(in_channels, int) else in_channels
        inner = heads * head_channels
        self.lin_q = Linear(dst_ch, inner, bias=bias, weight_initializer="glorot")
        self.lin_k = Linear(src_ch, inner, bias=bias, weight_initializer="glorot")
        self.lin_v = Linear(src_ch, inner, bias=bias, weight_initializer="glorot")
        if edge_dim is not None:
            self.lin_edge_q = Linear(edge_dim, inner, bias=False, weight_initializer="glorot")
            self.lin_edge_k = Linear(edge_dim, inner, bias=False, weight_initializer="glorot")
            self.lin_edge_v = Linear(edge_dim, inner, bias=False, weight_initializer="glorot")
        else:
            self.register_module("lin_edge_q", None)
            self.register_module("lin_edge_k", None)
            self.register_module("lin_edge_v", None)
        self.lin_out = Linear(inner, out_channels, bias=bias, weight_initializer="glorot")
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for lin in (self.lin_q, self.lin_k, self.lin_v, self.lin_edge_q, self.lin_edge_k,
                    self.lin_edge_v, self.lin_out):
            if lin is not None:
                lin.reset_parameters()

    def forward(
        self,
        x: Union[Tensor, PairTensor],
        edge_index: Tensor,
        edge_attr: OptTensor = None,
        head_mask: OptTensor = None,
        return_attention_weights: bool = False,
        batch: OptTensor = None,
    ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        x_src, x_dst = (x, x) if isinstance(x, Tensor) else x
        if not is_compiling():
            self._check_inputs(x_src, x_dst, edge_index, edge_attr, head_mask, batch)
        H, C = self.heads, self.head_channels
        q = self.lin_q(x_dst).view(-1, H, C)
        k = self.lin_k(x_src).view(-1, H, C)
        v = self.lin_v(x_src).view(-1, H, C)
        if edge_attr is not None and self.lin_edge_q is None:
            edge_attr = None
        backend = self.backend
        if backend == "auto" and (is_compiling() or self._explain or prefers_propagate(
                num_edges=edge_index.size(1), channels=H * C, device=q.device,
                edge_features=edge_attr is not None)):
            backend = "propagate"
        if backend == "propagate":
            out, alpha = self._propagate(q, k, v, edge_index, edge_attr, head_mask,
                                         (x_src.size(0), x_dst.size(0)))
        else:
            out, alpha = self._attend(backend, q, k, v, isinstance(x, Tensor), edge_index,
                                      edge_attr, head_mask, batch, return_attention_weights)
        out = self.lin_out(out.reshape(-1, H * C))
        if return_attention_weights:
            return out, alpha
        return out

    def _attend(self, backend: str, q: Tensor, k: Tensor, v: Tensor, self_attention: bool,
                edge_index: Tensor, edge_attr: OptTensor, head_mask: OptTensor,
                batch: OptTensor, need_weights: bool) -> Tuple[Tensor, Optional[Tensor]]:
        """The sparse, dense and fused backends: edges grouped by target first."""
        N_s, N_t = k.size(0), q.size(0)
        src, dst = edge_index[0], edge_index[1]
        E = src.numel()
        perm = None
        if E > 1 and not bool((dst[1:] >= dst[:-1]).all()):
            perm = torch.sort(dst, stable=True)[1]
            src, dst = src[perm], dst[perm]
            edge_attr = edge_attr[perm] if edge_attr is not None else None
            head_mask = head_mask[perm] if head_mask is not None else None
        csr = EdgeCSR.from_sorted(dst, src, N_t, N_s)
        weights = None
        if edge_attr is not None:
            weights = (self.lin_edge_q.weight, self.lin_edge_k.weight, self.lin_edge_v.weight)
        dropout_active = self.training and self.dropout > 0

        layout = None
        if backend in ("auto", "dense") and self_attention:
            ptr = _graph_ptr(batch, N_t, q.device)
            layout = DenseLayout(ptr, csr) if ptr is not None else None
        if backend == "auto":
            dense_ok = layout is not None and layout.crossing is None
            if dense_ok and edge_attr is not None and E > 1:
                # duplicate edges are only representable without edge features
                key = dst * N_s + src
                dense_ok = bool((key[1:] > key[:-1]).all())
            B, T = (layout.num_graphs, layout.max_nodes) if dense_ok else (1, N_t)
            backend = choose_backend(
                num_edges=E, num_graphs=B, max_nodes=T, heads=self.heads, device=q.device,
                dense_ok=dense_ok, fused_ok=fused_mod.fused_available(q.device),
                dropout_active=dropout_active, edge_features=edge_attr is not None,
                channels=self.heads * self.head_channels)
        if backend == "fused":
            if dropout_active:
                raise ValueError("the fused backend has no attention dropout; use "
                                 "backend='sparse' or 'dense' to train with dropout > 0")
            out, alpha = _fused(q, k, v, csr, edge_attr, weights, head_mask, need_weights)
        else:
            # sparse CPU kernels have no half precision, and scores of large
            # fp16 entries overflow: compute in float32, return in q's dtype
            dtype = q.dtype
            if dtype in (torch.float16, torch.bfloat16):
                q, k, v = q.float(), k.float(), v.float()
                edge_attr = edge_attr.float() if edge_attr is not None else None
                weights = tuple(w.float() for w in weights) if weights is not None else None
            if backend == "dense":
                if layout is None:
                    raise ValueError("the dense backend needs self-attention within graphs "
                                     "whose nodes are contiguous ('batch' sorted); got "
                                     "bipartite input or an unsorted 'batch'")
                out, alpha = dense_attention(q, k, v, csr, layout, edge_attr,
                                             *(weights or (None, None, None)),
                                             head_mask=head_mask, dropout=self.dropout,
                                             training=self.training, need_weights=need_weights)
            else:
                out, alpha = sparse_attention(q, k, v, csr, edge_attr,
                                              *(weights or (None, None, None)),
                                              head_mask=head_mask, dropout=self.dropout,
                                              training=self.training)
            out = out.to(dtype)
            alpha = alpha.to(dtype) if alpha is not None else None
        if alpha is not None and perm is not None:
            alpha = torch.empty_like(alpha).index_copy_(0, perm, alpha)
        return out, alpha

    def _propagate(self, q: Tensor, k: Tensor, v: Tensor, edge_index: Tensor,
                   edge_attr: OptTensor, head_mask: OptTensor,
                   size: Tuple[int, int]) -> Tuple[Tensor, Tensor]:
        """The ``"propagate"`` backend: PyG message passing with per-edge messages."""
        H, C = self.heads, self.head_channels

        eq = ek = ev = None
        if edge_attr is not None:
            eq = self.lin_edge_q(edge_attr).view(-1, H, C)
            ek = self.lin_edge_k(edge_attr).view(-1, H, C)
            ev = self.lin_edge_v(edge_attr).view(-1, H, C)

        # edge_updater_type: (q: Tensor, k: Tensor, eq: OptTensor, ek: OptTensor, head_mask: OptTensor)
        alpha = self.edge_updater(edge_index, q=q, k=k, eq=eq, ek=ek, head_mask=head_mask,
                                  size=size)
        weights = F.dropout(alpha, p=self.dropout, training=self.training)
        # propagate_type: (v: Tensor, ev: OptTensor, weights: Tensor)
        out = self.propagate(edge_index, v=v, ev=ev, weights=weights, size=size)
        return out.view(-1, H, C), alpha

    def edge_update(self, q_i: Tensor, k_j: Tensor, eq: OptTensor, ek: OptTensor,
                    head_mask: OptTensor, index: Tensor, dim_size: Optional[int]) -> Tensor:
        if eq is not None:
            q_i = q_i + eq
        if ek is not None:
            k_j = k_j + ek
        dtype = q_i.dtype
        if dtype in (torch.float16, torch.bfloat16):
            # Products of large half-precision entries overflow before the
            # softmax can subtract its maximum: score in float32.
            q_i, k_j = q_i.float(), k_j.float()
        score = (q_i * k_j).sum(dim=-1) / math.sqrt(self.head_channels)
        if head_mask is not None:
            score = score.masked_fill(~head_mask, float("-inf"))
        alpha = segment_softmax(score, index, dim_size, backend=self.softmax_backend)
        return alpha.to(dtype)

    def message(self, v_j: Tensor, ev: OptTensor, weights: Tensor) -> Tensor:
        if ev is not None:
            v_j = v_j + ev
        return weights.unsqueeze(-1) * v_j

    def _check_inputs(self, x_src: Tensor, x_dst: Tensor, edge_index: Tensor,
                      edge_attr: OptTensor, head_mask: OptTensor, batch: OptTensor) -> None:
        check_edge_index(edge_index)
        check_node_range(edge_index, x_src.size(0), x_dst.size(0))
        num_edges = edge_index.size(1)
        if edge_attr is not None:
            if self.edge_dim is None:
                raise ValueError("'edge_attr' was given but the layer was built with "
                                 "edge_dim=None; pass edge_dim to use edge features")
            if edge_attr.dim() != 2 or edge_attr.size(1) != self.edge_dim:
                raise ValueError(f"'edge_attr' must have shape [E, {self.edge_dim}], got "
                                 f"{list(edge_attr.shape)}")
            if edge_attr.size(0) != num_edges:
                raise ValueError(f"'edge_attr' has {edge_attr.size(0)} rows but 'edge_index' "
                                 f"has {num_edges} edges")
        if head_mask is not None:
            if head_mask.dtype != torch.bool:
                raise TypeError(f"'head_mask' must be a bool tensor, got {head_mask.dtype}")
            if tuple(head_mask.shape) != (num_edges, self.heads):
                raise ValueError(f"'head_mask' must have shape [E, H] = [{num_edges}, "
                                 f"{self.heads}], got {list(head_mask.shape)}")
        if batch is not None and (batch.dim() != 1 or batch.numel() != x_dst.size(0)):
            raise ValueError(f"'batch' must have shape [N] = [{x_dst.size(0)}], got "
                             f"{list(batch.shape)}")

    @classmethod
    def from_torch(cls, mha: torch.nn.MultiheadAttention,
                   softmax_backend: SoftmaxBackend = "auto",
                   backend: AttentionBackend = "auto") -> "RelationalAttention":
        """The layer with the weights of a :class:`torch.nn.MultiheadAttention`.

        Batch-first or not, the weights are the same. ``add_bias_kv`` and
        ``add_zero_attn`` have no edge-set meaning and are refused. The result
        is on the device and of the dtype of ``mha``.
        """
        if mha.bias_k is not None or mha.bias_v is not None:
            raise ValueError("MultiheadAttention with add_bias_kv=True is not supported")
        if mha.add_zero_attn:
            raise ValueError("MultiheadAttention with add_zero_attn=True is not supported")
        embed, heads = mha.embed_dim, mha.num_heads
        if mha._qkv_same_embed_dim:
            in_channels: Union[int, Tuple[int, int]] = embed
            wq, wk, wv = mha.in_proj_weight.chunk(3)
        else:
            if mha.kdim != mha.vdim:
                raise ValueError(f"keys and values of different sizes (kdim={mha.kdim}, "
                                 f"vdim={mha.vdim}) are not supported")
            in_channels = (mha.kdim, embed)
            wq, wk, wv = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
        bias = mha.in_proj_bias is not None
        layer = cls(in_channels, embed, heads=heads, dropout=mha.dropout, bias=bias,
                    softmax_backend=softmax_backend, backend=backend)
        layer = layer.to(device=mha.out_proj.weight.device, dtype=mha.out_proj.weight.dtype)
        with torch.no_grad():
            for lin, w in ((layer.lin_q, wq), (layer.lin_k, wk), (layer.lin_v, wv)):
                lin.weight.copy_(w)
            layer.lin_out.weight.copy_(mha.out_proj.weight)
            if bias:
                for lin, b in zip((layer.lin_q, layer.lin_k, layer.lin_v),
                                  mha.in_proj_bias.chunk(3)):
                    lin.bias.copy_(b)
                layer.lin_out.bias.copy_(mha.out_proj.bias)
        return layer

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
                f"heads={self.heads}, head_channels={self.head_channels}, "
                f"edge_dim={self.edge_dim}, dropout={self.dropout}, "
                f"backend={self.backend!r})")


def _graph_ptr(batch: OptTensor, num_nodes: int, device: torch.device) -> Optional[Tensor]:
    """Node offsets of the graphs in a sorted ``batch`` (one graph when None);
    None when ``batch`` is not sorted (graphs not contiguous)."""
    if batch is None:
        return torch.tensor([0, num_nodes], device=device)
    if batch.numel() > 1 and not bool((batch[1:] >= batch[:-1]).all()):
        return None
    num_graphs = int(batch[-1]) + 1 if batch.numel() > 0 else 1
    return index2ptr(batch, num_graphs)


def _fused(q: Tensor, k: Tensor, v: Tensor, csr: EdgeCSR, edge_attr: OptTensor,
           weights: Optional[Tuple[Tensor, Tensor, Tensor]], head_mask: OptTensor,
           need_weights: bool) -> Tuple[Tensor, Optional[Tensor]]:
    """The ``"fused"`` backend: edge score terms as a per-edge bias, edge values
    streamed by the kernel and projected afterwards."""
    H, C = q.size(1), q.size(2)
    scale = 1.0 / math.sqrt(C)
    bias = None
    if edge_attr is not None:
        # sparse products have no half-precision CPU kernels: score in float32
        f32 = [t.float() for t in (q, k, edge_attr, weights[0], weights[1])]
        bias = edge_scores(*f32[:3], *f32[3:], csr) * scale
    if head_mask is not None:
        bias = (bias if bias is not None else q.new_zeros(csr.num_edges, H))
        bias = bias.masked_fill(~head_mask, float("-inf"))
    out, lse, edge_out = fused_mod.fused_attention(
        q, k, v, csr.ptr, csr.col, bias=bias,
        edge_values=edge_attr if edge_attr is not None else None, scale=scale)
    if edge_out is not None:
        D = edge_attr.size(1)
        out = out + torch.einsum("nhd,hcd->nhc", edge_out, weights[2].view(H, C, D))
    alpha = None
    if need_weights:
        with torch.no_grad():
            s = SDDMM.apply(q.float().transpose(0, 1), k.float().transpose(0, 1), csr).t() * scale
            if bias is not None:
                s = s + bias
            alpha = (s - lse.index_select(0, csr.row)).exp().nan_to_num(0.0).to(q.dtype)
    return out, alpha
