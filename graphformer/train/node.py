"""Node classification and regression on one graph, trained by mini-batches
of sampled subgraphs (``graphformer node train``).

Each step samples a subgraph around a batch of seed nodes through PyG's
loader interface (:class:`torch_geometric.loader.NodeLoader` with a
:class:`torch_geometric.sampler.BaseSampler`: PyG's ``NeighborSampler``
when pyg-lib or torch-sparse is installed, else graphformer's
:class:`~graphformer.data.sampling.NeighborSampler`), builds the model's
attention edge set on that subgraph (its graph edges, k-hop pairs within it,
random keys, self loops) and trains on the seeds' outputs. Memory per step is
bounded by the batch and the fan-outs, not by the graph; evaluation and
prediction run the same way over sampled batches (seeded, so they repeat).

The graph is an edge-list file read into memory
(:func:`graphformer.data.edge_list.read_edge_list`) or a graph converted once
to disk (:func:`graphformer.data.edge_list.convert_edge_list`), whose
memory-mapped CSC and features serve the sampler through PyG's
``GraphStore`` / ``FeatureStore`` interfaces.

A run directory is what ``graphformer train`` writes: ``config.json``,
``metrics.csv`` / ``metrics.json`` (a row per epoch), ``last.pt`` and
``best.pt`` (best validation accuracy, or RMSE for regression),
``summary.json`` and
``learning_curve.png``; it is locked while the run writes, and ``resume``
continues from ``last.pt`` to exactly the run an uninterrupted one gives (each
epoch's shuffling and sampling are seeded by the run's seed and the epoch).

Regression (``task="regression"``, numeric labels) trains on targets
standardised by the training part's mean and standard deviation (saved in
the checkpoint) with the mean squared error, and reports RMSE, MAE and R² in
the targets' units.
"""
from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.loader import NodeLoader

from .._files import atomic_write, write_text
from ..data.edge_list import read_edge_list
from ..data.sampling import neighbor_sampler
from ..datasets.splits import PARTS, stratified_split
from ..errors import ConfigError, DataError, UsageError
from ..models.node_transformer import NodeClassifier, NodeTransformerConfig
from .checkpoint import CheckpointError, check_processes, load_checkpoint, require_kind
from .config import coerce_fields
from .plots import plot_learning_curve
from .run import RunFiles, resolve_device, seed_everything
from .run_dir import RunDirectory, resume_config

KIND = "node-classification"
#: settings a resumed run may change: where it runs, not what it computes
RUNTIME_KEYS = {("train", "device"), ("train", "threads")}
#: set from the data, not by the user
DERIVED_KEYS = {("model", "in_channels"), ("model", "num_classes")}
#: node tasks, and the metric each selects the best epoch by (with whether
#: higher is better)
NODE_TASKS = {"classification": ("accuracy", True), "regression": ("rmse", False)}


@dataclass
class GraphSourceConfig:
    """Where one graph comes from (node and link tasks alike).

    Attributes:
        edges: an edge-list file (read into memory), or
        graph: a directory converted once by ``graphformer node convert`` /
            ``convert_edge_list`` (memory-mapped; for graphs larger than
            memory). Exactly one of the two.
        node_features: the node-feature file of ``edges`` (default: a
            learnable embedding per node; a converted graph holds its own).
        delimiter, header, node_header, comment: the files' format (see
            :func:`graphformer.data.edge_list.read_edge_list`).
    """
    edges: Optional[str] = None
    graph: Optional[str] = None
    node_features: Optional[str] = None
    delimiter: Optional[str] = None
    header: Optional[bool] = None
    node_header: Optional[bool] = None
    comment: str = "#"

    #: the fields that name files, made absolute by :meth:`with_absolute_paths`
    PATH_FIELDS: ClassVar[Tuple[str, ...]] = ("edges", "graph", "node_features")

    def __post_init__(self) -> None:
        coerce_fields(self, "data")
        if (self.edges is None) == (self.graph is None):
            raise ConfigError("data", "edges", "must be given (an edge-list file) unless "
                              "'data.graph' (a converted graph directory) is, and not both")
        if self.graph is not None and self.node_features:
            raise ConfigError("data", "node_features", "must not be given with a converted "
                              "graph, which holds its own node features")

    def with_absolute_paths(self):
        """The same data with its paths absolute (a run evaluates from anywhere)."""
        paths = {f: str(Path(getattr(self, f)).resolve()) for f in self.PATH_FIELDS
                 if getattr(self, f)}
        return replace(self, **paths)


@dataclass
class NodeDataConfig(GraphSourceConfig):
    """The graph (:class:`GraphSourceConfig`) and its split.

    Attributes:
        node_labels: the node-label file of ``edges`` (required; a converted
            graph holds its own labels).
        task: ``classification`` (class labels: integers or names) or
            ``regression`` (numeric labels; a converted graph must have been
            converted with ``label_type="value"``).
        train_fraction, valid_fraction: the split of the labelled nodes (the
            rest is the test part), seeded by ``split_seed``; stratified by
            class for classification, uniformly random for regression.
    """
    node_labels: Optional[str] = None
    task: str = "classification"
    train_fraction: float = 0.6
    valid_fraction: float = 0.2
    split_seed: int = 0

    PATH_FIELDS: ClassVar[Tuple[str, ...]] = GraphSourceConfig.PATH_FIELDS + ("node_labels",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.edges is not None and self.node_labels is None:
            raise ConfigError("data", "node_labels", "must be given with an edge list: node "
                              "classification needs a file of node_id, label lines")
        if self.graph is not None and self.node_labels:
            raise ConfigError("data", "node_labels", "must not be given with a converted "
                              "graph, which holds its own labels")
        if self.task not in NODE_TASKS:
            raise ConfigError("data", "task", f"must be 'classification' or 'regression', "
                              f"got {self.task!r}")
        if not 0 < self.train_fraction < 1 or not 0 <= self.valid_fraction < 1 \
                or self.train_fraction + self.valid_fraction >= 1:
            raise ConfigError("data", "train_fraction", f"must be > 0, with valid_fraction "
                              f">= 0 and their sum < 1 (the rest is the test part), got "
                              f"{self.train_fraction} and {self.valid_fraction}")


@dataclass
class NodeTrainConfig:
    """How to train.

    Attributes:
        epochs: passes over the training nodes.
        batch_size: seed nodes per step; ``eval_batch_size`` for evaluation.
        num_neighbors: sampled incoming edges per node at each hop (``-1``:
            all), PyG's ``NeighborLoader`` fan-outs.
        lr, weight_decay: AdamW.
        seed: seeds the initialisation, and with the epoch every epoch's
            shuffling and sampling.
        device: ``auto``, ``cpu`` or ``cuda``; threads: CPU threads (0:
            PyTorch's default).
    """
    epochs: int = 20
    batch_size: int = 512
    eval_batch_size: int = 2048
    num_neighbors: List[int] = field(default_factory=lambda: [10, 10])
    lr: float = 0.005
    weight_decay: float = 5e-4
    seed: int = 0
    device: str = "auto"
    threads: int = 0

    def __post_init__(self) -> None:
        coerce_fields(self, "train")
        for key in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError("train", key, f"must be >= 1, got {getattr(self, key)}")
        if not self.num_neighbors or any(k == 0 or k < -1 for k in self.num_neighbors):
            raise ConfigError("train", "num_neighbors", f"must hold one fan-out per hop, each "
                              f">= 1 or -1 (all), got {self.num_neighbors}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ConfigError("train", "lr", f"must be > 0 (and weight_decay >= 0), got "
                              f"{self.lr} and {self.weight_decay}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError("train", "device", f"must be auto, cpu or cuda, got {self.device!r}")
        if self.threads < 0:
            raise ConfigError("train", "threads", f"must be >= 0, got {self.threads}")


@dataclass
class NodeRunConfig:
    """A node classification or regression run: data, model and training.
    ``model``'s ``in_channels`` and ``num_classes`` (the outputs: 1 for
    regression) come from the data."""
    data: NodeDataConfig
    model: NodeTransformerConfig
    train: NodeTrainConfig = field(default_factory=NodeTrainConfig)

    def to_dict(self) -> Dict[str, Any]:
        return {"kind": KIND, "data": asdict(self.data), "model": self.model.to_dict(),
                "train": asdict(self.train)}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "NodeRunConfig":
        model = dict(d["model"])
        model["patterns"] = tuple(model["patterns"])
        return cls(NodeDataConfig(**d["data"]), NodeTransformerConfig(**model),
                   NodeTrainConfig(**d["train"]))


# -- the graph --------------------------------------------------------------------------------

@dataclass
class NodeGraph:
    """A graph as the loaders take it (``source``: a ``Data`` or a
    ``(FeatureStore, GraphStore)`` pair), its labels and what predictions
    need to name nodes and classes. ``y``: long class labels, or float
    values for ``task="regression"``."""
    source: Union[Data, Tuple[Any, Any]]
    num_nodes: int
    num_edges: int
    y: Tensor
    num_features: Optional[int]
    label_names: Optional[List[str]]
    node_ids: Optional[Sequence[Any]]
    task: str = "classification"
    _samplers: Dict[Tuple[int, ...], Any] = field(default_factory=dict, repr=False,
                                                  compare=False)

    @property
    def num_classes(self) -> int:
        """The model's outputs: the classes, or 1 for regression."""
        if self.task == "regression":
            return 1
        return len(self.label_names) if self.label_names else int(self.y.max()) + 1

    def split(self, cfg: NodeDataConfig) -> Dict[str, Tensor]:
        """The run's train / valid / test nodes: stratified by class, or
        (regression) uniformly at random; seeded by ``cfg.split_seed``."""
        strata = self.y if self.task == "classification" else \
            torch.zeros(self.num_nodes, dtype=torch.long)
        return stratified_split(strata, cfg.train_fraction, cfg.valid_fraction, cfg.split_seed)

    def sampler(self, num_neighbors: Sequence[int]) -> Any:
        """The neighbour sampler of these fan-outs, built once (for an
        in-memory graph it sorts the edges by target) and shared by every
        epoch's and part's loader."""
        key = tuple(num_neighbors)
        if key not in self._samplers:
            self._samplers[key] = neighbor_sampler(self.source, list(key))
        return self._samplers[key]


def check_class_labels(y: Tensor, task: str, source: object, node_ids: object) -> None:
    """Integer class labels must be >= 0 (a negative one would leave its node
    out of every part of the split): a :class:`DataError` naming ``source``
    and the first such node."""
    if task != "regression" and y.numel() and int(y.min()) < 0:
        bad = int((y < 0).nonzero()[0])
        raise DataError(f"{source}: integer labels must be >= 0, node "
                        f"{node_name(node_ids, bad)} has {int(y[bad])}")


def load_node_graph(cfg: NodeDataConfig) -> NodeGraph:
    """The graph of ``cfg``: read into memory, or opened memory-mapped."""
    if cfg.graph is not None:
        from ..data.graph_store import load_graph

        graph = load_graph(cfg.graph)
        if graph.y_array is None:
            raise DataError(f"{cfg.graph}: the converted graph has no node labels (convert it "
                            f"with node_labels=...)")
        wanted = "value" if cfg.task == "regression" else "class"
        if graph.label_type != wanted:
            raise DataError(
                f"{cfg.graph}: the converted graph's labels are "
                + ("numbers (converted with --label-type value): train with --task regression"
                   if graph.label_type == "value" else
                   "classes: regression needs numeric labels (convert the edge list again "
                   "with --label-type value)"))
        y = torch.from_numpy(np.array(graph.y_array))       # N labels: read once, O(N)
        check_class_labels(y, cfg.task, cfg.graph, graph.node_ids)
        return NodeGraph(graph.data, graph.num_nodes, graph.num_edges, y, graph.num_features,
                         graph.label_names, graph.node_ids, task=cfg.task)
    regression = cfg.task == "regression"
    data = read_edge_list(cfg.edges, delimiter=cfg.delimiter, header=cfg.header,
                          comment=cfg.comment, node_features=cfg.node_features,
                          node_labels=cfg.node_labels, node_header=cfg.node_header,
                          label_type="value" if regression else "class")
    y = data.y
    check_class_labels(y, cfg.task, cfg.node_labels, getattr(data, "node_ids", None))
    x = getattr(data, "x", None)
    source = Data(x=x, y=y, edge_index=data.edge_index, num_nodes=data.num_nodes)
    return NodeGraph(source, int(data.num_nodes), int(data.edge_index.size(1)), y,
                     None if x is None else int(x.size(1)), getattr(data, "label_names", None),
                     getattr(data, "node_ids", None), task=cfg.task)


def node_name(node_ids: Optional[Sequence[Any]], i: int) -> str:
    """The id node ``i`` has in the user's files."""
    if node_ids is None:
        return str(i)
    name = node_ids[i]
    return str(name.item() if isinstance(name, Tensor) else name)


def node_loader(graph: NodeGraph, nodes: Tensor, cfg: NodeTrainConfig, batch_size: int,
                shuffle: bool, seed: int) -> NodeLoader:
    """Batches of subgraphs sampled around ``nodes`` (seeded by ``seed``:
    the order and the samples repeat)."""
    return NodeLoader(graph.source, node_sampler=graph.sampler(cfg.num_neighbors),
                      input_nodes=nodes,
                      batch_size=batch_size, shuffle=shuffle,
                      generator=torch.Generator().manual_seed(seed))


# -- training ---------------------------------------------------------------------------------

def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of an epoch's order, samples and dropout (resume repeats it)."""
    return (seed * 1_000_003 + epoch) % 2**62


def _model_config(cfg: NodeRunConfig, graph: NodeGraph) -> NodeTransformerConfig:
    width = graph.num_features if graph.num_features is not None else cfg.model.hidden
    return replace(cfg.model, in_channels=width, num_classes=graph.num_classes)


def _run_batches(model: NodeClassifier, loader: NodeLoader, device: torch.device,
                 seed: int, step: Optional[Callable[[Tensor, Tensor], None]] = None,
                 progress: Optional[str] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """The seeds' logits, labels and ids over ``loader`` (``step(logits, y)``
    after each batch, e.g. a training step)."""
    generator = torch.Generator().manual_seed(seed)
    logits, labels, ids = [], [], []
    bar = progress_bar(loader, progress)
    seen, started = 0, time.perf_counter()
    for batch in bar:
        batch = batch.to(device)
        out = model(batch, generator=generator)
        y = batch.y[:batch.batch_size]
        if step is not None:
            step(out, y)
        logits.append(out.detach().float().cpu())
        labels.append(y.cpu())
        ids.append(batch.n_id[:batch.batch_size].cpu())
        seen += batch.batch_size
        if progress is not None and hasattr(bar, "set_postfix"):
            bar.set_postfix(seeds_per_s=f"{seen / (time.perf_counter() - started):.0f}")
    if not logits:
        classes = getattr(model, "module", model).config.num_classes   # DDP wraps the model
        return torch.zeros(0, classes), torch.zeros(0, dtype=torch.long), \
            torch.zeros(0, dtype=torch.long)
    return torch.cat(logits), torch.cat(labels), torch.cat(ids)


def progress_bar(iterable, desc: Optional[str]):
    """``iterable`` with a progress bar named ``desc`` (none for None)."""
    if desc is None:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False, unit="batch")


def accuracy(logits: Tensor, y: Tensor) -> float:
    return float((logits.argmax(-1) == y).float().mean()) if y.numel() else float("nan")


@dataclass(frozen=True)
class TargetScale:
    """Regression targets standardised for training: the model predicts
    ``(y - mean) / std``; ``mean`` and ``std`` are the training part's
    (``std`` 1 when the targets are constant)."""
    mean: float = 0.0
    std: float = 1.0

    @classmethod
    def fit(cls, y: Tensor) -> "TargetScale":
        y = y.double()
        std = float(y.std(unbiased=False)) if y.numel() > 1 else 0.0
        return cls(float(y.mean()), std if std > 0 else 1.0)

    @classmethod
    def of_checkpoint(cls, state: Dict[str, Any]) -> "TargetScale":
        """The scale a node checkpoint saved (the identity for classification)."""
        saved = state.get("target_scale")
        return cls(**saved) if saved else cls()

    def normalise(self, y: Tensor) -> Tensor:
        return (y - self.mean) / self.std

    def values(self, out: Tensor) -> Tensor:
        """The model's outputs ``[B, 1]`` in the targets' units ``[B]``."""
        return out[:, 0] * self.std + self.mean


def node_scores(out: Tensor, y: Tensor, task: str, scale: TargetScale) -> Dict[str, float]:
    """Accuracy (classification), or RMSE, MAE and R² in the targets' units
    (regression; R² against the part's own mean), of the outputs ``out``."""
    if task == "classification":
        return {"accuracy": accuracy(out, y)}
    if not y.numel():
        return {"rmse": float("nan"), "mae": float("nan"), "r2": float("nan")}
    error = scale.values(out.double()) - y.double()
    spread = float(((y.double() - y.double().mean()) ** 2).sum())
    return {"rmse": float(error.pow(2).mean().sqrt()), "mae": float(error.abs().mean()),
            "r2": 1 - float(error.pow(2).sum()) / spread if spread > 0 else float("nan")}


@torch.no_grad()
def evaluate_parts(model: NodeClassifier, graph: NodeGraph, split: Dict[str, Tensor],
                   cfg: NodeRunConfig, device: torch.device, parts: Sequence[str] = ("valid",
                                                                                     "test"),
                   progress: bool = False, scale: TargetScale = TargetScale()
                   ) -> Dict[str, float]:
    """The scores of :func:`node_scores` on each part (``<part>_<score>``),
    by sampled batches (seeded by the run's seed: the same numbers every
    time)."""
    model.eval()
    out = {}
    for part in parts:
        with torch.random.fork_rng(devices=[]):      # the samples repeat, training's RNG is kept
            torch.manual_seed(cfg.train.seed)
            loader = node_loader(graph, split[part], cfg.train, cfg.train.eval_batch_size,
                                 False, cfg.train.seed)
            logits, y, _ = _run_batches(model, loader, device, cfg.train.seed,
                                        progress=f"{part}" if progress else None)
        for key, value in node_scores(logits, y, graph.task, scale).items():
            out[f"{part}_{key}"] = value
    return out


def check_resume(saved: Any, given: Optional[Any]) -> Any:
    """The config of a resumed run (a node or a link run config): the saved
    one; a ``given`` one may change only where it runs (``train.device``,
    ``train.threads``), any other difference is refused by name."""
    if given is None:
        return saved
    given = replace(given, data=given.data.with_absolute_paths())
    return resume_config(saved, given, RUNTIME_KEYS, DERIVED_KEYS)


def start_config(cfg: Optional[Any], run_dir: Path, resume: bool,
                 runtime: Optional[Dict[str, Any]],
                 load: Callable[[Path], Tuple[Dict[str, Any], Any]]
                 ) -> Tuple[Optional[Dict[str, Any]], Any, torch.device]:
    """``(state, config, device)`` a run starts with: for ``resume`` the
    state of ``run_dir/last.pt`` (read by ``load``) and its saved config
    (``cfg`` may change only ``runtime``'s device and threads); else ``cfg``
    with absolute paths. Sets the CPU threads."""
    state = None
    if resume:
        state, saved = load(run_dir / "last.pt")
        cfg = check_resume(saved, cfg)
        if runtime:
            cfg = replace(cfg, train=replace(cfg.train, **runtime))
    elif cfg is None:
        raise UsageError("a new run needs its config")
    else:
        cfg = replace(cfg, data=cfg.data.with_absolute_paths())
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    return state, cfg, resolve_device(cfg.train.device)


def start_training(model: torch.nn.Module, train: NodeTrainConfig,
                   state: Optional[Dict[str, Any]], best_key: str,
                   higher_is_better: bool = True, world: int = 1,
                   path: Union[str, Path] = "last.pt"
                   ) -> Tuple[torch.optim.Optimizer, List[Dict[str, float]], Dict[str, Any], int]:
    """``(optimizer, history, best, first epoch)`` of a run: AdamW, and for a
    resumed run (``state``, of ``world`` processes: another count is refused)
    the weights, optimiser state and history it saved; ``best[best_key]`` is
    the score to beat."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr,
                                  weight_decay=train.weight_decay)
    if state is None:
        return optimizer, [], {"epoch": 0, best_key: -1.0 if higher_is_better
                               else float("inf")}, 1
    check_processes(state, world, path)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return optimizer, state["history"], state["best"], state["epoch"] + 1


def load_node_checkpoint(path: Union[str, Path]) -> Tuple[Dict[str, Any], NodeRunConfig]:
    """A checkpoint of ``graphformer node train``, checked (damaged ones are
    refused by :func:`load_checkpoint`), and its run config."""
    state = load_checkpoint(path)
    require_kind(state, path, KIND)
    try:
        return state, NodeRunConfig.from_dict(state["config"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path} holds an invalid node run config: {err}") from None


def _build(cfg: NodeRunConfig, graph: NodeGraph, device: torch.device) -> NodeClassifier:
    return NodeClassifier(_model_config(cfg, graph), graph.num_nodes,
                          features=graph.num_features is not None).to(device)


def train_nodes(cfg: Optional[NodeRunConfig], run_dir: Union[str, Path], *,
                resume: bool = False, overwrite: bool = False,
                progress: bool = True, log: Callable[[str], None] = print,
                runtime: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Train (or, with ``resume``, continue) a node model in ``run_dir`` and
    return its summary (best epoch, validation and test accuracy, or RMSE
    for regression).
    ``runtime``: where a resumed run runs (``device``, ``threads``), which
    it may change."""
    run_dir = Path(run_dir)
    rank, world = process_group()
    with RunDirectory(run_dir, resume, overwrite, writer=rank == 0) as directory:
        state, cfg, device = start_config(cfg, run_dir, resume, runtime, load_node_checkpoint)
        graph = load_node_graph(cfg.data)
        cfg = replace(cfg, model=_model_config(cfg, graph))
        split = graph.split(cfg.data)
        for part in PARTS:
            if split[part].numel() == 0:
                raise DataError(f"the {part} part of the split is empty ({graph.num_nodes} "
                                f"nodes, fractions {cfg.data.train_fraction} / "
                                f"{cfg.data.valid_fraction}); label more nodes or change "
                                f"the fractions")
        metric, higher = NODE_TASKS[graph.task]
        best_key = f"valid_{metric}"
        scale = TargetScale.of_checkpoint(state) if state is not None \
            else TargetScale.fit(graph.y[split["train"]]) if graph.task == "regression" \
            else TargetScale()
        seed_everything(cfg.train.seed)
        model = _build(cfg, graph, device)
        optimizer, history, best, start = start_training(model, cfg.train, state, best_key,
                                                         higher, world, run_dir / "last.pt")
        directory.start()
        files = RunFiles(run_dir, rank == 0)
        files.config(cfg.to_dict())
        if rank > 0:
            log = _quiet
        net = model if world == 1 else torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
        log(f"graph: {graph.num_nodes} nodes, {graph.num_edges} edges, "
            + (f"{graph.num_classes} classes" if graph.task == "classification" else
               f"regression targets (train mean {scale.mean:.4g}, std {scale.std:.4g})")
            + f"; split {', '.join(f'{p} {split[p].numel()}' for p in PARTS)}; "
            f"fan-outs {cfg.train.num_neighbors}, batches of {cfg.train.batch_size}"
            + (f" per process, {world} processes" if world > 1 else ""))
        for epoch in range(start, cfg.train.epochs + 1):
            seed = epoch_seed(cfg.train.seed, epoch)
            torch.manual_seed(seed)
            model.train()
            losses: List[float] = []

            weights = iter(share_weights(split["train"].numel(), cfg.train.batch_size, rank,
                                         world))

            def step(logits: Tensor, y: Tensor) -> None:
                optimizer.zero_grad()
                if graph.task == "regression":
                    loss = F.mse_loss(logits[:, 0], scale.normalise(y).to(logits.dtype))
                else:
                    loss = F.cross_entropy(logits, y)
                (loss * next(weights)).backward()
                optimizer.step()
                losses.append(float(loss.detach()) * y.numel())

            started = time.perf_counter()
            seeds = rank_seeds(split["train"], cfg.train.batch_size, seed, rank, world)
            loader = node_loader(graph, seeds, cfg.train, cfg.train.batch_size, False, seed)
            logits, y, _ = _run_batches(net, loader, device, seed, step,
                                        f"epoch {epoch}" if progress and rank == 0 else None)
            seconds = time.perf_counter() - started
            if graph.task == "regression":     # sum of squared errors, in target units
                fit = float((scale.values(logits.double()) - y.double()).pow(2).sum())
            else:                                # correct predictions
                fit = float((logits.argmax(-1) == y).sum())
            totals = sum_over_processes([sum(losses), fit, float(y.numel())], world, device)
            count = max(totals[2], 1)
            row = {"epoch": epoch, "train_loss": totals[0] / count,
                   f"train_{metric}": (totals[1] / count) ** 0.5 if graph.task == "regression"
                   else totals[1] / count,
                   "seeds_per_s": totals[2] / seconds if seconds > 0 else float("nan")}
            row.update(evaluate_parts(model, graph, split, cfg, device, scale=scale))
            history.append(row)
            score = row[best_key]
            improved = score > best[best_key] if higher else score < best[best_key]
            if improved:
                best = {"epoch": epoch, best_key: score, f"test_{metric}": row[f"test_{metric}"]}
            files.end_epoch(history, {
                "kind": KIND, "config": cfg.to_dict(), "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "epoch": epoch, "history": history,
                "processes": world,
                "best": best, "label_names": graph.label_names,
                "target_scale": asdict(scale) if graph.task == "regression" else None},
                improved)
            log(f"epoch {epoch:3d}  loss {row['train_loss']:.4f}  train {metric} "
                f"{row[f'train_{metric}']:.4f}  valid {row[best_key]:.4f}  "
                f"test {row[f'test_{metric}']:.4f}  ({row['seeds_per_s']:.0f} seeds/s)")
        files.close()
        summary = {"best_epoch": best["epoch"], best_key: best[best_key],
                   f"test_{metric}": best.get(f"test_{metric}"), "epochs": cfg.train.epochs}
        if rank == 0:
            write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
            plot_learning_curve(history, metric, run_dir / "learning_curve.png")
        log(f"best epoch {best['epoch']}: valid {metric} {best[best_key]:.4f}, "
            f"test {metric} {best.get(f'test_{metric}', float('nan')):.4f}")
        return summary


def _quiet(line: str) -> None:
    """The log of ranks other than 0 (rank 0 speaks for the run)."""


def process_group() -> Tuple[int, int]:
    """``(rank, world size)``: of the process group ``torchrun`` started, or
    ``(0, 1)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def sum_over_processes(values: List[float], world: int, device: torch.device) -> List[float]:
    """``values`` summed over the ``world`` processes (reduced on ``device``:
    NCCL reduces CUDA tensors only)."""
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def rank_seeds(nodes: Tensor, batch_size: int, seed: int, rank: int = 0,
               world: int = 1) -> Tensor:
    """This process's training seeds of an epoch, in batch order: the nodes
    shuffled by ``seed`` (the same order in every process) and cut into
    global batches of ``batch_size · world``; process ``r`` takes the ``r``-th
    slice of ``batch_size`` of each (of the last, shorter one an equal
    share; a remainder smaller than ``world`` is dropped so that every
    process takes the same number of steps). With ``world`` processes of
    batch ``B`` each step is, together, the step of one process with batch
    ``world · B``: DDP averages the slices' gradients, each slice's loss
    weighted by :func:`share_weights` (the last slices are uneven)."""

    order = nodes[torch.randperm(nodes.numel(), generator=torch.Generator().manual_seed(seed))]
    if world == 1:
        return order
    size = batch_size * world
    full = order.numel() // size * size
    mine = order[:full].view(-1, world, batch_size)[:, rank].reshape(-1)
    rest = order[full:]
    if rest.numel() >= world:
        mine = torch.cat([mine, rest.tensor_split(world)[rank]])
    return mine


def share_weights(num: int, batch_size: int, rank: int = 0, world: int = 1) -> List[float]:
    """The factor of each of this process's steps' mean loss (seeds of
    :func:`rank_seeds`), so that DDP's mean of the processes' gradients is
    the gradient of the mean over the global batch: 1 for a full global
    batch, ``world · n_r / n`` for the last, shorter one (its ``n`` seeds in
    slices of ``n_r``, which differ by one between processes)."""
    size = batch_size * world
    steps = [1.0] * (num // size)
    rest = num % size
    if world > 1 and rest >= world:
        steps.append(world * (rest // world + (rank < rest % world)) / rest)
    elif world == 1 and rest:
        steps.append(1.0)
    return steps


def _restore(path: Union[str, Path], threads: int = 1
             ) -> Tuple[TargetScale, NodeRunConfig, NodeGraph, NodeClassifier]:
    state, cfg = load_node_checkpoint(path)
    if threads:
        torch.set_num_threads(threads)
    graph = load_node_graph(cfg.data)
    model = _build(cfg, graph, torch.device("cpu"))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: its weights do not fit its graph (was the graph "
                              f"changed?): {str(err).splitlines()[0]}") from None
    scale = TargetScale.of_checkpoint(state)
    return scale, cfg, graph, model.eval()


def evaluate_node_checkpoint(path: Union[str, Path], parts: Sequence[str] = ("valid", "test"),
                             threads: int = 1) -> Dict[str, float]:
    """The scores (accuracy; RMSE, MAE and R² for regression) of a node
    checkpoint on the parts of its run's split."""
    scale, cfg, graph, model = _restore(path, threads)
    return evaluate_parts(model, graph, graph.split(cfg.data), cfg, torch.device("cpu"), parts,
                          scale=scale)


@torch.no_grad()
def predict_node_checkpoint(path: Union[str, Path], output: Union[str, Path],
                            threads: int = 1, progress: bool = True) -> int:
    """Write the class probabilities of every node to ``output`` (CSV:
    ``node``, ``predicted``, then ``p_<class>`` per class; for regression
    ``node``, ``predicted`` in the targets' units), batch by batch; returns
    the number of nodes."""
    scale, cfg, graph, model = _restore(path, threads)
    names = graph.label_names or [str(c) for c in range(graph.num_classes)]
    torch.manual_seed(cfg.train.seed)                # the samples repeat
    loader = node_loader(graph, torch.arange(graph.num_nodes), cfg.train,
                         cfg.train.eval_batch_size, False, cfg.train.seed)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    count = 0
    with atomic_write(output, newline="") as fh:
        writer = csv.writer(fh)
        regression = graph.task == "regression"
        writer.writerow(["node", "predicted", *([] if regression else
                                                (f"p_{n}" for n in names))])
        for batch in progress_bar(loader, "predict" if progress else None):
            out = model(batch, generator=generator)
            ids = batch.n_id[:batch.batch_size].tolist()
            if regression:
                for i, v in zip(ids, scale.values(out.double()).tolist()):
                    writer.writerow([node_name(graph.node_ids, i), repr(v)])
                count += len(ids)
                continue
            probs = torch.softmax(out.float(), dim=-1)
            for i, p in zip(ids, probs.tolist()):
                writer.writerow([node_name(graph.node_ids, i),
                                 names[max(range(len(p)), key=p.__getitem__)],
                                 *(f"{v:.6g}" for v in p)])
            count += len(ids)
    return count


__all__ = ["NodeDataConfig", "NodeTrainConfig", "NodeRunConfig", "NodeGraph", "load_node_graph",
           "node_loader", "train_nodes", "evaluate_node_checkpoint", "predict_node_checkpoint",
           "load_node_checkpoint", "KIND"]
