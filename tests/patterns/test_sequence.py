import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from graphformer import patterns as P
from tests.helpers import assert_coalesced_equal, pairs, ptr_of

# Random batches of uneven graph sizes, empty and one-node graphs included.
sizes_st = st.lists(st.integers(min_value=0, max_value=9), min_size=0, max_size=5)
SETTINGS = settings(max_examples=60, deadline=None)


@SETTINGS
@given(sizes=sizes_st)
def test_full(sizes):
    assert_coalesced_equal(P.full(ptr_of(sizes)), pairs(sizes, lambda i, j, n: True))


@SETTINGS
@given(sizes=sizes_st)
def test_causal(sizes):
    assert_coalesced_equal(P.causal(ptr_of(sizes)), pairs(sizes, lambda i, j, n: j <= i))


@SETTINGS
@given(sizes=sizes_st, size=st.integers(0, 6), causal=st.booleans())
def test_window(sizes, size, causal):
    if causal:
        ref = pairs(sizes, lambda i, j, n: 0 <= i - j <= size)
    else:
        ref = pairs(sizes, lambda i, j, n: abs(i - j) <= size)
    assert_coalesced_equal(P.window(ptr_of(sizes), size, causal=causal), ref)


@SETTINGS
@given(sizes=sizes_st, stride=st.integers(1, 5))
def test_strided(sizes, stride):
    ref = pairs(sizes, lambda i, j, n: j <= i and (i - j) % stride == 0)
    assert_coalesced_equal(P.strided(ptr_of(sizes), stride), ref)


@SETTINGS
@given(sizes=sizes_st, size=st.integers(1, 5))
def test_block(sizes, size):
    ref = pairs(sizes, lambda i, j, n: i // size == j // size)
    assert_coalesced_equal(P.block(ptr_of(sizes), size), ref)


@SETTINGS
@given(data=st.data(), sizes=sizes_st)
def test_global_tokens(data, sizes):
    ptr = ptr_of(sizes)
    num_nodes = int(ptr[-1])
    index = data.draw(st.lists(st.integers(0, max(num_nodes - 1, 0)), max_size=4)
                      if num_nodes else st.just([]))
    ref, start = set(), 0
    for n in sizes:
        for g in index:
            if start <= g < start + n:
                for other in range(start, start + n):
                    ref |= {(g, other), (other, g)}
        start += n
    assert_coalesced_equal(P.global_tokens(ptr, torch.tensor(index, dtype=torch.long)), ref)


@SETTINGS
@given(sizes=sizes_st, k=st.integers(0, 6), seed=st.integers(0, 2**31))
def test_random_is_k_distinct_keys_of_the_same_graph(sizes, k, seed):
    ptr = ptr_of(sizes)
    ei = P.random(ptr, k, generator=torch.Generator().manual_seed(seed))
    assert_coalesced_equal(ei, set(map(tuple, ei.t().tolist())))  # order, no dups
    graph_of = torch.repeat_interleave(torch.arange(len(sizes)), ptr.diff())
    assert (graph_of[ei[0]] == graph_of[ei[1]]).all()
    indeg = torch.bincount(ei[1], minlength=int(ptr[-1]))
    assert torch.equal(indeg, ptr.diff()[graph_of].clamp_max(k))
    again = P.random(ptr, k, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(ei, again), "the same seed must give the same edges"


def test_random_is_uniform():
    # One query with 6 candidate keys, k = 2: each key is chosen with
    # probability 1/3. Over 3000 graphs the counts stay within 5 sigma.
    n, k, reps = 6, 2, 3000
    ei = P.random(ptr_of([n] * reps), k, generator=torch.Generator().manual_seed(1))
    local_src = ei[0] % n
    counts = torch.bincount(local_src, minlength=n).float() / n  # per query position
    expected = reps * k / n
    sigma = (reps * (k / n) * (1 - k / n)) ** 0.5
    assert ((counts - expected).abs() < 5 * sigma).all(), counts
    # Pairs are uniform too (Floyd's algorithm, not "first draw + neighbour").
    q0 = ei[:, ei[1] % n == 0]
    pair_ids = (q0[0] % n).view(-1, 2)
    pair_ids = pair_ids[:, 0] * n + pair_ids[:, 1]
    assert torch.unique(pair_ids).numel() == n * (n - 1) // 2


def test_cross():
    ptr_src, ptr_dst = ptr_of([2, 0, 3]), ptr_of([1, 2, 2])
    ref = set()
    for b in range(3):
        for j in range(int(ptr_src[b]), int(ptr_src[b + 1])):
            for i in range(int(ptr_dst[b]), int(ptr_dst[b + 1])):
                ref.add((j, i))
    assert_coalesced_equal(P.cross(ptr_src, ptr_dst), ref)
    with pytest.raises(ValueError, match="describes 3 graphs but 'ptr_dst' describes 2"):
        P.cross(ptr_src, ptr_of([1, 1]))


def test_int_ptr_is_one_graph():
    assert torch.equal(P.causal(4), P.causal(torch.tensor([0, 4])))


@pytest.mark.parametrize("build, expected_edges", [
    (lambda: P.window(1_000_000, 3), 4_000_000 - 6),
    (lambda: P.window(1_000_000, 3, causal=False), 7_000_000 - 12),
    (lambda: P.block(1_000_000, 4), 4_000_000),
    (lambda: P.strided(200_000, 50_000), 50_000 * (1 + 2 + 3 + 4)),
    (lambda: P.random(1_000_000, 4, generator=torch.Generator().manual_seed(0)), 4_000_000),
    (lambda: P.global_tokens(1_000_000, torch.tensor([0])), 2_000_000 - 1),
])
def test_sparse_patterns_scale_with_their_output(build, expected_edges):
    # A T x T intermediate for T = 10^6 would need terabytes: these finish only
    # because the builders work in time and memory proportional to E.
    assert build().size(1) == expected_edges


@pytest.mark.parametrize("call, error, match", [
    (lambda: P.full(torch.tensor([0, 3, 2])), ValueError, r"non-decreasing, but ptr\[2\] = 2"),
    (lambda: P.full(torch.tensor([1, 3])), ValueError, r"'ptr\[0\]' must be 0, got 1"),
    (lambda: P.full(torch.tensor([0.0, 3.0])), TypeError, "integer dtype"),
    (lambda: P.full(-2), ValueError, "must be >= 0"),
    (lambda: P.window(5, -1), ValueError, "'size' must be >= 0"),
    (lambda: P.strided(5, 0), ValueError, "'stride' must be >= 1"),
    (lambda: P.block(5, 0), ValueError, "'size' must be >= 1"),
    (lambda: P.random(5, 2.5), TypeError, "'k' must be an int"),
    (lambda: P.global_tokens(torch.tensor([0, 3]), torch.tensor([1, 7])), IndexError,
     r"'index\[1\]' = 7 is not a node"),
])
def test_bad_input_is_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_no_global_tokens_is_an_empty_set_however_given():
    ptr = torch.tensor([0, 3, 5])
    for none in ([], (), torch.zeros(0, dtype=torch.long)):
        out = P.global_tokens(ptr, none)
        assert out.dtype == torch.long and out.shape == (2, 0)
