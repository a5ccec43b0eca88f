"""Link prediction on one graph, trained by mini-batches of sampled subgraphs
(``graphformer link train``).

Each step takes a batch of seed links, with ``negatives`` random links per
positive (:func:`training_negatives`: source and target uniform over all
nodes, not checked against the graph, as PyG's
``NegativeSampling('binary')``; a link's negatives are drawn from its id and
the epoch's seed alone, whatever batch or process takes it), samples a
subgraph around all their endpoints through PyG's
:class:`torch_geometric.loader.LinkLoader` with graphformer's sampler
(:func:`graphformer.data.sampling.neighbor_sampler`, PyG's when pyg-lib or
torch-sparse is installed), runs the :class:`~graphformer.models.NodeTransformer`
encoder on that subgraph and scores each link from its endpoints' states
(:class:`~graphformer.models.LinkPredictor`: a dot product, or an MLP of their
elementwise product), trained by binary cross-entropy.

The split (:func:`split_links`), PyG's ``RandomLinkSplit`` for a transductive
task, made safe for graphs that list a link in both directions: edges are
grouped by unordered node pair ``{u, v}`` (a pair listed as ``u v`` and
``v u``, or twice, is one link); the pairs are shuffled by ``split_seed`` and
the first ``floor(test_fraction · P)`` are the test links, the next
``floor(valid_fraction · P)`` the validation links, the rest the training
links (``P`` pairs; self-loops are never links to predict and always carry
messages). A link's direction is that of its pair's first edge in the file.
Every edge of a held-out pair leaves the message-passing graph of the parts
before it, as in ``RandomLinkSplit``:

====================  ===========================  ==========================
part                  supervision links            message-passing graph
====================  ===========================  ==========================
train                 train links (or, with        train edges (less the
                      ``disjoint_train_ratio``,    disjoint supervision
                      that share of them)          links' edges)
valid                 valid links                  all train edges
test                  test links                   train and valid edges
predict               the file's links             every edge
====================  ===========================  ==========================

The split needs O(E) memory (a sort of the pair keys) and each part's graph is
a CSC of its edges, built when needed: nothing is dense in the nodes.

Evaluation follows OGB's ogbl-citation2: each positive link ``(s, d)`` is
ranked against ``eval_negatives`` links ``(s, d')`` sharing its source, ``d'``
uniform over all nodes (PyG's ``NegativeSampling('triplet', amount=K)``;
unfiltered, as OGB's), its rank ``1 + #{neg > pos} + #{neg == pos} / 2``
(OGB's average of the optimistic and pessimistic ranks); the report is the
mean reciprocal rank (MRR) and Hits@1/10/50 (share of ranks <= K). The
negatives and the samples are seeded by the run's seed: the same numbers every
time. A random scorer's expected MRR is ``H(K + 1) / (K + 1)``.

A run directory is what ``graphformer node train`` writes (``config.json``,
``metrics.csv`` / ``metrics.json``, ``last.pt``, ``best.pt`` by validation MRR,
``summary.json``, ``learning_curve.png``); checkpoints are of kind
``"link-prediction"``; ``resume`` continues to exactly the uninterrupted run
(each epoch's order, negatives and samples are seeded by the seed and epoch).

Under ``torchrun`` (``graphformer link train`` joins the process group: gloo
on CPU, NCCL on CUDA) each of ``W`` processes takes its slice of every global
batch of ``W · batch_size`` training links (the epoch's shuffle is the same
in every process, :func:`~graphformer.train.node.rank_seeds`) with those
links' negatives, and DDP averages the gradients: a step is the step of one
process with the combined batch. The training loss and throughput are summed
over the processes; every process evaluates every part (the same seeded
numbers as one process); rank 0 alone writes the run directory.
"""
from __future__ import annotations

import csv
import json
import math
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import Data, EdgeAttr, GraphStore
from torch_geometric.data.graph_store import EdgeLayout
from torch_geometric.loader import LinkLoader
from torch_geometric.sampler import NegativeSampling

from .._files import atomic_write, write_text
from ..data.edge_list import read_edge_list
from ..data.edge_list.formats import INT
from ..data.graph_store import shared_tensor
from ..data.sampling import neighbor_sampler
from ..errors import ConfigError, DataError
from ..models.link_predictor import LinkPredictor, LinkPredictorConfig
from .checkpoint import CheckpointError, load_checkpoint, require_kind
from .plots import plot_learning_curve
from .run import RunFiles, seed_everything
from .node import (GraphSourceConfig, NodeTrainConfig, epoch_seed, process_group, progress_bar,
                   rank_seeds, share_weights, start_config, start_training,
                   sum_over_processes)
from .run_dir import RunDirectory

KIND = "link-prediction"
#: the Hits@K reported
HITS_AT = (1, 10, 50)
#: training links per block of negatives: each block of link ids draws its
#: negatives from a generator of its own (seeded by the epoch and the block)
NEGATIVE_BLOCK = 1 << 16
#: the split's parts, and the message-passing graph of each (edges of parts <= it)
PARTS = ("train", "valid", "test")
MESSAGE, SUPERVISION, VALID, TEST = 0, 1, 2, 3
GRAPH_OF = {"train": MESSAGE, "valid": SUPERVISION, "test": VALID, "predict": TEST}


@dataclass
class LinkDataConfig(GraphSourceConfig):
    """The graph (:class:`~graphformer.train.node.GraphSourceConfig`) and its
    link split.

    Attributes:
        valid_fraction, test_fraction: shares of the links (unordered node
            pairs) held out, PyG ``RandomLinkSplit``'s ``num_val`` /
            ``num_test`` (defaults 0.1 and 0.2 as there).
        disjoint_train_ratio: share of the training links that are only
            supervision, not messages (``RandomLinkSplit``'s; 0: every
            training link is both).
        split_seed: seeds the split.
    """
    valid_fraction: float = 0.1
    test_fraction: float = 0.2
    disjoint_train_ratio: float = 0.0
    split_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("valid_fraction", "test_fraction"):
            if not 0 < getattr(self, key) < 1:
                raise ConfigError("data", key, f"must be > 0 and < 1, got "
                                  f"{getattr(self, key)}")
        if self.valid_fraction + self.test_fraction >= 1:
            raise ConfigError("data", "valid_fraction", f"plus test_fraction must be < 1 (the "
                              f"rest are the training links), got {self.valid_fraction} + "
                              f"{self.test_fraction}")
        if not 0 <= self.disjoint_train_ratio < 1:
            raise ConfigError("data", "disjoint_train_ratio", f"must be >= 0 and < 1, got "
                              f"{self.disjoint_train_ratio}")


@dataclass
class LinkTrainConfig(NodeTrainConfig):
    """How to train: :class:`~graphformer.train.node.NodeTrainConfig`'s
    settings (``batch_size`` and ``eval_batch_size`` count seed links), and

    Attributes:
        negatives: random negative links per positive in training (binary).
        eval_negatives: negatives sharing each positive's source that it is
            ranked against in evaluation (ogbl-citation2 has 1000).
    """
    batch_size: int = 256
    eval_batch_size: int = 64
    negatives: int = 1
    eval_negatives: int = 100

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("negatives", "eval_negatives"):
            if getattr(self, key) < 1:
                raise ConfigError("train", key, f"must be >= 1, got {getattr(self, key)}")


@dataclass
class LinkRunConfig:
    """A link-prediction run: data, model and training. ``model``'s
    ``in_channels`` and ``num_classes`` (the state width) come from the data."""
    data: LinkDataConfig
    model: LinkPredictorConfig
    train: LinkTrainConfig = field(default_factory=LinkTrainConfig)

    def to_dict(self) -> Dict[str, Any]:
        return {"kind": KIND, "data": asdict(self.data), "model": self.model.to_dict(),
                "train": asdict(self.train)}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "LinkRunConfig":
        return cls(LinkDataConfig(**d["data"]), LinkPredictorConfig.from_dict(d["model"]),
                   LinkTrainConfig(**d["train"]))


# -- the graph and its split ------------------------------------------------------------------

@dataclass
class LinkGraph:
    """A graph with its edges in the order ``parts`` refers to (edge-id order
    in memory, CSC-slot order on disk) and its split."""
    num_nodes: int
    num_edges: int
    num_features: Optional[int]
    node_ids: Optional[Sequence[Any]]
    data: Optional[Data] = None             # in memory: x, edge_index
    disk: Any = None                        # an OnDiskGraph
    parts: Optional[Tensor] = None          # uint8 [E]: MESSAGE .. TEST per edge
    links: Dict[str, Tensor] = field(default_factory=dict)   # part -> long [2, L]
    _sampled: Dict[Tuple[str, Tuple[int, ...]], Tuple[Any, Any]] = field(
        default_factory=dict, repr=False, compare=False)

    def sampled(self, part: str, num_neighbors: Sequence[int]) -> Tuple[Any, Any]:
        """``(source, sampler)`` of ``part``'s message-passing graph, built
        once (filtering the edges, sorting them for the sampler) and shared by
        every epoch's loader."""
        key = (part, tuple(num_neighbors))
        if key not in self._sampled:
            source = self.source(part)
            self._sampled[key] = (source, neighbor_sampler(source, list(key[1])))
        return self._sampled[key]

    def source(self, part: str) -> Any:
        """What the loaders take for ``part``'s message-passing graph (a
        ``Data``, or a ``(FeatureStore, GraphStore)`` pair): the edges of the
        parts up to ``GRAPH_OF[part]``."""
        keep = None if GRAPH_OF[part] == TEST else self.parts <= GRAPH_OF[part]
        if self.data is not None:
            ei = self.data.edge_index if keep is None else self.data.edge_index[:, keep]
            return Data(x=self.data.x, edge_index=ei, num_nodes=self.num_nodes)
        if keep is None:
            return self.disk.data
        row = shared_tensor(self.disk.row_array)
        colptr = shared_tensor(self.disk.colptr_array).long()
        kept = torch.zeros(keep.numel() + 1, dtype=torch.long)
        torch.cumsum(keep, 0, out=kept[1:])
        return self.disk.feature_store, _CSCStore(row[keep], kept[colptr], self.num_nodes)


class _CSCStore(GraphStore):
    """An edge set held as CSC in memory, as a read-only PyG ``GraphStore``
    (the sampler reads it through :meth:`csc`)."""

    def __init__(self, row: Tensor, colptr: Tensor, num_nodes: int) -> None:
        super().__init__()
        self._row, self._colptr, self._n = row, colptr, num_nodes

    def get_all_edge_attrs(self) -> List[EdgeAttr]:
        return [EdgeAttr(None, EdgeLayout.CSC, is_sorted=True, size=(self._n, self._n))]

    def csc(self, edge_types=None, store: bool = False):
        return self._row, self._colptr, None

    def _get_edge_index(self, edge_attr: EdgeAttr) -> Optional[Tuple[Tensor, Tensor]]:
        return (self._row, self._colptr) if edge_attr.layout == EdgeLayout.CSC else None

    def _put_edge_index(self, edge_index, edge_attr: EdgeAttr) -> bool:
        raise NotImplementedError("a split's graph is read-only")

    def _remove_edge_index(self, edge_attr: EdgeAttr) -> bool:
        raise NotImplementedError("a split's graph is read-only")


def split_links(src: Tensor, dst: Tensor, eid: Tensor, num_nodes: int,
                cfg: LinkDataConfig) -> Tuple[Tensor, Dict[str, Tensor]]:
    """The split of the module docstring, for edges given in any order
    (``eid``: each edge's id, its place in the file), so that a graph in memory
    and on disk split alike.

    Returns ``(parts, links)``: ``parts`` (uint8, one per given edge:
    ``MESSAGE``, ``SUPERVISION``, ``VALID`` or ``TEST``; the message-passing
    graph of a part holds the edges of ``parts <= GRAPH_OF[part]``) and
    ``links`` (``"train"``, ``"valid"``, ``"test"``: long ``[2, L]``)."""
    src, dst, eid = src.long(), dst.long(), eid.long()
    parts = torch.zeros(src.numel(), dtype=torch.uint8)
    pair_edge = (src != dst).nonzero().view(-1)           # self-loops are no links
    lo = torch.minimum(src[pair_edge], dst[pair_edge])
    hi = torch.maximum(src[pair_edge], dst[pair_edge])
    keys, inverse = torch.unique(lo * num_nodes + hi, return_inverse=True)
    del lo, hi
    num_pairs = keys.numel()
    # each pair's first edge (lowest id) and whether it runs from hi to lo
    first = torch.full((num_pairs,), torch.iinfo(torch.long).max, dtype=torch.long)
    first.scatter_reduce_(0, inverse, eid[pair_edge] * 2 + (src[pair_edge] > dst[pair_edge]),
                          "amin")
    backwards = (first & 1).bool()
    lo, hi = keys // num_nodes, keys % num_nodes
    link = torch.stack([torch.where(backwards, hi, lo), torch.where(backwards, lo, hi)])
    del keys, first, backwards, lo, hi
    order = torch.randperm(num_pairs, generator=torch.Generator().manual_seed(cfg.split_seed))
    n_test = int(cfg.test_fraction * num_pairs)
    n_valid = int(cfg.valid_fraction * num_pairs)
    n_disjoint = int(cfg.disjoint_train_ratio * (num_pairs - n_test - n_valid))
    pair_part = torch.full((num_pairs,), MESSAGE, dtype=torch.uint8)
    test, valid = order[:n_test], order[n_test:n_test + n_valid]
    train = order[n_test + n_valid:]
    disjoint = train[:n_disjoint]
    pair_part[test], pair_part[valid], pair_part[disjoint] = TEST, VALID, SUPERVISION
    parts[pair_edge] = pair_part[inverse]
    links = {"train": link[:, disjoint if n_disjoint else train], "valid": link[:, valid],
             "test": link[:, test]}
    for part, index in links.items():
        if index.size(1) == 0:
            raise DataError(f"the {part} part of the link split is empty ({num_pairs} links, "
                            f"i.e. node pairs, in {src.numel()} edges; fractions "
                            f"valid {cfg.valid_fraction}, test {cfg.test_fraction}, disjoint "
                            f"{cfg.disjoint_train_ratio}); give more edges or change the "
                            f"fractions")
    return parts, links


def load_link_graph(cfg: LinkDataConfig) -> LinkGraph:
    """The graph of ``cfg`` (read into memory, or opened memory-mapped) and
    its split."""
    if cfg.graph is not None:
        from ..data.graph_store import load_graph

        disk = load_graph(cfg.graph)
        n = disk.num_nodes
        colptr = shared_tensor(disk.colptr_array).long()
        dst = torch.repeat_interleave(torch.arange(n), colptr.diff())
        parts, links = split_links(shared_tensor(disk.row_array), dst,
                                   shared_tensor(disk.perm_array), n, cfg)
        return LinkGraph(n, disk.num_edges, disk.num_features, disk.node_ids, disk=disk,
                         parts=parts, links=links)
    data = read_edge_list(cfg.edges, delimiter=cfg.delimiter, header=cfg.header,
                          comment=cfg.comment, node_features=cfg.node_features,
                          node_header=cfg.node_header)
    x = getattr(data, "x", None)
    n, ei = int(data.num_nodes), data.edge_index
    parts, links = split_links(ei[0], ei[1], torch.arange(ei.size(1)), n, cfg)
    return LinkGraph(n, int(ei.size(1)), None if x is None else int(x.size(1)),
                     getattr(data, "node_ids", None),
                     data=Data(x=x, edge_index=ei, num_nodes=n), parts=parts, links=links)


def link_loader(graph: LinkGraph, part: str, links: Tensor, cfg: LinkTrainConfig,
                batch_size: int, neg_sampling: Optional[NegativeSampling],
                labels: Optional[Tensor] = None) -> LinkLoader:
    """Batches of subgraphs of ``part``'s message-passing graph sampled around
    the endpoints of ``links`` (in order; ``labels``: theirs, as
    ``batch.edge_label``) and of the negatives of ``neg_sampling``; the
    samples and those negatives draw from torch's global generator (seed it to
    repeat them)."""
    source, sampler = graph.sampled(part, cfg.num_neighbors)
    if not isinstance(source, Data):
        links = (None, links)                         # PyG's form for a (store, store) pair
    return LinkLoader(source, link_sampler=sampler, edge_label_index=links,
                      edge_label=labels, neg_sampling=neg_sampling, batch_size=batch_size,
                      shuffle=False)


def training_negatives(link_ids: Tensor, num_nodes: int, amount: int, seed: int) -> Tensor:
    """The ``amount`` negatives of each training link of ``link_ids`` in the
    epoch of seed ``seed``: long ``[2, len(link_ids), amount]`` (source,
    target), each uniform over the ``num_nodes`` nodes.

    Link ``i``'s negatives depend on ``i`` and ``seed`` alone, not on the
    batch or the process that takes it: the link ids are cut into blocks of
    :data:`NEGATIVE_BLOCK`, and block ``b`` draws a table of negatives for all
    its ids from a generator seeded by ``seed`` and ``b``. Memory beyond the
    result is one block's table."""
    out = torch.empty(2, link_ids.numel(), amount, dtype=torch.long)
    blocks = link_ids // NEGATIVE_BLOCK
    order = torch.argsort(blocks)
    found, counts = torch.unique_consecutive(blocks[order], return_counts=True)
    start = 0
    for block, count in zip(found.tolist(), counts.tolist()):
        rows = order[start:start + count]
        start += count
        generator = torch.Generator().manual_seed((seed * 1_000_003 + block + 1) % 2**62)
        table = torch.randint(num_nodes, (2, NEGATIVE_BLOCK, amount), generator=generator)
        out[:, rows] = table[:, link_ids[rows] % NEGATIVE_BLOCK]
    return out


def training_loader(graph: LinkGraph, link_ids: Tensor, cfg: LinkTrainConfig,
                    seed: int) -> LinkLoader:
    """An epoch's training batches: the training links ``link_ids`` (in batch
    order), ``batch_size`` at a time, each batch with those links' negatives
    (:func:`training_negatives` of the epoch's ``seed``), labelled 1 and 0."""
    k = cfg.negatives
    positives = graph.links["train"][:, link_ids]
    negatives = training_negatives(link_ids, graph.num_nodes, k, seed)
    # each link followed by its negatives: a batch of batch_size · (1 + k) is
    # batch_size links and their negatives
    links = torch.cat([positives.unsqueeze(2), negatives], dim=2).view(2, -1)
    labels = torch.zeros(link_ids.numel(), 1 + k)
    labels[:, 0] = 1
    return link_loader(graph, "train", links, cfg, cfg.batch_size * (1 + k), None,
                       labels.view(-1))


# -- metrics ----------------------------------------------------------------------------------

def ranks(pos: Tensor, neg: Tensor) -> Tensor:
    """The rank of each positive score ``pos`` ``[B]`` among its negatives
    ``neg`` ``[B, K]``: ``1 + #{neg > pos} + #{neg == pos} / 2`` (OGB's mean of
    the optimistic and pessimistic ranks)."""
    pos = pos.view(-1, 1)
    return 1 + (neg > pos).sum(1).double() + (neg == pos).sum(1).double() / 2


def ranking_metrics(pos: Tensor, neg: Tensor, hits_at: Sequence[int] = HITS_AT
                    ) -> Dict[str, float]:
    """MRR and Hits@K of positives ``pos`` ``[B]`` each ranked against its
    negatives ``neg`` ``[B, K]`` (ogbl-citation2's protocol)."""
    r = ranks(pos, neg)
    if r.numel() == 0:
        return {"mrr": float("nan"), **{f"hits@{k}": float("nan") for k in hits_at}}
    return {"mrr": float((1 / r).mean()), **{f"hits@{k}": float((r <= k).double().mean())
                                              for k in hits_at}}


def random_mrr(negatives: int) -> float:
    """The expected MRR of a scorer that ranks at random among ``negatives``:
    ``H(K + 1) / (K + 1)``."""
    return sum(1 / i for i in range(1, negatives + 2)) / (negatives + 1)


# -- training ---------------------------------------------------------------------------------

def _model_config(cfg: LinkRunConfig, graph: LinkGraph) -> LinkPredictorConfig:
    width = graph.num_features if graph.num_features is not None else cfg.model.encoder.hidden
    return cfg.model.for_graph(width)


def _build(cfg: LinkRunConfig, graph: LinkGraph, device: torch.device) -> LinkPredictor:
    return LinkPredictor(cfg.model, graph.num_nodes,
                         features=graph.num_features is not None).to(device)


@torch.no_grad()
def evaluate_parts(model: LinkPredictor, graph: LinkGraph, cfg: LinkRunConfig,
                   device: torch.device, parts: Sequence[str] = ("valid", "test"),
                   progress: bool = False) -> Dict[str, float]:
    """MRR and Hits@K on each part (``"train"`` too), each positive ranked
    against ``eval_negatives`` negatives sharing its source; seeded by the
    run's seed (the same numbers every time; training's RNG is kept)."""
    model.eval()
    out: Dict[str, float] = {}
    for part in parts:
        total = {"mrr": 0.0, **{f"hits@{k}": 0.0 for k in HITS_AT}}
        count = 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.train.seed)
            generator = torch.Generator().manual_seed(cfg.train.seed)
            loader = link_loader(graph, part, graph.links[part], cfg.train,
                                 cfg.train.eval_batch_size,
                                 NegativeSampling("triplet", amount=cfg.train.eval_negatives))
            for batch in progress_bar(loader, part if progress else None):
                batch = batch.to(device)
                h = model(batch, generator=generator)
                pos, neg = model.score_triplets(h, batch.src_index, batch.dst_pos_index,
                                                batch.dst_neg_index)
                r = ranks(pos.float().cpu(), neg.float().cpu())
                total["mrr"] += float((1 / r).sum())
                for k in HITS_AT:
                    total[f"hits@{k}"] += float((r <= k).sum())
                count += r.numel()
        for key, value in total.items():
            out[f"{part}_{key}"] = value / count if count else float("nan")
    return out


def load_link_checkpoint(path: Union[str, Path]) -> Tuple[Dict[str, Any], LinkRunConfig]:
    """A checkpoint of ``graphformer link train``, checked (damaged ones are
    refused by :func:`load_checkpoint`), and its run config."""
    state = load_checkpoint(path)
    require_kind(state, path, KIND)
    try:
        return state, LinkRunConfig.from_dict(state["config"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path} holds an invalid link run config: {err}") from None


def _describe(graph: LinkGraph, cfg: LinkRunConfig, world: int) -> str:
    sizes = ", ".join(f"{p} {graph.links[p].size(1)}" for p in PARTS)
    return (f"graph: {graph.num_nodes} nodes, {graph.num_edges} edges; links {sizes}; "
            f"{cfg.train.negatives} negative(s) per training link, "
            f"{cfg.train.eval_negatives} per evaluated link; fan-outs "
            f"{cfg.train.num_neighbors}, batches of {cfg.train.batch_size} links"
            + (f" per process, {world} processes" if world > 1 else ""))


class _PairLogits(torch.nn.Module):
    """A training step's forward: the logits of a batch's labelled links (one
    module for DDP, which averages the gradients of what its forward used)."""

    def __init__(self, model: LinkPredictor) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Any, generator: Optional[torch.Generator] = None) -> Tensor:
        return self.model.score_pairs(self.model(batch, generator=generator),
                                      batch.edge_label_index)


def train_links(cfg: Optional[LinkRunConfig], run_dir: Union[str, Path], *,
                resume: bool = False, overwrite: bool = False, progress: bool = True,
                log: Callable[[str], None] = print,
                runtime: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Train (or, with ``resume``, continue) a link predictor in ``run_dir``
    and return its summary (best epoch, its validation and test MRR and
    Hits@K). ``runtime``: where a resumed run runs (``device``,
    ``threads``), which it may change. In a process group (``torchrun``)
    every process calls it: each trains on its share of every batch
    (``batch_size`` links per process), rank 0 writes and logs."""
    run_dir = Path(run_dir)
    rank, world = process_group()
    with RunDirectory(run_dir, resume, overwrite, writer=rank == 0) as directory:
        state, cfg, device = start_config(cfg, run_dir, resume, runtime, load_link_checkpoint)
        graph = load_link_graph(cfg.data)
        cfg = replace(cfg, model=_model_config(cfg, graph))
        seed_everything(cfg.train.seed)
        model = _build(cfg, graph, device)
        optimizer, history, best, start = start_training(model, cfg.train, state, "valid_mrr",
                                                         world=world, path=run_dir / "last.pt")
        directory.start()
        files = RunFiles(run_dir, rank == 0)
        files.config(cfg.to_dict())
        if rank > 0:
            log, progress = (lambda line: None), False      # rank 0 speaks for the run
        net: torch.nn.Module = _PairLogits(model)
        if world > 1:
            net = torch.nn.parallel.DistributedDataParallel(
                net, device_ids=[device.index] if device.type == "cuda" else None)
        log(_describe(graph, cfg, world))
        num_train = graph.links["train"].size(1)
        for epoch in range(start, cfg.train.epochs + 1):
            seed = epoch_seed(cfg.train.seed, epoch)
            torch.manual_seed(seed)
            model.train()
            generator = torch.Generator().manual_seed(seed)
            mine = rank_seeds(torch.arange(num_train), cfg.train.batch_size, seed, rank, world)
            loader = training_loader(graph, mine, cfg.train, seed)
            loss_sum, seen, started = 0.0, 0, time.perf_counter()
            bar = progress_bar(loader, f"epoch {epoch}" if progress else None)
            for batch, weight in zip(bar, share_weights(num_train, cfg.train.batch_size, rank,
                                                        world)):
                batch = batch.to(device)
                logits = net(batch, generator=generator)
                loss = F.binary_cross_entropy_with_logits(logits, batch.edge_label.float())
                optimizer.zero_grad()
                (loss * weight).backward()
                optimizer.step()
                loss_sum += float(loss.detach()) * logits.numel()
                seen += logits.numel()
                if progress and hasattr(bar, "set_postfix"):
                    bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
            seconds = time.perf_counter() - started
            loss_sum, seen, links = sum_over_processes([loss_sum, seen, mine.numel()], world,
                                                        device)
            row = {"epoch": epoch, "train_loss": loss_sum / max(seen, 1),
                   "links_per_s": links / seconds if seconds > 0 else math.nan}
            row.update(evaluate_parts(model, graph, cfg, device))
            history.append(row)
            improved = row["valid_mrr"] > best["valid_mrr"]
            if improved:
                best = {"epoch": epoch, **{k: v for k, v in row.items()
                                           if k.startswith(("valid_", "test_"))}}
            files.end_epoch(history, {
                "kind": KIND, "config": cfg.to_dict(), "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "epoch": epoch, "history": history,
                "best": best, "processes": world}, improved)
            log(f"epoch {epoch:3d}  loss {row['train_loss']:.4f}  valid MRR "
                f"{row['valid_mrr']:.4f}  hits@10 {row['valid_hits@10']:.4f}  test MRR "
                f"{row['test_mrr']:.4f}  ({row['links_per_s']:.0f} links/s)")
        files.close()
        summary = {"best_epoch": best["epoch"], "epochs": cfg.train.epochs,
                   "eval_negatives": cfg.train.eval_negatives,
                   "random_mrr": random_mrr(cfg.train.eval_negatives),
                   **{k: v for k, v in best.items() if k != "epoch"}}
        if rank == 0:
            write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
            plot_learning_curve(history, "mrr", run_dir / "learning_curve.png")
        log(f"best epoch {best['epoch']}: valid MRR {best['valid_mrr']:.4f}, test MRR "
            f"{best.get('test_mrr', math.nan):.4f} (random ranking: "
            f"{summary['random_mrr']:.4f})")
        return summary


# -- using a checkpoint -----------------------------------------------------------------------

def _restore(path: Union[str, Path], threads: int = 1
             ) -> Tuple[LinkRunConfig, LinkGraph, LinkPredictor]:
    state, cfg = load_link_checkpoint(path)
    if threads:
        torch.set_num_threads(threads)
    graph = load_link_graph(cfg.data)
    model = _build(cfg, graph, torch.device("cpu"))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: its weights do not fit its graph (was the graph "
                              f"changed?): {str(err).splitlines()[0]}") from None
    return cfg, graph, model.eval()


def evaluate_link_checkpoint(path: Union[str, Path], parts: Sequence[str] = ("valid", "test"),
                             threads: int = 1, progress: bool = False) -> Dict[str, float]:
    """MRR and Hits@K of a link checkpoint on the parts of its run's split
    (the numbers its run logged)."""
    cfg, graph, model = _restore(path, threads)
    return evaluate_parts(model, graph, cfg, torch.device("cpu"), parts, progress)


class NodeIndex:
    """Node numbers of the ids in the user's files (``node_ids`` as the
    readers give them: a long tensor, a list of int or str, or ``None``:
    ``0..N-1``)."""

    def __init__(self, node_ids: Optional[Sequence[Any]], num_nodes: int) -> None:
        self.node_ids, self.num_nodes = node_ids, num_nodes
        self._sorted = self._order = self._dict = None
        if isinstance(node_ids, Tensor):
            ids = node_ids.numpy()
            self._order = np.argsort(ids, kind="stable")
            self._sorted = ids[self._order]
        elif node_ids is not None:
            self._dict = {str(v): i for i, v in enumerate(node_ids)}
            #: text ids are compared as text; integer ids (beyond int64) by value
            self._text = any(isinstance(v, str) for v in node_ids)

    def find(self, token: str) -> Optional[int]:
        """The node of id ``token``, or ``None``: text ids by their exact
        text, integer ids by value, written as the edge-list format writes
        integers (ASCII digits, an optional sign: not ``1_0`` or other
        scripts' digits, which Python's ``int`` would take)."""
        if self._dict is not None:
            if token in self._dict:
                return self._dict[token]
            if not self._text and INT.fullmatch(token):   # an int written another way
                return self._dict.get(str(int(token)))
            return None
        if not INT.fullmatch(token):
            return None
        value = int(token)
        if self._sorted is None:
            return value if 0 <= value < self.num_nodes else None
        k = int(np.searchsorted(self._sorted, value))
        return int(self._order[k]) if k < self._sorted.size and self._sorted[k] == value \
            else None


def read_links(path: Union[str, Path], index: NodeIndex,
               comment: Optional[str] = "#") -> Tuple[Tensor, List[Tuple[str, str]]]:
    """The links listed in ``path`` (``source target`` per line, separated by
    a comma, a tab or spaces; blank and comment lines skipped) as node numbers
    ``[2, L]`` and the ids as written; an unknown id or a malformed line is a
    ``DataError`` naming the file and line."""
    src: List[int] = []
    dst: List[int] = []
    names: List[Tuple[str, str]] = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            text = line.strip()
            if not text or (comment and text.startswith(comment)):
                continue
            fields = [f.strip() for f in re.split(r"[,\t]" if re.search(r"[,\t]", text)
                                                  else r"\s+", text)]
            if len(fields) != 2 or not all(fields):
                raise DataError(f"{path}, line {number}: expected 'source target', got "
                                f"{text[:80]!r}")
            found = [index.find(f) for f in fields]
            for f, i in zip(fields, found):
                if i is None:
                    raise DataError(f"{path}, line {number}: unknown node id {f!r} (not in "
                                    f"the checkpoint's graph)")
            src.append(found[0])
            dst.append(found[1])
            names.append((fields[0], fields[1]))
    if not names:
        raise DataError(f"{path}: no links (expected 'source target' lines)")
    return torch.tensor([src, dst], dtype=torch.long), names


@torch.no_grad()
def predict_link_checkpoint(path: Union[str, Path], links: Union[str, Path],
                            output: Union[str, Path], threads: int = 1,
                            progress: bool = True) -> int:
    """Score the links listed in ``links`` (ids of the graph's files) and
    write ``output`` (CSV: ``source``, ``target``, ``score`` (the logit),
    ``probability``), batch by batch, on the graph of every edge; returns the
    number of links. Ids are all checked before anything is written."""
    cfg, graph, model = _restore(path, threads)
    index, names = read_links(links, NodeIndex(graph.node_ids, graph.num_nodes),
                              cfg.data.comment)
    torch.manual_seed(cfg.train.seed)                 # the samples repeat
    generator = torch.Generator().manual_seed(cfg.train.seed)
    loader = link_loader(graph, "predict", index, cfg.train, cfg.train.eval_batch_size,
                         None)
    count = 0
    with atomic_write(output, newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["source", "target", "score", "probability"])
        for batch in progress_bar(loader, "predict" if progress else None):
            h = model(batch, generator=generator)
            logits = model.score_pairs(h, batch.edge_label_index).float()
            for k, s, p in zip(batch.input_id.tolist(), logits.tolist(),
                               torch.sigmoid(logits).tolist()):
                writer.writerow([*names[k], f"{s:.6g}", f"{p:.6g}"])
            count += logits.numel()
    return count


__all__ = ["KIND", "HITS_AT", "LinkDataConfig", "LinkTrainConfig", "LinkRunConfig",
           "LinkGraph", "split_links", "load_link_graph", "link_loader", "training_negatives",
           "training_loader", "NEGATIVE_BLOCK", "ranks",
           "ranking_metrics", "random_mrr", "evaluate_parts", "train_links",
           "load_link_checkpoint", "evaluate_link_checkpoint", "NodeIndex", "read_links",
           "predict_link_checkpoint"]
