import pytest
import torch

from graphformer.nn.functional import resolve_backend, segment_softmax


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
    assert resolve_backend("native") == "native"
    assert resolve_backend("auto") in ("native", "scatter")
    with pytest.raises(ValueError, match="unknown softmax backend 'fast'"):
        resolve_backend("fast")
