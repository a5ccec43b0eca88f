"""RelationalAttention against dense references: PyTorch's MultiheadAttention
where it exists, the layer's equations written densely where it does not."""
import math

import pytest
import torch
from torch_geometric.utils import to_dense_batch

from graphformer import patterns as P
from graphformer.nn import RelationalAttention, TransformerLayer
from tests.conftest import force_softmax
from graphformer.nn.fused import fused_available
from graphformer.nn.fused_cpu import fused_cpu_available, fused_cpu_unavailable
from tests.helpers import ptr_of

# Every test taking ``backend`` runs once per way of computing attention:
# PyG message passing and the sparse backend with each softmax backend, the
# dense backend, the fused Triton kernel (interpreted on CPU) and the fused
# CPU kernels.
IMPLS = [("propagate", "native"), ("propagate", "scatter"), ("sparse", "native"),
         ("sparse", "scatter"), ("dense", "auto"), ("fused", "auto"), ("fused_cpu", "auto")]


@pytest.fixture(params=IMPLS, ids=[f"{a}-{s}" for a, s in IMPLS])
def backend(request, monkeypatch):
    attention, softmax = request.param
    if softmax != "auto":
        force_softmax(monkeypatch, softmax)
    if attention == "fused" and not fused_available(torch.device("cpu")):
        pytest.skip("triton is not installed (or TRITON_INTERPRET is not set)")
    if attention == "fused_cpu" and not fused_cpu_available():
        pytest.skip(f"the fused CPU kernels are unavailable: {fused_cpu_unavailable()}")
    return {"backend": attention}

SIZES = [5, 1, 8, 3]  # uneven lengths, a one-token sequence included
EMBED, HEADS = 16, 4


def batch_of(sizes):
    ptr = ptr_of(sizes)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), ptr.diff())
    return ptr, batch


def mha_mask(allowed, heads):
    """Our True = attend mask [B, T, T] -> MultiheadAttention's 3-D attn_mask
    (True = masked out) of shape [B * H, T, T]. Padded query rows attend to
    themselves so that the dense side stays finite; they are never compared."""
    allowed = allowed.clone()
    t = allowed.size(1)
    empty = ~allowed.any(dim=2)
    eye = torch.eye(t, dtype=torch.bool).expand_as(allowed)
    allowed |= empty.unsqueeze(2) & eye
    return (~allowed).repeat_interleave(heads, dim=0)


def dense_alpha(alpha, edge_index, ptr, t):
    """[E, H] weights -> [B, H, T, T] (zeros off the edge set)."""
    graph = torch.repeat_interleave(torch.arange(ptr.numel() - 1), ptr.diff())
    src, dst = edge_index
    b = graph[dst]
    out = torch.zeros(ptr.numel() - 1, alpha.size(1), t, t, dtype=alpha.dtype)
    out[b, :, dst - ptr[b], src - ptr[b]] = alpha
    return out


def mha_grads(mha):
    wq, wk, wv = mha.in_proj_weight.grad.chunk(3)
    bq, bk, bv = mha.in_proj_bias.grad.chunk(3)
    return [wq, wk, wv, bq, bk, bv, mha.out_proj.weight.grad, mha.out_proj.bias.grad]


def layer_grads(layer):
    lins = (layer.lin_q, layer.lin_k, layer.lin_v)
    return ([lin.weight.grad for lin in lins] + [lin.bias.grad for lin in lins]
            + [layer.lin_out.weight.grad, layer.lin_out.bias.grad])


PATTERNS = {
    "causal": lambda ptr: P.causal(ptr),
    "window": lambda ptr: P.window(ptr, 2),
    "window2": lambda ptr: P.window(ptr, 1, causal=False),
    "strided": lambda ptr: P.strided(ptr, 3),
    "block": lambda ptr: P.block(ptr, 3),
    "random": lambda ptr: P.random(ptr, 3, generator=torch.Generator().manual_seed(3)),
    "union": lambda ptr: P.union(P.window(ptr, 1), P.strided(ptr, 2),
                                 P.global_tokens(ptr, ptr[:-1][ptr.diff() > 0]))[0],
}


@pytest.mark.parametrize("batch_first", [True, False])
def test_full_equals_multihead_attention(backend, batch_first):
    ptr, batch = batch_of(SIZES)
    mha = torch.nn.MultiheadAttention(EMBED, HEADS, batch_first=batch_first)
    layer = RelationalAttention.from_torch(mha, **backend)
    x = torch.randn(int(ptr[-1]), EMBED, requires_grad=True)
    xd, real = to_dense_batch(x, batch)
    xd_in = xd if batch_first else xd.transpose(0, 1)
    ref, ref_w = mha(xd_in, xd_in, xd_in, key_padding_mask=~real, average_attn_weights=False)
    ref = ref if batch_first else ref.transpose(0, 1)
    ei = P.full(ptr)
    out, alpha = layer(x, ei, return_attention_weights=True)
    torch.testing.assert_close(out, ref[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dense_alpha(alpha, ei, ptr, xd.size(1)) * real[:, None, :, None],
                               ref_w * real[:, None, :, None], atol=1e-6, rtol=1e-5)

    g = torch.randn_like(out)
    grad_x_ref, = torch.autograd.grad((ref[real] * g).sum(), x, retain_graph=True)
    (ref[real] * g).sum().backward()
    grad_x, = torch.autograd.grad((out * g).sum(), x, retain_graph=True)
    (out * g).sum().backward()
    torch.testing.assert_close(grad_x, grad_x_ref, atol=1e-5, rtol=1e-5)
    for ours, theirs in zip(layer_grads(layer), mha_grads(mha)):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_masked_patterns_equal_multihead_attention(backend, name):
    ptr, batch = batch_of(SIZES)
    mha = torch.nn.MultiheadAttention(EMBED, HEADS, batch_first=True)
    layer = RelationalAttention.from_torch(mha, **backend)
    x = torch.randn(int(ptr[-1]), EMBED, requires_grad=True)
    xd, real = to_dense_batch(x, batch)
    ei = PATTERNS[name](ptr)
    allowed = P.to_mask(ei, ptr)
    ref, ref_w = mha(xd, xd, xd, attn_mask=mha_mask(allowed, HEADS), average_attn_weights=False)
    out, alpha = layer(x, ei, return_attention_weights=True)
    torch.testing.assert_close(out, ref[real], atol=1e-5, rtol=1e-5)
    rows = real[:, None, :, None]
    torch.testing.assert_close(dense_alpha(alpha, ei, ptr, xd.size(1)) * rows, ref_w * rows,
                               atol=1e-6, rtol=1e-5)

    g = torch.randn_like(out)
    (ref[real] * g).sum().backward()
    grad_ref = x.grad.clone()
    x.grad = None
    (out * g).sum().backward()
    torch.testing.assert_close(x.grad, grad_ref, atol=1e-5, rtol=1e-5)
    for ours, theirs in zip(layer_grads(layer), mha_grads(mha)):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_head_mask_gives_heads_their_own_patterns(backend):
    # Heads 0, 1 see a local window; heads 2, 3 a strided pattern: one layer,
    # two patterns, equal to MultiheadAttention with a per-head attn_mask.
    ptr, batch = batch_of(SIZES)
    ei, member = P.union(P.window(ptr, 1), P.strided(ptr, 2))
    head_mask = member[:, [0, 0, 1, 1]]
    mha = torch.nn.MultiheadAttention(EMBED, HEADS, batch_first=True)
    layer = RelationalAttention.from_torch(mha, **backend)
    x = torch.randn(int(ptr[-1]), EMBED)
    xd, real = to_dense_batch(x, batch)
    local = mha_mask(P.to_mask(P.window(ptr, 1), ptr), 1)
    strided = mha_mask(P.to_mask(P.strided(ptr, 2), ptr), 1)
    per_head = torch.stack([local, local, strided, strided], dim=1).flatten(0, 1)
    ref, _ = mha(xd, xd, xd, attn_mask=per_head)
    out, alpha = layer(x, ei, head_mask=head_mask, return_attention_weights=True)
    torch.testing.assert_close(out, ref[real], atol=1e-5, rtol=1e-5)
    assert (alpha[~head_mask] == 0).all()


def test_cross_attention_equals_multihead_attention(backend):
    q_sizes, k_sizes = [3, 6, 1], [4, 2, 5]
    ptr_q, batch_q = batch_of(q_sizes)
    ptr_k, batch_k = batch_of(k_sizes)
    kdim = 10
    mha = torch.nn.MultiheadAttention(EMBED, HEADS, kdim=kdim, vdim=kdim, batch_first=True)
    layer = RelationalAttention.from_torch(mha, **backend)
    assert layer.in_channels == (kdim, EMBED)
    xq = torch.randn(int(ptr_q[-1]), EMBED)
    xk = torch.randn(int(ptr_k[-1]), kdim, requires_grad=True)
    if backend["backend"] == "dense":  # dense is self-attention within graphs only
        with pytest.raises(ValueError, match="bipartite"):
            layer((xk, xq), P.cross(ptr_k, ptr_q))
        return
    dq, real_q = to_dense_batch(xq, batch_q)
    dk, real_k = to_dense_batch(xk, batch_k)
    ref, _ = mha(dq, dk, dk, key_padding_mask=~real_k)
    out = layer((xk, xq), P.cross(ptr_k, ptr_q))
    torch.testing.assert_close(out, ref[real_q], atol=1e-5, rtol=1e-5)
    g = torch.randn_like(out)
    grad_ref, = torch.autograd.grad((ref[real_q] * g).sum(), xk)
    grad, = torch.autograd.grad((out * g).sum(), xk)
    torch.testing.assert_close(grad, grad_ref, atol=1e-5, rtol=1e-5)


def dense_relational(layer, x, edge_attr, edge_index, ptr, batch):
    """The layer's equations, written densely with a [B, T, T, D] edge tensor."""
    H, C = layer.heads, layer.head_channels
    xd, real = to_dense_batch(x, batch)
    B, T, _ = xd.shape
    graph = batch
    src, dst = edge_index
    b = graph[dst]
    ed = torch.zeros(B, T, T, edge_attr.size(1))
    ed[b, dst - ptr[b], src - ptr[b]] = edge_attr
    allowed = P.to_mask(edge_index, ptr)
    q = layer.lin_q(xd).view(B, T, 1, H, C) + layer.lin_edge_q(ed).view(B, T, T, H, C)
    k = layer.lin_k(xd).view(B, 1, T, H, C) + layer.lin_edge_k(ed).view(B, T, T, H, C)
    v = layer.lin_v(xd).view(B, 1, T, H, C) + layer.lin_edge_v(ed).view(B, T, T, H, C)
    score = (q * k).sum(-1) / math.sqrt(C)  # [B, i, j, H]
    score = score.masked_fill(~allowed.unsqueeze(-1), float("-inf"))
    a = torch.softmax(score, dim=2).nan_to_num(0.0)
    out = (a.unsqueeze(-1) * v).sum(dim=2).reshape(B, T, H * C)
    return layer.lin_out(out)[real], a


@pytest.mark.parametrize("name", ["full", "causal", "union"])
def test_edge_features_equal_dense_equations(backend, name):
    ptr, batch = batch_of(SIZES)
    ei = P.full(ptr) if name == "full" else PATTERNS[name](ptr)
    edge_dim = 6
    layer = RelationalAttention(EMBED, 12, heads=3, edge_dim=edge_dim, **backend)
    x = torch.randn(int(ptr[-1]), EMBED, requires_grad=True)
    e = torch.randn(ei.size(1), edge_dim, requires_grad=True)
    out, alpha = layer(x, ei, e, return_attention_weights=True)
    ref, a = dense_relational(layer, x, e, ei, ptr, batch)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(out)
    grads = torch.autograd.grad((out * g).sum(), (x, e))
    grads_ref = torch.autograd.grad((ref * g).sum(), (x, e))
    for ours, theirs in zip(grads, grads_ref):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert grads[1].abs().sum() > 0  # gradients reach edge_attr


def test_weights_sum_to_one_per_target(backend):
    ptr = ptr_of([7, 4])
    ei = P.union(P.window(ptr, 2), P.random(ptr, 2, generator=torch.Generator().manual_seed(0)))[0]
    layer = RelationalAttention(8, 8, heads=2, **backend)
    _, alpha = layer(torch.randn(11, 8), ei, return_attention_weights=True)
    sums = torch.zeros(11, 2).index_add(0, ei[1], alpha)
    torch.testing.assert_close(sums, torch.ones(11, 2))


def test_permuting_nodes_permutes_outputs_and_edge_order_is_irrelevant(backend):
    ptr = ptr_of([6, 5])
    ei = P.union(P.causal(ptr), P.global_tokens(ptr, torch.tensor([6])))[0]
    e = torch.randn(ei.size(1), 3)
    layer = RelationalAttention(8, 8, heads=2, edge_dim=3, **backend)
    x = torch.randn(11, 8)
    out = layer(x, ei, e)

    perm = torch.randperm(11)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(11)
    out_p = layer(x[perm], inv[ei], e)
    torch.testing.assert_close(out_p, out[perm], atol=1e-6, rtol=1e-5)

    order = torch.randperm(ei.size(1))
    out_r, alpha_r = layer(x, ei[:, order], e[order], return_attention_weights=True)
    _, alpha = layer(x, ei, e, return_attention_weights=True)
    torch.testing.assert_close(out_r, out, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(alpha_r, alpha[order])
    # the edge features' gradient comes back in the order they were given
    g = torch.randn_like(out)
    given, reordered = e.clone().requires_grad_(), e[order].clone().requires_grad_()
    (grad,) = torch.autograd.grad((layer(x, ei, given) * g).sum(), given)
    (grad_r,) = torch.autograd.grad((layer(x, ei[:, order], reordered) * g).sum(), reordered)
    torch.testing.assert_close(grad_r, grad[order], atol=1e-6, rtol=1e-5)


def test_node_without_incoming_edges_gets_bias_not_nan(backend):
    layer = RelationalAttention(4, 4, heads=2, **backend)
    ei = torch.tensor([[0, 1], [1, 1]])  # nodes 0 and 2 receive nothing
    out = layer(torch.randn(3, 4), ei)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[[0, 2]], layer.lin_out.bias.detach().expand(2, 4))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_large_logits(backend, dtype):
    layer = RelationalAttention(8, 8, heads=2, edge_dim=2, **backend)
    with torch.no_grad():
        layer.lin_q.weight.mul_(30.0)
        layer.lin_k.weight.mul_(30.0)
    layer = layer.to(dtype)
    ptr = ptr_of([9, 3])
    ei = P.full(ptr)
    x = (torch.randn(12, 8) * 10).to(dtype)
    out, alpha = layer(x, ei, torch.randn(ei.size(1), 2, dtype=dtype),
                       return_attention_weights=True)
    assert out.dtype == dtype and torch.isfinite(out).all() and torch.isfinite(alpha).all()
    sums = torch.zeros(12, 2).index_add(0, ei[1], alpha.float())
    torch.testing.assert_close(sums, torch.ones(12, 2), atol=2e-2, rtol=0)


def test_dropout_only_in_training():
    layer = RelationalAttention(8, 8, heads=2, dropout=0.5)
    ei = P.full(6)
    x = torch.randn(6, 8)
    layer.eval()
    torch.testing.assert_close(layer(x, ei), layer(x, ei))
    layer.train()
    assert not torch.allclose(layer(x, ei), layer(x, ei))


def test_lazy_in_channels():
    layer = RelationalAttention(-1, 8, heads=2, edge_dim=3)
    out = layer(torch.randn(5, 7), P.full(5), torch.randn(25, 3))
    assert out.shape == (5, 8) and layer.lin_q.weight.shape == (8, 7)


def test_public_parameters_and_repr():
    layer = RelationalAttention(16, 8, heads=2, head_channels=5, edge_dim=3, bias=False)
    assert layer.lin_q.weight.shape == (10, 16) and layer.lin_q.bias is None
    assert layer.lin_edge_v.weight.shape == (10, 3) and layer.lin_edge_v.bias is None
    assert layer.lin_out.weight.shape == (8, 10)
    assert repr(layer) == ("RelationalAttention(16, 8, heads=2, head_channels=5, edge_dim=3, "
                           "dropout=0.0, backend='auto')")
    assert RelationalAttention(4, 4).lin_edge_q is None


@pytest.mark.parametrize("call, error, match", [
    (lambda l, x: l(x, torch.tensor([[0, 5], [1, 2]])), IndexError,
     r"edge_index\[0, 1\] = 5 but there are only 5 source nodes"),
    (lambda l, x: l(x, torch.tensor([[0, 1], [1, 9]])), IndexError,
     r"edge_index\[1, 1\] = 9 .* 5 target nodes"),
    (lambda l, x: l(x, torch.tensor([[0.0, 1.0], [1.0, 2.0]])), TypeError, "integer dtype"),
    (lambda l, x: l(x, torch.tensor([0, 1, 2])), ValueError, r"shape \[2, E\], got \[3\]"),
    (lambda l, x: l(x, P.full(5), torch.randn(24, 3)), ValueError,
     "'edge_attr' has 24 rows but 'edge_index' has 25 edges"),
    (lambda l, x: l(x, P.full(5), torch.randn(25, 4)), ValueError, r"shape \[E, 3\]"),
    (lambda l, x: l(x, P.full(5), head_mask=torch.ones(25, 3, dtype=torch.bool)), ValueError,
     r"'head_mask' must have shape \[E, H\] = \[25, 2\], got \[25, 3\]"),
    (lambda l, x: l(x, P.full(5), head_mask=torch.ones(25, 2)), TypeError, "bool tensor"),
])
def test_bad_input_gets_a_clear_error(call, error, match):
    layer = RelationalAttention(4, 4, heads=2, edge_dim=3)
    with pytest.raises(error, match=match):
        call(layer, torch.randn(5, 4))


def test_bad_construction():
    with pytest.raises(ValueError, match=r"'out_channels' \(10\) is not divisible by 'heads' \(3\)"):
        RelationalAttention(4, 10, heads=3)
    with pytest.raises(ValueError, match="edge_dim=None"):
        RelationalAttention(4, 4)(torch.randn(2, 4), P.full(2), torch.randn(4, 1))
    with pytest.raises(ValueError, match="add_bias_kv"):
        RelationalAttention.from_torch(torch.nn.MultiheadAttention(4, 2, add_bias_kv=True))


def test_message_passing_options_the_equations_fix_are_the_only_ones_taken():
    """``aggr`` and ``flow`` would change the result of the ``"propagate"``
    backend only: the values the equations fix are accepted (the same layer),
    others refused by name, and no other ``MessagePassing`` option passes."""
    torch.manual_seed(0)
    ref = RelationalAttention(4, 4, heads=2)
    torch.manual_seed(0)
    same = RelationalAttention(4, 4, heads=2, aggr="sum", flow="source_to_target")
    x, ei = torch.randn(5, 4), P.full(5)
    torch.testing.assert_close(same(x, ei), ref(x, ei), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"RelationalAttention\(aggr='mean'\).*'add' or 'sum'"):
        RelationalAttention(4, 4, heads=2, aggr="mean")
    with pytest.raises(ValueError, match=r"flow='target_to_source'.*edge_index\.flip\(0\)"):
        RelationalAttention(4, 4, heads=2, flow="target_to_source")
    with pytest.raises(TypeError, match="unexpected keyword argument 'decomposed_layers'"):
        RelationalAttention(4, 4, heads=2, decomposed_layers=2)


@pytest.mark.parametrize("make", [
    lambda: RelationalAttention(4, 4, softmax_backend="native"),
    lambda: RelationalAttention.from_torch(torch.nn.MultiheadAttention(4, 2),
                                           softmax_backend="scatter"),
    lambda: TransformerLayer(4, heads=2, softmax_backend="auto"),
    lambda: TransformerLayer.from_torch(torch.nn.TransformerEncoderLayer(4, 2),
                                        softmax_backend="native"),
])
def test_removed_softmax_backend_argument_says_what_replaced_it(make):
    with pytest.raises(TypeError, match=r"softmax_backend=\.\.\.\) was removed: "
                                        r"graphformer\.nn\.functional chooses"):
        make()


@pytest.mark.parametrize("bipartite", [False, True], ids=["one input", "sources and targets"])
def test_projections_of_one_input_are_the_modules_applied_one_by_one(bipartite):
    """The queries, keys and values of one input go through one autograd node
    (their input's gradient summed in one buffer): the layer gives the same
    output and the same gradients of the inputs and of every weight as the
    same layer applying its ``Linear`` modules one by one, float64, with one
    input and with sources and targets apart (keys and values share theirs)."""
    torch.manual_seed(0)

    class ModulesOneByOne(RelationalAttention):
        def _project(self, x_src, x_dst):
            return self.lin_q(x_dst), self.lin_k(x_src), self.lin_v(x_src)

    channels = (5, 7) if bipartite else 6
    ours = RelationalAttention(channels, 8, heads=2, edge_dim=3).double()
    ref = ModulesOneByOne(channels, 8, heads=2, edge_dim=3).double()
    ref.load_state_dict(ours.state_dict())
    ei = torch.tensor([[0, 1, 2, 3, 1, 0], [1, 0, 0, 2, 3, 3]])
    e = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    if bipartite:
        x = (torch.randn(4, 5, dtype=torch.float64, requires_grad=True),
             torch.randn(4, 7, dtype=torch.float64, requires_grad=True))
        leaves = [*x, e]
    else:
        x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
        leaves = [x, e]
    out, expected = ours(x, ei, e), ref(x, ei, e)
    torch.testing.assert_close(out, expected)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, leaves + list(ours.parameters()), g),
                    torch.autograd.grad(expected, leaves + list(ref.parameters()), g)):
        torch.testing.assert_close(a, b)
