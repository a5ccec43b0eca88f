"""Multi-head relational attention as a PyG message-passing layer."""
from __future__ import annotations

import math
from typing import Any, Optional, Tuple, Union

import torch
from torch import Tensor
from torch.nn.parameter import UninitializedParameter, is_lazy
from torch_geometric import is_compiling
from torch_geometric.nn import Linear
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.typing import OptTensor, PairTensor

from .._checks import (check_edge_index, check_node_features, check_node_range,
                       refuse_message_passing_options, refuse_softmax_backend)
from .backend import (ATTENTION_BACKENDS, AttentionBackend, AttentionCall, get_backend,
                      resolve_backend)
from .edge_set import EdgeSet
from .edge_terms import PerEdgeTerms, TypedEdgeTerms
from .functional import dropout, linears_of_one_input, segment_softmax


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
        backend (str): how attention is computed: ``"auto"`` (default: by the
            cost model of :mod:`graphformer.nn.backend`), ``"sparse"``,
            ``"dense"``, ``"fused"``, ``"fused_cpu"`` or ``"propagate"`` (the
            names of :data:`graphformer.nn.backend.REGISTRY`). All give the
            same result to float tolerance, forward and backward. Second
            derivatives (``create_graph=True``, then a derivative of the
            gradient) come from ``"propagate"`` on every input, and from the
            others where they run PyTorch operations (``"sparse"`` without
            per-edge features, typed edges included); elsewhere (the C++ and
            Triton kernels' backward, PyTorch's CPU flash attention under
            ``"dense"``) they raise an error, never a wrong value.
        **kwargs: PyG ``MessagePassing`` options, only at the values the
            equations fix (``aggr="add"``, ``flow="source_to_target"``);
            others are refused (only ``"propagate"`` would obey them).

    Typed edges (bond types, relation ids, pattern membership): pass
    ``edge_type`` :math:`(E)` and the features of each type as ``edge_attr``
    :math:`(R, D)`, as PyG's ``RGCNConv`` takes ``edge_type``. The result is
    the same as with ``edge_attr[edge_type]`` per edge, but the edge
    projections are taken of the R types only and the edge terms become
    node-by-type tables (:mod:`graphformer.nn.edge_terms`): no per-edge
    product. To share one edge set between layers, pass an
    :class:`~graphformer.nn.EdgeSet` in place of ``edge_index`` (built once:
    sorted, indexed and laid out per graph once for all layers)::

        edges = EdgeSet(edge_index, num_nodes, batch=batch, edge_type=bond_type)
        for layer in layers:
            x = x + layer(x, edges, type_features)

    Shapes:
        - **input:** ``x`` :math:`(N, F)` or a pair :math:`((N_s, F_s), (N_t, F_t))`;
          ``edge_index`` :math:`(2, E)` (row 0 source, row 1 target) or an
          :class:`~graphformer.nn.EdgeSet`;
          ``edge_attr`` :math:`(E, D)`, or :math:`(R, D)` with ``edge_type``
          :math:`(E)` (optional); ``head_mask`` :math:`(E, H)`
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
        backend: AttentionBackend = "auto",
        **kwargs,
    ) -> None:
        refuse_softmax_backend(type(self).__name__, kwargs)
        refuse_message_passing_options(type(self).__name__, kwargs)
        super().__init__(aggr="add", node_dim=0)
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
        if backend not in ATTENTION_BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; "
                             f"choose one of {ATTENTION_BACKENDS}")

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.heads = heads
        self.head_channels = head_channels
        self.edge_dim = edge_dim
        self.dropout = dropout
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
        edge_index: Union[Tensor, EdgeSet],
        edge_attr: OptTensor = None,
        head_mask: OptTensor = None,
        return_attention_weights: bool = False,
        batch: OptTensor = None,
        edge_type: OptTensor = None,
    ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        x_src, x_dst = (x, x) if isinstance(x, Tensor) else x
        traced = is_compiling() or self._explain
        edges = edge_index if isinstance(edge_index, EdgeSet) else None
        if not is_compiling():
            self._check_nodes(x_src, x_dst, isinstance(x, Tensor))
            if edges is not None and edge_type is not None:
                raise ValueError("'edge_type' is given with an EdgeSet: build the EdgeSet "
                                 "with it instead (EdgeSet(..., edge_type=...))")
        if edges is not None and self._explain:
            # PyG's explainers mask the edges in the order the caller gave them
            edge_index, edge_type, edges = edges.edge_index, edges.edge_type_given, None
        # compiled, a named backend other than message passing needs the edge set too
        # (built by a sort there): 'auto' and 'propagate' run on edge_index as given
        named = self.backend not in ("auto", "propagate")
        if edges is None and (not traced or (named and not self._explain)):
            # EdgeSet checks edge_index, the node range, batch and edge_type
            sizes = x_src.size(0) if isinstance(x, Tensor) else (x_src.size(0), x_dst.size(0))
            edges = EdgeSet(edge_index, sizes, batch=batch, edge_type=edge_type)
        if not is_compiling():
            self._check_inputs(x_src, x_dst, edges if edges is not None else edge_index,
                               edge_attr, head_mask, batch, edge_type)
        if edges is not None:
            edge_type = edges.edge_type          # in target order
        if self.lin_edge_q is None:
            edge_attr = None
        H, C = self.heads, self.head_channels
        q, k, v = (t.view(-1, H, C) for t in self._project(x_src, x_dst))
        dropout_active = self.training and self.dropout > 0
        backend = resolve_backend(
            self.backend, edges, heads=H, channels=H * C, device=q.device,
            per_edge_features=edge_attr is not None and edge_type is None,
            has_terms=edge_attr is not None, dropout_active=dropout_active,
            traced=self._explain, compiling=is_compiling())

        dtype = q.dtype
        if backend != "fused" and dtype in (torch.float16, torch.bfloat16):
            # sparse CPU kernels have no half precision, and scores of large
            # half-precision entries overflow: compute in float32, return in q's dtype
            q, k, v = q.float(), k.float(), v.float()
        if edges is not None:
            ei = edges.sorted_edge_index if backend == "propagate" else edges.edge_index
            head_mask = edges.to_sorted(head_mask)
        else:
            ei = edge_index
        call = AttentionCall(q, k, v, ei, edges, self._edge_terms(edge_attr, edge_type, edges, q),
                             head_mask, self.dropout, self.training, return_attention_weights,
                             message_passing=self._propagate)
        out, alpha = get_backend(backend).run(call)
        if alpha is not None:
            alpha = alpha.to(dtype)
            if edges is not None:
                alpha = edges.from_sorted(alpha)
        out = self.lin_out(out.to(dtype).reshape(-1, H * C))
        if return_attention_weights:
            return out, alpha
        return out

    def _project(self, x_src: Tensor, x_dst: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """The queries, keys and values ``[N, H·C]``: the projections of one
        input in one autograd node (:func:`linears_of_one_input`: the input's
        gradient accumulated in one buffer), the keys' and values' of the
        sources likewise when the targets differ; the modules themselves
        under :func:`torch.compile` (whose graph sums the gradients in place
        anyway), under autocast, before lazy weights are initialised, and for
        inputs that are not [N, F]."""
        lins = (self.lin_q, self.lin_k, self.lin_v)
        if (is_compiling() or x_src.dim() != 2 or any(is_lazy(lin.weight) for lin in lins)
                or torch.is_autocast_enabled(x_src.device.type)):
            return self.lin_q(x_dst), self.lin_k(x_src), self.lin_v(x_src)
        if x_src is x_dst:
            return linears_of_one_input(x_src, [lin.weight for lin in lins],
                                        [lin.bias for lin in lins])
        k, v = linears_of_one_input(x_src, [self.lin_k.weight, self.lin_v.weight],
                                    [self.lin_k.bias, self.lin_v.bias])
        return self.lin_q(x_dst), k, v

    def _edge_terms(self, edge_attr: OptTensor, edge_type: OptTensor, edges: Optional[EdgeSet],
                    q: Tensor) -> Optional[Union[PerEdgeTerms, TypedEdgeTerms]]:
        """The edge-feature terms (in float32 for half-precision input), per
        edge or per type."""
        if edge_attr is None:
            return None
        dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
        weights = [lin.weight.to(dtype) for lin in (self.lin_edge_q, self.lin_edge_k,
                                                     self.lin_edge_v)]
        edge_attr = edge_attr.to(dtype)
        csr = edges.csr if edges is not None else None
        if edge_type is not None:
            # the edge set caches them per R: under torch.compile that cache
            # would specialise the graph on R (one recompilation per number
            # of types), so compiled code computes them (two fused ops)
            cached = edges is not None and not is_compiling()
            slots = edges.type_slots(edge_attr.size(0)) if cached else None
            return TypedEdgeTerms(edge_attr, edge_type, *weights, csr, self.heads, slots)
        # per edge: in the caller's order, read through the edge set's permutation
        return PerEdgeTerms(edge_attr, *weights, csr, edges.perm if edges is not None else None)

    def _propagate(self, call: AttentionCall) -> Tuple[Tensor, Tensor]:
        """The ``"propagate"`` backend: PyG message passing with per-edge messages."""
        H, C = self.heads, self.head_channels
        q, k, v = call.q, call.k, call.v
        eq = ek = ev = None
        if call.terms is not None:
            e = call.terms.per_edge()
            w_eq, w_ek, w_ev = call.terms.w_eq, call.terms.w_ek, call.terms.w_ev
            eq = (e @ w_eq.t()).view(-1, H, C)
            ek = (e @ w_ek.t()).view(-1, H, C)
            ev = (e @ w_ev.t()).view(-1, H, C)
        size = (k.size(0), q.size(0))
        # edge_updater_type: (q: Tensor, k: Tensor, eq: OptTensor, ek: OptTensor, head_mask: OptTensor)
        alpha = self.edge_updater(call.edge_index, q=q, k=k, eq=eq, ek=ek,
                                  head_mask=call.head_mask, size=size)
        weights = dropout(alpha, p=call.dropout, training=call.training)
        # propagate_type: (v: Tensor, ev: OptTensor, weights: Tensor)
        out = self.propagate(call.edge_index, v=v, ev=ev, weights=weights, size=size)
        return out.view(-1, H, C), alpha

    def edge_update(self, q_i: Tensor, k_j: Tensor, eq: OptTensor, ek: OptTensor,
                    head_mask: OptTensor, index: Tensor, dim_size: Optional[int]) -> Tensor:
        # q_i, k_j and v_j are fresh gathers (index_select): adding the edge
        # terms in place saves an [E, H, C] allocation each (whose pages fault
        # in on first touch); their backward needs neither
        if eq is not None:
            q_i = q_i.add_(eq)
        if ek is not None:
            k_j = k_j.add_(ek)
        dtype = q_i.dtype
        if dtype in (torch.float16, torch.bfloat16):
            # Products of large half-precision entries overflow before the
            # softmax can subtract its maximum: score in float32.
            q_i, k_j = q_i.float(), k_j.float()
        score = (q_i * k_j).sum(dim=-1) / math.sqrt(self.head_channels)
        if head_mask is not None:
            score = score.masked_fill(~head_mask, float("-inf"))
        alpha = segment_softmax(score, index, dim_size)
        return alpha.to(dtype)

    def message(self, v_j: Tensor, ev: OptTensor, weights: Tensor) -> Tensor:
        if ev is not None:
            v_j = v_j.add_(ev)
        return weights.unsqueeze(-1) * v_j

    def _check_nodes(self, x_src: Tensor, x_dst: Tensor, shared: bool) -> None:
        """Node features are floating-point ``[N, F]`` tensors of the layer's
        input width and weight dtype (checked before any index or product
        meets them)."""
        src_ch, dst_ch = (self.in_channels, self.in_channels) \
            if isinstance(self.in_channels, int) else self.in_channels
        pairs = ((("x", x_src, src_ch, self.lin_k),) if shared else
                 (("x[0] (sources)", x_src, src_ch, self.lin_k),
                  ("x[1] (targets)", x_dst, dst_ch, self.lin_q)))
        for name, t, channels, lin in pairs:
            weight = lin.weight
            dtype = None if isinstance(weight, UninitializedParameter) else weight.dtype
            check_node_features(t, name, channels, dtype)

    def _check_inputs(self, x_src: Tensor, x_dst: Tensor, edge_index: Union[Tensor, EdgeSet],
                      edge_attr: OptTensor, head_mask: OptTensor, batch: OptTensor,
                      edge_type: OptTensor) -> None:
        """Checks of the edge inputs against the layer and the nodes. An
        :class:`EdgeSet` has checked its own edges; a raw ``edge_index`` (PyG's
        explain mode, where no EdgeSet is built) is checked here."""
        if isinstance(edge_index, EdgeSet):
            edges = edge_index
            if (edges.num_src, edges.num_dst) != (x_src.size(0), x_dst.size(0)):
                raise ValueError(f"the EdgeSet is over {edges.num_src} source and "
                                 f"{edges.num_dst} target nodes but 'x' has "
                                 f"{x_src.size(0)} and {x_dst.size(0)} rows")
            num_edges, num_types, edge_type = edges.num_edges, edges.num_types, edges.edge_type
        else:
            check_edge_index(edge_index)
            check_node_range(edge_index, x_src.size(0), x_dst.size(0))
            num_edges, num_types = edge_index.size(1), None
            if edge_type is not None and (edge_type.dim() != 1 or edge_type.numel() != num_edges):
                raise ValueError(f"'edge_type' must have shape [E] = [{num_edges}], got "
                                 f"{list(edge_type.shape)}")
        typed = edge_type is not None
        if typed and edge_attr is None:
            raise ValueError("typed edges need their features: 'edge_attr' [R, D], one row "
                             "per edge type")
        if edge_attr is not None:
            if self.edge_dim is None:
                raise ValueError("'edge_attr' was given but the layer was built with "
                                 "edge_dim=None; pass edge_dim to use edge features")
            if not isinstance(edge_attr, Tensor) or not edge_attr.is_floating_point():
                raise TypeError("'edge_attr' must be a floating-point tensor")
            rows = "R" if typed else "E"
            if edge_attr.dim() != 2 or edge_attr.size(1) != self.edge_dim:
                raise ValueError(f"'edge_attr' must have shape [{rows}, {self.edge_dim}], got "
                                 f"{list(edge_attr.shape)}")
            if not typed and edge_attr.size(0) != num_edges:
                raise ValueError(f"'edge_attr' has {edge_attr.size(0)} rows but 'edge_index' "
                                 f"has {num_edges} edges")
            if typed and (num_types is None or edge_attr.size(0) < num_types):
                given = edge_index.edge_type_given if isinstance(edge_index, EdgeSet) \
                    else edge_type
                _check_type_rows(given, edge_attr.size(0), num_types)
            if typed and num_types is not None:
                declared = isinstance(edge_index, EdgeSet) and edge_index.num_types_declared
                _check_table_is_per_type(edge_attr.size(0), num_edges, num_types, declared)
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
    def from_torch(cls, mha: torch.nn.MultiheadAttention, backend: AttentionBackend = "auto",
                   **removed: Any) -> "RelationalAttention":
        """The layer with the weights of a :class:`torch.nn.MultiheadAttention`.

        Batch-first or not, the weights are the same. ``add_bias_kv`` and
        ``add_zero_attn`` have no edge-set meaning and are refused. The result
        is on the device and of the dtype of ``mha``, in its mode (training or
        evaluation).
        """
        refuse_softmax_backend(f"{cls.__name__}.from_torch", removed)
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
                    backend=backend)
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
        return layer.train(mha.training)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
                f"heads={self.heads}, head_channels={self.head_channels}, "
                f"edge_dim={self.edge_dim}, dropout={self.dropout}, "
                f"backend={self.backend!r})")


def _check_type_rows(edge_type: Tensor, rows: int, num_types: Optional[int]) -> None:
    """Every edge type (``edge_type`` in the given order) has a row of
    ``edge_attr`` (``rows`` of them): the first edge whose type has none is
    named; an EdgeSet declared with more types than rows is refused too."""
    bad = ((edge_type < 0) | (edge_type >= rows)).nonzero()
    if bad.numel() > 0:
        e = int(bad[0, 0])
        raise IndexError(f"'edge_type' is out of range: edge_type[{e}] = {int(edge_type[e])} "
                         f"but 'edge_attr' has {rows} rows (one per type)")
    if num_types is not None:
        raise ValueError(f"'edge_attr' has {rows} rows (one per edge type) but the edge set "
                         f"has {num_types} types")


def _check_table_is_per_type(rows: int, num_edges: int, num_types: int,
                             declared: bool) -> None:
    """With typed edges ``edge_attr`` is a table, one row per type: exactly R
    rows when the edge set declares R (``num_types=``); otherwise at least
    the types present, but not one row per edge (features per edge given
    with a typed edge set, which would be read as a table of E types)."""
    if declared and rows != num_types:
        raise ValueError(f"'edge_attr' has {rows} rows but the edge set declares "
                         f"{num_types} edge types: with typed edges it is a table [R, D], one "
                         f"row per type")
    if not declared and rows == num_edges and rows != num_types:
        raise ValueError(f"'edge_attr' has {rows} rows, one per edge, but the edge set is "
                         f"typed ({num_types} types seen): typed edges take a table [R, D], "
                         f"one row per type. Pass the features per edge without 'edge_type' "
                         f"(an untyped EdgeSet), or, if it is a table of {rows} types, declare "
                         f"them: EdgeSet(..., edge_type=..., num_types={rows})")

