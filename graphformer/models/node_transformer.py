"""A small transformer for node classification on one graph: attention runs
over a union of edge sets (the graph, its k-hop closure, random keys) and
every edge carries its membership in each set as an edge feature."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor

from .. import patterns
from .._checks import check_edge_index, check_node_range
from ..nn import EdgeSet, TransformerLayer

NODE_PATTERNS = ("graph", "k_hop", "random", "global")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class NodeTransformerConfig:
    """Hyper-parameters of :class:`NodeTransformer` (checked on creation).

    Attributes:
        in_channels: width of the node features ``x``.
        num_classes: number of classes (width of the output logits).
        hidden: node state size (divisible by ``heads``).
        layers: number of :class:`~graphformer.nn.TransformerLayer` blocks (>= 0).
        heads: attention heads.
        dropout: dropout in the blocks, in ``[0, 1)``.
        patterns: the attention edge set is the union of these distinct names:
            ``"graph"`` (the graph's edges ``j -> i``), ``"k_hop"`` (pairs
            ``j != i`` joined by a path of 1..``k`` edges), ``"random"``
            (``random_keys`` keys per query, drawn uniformly from the graph)
            and ``"global"`` (a virtual node, node ``N`` of the edge set, with
            a learnable state, attending to every node and attended by every
            node: one hop between any two nodes of a sampled subgraph).
        k: the ``k`` of ``"k_hop"`` (>= 1).
        random_keys: keys per query of ``"random"`` (>= 1).
        undirected: symmetrise the graph's edges (add ``i -> j`` for every
            ``j -> i``) before building the sets, so information flows both ways.
        self_loops: add the set ``{i -> i}`` (every node attends to itself).
        seed: seed of the ``"random"`` set when :meth:`NodeTransformer.edge_set`
            gets no generator.
    """
    in_channels: int
    num_classes: int
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    dropout: float = 0.1
    patterns: Tuple[str, ...] = ("graph",)
    k: int = 2
    random_keys: int = 4
    undirected: bool = True
    self_loops: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.patterns, str):
            raise TypeError(f"'patterns' must be a tuple of names from {NODE_PATTERNS}, "
                            f"got the string {self.patterns!r}")
        self.patterns = tuple(self.patterns)
        for name, minimum in (("in_channels", 1), ("num_classes", 1), ("hidden", 1),
                              ("layers", 0), ("heads", 1), ("k", 1), ("random_keys", 1)):
            value = getattr(self, name)
            if not _is_int(value):
                raise TypeError(f"'{name}' must be an int, got {type(value).__name__} ({value!r})")
            if value < minimum:
                raise ValueError(f"'{name}' must be >= {minimum}, got {value}")
        if self.hidden % self.heads:
            raise ValueError(f"'hidden' ({self.hidden}) must be divisible by 'heads' ({self.heads})")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"'dropout' must be in [0, 1), got {self.dropout!r}")
        if not self.patterns:
            raise ValueError(f"'patterns' must name at least one of {NODE_PATTERNS}")
        for name in self.patterns:
            if name not in NODE_PATTERNS:
                raise ValueError(f"unknown pattern {name!r} in 'patterns' {self.patterns}; "
                                 f"choose from {NODE_PATTERNS}")
        if len(set(self.patterns)) != len(self.patterns):
            raise ValueError(f"'patterns' has a repeated name: {self.patterns}")
        for name in ("undirected", "self_loops"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"'{name}' must be a bool, got {getattr(self, name)!r}")
        if not _is_int(self.seed):
            raise TypeError(f"'seed' must be an int, got {type(self.seed).__name__}")

    @property
    def set_names(self) -> Tuple[str, ...]:
        """The edge sets in membership-column order: ``patterns``, then
        ``"self"`` when ``self_loops``."""
        return self.patterns + (("self",) if self.self_loops else ())

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["patterns"] = list(self.patterns)
        return d


class NodeTransformer(torch.nn.Module):
    r"""Node classification with attention over a union of edge sets.

    .. math::
        \mathbf{h}^0_i = \mathbf{W}_{in} \mathbf{x}_i + \mathbf{b}_{in}, \qquad
        \mathbf{e}_{ij} = \mathbf{W}_m \mathbf{m}_{ij} + \mathbf{b}_m

        \mathbf{h}^{l+1} = \mathrm{TransformerLayer}_l(\mathbf{h}^l, \mathcal{E},
            \mathbf{e}), \qquad
        \hat{\mathbf{y}}_i = \mathbf{W}_{out} \mathbf{h}^L_i + \mathbf{b}_{out}

    where :math:`\mathcal{E} = \bigcup_s \mathcal{E}_s` is the union of the
    configured sets (``config.set_names``) and
    :math:`\mathbf{m}_{ij} \in \{0, 1\}^S` says which sets contain
    :math:`j \to i`, so the attention can tell graph edges from long-range
    (k-hop, random) ones. Each block is a post-norm
    :class:`~graphformer.nn.TransformerLayer` whose queries, keys and values
    see :math:`\mathbf{e}_{ij}` (relational attention).

    The edge set depends on the graph only (and the seed of ``"random"``):
    build it once with :meth:`edge_set` and pass it to every :meth:`forward`.

    Shapes:
        - :meth:`edge_set`: ``edge_index`` :math:`(2, E_g)` ->
          ``(edge_index`` :math:`(2, E)`, ``membership`` :math:`(E, S)` bool).
        - :meth:`forward`: ``x`` :math:`(N, \text{in\_channels})`, ``edge_index``
          :math:`(2, E)`, ``membership`` :math:`(E, S)` -> logits
          :math:`(N, \text{num\_classes})`.
    """

    def __init__(self, config: NodeTransformerConfig) -> None:
        super().__init__()
        if not isinstance(config, NodeTransformerConfig):
            raise TypeError(f"'config' must be a NodeTransformerConfig, got {type(config).__name__}")
        self.config = config
        c = config
        self.num_sets = len(c.set_names)
        self.lin_in = torch.nn.Linear(c.in_channels, c.hidden)
        self.edge_encoder = torch.nn.Linear(self.num_sets, c.hidden)
        self.blocks = torch.nn.ModuleList([
            TransformerLayer(c.hidden, heads=c.heads, dropout=c.dropout, edge_dim=c.hidden)
            for _ in range(c.layers)
        ])
        self.lin_out = torch.nn.Linear(c.hidden, c.num_classes)
        #: the state of the ``"global"`` pattern's virtual node
        self.virtual = torch.nn.Parameter(torch.empty(c.hidden)) if "global" in c.patterns \
            else None
        self.reset_parameters()

    @property
    def extra_nodes(self) -> int:
        """Nodes the edge set has beyond the graph's: the virtual node of
        ``"global"`` (node ``N``)."""
        return int(self.virtual is not None)

    def reset_parameters(self) -> None:
        self.lin_in.reset_parameters()
        self.edge_encoder.reset_parameters()
        if self.virtual is not None:
            torch.nn.init.normal_(self.virtual, std=0.02)
        for block in self.blocks:
            block.reset_parameters()
        self.lin_out.reset_parameters()

    def edge_set(self, edge_index: Tensor, num_nodes: int,
                 generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
        """The attention edge set of one graph and each edge's membership.

        Args:
            edge_index (LongTensor [2, E_g]): the graph's edges ``j -> i``.
            num_nodes (int): number of nodes ``N`` (isolated nodes included).
            generator (torch.Generator, optional): a CPU generator for the
                ``"random"`` set; default: one seeded with ``config.seed``, so
                the set is the same on every call.

        Returns:
            ``(edge_index [2, E], membership [E, S] bool)`` as
            :func:`graphformer.patterns.union` of the sets ``config.set_names``,
            on the device of ``edge_index``; with ``"global"`` over ``N + 1``
            nodes, node ``N`` the virtual one (:meth:`forward` adds its state).
        """
        c = self.config
        if not _is_int(num_nodes) or num_nodes < 0:
            raise ValueError(f"'num_nodes' must be an int >= 0, got {num_nodes!r}")
        check_edge_index(edge_index)
        check_node_range(edge_index, num_nodes, num_nodes)
        edge_index = edge_index.long()
        device = edge_index.device
        if c.undirected:
            edge_index = torch.cat([edge_index, edge_index.flip(0)], dim=1)
        base = patterns.graph(edge_index, num_nodes=num_nodes)
        sets = []
        for name in c.set_names:
            if name == "graph":
                sets.append(base)
            elif name == "k_hop":
                sets.append(patterns.k_hop(base, c.k, num_nodes=num_nodes))
            elif name == "random":
                if generator is None:
                    generator = torch.Generator().manual_seed(c.seed)
                ptr = torch.tensor([0, num_nodes], device=generator.device)
                sets.append(patterns.random(ptr, c.random_keys, generator=generator).to(device))
            elif name == "global":   # the virtual node N, to and from every node
                nodes = torch.arange(num_nodes, device=device)
                virtual = torch.full_like(nodes, num_nodes)
                sets.append(torch.cat([torch.stack([nodes, virtual]),
                                       torch.stack([virtual, nodes])], dim=1))
            else:  # "self"
                sets.append(torch.arange(num_nodes + self.extra_nodes,
                                         device=device).expand(2, -1))
        return patterns.union(*sets, num_nodes=num_nodes + self.extra_nodes)

    def forward(self, x: Tensor, edge_index: Tensor, membership: Tensor,
                num_targets: Optional[int] = None) -> Tensor:
        """Logits ``[N, num_classes]`` (the edge set from :meth:`edge_set`),
        or of the first ``num_targets`` nodes only ``[num_targets,
        num_classes]``: then each block updates only the nodes that later
        blocks read — the targets at the last block, before it also every
        source of an edge into a node needed after it (read off the edge set
        itself, so exact for every pattern, directed or not), as PyG's
        ``trim_to_layer`` does for the seed nodes of a sampled batch: the same
        logits, for a fraction of the work.

        The edge features are the membership vectors' projections, one per
        distinct vector (at most 2^S): the edges are typed by their
        membership, and the attention takes the edge terms per type
        (:class:`~graphformer.nn.edge_terms.TypedEdgeTerms`), no per-edge
        projection."""
        c = self.config
        if not isinstance(x, Tensor) or x.dim() != 2 or x.size(1) != c.in_channels:
            shape = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"'x' must have shape [N, in_channels={c.in_channels}], got {shape}")
        check_edge_index(edge_index)
        N = x.size(0) + self.extra_nodes               # the virtual node is node x.size(0)
        check_node_range(edge_index, N, N)
        if (not isinstance(membership, Tensor) or membership.dim() != 2
                or membership.size(1) != self.num_sets):
            shape = list(membership.shape) if isinstance(membership, Tensor) else type(membership).__name__
            raise ValueError(f"'membership' must have shape [E, {self.num_sets}] (one column per "
                             f"set {c.set_names}), got {shape}")
        if membership.size(0) != edge_index.size(1):
            raise ValueError(f"'membership' has {membership.size(0)} rows but 'edge_index' has "
                             f"{edge_index.size(1)} edges")
        if num_targets is not None and not (_is_int(num_targets) and 0 <= num_targets <= x.size(0)):
            raise ValueError(f"'num_targets' must be an int in [0, N = {x.size(0)}], got "
                             f"{num_targets!r}")
        h = self.lin_in(x)
        if self.virtual is not None:
            h = torch.cat([h, self.virtual.to(h.dtype).unsqueeze(0)])
        S, dev = self.num_sets, x.device
        bits = torch.arange(S, device=dev)
        types = (membership.long() << bits).sum(1)                              # [E]
        vectors = ((torch.arange(2 ** S, device=dev).unsqueeze(1) >> bits) & 1).to(h.dtype)
        table = self.edge_encoder(vectors)                                      # [2^S, hidden]
        if num_targets is None:
            edges = EdgeSet(edge_index, N, edge_type=types, num_types=2 ** S)
            for block in self.blocks:
                h = block(h, edges, table).x
            return self.lin_out(h[:x.size(0)])
        src, dst = edge_index[0].long(), edge_index[1].long()
        needed = [torch.zeros(N, dtype=torch.bool, device=dev)]
        needed[0][:num_targets] = True                  # at the output; then going back
        for _ in self.blocks:
            more = needed[-1].clone()
            more[src[needed[-1][dst]]] = True
            needed.append(more)
        needed.reverse()                                # needed[l]: rows after block l
        # the nodes needed later first (nested sets: a prefix each), the targets in order
        depth = torch.stack(needed).sum(0)
        order = torch.sort(depth, descending=True, stable=True)[1]
        rank = torch.empty_like(order)
        rank[order] = torch.arange(N, device=dev)
        sizes = [int(m.sum()) for m in needed]
        h = h.index_select(0, order[:sizes[0]])
        src, dst = rank[src], rank[dst]
        for block, before, after in zip(self.blocks, sizes, sizes[1:]):
            keep = dst < after                          # their sources are all < before
            edges = EdgeSet(torch.stack([src[keep], dst[keep]]), (before, after),
                            edge_type=types[keep], num_types=2 ** S)
            h = block((h, h[:after]), edges, table).x
        return self.lin_out(h[:num_targets])

    def __repr__(self) -> str:
        c = self.config
        extra = []
        if "k_hop" in c.patterns:
            extra.append(f"k={c.k}")
        if "random" in c.patterns:
            extra.append(f"random_keys={c.random_keys}, seed={c.seed}")
        return (f"{self.__class__.__name__}({c.in_channels} -> {c.num_classes}, "
                f"hidden={c.hidden}, layers={c.layers}, heads={c.heads}, "
                f"dropout={c.dropout}, sets={list(c.set_names)}"
                + "".join(f", {t}" for t in extra)
                + f", undirected={c.undirected})")


class NodeClassifier(torch.nn.Module):
    r"""A :class:`NodeTransformer` on sampled subgraphs (PyG mini-batches from
    ``NodeLoader`` / ``NeighborLoader``): the attention edge set is built on
    each batch's subgraph, and the logits of its seed nodes (the first
    ``batch.batch_size``) are returned. Without node features every node of
    the graph has a learnable input vector (``embedding``, looked up by the
    batch's global ids ``batch.n_id``), as a one-hot identity input would.

    Args:
        config (NodeTransformerConfig): the model (``in_channels`` is the
            feature width, or the embedding width without features).
        num_nodes (int): nodes of the whole graph (for the embedding).
        features (bool): batches carry node features ``batch.x``.

    Shapes:
        a batch of :math:`N_b` sampled nodes of which :math:`B` seeds ->
        logits :math:`(B, \text{num\_classes})`.
    """

    def __init__(self, config: NodeTransformerConfig, num_nodes: int,
                 features: bool = True) -> None:
        super().__init__()
        self.config = config
        self.net = NodeTransformer(config)
        self.embedding = None if features else torch.nn.Embedding(num_nodes, config.in_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.net.reset_parameters()
        if self.embedding is not None:
            self.embedding.reset_parameters()

    def forward(self, batch: Any, generator: Optional[torch.Generator] = None) -> Tensor:
        """Logits of the seed nodes of ``batch`` (``generator``: the random
        keys' generator, CPU)."""
        x = batch.x if self.embedding is None else self.embedding(batch.n_id)
        if x is None:
            raise ValueError("the batch has no node features 'x' but the classifier was built "
                             "with features=True")
        num_nodes = int(x.size(0))
        edge_index, membership = self.net.edge_set(batch.edge_index, num_nodes, generator)
        seeds = int(getattr(batch, "batch_size", num_nodes))
        return self.net(x, edge_index.to(x.device), membership.to(x.device), num_targets=seeds)

    def __repr__(self) -> str:
        emb = "" if self.embedding is None else f", embedding={self.embedding.num_embeddings}"
        return f"{self.__class__.__name__}({self.net!r}{emb})"
