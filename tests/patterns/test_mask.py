import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from graphformer import patterns as P
from tests.helpers import ptr_of

SETTINGS = settings(max_examples=60, deadline=None)


@SETTINGS
@given(sizes=st.lists(st.integers(0, 6), min_size=1, max_size=4), seed=st.integers(0, 1000))
def test_mask_round_trip(sizes, seed):
    ptr = ptr_of(sizes)
    t = max(sizes)
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(len(sizes), t, t, generator=g) < 0.4
    for b, n in enumerate(sizes):  # nothing in the padding
        mask[b, n:, :] = False
        mask[b, :, n:] = False
    ei = P.from_mask(mask, ptr)
    # Edge (j -> i) of graph b is mask[b, i, j].
    for src, dst in ei.t().tolist():
        b = int(torch.searchsorted(ptr, dst, right=True)) - 1
        assert mask[b, dst - ptr[b], src - ptr[b]]
    assert ei.size(1) == int(mask.sum())
    assert torch.equal(ei, P.coalesce(ei))
    assert torch.equal(P.to_mask(ei, ptr), mask)


def test_to_mask_matches_pattern_definition():
    ptr = ptr_of([3, 1, 0, 2])
    mask = P.to_mask(P.causal(ptr), ptr, max_num_nodes=4)
    expected = torch.zeros(4, 4, 4, dtype=torch.bool)
    expected[0, :3, :3] = torch.ones(3, 3).tril().bool()
    expected[1, 0, 0] = True
    expected[3, :2, :2] = torch.ones(2, 2).tril().bool()
    assert torch.equal(mask, expected)


def test_from_mask_without_ptr_is_full_size_graphs():
    mask = torch.ones(2, 2, 2, dtype=torch.bool)
    assert torch.equal(P.from_mask(mask), P.full(ptr_of([2, 2])))
    assert torch.equal(P.from_mask(mask[0]), P.full(2))


def test_errors_name_the_entry():
    mask = torch.zeros(2, 3, 3, dtype=torch.bool)
    mask[1, 2, 0] = True
    with pytest.raises(ValueError, match=r"'mask\[1, 2, 0\]' is True but graph 1 has only 2"):
        P.from_mask(mask, ptr_of([3, 2]))
    with pytest.raises(TypeError, match="bool tensor"):
        P.from_mask(mask.float())
    with pytest.raises(ValueError, match=r"edge 1 \(0 -> 3\) crosses from graph 0 to graph 1"):
        P.to_mask(torch.tensor([[0, 0], [1, 3]]), ptr_of([3, 2]))
    with pytest.raises(IndexError, match=r"edge_index\[1, 0\] = 9"):
        P.to_mask(torch.tensor([[0], [9]]), ptr_of([3, 2]))


def test_to_mask_refuses_a_float_size_by_name():
    ei = torch.tensor([[0, 1], [1, 2]])
    with pytest.raises(TypeError, match="'max_num_nodes' must be a whole number"):
        P.to_mask(ei, torch.tensor([0, 3, 5]), max_num_nodes=4.0)
    assert P.to_mask(ei, torch.tensor([0, 3, 5]), max_num_nodes=4).shape == (2, 4, 4)
