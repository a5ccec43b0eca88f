r"""The attention backends: one registry (name → implementation, availability
per device), the choice among them, and what each will cost.

Five backends compute the same attention (to float tolerance, forward and
backward); :data:`REGISTRY` maps each name to a :class:`Backend` (its
function, where it runs, what it needs):

- ``"sparse"`` (:func:`graphformer.nn.sparse.sparse_attention`): edges
  grouped by target, SDDMM and SpMM; time and memory linear in E. Any edge
  set, any device.
- ``"dense"`` (:func:`graphformer.nn.dense.dense_attention`): graphs padded to
  T nodes, the edge set a mask; time :math:`O(B H T^2 C)` whatever E.
  Self-attention within graphs (``batch`` given, or one graph); named for
  other input (bipartite, an unsorted ``batch``, an edge joining two
  graphs, duplicate edges with edge features) it raises ``ValueError``
  saying why (``"auto"`` does not pick it there).
- ``"fused"`` (:func:`graphformer.nn.fused.fused_backend`): a Triton kernel
  streaming each target's edges with an online softmax; CUDA only (or the
  Triton interpreter for testing); no attention dropout. ``"auto"`` picks
  it only once its tests have passed on a real GPU
  (:mod:`graphformer.nn.fused_record`, written by ``scripts/gpu_check.py``);
  until then it runs when named.
- ``"fused_cpu"`` (:func:`graphformer.nn.fused_cpu.fused_cpu_backend`): the
  same idea on the CPU, as C++ kernels (:mod:`graphformer.nn.cpu_kernels`,
  built on first use), with attention dropout (a counter-based hash) and
  the typed edge terms read per edge from node-by-type tables; needs a C++
  compiler (``GRAPHFORMER_CPU_KERNELS=0`` turns it off).
- ``"propagate"``: the calling layer's PyG ``MessagePassing.propagate`` with
  per-edge messages (E×H×C tensors). Slowest; used in PyG's explain mode,
  which hooks into message passing (whatever backend the layer names: the
  explainer's edge mask applies there only, in the caller's edge order),
  and under :func:`torch.compile` where ``"fused_cpu"`` does not apply.

Every backend has one signature: it takes an :class:`AttentionCall` (the
projected queries, keys and values, the :class:`~graphformer.nn.EdgeSet`, its
edge terms, head mask and dropout) and returns ``(out [N_t, H, C], alpha
[E, H] or None)``. :func:`resolve_backend` is the one place where a layer's
``backend`` setting becomes a backend name; ``"auto"`` follows this cost
model (:func:`choose_backend`), in order:

1. in PyG explain mode, or without an :class:`~graphformer.nn.EdgeSet`
   under :func:`torch.compile`: ``"propagate"``; under :func:`torch.compile`
   with an :class:`~graphformer.nn.EdgeSet`: ``"fused_cpu"`` where rule 4
   picks it (typed edges on the CPU, kernels built; its kernels are custom
   ops, traced without a graph break), else ``"propagate"`` (the rules
   below read the edge set's padded layout, whose sizes depend on the data);
2. on CUDA with Triton, without attention dropout in training, once the
   fused kernel's tests have passed on a GPU
   (:func:`~graphformer.nn.fused_record.fused_verified`): ``"fused"``;
3. with per-edge features (not typed edges: their terms cost no per-edge
   projection) on CPU, when the per-edge messages are small
   (E·H·C ≤ :data:`PROPAGATE_BELOW`, or :data:`PROPAGATE_BELOW_FUSED_CPU`
   where the C++ kernels are built): ``"propagate"`` — at that size the
   other backends' extra steps cost more than the E×H×C tensors they avoid
   (``scripts/bench_attention.py``, molecule and edge-crossover cases);
4. with typed edges on CPU: ``"fused_cpu"`` when its kernels are built
   (1.0-1.3× the sparse backend's whole training step on Lipophilicity
   batches and 1.3× on ESOL's, and 1.5× for one layer's attention,
   ``scripts/bench_training.py --backends auto sparse``; the README has the
   figures), else ``"sparse"`` — their edge terms are [E, H] gathers, and
   the dense backend's explicit softmax over padded blocks is slower;
5. ``"dense"`` when it is applicable (self-attention, graphs contiguous in
   ``batch``, no duplicate edges when edge features are used), the padded
   density :math:`\rho = E / (B T^2)` is at least the measured crossover
   (:func:`dense_crossover`: below it the backend of rule 6 is faster, see
   ``scripts/bench_attention.py``), and the dense score tensor stays under
   :data:`DENSE_MAX_SCORES` entries;
6. otherwise, on CPU, ``"fused_cpu"`` when its kernels are built (1.05-1.9×
   the sparse backend's forward and backward in ``scripts/bench_attention.py``:
   random graphs of 200k and 1M edges with and without edge features, a
   window and strided heads over 8,192 tokens; level with it at 1M edges with
   edge features when freed memory is kept); else ``"sparse"``.

An explicitly named backend runs as asked, unchecked: one that cannot run on
the tensors' device raises its own reason (``"fused"``: no CUDA or Triton;
``"fused_cpu"``: why the kernels are unavailable). :attr:`Backend.requires`
says in words what each needs, :func:`available_backends` which run here.

:func:`estimate` predicts FLOPs and peak memory of one layer call for a batch
and backend; ``scripts/bench_attention.py`` checks it against measurements.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Callable, Dict, Literal, Mapping, Optional, Sequence, Tuple

import torch

from .call import AttentionCall, BackendFn
from .dense import dense_attention
from .fused import fused_available, fused_backend
from .fused_cpu import fused_cpu_available, fused_cpu_backend
from .fused_record import fused_verified
from .sparse import sparse_attention

if TYPE_CHECKING:  # imported for annotations only
    from .edge_set import EdgeSet

__all__ = ["AttentionCall", "Backend", "REGISTRY", "ATTENTION_BACKENDS", "AttentionBackend",
           "get_backend", "available_backends", "resolve_backend", "choose_backend",
           "estimate", "AttentionCost", "DENSE_CROSSOVER", "FUSED_CPU_CROSSOVER",
           "dense_crossover", "PROPAGATE_BELOW", "PROPAGATE_BELOW_FUSED_CPU",
           "DENSE_MAX_SCORES"]


@dataclass(frozen=True)
class Backend:
    """One attention backend of :data:`REGISTRY`.

    Attributes:
        name (str): what ``backend=`` names it.
        run (callable): an :class:`AttentionCall` in, ``(out [N_t, H, C],
            alpha [E, H] or None)`` out.
        available (callable): ``available(device)``: whether it can run on
            tensors of ``device`` here (may build the CPU kernels on first use).
        requires (str): what it needs, for messages and documentation.
    """
    name: str
    run: BackendFn
    available: Callable[[torch.device], bool]
    requires: str

    def __post_init__(self) -> None:
        if not self.name or self.name == "auto":
            raise ValueError(f"a backend needs a name other than 'auto', got {self.name!r}")
        if not callable(self.run) or not callable(self.available):
            raise TypeError(f"backend {self.name!r}: 'run' and 'available' must be callable")


def _anywhere(device: torch.device) -> bool:
    return True


def _message_passing(call: AttentionCall) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The ``"propagate"`` backend: the calling layer's own message passing."""
    if call.message_passing is None:
        raise ValueError("the 'propagate' backend runs the calling layer's message passing: "
                         "AttentionCall.message_passing is None")
    return call.message_passing(call)


_BACKENDS: Dict[str, Backend] = {b.name: b for b in (
    Backend("sparse", sparse_attention, _anywhere, "any device"),
    Backend("dense", dense_attention, _anywhere,
            "any device; self-attention within graphs (else it runs 'sparse')"),
    Backend("fused", fused_backend, fused_available,
            "a CUDA device and triton (on the CPU: TRITON_INTERPRET=1, for testing); no "
            "attention dropout in training; 'auto' picks it only once its tests have passed "
            "on a GPU (scripts/gpu_check.py)"),
    Backend("fused_cpu", fused_cpu_backend, fused_cpu_available,
            "the CPU, float32 or float64, and the C++ kernels built (a C++ compiler and ninja; "
            "GRAPHFORMER_CPU_KERNELS=0 turns them off)"),
    Backend("propagate", _message_passing, _anywhere,
            "any device; a message-passing layer (RelationalAttention)"),
)}
#: The attention backends by name, in the order of the module documentation
#: (read-only; :func:`get_backend` reads the dict behind it, which
#: :func:`torch.compile` traces where a mapping proxy would break the graph).
REGISTRY: Mapping[str, Backend] = MappingProxyType(_BACKENDS)

AttentionBackend = Literal["auto", "sparse", "dense", "fused", "fused_cpu", "propagate"]
#: What a layer's ``backend`` may be: ``"auto"`` or a name of :data:`REGISTRY`.
ATTENTION_BACKENDS: Tuple[str, ...] = ("auto", *REGISTRY)


def get_backend(name: str) -> Backend:
    """The :class:`Backend` called ``name``.

    Raises:
        ValueError: for a name not in :data:`REGISTRY` (``"auto"`` included:
            :func:`resolve_backend` turns it into a name)."""
    try:
        return _BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown attention backend {name!r}; choose one of "
                         f"{ATTENTION_BACKENDS}") from None


def available_backends(device: torch.device) -> Tuple[str, ...]:
    """The names of the backends that can run on tensors of ``device`` here."""
    device = torch.device(device)
    return tuple(name for name, backend in REGISTRY.items() if backend.available(device))


#: Padded edge density E / (B T^2) above which the dense backend is faster
#: than the sparse one. CPU: the crossover ``scripts/bench_attention.py``
#: measures (the README's benchmark section has the figures). CUDA: a guess,
#: not yet measured (no GPU was available).
DENSE_CROSSOVER = {"cpu": 0.08, "cuda": 0.05}

#: On the CPU with the C++ kernels: the padded density above which the dense
#: backend is faster than ``"fused_cpu"``, by the padded graph size T, as
#: ``(T, density)`` pairs measured with 8 heads x 32 channels, fwd+bwd, on a
#: 2-core Xeon: T = 64 to 2,048 by ``scripts/bench_attention.py --cases
#: crossover``; T = 25 (molecules with all pairs: no crossover below full
#: density) and T = 4,096 (one sequence, causal windows) by hand. The
#: kernels cost about the same per edge at any T while the dense products
#: get cheaper per padded cell as T grows, so the crossover falls with T.
FUSED_CPU_CROSSOVER: Tuple[Tuple[int, float], ...] = (
    (25, 1.0), (64, 0.66), (128, 0.47), (512, 0.28), (2048, 0.2), (4096, 0.14))


def dense_crossover(device: torch.device, max_nodes: int, fused_cpu: bool = False) -> float:
    """The padded density at and above which ``"auto"`` picks the dense
    backend: against ``"fused_cpu"`` (``fused_cpu``: on the CPU with the
    kernels built) :data:`FUSED_CPU_CROSSOVER` interpolated linearly in
    log T (held at its ends beyond them); otherwise :data:`DENSE_CROSSOVER`
    of the device type."""
    if not (fused_cpu and device.type == "cpu"):
        return DENSE_CROSSOVER.get(device.type, DENSE_CROSSOVER["cuda"])
    points = FUSED_CPU_CROSSOVER
    T = max(int(max_nodes), 1)
    if T <= points[0][0]:
        return points[0][1]
    for (t0, d0), (t1, d1) in zip(points, points[1:]):
        if T <= t1:
            w = math.log(T / t0) / math.log(t1 / t0)
            return d0 + w * (d1 - d0)
    return points[-1][1]


#: With edge features on CPU, message passing (``"propagate"``) is fastest up
#: to this many elements of one per-edge message tensor (E·H·C), where the
#: C++ kernels are not built.
PROPAGATE_BELOW = 1 << 22

#: The same where they are: ``"fused_cpu"`` runs the block with per-edge
#: features as one op, faster than message passing from about 220,000
#: elements (molecule batches of 25 atoms, 256 channels, 64 features: equal
#: at about 880 edges; ``scripts/bench_attention.py --cases edge-crossover``
#: measured 220,758 at commit ff97ea8, 385,628 before the value term moved
#: into the kernels' pass).
PROPAGATE_BELOW_FUSED_CPU = 7 << 15

#: The dense backend is not chosen automatically when its [B, H, T, T] score
#: tensor would have more entries than this (2^27: 512 MiB in float32).
DENSE_MAX_SCORES = 1 << 27


def padded_density(num_edges: int, num_graphs: int, max_nodes: int) -> float:
    """E / (B T^2): the share of the padded score tensor that holds edges."""
    cells = num_graphs * max_nodes * max_nodes
    return num_edges / cells if cells > 0 else 0.0


def prefers_propagate(*, num_edges: int, channels: int, device: torch.device,
                      edge_features: bool, fused_cpu: bool = False) -> bool:
    """Rule 3 of the cost model: small per-edge messages with edge features
    on CPU (smaller where ``fused_cpu``, the C++ kernels, can run)."""
    below = PROPAGATE_BELOW_FUSED_CPU if fused_cpu else PROPAGATE_BELOW
    return edge_features and device.type == "cpu" and num_edges * channels <= below


def choose_backend(*, num_edges: int, num_graphs: int, max_nodes: int, heads: int,
                   device: torch.device, dense_ok: bool, fused_ok: bool,
                   dropout_active: bool, edge_features: bool = False,
                   channels: int = 0, typed_edges: bool = False,
                   fused_cpu_ok: bool = False) -> str:
    """The backend ``"auto"`` picks (see the module documentation);
    ``channels`` is H·C, ``edge_features`` means features per edge,
    ``typed_edges`` features per edge type, ``fused_ok`` that the fused
    GPU kernel runs here and has passed its tests on a GPU, ``fused_cpu_ok``
    that the CPU kernels are built."""
    if fused_ok and device.type == "cuda" and not dropout_active:
        return "fused"
    fused_cpu = fused_cpu_ok and device.type == "cpu"
    if prefers_propagate(num_edges=num_edges, channels=channels, device=device,
                         edge_features=edge_features, fused_cpu=fused_cpu):
        return "propagate"
    if typed_edges and device.type == "cpu":
        return "fused_cpu" if fused_cpu else "sparse"
    if dense_ok:
        crossover = dense_crossover(device, max_nodes, fused_cpu)
        scores = num_graphs * heads * max_nodes * max_nodes
        if (scores <= DENSE_MAX_SCORES
                and padded_density(num_edges, num_graphs, max_nodes) >= crossover):
            return "dense"
    return "fused_cpu" if fused_cpu else "sparse"


#: the backends that cannot be traced by torch.compile, and why
NOT_COMPILABLE = {"sparse": "dynamo cannot trace PyTorch's sparse CSR products (sparse CSR "
                            "tensors have no strides)"}


def resolve_backend(requested: str, edges: Optional["EdgeSet"], *, heads: int, channels: int,
                    device: torch.device, per_edge_features: bool, has_terms: bool,
                    dropout_active: bool, traced: bool, compiling: bool = False) -> str:
    """The backend a layer call runs: ``requested`` unless it is ``"auto"``,
    then the cost model's choice (:func:`choose_backend`) among the backends
    :data:`REGISTRY` says are available on ``device``. ``traced`` is true in
    PyG's explain mode, which hooks into message passing (its edge mask
    applies there only): ``"propagate"`` whatever was requested, as every
    backend gives the same result. ``compiling`` under :func:`torch.compile`;
    ``edges`` may be None only in one of the two."""
    if traced:
        return "propagate"
    if requested != "auto":
        name = get_backend(requested).name
        if compiling and name in NOT_COMPILABLE:
            raise RuntimeError(f"backend={name!r} does not run under torch.compile: "
                               f"{NOT_COMPILABLE[name]}; compile with backend 'auto', "
                               f"'fused_cpu' or 'propagate'")
        return name
    if edges is None:
        return "propagate"
    typed_edges = has_terms and not per_edge_features
    if compiling:
        # the cost model reads the edge set's padded layout, whose sizes
        # depend on the data: compiled code takes rule 4 or message passing
        if typed_edges and device.type == "cpu" and get_backend("fused_cpu").available(device):
            return "fused_cpu"
        return "propagate"
    layout = edges.layout
    dense_ok = layout is not None and (edges.coalesced or not has_terms)
    B, T = (layout.num_graphs, layout.max_nodes) if dense_ok else (1, edges.num_dst)
    return choose_backend(num_edges=edges.num_edges, num_graphs=B, max_nodes=T, heads=heads,
                          device=device, dense_ok=dense_ok,
                          fused_ok=fused_verified() and get_backend("fused").available(device),
                          dropout_active=dropout_active, edge_features=per_edge_features,
                          channels=channels, typed_edges=typed_edges,
                          fused_cpu_ok=get_backend("fused_cpu").available(device))


@dataclass(frozen=True)
class AttentionCost:
    """What one call of an attention layer will need.

    Attributes:
        backend (str): the backend the estimate is for.
        flops (int): floating-point operations (a multiply-add counts 2),
            forward, plus backward when ``training``.
        peak_bytes (int): memory allocated at the peak beyond the inputs
            and parameters (activations kept for backward, the largest
            transient, and gradients of the inputs).
    """

    backend: str
    flops: int
    peak_bytes: int


def estimate(layer: torch.nn.Module, *, num_nodes: int, num_edges: int,
             graph_sizes: Optional[Sequence[int]] = None, backend: str = "auto",
             training: bool = True, device: str = "cpu",
             dtype: torch.dtype = torch.float32) -> AttentionCost:
    r"""FLOPs and peak memory of one call of ``layer`` (a
    :class:`~graphformer.nn.RelationalAttention`) on a batch, before running it.

    Args:
        layer: the layer (its channels, heads, edge_dim are read).
        num_nodes (int): N. num_edges (int): E.
        graph_sizes (sequence of int, optional): nodes per graph (default: one
            graph of N nodes); the dense backend pads to the largest.
        backend (str): ``"sparse"``, ``"dense"``, ``"fused"``, ``"fused_cpu"``,
            ``"propagate"`` or ``"auto"`` (the choice of :func:`choose_backend`
            for this shape, without torch.compile; on the CPU it asks whether
            the C++ kernels are built, which builds them on first use, as the
            layer's first call would).
        training (bool): forward and backward (True) or forward only.

    The model counts the matrix products of the projections and of the
    attention, and the tensors each backend keeps: sparse keeps E×H scores and
    node-sized tensors; dense keeps B×H×T×T scores; propagate keeps several
    E×H×C messages. Index tensors (int64 / int32) are included.
    """
    H, C = layer.heads, layer.head_channels
    D = layer.edge_dim if layer.lin_edge_q is not None else 0
    in_ch = layer.in_channels if isinstance(layer.in_channels, int) else layer.in_channels[0]
    in_ch = max(int(in_ch), 1) if in_ch != -1 else H * C
    out_ch = layer.out_channels
    N, E = int(num_nodes), int(num_edges)
    sizes = list(graph_sizes) if graph_sizes is not None else [N]
    B, T = len(sizes), max(sizes) if sizes else 0
    s = torch.finfo(dtype).bits // 8
    HC = H * C
    if backend == "auto":
        backend = choose_backend(num_edges=E, num_graphs=B, max_nodes=T, heads=H,
                                 device=torch.device(device), dense_ok=True,
                                 fused_ok=(device != "cpu"), dropout_active=False,
                                 edge_features=bool(D), channels=HC,
                                 fused_cpu_ok=get_backend("fused_cpu").available(
                                     torch.device(device)))
    mult = 3 if training else 1         # backward costs about twice the forward
    proj_flops = 2 * N * in_ch * 3 * HC + 2 * N * HC * out_ch
    edge_flops = 0
    if D:
        # W_ke^T q and W_qe^T k (node level), the bilinear term (two E×D×HC
        # products, recomputed in backward), the regrouped value sum.
        edge_flops = 2 * 2 * N * HC * D + 2 * 2 * E * D * HC + 2 * 3 * E * H * D \
            + 2 * N * HC * D
    node_act = N * HC * s                                 # one [N, H, C] tensor
    index_bytes = 3 * E * 8                               # CSR of the edge set
    if backend == "dense":
        cells = B * H * T * T
        padded = B * H * T * C * s                        # one padded [B, H, T, C]
        attn_flops = 2 * 2 * cells * C
        if D:   # explicit softmax: scores, weights and their gradients kept
            keep = 3 * padded + 3 * cells * s + B * T * T
            transient = 2 * cells * s
        else:   # scaled_dot_product_attention keeps only a log-sum-exp per row
            keep = 4 * padded + B * T * T
            transient = 8 * B * T * T + 2 * padded        # edge counts, SDPA blocks
    elif backend == "propagate":
        attn_flops = 2 * 2 * E * HC
        keep = 5 * E * HC * s + 4 * E * H * s
        transient = 2 * E * HC * s
    else:                                                 # sparse, fused, fused_cpu
        attn_flops = 2 * 2 * E * HC
        transient = 3 * N * HC * s
        if backend == "sparse":   # scores, softmax terms; transposed CSR, head blocks
            keep = 10 * E * H * s
            index_bytes += 2 * E * 8 + 4 * H * E * 4
        elif backend == "fused_cpu":   # weights; grouping by source; ds, g_edge [E, 2, H]
            keep = 2 * E * H * s
            index_bytes += 2 * E * 8
            transient += 3 * E * H * s
        else:
            keep = 2 * E * H * s
    if D and backend == "fused_cpu":
        # the block as one op (C++ kernels, node tables and the value sums
        # made and projected in their passes): the bias, its gradient and the
        # quadratic form's gradient in the features' order [E, H]
        transient += 3 * E * H * s
    elif D and backend != "propagate":
        # per-edge projections of the bilinear term: kept whole when small,
        # else one chunk at a time (graphformer.nn.edge_terms.ChunkedEdgeScores)
        whole = E * 2 * HC
        chunk = whole if whole <= (1 << 24) else min(E, (1 << 23) // max(4 * HC, 1)) * 2 * HC
        transient += 2 * chunk * s + 3 * H * N * D * s
    keep += 6 * node_act + N * out_ch * s
    grads = (3 * node_act + (E * D * s if D else 0)) if training else 0
    flops = mult * (proj_flops + attn_flops + edge_flops)
    peak = keep + transient + grads + index_bytes
    return AttentionCost(backend=backend, flops=int(flops), peak_bytes=int(peak))
