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


# --- Dive into Deep Learning, section 16.5, in plain torch ------------------
# D2L's Attend / Compare / Aggregate, written as there (batch-first padded
# tensors, its mlp with Dropout-Linear-ReLU twice), plus the masks that uneven
# lengths need (D2L pads to 50 tokens and does not mask). ``dropout`` is a
# module factory so that a test can replay the model's dropout masks.

def d2l_mlp(num_inputs, num_hiddens, flatten, dropout):
    net = [dropout(), torch.nn.Linear(num_inputs, num_hiddens), torch.nn.ReLU()]
    if flatten:
        net.append(torch.nn.Flatten(start_dim=1))
    net += [dropout(), torch.nn.Linear(num_hiddens, num_hiddens), torch.nn.ReLU()]
    if flatten:
        net.append(torch.nn.Flatten(start_dim=1))
    return torch.nn.Sequential(*net)


class D2LAttend(torch.nn.Module):
    def __init__(self, num_inputs, num_hiddens, dropout):
        super().__init__()
        self.f = d2l_mlp(num_inputs, num_hiddens, flatten=False, dropout=dropout)

    def forward(self, A, B, mask_A, mask_B):
        f_A = self.f(A)
        f_B = self.f(B)
        e = torch.bmm(f_A, f_B.permute(0, 2, 1))
        e_beta = e.masked_fill(~mask_B.unsqueeze(1), float("-inf"))
        beta = torch.bmm(F.softmax(e_beta, dim=-1), B)
        e_alpha = e.permute(0, 2, 1).masked_fill(~mask_A.unsqueeze(1), float("-inf"))
        alpha = torch.bmm(F.softmax(e_alpha, dim=-1), A)
        return beta, alpha, e


class D2LCompare(torch.nn.Module):
    def __init__(self, num_inputs, num_hiddens, dropout):
        super().__init__()
        self.g = d2l_mlp(num_inputs, num_hiddens, flatten=False, dropout=dropout)

    def forward(self, A, B, beta, alpha):
        V_A = self.g(torch.cat([A, beta], dim=2))
        V_B = self.g(torch.cat([B, alpha], dim=2))
        return V_A, V_B


class D2LAggregate(torch.nn.Module):
    def __init__(self, num_inputs, num_hiddens, num_outputs, dropout):
        super().__init__()
        self.h = d2l_mlp(num_inputs, num_hiddens, flatten=True, dropout=dropout)
        self.linear = torch.nn.Linear(num_hiddens, num_outputs)

    def forward(self, V_A, V_B, mask_A, mask_B):
        V_A = (V_A * mask_A.unsqueeze(-1)).sum(dim=1)
        V_B = (V_B * mask_B.unsqueeze(-1)).sum(dim=1)
        return self.linear(self.h(torch.cat([V_A, V_B], dim=1)))


class D2LDecomposableAttention(torch.nn.Module):
    def __init__(self, vocab_size, embed_size, num_hiddens, num_outputs=3, dropout=0.2):
        super().__init__()
        drop = dropout if callable(dropout) else (lambda: torch.nn.Dropout(dropout))
        self.embedding = torch.nn.Embedding(vocab_size, embed_size)
        self.attend = D2LAttend(embed_size, num_hiddens, drop)
        self.compare = D2LCompare(2 * embed_size, num_hiddens, drop)
        self.aggregate = D2LAggregate(2 * num_hiddens, num_hiddens, num_outputs, drop)

    def forward_embedded(self, A, B, mask_A, mask_B):
        beta, alpha, e = self.attend(A, B, mask_A, mask_B)
        V_A, V_B = self.compare(A, B, beta, alpha)
        return self.aggregate(V_A, V_B, mask_A, mask_B), e

    def load_from(self, model):
        """Copy the linear layers of a graphformer DecomposableAttention, in order."""
        ours = [m for part in (model.F, model.G, model.H) for m in part
                if isinstance(m, torch.nn.Linear)]
        theirs = [m for part in (self.attend.f, self.compare.g, self.aggregate.h)
                  for m in part if isinstance(m, torch.nn.Linear)] + [self.aggregate.linear]
        assert len(ours) == len(theirs) == 7
        for src, dst in zip(ours, theirs):
            dst.load_state_dict(src.state_dict())
        return ours, theirs


class ReplayDropout(torch.nn.Module):
    """Applies the next recorded mask of the graphformer model: recorded on
    packed tokens [N, C] (or [B, C] pair rows), replayed on D2L's padded
    [B, L, C] layout at the real positions (ones at padding)."""

    def __init__(self, tape):
        super().__init__()
        self.tape = tape

    def forward(self, x):
        if not self.training:
            return x
        keep, scale, real = self.tape.pop(0)
        if x.dim() == 3:
            full = torch.ones_like(x)
            full[real] = keep
            keep = full
        assert keep.shape == x.shape
        return x * keep * scale


def record_dropout(model, tape):
    """Records every dropout mask of ``model`` in call order (``keep`` is 1
    where an element was kept; where the input is 0 the mask is irrelevant)."""
    def hook(module, inp, out):
        x = inp[0]
        if module.training and module.p > 0:
            keep = torch.where(x != 0, (out != 0).to(x.dtype), torch.ones_like(x))
            tape.append([keep, 1.0 / (1.0 - module.p), x.size(0)])
    return [m.register_forward_hook(hook) for m in model.modules()
            if isinstance(m, torch.nn.Dropout)]


def _batches():
    return from_token_batch(PREMISES), from_token_batch(HYPOTHESES)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(vocab_size=0), ValueError, "'vocab_size' must be >= 1, got 0"),
    (dict(num_classes=True), TypeError, "'num_classes' must be an int"),
    (dict(embed_dim=8.0), TypeError, "'embed_dim' must be an int"),
    (dict(hidden=-2), ValueError, "'hidden' must be >= 1"),
    (dict(dropout=1.0), ValueError, "'dropout' must be in"),
    (dict(attend_dim=0), ValueError, "'attend_dim' must be >= 1, got 0"),
    (dict(attend_dim=2.5), TypeError, "'attend_dim' must be an int"),
])
def test_config_checks(kwargs, error, match):
    args = dict(vocab_size=10, num_classes=3)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        DecomposableAttentionConfig(**args)


def test_f_runs_once_per_token_and_d2l_shapes():
    model = _model()
    rows = []
    model.F.register_forward_hook(lambda mod, inp, out: rows.append(tuple(out.shape)))
    pa, pb = _batches()
    model(pa, pb)
    # F sees each premise token and each hypothesis token once (13 + 9 rows),
    # and its output width is hidden (D2L: D -> h -> h), not embed_dim.
    assert rows == [(13, 12), (9, 12)]
    assert repr(model) == ("DecomposableAttention(vocab_size=16, num_classes=3, embed_dim=8, "
                           "hidden=12, attend_dim=12, dropout=0.0)")
    # The shape this model had before (F: D -> h -> D) is still available.
    old = _model(attend_dim=8)
    assert [m.out_features for m in old.F if isinstance(m, torch.nn.Linear)] == [12, 8]
    assert old(pa, pb).shape == (5, 3)

    config = DecomposableAttentionConfig.d2l(vocab_size=1000)
    assert (config.embed_dim, config.hidden, config.attend_width, config.dropout,
            config.num_classes) == (100, 200, 200, 0.2, 3)
    d2l = DecomposableAttention(config)
    shapes = [tuple(m.weight.shape) for part in (d2l.F, d2l.G, d2l.H) for m in part
              if isinstance(m, torch.nn.Linear)]
    assert shapes == [(200, 100), (200, 200), (200, 200), (200, 200), (200, 400), (200, 200),
                      (3, 200)]
    ref = D2LDecomposableAttention(1000, 100, 200, dropout=0.2)
    assert sum(p.numel() for p in d2l.parameters()) == sum(p.numel() for p in ref.parameters())
    # Dropout before every linear layer except the classifier, as in D2L.
    kinds = [type(m).__name__ for m in d2l.H]
    assert kinds == ["Dropout", "Linear", "ReLU", "Dropout", "Linear", "ReLU", "Linear"]


def test_matches_dense_reference_forward_and_gradients(backend):
    """Once per softmax implementation (the ``backend`` fixture forces it)."""
    torch.manual_seed(1)
    model = _model().double()
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
    config = DecomposableAttentionConfig(vocab_size=16, num_classes=3)
    with pytest.raises(TypeError, match=r"DecomposableAttention\(softmax_backend=\.\.\.\) was "
                                        r"removed: graphformer.nn.functional chooses"):
        DecomposableAttention(config, softmax_backend="native")
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['backend'\]"):
        DecomposableAttention(config, backend="native")


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


@pytest.mark.parametrize("train", [True, False])
def test_equals_d2l_reimplementation_with_dropout(train):
    """Values and gradients equal D2L's dense attend / compare / aggregate, in
    training with dropout 0.3 too: the model's dropout masks are recorded and
    replayed in D2L's modules, so both see the same draws. That D2L's single
    e = f(A) f(B)^T serves both alignments checks that F runs once per token
    and that one dropout draw is shared by both directions."""
    torch.manual_seed(3)
    p = 0.3
    model = _model(dropout=p).double().train(train)
    tape = []
    ref = D2LDecomposableAttention(16, 8, 12, num_outputs=3,
                                   dropout=lambda: ReplayDropout(tape)).double().train(train)
    ours_lin, ref_lin = ref.load_from(model)
    pa, pb = _batches()
    a = model.embedding(pa.x).detach().requires_grad_()
    b = model.embedding(pb.x).detach().requires_grad_()
    hooks = record_dropout(model, tape)
    logits, al = model.classify(a, pa.ptr, b, pb.ptr, return_attention_weights=True)
    for h in hooks:
        h.remove()
    N_a, N_b, n = pa.num_nodes, pb.num_nodes, len(PREMISES)
    if train:
        # f(A), f(B), g([A, beta]), g([B, alpha]), h: two dropouts each, on
        # N_a, N_b, N_a, N_b token rows and n pair rows: F once per token.
        assert [rows for _, _, rows in tape] == [N_a, N_a, N_b, N_b, N_a, N_a, N_b, N_b, n, n]
        _, ma = _pad(a, pa.ptr)
        _, mb = _pad(b, pb.ptr)
        for entry, real in zip(tape, [ma, ma, mb, mb, ma, ma, mb, mb, None, None]):
            entry[2] = real
        kept = torch.cat([k.flatten() for k, _, _ in tape])
        assert 0.5 < kept.mean() < 0.9  # dropout really drops, about p of the elements
    else:
        assert tape == []
    a2 = a.detach().clone().requires_grad_()
    b2 = b.detach().clone().requires_grad_()
    A, ma = _pad(a2, pa.ptr)
    B, mb = _pad(b2, pb.ptr)
    expected, e = ref.forward_embedded(A, B, ma, mb)
    assert tape == []  # every recorded mask was used, in order
    torch.testing.assert_close(logits, expected, atol=1e-12, rtol=1e-12)

    # The alignments are the two softmaxes of D2L's one e matrix.
    start_a, start_b = pa.ptr[pa.batch], pb.ptr[pb.batch]
    j, i = al.beta_edge_index
    g = pa.batch[i]
    e_edges = e[g, i - start_a[i], j - start_b[j]]
    dense_beta = torch.softmax(e.masked_fill(~mb.unsqueeze(1), float("-inf")), dim=2)
    torch.testing.assert_close(al.beta_weight, dense_beta[g, i - start_a[i], j - start_b[j]],
                               atol=1e-12, rtol=1e-12)
    i, j = al.alpha_edge_index
    g = pb.batch[j]
    dense_alpha = torch.softmax(e.masked_fill(~ma.unsqueeze(2), float("-inf")), dim=1)
    torch.testing.assert_close(al.alpha_weight, dense_alpha[g, i - start_a[i], j - start_b[j]],
                               atol=1e-12, rtol=1e-12)
    assert e_edges.std() > 0

    target = torch.randn_like(expected)
    params = [q for lin in ours_lin for q in (lin.weight, lin.bias)]
    ref_params = [q for lin in ref_lin for q in (lin.weight, lin.bias)]
    g_ours = torch.autograd.grad((logits * target).sum(), [a, b] + params)
    g_ref = torch.autograd.grad((expected * target).sum(), [a2, b2] + ref_params)
    for x, y in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(x, y, atol=1e-12, rtol=1e-10)
    assert g_ours[2].abs().sum() > 0  # F's first weight gets gradient


def test_train_mode_draws_differ_from_eval_and_between_calls():
    """Dropout is live in training (two calls differ, eval is deterministic)."""
    model = _model(dropout=0.3)
    pa, pb = _batches()
    torch.manual_seed(0)
    one = model(pa, pb)
    two = model(pa, pb)
    assert not torch.allclose(one, two)
    model.eval()
    torch.testing.assert_close(model(pa, pb), model(pa, pb), atol=0, rtol=0)
