"""Second derivatives (``create_graph=True``, then a derivative of the
gradient: gradient penalties, force matching, Hessian-vector products) are
right or refused, never silently wrong: every backend either gives the
second derivative that PyTorch's autograd gives through the ``propagate``
backend, or raises an error that names the function and the way to it.
First derivatives stay right under ``create_graph=True`` on every backend.
"""
import re

import pytest
import torch

from graphformer import patterns as P
from graphformer.nn import RelationalAttention
from graphformer.nn import csr as C
from graphformer.nn.cpu_kernels import dropout_threshold, kernels_available
from graphformer.nn.functional import DROPOUT_BITS, segment_softmax
from tests.helpers import ptr_of

SIZES = [5, 1, 4]
IN, OUT, H = 6, 6, 2
REFUSED = r"second derivative|not implemented|derivative for"
needs_kernels = pytest.mark.skipif(not kernels_available(), reason="no CPU kernels")


def _inputs(edge_dim, typed=False):
    ptr = ptr_of(SIZES)
    batch = torch.repeat_interleave(torch.arange(len(SIZES)), ptr.diff())
    ei = P.union(P.window(ptr, 1, causal=False), P.strided(ptr, 2))[0]
    x = torch.randn(int(ptr[-1]), IN, dtype=torch.float64)
    e = None
    if edge_dim:
        e = torch.randn(ei.size(1), edge_dim, dtype=torch.float64)
    types = torch.randint(0, 3, (ei.size(1),)) if typed else None
    return batch, ei, x, e, types


def _derivatives(layer, backend, batch, ei, x0, e0, types):
    """First derivatives of a loss (plain and under create_graph) and the
    second derivative of the gradient's squared norm, of x (and e)."""
    layer.backend = backend
    x = x0.clone().requires_grad_()
    e = e0.clone().requires_grad_() if e0 is not None else None
    leaves = [x] + ([e] if e is not None else [])
    kwargs = dict(batch=batch, edge_type=types)

    def loss():
        out = layer(x, ei, e, **kwargs)
        return (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum()

    plain = torch.autograd.grad(loss(), leaves)
    graphed = torch.autograd.grad(loss(), leaves, create_graph=True)
    penalty = sum((g ** 2).sum() for g in graphed)
    try:
        second = torch.autograd.grad(penalty, leaves, allow_unused=True)
    except RuntimeError as err:
        return plain, graphed, err
    return plain, graphed, second


@pytest.mark.parametrize("backend", ["sparse", "dense", "fused_cpu", "auto"])
@pytest.mark.parametrize("edges", ["plain", "features", "typed"])
def test_second_derivatives_are_right_or_refused(backend, edges):
    if backend == "fused_cpu" and not kernels_available():
        pytest.skip("no CPU kernels")
    torch.manual_seed(0)
    edge_dim = {"plain": None, "features": 3, "typed": None}[edges]
    batch, ei, x, e, types = _inputs(edge_dim, typed=edges == "typed")
    if edges == "typed":
        e = torch.randn(3, 3, dtype=torch.float64)          # one row per edge type
        edge_dim = 3
    layer = RelationalAttention(IN, OUT, heads=H, edge_dim=edge_dim).double().eval()
    ref_plain, ref_graphed, ref_second = _derivatives(layer, "propagate", batch, ei, x, e, types)
    assert not isinstance(ref_second, Exception), ref_second
    plain, graphed, second = _derivatives(layer, backend, batch, ei, x, e, types)
    for a, b, c in zip(plain, graphed, ref_plain):
        torch.testing.assert_close(a, c, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(b, c, rtol=1e-9, atol=1e-10)
    if isinstance(second, Exception):
        assert re.search(REFUSED, str(second)), second
        return
    for a, b in zip(second, ref_second):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_sparse_backend_gives_second_derivatives():
    """The sparse backend is made of autograd functions that are each
    other's gradients (and a softmax whose backward is differentiable), so
    without edge features it computes second derivatives, as propagate does."""
    torch.manual_seed(0)
    batch, ei, x, _, _ = _inputs(None)
    layer = RelationalAttention(IN, OUT, heads=H).double().eval()
    _, _, ref = _derivatives(layer, "propagate", batch, ei, x, None, None)
    _, _, second = _derivatives(layer, "sparse", batch, ei, x, None, None)
    assert not isinstance(second, Exception), second
    torch.testing.assert_close(second[0], ref[0], rtol=1e-8, atol=1e-10)


@needs_kernels
def test_the_refusal_names_the_function_and_the_way_to_second_derivatives():
    torch.manual_seed(0)
    batch, ei, x, _, _ = _inputs(None)
    layer = RelationalAttention(IN, OUT, heads=H, backend="fused_cpu").double().eval()
    _, _, err = _derivatives(layer, "fused_cpu", batch, ei, x, None, None)
    assert isinstance(err, RuntimeError)
    assert "graphformer::fused_attention" in str(err) and "backend='propagate'" in str(err)


def test_csr_functions_are_differentiable_twice():
    torch.manual_seed(0)
    ptr = ptr_of([4, 3])
    ei = P.full(ptr)                                    # sorted by target
    csr = C.EdgeCSR.from_sorted(ei[1], ei[0], 7, 7)
    a = torch.randn(2, 7, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 7, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, ei.size(1), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda a, b: C.SDDMM.apply(a, b, csr, 0.5), (a, b))
    assert torch.autograd.gradgradcheck(lambda w, b: C.SpMM.apply(w, b, csr), (w, b))
    group = C.Grouping.targets(csr)
    mat = torch.randn(2, 7, 4, dtype=torch.float64, requires_grad=True)
    ea = torch.randn(ei.size(1), 4, dtype=torch.float64, requires_grad=True)
    we = torch.randn(ei.size(1), 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda m, e: C.GatherDot.apply(m, e, group), (mat, ea))
    assert torch.autograd.gradgradcheck(lambda v, e: C.ScatterSum.apply(v, e, group), (w, ea))
    assert torch.autograd.gradgradcheck(lambda v, m: C.GatherSum.apply(v, m, group), (we, mat))


def test_segment_softmax_is_differentiable_twice():
    torch.manual_seed(0)
    index = torch.tensor([0, 0, 1, 1, 1, 3])
    ptr = torch.tensor([0, 2, 5, 5, 6])
    src = torch.randn(6, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda s: segment_softmax(s, index, ptr=ptr), (src,))
    assert torch.autograd.gradgradcheck(lambda s: segment_softmax(s, index, num_nodes=4), (src,))


@needs_kernels
def test_gelu_dropout_is_differentiable_twice():
    torch.manual_seed(0)
    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    seed = torch.tensor([1234])
    threshold, scale = dropout_threshold(0.3, DROPOUT_BITS)

    def f(x):
        return torch.ops.graphformer.gelu_dropout(x, seed, threshold, scale)

    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))
