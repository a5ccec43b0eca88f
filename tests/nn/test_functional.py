import pytest
import torch

from graphformer.nn.functional import linears_of_one_input, segment_softmax, softmax_implementation


def dense_reference(src, index, num_nodes):
    out = torch.zeros_like(src)
    for i in range(num_nodes):
        sel = index == i
        if sel.any():
            out[sel] = torch.softmax(src[sel].double(), dim=0).to(src.dtype)
    return out


def test_matches_per_group_softmax(backend):
    index = torch.tensor([2, 0, 2, 2, 0, 3, 3, 3, 3])
    src = torch.randn(index.numel(), 4)
    out = segment_softmax(src, index, num_nodes=5, backend=backend)
    torch.testing.assert_close(out, dense_reference(src, index, 5), atol=1e-6, rtol=1e-5)
    sums = torch.zeros(5, 4).index_add(0, index, out)
    torch.testing.assert_close(sums[[0, 2, 3]], torch.ones(3, 4))
    assert (sums[[1, 4]] == 0).all()  # nodes without incoming edges


def test_an_int32_index_gives_what_an_int64_one_gives(backend):
    index = torch.tensor([2, 0, 2, 2, 0, 3, 3, 3, 3])
    src = torch.randn(index.numel(), 4, dtype=torch.double, requires_grad=True)
    out = segment_softmax(src, index.int(), num_nodes=5, backend=backend)
    torch.testing.assert_close(out, segment_softmax(src, index, num_nodes=5, backend=backend),
                               rtol=0, atol=0)
    torch.testing.assert_close(out, dense_reference(src.detach(), index, 5))
    assert torch.autograd.gradcheck(
        lambda s: segment_softmax(s, index.int(), 5, backend=backend), src)


def test_masked_scores_get_zero_weight_and_no_nan(backend):
    index = torch.tensor([0, 0, 1, 1])
    src = torch.tensor([[1.0], [float("-inf")], [float("-inf")], [float("-inf")]])
    out = segment_softmax(src, index, 2, backend=backend)
    assert torch.equal(out, torch.tensor([[1.0], [0.0], [0.0], [0.0]]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_large_logits_are_stable(backend, dtype):
    index = torch.tensor([0, 0, 0, 1, 1])
    big = 6e4 if dtype == torch.float16 else 1e30
    src = torch.tensor([[big], [big - 1], [-big], [big], [0.0]], dtype=dtype)
    out = segment_softmax(src, index, 2, backend=backend)
    assert out.dtype == dtype and torch.isfinite(out).all()
    expected = dense_reference(src.double(), index, 2)
    torch.testing.assert_close(out.double(), expected, atol=1e-2, rtol=1e-2)


def test_gradient_is_exact(backend):
    index = torch.tensor([1, 0, 1, 1, 0, 2])
    src = torch.randn(6, 3, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: segment_softmax(s, index, 3, backend=backend), src)


def test_backend_names():
    assert softmax_implementation("native") == "native"
    assert softmax_implementation("auto") in ("native", "scatter")
    with pytest.raises(ValueError, match="unknown softmax backend 'fast'"):
        softmax_implementation("fast")
    with pytest.raises(ValueError, match="unknown softmax backend 'fast'"):
        segment_softmax(torch.zeros(2), torch.tensor([0, 0]), backend="fast")
    with pytest.raises(ValueError, match="needs 'index' .* or 'ptr'"):
        segment_softmax(torch.zeros(2))
    with pytest.raises(ValueError, match="'num_nodes' is 3 but 'ptr' has 2 entries"):
        segment_softmax(torch.zeros(2), ptr=torch.tensor([0, 2]), num_nodes=3)


def _sorted_case(dtype=torch.float64):
    # targets 0..5: 1 and 4 have no edges, 3 has every score masked in head 0
    row = torch.tensor([0, 0, 2, 2, 2, 3, 3, 5])
    ptr = torch.tensor([0, 2, 2, 5, 7, 7, 8])
    scores = torch.randn(3, row.numel(), dtype=dtype)
    scores[0, 5:7] = float("-inf")
    scores[1, 2] = float("-inf")
    return scores, ptr, row


def test_grouped_by_target_equals_scattered_forward_and_backward():
    """With ``ptr`` (edges grouped by target; here heads first, ``dim=1``)
    the softmax is the scattered one."""
    scores, ptr, row = _sorted_case()
    a = scores.clone().requires_grad_()
    b = scores.t().clone().requires_grad_()
    out = segment_softmax(a, row, ptr=ptr, dim=1)
    ref = segment_softmax(b, row, 6, backend="native")
    torch.testing.assert_close(out, ref.t())
    dense = dense_reference(scores.t(), row, 6).t().nan_to_num(0.0)   # all -inf: 0
    torch.testing.assert_close(out, dense)
    assert torch.equal(out[0, 5:7], torch.zeros(2, dtype=out.dtype))   # all masked: 0, no NaN
    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad.t())
    torch.testing.assert_close(a.grad, b.grad.t())


def test_grouped_by_target_gradcheck_and_leaves_its_input_alone():
    scores, ptr, row = _sorted_case()
    scores = scores.clamp(min=-10).requires_grad_()   # gradcheck needs finite input
    before = scores.detach().clone()
    assert torch.autograd.gradcheck(lambda s: segment_softmax(s, row, ptr=ptr, dim=1), scores)
    segment_softmax(scores, row, ptr=ptr, dim=1)
    assert torch.equal(scores.detach(), before)


@pytest.mark.parametrize("layout", ["edges first", "heads first", "edges last of 3"])
def test_grouped_by_target_any_edge_dim_and_without_index(layout):
    """The edges along any dimension; ``index`` expanded from ``ptr`` when
    not given; half precision computed in float32 and returned as given."""
    scores, ptr, row = _sorted_case()                                    # [H, E]
    src, dim = {"edges first": (scores.t(), 0), "heads first": (scores, 1),
                "edges last of 3": (torch.stack([scores, 2 * scores]), -1)}[layout]
    out = segment_softmax(src, ptr=ptr, dim=dim)
    ref = segment_softmax(src.movedim(dim, 0), row, 6, backend="native").movedim(0, dim)
    torch.testing.assert_close(out, ref)
    half = segment_softmax(src.half(), row, ptr=ptr, dim=dim)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.double(), ref, atol=2e-3, rtol=2e-3)


def test_linears_of_one_input_are_the_linear_modules_and_twice_differentiable():
    """Three projections of one input (one without a bias) in one autograd
    node: the same outputs and gradients as ``Linear`` modules applied one by
    one (the input's gradient summed in one buffer), in float64 also second
    derivatives (gradgradcheck), and a gradient asked of some outputs only."""
    torch.manual_seed(0)
    lins = [torch.nn.Linear(4, 3, bias=b).double() for b in (True, False, True)]
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    ours = linears_of_one_input(x, [m.weight for m in lins], [m.bias for m in lins])
    theirs = [m(x) for m in lins]
    params = [x] + [p for m in lins for p in m.parameters()]
    grads = [torch.randn_like(t) for t in theirs]
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)
    for a, b in zip(torch.autograd.grad(ours, params, grads, retain_graph=True),
                    torch.autograd.grad(theirs, params, grads)):
        torch.testing.assert_close(a, b)
    (dx,) = torch.autograd.grad(ours[1], x, grads[1])
    torch.testing.assert_close(dx, grads[1] @ lins[1].weight)

    def f(x, w0, b0, w1, w2, b2):
        return linears_of_one_input(x, [w0, w1, w2], [b0, None, b2])

    assert torch.autograd.gradgradcheck(f, tuple(params))
    with pytest.raises(ValueError, match="x \\[N, F\\] and one bias"):
        linears_of_one_input(x[None], [lins[0].weight], [None])
