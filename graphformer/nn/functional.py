r"""Functional building blocks of attention over edge sets.

:func:`segment_softmax` normalises edge scores over each target node's incoming
edges:

.. math::
    \alpha_{e} = \frac{\exp(s_e - m_{i})}{\sum_{e' \to i} \exp(s_{e'} - m_{i})},
    \qquad m_i = \max_{e' \to i} s_{e'}

for every edge :math:`e = (j \to i)`. It is the one softmax of the package:
edges in any order (``index``: the target of each edge) are reduced by
scattering, with PyTorch's own ``scatter_reduce`` / ``index_add``
(``"native"``) or the optional ``torch-scatter`` package (``"scatter"``;
identical results): ``"auto"`` picks ``torch-scatter`` when it is installed,
except under :func:`torch.compile`, which cannot trace torch-scatter's custom
ops (:func:`softmax_implementation`). Edges grouped by target (``ptr``, as
in a CSR matrix) are reduced over contiguous segments
(``torch.segment_reduce``), in place, with a backward that keeps only the
weights: what the ``"sparse"`` attention backend uses.
"""
from __future__ import annotations

import importlib.util
from typing import Literal, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.compiler import is_compiling

from .cpu_kernels import define_op, dropout_threshold, kernels_available, seed_tensor

SoftmaxImplementation = Literal["auto", "native", "scatter"]
#: What :func:`segment_softmax`'s ``backend`` may be.
SOFTMAX_IMPLEMENTATIONS = ("auto", "native", "scatter")

HAS_TORCH_SCATTER = importlib.util.find_spec("torch_scatter") is not None


def softmax_implementation(name: str) -> str:
    """How :func:`segment_softmax` scatters for ``name``: ``"auto"`` becomes
    ``"scatter"`` (torch-scatter installed, not under :func:`torch.compile`)
    or ``"native"``; a name is checked.

    Raises:
        ValueError: on an unknown name.
        ImportError: for ``"scatter"`` without torch-scatter."""
    if name not in SOFTMAX_IMPLEMENTATIONS:
        raise ValueError(f"unknown softmax backend {name!r}; choose one of "
                         f"{SOFTMAX_IMPLEMENTATIONS}")
    if name == "auto":
        # torch-scatter's custom ops have no fake kernels, so torch.compile
        # cannot trace them: compiled code uses the native implementation.
        return "scatter" if HAS_TORCH_SCATTER and not is_compiling() else "native"
    if name == "scatter" and not HAS_TORCH_SCATTER:
        raise ImportError("softmax backend 'scatter' needs torch-scatter: "
                          "pip install --no-build-isolation torch-scatter "
                          "(or use backend='native')")
    return name


def _reduce_native(src: Tensor, index: Tensor, num_nodes: int, reduce: str) -> Tensor:
    shape = (num_nodes,) + tuple(src.shape[1:])
    idx = index.view(-1, *([1] * (src.dim() - 1))).expand_as(src)
    if reduce == "max":
        out = src.new_full(shape, float("-inf"))
        return out.scatter_reduce(0, idx, src, reduce="amax", include_self=True)
    return src.new_zeros(shape).index_add(0, index, src)


def _reduce_scatter(src: Tensor, index: Tensor, num_nodes: int, reduce: str) -> Tensor:
    import torch_scatter

    index = index.long()      # torch-scatter takes int64 indices only
    if reduce == "max":
        # torch-scatter fills empty segments with 0; those rows are never read.
        return torch_scatter.scatter_max(src, index, dim=0, dim_size=num_nodes)[0]
    return torch_scatter.scatter_add(src, index, dim=0, dim_size=num_nodes)


def segment_softmax(src: Tensor, index: Optional[Tensor] = None,
                    num_nodes: Optional[int] = None, *, ptr: Optional[Tensor] = None,
                    dim: int = 0, backend: SoftmaxImplementation = "auto") -> Tensor:
    r"""Softmax of edge scores over the incoming edges of each target node.

    Args:
        src (Tensor): scores with the edges along ``dim``, e.g. ``[E, H]``
            for H heads (``dim=0``) or ``[H, E]`` (``dim=1``). Entries equal
            to ``-inf`` are masked out (weight 0).
        index (LongTensor [E], optional): target node of each edge; needed
            without ``ptr``, and with it saves expanding ``ptr``.
        num_nodes (int, optional): number of target nodes (default:
            ``index.max() + 1``, or ``ptr.numel() - 1``).
        ptr (LongTensor [N + 1], optional): the edges are grouped by target,
            those into target ``i`` at ``ptr[i]:ptr[i + 1]`` along ``dim``:
            reduced over contiguous segments, in place, and backward keeps
            only the weights (``backend`` is not used then).
        dim (int): the edge dimension of ``src``.
        backend (str): how to scatter without ``ptr``: ``"auto"``,
            ``"native"`` or ``"scatter"`` (:func:`softmax_implementation`).

    Returns:
        Tensor of the shape and dtype of ``src``: for every target node and
        other index the weights of its edges sum to 1, or are all 0 when
        every one of its scores is ``-inf``. Never NaN for finite or ``-inf``
        input.

    The maximum is subtracted before ``exp`` and the sums accumulate in
    float32 for float16 / bfloat16 input, so large logits neither overflow
    nor lose the normaliser's precision.
    """
    dim = dim % src.dim() if src.dim() else 0
    if ptr is not None:
        if num_nodes is not None and num_nodes != ptr.numel() - 1:
            raise ValueError(f"'num_nodes' is {num_nodes} but 'ptr' has {ptr.numel()} entries "
                             f"(num_nodes + 1 expected)")
        if index is None:
            index = torch.repeat_interleave(torch.arange(ptr.numel() - 1, device=ptr.device),
                                            ptr.diff(), output_size=src.size(dim))
        x = src.float() if src.dtype in (torch.float16, torch.bfloat16) else src
        return _CSRSoftmax.apply(x, ptr, index, dim).to(src.dtype)
    if index is None:
        raise ValueError("segment_softmax needs 'index' (the target of each edge) or 'ptr' "
                         "(edges grouped by target)")
    if dim != 0:
        return segment_softmax(src.movedim(dim, 0), index, num_nodes,
                               backend=backend).movedim(0, dim)
    reduce = _reduce_scatter if softmax_implementation(backend) == "scatter" else _reduce_native
    if num_nodes is None:
        num_nodes = int(index.max()) + 1 if index.numel() > 0 else 0
    x = src.float() if src.dtype in (torch.float16, torch.bfloat16) else src
    with torch.no_grad():  # softmax is invariant to the shift: no gradient needed
        shift = reduce(x.detach(), index, num_nodes, "max")
        shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    e = (x - shift.index_select(0, index)).exp()
    denom = reduce(e, index, num_nodes, "sum").index_select(0, index)
    out = e / torch.where(denom > 0, denom, torch.ones_like(denom))
    return out.to(src.dtype)


class _CSRSoftmax(torch.autograd.Function):
    """:func:`segment_softmax` of edges grouped by target (``ptr``) along
    ``axis``, with a backward that needs only the weights. Differentiable
    twice: under ``create_graph=True`` the backward is made of
    differentiable operations (in place otherwise)."""

    @staticmethod
    def forward(ctx, scores: Tensor, ptr: Tensor, row: Tensor, axis: int) -> Tensor:
        offsets = ptr.expand(*scores.shape[:axis], -1)
        shift = torch.segment_reduce(scores, "max", offsets=offsets, axis=axis)  # [.., N, ..]
        shift.masked_fill_(~torch.isfinite(shift), 0.0)   # empty or all-masked rows
        out = shift.index_select(axis, row)                                     # [.., E, ..]
        torch.sub(scores, out, out=out).exp_()
        denom = torch.segment_reduce(out, "sum", offsets=offsets, axis=axis)
        denom.masked_fill_(denom == 0, 1.0)               # all weights 0 there
        out.div_(denom.index_select(axis, row))
        ctx.save_for_backward(out, ptr, row)
        ctx.axis = axis
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        alpha, ptr, row = ctx.saved_tensors
        axis = ctx.axis
        # d s_e = α_e (g_e - Σ_{e' → i} α_e' g_e')
        out = grad * alpha
        dot = torch.segment_reduce(out, "sum", offsets=ptr.expand(*alpha.shape[:axis], -1),
                                   axis=axis)
        if torch.is_grad_enabled():     # create_graph: α and g may be part of a graph
            return out - dot.index_select(axis, row) * alpha, None, None, None
        out.sub_(dot.index_select(axis, row).mul_(alpha))
        return out, None, None, None


#: Resolution of :func:`dropout`'s drop probability: masks come from 16-bit
#: random integers, so p is rounded to a multiple of 2^-16.
DROPOUT_BITS = 16


#: ``torch.ops.graphformer.hashed_dropout(x, seed, threshold, scale)``:
#: :func:`dropout`'s C++ kernel (float32 / float64 on the CPU; ``seed`` int64
#: [1], ``threshold`` of :data:`DROPOUT_BITS` bits, ``scale`` the kept
#: entries' factor), on a contiguous copy of ``x``. Its own backward: the same
#: decisions, recomputed from the seed, on the gradient.
_HASHED_DROPOUT = define_op("hashed_dropout",
                           "(Tensor x, Tensor seed, SymInt threshold, float scale) -> Tensor")


@torch.library.register_fake(_HASHED_DROPOUT)
def _(x: Tensor, seed: Tensor, threshold: int, scale: float) -> Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _save_seed(ctx, inputs, output) -> None:
    x, seed, threshold, scale = inputs
    ctx.save_for_backward(x, seed)
    ctx.consts = (threshold, scale)


def _hashed_dropout_backward(ctx, grad: Tensor):
    _, seed = ctx.saved_tensors
    return torch.ops.graphformer.hashed_dropout(grad, seed, *ctx.consts), None, None, None


torch.library.register_autograd(_HASHED_DROPOUT, _hashed_dropout_backward,
                                setup_context=_save_seed)


#: ``torch.ops.graphformer.gelu_dropout(x, seed, threshold, scale)``:
#: :func:`gelu_dropout`'s C++ kernel, one pass (the decisions of
#: ``hashed_dropout`` for the same seed).
_GELU_DROPOUT = define_op("gelu_dropout",
                         "(Tensor x, Tensor seed, SymInt threshold, float scale) -> Tensor")


@torch.library.register_fake(_GELU_DROPOUT)
def _(x: Tensor, seed: Tensor, threshold: int, scale: float) -> Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


#: ``torch.ops.graphformer.gelu_dropout_backward(grad, x, seed, threshold,
#: scale)``: the gradient of ``gelu_dropout`` at ``x`` (keeps no mask: the seed).
_GELU_DROPOUT_BACKWARD = define_op(
    "gelu_dropout_backward",
    "(Tensor grad, Tensor x, Tensor seed, SymInt threshold, float scale) -> Tensor")


@torch.library.register_fake(_GELU_DROPOUT_BACKWARD)
def _(grad: Tensor, x: Tensor, seed: Tensor, threshold: int, scale: float) -> Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _gelu_dropout_backward(ctx, grad: Tensor):
    x, seed = ctx.saved_tensors
    if torch.is_grad_enabled():
        # create_graph: the same decisions (hashed_dropout) through PyTorch's
        # GELU gradient, both differentiable
        kept = torch.ops.graphformer.hashed_dropout(grad, seed, *ctx.consts)
        return torch.ops.aten.gelu_backward(kept, x), None, None, None
    dx = torch.ops.graphformer.gelu_dropout_backward(grad, x, seed, *ctx.consts)
    return dx, None, None, None


torch.library.register_autograd(_GELU_DROPOUT, _gelu_dropout_backward, setup_context=_save_seed)


def dropout(x: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    r"""Inverted dropout, as :func:`torch.nn.functional.dropout`, with cheaper
    random decisions on the CPU.

    Each entry is kept with probability :math:`1 - p'` and scaled by
    :math:`1 / (1 - p')`, so the expectation is exactly ``x``; :math:`p' =
    \operatorname{round}(p \cdot 2^{16}) / 2^{16}` (:data:`DROPOUT_BITS`), within
    :math:`8 \cdot 10^{-6}` of ``p``. PyTorch's CPU dropout draws one
    Bernoulli variate per entry and keeps a mask, which costs more than the
    rest of a small transformer block. On the CPU, for float32 and float64,
    this is one pass of a C++ kernel (:mod:`graphformer.nn.cpu_kernels`): four
    entries' decisions are 16-bit slices of one SplitMix64 hash of a seed
    and the entry's position, and backward recomputes them from the seed (no
    mask is kept). Without the kernels (not built) the decisions are
    16-bit slices of 64-bit random integers from PyTorch. On CUDA it is
    :func:`torch.nn.functional.dropout`. The kernel is a custom op
    (``torch.ops.graphformer.hashed_dropout``), so :func:`torch.compile`
    traces it (no graph break). The seed
    comes from the default generator (``torch.manual_seed`` makes runs
    reproducible).
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if not training or p == 0.0 or x.numel() == 0:
        return x
    if x.device.type != "cpu":
        return torch.nn.functional.dropout(x, p, training=True)
    threshold, scale = dropout_threshold(p, DROPOUT_BITS)
    if threshold >= 1 << DROPOUT_BITS:     # every entry dropped
        return x * 0.0
    if x.dtype in (torch.float32, torch.float64) and kernels_available():
        return torch.ops.graphformer.hashed_dropout(x, seed_tensor(), threshold, scale)
    n = x.numel()
    draws = torch.randint(-2**63, 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64,
                          device=x.device)
    keep = draws.view(torch.int16)[:n].view(x.shape) >= threshold - (1 << DROPOUT_BITS) // 2
    return x * keep.to(x.dtype).mul_(scale)


def gelu_dropout(x: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    r""":func:`dropout` of :func:`torch.nn.functional.gelu` (exact, erf form):
    :math:`\mathrm{Dropout}(\tfrac{x}{2}(1 + \operatorname{erf}(x / \sqrt{2})))`.

    On the CPU in training, for float32 and float64 with the C++ kernels, one
    pass forward and one backward instead of three each, with the dropout
    decisions :func:`dropout` makes for the same seed (so the two spellings
    agree to float rounding). Elsewhere it is the two functions in turn.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if training and 0.0 < p and x.numel() and x.device.type == "cpu" \
            and x.dtype in (torch.float32, torch.float64) and kernels_available():
        threshold, scale = dropout_threshold(p, DROPOUT_BITS)
        if threshold < 1 << DROPOUT_BITS:  # else p rounds to 1: dropout below zeroes all
            return torch.ops.graphformer.gelu_dropout(x, seed_tensor(), threshold, scale)
    return dropout(torch.nn.functional.gelu(x), p, training)


class _LinearsOfOneInput(torch.autograd.Function):
    """:func:`linears_of_one_input`: the products as ``F.linear``; backward
    adds the input's gradients into one buffer (``addmm_``) instead of
    autograd's out-of-place sums of one product per output. Differentiable
    twice (the backward is made of differentiable operations)."""

    @staticmethod
    def forward(ctx, x: Tensor, *params: Optional[Tensor]):
        weights, biases = params[0::2], params[1::2]
        ctx.save_for_backward(x, *weights)
        ctx.biased = tuple(b is not None for b in biases)
        return tuple(torch.nn.functional.linear(x, w, b) for w, b in zip(weights, biases))

    @staticmethod
    def backward(ctx, *grads: Optional[Tensor]):
        x, *weights = ctx.saved_tensors
        dx = None
        if ctx.needs_input_grad[0]:
            for g, w in zip(grads, weights):
                if g is not None:
                    dx = g.mm(w) if dx is None else dx.addmm_(g, w)
        out = [dx]
        for i, (g, biased) in enumerate(zip(grads, ctx.biased)):
            need_w, need_b = ctx.needs_input_grad[1 + 2 * i:3 + 2 * i]
            out.append(g.t().mm(x) if g is not None and need_w else None)
            out.append(g.sum(0) if g is not None and biased and need_b else None)
        return tuple(out)


def linears_of_one_input(x: Tensor, weights: Sequence[Tensor],
                         biases: Sequence[Optional[Tensor]]) -> Tuple[Tensor, ...]:
    r"""The products :math:`\mathbf{y}_i = \mathbf{x}\mathbf{W}_i^\top +
    \mathbf{b}_i` of one input ``x [N, F]`` with several weights ``W_i [F_i,
    F]`` (biases ``b_i [F_i]`` or None): what ``Linear`` modules applied to
    the same ``x`` give, with one difference in backward, where the input's
    gradient :math:`\sum_i \partial\mathbf{y}_i\,\mathbf{W}_i` is accumulated
    in one buffer instead of one product per output and out-of-place sums
    (an attention layer's queries, keys and values from the same nodes:
    two [N, F] additions and their fresh buffers fewer). Outside autocast
    only (its casts belong to each product); there, apply the modules."""
    if x.dim() != 2 or len(weights) != len(biases):
        raise ValueError(f"linears_of_one_input takes x [N, F] and one bias (or None) per "
                         f"weight, got x of shape {list(x.shape)}, {len(weights)} weights "
                         f"and {len(biases)} biases")
    params = [p for pair in zip(weights, biases) for p in pair]
    return _LinearsOfOneInput.apply(x, *params)
