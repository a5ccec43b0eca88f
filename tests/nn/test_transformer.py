import pytest
import torch
from torch_geometric.utils import to_dense_batch

from graphformer import patterns as P
from graphformer.nn import EdgeSet, TransformerLayer
from tests.helpers import ptr_of
from tests.nn.test_attention import batch_of, mha_mask

SIZES = [5, 1, 8, 3]
D, H = 16, 4


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("pattern", ["full", "causal"])
def test_equals_transformer_encoder_layer(backend, norm_first, activation, pattern):
    ptr, batch = batch_of(SIZES)
    ref_layer = torch.nn.TransformerEncoderLayer(
        D, H, dim_feedforward=24, dropout=0.0, activation=activation, norm_first=norm_first,
        batch_first=True)
    layer = TransformerLayer.from_torch(ref_layer)
    x = torch.randn(int(ptr[-1]), D, requires_grad=True)
    xd, real = to_dense_batch(x, batch)
    if pattern == "full":
        ei = P.full(ptr)
        ref = ref_layer(xd, src_key_padding_mask=~real)
    else:
        ei = P.causal(ptr)
        ref = ref_layer(xd, src_mask=mha_mask(P.to_mask(ei, ptr), H))
    out = layer(x, ei).x
    torch.testing.assert_close(out, ref[real], atol=1e-5, rtol=1e-5)

    g = torch.randn_like(out)
    grad_ref = torch.autograd.grad((ref[real] * g).sum(), [x, ref_layer.linear1.weight,
                                                           ref_layer.self_attn.out_proj.weight])
    grad = torch.autograd.grad((out * g).sum(), [x, layer.linear1.weight,
                                                 layer.attn.lin_out.weight])
    for ours, theirs in zip(grad, grad_ref):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_only_activations_it_computes_convert():
    """PyTorch flags every ``nn.GELU`` as gelu, its tanh approximation too:
    that one (and any other activation) is refused, not computed exactly."""
    for act in (torch.nn.GELU(approximate="tanh"), torch.nn.SiLU()):
        ref_layer = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation=act)
        with pytest.raises(ValueError, match="only relu and gelu"):
            TransformerLayer.from_torch(ref_layer)
    exact = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0,
                                             activation=torch.nn.GELU())
    assert TransformerLayer.from_torch(exact).activation == "gelu"


def test_eval_mode_fast_path_too():
    # In eval mode PyTorch may take its fused "fast path"; the result is the same.
    ptr, batch = batch_of(SIZES)
    ref_layer = torch.nn.TransformerEncoderLayer(D, H, dim_feedforward=24, batch_first=True).eval()
    layer = TransformerLayer.from_torch(ref_layer).eval()
    x = torch.randn(int(ptr[-1]), D)
    xd, real = to_dense_batch(x, batch)
    with torch.no_grad():
        ref = ref_layer(xd, src_key_padding_mask=~real)
        torch.testing.assert_close(layer(x, P.full(ptr)).x, ref[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm_first", [False, True])
def test_edge_update_follows_the_relational_transformer(backend, norm_first):
    ptr = ptr_of([4, 3])
    ei, member = P.union(P.causal(ptr), P.window(ptr, 1, causal=False))
    e = torch.cat([member.float(), torch.randn(ei.size(1), 3)], dim=1)  # edge_dim 5
    layer = TransformerLayer(8, heads=2, dropout=0.0, edge_dim=5, edge_update=True,
                             norm_first=norm_first)
    x = torch.randn(7, 8, requires_grad=True)
    x_new, e_new, alpha = layer(x, ei, e, return_attention_weights=True)

    # The node update does not depend on edge_update; the edge update is the
    # equation of the docstring, written out.
    plain = TransformerLayer(8, heads=2, dropout=0.0, edge_dim=5, norm_first=norm_first)
    plain.load_state_dict(layer.state_dict(), strict=False)
    x_plain, e_plain, alpha_plain = plain(x, ei, e, return_attention_weights=True)
    assert e_plain is e                       # without edge updates: the states given
    torch.testing.assert_close(x_new, x_plain)
    torch.testing.assert_close(alpha, alpha_plain)

    relu = torch.relu
    src, dst = ei
    if norm_first:
        h = torch.cat([layer.edge_norm1(e), x_new[dst], x_new[src]], dim=1)
        ref = e + layer.edge_linear2(relu(layer.edge_linear1(h)))
        ref = ref + layer.edge_ff2(relu(layer.edge_ff1(layer.edge_norm2(ref))))
    else:
        h = torch.cat([e, x_new[dst], x_new[src]], dim=1)
        ref = layer.edge_norm1(e + layer.edge_linear2(relu(layer.edge_linear1(h))))
        ref = layer.edge_norm2(ref + layer.edge_ff2(relu(layer.edge_ff1(ref))))
    torch.testing.assert_close(e_new, ref)
    assert e_new.shape == e.shape
    grad, = torch.autograd.grad(e_new.sum(), x)
    assert grad.abs().sum() > 0


def test_stacked_layers_and_repr():
    layer = TransformerLayer(8, heads=2, edge_dim=3, edge_update=True)
    assert repr(layer) == ("TransformerLayer(8, heads=2, ff_channels=32, dropout=0.1, "
                           "activation='relu', norm_first=False, edge_dim=3, edge_update=True)")
    with pytest.raises(ValueError, match="'edge_attr' is required"):
        layer(torch.randn(3, 8), P.full(3))
    with pytest.raises(ValueError, match="needs 'edge_dim'"):
        TransformerLayer(8, edge_update=True)
    with pytest.raises(ValueError, match="'activation' must be one of"):
        TransformerLayer(8, activation="swish")


@pytest.mark.parametrize("norm_first", [False, True])
def test_a_pair_updates_only_the_targets_as_the_whole_layer_does(norm_first):
    """``(x_src, x_dst)`` with the targets the first rows (a sampled batch's
    seeds): their rows of the whole layer's output, values and gradients."""
    torch.manual_seed(0)
    layer = TransformerLayer(8, heads=2, dropout=0.0, norm_first=norm_first,
                             edge_dim=3).double().eval()
    x = torch.randn(10, 8, dtype=torch.float64, requires_grad=True)
    ei = torch.stack([torch.randint(0, 10, (30,)), torch.randint(0, 4, (30,))])
    e = torch.randn(30, 3, dtype=torch.float64)
    full = layer(x, ei, e).x[:4]
    (g_full,) = torch.autograd.grad(full.sum(), x)
    part = layer((x, x[:4]), EdgeSet(ei, (10, 4)), e).x
    (g_part,) = torch.autograd.grad(part.sum(), x)
    assert part.shape == (4, 8)
    torch.testing.assert_close(part, full)
    torch.testing.assert_close(g_part, g_full)
    with pytest.raises(ValueError, match=r"'x\[1\] \(targets\)' has 5 features"):
        layer((x, torch.randn(4, 5, dtype=torch.float64)), EdgeSet(ei, (10, 4)), e)
    updating = TransformerLayer(8, heads=2, edge_dim=3, edge_update=True)
    with pytest.raises(ValueError, match="give 'x' as one tensor, not a pair"):
        updating((x.float(), x[:4].float()), EdgeSet(ei, (10, 4)), e.float())


def test_from_torch_keeps_the_modules_mode():
    """A converted module is in its source's mode: an evaluation-mode source
    gives an evaluation-mode layer (no dropout), a training one a training one."""
    from graphformer.nn import RelationalAttention, TransformerDecoderLayer

    sources = [(RelationalAttention, torch.nn.MultiheadAttention(8, 2, dropout=0.5)),
               (TransformerLayer, torch.nn.TransformerEncoderLayer(8, 2, 16)),
               (TransformerDecoderLayer, torch.nn.TransformerDecoderLayer(8, 2, 16))]
    for cls, src in sources:
        for training in (False, True):
            new = cls.from_torch(src.train(training))
            assert all(m.training == training for m in new.modules()), (cls, training)


def test_from_torch_of_a_float64_module_copies_every_weight_exactly():
    """A float64 source (built in float64, so its weights are not float32
    values) converts exactly: the feed-forward and norm weights were copied
    into float32 modules first, rounded (outputs off by 1e-8, not 1e-16)."""
    from graphformer.nn import RelationalAttention, TransformerDecoderLayer

    torch.manual_seed(0)
    kw = dict(dim_feedforward=16, dropout=0.0, dtype=torch.float64, batch_first=True)
    sources = [(RelationalAttention, torch.nn.MultiheadAttention(8, 2, dtype=torch.float64)),
               (TransformerLayer, torch.nn.TransformerEncoderLayer(8, 2, **kw)),
               (TransformerDecoderLayer, torch.nn.TransformerDecoderLayer(8, 2, **kw))]
    for cls, src in sources:
        with torch.no_grad():
            for p in src.parameters():      # norms start at 1 and 0: make them float64 values
                p.add_(torch.randn_like(p) * 0.1)
        new = cls.from_torch(src.eval())
        theirs = dict(src.named_parameters())
        for name, mine in new.named_parameters():
            assert mine.dtype == torch.float64, (cls, name)
            if name.split(".")[0] in ("linear1", "linear2", "norm1", "norm2", "norm3"):
                assert torch.equal(mine, theirs[name]), (cls, name)
    x = torch.randn(5, 8, dtype=torch.float64)
    layer = TransformerLayer.from_torch(sources[1][1]).eval()
    torch.testing.assert_close(layer(x, P.full(5)).x, sources[1][1](x[None])[0],
                               rtol=0, atol=1e-13)
