import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from graphformer import patterns as P
from tests.helpers import assert_coalesced_equal

SETTINGS = settings(max_examples=80, deadline=None)
N = 6
edge_sets = st.lists(st.tuples(st.integers(0, N - 1), st.integers(0, N - 1)), max_size=20)


def tensor(edges):
    return torch.tensor(edges, dtype=torch.long).t().reshape(2, -1)


@SETTINGS
@given(sets=st.lists(edge_sets, min_size=1, max_size=4))
def test_union_and_membership(sets):
    ei, member = P.union(*map(tensor, sets), num_nodes=N)
    assert_coalesced_equal(ei, set().union(*map(set, sets)))
    assert member.dtype == torch.bool and member.shape == (ei.size(1), len(sets))
    for e, (src, dst) in enumerate(ei.t().tolist()):
        assert member[e].tolist() == [(src, dst) in set(s) for s in sets]


@SETTINGS
@given(a=edge_sets, b=edge_sets)
def test_intersection_and_difference(a, b):
    assert_coalesced_equal(P.intersection(tensor(a), tensor(b)), set(a) & set(b))
    assert_coalesced_equal(P.difference(tensor(a), tensor(b)), set(a) - set(b))


def test_patterns_compose_like_sets():
    ptr = torch.tensor([0, 5, 9])
    # A causal window is the intersection of a two-sided window and causal.
    assert torch.equal(P.intersection(P.window(ptr, 2, causal=False), P.causal(ptr)),
                       P.window(ptr, 2))
    # full = causal  U  (full \ causal)
    upper = P.difference(P.full(ptr), P.causal(ptr))
    ei, member = P.union(P.causal(ptr), upper)
    assert torch.equal(ei, P.full(ptr))
    assert (member.sum(1) == 1).all()


def test_union_needs_a_set():
    with pytest.raises(ValueError, match="at least one"):
        P.union()
    with pytest.raises(TypeError, match="'edge set 1' must have an integer dtype"):
        P.union(P.full(3), P.full(3).float())
