"""Edge-feature score terms with one edge projection (the node table of the
other side met per edge by a sampled product) equal the per-edge
projections' dot products, values and gradients, float64."""
import pytest
import torch

from graphformer.nn.edge_set import EdgeSet
from graphformer.nn.edge_terms import edge_scores


@pytest.mark.parametrize("side", ["query", "key"])
def test_one_edge_projection_scores_as_the_projections_do(side):
    torch.manual_seed(0)
    N, H, C, D = 6, 2, 3, 4
    edges = EdgeSet(torch.tensor([[0, 1, 2, 3, 4, 5, 1], [1, 0, 0, 2, 3, 3, 4]]), N)
    csr = edges.csr

    def rand(*shape):
        return torch.randn(*shape, dtype=torch.float64, requires_grad=True)

    q, k, x, w = rand(N, H, C), rand(N, H, C), rand(7, D), rand(H * C, D)
    x_csr = x if edges.perm is None else x[edges.perm]
    w_eq, w_ek = (w, None) if side == "query" else (None, w)
    out = edge_scores(q, k, x_csr, w_eq, w_ek, csr)
    projected = (x_csr @ w.t()).view(-1, H, C)                  # W_qe e or W_ke e
    ref = ((projected * k[csr.col]) if side == "query" else (q[csr.row] * projected)).sum(-1)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    inputs = (q, k, x, w)
    ours_all = torch.autograd.grad(out, inputs, g, allow_unused=True, retain_graph=True)
    for ours, theirs in zip(ours_all, torch.autograd.grad(ref, inputs, g, allow_unused=True)):
        if theirs is None:
            assert ours is None or ours.abs().sum() == 0
        else:
            torch.testing.assert_close(ours, theirs)
