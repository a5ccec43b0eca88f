"""The C++ kernels as PyTorch custom ops (``torch.ops.graphformer.*``): each
passes :func:`torch.library.opcheck` (schema, fake implementation, autograd
registration, AOT dispatch with dynamic shapes) on small inputs, float32 and
float64, and gives what the equations give; each refuses, naming it, an array
it cannot read; they work from import on (the first call loads the kernels)."""
import os
import subprocess
import sys

import pytest
import torch

from graphformer.nn import csr as csr_module  # noqa: F401  (registers group_by_source)
from graphformer.nn import edge_terms  # registers the edge-term ops
from graphformer.nn import functional  # noqa: F401  (registers the dropout ops)
from graphformer.nn import fused_cpu  # noqa: F401  (registers the attention ops)
from graphformer.nn.cpu_kernels import (ENV_SWITCH, kernels_available, kernels_unavailable,
                                        seed_tensor)

pytestmark = pytest.mark.skipif(
    not kernels_available(), reason=f"the CPU kernels are unavailable: {kernels_unavailable()}")

OPS = ("group_by_source", "hashed_dropout", "gelu_dropout", "gelu_dropout_backward",
       "dropout_multiplier", "fused_attention", "fused_attention_backward", "edge_quadratic",
       "edge_quadratic_backward", "edge_cross", "edge_cross_backward",
       "edge_values", "edge_values_into", "edge_values_backward", "edge_feature_attention")
DTYPES = [torch.float32, torch.float64]


def test_every_kernel_is_a_registered_op():
    for name in OPS:
        assert hasattr(torch.ops.graphformer, name), name


def test_group_by_source():
    col = torch.tensor([2, 0, 2, 1, 0, 2])
    ptr, perm = torch.ops.graphformer.group_by_source(col, 4)
    assert ptr.tolist() == [0, 2, 3, 6, 6]
    assert perm.tolist() == [1, 4, 3, 0, 2, 5]          # stable within a source
    torch.library.opcheck(torch.ops.graphformer.group_by_source.default, (col, 4))
    with pytest.raises(IndexError, match="edge 2 has source 7"):
        torch.ops.graphformer.group_by_source(torch.tensor([0, 1, 7]), 3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_ops(dtype):
    x = torch.randn(5, 7, dtype=dtype, requires_grad=True)
    seed = seed_tensor(12345)
    threshold, scale = functional.dropout_threshold(0.3, functional.DROPOUT_BITS)
    for op in (torch.ops.graphformer.hashed_dropout, torch.ops.graphformer.gelu_dropout):
        torch.library.opcheck(op.default, (x, seed, threshold, scale))
    out = torch.ops.graphformer.hashed_dropout(x, seed, threshold, scale)
    kept = out != 0
    torch.testing.assert_close(out[kept], x[kept] * scale)
    # the GELU op drops the same entries, and its gradient is GELU's, masked
    y = torch.ops.graphformer.gelu_dropout(x, seed, threshold, scale)
    ref = torch.nn.functional.gelu(x) * kept.to(dtype) * scale
    tol = dict(atol=1e-6, rtol=1e-5) if dtype == torch.float32 else {}
    torch.testing.assert_close(y, ref, **tol)
    g = torch.randn_like(x)
    (dx,) = torch.autograd.grad((y * g).sum(), x)
    (ref_dx,) = torch.autograd.grad((ref * g).sum(), x)
    torch.testing.assert_close(dx, ref_dx, **tol)
    torch.library.opcheck(torch.ops.graphformer.gelu_dropout_backward.default,
            (g, x.detach(), seed, threshold, scale))


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_multiplier(dtype):
    m = torch.ops.graphformer.dropout_multiplier(7, 2, 50, 0.5, dtype)
    assert m.dtype == dtype and m.shape == (2, 50)
    assert set(m.unique().tolist()) <= {0.0, 2.0}
    torch.library.opcheck(torch.ops.graphformer.dropout_multiplier.default, (7, 2, 50, 0.5, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,features", [(1, 1), (3, 2), (4, 7), (5, 16), (8, 5), (16, 3)])
def test_edge_quadratic(dtype, heads, features):
    """(W_qe e)·(W_ke e) per head as the symmetric form of the coefficients,
    for every padding of the heads (4 or 8 a vector) and a tail of edges
    (37: not a multiple of the 8 or 16 lanes); gradients of e and both
    weights against the projections'."""
    torch.manual_seed(heads * 31 + features)
    E, C = 37, 3
    x = torch.randn(E, features, dtype=dtype, requires_grad=True)
    w_eq = torch.randn(heads * C, features, dtype=dtype, requires_grad=True)
    w_ek = torch.randn(heads * C, features, dtype=dtype, requires_grad=True)
    ref = ((x @ w_eq.t()).view(E, heads, C) * (x @ w_ek.t()).view(E, heads, C)).sum(-1)
    c = edge_terms.quadratic_coefficients(w_eq, w_ek, heads)
    assert c.shape == (features * (features + 1) // 2, heads)
    out = edge_terms.edge_quadratic(x, c)
    tol = dict(atol=2e-5, rtol=1e-4) if dtype == torch.float32 else {}
    torch.testing.assert_close(out, ref, **tol)
    g = torch.randn_like(ref)
    for ours, theirs in zip(torch.autograd.grad(out, (x, w_eq, w_ek), g),
                            torch.autograd.grad(ref, (x, w_eq, w_ek), g)):
        torch.testing.assert_close(ours, theirs, **tol)
    torch.library.opcheck(torch.ops.graphformer.edge_quadratic.default, (x, c))
    for need_x, need_c in ((True, True), (True, False), (False, True)):
        torch.library.opcheck(torch.ops.graphformer.edge_quadratic_backward.default,
                              (g, x.detach(), c.detach(), need_x, need_c))


@pytest.mark.parametrize("dtype", DTYPES)
def test_edge_quadratic_gradients_over_many_blocks_do_not_depend_on_threads(dtype):
    """The coefficients' gradient sums chunks of 64 blocks of 16 (float) or 8
    (double) edges in at most 16 groups of at least two chunks, the
    features' gradient blocks of edges: 40,000 edges fill the 16 groups,
    several chunks each, and a tail. Gradients match the projections' and
    are bitwise the same with 1 and 2 threads."""
    torch.manual_seed(5)
    E, H, C, D = 40_003, 3, 4, 6
    x = torch.randn(E, D, dtype=dtype, requires_grad=True)
    w_eq = torch.randn(H * C, D, dtype=dtype, requires_grad=True)
    w_ek = torch.randn(H * C, D, dtype=dtype, requires_grad=True)
    g = torch.randn(E, H, dtype=dtype)
    ref = ((x @ w_eq.t()).view(E, H, C) * (x @ w_ek.t()).view(E, H, C)).sum(-1)
    expected = torch.autograd.grad(ref, (x, w_eq, w_ek), g)
    threads = torch.get_num_threads()
    got = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            out = edge_terms.edge_quadratic(x, edge_terms.quadratic_coefficients(w_eq, w_ek, H))
            got.append(torch.autograd.grad(out, (x, w_eq, w_ek), g))
    finally:
        torch.set_num_threads(threads)
    tol = dict(atol=1e-3, rtol=1e-4) if dtype == torch.float32 else {}
    for ours, theirs in zip(got[0], expected):
        torch.testing.assert_close(ours, theirs, **tol)
    for one, two in zip(*got):
        assert torch.equal(one, two)


def test_edge_quadratic_without_the_kernel_is_the_same(monkeypatch):
    x = torch.randn(20, 6, dtype=torch.float64, requires_grad=True)
    c = torch.randn(21, 3, dtype=torch.float64, requires_grad=True)
    out = edge_terms.edge_quadratic(x, c)
    grads = torch.autograd.grad(out.sin().sum(), (x, c))
    monkeypatch.setattr(edge_terms, "kernels_available", lambda: False)
    plain = edge_terms.edge_quadratic(x, c)
    torch.testing.assert_close(out, plain)
    for ours, theirs in zip(grads, torch.autograd.grad(plain.sin().sum(), (x, c))):
        torch.testing.assert_close(ours, theirs)
    assert torch.autograd.gradcheck(edge_terms.edge_quadratic, (x[:4], c))


def _quadratic_reference(x, c):
    """sum_{a <= b} c[ab, h] x_a x_b per row of x, by the triangle's indices."""
    rows, cols = torch.triu_indices(x.size(1), x.size(1))
    return (x[:, rows] * x[:, cols]) @ c


def _tables(y, w):
    """The node tables W_h^T y[n, h], [H, N, D], of y [N, H, C] and w [H C, D]."""
    H, C = y.size(1), y.size(2)
    return torch.einsum("nhc,hcd->hnd", y, w.view(H, C, -1))


@pytest.mark.parametrize("quadratic", [False, True], ids=["cross", "cross+quadratic"])
@pytest.mark.parametrize("ordered", [False, True])
# D = 16: a compile-time constant for float, 4 and 13 the kernels' loop over any
# D; C = D = 16: the node blocks in vector lanes
@pytest.mark.parametrize("D, C", [(4, 5), (13, 5), (16, 5), (16, 16)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_edge_cross(dtype, D, C, ordered, quadratic):
    """(wa_h^T a[i, h] + wb_h^T b[j, h])·x_e over a CSR by target, against the
    node tables made by einsum, with a target without edges (3) and sources
    without edges (4 and 5): their gradients are 0. ``ordered``: x in
    another order than the CSR's, read through ``order`` (CSR position ->
    row of x); x's gradient comes back in x's order. ``quadratic``: plus the
    quadratic form of x_e with coefficients c, whose gradient of x the op
    adds to the cross terms' in one buffer."""
    torch.manual_seed(0)
    H, N, Ns = 3, 5, 6
    src = torch.tensor([1, 2, 0, 3, 1, 0, 2])
    dst = torch.tensor([0, 0, 1, 1, 2, 4, 4])            # grouped by target
    ptr = torch.tensor([0, 2, 4, 5, 5, 7])
    sptr, perm = torch.ops.graphformer.group_by_source(src, Ns)
    order = torch.tensor([3, 0, 6, 1, 5, 2, 4]) if ordered else None

    def rand(*shape):
        return torch.randn(*shape, dtype=dtype, requires_grad=True)

    a, b, wa, wb = rand(N, H, C), rand(Ns, H, C), rand(H * C, D), rand(H * C, D)
    x = rand(src.numel(), D)
    c = rand(D * (D + 1) // 2, H) if quadratic else None
    out = torch.ops.graphformer.edge_cross(a, b, wa, wb, x, ptr, src, sptr, perm, order, c)
    x_csr = x if order is None else x[order]
    ref = ((_tables(a, wa)[:, dst] + _tables(b, wb)[:, src]) * x_csr).sum(-1).t()
    if quadratic:
        ref = ref + _quadratic_reference(x_csr, c)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else {}
    torch.testing.assert_close(out, ref, **tol)
    g = torch.randn_like(ref)
    inputs = (a, b, wa, wb, x) + ((c,) if quadratic else ())
    grads = torch.autograd.grad(out, inputs, g)
    for ours, theirs in zip(grads, torch.autograd.grad(ref, inputs, g)):
        torch.testing.assert_close(ours, theirs, **tol)
    assert grads[1][4:].abs().sum() == 0 and grads[0][3].abs().sum() == 0
    torch.library.opcheck(torch.ops.graphformer.edge_cross.default,
                          (a, b, wa, wb, x, ptr, src, sptr, perm, order, c))
    detached = [t.detach() for t in (a, b, wa, wb, x)]
    for need in ((True, False, True, False, True), (False, True, False, True, False)):
        torch.library.opcheck(torch.ops.graphformer.edge_cross_backward.default,
                              (g, *detached, ptr, src, sptr, perm, order,
                               None if c is None else c.detach(), *need, quadratic))
    # the rows' and x's gradients added into tensors the caller holds (none returned)
    bases = (torch.randn_like(a), torch.randn_like(b), torch.randn_like(x))
    into = [t.detach().clone() for t in bases]
    c_det = None if c is None else c.detach()
    backward = (g, *detached, ptr, src, sptr, perm, order, c_det, True, True, False, False,
                True, False)
    da, db, _, _, dx, _ = torch.ops.graphformer.edge_cross_backward(*backward, *into)
    assert da.numel() == 0 and db.numel() == 0 and dx.numel() == 0
    for got, base, grad in zip(into, bases, (grads[0], grads[1], grads[4])):
        torch.testing.assert_close(got, base + grad, **tol)
    torch.library.opcheck(torch.ops.graphformer.edge_cross_backward.default,
                          (*backward, *[t.clone() for t in bases]))
    with pytest.raises(ValueError, match="'db_into' must be contiguous and of shape"):
        torch.ops.graphformer.edge_cross_backward(*backward, into[0], into[1][:2], into[2])
    with pytest.raises(ValueError, match="'ptr' must have N \\+ 1 = 6"):
        torch.ops.graphformer.edge_cross(a, b, wa, wb, x, ptr[:-1], src, sptr, perm, order)
    with pytest.raises(ValueError, match="disagree on H or C"):
        torch.ops.graphformer.edge_cross(a, b[:, :2], wa, wb, x, ptr, src, sptr, perm, order)
    with pytest.raises(ValueError, match=f"'wb' must be \\[H C, D\\] = \\[{H * C}, {D}\\]"):
        torch.ops.graphformer.edge_cross(a, b, wa, wb[:, 1:], x, ptr, src, sptr, perm, order)
    with pytest.raises(ValueError, match="'order' must have E = 7 entries, got 6"):
        torch.ops.graphformer.edge_cross(a, b, wa, wb, x, ptr, src, sptr, perm, perm[:6])
    with pytest.raises(ValueError, match="'c' must be \\[D \\(D \\+ 1\\) / 2, H\\]"):
        torch.ops.graphformer.edge_cross(a, b, wa, wb, x, ptr, src, sptr, perm, order,
                                         torch.randn(D * (D + 1) // 2, H + 1, dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_edge_cross_over_many_nodes_does_not_depend_on_threads(dtype):
    """The passes take blocks of 8 nodes and sum the weights' gradients in at
    most 16 fixed groups of nodes: 1,203 nodes (every group, a block's tail)
    with random edges, features in another order: every gradient matches the
    einsum tables' and is bitwise the same with 1 and 2 threads."""
    torch.manual_seed(6)
    N, E, H, C, D = 1_203, 9_000, 2, 16, 16
    ops = torch.ops.graphformer
    src, dst = torch.randint(0, N, (2, E))
    dst, sort = dst.sort(stable=True)
    src = src[sort]
    ptr = torch.zeros(N + 1, dtype=torch.long)
    ptr[1:] = torch.bincount(dst, minlength=N).cumsum(0)
    sptr, perm = ops.group_by_source(src, N)
    order = torch.randperm(E)

    def rand(*shape):
        return torch.randn(*shape, dtype=dtype, requires_grad=True)

    inputs = (rand(N, H, C), rand(N, H, C), rand(H * C, D), rand(H * C, D), rand(E, D))
    a, b, wa, wb, x = inputs
    g = torch.randn(E, H, dtype=dtype)
    x_csr = x[order]
    ref = ((_tables(a, wa)[:, dst] + _tables(b, wb)[:, src]) * x_csr).sum(-1).t()
    expected = torch.autograd.grad(ref, inputs, g)
    threads = torch.get_num_threads()
    got = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            out = ops.edge_cross(a, b, wa, wb, x, ptr, src, sptr, perm, order)
            got.append((out, *torch.autograd.grad(out, inputs, g)))
    finally:
        torch.set_num_threads(threads)
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else {}
    torch.testing.assert_close(got[0][0], ref, **tol)
    for ours, theirs in zip(got[0][1:], expected):
        torch.testing.assert_close(ours, theirs, **tol)
    for one, two in zip(*got):
        assert torch.equal(one, two)


def _value_term_reference(w, wv, x, dst, N, order):
    """W_h sum over the edges e into i of w[h, e] x_e, [N, H, C], by index_add
    and einsum."""
    H, D = w.size(0), x.size(1)
    x_csr = x if order is None else x[order]
    sums = torch.zeros(H, N, D, dtype=x.dtype).index_add(1, dst, w.unsqueeze(-1) * x_csr)
    return torch.einsum("hnd,hcd->nhc", sums, wv.view(H, -1, D))


@pytest.mark.parametrize("ordered", [False, True])
@pytest.mark.parametrize("D,C", [(4, 5), (16, 16)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_edge_values(dtype, D, C, ordered):
    """The value term W_h sum over the edges e into i of w[h, e] x_e, [N, H,
    C], with a target without edges (3) and 11 targets (a block of 8 and a
    tail), in scalar and (C = D = 16) vector blocks: values, the in-place
    form (added into a tensor), and the gradients of w [H, E], wv and x (in
    x's order with ``order``) against index_add and einsum."""
    torch.manual_seed(1)
    H, N = 3, 11
    src = torch.tensor([1, 2, 0, 3, 1, 0, 2, 9, 10, 4, 7, 7])
    dst = torch.tensor([0, 0, 1, 1, 2, 4, 4, 5, 8, 9, 10, 10])
    ptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.bincount(dst, minlength=N).cumsum(0)])
    E = src.numel()
    order = torch.randperm(E) if ordered else None
    w = torch.randn(H, E, dtype=dtype, requires_grad=True)
    wv = torch.randn(H * C, D, dtype=dtype, requires_grad=True)
    x = torch.randn(E, D, dtype=dtype, requires_grad=True)
    ops = torch.ops.graphformer
    out = ops.edge_values(w, wv, x, ptr, order)
    ref = _value_term_reference(w, wv, x, dst, N, order)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else {}
    torch.testing.assert_close(out, ref, **tol)
    assert out[3].abs().sum() == 0
    base = torch.randn(N, H, C, dtype=dtype)
    into = base.clone()
    ops.edge_values_into(into, w.detach(), wv.detach(), x.detach(), ptr, order)
    torch.testing.assert_close(into, base + ref.detach(), **tol)
    g = torch.randn_like(ref)
    expected = torch.autograd.grad(ref, (w, wv, x), g)
    for ours, theirs in zip(torch.autograd.grad(out, (w, wv, x), g), expected):
        torch.testing.assert_close(ours, theirs, **tol)
    # x's gradient added into one the caller holds
    dx_ref = expected[2]
    held = torch.randn(E, D, dtype=dtype)
    into_dx = held.clone()
    _, dx, _ = ops.edge_values_backward(g, w.detach(), wv.detach(), x.detach(), ptr, order,
                                        False, True, False, into_dx)
    assert dx.numel() == 0
    torch.testing.assert_close(into_dx, held + dx_ref, **tol)
    detached = (w.detach(), wv.detach(), x.detach())
    torch.library.opcheck(ops.edge_values.default, (w, wv, x, ptr, order))
    torch.library.opcheck(ops.edge_values_into.default, (base.clone(), *detached, ptr, order))
    for need in ((True, True, True), (True, False, False), (False, True, True),
                 (False, False, True)):
        torch.library.opcheck(ops.edge_values_backward.default,
                              (g, *detached, ptr, order, *need))
    torch.library.opcheck(ops.edge_values_backward.default,
                          (g, *detached, ptr, order, False, True, True, held.clone()))
    with pytest.raises(ValueError, match="'w' .* disagree on H, E or D"):
        ops.edge_values(w[:, :6], wv, x, ptr, order)
    with pytest.raises(ValueError, match="'out' must be \\[N, H, C\\]"):
        ops.edge_values_into(base[:, :2].contiguous(), *detached, ptr, order)
    with pytest.raises(ValueError, match="'dx_into' must be contiguous and of shape"):
        ops.edge_values_backward(g, *detached, ptr, order, False, True, False, held[:5])


def test_edge_values_over_many_nodes_do_not_depend_on_threads():
    """The projection's gradient is summed over at most 16 fixed groups of
    nodes: 1,203 targets fill them; values and gradients bitwise the same with
    1 and 2 threads."""
    torch.manual_seed(3)
    N, E, H, C, D = 1_203, 6_000, 4, 16, 16
    dst = torch.randint(0, N, (E,)).sort().values
    ptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.bincount(dst, minlength=N).cumsum(0)])
    order = torch.randperm(E)
    w = torch.rand(H, E, requires_grad=True)
    wv = torch.randn(H * C, D, requires_grad=True)
    x = torch.randn(E, D, requires_grad=True)
    g = torch.randn(N, H, C)
    threads = torch.get_num_threads()
    got = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            out = torch.ops.graphformer.edge_values(w, wv, x, ptr, order)
            got.append((out, *torch.autograd.grad(out, (w, wv, x), g)))
    finally:
        torch.set_num_threads(threads)
    ref = _value_term_reference(w, wv, x, dst, N, order)
    torch.testing.assert_close(got[0][0], ref, atol=1e-4, rtol=1e-4)
    for one, two in zip(*got):
        assert torch.equal(one, two)


@pytest.mark.parametrize("dropout", [0.0, 0.4])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("ordered", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_edge_feature_attention_is_its_three_ops(dtype, ordered, masked, dropout):
    """The attention block with per-edge features as one op (one autograd
    node: the features' gradient gathered in one buffer) equals the three
    ops it runs composed by autograd (the cross terms with the quadratic form
    as the bias, the fused attention, the value term of the features with
    the kept weights): values and every gradient, also with gradients
    reaching the weights, with a target without edges (3), ``x`` in another
    order than the CSR's, a head mask and dropout (same seed)."""
    torch.manual_seed(2)
    H, N, C, D = 2, 5, 4, 3
    ops = torch.ops.graphformer
    src = torch.tensor([1, 2, 0, 3, 4, 1, 0, 2])
    ptr = torch.tensor([0, 2, 5, 6, 6, 8])
    E = src.numel()
    ptr_t, perm = ops.group_by_source(src, N)
    row_t = torch.repeat_interleave(torch.arange(N), ptr.diff()).index_select(0, perm)
    order = torch.tensor([3, 0, 6, 1, 5, 7, 2, 4]) if ordered else None
    mask = torch.rand(H, E) < 0.3 if masked else None

    def rand(*shape):
        return torch.randn(*shape, dtype=dtype, requires_grad=True)

    inputs = (rand(N, H, C), rand(N, H, C), rand(N, H, C), rand(H * C, D), rand(H * C, D),
              rand(E, D), rand(D * (D + 1) // 2, H), rand(H * C, D))
    q, k, v, wa, wb, x, c, wv = inputs
    seed = seed_tensor(7)
    out, alpha, keep = ops.edge_feature_attention(
        q, k, v, wa, wb, x, c, wv, ptr, src, ptr_t, row_t, perm, order, mask, seed, 0.5, dropout)
    bias = ops.edge_cross(q, k, wa, wb, x, ptr, src, ptr_t, perm, order, c).t()
    if mask is not None:
        bias = bias.masked_fill(mask, float("-inf"))
    ref_out, ref_alpha, ref_keep = ops.fused_attention(
        q, k, v, ptr, src, ptr_t, row_t, perm, bias.contiguous(), None, None, None, None, seed,
        0.5, dropout)
    weights = ref_alpha
    if dropout:
        weights = ref_alpha * fused_cpu.dropout_multiplier(7, H, E, dropout, dtype)
    ref_out = ref_out + ops.edge_values(weights, wv, x, ptr, order)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-12, rtol=1e-10)
    for ours, theirs in ((out, ref_out), (alpha, ref_alpha)):
        torch.testing.assert_close(ours, theirs, **tol)
    assert torch.equal(keep, ref_keep)
    assert (keep == 0).any() if dropout else keep.numel() == 0
    grads = [torch.randn_like(t) for t in (out, alpha)]
    ours = torch.autograd.grad((out, alpha), inputs, grads, retain_graph=True)
    theirs = torch.autograd.grad((ref_out, ref_alpha), inputs, grads, retain_graph=True)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, **tol)
    # only the output's gradient (None for alpha)
    ours = torch.autograd.grad(out, inputs, grads[0])
    for a, b in zip(ours, torch.autograd.grad(ref_out, inputs, grads[0])):
        torch.testing.assert_close(a, b, **tol)
    torch.library.opcheck(ops.edge_feature_attention.default,
                          (q, k, v, wa, wb, x, c, wv, ptr, src, ptr_t, row_t, perm, order, mask,
                           seed, 0.5, dropout))
    detached = [t.detach() for t in (q, k, wa, wb, x)]
    torch.library.opcheck(ops.edge_cross_backward.default,
                          (grads[1].t(), *detached, ptr, src, ptr_t, perm, order, c.detach(),
                           *(True,) * 6))


def test_edge_quadratic_without_edges():
    x = torch.randn(0, 5, requires_grad=True)
    c = torch.randn(15, 3, requires_grad=True)
    out = edge_terms.edge_quadratic(x, c)
    assert out.shape == (0, 3)
    dx, dc = torch.autograd.grad(out.sum(), (x, c))
    assert dx.shape == (0, 5) and torch.equal(dc, torch.zeros(15, 3))


def test_edge_quadratic_refuses_the_wrong_number_of_coefficients():
    x = torch.randn(7, 4)
    with pytest.raises(ValueError, match="'c' must have D \\(D \\+ 1\\) / 2 = 10 rows"):
        torch.ops.graphformer.edge_quadratic(x, torch.randn(9, 2))


def _attention_args(dtype, *, typed, bias, dropout):
    torch.manual_seed(0)
    N, H, C, R = 5, 2, 4, 3
    src = torch.tensor([1, 2, 0, 3, 4, 0, 1, 2, 3])
    dst = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, 4])     # grouped by target
    E = src.numel()
    ptr = torch.tensor([0, 2, 5, 6, 8, 9])
    ptr_t, perm = torch.ops.graphformer.group_by_source(src, N)
    row_t = dst.index_select(0, perm)

    def rand(*shape):
        return torch.randn(*shape, dtype=dtype, requires_grad=True)

    q, k, v = rand(N, H, C), rand(N, H, C), rand(N, H, C)
    etype = torch.randint(0, R, (E,)) if typed else None
    tq, tk, vt = (rand(H, N, R), rand(H, N, R), rand(R, H, C)) if typed else (None,) * 3
    b = rand(H, E) if bias else None
    return (q, k, v, ptr, src, ptr_t, row_t, perm, b, etype, tq, tk, vt, seed_tensor(99),
            0.5, dropout)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("typed,bias,dropout", [(False, False, 0.0), (True, True, 0.0),
                                                (True, False, 0.4)])
def test_fused_attention(dtype, typed, bias, dropout):
    args = _attention_args(dtype, typed=typed, bias=bias, dropout=dropout)
    torch.library.opcheck(torch.ops.graphformer.fused_attention.default, args)
    out, alpha, keep = torch.ops.graphformer.fused_attention(*args)
    q, k, v, ptr, src = args[:5]
    assert keep.shape == ((2, src.numel()) if dropout else (0,))
    if not typed and not bias:   # against the equations
        dst = torch.repeat_interleave(torch.arange(5), ptr.diff())
        s = (q[dst] * k[src]).sum(-1) * 0.5                      # [E, H]
        ref_alpha = torch.empty_like(s)
        for i in range(5):
            ref_alpha[dst == i] = torch.softmax(s[dst == i], 0)
        ref = torch.zeros_like(q).index_add(0, dst, ref_alpha.unsqueeze(-1) * v[src])
        torch.testing.assert_close(alpha, ref_alpha.t())
        torch.testing.assert_close(out, ref)
        grads = torch.autograd.grad(out.pow(2).sum(), (q, k, v))
        ref_grads = torch.autograd.grad(ref.pow(2).sum(), (q, k, v))
        for ours, theirs in zip(grads, ref_grads):
            torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_attention_backward(dtype):
    args = _attention_args(dtype, typed=True, bias=True, dropout=0.4)
    out, alpha, keep = torch.ops.graphformer.fused_attention(*args)
    q, k, v, ptr, col, ptr_t, row_t, perm, _, etype, _, _, vt = (
        a.detach() if isinstance(a, torch.Tensor) else a for a in args[:13])
    dout, dalpha = torch.randn_like(out), torch.randn_like(alpha)
    args = (dout, dalpha, q, k, v, ptr, col, ptr_t, row_t, perm, etype, vt, alpha.detach(),
            keep, 3, True, True, 0.5, 0.4)
    torch.library.opcheck(torch.ops.graphformer.fused_attention_backward.default, args)
    # ds_by_edge: the bias's gradient [E, H] (the layout edge_cross gives the bias in)
    torch.library.opcheck(torch.ops.graphformer.fused_attention_backward.default,
                          (*args, True))
    by_head = torch.ops.graphformer.fused_attention_backward(*args)
    by_edge = torch.ops.graphformer.fused_attention_backward(*args, True)
    assert by_edge[3].shape == (col.numel(), 2) and by_edge[3].is_contiguous()
    torch.testing.assert_close(by_edge[3], by_head[3].t(), atol=0, rtol=0)
    for a, b in zip(by_edge[:3] + by_edge[4:], by_head[:3] + by_head[4:]):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_the_ops_refuse_arrays_they_cannot_read():
    args = [a.detach() if isinstance(a, torch.Tensor) else a
            for a in _attention_args(torch.float32, typed=False, bias=False, dropout=0.0)]
    op = torch.ops.graphformer.fused_attention

    def call(**changes):
        names = ("q", "k", "v", "ptr", "col")
        return op(*[changes.get(n, a) for n, a in zip(names, args)], *args[5:])

    strided = args[0].transpose(0, 1).contiguous().transpose(0, 1)
    with pytest.raises(ValueError, match=r"'q' as a contiguous array, got one of shape "
                                         r"\[5, 2, 4\] and strides \[4, 20, 1\]"):
        call(q=strided)
    with pytest.raises(ValueError, match=r"'col' as Long, got Int"):
        call(col=args[4].int())
    with pytest.raises(ValueError, match=r"'k' as Float, got Double"):
        call(k=args[1].double())
    with pytest.raises(ValueError, match=r"'ptr' as 6 elements, got shape \[5\]"):
        call(ptr=args[3][:5])
    with pytest.raises(ValueError, match=r"'q' as float32 or float64, got Half"):
        call(q=args[0].half())
    with pytest.raises(ValueError, match=r"'seed' as 1 elements"):
        torch.ops.graphformer.hashed_dropout(torch.ones(3), torch.zeros(2, dtype=torch.long),
                                             5, 1.0)
    with pytest.raises(ValueError, match=r"'grad' as 3 elements, got shape \[4\]"):
        torch.ops.graphformer.gelu_dropout_backward(torch.ones(4), torch.ones(3),
                                                    seed_tensor(1), 5, 1.0)


#: a fresh process calls an op before anything else loads the kernels
FIRST_CALL = """
import torch
import graphformer.nn
x = torch.arange(1.0, 9.0)
print("OUT", torch.ops.graphformer.hashed_dropout(x, torch.tensor([7]), 0, 2.0).tolist())
"""


def test_an_op_loads_the_kernels_at_its_first_call():
    env = dict(os.environ)      # the kernels this process built, from the same cache
    env.pop(ENV_SWITCH, None)
    proc = subprocess.run([sys.executable, "-c", FIRST_CALL], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "OUT [2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0]" in proc.stdout
    env[ENV_SWITCH] = "0"       # turned off: the op says so
    proc = subprocess.run([sys.executable, "-c", FIRST_CALL], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 1
    assert f"graphformer::hashed_dropout: the CPU kernels are unavailable: turned off by " \
           f"{ENV_SWITCH}=0" in proc.stderr
