import time

import pytest
import torch
import torch.nn.functional as F

from graphformer import patterns as P
from graphformer.data.tokens import from_token_batch
from graphformer.models.decomposable import (
    Alignment,
    DecomposableAttention,
    DecomposableAttentionConfig,
)

# Pairs of different lengths, length 1 on either side included.
PREMISES = [[1, 2, 3, 4], [5], [6, 7], [8, 9, 10, 11, 12], [3]]
HYPOTHESES = [[2, 9], [1, 2, 3], [4], [5, 6], [7]]


def _model(**kwargs):
    args = dict(vocab_size=16, num_classes=3, embed_dim=8, hidden=12)
    args.update(kwargs)
    return DecomposableAttention(DecomposableAttentionConfig(**args))


def _pad(x, ptr):
    """[N, D] tokens -> [B, L, D] zero-padded and the [B, L] bool mask."""
    lengths = ptr.diff().tolist()
    L = max(lengths)
    out = x.new_zeros(len(lengths), L, x.size(1))
    mask = torch.zeros(len(lengths), L, dtype=torch.bool)
    for b, n in enumerate(lengths):
        out[b, :n] = x[ptr[b]:ptr[b] + n]
        mask[b, :n] = True
    return out, mask


def dense_reference(model, a, ptr_a, b, ptr_b):
    """The paper's equations on padded [B, La, D] / [B, Lb, D] tensors."""
    A, ma = _pad(a, ptr_a)
    Bt, mb = _pad(b, ptr_b)
    e = model.F(A) @ model.F(Bt).transpose(1, 2)  # e_ij = F(a_i)^T F(b_j), [B, La, Lb]
    both = ma.unsqueeze(2) & mb.unsqueeze(1)
    e = e.masked_fill(~both, float("-inf"))
    w_beta = torch.softmax(e, dim=2).nan_to_num(0.0)  # softmax over j (padded rows -> 0)
    w_alpha = torch.softmax(e, dim=1).nan_to_num(0.0)  # softmax over i
    beta = w_beta @ Bt  # [B, La, D]
    alpha = w_alpha.transpose(1, 2) @ A  # [B, Lb, D]
    v1 = model.G(torch.cat([A, beta], dim=-1)) * ma.unsqueeze(-1)
    v2 = model.G(torch.cat([Bt, alpha], dim=-1)) * mb.unsqueeze(-1)
    logits = model.H(torch.cat([v1.sum(1), v2.sum(1)], dim=-1))
    return logits, w_beta, w_alpha


def _batches():
    return from_token_batch(PREMISES), from_token_batch(HYPOTHESES)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(vocab_size=0), ValueError, "'vocab_size' must be >= 1, got 0"),
    (dict(num_classes=True), TypeError, "'num_classes' must be an int"),
    (dict(embed_dim=8.0), TypeError, "'embed_dim' must be an int"),
    (dict(hidden=-2), ValueError, "'hidden' must be >= 1"),
    (dict(dropout=1.0), ValueError, "'dropout' must be in"),
])
def test_config_checks(kwargs, error, match):
    args = dict(vocab_size=10, num_classes=3)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        DecomposableAttentionConfig(**args)


def test_structure_tied_and_identity():
    model = _model()
    proj = model.attend_a.lin_q
    assert proj is model.attend_a.lin_k is model.attend_b.lin_q is model.attend_b.lin_k
    assert proj.module is model.F
    assert model.score_scale == pytest.approx(8 ** 0.25)
    assert model.attend_a.heads == 1 and model.attend_a.head_channels == 8
    # The attention layers own no parameters besides F (through the tied projection).
    for attn in (model.attend_a, model.attend_b):
        assert {id(p) for p in attn.parameters()} == {id(p) for p in model.F.parameters()}
    x = torch.randn(3, 8)
    assert torch.equal(model.attend_a.lin_v(x), x) and torch.equal(model.attend_a.lin_out(x), x)
    assert repr(model) == ("DecomposableAttention(vocab_size=16, num_classes=3, embed_dim=8, "
                           "hidden=12, dropout=0.0)")


def test_matches_dense_reference_forward_and_gradients(backend):
    torch.manual_seed(1)
    model = _model().double()
    model.attend_a.softmax_backend = model.attend_b.softmax_backend = backend
    pa, pb = _batches()
    a = model.embedding(pa.x).detach().requires_grad_()
    b = model.embedding(pb.x).detach().requires_grad_()
    logits, al = model.classify(a, pa.ptr, b, pb.ptr, return_attention_weights=True)
    a2 = a.detach().clone().requires_grad_()
    b2 = b.detach().clone().requires_grad_()
    ref, w_beta, w_alpha = dense_reference(model, a2, pa.ptr, b2, pb.ptr)
    assert logits.shape == (5, 3)
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=0)

    # Alignment weights, edge by edge, equal the dense softmaxes.
    start_a, start_b = pa.ptr[pa.batch], pb.ptr[pb.batch]
    j, i = al.beta_edge_index  # b-token j -> a-token i
    g = pa.batch[i]
    torch.testing.assert_close(al.beta_weight, w_beta[g, i - start_a[i], j - start_b[j]],
                               atol=1e-5, rtol=0)
    i, j = al.alpha_edge_index  # a-token i -> b-token j
    g = pb.batch[j]
    torch.testing.assert_close(al.alpha_weight, w_alpha[g, i - start_a[i], j - start_b[j]],
                               atol=1e-5, rtol=0)

    # Gradients w.r.t. the embedded tokens and every parameter.
    target = torch.randn_like(ref)
    params = [p for n, p in model.named_parameters() if not n.startswith("embedding")]
    g_model = torch.autograd.grad((logits * target).sum(), [a, b] + params)
    g_ref = torch.autograd.grad((ref * target).sum(), [a2, b2] + params)
    assert len(g_model) == 2 + 14  # weight + bias of 2 + 2 + 3 linears (F, G, H)
    for x, y in zip(g_model, g_ref):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0)
    assert g_model[0].abs().sum() > 0 and g_model[2].abs().sum() > 0  # F gets gradient


def test_forward_on_token_batches_equals_classify():
    model = _model().eval()
    pa, pb = _batches()
    out = model(pa, pb)
    ref, _, _ = dense_reference(model, model.embedding(pa.x), pa.ptr,
                                model.embedding(pb.x), pb.ptr)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    # Pair b only depends on pair b: a batch of one gives the same row.
    one = model(from_token_batch(PREMISES[3:4]), from_token_batch(HYPOTHESES[3:4]))
    torch.testing.assert_close(one, out[3:4], atol=1e-5, rtol=0)


def test_alignment_weights_sum_to_one_per_token():
    model = _model()
    pa, pb = _batches()
    _, al = model(pa, pb, return_attention_weights=True)
    assert isinstance(al, Alignment)
    assert torch.equal(al.beta_edge_index, P.cross(pb.ptr, pa.ptr))
    assert torch.equal(al.alpha_edge_index, P.cross(pa.ptr, pb.ptr))
    n_edges = sum(len(p) * len(h) for p, h in zip(PREMISES, HYPOTHESES))
    assert al.beta_weight.shape == al.alpha_weight.shape == (n_edges,)
    per_a = torch.zeros(pa.num_nodes, dtype=al.beta_weight.dtype).index_add_(
        0, al.beta_edge_index[1], al.beta_weight)
    per_b = torch.zeros(pb.num_nodes, dtype=al.alpha_weight.dtype).index_add_(
        0, al.alpha_edge_index[1], al.alpha_weight)
    torch.testing.assert_close(per_a, torch.ones(pa.num_nodes))
    torch.testing.assert_close(per_b, torch.ones(pb.num_nodes))
    # A premise of length 1 aligns every hypothesis token to it with weight 1.
    assert torch.all(al.alpha_weight[pa.batch[al.alpha_edge_index[0]] == 1] == 1.0)


def test_clear_errors():
    model = _model()
    pa, pb = _batches()
    with pytest.raises(TypeError, match="'premise' must be a token batch"):
        model(pa.x, pb)
    bad = from_token_batch([[1, 2], [99]])
    with pytest.raises(IndexError, match=r"'hypothesis.x\[2\]' = 99 is not a token id"):
        model(from_token_batch([[1], [2]]), bad)
    with pytest.raises(ValueError, match="sentence 1 of 'b' is empty"):
        model.classify(torch.randn(2, 8), torch.tensor([0, 1, 2]),
                       torch.randn(1, 8), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="'ptr_a' describes 2 sentences but 'ptr_b' describes 1"):
        model.classify(torch.randn(2, 8), torch.tensor([0, 1, 2]),
                       torch.randn(1, 8), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"'a' must have shape \[N_a, embed_dim=8\]"):
        model.classify(torch.randn(2, 5), torch.tensor([0, 2]), torch.randn(1, 8), 1)
    with pytest.raises(TypeError, match="must be a DecomposableAttentionConfig"):
        DecomposableAttention({"vocab_size": 3})


def entailment_data(n, vocab, generator):
    """premise: 3-6 distinct tokens; hypothesis: 1-3 of them (label 1), or the
    same with one token swapped for one absent from the premise (label 0)."""
    premises, hypotheses, labels = [], [], []
    for k in range(n):
        perm = torch.randperm(vocab, generator=generator).tolist()
        la = int(torch.randint(3, 7, (1,), generator=generator))
        lb = int(torch.randint(1, 4, (1,), generator=generator))
        premise = perm[:la]
        hyp = [premise[t] for t in torch.randperm(la, generator=generator)[:lb].tolist()]
        label = k % 2
        if label == 0:
            hyp[int(torch.randint(lb, (1,), generator=generator))] = perm[la]  # absent token
        premises.append(premise)
        hypotheses.append(hyp)
        labels.append(label)
    return premises, hypotheses, torch.tensor(labels)


def test_learns_synthetic_entailment(one_thread, capsys):
    vocab = 20
    gen = torch.Generator().manual_seed(0)
    train = entailment_data(2048, vocab, gen)
    test = entailment_data(1000, vocab, gen)
    torch.manual_seed(0)
    model = _model(vocab_size=vocab, num_classes=2, embed_dim=16, hidden=32)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    t0 = time.perf_counter()
    batch_size = 64
    for epoch in range(4):
        order = torch.randperm(2048, generator=gen).tolist()
        for s in range(0, 2048, batch_size):
            idx = order[s:s + batch_size]
            pa = from_token_batch([train[0][k] for k in idx])
            pb = from_token_batch([train[1][k] for k in idx])
            loss = F.cross_entropy(model(pa, pb), train[2][idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    seconds = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        pred = model(from_token_batch(test[0]), from_token_batch(test[1])).argmax(-1)
    acc = (pred == test[2]).float().mean().item()
    with capsys.disabled():
        print(f"\n[decomposable] held-out entailment accuracy {acc:.3f} (chance 0.5), "
              f"train {seconds:.1f}s, final loss {loss.item():.3f}")
    assert acc >= 0.85
