"""Neighbour sampling for mini-batch training on one large graph, with nothing
beyond the normal install (issue 26).

PyG's :class:`torch_geometric.sampler.NeighborSampler` needs ``pyg-lib`` or
``torch-sparse``; :class:`NeighborSampler` here is a :class:`BaseSampler` of
pure tensor operations with PyG's sampling semantics, so that
:class:`~torch_geometric.loader.NodeLoader` and
:class:`~torch_geometric.loader.LinkLoader` take it as they take PyG's.
:func:`neighbor_sampler` picks PyG's sampler when it can run and this one
otherwise.

What is sampled (PyG's non-disjoint, directional sampling): the seed nodes come
first in ``node``, in input order; at hop ``h`` every node added at hop ``h - 1``
(the seeds at hop 1) draws ``min(deg, k_h)`` of its *incoming* edges ``j -> i``
uniformly without replacement (``k_h`` draws with replacement under
``replace=True``; ``k_h = -1`` takes them all), and the sources ``j`` not sampled
before are appended to ``node`` in order of first appearance and form the next
frontier. ``row``/``col`` are local indices with messages flowing
``row (source) -> col (target)``; ``edge`` holds the *original* edge ids (so
:attr:`edge_permutation` is ``None``). ``num_sampled_nodes`` is
``[#seeds, #new at hop 1, ...]``, ``num_sampled_edges`` ``[#edges at hop 1, ...]``.
A seed given twice stays twice in ``node`` and each copy samples at hop 1 (as
PyG's); a source equal to it maps to its first copy. Link sampling reuses PyG's
``edge_sample`` (endpoints of the positive and negative links, sorted unique,
are the seeds), so its metadata is PyG's exactly.

Where it differs from PyG's: within one target the sampled edges come in
ascending CSC order, not draw order; ``edge`` holds original ids with
:attr:`edge_permutation` ``None`` where PyG's gives CSC positions and the
permutation (the loaders' ``e_id`` is the same); the random streams differ.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.data import Data, FeatureStore, GraphStore, HeteroData
import torch_geometric.typing
from torch_geometric.sampler import (
    BaseSampler,
    EdgeSamplerInput,
    NegativeSampling,
    NodeSamplerInput,
    NumNeighbors,
    SamplerOutput,
)
from torch_geometric.sampler.neighbor_sampler import edge_sample, node_sample

from .._checks import check_edge_index, check_node_range, check_nonneg_int

__all__ = ["NeighborSampler", "neighbor_sampler", "BACKENDS", "power_law_graph", "benchmark"]

#: The values of :func:`neighbor_sampler`'s ``backend``.
BACKENDS = ("auto", "pyg", "graphformer")

SamplerData = Union[Data, Tuple[FeatureStore, GraphStore]]


class NeighborSampler(BaseSampler):
    r"""Uniform neighbour sampling on a homogeneous graph, vectorised over the
    frontier, needing neither ``pyg-lib`` nor ``torch-sparse``.

    Args:
        data: a :class:`~torch_geometric.data.Data` (its ``edge_index`` is
            sorted by target once, stably, so edges of one target keep their
            order) or a ``(FeatureStore, GraphStore)`` tuple (the graph is read
            as CSC through ``graph_store.csc()``, as PyG's sampler reads it:
            an edge index stored in CSC layout comes back as it is, possibly
            memory-mapped and int32, and only the entries sampling touches are
            read; a ``perm`` the store gives maps CSC slots to edge ids).
        num_neighbors: the fan-out per hop; ``-1`` takes every incoming edge.
        replace: draw with replacement (``k`` draws per node with any incoming
            edge, repeats possible).
        seed: seeds a generator of the sampler's own (each DataLoader worker
            gets ``seed + worker id``), making the samples, and the negatives
            of :meth:`sample_from_edges`, reproducible; ``None`` draws from
            torch's global generator (seeded by ``torch.manual_seed``).
        subgraph_type, disjoint, temporal_strategy, time_attr, weight_attr, is_sorted, share_memory:
            PyG's :class:`NeighborSampler` keywords, so one call builds either
            sampler. Only PyG's defaults are supported here
            (directional, non-disjoint, no temporal or weighted sampling), except
            ``is_sorted=True`` (``data.edge_index`` is already sorted by target:
            no sort) and ``share_memory=True`` (the CSC tensors built from a
            ``Data`` go to shared memory for worker processes).

    How a hop costs (one hop is a fixed handful of tensor operations over the
    frontier, no Python loop per node): a node with ``deg <= k`` takes its
    ``deg`` edges; ``k < deg <= 2k``: ``deg`` random keys and a top-``k``
    (``O(k)`` memory per node); ``deg > 2k``: about ``k`` random positions
    drawn with replacement (``deg ln(deg / (deg - k))`` expected, at most
    ``1.39 k``, plus slack), duplicates dropped and the first ``k`` distinct
    kept (a uniform ``k``-subset), the rare node left short drawing again; so a
    node of degree 10^6 costs ``O(k)``, not ``O(deg)``. Global-to-local ids
    are mapped by one sort of the ids sampled so far (no ``num_nodes``-sized
    table): ``O(S log S)`` for ``S`` sampled edges. 1024 copies of one node of
    in-degree 10^6 at fan-out 15 take about 6 ms and 8 MB.

    Measured with :func:`benchmark` (``OMP_NUM_THREADS=1 python -c "from
    graphformer.data.sampling import benchmark; benchmark()"``) on a 2-core
    Xeon shared with other work, one thread, graphs of 100k nodes and 1M edges
    from :func:`power_law_graph`, fan-out ``[15, 10]``, batches of 1024 seeds:
    exponent 0.5 (max in-degree 1.7k, 66k sampled edges per batch) 59k-71k
    seeds/s (15-17 ms a batch); exponent 1.0 (max in-degree 83k, 12k edges per
    batch) 177k-226k seeds/s.
    """

    def __init__(
        self,
        data: SamplerData,
        num_neighbors: Union[Sequence[int], NumNeighbors],
        *,
        replace: bool = False,
        seed: Optional[int] = None,
        subgraph_type: str = "directional",
        disjoint: bool = False,
        temporal_strategy: str = "uniform",
        time_attr: Optional[str] = None,
        weight_attr: Optional[str] = None,
        is_sorted: bool = False,
        share_memory: bool = False,
    ) -> None:
        self.num_neighbors = _check_num_neighbors(num_neighbors)
        if not isinstance(replace, bool):
            raise TypeError(f"'replace' must be a bool, got {type(replace).__name__}")
        self.replace = replace
        self.seed = None if seed is None else check_nonneg_int(seed, "seed")
        _refuse_unsupported(subgraph_type=subgraph_type, disjoint=disjoint,
                            temporal_strategy=temporal_strategy, time_attr=time_attr,
                            weight_attr=weight_attr)
        for name, flag in (("is_sorted", is_sorted), ("share_memory", share_memory)):
            if not isinstance(flag, bool):
                raise TypeError(f"'{name}' must be a bool, got {type(flag).__name__}")
        self.subgraph_type = "directional"
        self.disjoint = False

        if isinstance(data, Data):
            self.colptr, self.row, self.perm, self.num_nodes = _csc_from_data(
                data, is_sorted, share_memory)
        elif isinstance(data, HeteroData):
            raise TypeError("graphformer's NeighborSampler samples homogeneous graphs only; "
                            "got a HeteroData (use PyG's NeighborSampler with pyg-lib)")
        elif (isinstance(data, (tuple, list)) and len(data) == 2
              and isinstance(data[0], FeatureStore) and isinstance(data[1], GraphStore)):
            self.colptr, self.row, self.perm, self.num_nodes = _csc_from_store(data[1])
        else:
            raise TypeError("'data' must be a torch_geometric.data.Data or a (FeatureStore, "
                            f"GraphStore) tuple, got {type(data).__name__}")
        self._generators: dict = {}

    def __getstate__(self) -> dict:
        # A copy (a spawned DataLoader worker) starts its own stream from the seed.
        state = self.__dict__.copy()
        state["_generators"] = {}
        return state

    # The BaseSampler interface ###############################################

    @property
    def is_hetero(self) -> bool:
        return False

    @property
    def is_temporal(self) -> bool:
        return False

    @property
    def edge_permutation(self) -> None:
        """``None``: :attr:`SamplerOutput.edge` already holds original edge ids."""
        return None

    def sample_from_nodes(self, index: NodeSamplerInput, **kwargs) -> SamplerOutput:
        """Sample around ``index.node`` (metadata ``(input_id, time)`` as PyG)."""
        if index.input_type is not None:
            raise TypeError("graphformer's NeighborSampler samples homogeneous graphs only; "
                            f"got seed nodes of type {index.input_type!r}")
        return node_sample(index, self._sample)

    def sample_from_edges(self, index: EdgeSamplerInput,
                          neg_sampling: Optional[NegativeSampling] = None) -> SamplerOutput:
        """Sample around the endpoints of the seed links (and of the negatives,
        drawn uniformly from all nodes as PyG's ``neg_sample``); metadata as
        PyG's: ``(input_id, edge_label_index, edge_label, time)`` for binary or no
        negative sampling, ``(input_id, src_index, dst_pos_index, dst_neg_index,
        time)`` for triplet."""
        if index.input_type is not None:
            raise TypeError("graphformer's NeighborSampler samples homogeneous graphs only; "
                            f"got seed links of type {index.input_type!r}")
        if index.time is not None:
            raise ValueError("graphformer's NeighborSampler does not sample temporally: the "
                             "seed links have times ('edge_label_time'); drop them or use "
                             "PyG's NeighborSampler with pyg-lib")
        if neg_sampling is not None:
            neg_sampling = _GeneratorNegativeSampling(neg_sampling, self._generator())
        return edge_sample(index, self._sample, self.num_nodes, False, None, neg_sampling)

    # Sampling ################################################################

    def _generator(self) -> Optional[torch.Generator]:
        if self.seed is None:
            return None
        info = torch.utils.data.get_worker_info()
        key = 0 if info is None else info.id + 1
        gen = self._generators.get(key)
        if gen is None:
            gen = torch.Generator().manual_seed(self.seed + (0 if info is None else info.id))
            self._generators[key] = gen
        return gen

    def _sample(self, seed: Tensor, seed_time: Optional[Tensor] = None,
                **kwargs) -> SamplerOutput:
        seed = _check_seeds(seed, self.num_nodes)
        gen = self._generator()
        nodes: List[Tensor] = [seed]
        rows: List[Tensor] = []
        cols: List[Tensor] = []
        edges: List[Tensor] = []
        num_nodes = [seed.numel()]
        num_edges: List[int] = []
        frontier, base, total = seed, 0, seed.numel()
        for k in self.num_neighbors.values:
            if frontier.numel() == 0 or k == 0:
                num_nodes.append(0)
                num_edges.append(0)
                frontier = frontier[:0]
                continue
            pos, target = self._hop(frontier, k, gen)
            src = self.row[pos].to(torch.long)
            edges.append(pos if self.perm is None else self.perm[pos].to(torch.long))
            cols.append(target + base)
            # One sort maps the sources to local ids: an id's first position in
            # [nodes so far, sources] is its local id if below `total`; the
            # others are new, numbered in order of first appearance.
            ids, inverse = torch.unique(torch.cat(nodes + [src]), return_inverse=True)
            first = _first_positions(inverse, ids.numel())
            fresh = (first >= total).nonzero().view(-1)
            fresh = fresh[torch.argsort(first[fresh])]
            first[fresh] = torch.arange(total, total + fresh.numel())
            rows.append(first[inverse[total:]])
            frontier = ids[fresh]
            nodes.append(frontier)
            num_nodes.append(frontier.numel())
            num_edges.append(src.numel())
            base, total = total, total + frontier.numel()
        empty = seed.new_empty(0)
        return SamplerOutput(
            node=torch.cat(nodes),
            row=torch.cat(rows) if rows else empty,
            col=torch.cat(cols) if cols else empty,
            edge=torch.cat(edges) if edges else empty,
            batch=None,
            num_sampled_nodes=num_nodes,
            num_sampled_edges=num_edges,
        )

    def _hop(self, frontier: Tensor, k: int,
             gen: Optional[torch.Generator]) -> Tuple[Tensor, Tensor]:
        """CSC positions of the sampled incoming edges of ``frontier`` and the
        index into ``frontier`` of each one's target, grouped by target in
        frontier order, ascending positions within a target."""
        start = self.colptr[frontier].to(torch.long)
        deg = self.colptr[frontier + 1].to(torch.long) - start
        n = frontier.numel()
        if k < 0:
            take_all = torch.ones(n, dtype=torch.bool)
            count = deg
        elif self.replace:
            take_all = torch.zeros(n, dtype=torch.bool)
            count = torch.where(deg > 0, k, 0)
        else:
            take_all = deg <= k
            count = deg.clamp(max=k)
        ptr = torch.cumsum(count, 0) - count
        total = int(count.sum())
        offset = torch.empty(total, dtype=torch.long)

        idx = take_all.nonzero().view(-1)
        if idx.numel():
            d = deg[idx]
            seg = torch.repeat_interleave(torch.arange(idx.numel()), d)
            within = torch.arange(seg.numel()) - (torch.cumsum(d, 0) - d)[seg]
            offset[ptr[idx][seg] + within] = within

        fixed = (~take_all & (deg > 0)).nonzero().view(-1)
        if fixed.numel():
            d = deg[fixed]
            if self.replace:
                _place(offset, ptr[fixed], _draw(d, k, gen))
            else:
                small = d <= 2 * k
                if bool(small.any()):
                    _place(offset, ptr[fixed[small]], _top_k_keys(d[small], k, gen))
                if not bool(small.all()):
                    _place(offset, ptr[fixed[~small]], _distinct_draws(d[~small], k, gen))

        target = torch.repeat_interleave(torch.arange(n), count)
        return start[target] + offset, target


# The draws ###################################################################

def _draw(deg: Tensor, m: int, gen: Optional[torch.Generator]) -> Tensor:
    """[n, m] uniform offsets in ``[0, deg_i)`` per row, with replacement."""
    u = torch.rand(deg.numel(), m, dtype=torch.float64, generator=gen)
    return torch.minimum((u * deg.unsqueeze(1)).to(torch.long), (deg - 1).unsqueeze(1))


def _top_k_keys(deg: Tensor, k: int, gen: Optional[torch.Generator]) -> Tensor:
    """[n, k] distinct offsets per row, a uniform k-subset of ``[0, deg_i)``
    (``k < deg_i <= 2k``): random keys, padding keys above every real one."""
    width = int(deg.max())
    keys = torch.rand(deg.numel(), width, generator=gen)
    keys[torch.arange(width).unsqueeze(0) >= deg.unsqueeze(1)] = 2.0
    return keys.topk(k, dim=1, largest=False, sorted=False).indices


def _distinct_draws(deg: Tensor, k: int, gen: Optional[torch.Generator]) -> Tensor:
    """[n, k] distinct offsets per row (``deg_i > 2k``): the first ``k`` distinct
    values of a sequence of uniform draws with replacement, which is a uniform
    k-subset; rows short of ``k`` distinct values draw more."""
    d = float(deg.min())
    m = math.ceil(d * math.log(d / (d - k)) + 2.0 * math.sqrt(k)) + 1
    out = torch.empty(deg.numel(), k, dtype=torch.long)
    rows = torch.arange(deg.numel())
    draws = _draw(deg, m, gen)
    while True:
        sorted_vals, order = torch.sort(draws, dim=1, stable=True)
        repeat_sorted = torch.zeros_like(draws, dtype=torch.bool)
        repeat_sorted[:, 1:] = sorted_vals[:, 1:] == sorted_vals[:, :-1]
        repeat = torch.empty_like(repeat_sorted).scatter_(1, order, repeat_sorted)
        kept = (~repeat).cumsum(1)
        done = kept[:, -1] >= k
        if done.any():
            take = ~repeat[done] & (kept[done] <= k)
            out[rows[done]] = draws[done][take].view(-1, k)
        if done.all():
            return out
        rows, deg, draws = rows[~done], deg[~done], draws[~done]
        draws = torch.cat([draws, _draw(deg, m, gen)], dim=1)


def _place(offset: Tensor, ptr: Tensor, block: Tensor) -> None:
    """Write each row of ``block`` (sorted) at its target's slot in ``offset``."""
    block = torch.sort(block, dim=1).values
    slots = ptr.unsqueeze(1) + torch.arange(block.size(1)).unsqueeze(0)
    offset[slots.view(-1)] = block.reshape(-1)


def _first_positions(inverse: Tensor, size: int) -> Tensor:
    """For ids grouped by ``inverse`` (``torch.unique``), each group's first
    position in the original order."""
    first = torch.full((size,), inverse.numel(), dtype=torch.long)
    return first.scatter_reduce_(0, inverse, torch.arange(inverse.numel()), "amin")


class _GeneratorNegativeSampling(NegativeSampling):
    """PyG's :class:`NegativeSampling`, drawing from the sampler's generator."""

    def __init__(self, base: NegativeSampling, generator: Optional[torch.Generator]) -> None:
        super().__init__(base.mode, base.amount, base.src_weight, base.dst_weight)
        self._generator = generator

    def sample(self, num_samples: int, endpoint: str,
               num_nodes: Optional[int] = None) -> Tensor:
        weight = self.src_weight if endpoint == "src" else self.dst_weight
        if weight is None:
            return torch.randint(num_nodes, (num_samples,), generator=self._generator)
        if num_nodes is not None and weight.numel() != num_nodes:
            raise ValueError(f"the negative sampling's {endpoint}_weight has {weight.numel()} "
                             f"entries but the graph has {num_nodes} nodes")
        return torch.multinomial(weight, num_samples, replacement=True,
                                 generator=self._generator)


# Reading the graph ###########################################################

def _csc_from_data(data: Data, is_sorted: bool,
                   share_memory: bool) -> Tuple[Tensor, Tensor, Optional[Tensor], int]:
    edge_index = getattr(data, "edge_index", None)
    if edge_index is None:
        if "adj_t" in data or "adj" in data:
            raise TypeError("graphformer's NeighborSampler reads 'edge_index', not a "
                            "SparseTensor 'adj_t' (that needs torch-sparse)")
        edge_index = torch.empty(2, 0, dtype=torch.long)
    if hasattr(edge_index, "as_tensor"):  # EdgeIndex
        edge_index = edge_index.as_tensor()
    check_edge_index(edge_index, "data.edge_index")
    num_nodes = data.num_nodes
    if num_nodes is None:
        raise ValueError("'data' has no nodes: set data.num_nodes")
    check_node_range(edge_index, num_nodes, num_nodes, "data.edge_index")
    row, col = edge_index[0].to(torch.long), edge_index[1].to(torch.long)
    perm = None
    if is_sorted:
        if col.numel() > 1 and bool((col[1:] < col[:-1]).any()):
            e = int((col[1:] < col[:-1]).nonzero()[0]) + 1
            raise ValueError(f"is_sorted=True but data.edge_index is not sorted by target: "
                             f"edge_index[1, {e}] = {int(col[e])} < edge_index[1, {e - 1}] = "
                             f"{int(col[e - 1])}")
    elif col.numel() > 1 and bool((col[1:] < col[:-1]).any()):
        col, perm = torch.sort(col, stable=True)
        row = row[perm]
    colptr = torch.zeros(num_nodes + 1, dtype=torch.long)
    colptr[1:] = torch.cumsum(torch.bincount(col, minlength=num_nodes), 0)
    if share_memory:
        for t in (colptr, row, perm):
            if t is not None:
                t.share_memory_()
    return colptr, row, perm, num_nodes


def _csc_from_store(graph_store: GraphStore) -> Tuple[Tensor, Tensor, Optional[Tensor], int]:
    attrs = graph_store.get_all_edge_attrs()
    if not attrs:
        raise ValueError("the GraphStore holds no edge index")
    typed = [a.edge_type for a in attrs if a.edge_type is not None]
    if typed:
        raise TypeError("graphformer's NeighborSampler samples homogeneous graphs only; the "
                        f"GraphStore holds edge type {typed[0]!r} (use PyG's NeighborSampler "
                        "with pyg-lib)")
    # As PyG's sampler: a CSC edge index comes back as stored (memory maps stay
    # memory maps, perm None); a store may override csc() to give a perm.
    row, colptr, perm = graph_store.csc()
    attr = attrs[0]
    for name, t in (("row", row), ("colptr", colptr)):
        if not isinstance(t, Tensor) or t.dim() != 1 or t.is_floating_point():
            raise TypeError(f"the GraphStore's CSC '{name}' must be a 1-D integer tensor")
    if colptr.numel() == 0:
        raise ValueError("the GraphStore's CSC 'colptr' is empty (it needs num_nodes + 1 "
                         "entries)")
    num_nodes = colptr.numel() - 1
    if attr.size is not None:
        num_nodes = max([num_nodes] + [int(s) for s in attr.size if s is not None])
    if (attr.size is None or None in attr.size) and row.numel():
        num_nodes = max(num_nodes, int(row.max()) + 1)  # a source past the last target
    if num_nodes > colptr.numel() - 1:  # nodes with no incoming edge past the end
        colptr = torch.cat([colptr, colptr[-1:].expand(num_nodes + 1 - colptr.numel())])
    return colptr, row, perm, num_nodes


# Checks ######################################################################

def _check_num_neighbors(num_neighbors: object) -> NumNeighbors:
    if isinstance(num_neighbors, NumNeighbors):
        values = num_neighbors.values
    else:
        values = num_neighbors
    if isinstance(values, dict):
        raise TypeError("graphformer's NeighborSampler samples homogeneous graphs only: "
                        "'num_neighbors' must be a list of ints, got a dict per edge type")
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError("'num_neighbors' must be a list of ints (the fan-out per hop), got "
                        f"{type(values).__name__}")
    values = list(values)
    for i, k in enumerate(values):
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"'num_neighbors[{i}]' must be an int, got {type(k).__name__}")
        if k < -1:
            raise ValueError(f"'num_neighbors[{i}]' must be >= 0, or -1 for every neighbour; "
                             f"got {k}")
    return NumNeighbors(values)


def _refuse_unsupported(**given: object) -> None:
    defaults = {"subgraph_type": "directional", "disjoint": False,
                "temporal_strategy": "uniform", "time_attr": None, "weight_attr": None}
    for name, value in given.items():
        ok = value == defaults[name] or (name == "subgraph_type"
                                         and getattr(value, "value", None) == "directional")
        if not ok:
            raise ValueError(f"graphformer's NeighborSampler supports only {name}="
                             f"{defaults[name]!r}, got {value!r} (PyG's NeighborSampler with "
                             "pyg-lib supports more)")


def _check_seeds(seed: Tensor, num_nodes: int) -> Tensor:
    if not isinstance(seed, Tensor) or seed.dim() != 1 or seed.is_floating_point():
        raise TypeError("the seed nodes must be a 1-D integer tensor")
    seed = seed.to(torch.long)
    if seed.numel():
        bad = (seed < 0) | (seed >= num_nodes)
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise IndexError(f"seed node {int(seed[i])} (position {i}) is out of range: the "
                             f"graph has {num_nodes} nodes (valid ids 0..{num_nodes - 1})")
    return seed


# The factory #################################################################

def neighbor_sampler(data: SamplerData, num_neighbors: Union[Sequence[int], NumNeighbors],
                     *, backend: str = "auto", **kwargs) -> BaseSampler:
    """A neighbour sampler for :class:`NodeLoader` / :class:`LinkLoader`.

    ``backend="auto"`` gives PyG's :class:`torch_geometric.sampler.NeighborSampler`
    when ``pyg-lib`` or ``torch-sparse`` is installed, otherwise graphformer's
    :class:`NeighborSampler`; ``"pyg"`` or ``"graphformer"`` asks for one.
    ``kwargs`` go to the sampler (PyG's keywords; ``seed`` only to graphformer's:
    PyG's draws from torch's global generator, seeded by ``torch.manual_seed``).
    """
    if backend not in BACKENDS:
        raise ValueError(f"'backend' must be one of {', '.join(BACKENDS)}; got {backend!r}")
    have_pyg = torch_geometric.typing.WITH_PYG_LIB or torch_geometric.typing.WITH_TORCH_SPARSE
    if backend == "pyg" and not have_pyg:
        raise ImportError("backend='pyg' needs pyg-lib or torch-sparse, neither of which is "
                          "installed; backend='graphformer' needs neither")
    if backend == "graphformer" or not have_pyg:
        return NeighborSampler(data, num_neighbors, **kwargs)
    if kwargs.get("seed") is not None:
        raise ValueError("PyG's NeighborSampler takes no 'seed' (it draws from torch's global "
                         "generator: call torch.manual_seed); pass backend='graphformer' for "
                         "a sampler of its own seed")
    kwargs.pop("seed", None)
    from torch_geometric.sampler import NeighborSampler as PyGNeighborSampler
    return PyGNeighborSampler(data, num_neighbors, **kwargs)


# Measuring ###################################################################

def power_law_graph(num_nodes: int, num_edges: int, exponent: float = 1.0,
                    seed: int = 0) -> Data:
    """A directed graph whose in-degrees follow a Zipf-like law (node ``i``
    receives edges in proportion to ``(i + 1) ** -exponent``, node ids then
    shuffled) and whose sources are uniform: the shape the sampler's cost
    depends on (a few nodes of very high degree, most of low degree)."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.arange(1, num_nodes + 1, dtype=torch.float64).pow(-exponent)
    target = torch.multinomial(weight, num_edges, replacement=True, generator=gen)
    target = torch.randperm(num_nodes, generator=gen)[target]
    source = torch.randint(num_nodes, (num_edges,), generator=gen)
    return Data(edge_index=torch.stack([source, target]), num_nodes=num_nodes)


def benchmark(argv: Optional[Sequence[str]] = None) -> None:
    """Print seeds per second of :class:`NeighborSampler` on :func:`power_law_graph`
    (command-line arguments ``argv``: ``--nodes``, ``--edges``, ``--exponent``,
    ``--fanout``, ``--batch-size``, ``--batches``)."""
    import argparse
    import time

    parser = argparse.ArgumentParser(description="graphformer's NeighborSampler: seeds/s")
    parser.add_argument("--nodes", type=int, default=100_000)
    parser.add_argument("--edges", type=int, default=1_000_000)
    parser.add_argument("--exponent", type=float, default=0.5,
                        help="in-degree of the i-th node ~ (i + 1) ** -exponent")
    parser.add_argument("--fanout", type=int, nargs="+", default=[15, 10])
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--batches", type=int, default=50)
    args = parser.parse_args(argv)
    data = power_law_graph(args.nodes, args.edges, args.exponent)
    t0 = time.perf_counter()
    sampler = NeighborSampler(data, args.fanout, seed=0)
    build = time.perf_counter() - t0
    deg = sampler.colptr[1:] - sampler.colptr[:-1]
    seeds = torch.randperm(args.nodes, generator=torch.Generator().manual_seed(1))
    sampler.sample_from_nodes(NodeSamplerInput(None, seeds[:args.batch_size]))  # warm-up
    t0, edges = time.perf_counter(), 0
    for b in range(args.batches):
        chunk = seeds[(b * args.batch_size) % args.nodes:][:args.batch_size]
        edges += sampler.sample_from_nodes(NodeSamplerInput(None, chunk)).edge.numel()
    took = time.perf_counter() - t0
    n = args.batches * args.batch_size
    print(f"graph: {args.nodes} nodes, {args.edges} edges, in-degree exponent "
          f"{args.exponent}, max in-degree {int(deg.max())}, "
          f"CSC built in {build:.2f} s; threads {torch.get_num_threads()}")
    print(f"fan-out {args.fanout}, batch {args.batch_size}: {n / took:,.0f} seeds/s, "
          f"{took / args.batches * 1e3:.1f} ms/batch, {edges / args.batches:,.0f} edges/batch")

