"""TransformerDecoderLayer = torch.nn.TransformerDecoderLayer with the matching masks."""
import pytest
import torch
from torch_geometric.utils import to_dense_batch

from graphformer import patterns as P
from graphformer.nn import TransformerDecoderLayer
from tests.helpers import ptr_of
from tests.nn.test_attention import mha_mask

D, H, FF = 12, 3, 20
# (target lengths, memory lengths) per pair: uneven, length 1 included.
BATCHES = [([5, 1, 8, 3], [4, 6, 2, 7]), ([2, 6], [1, 3]), ([7], [5])]


def _batch_vector(ptr):
    return torch.repeat_interleave(torch.arange(ptr.numel() - 1), ptr.diff())


def monotone_cross(ptr_mem, ptr_tgt):
    """Target token i sees memory tokens j <= i + 1 of its own pair: a subset
    of ``cross`` (plays ``memory_mask``)."""
    ei = P.cross(ptr_mem, ptr_tgt)
    pos_m = torch.arange(int(ptr_mem[-1])) - ptr_mem[_batch_vector(ptr_mem)]
    pos_t = torch.arange(int(ptr_tgt[-1])) - ptr_tgt[_batch_vector(ptr_tgt)]
    return ei[:, pos_m[ei[0]] <= pos_t[ei[1]] + 1]


def cross_mask(ei, ptr_mem, ptr_tgt, t, s, heads):
    """Bipartite edges -> MultiheadAttention's 3-D memory_mask [B*H, T, S]
    (True = masked out); padded target rows see every memory token (those
    are masked by memory_key_padding_mask where padded)."""
    b_t = _batch_vector(ptr_tgt)
    allowed = torch.zeros(ptr_tgt.numel() - 1, t, s, dtype=torch.bool)
    src, dst = ei
    allowed[b_t[dst], dst - ptr_tgt[b_t[dst]], src - ptr_mem[b_t[dst]]] = True
    real_t = torch.arange(t) < ptr_tgt.diff().unsqueeze(1)
    allowed |= ~real_t.unsqueeze(2)
    return (~allowed).repeat_interleave(heads, dim=0)


def causal_mask(t):
    """PyTorch's causal tgt_mask as bool (True = masked out: j > i)."""
    return torch.ones(t, t, dtype=torch.bool).triu(1)


def _grads_ours(layer):
    out = []
    for attn in (layer.self_attn, layer.cross_attn):
        out.append(torch.cat([attn.lin_q.weight.grad, attn.lin_k.weight.grad,
                              attn.lin_v.weight.grad]))
        out.append(torch.cat([attn.lin_q.bias.grad, attn.lin_k.bias.grad, attn.lin_v.bias.grad]))
        out += [attn.lin_out.weight.grad, attn.lin_out.bias.grad]
    for name in ("linear1", "linear2", "norm1", "norm2", "norm3"):
        out += [getattr(layer, name).weight.grad, getattr(layer, name).bias.grad]
    return out


def _grads_torch(ref):
    out = []
    for attn in (ref.self_attn, ref.multihead_attn):
        out += [attn.in_proj_weight.grad, attn.in_proj_bias.grad, attn.out_proj.weight.grad,
                attn.out_proj.bias.grad]
    for name in ("linear1", "linear2", "norm1", "norm2", "norm3"):
        out += [getattr(ref, name).weight.grad, getattr(ref, name).bias.grad]
    return out


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("self_pattern", ["causal", "window"])
@pytest.mark.parametrize("cross_pattern", ["full", "monotone"])
def test_equals_torch_decoder_layer(norm_first, activation, self_pattern, cross_pattern):
    for sizes_t, sizes_m in BATCHES:
        ref = torch.nn.TransformerDecoderLayer(
            D, H, dim_feedforward=FF, dropout=0.0, activation=activation,
            norm_first=norm_first, batch_first=True).double()
        layer = TransformerDecoderLayer.from_torch(ref)
        assert next(layer.parameters()).dtype == torch.float64
        ptr_t, ptr_m = ptr_of(sizes_t), ptr_of(sizes_m)
        b_t, b_m = _batch_vector(ptr_t), _batch_vector(ptr_m)
        x = torch.randn(int(ptr_t[-1]), D, dtype=torch.float64, requires_grad=True)
        mem = torch.randn(int(ptr_m[-1]), D, dtype=torch.float64, requires_grad=True)
        xd, real_t = to_dense_batch(x, b_t)
        md, real_m = to_dense_batch(mem, b_m)
        T, S = xd.size(1), md.size(1)

        kwargs = dict(memory_key_padding_mask=~real_m)
        if self_pattern == "causal":
            ei = P.causal(ptr_t)
            kwargs.update(tgt_mask=causal_mask(T), tgt_key_padding_mask=~real_t)
        else:  # any edge set: a two-sided window, as a 3-D mask (padding included)
            ei = P.window(ptr_t, 1, causal=False)
            kwargs.update(tgt_mask=mha_mask(P.to_mask(ei, ptr_t), H))
        if cross_pattern == "full":
            cei = P.cross(ptr_m, ptr_t)
        else:
            cei = monotone_cross(ptr_m, ptr_t)
            kwargs.update(memory_mask=cross_mask(cei, ptr_m, ptr_t, T, S, H))
        expected = ref(xd, md, **kwargs)[real_t]
        out = layer(x, mem, ei, cei, batch=b_t)
        torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-10)

        g = torch.randn_like(out)
        gx, gm = torch.autograd.grad((out * g).sum(), [x, mem], retain_graph=True)
        rx, rm = torch.autograd.grad((expected * g).sum(), [x, mem], retain_graph=True)
        torch.testing.assert_close(gx, rx, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(gm, rm, atol=1e-10, rtol=1e-10)
        (out * g).sum().backward()
        (expected * g).sum().backward()
        for ours, theirs in zip(_grads_ours(layer), _grads_torch(ref), strict=True):
            torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=1e-10)


def test_attention_weights_and_eval_mode():
    ref = torch.nn.TransformerDecoderLayer(D, H, dim_feedforward=FF, batch_first=True).eval()
    layer = TransformerDecoderLayer.from_torch(ref).eval()
    assert layer.dropout == 0.1 and layer.ff_channels == FF and layer.heads == H
    ptr_t, ptr_m = ptr_of([3, 5]), ptr_of([4, 2])
    x, mem = torch.randn(8, D), torch.randn(6, D)
    ei, cei = P.causal(ptr_t), P.cross(ptr_m, ptr_t)
    with torch.no_grad():
        out, a_self, a_cross = layer(x, mem, ei, cei, return_attention_weights=True)
        # (the attention backend may differ when weights are asked for: float tolerance)
        torch.testing.assert_close(out, layer(x, mem, ei, cei), atol=1e-6, rtol=1e-6)
        xd, real_t = to_dense_batch(x, _batch_vector(ptr_t))
        md, real_m = to_dense_batch(mem, _batch_vector(ptr_m))
        expected = ref(xd, md, tgt_mask=causal_mask(xd.size(1)), tgt_key_padding_mask=~real_t,
                       memory_key_padding_mask=~real_m)[real_t]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert a_self.shape == (ei.size(1), H) and a_cross.shape == (cei.size(1), H)
    for alpha, dst in ((a_self, ei[1]), (a_cross, cei[1])):
        sums = torch.zeros(8, H).index_add_(0, dst, alpha)
        torch.testing.assert_close(sums, torch.ones(8, H))
    # The first target token of each pair attends causally to itself only.
    first = (ei[0] == ei[1]) & torch.isin(ei[1], ptr_t[:-1])
    assert torch.all(a_self[first] == 1)


def test_different_memory_width_errors_and_repr():
    layer = TransformerDecoderLayer(8, heads=2, memory_channels=5, dropout=0.0)
    ptr_t, ptr_m = ptr_of([2, 3]), ptr_of([4, 1])
    out = layer(torch.randn(5, 8), torch.randn(5, 5), P.causal(ptr_t), P.cross(ptr_m, ptr_t))
    assert out.shape == (5, 8)
    with pytest.raises(ValueError, match=r"'memory' must have shape \[N, 5\], got \[5, 8\]"):
        layer(torch.randn(5, 8), torch.randn(5, 8), P.causal(ptr_t), P.cross(ptr_m, ptr_t))
    with pytest.raises(ValueError, match="'activation' must be one of"):
        TransformerDecoderLayer(8, activation="tanh")
    with pytest.raises(ValueError, match=r"'channels' \(8\) is not divisible by 'heads' \(3\)"):
        TransformerDecoderLayer(8, heads=3)
    with pytest.raises(ValueError, match="only relu and gelu"):
        TransformerDecoderLayer.from_torch(
            torch.nn.TransformerDecoderLayer(8, 2, activation=torch.nn.Tanh()))
    assert repr(layer) == ("TransformerDecoderLayer(8, heads=2, memory_channels=5, "
                           "ff_channels=32, dropout=0.0, activation='relu', norm_first=False)")
