"""Attention backends of graphformer against their peers, on the same inputs,
in one process: median times, peak memory, ratios, and the cost model's
estimates beside the measurements.

    python scripts/bench_attention.py                        # every case, all cores
    python scripts/bench_attention.py --cases tokens long --threads 1
    python scripts/bench_attention.py --quick --json out.json  # small sizes, < 30 s
    python scripts/bench_attention.py --device cuda          # adds fused and FlexAttention

Every layer is fp32 with 8 heads x 32 channels, 256 input and output channels,
64 edge features where edge features apply. ``fwd`` is a training forward
(``x`` and ``edge_attr`` require grad, as activations inside a model do, and so
do the parameters); ``fwd+bwd`` adds ``out.backward(grad)`` with a fixed random
``grad``. Edge sets, masks and block masks are built once, outside the timed
region. Each time is the median (and min) over ``--repeats`` runs after warm-up;
the methods of a case are timed in interleaved rounds (every method once per
round), so that a drift in the machine's speed slows them alike.

Cases (full sizes; ``--quick`` scales them down):

- ``molecules``: 128 graphs x 25 atoms, 2.2 directed bonds per atom (random
  symmetric bonds: a random spanning tree per graph plus random extra bonds,
  no self loops, no duplicates), 64 edge features; peer PyG ``TransformerConv``
  (defaults: concat, root weight / skip on, no beta). Secondary row: the edge
  set "bonds + all pairs" (``patterns.union(bonds, patterns.full(ptr))``)
  without edge features against dense masked SDPA.
- ``medium``: one graph of 10,000 nodes and 200,000 random coalesced edges,
  with 64 edge features and without, against ``TransformerConv`` (the size
  whose ratio once moved unseen between sessions); and the edges with
  features again in PyG's coalesced order (by source, where graphformer's
  order is by target), as a PyG data set gives them;
- ``large``: the same with 50,000 nodes and 1,000,000 edges.
- ``tokens``: 32 sequences of 128 tokens, full and causal attention, no edge
  features, ``batch`` given; peer dense masked SDPA.
- ``long``: one sequence of 8,192 tokens, a causal sliding window of 64 keys
  per query (itself and the 63 previous tokens: ``patterns.window(T, 63)``),
  and a variant where heads 0-3 see that window and heads 4-7 the strided
  pattern ``patterns.strided(T, 64)`` (``head_mask`` over the union of both);
  peer dense masked SDPA with the equivalent [1, H, T, T] mask. Then a sweep
  of window sizes: sparse graphformer against dense masked SDPA (fwd+bwd) and
  the density E / T^2 where their times cross.
- ``crossover``: batches of B sequences of T tokens (T from 64 to 2,048),
  each token attending to the tokens within a distance r (``patterns.window(ptr,
  r, causal=False)``, r chosen for padded densities from 0.06 to 0.9):
  graphformer's dense backend against the one ``auto`` runs below the
  crossover (``fused_cpu`` on the CPU with the C++ kernels, else
  ``sparse``), and per T the padded density E / (B T^2) where they cross,
  beside the cost model's (``graphformer.nn.backend.dense_crossover``).
- ``edge-crossover``: batches of B molecules as in ``molecules`` (B from 4
  to 128), 64 edge features: graphformer's ``propagate`` backend against
  ``fused_cpu`` (CPU with the C++ kernels), and the size of the per-edge
  messages E·H·C where they cross, beside the cost model's
  (``graphformer.nn.backend.PROPAGATE_BELOW_FUSED_CPU``).

Peers: "dense masked SDPA" has the same four linears as the graphformer layer
(weights copied, so it computes the same function without edge features; the
script checks the outputs agree to 1e-4 before timing), pads nodes to
[B, H, T, C] (``to_dense_batch``, or a reshape for equal-length sequences) and
calls ``torch.nn.functional.scaled_dot_product_attention`` with a boolean
[B, 1 or H, T, T] mask (True = attend) made by ``patterns.to_mask``. On CUDA,
``FlexAttention`` (compiled, with ``create_block_mask``) is a second peer of
``tokens`` and ``long``, and graphformer's ``fused`` backend gets a row.

Peak memory of one fwd+bwd: on CPU the growth of the process's peak resident
set (glibc ``malloc_trim``, then ``/proc/self/clear_refs`` resets VmHWM to the
current VmRSS; peak = VmHWM - VmRSS before the run); on CUDA
``max_memory_allocated`` minus the memory allocated before the run. Both
include the gradients the run leaves behind. ``est MB`` is
``graphformer.nn.backend.estimate(...).peak_bytes``.

Ratios in the tables: speed-up = peer time / graphformer time (above 1:
graphformer is faster), memory = graphformer peak / peer peak (below 1:
graphformer needs less).

The memory allocator moves CPU times a lot, the peer's most: with glibc's
defaults every tensor over 32 MB is a fresh ``mmap`` whose pages fault in on
first touch, and ``TransformerConv`` on ``large`` allocates gigabytes of them
per step. The machine line names the allocator; to time without those
faults, keep freed memory in the process:

    MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736 \
        python scripts/bench_attention.py --cases large

(or preload jemalloc / tcmalloc with ``LD_PRELOAD``).
"""
from __future__ import annotations

import argparse
import copy
import gc
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import TransformerConv
from torch_geometric.utils import coalesce as pyg_coalesce
from torch_geometric.utils import to_dense_batch
from torch_geometric.utils.sparse import ptr2index

from graphformer import patterns as P
from graphformer._process import release_free_memory
from graphformer.nn import RelationalAttention
from graphformer.nn.backend import (DENSE_CROSSOVER, PROPAGATE_BELOW_FUSED_CPU, choose_backend,
                                     dense_crossover, estimate, padded_density)
from graphformer.nn.fused import fused_available
from graphformer.nn.fused_cpu import fused_cpu_available
from graphformer.nn.fused_record import fused_verified

CASES = ("molecules", "medium", "large", "tokens", "long", "crossover", "edge-crossover")
IN_CHANNELS, HEADS, HEAD_CHANNELS, EDGE_DIM = 256, 8, 32, 64
ATOL = 1e-4
MB = 1 << 20


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of the cases."""
    mol_graphs: int = 128
    mol_atoms: int = 25
    mol_bonds_per_atom: float = 2.2
    medium_nodes: int = 10_000
    medium_edges: int = 200_000
    large_nodes: int = 50_000
    large_edges: int = 1_000_000
    tok_batch: int = 32
    tok_len: int = 128
    long_len: int = 8192
    long_window: int = 64
    long_stride: int = 64
    sweep_windows: Tuple[int, ...] = (16, 64, 256, 1024, 2048)
    # the crossover case: (T, B) batches of B sequences of T tokens, and the
    # padded densities of their windows
    crossover_sizes: Tuple[Tuple[int, int], ...] = ((64, 64), (128, 32), (512, 8), (2048, 2))
    crossover_densities: Tuple[float, ...] = (0.06, 0.12, 0.25, 0.45, 0.65, 0.9)
    # the edge-crossover case: batches of B molecules (mol_atoms atoms each)
    edge_crossover_graphs: Tuple[int, ...] = (4, 8, 16, 24, 32, 64, 128)


FULL = Sizes()
QUICK = Sizes(mol_graphs=16, medium_nodes=500, medium_edges=5000, large_nodes=2000, large_edges=20_000, tok_batch=4, tok_len=64,
              long_len=1024, long_window=64, long_stride=32, sweep_windows=(16, 64, 256),
              crossover_sizes=((32, 8), (128, 2)), crossover_densities=(0.1, 0.6),
              edge_crossover_graphs=(2, 8))


# --------------------------------------------------------------------------
# Inputs


@dataclass
class Workload:
    """What every method of a group runs on (all on the benchmark device)."""
    x: Tensor                      # [N, IN_CHANNELS], requires grad
    edge_index: Tensor             # [2, E], coalesced
    ptr: Tensor                    # [B + 1] graph offsets
    grad_out: Tensor               # [N, out] upstream gradient of fwd+bwd
    edge_attr: Optional[Tensor] = None   # [E, EDGE_DIM], requires grad
    batch: Optional[Tensor] = None       # [N] graph id, given to graphformer
    head_mask: Optional[Tensor] = None   # [E, H] bool
    mask: Optional[Tensor] = None        # [B, 1 or H, T, T] bool for the SDPA peer

    @property
    def num_nodes(self) -> int:
        return self.x.size(0)

    @property
    def num_edges(self) -> int:
        return self.edge_index.size(1)

    @property
    def graph_sizes(self) -> List[int]:
        return self.ptr.diff().tolist()


def node_tensors(num_nodes: int, gen: torch.Generator, device: torch.device
                 ) -> Tuple[Tensor, Tensor]:
    """Node features (requiring grad) and the upstream gradient."""
    x = torch.randn(num_nodes, IN_CHANNELS, generator=gen).to(device).requires_grad_()
    grad = torch.randn(num_nodes, HEADS * HEAD_CHANNELS, generator=gen).to(device)
    return x, grad


def edge_features(num_edges: int, gen: torch.Generator, device: torch.device) -> Tensor:
    return torch.randn(num_edges, EDGE_DIM, generator=gen).to(device).requires_grad_()


def bond_keys(u: Tensor, v: Tensor, num_nodes: int) -> Tensor:
    """One key per undirected bond ``{u, v}``: the key of the edge
    ``max(u, v) -> min(u, v)`` (:func:`graphformer.patterns.edge_keys`)."""
    return P.edge_keys(torch.stack([torch.maximum(u, v), torch.minimum(u, v)]), num_nodes)


def molecule_bonds(num_graphs: int, atoms: int, bonds_per_atom: float,
                   gen: torch.Generator) -> Tensor:
    """Random molecule-like bonds, both directions, coalesced: a random spanning
    tree per graph (atom ``a`` bonds to a random earlier atom) plus random extra
    bonds inside the graphs until there are ``bonds_per_atom`` directed bonds
    per atom; no self loops, no duplicates."""
    n = num_graphs * atoms
    local = torch.arange(1, atoms).repeat(num_graphs)
    start = torch.arange(num_graphs).repeat_interleave(atoms - 1) * atoms
    parent = (torch.rand(local.numel(), generator=gen) * local).long()
    u, v = start + local, start + parent
    keys = torch.unique(bond_keys(u, v, n))
    target = round(n * bonds_per_atom / 2)          # undirected bonds
    while keys.numel() < target:
        need = target - keys.numel()
        first = torch.randint(num_graphs, (4 * need,), generator=gen) * atoms
        i = first + torch.randint(atoms, (4 * need,), generator=gen)
        j = first + torch.randint(atoms, (4 * need,), generator=gen)
        cand = torch.unique(bond_keys(i, j, n)[i != j])
        cand = cand[~torch.isin(cand, keys)]
        cand = cand[torch.randperm(cand.numel(), generator=gen)[:need]]
        keys = torch.cat([keys, cand]).sort().values
    down = P.keys_to_edges(keys, n)   # max -> min
    both = torch.cat([down.flip(0), down], dim=1)
    return P.coalesce(both, num_nodes=n)


def random_edges(num_nodes: int, num_edges: int, gen: torch.Generator) -> Tensor:
    """Exactly ``num_edges`` distinct uniformly random edges, coalesced."""
    keys = torch.empty(0, dtype=torch.long)
    while keys.numel() < num_edges:
        extra = num_edges - keys.numel() + num_edges // 100 + 16
        drawn = torch.randint(num_nodes * num_nodes, (extra,), generator=gen)
        keys = torch.unique(torch.cat([keys, drawn]))
    keys = keys[torch.randperm(keys.numel(), generator=gen)[:num_edges]].sort().values
    return P.keys_to_edges(keys, num_nodes)


def sdpa_mask(edge_index: Tensor, ptr: Tensor) -> Tensor:
    """The [B, 1, T, T] boolean SDPA mask of an edge set (True = attend).
    Padded query rows see their own (padded) key so that no row is empty."""
    mask = P.to_mask(edge_index, ptr)
    T = mask.size(-1)
    pad = torch.arange(T, device=mask.device) >= ptr.diff().unsqueeze(1)   # [B, T]
    return (mask | torch.diag_embed(pad)).unsqueeze(1)


# --------------------------------------------------------------------------
# Methods


def graphformer_layer(edge_dim: Optional[int], backend: str, seed: int = 0
                      ) -> RelationalAttention:
    """The layer under test; the same ``seed`` gives the same weights."""
    torch.manual_seed(seed)
    return RelationalAttention(IN_CHANNELS, HEADS * HEAD_CHANNELS, heads=HEADS,
                               head_channels=HEAD_CHANNELS, edge_dim=edge_dim,
                               backend=backend)


class DensePeer(nn.Module):
    """Dense masked attention with the four linears of a graphformer layer
    (weights copied): project nodes, pad to [B, H, T, C], ``attend``, unpad,
    ``lin_out``. ``attend(q, k, v)`` is masked SDPA or FlexAttention."""

    def __init__(self, layer: RelationalAttention,
                 attend: Callable[[Tensor, Tensor, Tensor], Tensor]) -> None:
        super().__init__()
        self.heads, self.head_channels = layer.heads, layer.head_channels
        self.attend = attend
        inner = layer.heads * layer.head_channels
        self.lin_q = nn.Linear(IN_CHANNELS, inner)
        self.lin_k = nn.Linear(IN_CHANNELS, inner)
        self.lin_v = nn.Linear(IN_CHANNELS, inner)
        self.lin_out = nn.Linear(inner, layer.out_channels)
        with torch.no_grad():
            for name in ("lin_q", "lin_k", "lin_v", "lin_out"):
                getattr(self, name).weight.copy_(getattr(layer, name).weight)
                getattr(self, name).bias.copy_(getattr(layer, name).bias)

    def forward(self, x: Tensor, num_graphs: int, max_nodes: int,
                batch: Optional[Tensor] = None) -> Tensor:
        H, C, B, T = self.heads, self.head_channels, num_graphs, max_nodes
        node_mask = None

        def dense(t: Tensor) -> Tensor:
            nonlocal node_mask
            if batch is None:              # B sequences of exactly T tokens
                return t.view(B, T, H, C).transpose(1, 2)
            t, node_mask = to_dense_batch(t, batch, max_num_nodes=T, batch_size=B)
            return t.view(B, T, H, C).transpose(1, 2)

        out = self.attend(dense(self.lin_q(x)), dense(self.lin_k(x)), dense(self.lin_v(x)))
        out = out.transpose(1, 2).reshape(B, T, H * C)
        out = out.reshape(B * T, H * C) if node_mask is None else out[node_mask]
        return self.lin_out(out)


def sdpa_attend(mask: Tensor) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def flex_attend(mask_mod: Callable, num_graphs: int, heads: int, length: int,
                device: torch.device) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """Compiled FlexAttention with a block mask built once (CUDA)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    block_mask = create_block_mask(mask_mod, num_graphs, heads, length, length,
                                   device=str(device))
    compiled = torch.compile(flex_attention, dynamic=False) if device.type == "cuda" \
        else flex_attention
    return lambda q, k, v: compiled(q, k, v, block_mask=block_mask)


def flex_mask_mod(pattern: str, window: int = 0, stride: int = 1) -> Callable:
    """FlexAttention ``mask_mod`` equal to the graphformer edge sets used here."""
    def full(b, h, q, kv):
        return q >= 0

    def causal(b, h, q, kv):
        return q >= kv

    def window_mod(b, h, q, kv):
        return (q >= kv) & (q - kv < window)

    def strided_heads(b, h, q, kv):
        strided = (q >= kv) & ((q - kv) % stride == 0)
        return torch.where(h < HEADS // 2, window_mod(b, h, q, kv), strided)

    return {"full": full, "causal": causal, "window": window_mod,
            "window+strided": strided_heads}[pattern]


@dataclass
class Method:
    """One row: a module and how to call it on the group's workload."""
    name: str
    backend: str
    role: str                                 # "graphformer" or "peer"
    module: nn.Module
    call: Callable[[], Tensor]
    auto: bool = False                        # the backend "auto" picks
    same_function: bool = False               # peer computes graphformer's function
    cost: Any = None                          # AttentionCost of graphformer rows

    @property
    def label(self) -> str:
        return f"{self.name} {self.backend}{' (auto)' if self.auto else ''}".strip()


def auto_backend(work: Workload, device: torch.device, one_graph: bool,
                 dense_ok: bool = True) -> str:
    """What ``backend="auto"`` picks for this input: :func:`choose_backend` with
    the workload's facts (every edge set here is coalesced and inside graphs);
    with ``dense_ok=False`` what it picks where the dense backend is ruled out
    (below the crossover)."""
    sizes = [work.num_nodes] if one_graph else work.graph_sizes
    return choose_backend(num_edges=work.num_edges, num_graphs=len(sizes),
                          max_nodes=max(sizes), heads=HEADS, device=device, dense_ok=dense_ok,
                          fused_ok=fused_verified() and fused_available(device),
                          dropout_active=False,
                          edge_features=work.edge_attr is not None,
                          channels=HEADS * HEAD_CHANNELS,
                          fused_cpu_ok=fused_cpu_available(device))


def graphformer_rows(work: Workload, backends: Sequence[str], edge_dim: Optional[int],
                     device: torch.device, use_batch: bool) -> List[Method]:
    """Graphformer rows for ``backends`` (plus fused on CUDA), the auto choice
    marked; every row has the same weights."""
    auto = auto_backend(work, device, one_graph=not use_batch)
    wanted = list(dict.fromkeys([*backends, auto]))
    if device.type == "cuda" and fused_available(device) and "fused" not in wanted:
        wanted.append("fused")
    sizes = work.graph_sizes if use_batch else None
    rows = []
    for backend in wanted:
        layer = graphformer_layer(edge_dim, backend).to(device)
        batch = work.batch if use_batch else None

        def call(layer: nn.Module = layer, batch: Optional[Tensor] = batch) -> Tensor:
            return layer(work.x, work.edge_index, edge_attr=work.edge_attr,
                         head_mask=work.head_mask, batch=batch)

        cost = estimate(layer, num_nodes=work.num_nodes, num_edges=work.num_edges,
                        graph_sizes=sizes, backend=backend, training=True,
                        device=device.type)
        rows.append(Method("graphformer", backend, "graphformer", layer, call,
                           auto=backend == auto, cost=cost))
    return rows


def transformer_conv_row(work: Workload, edge_dim: Optional[int],
                         device: torch.device) -> Method:
    torch.manual_seed(0)
    conv = TransformerConv(IN_CHANNELS, HEAD_CHANNELS, heads=HEADS, edge_dim=edge_dim).to(device)

    def call() -> Tensor:
        if work.edge_attr is None:
            return conv(work.x, work.edge_index)
        return conv(work.x, work.edge_index, work.edge_attr)

    return Method("TransformerConv", "-", "peer", conv, call)


class Projections(nn.Module):
    """The four node projections of an attention layer (q, k, v, out) and
    nothing else: a floor that graphformer and TransformerConv (q, k, v, skip)
    both pay, whatever their attention costs. Called like the layer (the
    inputs after ``x``, its edges and their features, are ignored), it also
    stands in for a model's attention (``bench_training.py --floor``)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.q, self.k, self.v, self.out = (copy.deepcopy(m) for m in
                                            (layer.lin_q, layer.lin_k, layer.lin_v,
                                             layer.lin_out))

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return self.out(self.q(x) + self.k(x) + self.v(x))


def projections_row(work: Workload, device: torch.device) -> Method:
    floor = Projections(graphformer_layer(None, "auto")).to(device)
    return Method("projections only (floor)", "-", "peer", floor, lambda: floor(work.x))


def sdpa_row(work: Workload, device: torch.device, use_batch: bool) -> Method:
    peer = DensePeer(graphformer_layer(None, "auto"), sdpa_attend(work.mask)).to(device)
    B, T = work.mask.size(0), work.mask.size(-1)
    batch = work.batch if use_batch else None
    return Method("dense masked SDPA", "-", "peer", peer,
                  lambda: peer(work.x, B, T, batch), same_function=True)


def flex_row(work: Workload, mask_mod: Callable, device: torch.device) -> Method:
    B, T = len(work.graph_sizes), max(work.graph_sizes)
    peer = DensePeer(graphformer_layer(None, "auto"),
                     flex_attend(mask_mod, B, HEADS, T, device)).to(device)
    return Method("FlexAttention", "-", "peer", peer, lambda: peer(work.x, B, T),
                  same_function=True)


# --------------------------------------------------------------------------
# Measurement


@dataclass(frozen=True)
class Timing:
    device: torch.device
    warmup: int
    repeats: int

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def timed_once(fn: Callable[[], None], leaves: Sequence[Tensor], timing: Timing) -> float:
    """The wall time in ms of one ``fn()``, gradients cleared before it."""
    clear_grads(leaves)
    gc.collect()
    timing.sync()
    start = time.perf_counter()
    fn()
    timing.sync()
    return (time.perf_counter() - start) * 1e3


def time_runs(fn: Callable[[], None], leaves: Sequence[Tensor], timing: Timing) -> List[float]:
    """Wall times in ms of ``fn`` (:func:`timed_once`) after ``timing.warmup``
    untimed runs."""
    for _ in range(timing.warmup):
        timed_once(fn, leaves, timing)
    return [timed_once(fn, leaves, timing) for _ in range(timing.repeats)]


def _proc_status_kb(field_name: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise OSError(f"no {field_name} in /proc/self/status")


def peak_bytes(fn: Callable[[], None], device: torch.device) -> Optional[int]:
    """Peak memory ``fn`` adds to what is allocated before it (None when it
    cannot be measured: no /proc on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    try:
        release_free_memory()
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")                # VmHWM := VmRSS
        base = _proc_status_kb("VmRSS")
        fn()
        return max(_proc_status_kb("VmHWM") - base, 0) * 1024
    except (OSError, ValueError):
        return None


@dataclass
class Row:
    """The measurements of one method (times in ms, memory in bytes)."""
    method: str
    backend: str
    role: str
    auto: bool
    fwd_ms: float
    fwd_ms_min: float
    fwd_bwd_ms: float
    fwd_bwd_ms_min: float
    fwd_ms_all: List[float]
    fwd_bwd_ms_all: List[float]
    peak_bytes: Optional[int]
    estimate_peak_bytes: Optional[int] = None
    estimate_flops: Optional[int] = None
    estimate_over_measured: Optional[float] = None
    vs: Dict[str, Dict[str, Optional[float]]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.method} {self.backend}{' (auto)' if self.auto else ''}"


def grad_leaves(method: Method, work: Workload) -> List[Tensor]:
    """The tensors whose ``.grad`` a fwd+bwd of ``method`` fills."""
    leaves = [t for t in (work.x, work.edge_attr) if t is not None]
    return leaves + list(method.module.parameters())


def clear_grads(leaves: Sequence[Tensor]) -> None:
    for t in leaves:
        t.grad = None


def measure_group(methods: Sequence[Method], work: Workload, timing: Timing) -> List[Row]:
    """fwd and fwd+bwd times of every method, interleaved, then the peak
    memory of one fwd+bwd of each. Each round times every method once (all
    fwd, then all fwd+bwd), starting one method later than the round before:
    on a machine whose speed drifts (shared cores, a host's other guests) a
    slow stretch then slows every method alike, instead of whichever was
    being timed, and the ratios of one run stay comparable."""
    leaves = [grad_leaves(m, work) for m in methods]
    fwd = [lambda m=m: m.call() for m in methods]
    fwd_bwd = [lambda m=m: m.call().backward(work.grad_out) for m in methods]
    for _ in range(timing.warmup):
        for i in range(len(methods)):
            timed_once(fwd[i], leaves[i], timing)
            timed_once(fwd_bwd[i], leaves[i], timing)
    fwd_times: List[List[float]] = [[] for _ in methods]
    fb_times: List[List[float]] = [[] for _ in methods]
    for r in range(timing.repeats):
        turn = [(r + s) % len(methods) for s in range(len(methods))]
        for i in turn:
            fwd_times[i].append(timed_once(fwd[i], leaves[i], timing))
        for i in turn:
            fb_times[i].append(timed_once(fwd_bwd[i], leaves[i], timing))
    rows = []
    for i, method in enumerate(methods):
        clear_grads(leaves[i])
        gc.collect()
        peak = peak_bytes(fwd_bwd[i], timing.device)
        clear_grads(leaves[i])
        gc.collect()
        row = Row(method.name, method.backend, method.role, method.auto,
                  statistics.median(fwd_times[i]), min(fwd_times[i]),
                  statistics.median(fb_times[i]), min(fb_times[i]), fwd_times[i],
                  fb_times[i], peak)
        if method.cost is not None:
            row.estimate_peak_bytes = method.cost.peak_bytes
            row.estimate_flops = method.cost.flops
            if peak:
                row.estimate_over_measured = method.cost.peak_bytes / peak
        rows.append(row)
    return rows


def fwd_bwd_median(method: Method, work: Workload, timing: Timing) -> float:
    """Median fwd+bwd time in ms (the sweep's measurement)."""
    leaves = grad_leaves(method, work)
    times = time_runs(lambda: method.call().backward(work.grad_out), leaves, timing)
    clear_grads(leaves)
    return statistics.median(times)


def ratios(row: Row, peer: Row) -> Dict[str, Optional[float]]:
    """Speed-ups (peer time / graphformer time) and memory (graphformer / peer)."""
    memory = None
    if row.peak_bytes is not None and peer.peak_bytes:
        memory = row.peak_bytes / peer.peak_bytes
    return {"speedup_fwd": peer.fwd_ms / row.fwd_ms,
            "speedup_fwd_bwd": peer.fwd_bwd_ms / row.fwd_bwd_ms,
            # round by round (the times of one round were taken side by side)
            "speedup_fwd_bwd_rounds": [p / g for p, g in zip(peer.fwd_bwd_ms_all,
                                                              row.fwd_bwd_ms_all)],
            "memory_ratio": memory}


def check_outputs(methods: Sequence[Method], tag: str) -> Optional[Dict[str, Any]]:
    """Every graphformer row and every same-function peer must agree with the
    first such peer to ``ATOL``; raise otherwise. None without such a peer."""
    refs = [m for m in methods if m.same_function]
    if not refs:
        return None
    with torch.no_grad():
        expected = refs[0].call()
        worst = 0.0
        for m in methods:
            if m is refs[0] or not (m.role == "graphformer" or m.same_function):
                continue
            actual = m.call()
            where = f"[{tag}] {m.label} != {refs[0].label}"
            torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0,
                                       msg=lambda text, where=where: f"{where}: {text}")
            worst = max(worst, float((actual - expected).abs().max()))
    say(f"  [{tag}] check: graphformer == {refs[0].name} (max |diff| {worst:.1e} <= {ATOL:g})")
    return {"against": refs[0].name, "max_abs_diff": worst, "atol": ATOL}


def run_group(tag: str, description: str, work: Workload, methods: List[Method],
              timing: Timing) -> Dict[str, Any]:
    """Check, measure every method, and relate graphformer rows to the peers."""
    check = check_outputs(methods, tag)
    rows = measure_group(methods, work, timing)
    for row in rows:
        say(f"  [{tag}] {row.label}: fwd {row.fwd_ms:.2f} ms, fwd+bwd {row.fwd_bwd_ms:.2f} ms, "
            f"peak {fmt_mb(row.peak_bytes)} MB")
    peers = [r for r in rows if r.role == "peer"]
    for row in rows:
        if row.role == "graphformer":
            row.vs = {p.method: ratios(row, p) for p in peers}
    sizes = work.graph_sizes
    return {"name": tag, "description": description, "num_nodes": work.num_nodes,
            "num_edges": work.num_edges, "num_graphs": len(sizes), "max_nodes": max(sizes),
            "padded_density": padded_density(work.num_edges, len(sizes), max(sizes)),
            "check": check, "rows": [row.__dict__ for row in rows]}


# --------------------------------------------------------------------------
# Cases


def case_molecules(s: Sizes, device: torch.device, timing: Timing) -> Dict[str, Any]:
    gen = torch.Generator().manual_seed(0)
    n = s.mol_graphs * s.mol_atoms
    ptr = torch.arange(s.mol_graphs + 1) * s.mol_atoms
    bonds = molecule_bonds(s.mol_graphs, s.mol_atoms, s.mol_bonds_per_atom, gen)
    x, grad = node_tensors(n, gen, device)
    work = Workload(x, bonds.to(device), ptr.to(device), grad,
                    edge_attr=edge_features(bonds.size(1), gen, device),
                    batch=ptr2index(ptr).to(device))
    desc = (f"{s.mol_graphs} graphs x {s.mol_atoms} atoms, {bonds.size(1)} directed bonds "
            f"({bonds.size(1) / n:.2f} per atom), {EDGE_DIM} edge features")
    methods = graphformer_rows(work, ["sparse", "dense"], EDGE_DIM, device, use_batch=True)
    methods.append(transformer_conv_row(work, EDGE_DIM, device))
    methods.append(projections_row(work, device))
    groups = [run_group("molecules/bonds", desc, work, methods, timing)]
    del work, methods
    gc.collect()

    pairs, _ = P.union(bonds, P.full(ptr))
    work = Workload(x, pairs.to(device), ptr.to(device), grad, batch=ptr2index(ptr).to(device),
                    mask=sdpa_mask(pairs, ptr).to(device))
    desc = (f"bonds + all pairs (union with patterns.full, self included): {pairs.size(1)} "
            "edges, no edge features")
    methods = graphformer_rows(work, ["dense", "sparse"], None, device, use_batch=True)
    methods.append(sdpa_row(work, device, use_batch=True))
    groups.append(run_group("molecules/bonds+all-pairs", desc, work, methods, timing))
    return {"groups": groups}


def random_graph_case(name: str, n: int, num_edges: int, device: torch.device,
                      timing: Timing, pyg_order: bool = False) -> Dict[str, Any]:
    """One graph of ``n`` nodes and ``num_edges`` random coalesced edges,
    with and without edge features: graphformer against TransformerConv.
    With ``pyg_order``, a third group: the edges with features in PyG's
    coalesced order (by source, as ``torch_geometric.utils.coalesce`` and
    PyG's data sets give them) instead of graphformer's (by target)."""
    gen = torch.Generator().manual_seed(1)
    edge_index = random_edges(n, num_edges, gen).to(device)
    x, grad = node_tensors(n, gen, device)
    ptr = torch.tensor([0, n], device=device)
    groups = []
    for edge_dim in (EDGE_DIM, None):
        attr = edge_features(num_edges, gen, device) if edge_dim else None
        work = Workload(x, edge_index, ptr, grad, edge_attr=attr)
        features = f"{edge_dim} edge features" if edge_dim else "no edge features"
        desc = f"one graph, {n} nodes, {num_edges} random coalesced edges, {features}"
        methods = graphformer_rows(work, ["sparse"], edge_dim, device, use_batch=False)
        methods.append(transformer_conv_row(work, edge_dim, device))
        methods.append(projections_row(work, device))
        tag = f"{name}/edge-features" if edge_dim else f"{name}/no-edge-features"
        groups.append(run_group(tag, desc, work, methods, timing))
        if edge_dim and pyg_order:
            groups.append(pyg_order_group(f"{name}/edge-features-pyg-order", work, timing))
        del work, methods, attr
        gc.collect()
    return {"groups": groups}


def pyg_order_group(tag: str, work: Workload, timing: Timing) -> Dict[str, Any]:
    """The same edges and features as ``work``, put in the order PyG's
    ``coalesce`` gives (by source, then target): ``auto`` against
    TransformerConv. graphformer reads the features in their given order,
    so its passes by target meet them in a random order here."""
    n = work.num_nodes
    edge_index, attr = pyg_coalesce(work.edge_index, work.edge_attr.detach(), num_nodes=n)
    pyg = Workload(work.x, edge_index, work.ptr, work.grad_out,
                   edge_attr=attr.clone().requires_grad_())
    desc = (f"the edges and features above in PyG's coalesced order (by source): {n} nodes, "
            f"{pyg.num_edges} edges, {EDGE_DIM} edge features")
    methods = graphformer_rows(pyg, [], EDGE_DIM, work.x.device, use_batch=False)
    methods.append(transformer_conv_row(pyg, EDGE_DIM, work.x.device))
    return run_group(tag, desc, pyg, methods, timing)


def case_medium(s: Sizes, device: torch.device, timing: Timing) -> Dict[str, Any]:
    """10k nodes, 200k edges: the size whose ratio moved from 2.4-3.5x to
    1.9x between sessions without a case of its own (performance issue)."""
    return random_graph_case("medium", s.medium_nodes, s.medium_edges, device, timing,
                             pyg_order=True)


def case_large(s: Sizes, device: torch.device, timing: Timing) -> Dict[str, Any]:
    return random_graph_case("large", s.large_nodes, s.large_edges, device, timing)


def case_tokens(s: Sizes, device: torch.device, timing: Timing) -> Dict[str, Any]:
    gen = torch.Generator().manual_seed(2)
    B, T = s.tok_batch, s.tok_len
    ptr = torch.arange(B + 1) * T
    x, grad = node_tensors(B * T, gen, device)
    groups = []
    for pattern in ("full", "causal"):
        edge_index = P.full(ptr) if pattern == "full" else P.causal(ptr)
        work = Workload(x, edge_index.to(device), ptr.to(device), grad,
                        batch=ptr2index(ptr).to(device),
                        mask=sdpa_mask(edge_index, ptr).to(device))
        methods = graphformer_rows(work, ["sparse"], None, device, use_batch=True)
        methods.append(sdpa_row(work, device, use_batch=False))
        if device.type == "cuda":
            methods.append(flex_row(work, flex_mask_mod(pattern), device))
        desc = f"{B} sequences x {T} tokens, {pattern} attention, no edge features, batch given"
        groups.append(run_group(f"tokens/{pattern}", desc, work, methods, timing))
        del work, methods
        gc.collect()
    return {"groups": groups}


def long_workload(T: int, window: int, stride: Optional[int], x: Tensor, grad: Tensor,
                  device: torch.device) -> Workload:
    """Causal window of ``window`` keys per query (self included); with
    ``stride``, heads H/2.. see ``patterns.strided(T, stride)`` instead."""
    ptr = torch.tensor([0, T])
    local = P.window(T, window - 1)
    if stride is None:
        return Workload(x, local.to(device), ptr.to(device), grad,
                        mask=sdpa_mask(local, ptr).to(device))
    strided = P.strided(T, stride)
    edge_index, member = P.union(local, strided)
    half = HEADS // 2
    head_mask = torch.cat([member[:, :1].expand(-1, half), member[:, 1:].expand(-1, HEADS - half)],
                          dim=1).contiguous()
    per_head = [sdpa_mask(local, ptr)] * half + [sdpa_mask(strided, ptr)] * (HEADS - half)
    return Workload(x, edge_index.to(device), ptr.to(device), grad,
                    head_mask=head_mask.to(device), mask=torch.cat(per_head, dim=1).to(device))


def case_long(s: Sizes, device: torch.device, timing: Timing) -> Dict[str, Any]:
    gen = torch.Generator().manual_seed(3)
    T, w = s.long_len, s.long_window
    x, grad = node_tensors(T, gen, device)
    groups = []
    for stride in (None, s.long_stride):
        work = long_workload(T, w, stride, x, grad, device)
        methods = graphformer_rows(work, ["sparse"], None, device, use_batch=False)
        methods.append(sdpa_row(work, device, use_batch=False))
        if device.type == "cuda":
            pattern = "window" if stride is None else "window+strided"
            methods.append(flex_row(work, flex_mask_mod(pattern, w, stride or 1), device))
        desc = (f"one sequence of {T} tokens, causal window of {w} keys per query "
                f"(self + {w - 1} previous: patterns.window(T, {w - 1}))")
        if stride is not None:
            desc += (f"; heads 0-{HEADS // 2 - 1} the window, heads {HEADS // 2}-{HEADS - 1} "
                     f"patterns.strided(T, {stride}) (j <= i, (i - j) % {stride} == 0), "
                     f"head_mask over their union")
        tag = "long/window" if stride is None else "long/window+strided-heads"
        groups.append(run_group(tag, desc, work, methods, timing))
        del work, methods
        gc.collect()
    return {"groups": groups, "sweep": crossover_sweep(s, x, grad, device, timing)}


def crossover_sweep(s: Sizes, x: Tensor, grad: Tensor, device: torch.device,
                    timing: Timing) -> Dict[str, Any]:
    """fwd+bwd of the sparse backend and of masked SDPA over causal windows."""
    T = s.long_len
    points = []
    for w in s.sweep_windows:
        work = long_workload(T, min(w, T), None, x, grad, device)
        tag = f"long/sweep w={w}"
        methods = graphformer_rows(work, ["sparse"], None, device, use_batch=False)
        methods = [m for m in methods if m.backend == "sparse"]
        methods.append(sdpa_row(work, device, use_batch=False))
        check_outputs(methods, tag)
        times = {m.role: fwd_bwd_median(m, work, timing) for m in methods}
        density = work.num_edges / (T * T)
        point = {"window": w, "num_edges": work.num_edges, "density": density,
                 "graphformer_sparse_fwd_bwd_ms": times["graphformer"],
                 "sdpa_fwd_bwd_ms": times["peer"],
                 "speedup_fwd_bwd": times["peer"] / times["graphformer"]}
        say(f"  [{tag}] density {density:.4f}: sparse {times['graphformer']:.2f} ms, "
            f"SDPA {times['peer']:.2f} ms (speed-up {point['speedup_fwd_bwd']:.2f}x)")
        points.append(point)
        del work, methods
        gc.collect()
    cross = crossover_density(points)
    return {"seq_len": T, "points": points, "crossover_density": cross,
            "cost_model_crossover": DENSE_CROSSOVER.get(device.type)}


def window_radius(T: int, density: float) -> int:
    """The radius r whose two-sided window over T tokens (``|i - j| <= r``:
    T + 2 r T - r (r + 1) edges) comes nearest to ``density`` E / T^2."""
    return min(range(T), key=lambda r: abs((T + 2 * r * T - r * (r + 1)) / T**2 - density))


def case_crossover(s: Sizes, device: torch.device, timing: Timing) -> Dict[str, Any]:
    """fwd+bwd of graphformer's dense backend and of the backend below the
    crossover, over batches of B sequences of T tokens with two-sided
    windows (padded densities ``s.crossover_densities``); per T the crossover
    density."""
    gen = torch.Generator().manual_seed(4)
    curves, others = [], set()
    for T, B in s.crossover_sizes:
        ptr = torch.arange(B + 1) * T
        x, grad = node_tensors(B * T, gen, device)
        points = []
        for target in s.crossover_densities:
            radius = window_radius(T, target)
            work = Workload(x, P.window(ptr, radius, causal=False).to(device), ptr.to(device),
                            grad, batch=ptr2index(ptr).to(device))
            below = auto_backend(work, device, one_graph=False, dense_ok=False)
            others.add(below)
            methods = [m for m in graphformer_rows(work, ["dense", below], None, device,
                                                   use_batch=True)
                       if m.backend in ("dense", below)]
            times = {m.backend: fwd_bwd_median(m, work, timing) for m in methods}
            density = padded_density(work.num_edges, B, T)
            points.append({"radius": radius, "num_edges": work.num_edges, "density": density,
                           "dense_fwd_bwd_ms": times["dense"], "other_fwd_bwd_ms": times[below]})
            say(f"  [crossover T={T} B={B} r={radius}] density {density:.3f}: dense "
                f"{times['dense']:.2f} ms, {below} {times[below]:.2f} ms")
            del work, methods
            gc.collect()
        curves.append({"seq_len": T, "num_graphs": B, "points": points,
                       "crossover_density": crossover_density(points, "other_fwd_bwd_ms",
                                                              "dense_fwd_bwd_ms"),
                       "cost_model_crossover": dense_crossover(device, T, below == "fused_cpu")})
    (other,) = others   # no edge features, no dropout: one backend below the crossover
    return {"groups": [], "dense_sweep": {"other_backend": other, "curves": curves}}


def crossover_density(points: Sequence[Dict[str, Any]],
                      low: str = "graphformer_sparse_fwd_bwd_ms",
                      high: str = "sdpa_fwd_bwd_ms", at: str = "density") -> Optional[float]:
    """Density (or the key ``at`` of each point) where two fwd+bwd times are
    equal (the keys ``low`` and ``high`` of each point: the method faster at
    low density and the one faster at high density; by default sparse and
    SDPA): log(time ratio) interpolated linearly in log(density) between the
    bracketing points; None when the sign never changes over the range."""
    pts = sorted(points, key=lambda p: p[at])
    logs = [(math.log(p[at]), math.log(p[low] / p[high])) for p in pts]
    for (d0, r0), (d1, r1) in itertools.pairwise(logs):
        if r0 == 0.0:
            return math.exp(d0)
        if r0 * r1 < 0.0:
            return math.exp(d0 + (0.0 - r0) * (d1 - d0) / (r1 - r0))
    if logs and logs[-1][1] == 0.0:
        return math.exp(logs[-1][0])
    return None


def case_edge_crossover(s: Sizes, device: torch.device, timing: Timing) -> Dict[str, Any]:
    """fwd+bwd of graphformer's ``propagate`` and ``fused_cpu`` backends with
    per-edge features over batches of B molecules (``s.edge_crossover_graphs``,
    timed in interleaved rounds, at least 11), and the size of the per-edge
    messages E·H·C where they cross, beside the cost model's."""
    if device.type != "cpu" or not fused_cpu_available(device):
        say("  [edge-crossover] skipped: it compares backends of the CPU with the C++ kernels")
        return {"groups": []}
    gen = torch.Generator().manual_seed(5)
    timing = replace(timing, repeats=max(timing.repeats, 11))
    points = []
    for B in s.edge_crossover_graphs:
        ptr = torch.arange(B + 1) * s.mol_atoms
        bonds = molecule_bonds(B, s.mol_atoms, s.mol_bonds_per_atom, gen)
        x, grad = node_tensors(B * s.mol_atoms, gen, device)
        work = Workload(x, bonds.to(device), ptr.to(device), grad,
                        edge_attr=edge_features(bonds.size(1), gen, device),
                        batch=ptr2index(ptr).to(device))
        methods = [m for m in graphformer_rows(work, ["propagate", "fused_cpu"], EDGE_DIM,
                                               device, use_batch=True)
                   if m.backend in ("propagate", "fused_cpu")]
        times = interleaved_medians(methods, work, timing)
        messages = work.num_edges * HEADS * HEAD_CHANNELS
        points.append({"num_graphs": B, "num_edges": work.num_edges, "messages": messages,
                       "propagate_fwd_bwd_ms": times["propagate"],
                       "fused_cpu_fwd_bwd_ms": times["fused_cpu"]})
        say(f"  [edge-crossover B={B}] {work.num_edges} edges, E·H·C {messages}: propagate "
            f"{times['propagate']:.2f} ms, fused_cpu {times['fused_cpu']:.2f} ms")
        del work, methods
        gc.collect()
    cross = crossover_density(points, "propagate_fwd_bwd_ms", "fused_cpu_fwd_bwd_ms",
                              at="messages")
    return {"groups": [], "edge_sweep": {"points": points, "crossover_messages": cross,
                                         "cost_model": PROPAGATE_BELOW_FUSED_CPU}}


def interleaved_medians(methods: Sequence[Method], work: Workload,
                        timing: Timing) -> Dict[str, float]:
    """Median fwd+bwd ms of each method, by backend, timed in interleaved
    rounds (every method once per round) after the warm-up."""
    leaves = [grad_leaves(m, work) for m in methods]
    runs = [lambda m=m: m.call().backward(work.grad_out) for m in methods]
    times: List[List[float]] = [[] for _ in methods]
    for r in range(timing.warmup + timing.repeats):
        for i, (run, lv) in enumerate(zip(runs, leaves)):
            ms = timed_once(run, lv, timing)
            if r >= timing.warmup:
                times[i].append(ms)
    for lv in leaves:
        clear_grads(lv)
    return {m.backend: statistics.median(t) for m, t in zip(methods, times)}


# --------------------------------------------------------------------------
# Output


def say(text: str = "") -> None:
    print(text, flush=True)


def fmt_mb(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value / MB:.1f}"


def fmt(value: Optional[float], spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def table(headers: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) if i < 2 else h.rjust(w)
                       for i, (h, w) in enumerate(zip(headers, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for r in body:
        lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)


def group_table(group: Dict[str, Any]) -> str:
    """A group's rows; ratios against the first peer, further peers below."""
    rows = group["rows"]
    peers = [r["method"] for r in rows if r["role"] == "peer"]
    headers = ["method", "backend", "fwd ms (min)", "fwd+bwd ms (min)", "peak MB", "est MB",
               "est/meas", "speed-up fwd", "speed-up f+b", "memory"]
    body = []
    for r in rows:
        vs = r["vs"].get(peers[0], {}) if peers else {}
        backend = r["backend"] + (" (auto)" if r["auto"] else "")
        body.append([
            r["method"], backend,
            f"{r['fwd_ms']:.2f} ({r['fwd_ms_min']:.2f})",
            f"{r['fwd_bwd_ms']:.2f} ({r['fwd_bwd_ms_min']:.2f})",
            fmt_mb(r["peak_bytes"]),
            fmt_mb(r["estimate_peak_bytes"]) if r["estimate_peak_bytes"] is not None else "-",
            fmt(r["estimate_over_measured"], ".2f"),
            fmt(vs.get("speedup_fwd"), ".2f", "x"), fmt(vs.get("speedup_fwd_bwd"), ".2f", "x"),
            fmt(vs.get("memory_ratio"), ".2f"),
        ])
    sizes = (f"  N={group['num_nodes']} E={group['num_edges']} B={group['num_graphs']} "
             f"T={group['max_nodes']} padded density E/(B T^2)={group['padded_density']:.4f}")
    text = [f"{group['name']}: {group['description']}", sizes]
    if peers:
        text.append(f"  ratios vs {peers[0]}: speed-up = peer time / graphformer time, "
                    f"memory = graphformer peak / peer peak")
    text.append(table(headers, body))
    for other in peers[1:]:
        extra = [[r["method"], r["backend"] + (" (auto)" if r["auto"] else ""),
                  fmt(r["vs"][other]["speedup_fwd"], ".2f", "x"),
                  fmt(r["vs"][other]["speedup_fwd_bwd"], ".2f", "x"),
                  fmt(r["vs"][other]["memory_ratio"], ".2f")]
                 for r in rows if r["role"] == "graphformer"]
        text.append(f"  ratios vs {other}:")
        text.append(table(["method", "backend", "speed-up fwd", "speed-up f+b", "memory"], extra))
    return "\n".join(text)


def sweep_table(sweep: Dict[str, Any]) -> str:
    body = [[str(p["window"]), str(p["num_edges"]), f"{p['density']:.4f}",
             f"{p['graphformer_sparse_fwd_bwd_ms']:.2f}", f"{p['sdpa_fwd_bwd_ms']:.2f}",
             f"{p['speedup_fwd_bwd']:.2f}x"] for p in sweep["points"]]
    title = (f"long/sweep: T={sweep['seq_len']}, causal windows (w keys per query), "
             "fwd+bwd, sparse graphformer vs dense masked SDPA")
    text = [title,
            table(["window", "edges", "density", "sparse ms", "SDPA ms", "speed-up"], body)]
    cross = sweep["crossover_density"]
    if cross is None:
        faster = "sparse" if all(p["speedup_fwd_bwd"] > 1 for p in sweep["points"]) else "SDPA"
        text.append(f"crossover: no crossover in the range ({faster} faster throughout); "
                    f"cost model uses {sweep['cost_model_crossover']}")
    else:
        text.append(f"crossover: sparse and SDPA equal at density E/T^2 = {cross:.4f} "
                    f"(log-linear interpolation); cost model uses {sweep['cost_model_crossover']}")
    return "\n".join(text)


def density_text(density: Optional[float]) -> str:
    """A crossover density for the tables: three decimals, or that there is none."""
    return "none in range" if density is None else f"{density:.3f}"


def crossover_table(sweep: Dict[str, Any]) -> str:
    other = sweep["other_backend"]
    body = []
    for curve in sweep["curves"]:
        cross = curve["crossover_density"]
        for p in curve["points"]:
            body.append([str(curve["seq_len"]), str(curve["num_graphs"]), str(p["radius"]),
                         f"{p['density']:.3f}", f"{p['dense_fwd_bwd_ms']:.2f}",
                         f"{p['other_fwd_bwd_ms']:.2f}",
                         f"{p['other_fwd_bwd_ms'] / p['dense_fwd_bwd_ms']:.2f}",
                         density_text(cross), f"{curve['cost_model_crossover']:.3f}"])
    return "\n".join([f"crossover: B sequences of T tokens, two-sided windows of radius r, "
                      f"fwd+bwd, graphformer dense vs {other}",
                      table(["T", "B", "r", "density", "dense ms", f"{other} ms",
                             f"{other} / dense", "crossover", "cost model"], body)])


def edge_crossover_table(sweep: Dict[str, Any]) -> str:
    body = [[str(p["num_graphs"]), str(p["num_edges"]), str(p["messages"]),
             f"{p['propagate_fwd_bwd_ms']:.2f}", f"{p['fused_cpu_fwd_bwd_ms']:.2f}",
             f"{p['propagate_fwd_bwd_ms'] / p['fused_cpu_fwd_bwd_ms']:.2f}"]
            for p in sweep["points"]]
    cross = sweep["crossover_messages"]
    return "\n".join(["edge-crossover: batches of B molecules, 64 edge features, fwd+bwd, "
                      "graphformer propagate vs fused_cpu",
                      table(["B", "E", "E·H·C", "propagate ms", "fused_cpu ms",
                             "propagate / fused_cpu"], body),
                      f"crossover at E·H·C = {'none in range' if cross is None else f'{cross:.0f}'}"
                      f"; cost model {sweep['cost_model']}"])


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: glibc settings that decide whether freed memory returns to the system
MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def allocator() -> str:
    """The CPU allocator in use, as far as the environment says: a preloaded
    jemalloc / tcmalloc / mimalloc, else the C library with any of its
    malloc settings."""
    for lib in os.environ.get("LD_PRELOAD", "").split():
        name = os.path.basename(lib)
        if any(k in name for k in ("jemalloc", "tcmalloc", "mimalloc")):
            return name
    libc = "glibc" if platform.libc_ver()[0] == "glibc" else (platform.libc_ver()[0] or "libc")
    settings = [f"{k}={os.environ[k]}" for k in MALLOC_ENV if k in os.environ]
    return f"{libc} ({', '.join(settings)})" if settings else f"{libc} defaults"


def machine_info(device: torch.device, threads: int) -> Dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": threads, "device": device.type, "device_name": name,
            "python": platform.python_version(), "allocator": allocator()}


def machine_line(info: Dict[str, Any]) -> str:
    return (f"machine: CPU {info['cpu']} | {info['cores']} cores | torch {info['torch']} | "
            f"threads {info['threads']} | device {info['device']} ({info['device_name']}) | "
            f"allocator {info.get('allocator', 'not recorded')}")


# --------------------------------------------------------------------------


def available_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES),
                        help="cases to run (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes (the whole run < 30 s on one thread)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per measurement (default 5; 3 for 'large')")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: all cores)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--sweep-windows", type=int, nargs="+", default=None,
                        help="window sizes of the long case's sparse vs SDPA sweep (default "
                             "16 64 256 1024 2048; 16 64 256 with --quick)")
    parser.add_argument("--json", metavar="PATH", help="write every result to PATH")
    parser.add_argument("--markdown-from", metavar="JSON",
                        help="print the README table of a --json result and exit")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def no_interpreted_fused(device: torch.device) -> None:
    """On CPU, "auto" would pick the fused backend through Triton's interpreter
    when TRITON_INTERPRET is set (a test tool, not a backend to time): unset it."""
    if device.type == "cpu" and fused_available(device):
        os.environ["TRITON_INTERPRET"] = "0"
        say("note: TRITON_INTERPRET was set; set to 0 so 'auto' does not time the interpreter")
        if fused_available(device):
            sys.exit("TRITON_INTERPRET is set: unset it to benchmark on CPU")


def run(args: argparse.Namespace, device: torch.device, threads: int) -> None:
    sizes = QUICK if args.quick else FULL
    if args.sweep_windows:
        sizes = replace(sizes, sweep_windows=tuple(args.sweep_windows))
    info = machine_info(device, threads)
    say(machine_line(info))
    say(f"fp32, {HEADS} heads x {HEAD_CHANNELS} channels, input {IN_CHANNELS}, edge_dim "
        f"{EDGE_DIM} where edge features apply{', quick sizes' if args.quick else ''}")
    runners = {"molecules": case_molecules, "medium": case_medium, "large": case_large,
               "tokens": case_tokens, "long": case_long, "crossover": case_crossover,
               "edge-crossover": case_edge_crossover}
    results: Dict[str, Any] = {}
    started = time.perf_counter()
    for case in [c for c in CASES if c in args.cases]:
        repeats = args.repeats or (3 if case == "large" else 5)
        warmup = 1 if (args.quick or case == "large") else 2
        timing = Timing(device, warmup, repeats)
        say(f"\n== {case} (warm-up {warmup}, repeats {repeats}) ==")
        results[case] = runners[case](sizes, device, timing)
        say("")
        for group in results[case]["groups"]:
            say(group_table(group) + "\n")
        if "sweep" in results[case]:
            say(sweep_table(results[case]["sweep"]))
        if "dense_sweep" in results[case]:
            say(crossover_table(results[case]["dense_sweep"]))
        if "edge_sweep" in results[case]:
            say(edge_crossover_table(results[case]["edge_sweep"]))
        gc.collect()
    say(f"\n{machine_line(info)}")
    say(f"total {time.perf_counter() - started:.1f} s")
    if args.json:
        payload = {"machine": info, "args": vars(args), "sizes": sizes.__dict__, "cases": results}
        with open(args.json, "w") as fh:
            json.dump(payload, fh, indent=1)
        say(f"wrote {args.json}")


def markdown(results: Dict[str, Any]) -> str:
    """The README's table: every row of every group, ratios against the
    group's first peer, then the sweep's crossover."""
    m = results["machine"]
    out = [f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, "
           f"{m['threads']} threads, device {m['device_name']}, allocator "
           f"{m.get('allocator', 'not recorded')}.", "",
           "| case | method | backend | fwd ms | fwd+bwd ms | peak MB | speed-up fwd+bwd "
           "| memory vs peer |",
           "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    crossover = dense = edges = None
    for case in results["cases"].values():
        for group in case.get("groups", []):
            peer = next(r["method"] for r in group["rows"] if r["role"] == "peer")
            for r in group["rows"]:
                vs = r.get("vs", {}).get(peer) if r["role"] == "graphformer" else None
                peak = r["peak_bytes"] / 2**20 if r["peak_bytes"] is not None else None
                out.append("| {} | {} | {}{} | {:.1f} | {:.1f} | {} | {} | {} |".format(
                    group["name"], r["method"], r["backend"], " (auto)" if r["auto"] else "",
                    r["fwd_ms"], r["fwd_bwd_ms"], fmt(peak, ".0f"),
                    fmt(vs and vs["speedup_fwd_bwd"], ".2f", "×") if vs else "",
                    fmt(vs and vs["memory_ratio"], ".2f") if vs else ""))
        if case.get("sweep"):
            crossover = case["sweep"]
        dense = case.get("dense_sweep") or dense
        edges = case.get("edge_sweep") or edges
    if crossover is not None:
        pts = ", ".join(f"{p['density']:.4f}: {p['speedup_fwd_bwd']:.2f}×"
                        for p in crossover["points"])
        cd = crossover["crossover_density"]
        out += ["", f"Sparse vs dense masked SDPA, T = {crossover['seq_len']}, speed-up by "
                f"density E/T²: {pts}; crossover at density {density_text(cd)}."]
    if dense is not None:
        per_t = "; ".join(f"T = {c['seq_len']}: {density_text(c['crossover_density'])} (cost "
                          f"model {c['cost_model_crossover']:.3f})" for c in dense["curves"])
        out += ["", f"Dense vs {dense['other_backend']} (graphformer backends), crossover "
                f"density E/(B T²) by T: {per_t}."]
    if edges is not None:
        pts = ", ".join(
            f"{p['messages']}: {p['propagate_fwd_bwd_ms'] / p['fused_cpu_fwd_bwd_ms']:.2f}×"
            for p in edges["points"])
        cross = edges["crossover_messages"]
        out += ["", f"fused_cpu vs propagate with per-edge features, speed-up by E·H·C: {pts}; "
                f"crossover at {'none in range' if cross is None else f'{cross:.0f}'} (cost "
                f"model {edges['cost_model']})."]
    return "\n".join(out) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    if args.markdown_from:
        with open(args.markdown_from) as f:
            print(markdown(json.load(f)), end="")
        return
    device = torch.device(args.device)
    threads = args.threads or available_cores()
    torch.set_num_threads(threads)
    no_interpreted_fused(device)
    # gc.collect() runs between measurements; frozen, the objects of the
    # imported modules are not scanned each time (0.3 s a call otherwise).
    gc.collect()
    gc.freeze()
    try:
        run(args, device, threads)
    finally:
        gc.unfreeze()


if __name__ == "__main__":
    main()
