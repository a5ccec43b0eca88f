import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from graphformer import patterns as P
from tests.helpers import assert_coalesced_equal

SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def batched_graphs(draw):
    """A batch of random directed graphs (uneven sizes, empty and one-node
    graphs included), in batch numbering."""
    sizes = draw(st.lists(st.integers(0, 7), max_size=4))
    edges, start = [], 0
    for n in sizes:
        if n:
            edges += [(start + a, start + b) for a, b in draw(
                st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=12))]
        start += n
    ei = torch.tensor(edges, dtype=torch.long).t().reshape(2, -1)
    return ei, start


def dense_k_hop(ei, n, k):
    adj = torch.zeros(n, n, dtype=torch.long)
    adj[ei[1], ei[0]] = 1  # adj[i, j] = 1 for j -> i
    reach, power = torch.zeros_like(adj), torch.eye(n, dtype=torch.long)
    for _ in range(k):
        power = ((adj @ power) > 0).long()
        reach |= power
    reach.fill_diagonal_(0)
    return {(j, i) for i, j in reach.nonzero().tolist()}


@SETTINGS
@given(g=batched_graphs(), self_loops=st.booleans())
def test_graph(g, self_loops):
    ei, n = g
    ref = set(map(tuple, ei.t().tolist()))
    if self_loops:
        ref |= {(i, i) for i in range(n)}
    assert_coalesced_equal(P.graph(ei, self_loops=self_loops, num_nodes=n), ref)


@SETTINGS
@given(g=batched_graphs(), k=st.integers(0, 4), self_loops=st.booleans())
def test_k_hop_equals_dense_matrix_powers(g, k, self_loops):
    ei, n = g
    ref = dense_k_hop(ei, n, k)
    if self_loops:
        ref |= {(i, i) for i in range(n)}
    assert_coalesced_equal(P.k_hop(ei, k, num_nodes=n, self_loops=self_loops), ref)


def test_k_hop_on_a_long_path_is_linear():
    # A path of 200k nodes: a dense adjacency would be 4 * 10^10 entries.
    n = 200_000
    ei = torch.stack([torch.arange(n - 1), torch.arange(1, n)])
    out = P.k_hop(ei, 3, num_nodes=n)
    assert out.size(1) == (n - 1) + (n - 2) + (n - 3)
    assert torch.equal(out[:, :3], torch.tensor([[0, 0, 1], [1, 2, 2]]))


def test_errors():
    with pytest.raises(ValueError, match=r"'num_nodes' is 2 but an edge set uses node index 4"):
        P.graph(torch.tensor([[0], [4]]), num_nodes=2)
    with pytest.raises(ValueError, match=r"negative node index: edge_index\[1, 0\] = -1"):
        P.k_hop(torch.tensor([[0], [-1]]), 2)
    with pytest.raises(ValueError, match=r"shape \[2, E\]"):
        P.graph(torch.zeros(3, 4, dtype=torch.long))


def test_edge_keys_of_int32_edges_past_46340_nodes_do_not_overflow():
    """``i * N + j`` in int32 wrapped round past 46,340 nodes (and a model
    placing its bonds by these keys put them at wrong positions)."""
    n = 50_001
    ei = torch.tensor([[1, 49_999], [50_000, 50_000]], dtype=torch.int32)
    keys = P.edge_keys(ei, n)
    assert keys.dtype == torch.long and keys.tolist() == [50_000 * n + 1, 50_000 * n + 49_999]
    assert torch.equal(P.keys_to_edges(keys, n), ei.long())


@pytest.mark.parametrize("build", [
    lambda ei, n: P.graph(ei, num_nodes=n), lambda ei, n: P.graph(ei, self_loops=True, num_nodes=n),
    lambda ei, n: P.k_hop(ei, 2, num_nodes=n), lambda ei, n: P.union(ei, num_nodes=n)[0],
    lambda ei, n: P.coalesce(ei, num_nodes=n)])
def test_a_float_node_count_is_refused_by_name(build):
    """``num_nodes=5000.0`` made float32 edges (4001 read back as 4000) or
    failed inside torch: now refused as everywhere else."""
    ei = torch.tensor([[4001, 4998], [4999, 4999]])
    with pytest.raises(TypeError, match="'num_nodes' must be a whole number, got float"):
        build(ei, 5000.0)
    with pytest.raises(ValueError, match="'num_nodes' must be in"):
        build(ei[:, :0], -1)
    assert build(ei, 5000).dtype == torch.long
