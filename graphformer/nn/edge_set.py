r"""One description of an edge set, built once and read by every attention
layer and backend (as FlexAttention builds a block mask once per batch).

An :class:`EdgeSet` holds what every backend needs of ``edge_index``: the
edges grouped by target (the sort order and the CSR row pointer), the batch
of every node and the padded per-graph layout of the dense backend (built on
first use), whether the set has duplicates, and, for typed edges, the type of
every edge. Passing the same :class:`EdgeSet` to several layers
(``layer(x, edges)`` in place of ``layer(x, edge_index)``) sorts, indexes and
lays out the edges once instead of once per layer.

:meth:`EdgeSet.grouped` builds one from edges already grouped by target and
their CSR row pointer computed before (in a data-loader worker, say): then
nothing of the data is read, and a compiled model takes the edge set as
input tensors.

Shapes: N_s source and N_t target nodes (N_s = N_t = N for self-attention),
E edges, B graphs of at most T nodes, R edge types.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.utils.sparse import index2ptr, ptr2index

from .._checks import check_batch, check_edge_index, check_node_range, check_num_nodes
from .csr import EdgeCSR


class cached:
    """``functools.cached_property`` without its lock: computed once, kept in
    the instance's ``__dict__``. Python 3.11's takes a lock that dynamo cannot
    trace, so a fresh ``EdgeSet`` broke the graph of a compiled layer (and
    ``fullgraph=True`` failed)."""

    def __init__(self, func: Callable[[Any], Any]) -> None:
        self.func, self.name, self.__doc__ = func, func.__name__, func.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: Optional[type] = None) -> Any:
        if obj is None:
            return self
        values = obj.__dict__
        if self.name not in values:
            values[self.name] = self.func(obj)
        return values[self.name]


class EdgeSet:
    r"""An edge set prepared for attention.

    Args:
        edge_index (LongTensor [2, E]): row 0 the source ``j``, row 1 the
            target ``i`` (any order; duplicates allowed).
        num_nodes (int or (int, int)): N, or (N_s, N_t) for bipartite edge
            sets (cross-attention).
        batch (LongTensor [N_t], optional): the graph of every node, sorted
            (PyG's ``Batch.batch``); lets the dense backend pad per graph.
            Ignored for bipartite edge sets.
        edge_type (LongTensor [E], optional): the type of every edge, in
            ``[0, num_types)``. With typed edges a layer takes its edge
            features as a table ``edge_attr [R, D]``, one row per type (as
            PyG's ``RGCNConv`` takes ``edge_type``), and computes the edge
            terms per type and node instead of per edge.
        num_types (int, optional): R (default: ``edge_type.max() + 1``).

    Tensors given per edge to a layer together with an :class:`EdgeSet`
    (``edge_attr`` without types, ``head_mask``) and the attention weights it
    returns are in the order of ``edge_index`` as given here.

    Example::

        >>> edges = EdgeSet(patterns.full(batch.ptr), batch.num_nodes, batch=batch.batch)
        >>> for layer in layers:               # sorted and indexed once
        ...     x = layer(x, edges)
    """

    def __init__(self, edge_index: Tensor, num_nodes: Union[int, Tuple[int, int]],
                 batch: Optional[Tensor] = None, edge_type: Optional[Tensor] = None,
                 num_types: Optional[int] = None) -> None:
        self._build(edge_index, num_nodes, batch, edge_type, num_types, ptr=None)

    @classmethod
    def grouped(cls, edge_index: Tensor, num_nodes: Union[int, Tuple[int, int]], ptr: Tensor,
                batch: Optional[Tensor] = None, edge_type: Optional[Tensor] = None,
                num_types: Optional[int] = None) -> "EdgeSet":
        """An edge set whose edges come grouped by target (``edge_index[1]``
        non-decreasing), with its CSR row pointer computed before: ``ptr``
        [N_t + 1], the edges into target ``i`` at ``ptr[i]:ptr[i + 1]``
        (:meth:`row_pointer`). Other arguments as for the constructor.

        The result equals ``EdgeSet(edge_index, ...)``, but its construction
        reads nothing of the data under torch.compile or torch.export (no
        sort, no search): a model that takes the edge set's CSR as input
        builds it this way (see
        :meth:`graphformer.models.GraphTransformer.prepare`). In eager mode
        the edges are checked as by the constructor, and that they come
        grouped by target (``ValueError`` otherwise)."""
        edges = cls.__new__(cls)
        edges._build(edge_index, num_nodes, batch, edge_type, num_types, ptr=ptr)
        return edges

    @staticmethod
    def row_pointer(target: Tensor, num_dst: int) -> Tensor:
        """The CSR row pointer [N_t + 1] of edges grouped by target, from
        their targets ``target`` [E] (non-decreasing): what
        :meth:`grouped` takes. In eager mode the targets are checked (in
        ``[0, num_dst)`` and non-decreasing: ``IndexError`` / ``ValueError``
        naming the first that is not)."""
        num_dst = check_num_nodes(num_dst, "num_dst")
        if not isinstance(target, Tensor) or target.dim() != 1 \
                or target.dtype.is_floating_point or target.dtype == torch.bool:
            raise TypeError(f"'target' must be a 1-D integer tensor [E], got "
                            f"{getattr(target, 'dtype', type(target).__name__)} "
                            f"{list(getattr(target, 'shape', []))}")
        target = target.long()
        if not torch.compiler.is_compiling() and target.numel():
            bad = (target < 0) | (target >= num_dst)
            if bool(bad.any()):
                e = int(bad.nonzero()[0])
                raise IndexError(f"'target[{e}]' = {int(target[e])} is not a node in "
                                 f"[0, num_dst = {num_dst})")
            down = target[1:] < target[:-1]
            if bool(down.any()):
                e = int(down.nonzero()[0]) + 1
                raise ValueError(f"'target' must be non-decreasing (edges grouped by "
                                 f"target): target[{e}] = {int(target[e])} follows "
                                 f"{int(target[e - 1])}")
        return EdgeCSR.from_sorted(target, target, num_dst, num_dst).ptr   # (col unused)

    def _build(self, edge_index: Tensor, num_nodes: Union[int, Tuple[int, int]],
               batch: Optional[Tensor], edge_type: Optional[Tensor], num_types: Optional[int],
               ptr: Optional[Tensor]) -> None:
        check_edge_index(edge_index)
        if isinstance(num_nodes, tuple):
            if len(num_nodes) != 2:
                raise ValueError(f"'num_nodes' must be N or a pair (N_s, N_t), got "
                                 f"{len(num_nodes)} entries")
            num_src = check_num_nodes(num_nodes[0], "num_nodes[0]")
            num_dst = check_num_nodes(num_nodes[1], "num_nodes[1]")
            bipartite = True
        else:
            num_src = num_dst = check_num_nodes(num_nodes)
            bipartite = False
        check_node_range(edge_index, num_src, num_dst)
        # any layout in (a transposed list of pairs, a slice, a permutation):
        # every array derived from it is dense and int64
        edge_index = edge_index.long().contiguous()
        E = edge_index.size(1)
        if batch is not None:
            check_batch(batch, num_dst)
        #: whether R was declared (``num_types=``) rather than read off ``edge_type``
        self.num_types_declared = num_types is not None
        if num_types is not None:
            num_types = check_num_nodes(num_types, "num_types")
        if edge_type is not None:
            if not isinstance(edge_type, Tensor) or edge_type.dtype.is_floating_point \
                    or edge_type.dtype == torch.bool:
                raise TypeError("'edge_type' must be an integer tensor [E]")
            if edge_type.shape != (E,):
                raise ValueError(f"'edge_type' must have shape [E] = [{E}], got "
                                 f"{list(edge_type.shape)}")
            edge_type = edge_type.long().contiguous()
            # the range check reads data: eager mode only (torch.compile, with R declared,
            # trusts the types instead of breaking the graph)
            checked = num_types is None or not torch.compiler.is_compiling()
            low = int(edge_type.min()) if checked and E else 0
            high = int(edge_type.max()) + 1 if checked and E else 0
            if num_types is None:
                num_types = max(high, 1)
            if low < 0 or high > num_types:
                bad = int(((edge_type < 0) | (edge_type >= num_types)).nonzero()[0])
                raise IndexError(f"'edge_type' is out of range: edge_type[{bad}] = "
                                 f"{int(edge_type[bad])} but there are {num_types} types "
                                 f"(valid 0..{num_types - 1})")
        elif num_types is not None:
            raise ValueError("'num_types' was given without 'edge_type'")

        src, dst = edge_index[0], edge_index[1]
        perm = None
        compiling = torch.compiler.is_compiling()
        # (compiling first: E < 2 would fix E's range in a compiled graph)
        grouped = compiling or E < 2 or bool((dst[1:] >= dst[:-1]).all())
        if ptr is not None:
            if not isinstance(ptr, Tensor) or ptr.dtype != torch.long \
                    or ptr.shape != (num_dst + 1,):
                raise ValueError(f"'ptr' must be a torch.long tensor [N_t + 1] = "
                                 f"[{num_dst + 1}], got "
                                 f"{getattr(ptr, 'dtype', type(ptr).__name__)} "
                                 f"{list(getattr(ptr, 'shape', []))}")
            if not grouped:
                e = int((dst[1:] < dst[:-1]).nonzero()[0]) + 1
                raise ValueError(f"EdgeSet.grouped: the edges are not grouped by target: "
                                 f"edge {e} has target {int(dst[e])} after "
                                 f"{int(dst[e - 1])}")
            if not compiling:
                given = EdgeCSR.from_sorted(dst, src, num_dst, num_src).ptr
                if not torch.equal(given, ptr):
                    i = int((given != ptr).nonzero()[0])
                    raise ValueError(f"EdgeSet.grouped: 'ptr' does not match the edges' "
                                     f"targets: ptr[{i}] = {int(ptr[i])}, but "
                                     f"{int(given[i])} edges have a target below {i} "
                                     f"(EdgeSet.row_pointer(edge_index[1], {num_dst}))")
            csr = EdgeCSR(ptr, src, num_src, row=dst)
        else:
            # whether the edges came grouped reads data: under torch.compile they are
            # sorted anyway (a stable sort of grouped edges keeps their order: same values)
            if compiling or not grouped:
                perm = torch.sort(dst, stable=True)[1]
                src, dst = src.index_select(0, perm), dst.index_select(0, perm)
            csr = EdgeCSR.from_sorted(dst, src, num_dst, num_src)
        self.edge_index = edge_index
        self.num_src, self.num_dst = num_src, num_dst
        self.bipartite = bipartite
        #: ``sorted = given[perm]``; None when the edges came grouped by target
        self.perm = perm
        self.csr = csr
        self.batch = None if bipartite or batch is None else batch.long().contiguous()
        self.edge_type = self.to_sorted(edge_type) if edge_type is not None else None
        self.num_types = num_types
        self._cache: dict = {}

    @property
    def num_edges(self) -> int:
        return self.csr.num_edges

    @property
    def typed(self) -> bool:
        return self.edge_type is not None

    @cached
    def sorted_edge_index(self) -> Tensor:
        """The edges grouped by target, [2, E]."""
        return torch.stack([self.csr.col, self.csr.row])

    def type_slots(self, num_types: int) -> Tuple[Tensor, Tensor]:
        """``(target · R + type, source · R + type)`` of every edge in target
        order: its place in [N_t, R] and [N_s, R] node-by-type tables (built
        once per R)."""
        key = ("slots", num_types)
        if key not in self._cache:
            t = self.edge_type
            self._cache[key] = (self.csr.row * num_types + t, self.csr.col * num_types + t)
        return self._cache[key]

    @property
    def edge_type_given(self) -> Optional[Tensor]:
        """The type of every edge in the given order (None if untyped)."""
        return self.from_sorted(self.edge_type)

    def to_sorted(self, t: Optional[Tensor]) -> Optional[Tensor]:
        """A per-edge tensor (dim 0) from the given order into target order."""
        if t is None or self.perm is None:
            return t
        return t.index_select(0, self.perm)

    def from_sorted(self, t: Optional[Tensor]) -> Optional[Tensor]:
        """A per-edge tensor (dim 0) from target order back into the given order."""
        if t is None or self.perm is None:
            return t
        return torch.empty_like(t).index_copy_(0, self.perm, t)

    @cached
    def coalesced(self) -> bool:
        """No pair ``j -> i`` occurs twice."""
        if self.num_edges < 2:
            return True
        if self.num_src * self.num_dst >= 2**63:      # the keys below would overflow int64
            return torch.unique(self.sorted_edge_index, dim=1).size(1) == self.num_edges
        key = self.csr.row * self.num_src + self.csr.col
        # sorted by target; within a target any order: sort the keys once
        if not bool((key[1:] > key[:-1]).all()):
            key = torch.sort(key)[0]
        return bool((key[1:] > key[:-1]).all())

    @cached
    def graph_ptr(self) -> Optional[Tensor]:
        """Node offsets of the graphs ([B + 1]; one graph when ``batch`` is
        None); None for bipartite sets or an unsorted ``batch``."""
        if self.bipartite:
            return None
        dev = self.csr.ptr.device
        if self.batch is None:
            return torch.tensor([0, self.num_dst], device=dev)
        b = self.batch
        if b.numel() > 1 and not bool((b[1:] >= b[:-1]).all()):
            return None
        num_graphs = int(b[-1]) + 1 if b.numel() > 0 else 1
        return index2ptr(b, num_graphs)

    @cached
    def layout(self) -> Optional["DenseLayout"]:
        """The padded per-graph layout (None where the dense backend cannot
        apply: bipartite, unsorted ``batch`` or an edge joining two graphs)."""
        return self._layout_or_reason[0]

    @cached
    def _layout_or_reason(self) -> Tuple[Optional["DenseLayout"], str]:
        if self.bipartite:
            return None, "got bipartite input (cross-attention)"
        ptr = self.graph_ptr
        if ptr is None:
            return None, "got an unsorted 'batch' (graphs are not contiguous)"
        layout = DenseLayout(ptr, self.csr)
        if layout.crossing is not None:
            e = layout.crossing                     # in target order; named as given
            given = e if self.perm is None else int(self.perm[e])
            return None, (f"edge {given} ({int(self.csr.col[e])} -> {int(self.csr.row[e])}) "
                          f"joins two graphs")
        return layout, ""

    def why_not_dense(self) -> str:
        """Why :attr:`layout` is None ("" when it is not)."""
        return self._layout_or_reason[1]

    def __repr__(self) -> str:
        types = f", num_types={self.num_types}" if self.typed else ""
        size = f"({self.num_src}, {self.num_dst})" if self.bipartite else f"{self.num_dst}"
        return f"{self.__class__.__name__}(num_nodes={size}, num_edges={self.num_edges}{types})"


class DenseLayout:
    """Where each node and edge sits in the padded [B, T] / [B, T, T] layout
    (``crossing`` names an edge that joins two graphs, if any: then the
    layout does not apply).

    Args:
        ptr (LongTensor [B + 1]): node offsets of the graphs (graphs are
            contiguous blocks of nodes).
        csr (EdgeCSR): the edges (grouped by target).
    """

    def __init__(self, ptr: Tensor, csr: EdgeCSR) -> None:
        dev = ptr.device
        sizes = ptr.diff()
        self.num_graphs = sizes.numel()
        self.max_nodes = int(sizes.max()) if self.num_graphs > 0 else 0
        N = int(ptr[-1])
        self.batch = ptr2index(ptr, N)
        self.pos = torch.arange(N, device=dev) - ptr[:-1].index_select(0, self.batch)
        dst, src = csr.row, csr.col
        b = self.batch.index_select(0, dst)
        bad = (self.batch.index_select(0, src) != b).nonzero()
        #: the first edge (in CSR order) that joins two graphs, or None
        self.crossing: Optional[int] = int(bad[0, 0]) if bad.numel() > 0 else None
        # every graph full size and in order: padding is a reshape
        self.uniform = N == self.num_graphs * self.max_nodes
        self.edge_graph = b
        self._csr = csr
        self._masks: dict = {}

    @cached
    def edge_flat(self) -> Tensor:
        """Index of every edge in a [B, T, T] tensor, [E] (built when the dense
        backend runs, not when ``auto`` only inspects the layout)."""
        T, csr = self.max_nodes, self._csr
        i, j = self.pos.index_select(0, csr.row), self.pos.index_select(0, csr.col)
        return (self.edge_graph * T + i) * T + j

    @cached
    def slots(self) -> Tensor:
        """Padded slot of every node in a [B·T] tensor, [N]."""
        return self.batch * self.max_nodes + self.pos

    def to_dense(self, x: Tensor) -> Tensor:
        """[N, H, C] -> [B, H, T, C] (zeros at padding)."""
        N, H, C = x.shape
        if self.uniform:
            return x.view(self.num_graphs, self.max_nodes, H, C).transpose(1, 2)
        out = x.new_zeros(self.num_graphs * self.max_nodes, H, C)
        out = out.index_copy(0, self.slots, x)
        return out.view(self.num_graphs, self.max_nodes, H, C).transpose(1, 2)

    def from_dense(self, x: Tensor) -> Tensor:
        """[B, H, T, C] -> [N, H, C]."""
        B, H, T, C = x.shape
        flat = x.transpose(1, 2).reshape(B * T, H, C)
        if self.uniform:            # no padding rows to drop
            return flat
        return flat.index_select(0, self.slots)

    def edge_index_bhtt(self, heads: int) -> Tensor:
        """Flat index of every (edge, head) in a [B, H, T, T] tensor, [E, H]."""
        key = ("bhtt", heads)
        if key not in self._masks:
            T2 = self.max_nodes * self.max_nodes
            within = self.edge_flat - self.edge_graph * T2
            hs = torch.arange(heads, device=within.device)
            self._masks[key] = ((self.edge_graph * heads).unsqueeze(1) + hs) * T2 \
                + within.unsqueeze(1)
        return self._masks[key]

    def edge_counts(self) -> Tensor:
        """Number of edges at every [B, 1, T, T] position (shared by the heads;
        built once per edge set)."""
        if "count" not in self._masks:
            B, T = self.num_graphs, self.max_nodes
            self._masks["count"] = torch.bincount(
                self.edge_flat, minlength=B * T * T).view(B, 1, T, T)
        return self._masks["count"]
