import math

import pytest
import torch

from graphformer import patterns as P
from graphformer.data import RelativePosition, build_vocab, from_token_batch, from_tokens
from graphformer.nn import RelationalAttention


def test_from_tokens_with_vocab_and_unknowns():
    vocab = build_vocab([["a", "b"], ["b", "c"]])
    assert vocab == {"<pad>": 0, "<unk>": 1, "a": 2, "b": 3, "c": 4}
    data = from_tokens(["c", "a", "zzz"], vocab)
    assert data.x.tolist() == [4, 2, 1] and data.pos.tolist() == [0, 1, 2]
    assert data.num_nodes == 3 and "edge_index" not in data
    with pytest.raises(ValueError, match=r"token 'zzz' at position 2 is not in the vocabulary"):
        from_tokens(["c", "a", "zzz"], vocab, unk=None)


def test_from_tokens_ids_and_pattern():
    data = from_tokens([5, 0, 7], pattern=P.causal)
    assert data.x.tolist() == [5, 0, 7]
    assert torch.equal(data.edge_index, P.causal(3))
    assert from_tokens(torch.tensor([3, 1])).x.tolist() == [3, 1]
    with pytest.raises(ValueError, match=r"position 1 is 'x'"):
        from_tokens([1, "x"])
    with pytest.raises(ValueError, match="not one string"):
        from_tokens("hello world")
    with pytest.raises(ValueError, match="position 1 is negative: -4"):
        from_tokens(torch.tensor([1, -4]))


def test_batch_builds_one_edge_set_for_all_sequences():
    seqs = [["the", "cat"], [], ["a", "dog", "ran"]]
    vocab = build_vocab(seqs)
    batch = from_token_batch(seqs, vocab, pattern=lambda p: P.window(p, 1))
    assert batch.ptr.tolist() == [0, 2, 2, 5]
    assert batch.x.tolist() == [vocab[t] for s in seqs for t in s]
    assert batch.pos.tolist() == [0, 1, 0, 1, 2]
    assert torch.equal(batch.edge_index, P.window(batch.ptr, 1))


def test_relative_position_offsets():
    batch = from_token_batch([[1, 2, 3, 4], [5, 6]], pattern=P.full)
    out = RelativePosition(2, one_hot=False)(batch.clone())
    src, dst = batch.edge_index
    expected = (batch.pos[src] - batch.pos[dst]).clamp(-2, 2)
    assert torch.equal(out.edge_attr, expected)
    hot = RelativePosition(2)(batch.clone()).edge_attr
    assert hot.shape == (batch.edge_index.size(1), 5)
    assert torch.equal(hot.argmax(1) - 2, expected) and torch.equal(hot.sum(1), torch.ones(len(hot)))
    with pytest.raises(ValueError, match="needs 'pos'"):
        RelativePosition(2)(type(batch)(edge_index=batch.edge_index, num_nodes=6))


def test_relational_attention_with_offsets_is_shaw_relative_attention():
    # Shaw et al. (2018): e_ij = x_i W_Q (x_j W_K + a^K_{clip(j-i)})^T / sqrt(d),
    # z_i = sum_j alpha_ij (x_j W_V + a^V_{clip(j-i)}). With one-hot offsets,
    # lin_edge_k / lin_edge_v are the tables a^K, a^V and lin_edge_q is zero.
    k, d = 2, 8
    data = RelativePosition(k, pattern=P.causal)(from_tokens(list(range(6))))
    layer = RelationalAttention(d, d, heads=1, edge_dim=2 * k + 1, bias=False)
    with torch.no_grad():
        layer.lin_edge_q.weight.zero_()
    x = torch.randn(6, d)
    out = layer(x, data.edge_index, data.edge_attr)

    a_k, a_v = layer.lin_edge_k.weight.t(), layer.lin_edge_v.weight.t()  # [2k+1, d]
    q, kk, v = layer.lin_q(x), layer.lin_k(x), layer.lin_v(x)
    z = torch.zeros(6, d)
    for i in range(6):
        js = list(range(i + 1))
        rel = [max(-k, min(k, j - i)) + k for j in js]
        scores = torch.stack([q[i] @ (kk[j] + a_k[r]) for j, r in zip(js, rel)]) / math.sqrt(d)
        alpha = scores.softmax(0)
        z[i] = sum(a * (v[j] + a_v[r]) for a, j, r in zip(alpha, js, rel))
    torch.testing.assert_close(out, layer.lin_out(z), atol=1e-5, rtol=1e-5)


def test_build_vocab_minimum_frequency():
    seqs = [["b", "a", "b"], ["c", "a", "b"], ["d"]]
    assert build_vocab(seqs, min_freq=2) == {"<pad>": 0, "<unk>": 1, "b": 2, "a": 3}
    assert build_vocab(seqs, specials=("<pad>",), min_freq=3) == {"<pad>": 0, "b": 1}
    assert list(build_vocab(seqs)) == ["<pad>", "<unk>", "b", "a", "c", "d"]
    with pytest.raises(ValueError, match="'min_freq' must be an int >= 1, got 0"):
        build_vocab(seqs, min_freq=0)


def test_a_batch_of_no_sequences_is_refused_clearly():
    with pytest.raises(ValueError, match="at least one sequence"):
        from_token_batch([])
    assert from_token_batch([[]]).num_nodes == 0
