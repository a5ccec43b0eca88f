"""RASP on batches of token graphs: primitives, selector algebra, the paper's
programs against plain-Python references, attention equivalence and shapes."""
import random
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from graphformer import patterns, rasp
from graphformer.data.tokens import from_token_batch
from graphformer.nn import RelationalAttention
from tests.helpers import assert_coalesced_equal, pairs, ptr_of


# --------------------------------------------------------------------------- #
# helpers and references
# --------------------------------------------------------------------------- #
def random_batch(seed, vocab=4, max_len=9, num=6):
    rng = random.Random(seed)
    lengths = [1] + [rng.randint(1, max_len) for _ in range(num - 1)]
    rng.shuffle(lengths)
    return [[rng.randrange(vocab) for _ in range(n)] for n in lengths]


def random_dyck(seed, pairs_, num=8, max_len=10):
    """Mostly well-nested strings, some mutated, some random; length 1 included."""
    rng = random.Random(seed)
    tokens_ = [t for p in pairs_ for t in p]
    out = [[rng.choice(tokens_)]]
    while len(out) < num:
        n = rng.randint(1, max_len)
        seq, stack = [], []
        for _ in range(n):
            if stack and rng.random() < 0.5:
                seq.append(stack.pop())
            else:
                o, c = rng.choice(pairs_)
                seq.append(o)
                stack.append(c)
        mode = rng.random()
        if mode < 0.3 and seq:
            seq[rng.randrange(len(seq))] = rng.choice(tokens_)
        elif mode < 0.38:
            seq.insert(rng.randrange(len(seq) + 1), 9)  # not a bracket: ignored
        elif mode < 0.45:
            seq = [rng.choice(tokens_) for _ in range(n)]
        out.append(seq)
    return out


def ref_reverse(s):
    return s[::-1]


def ref_hist(s):
    c = Counter(s)
    return [c[t] for t in s]


def ref_sort(s):
    return sorted(s)


def ref_most_freq(s, pad=-1):
    c = Counter(s)
    first = {}
    for i, t in enumerate(s):
        first.setdefault(t, i)
    order = sorted(c, key=lambda t: (-c[t], first[t]))
    return order + [pad] * (len(s) - len(order))


def ref_hist2(s):
    c = Counter(s)
    return [sum(1 for u in c if c[u] == c[t]) for t in s]


def ref_dyck(s, pairs_):
    closer_of = dict(pairs_)
    openers, closers = set(closer_of), set(closer_of.values())
    out, stack, failed = [], [], False
    for t in s:
        if not failed:
            if t in openers:
                stack.append(closer_of[t])
            elif t in closers and (not stack or stack.pop() != t):
                failed = True
        out.append(rasp.DYCK_FALSE if failed else
                   rasp.DYCK_TRUE if not stack else rasp.DYCK_PREFIX)
    return out


def run(program, seqs):
    ctx = rasp.Context.from_sequences(seqs)
    return program(rasp.tokens(ctx)).to_lists()


# --------------------------------------------------------------------------- #
# primitives
# --------------------------------------------------------------------------- #
def test_leaves_from_pyg_batch():
    batch = from_token_batch([[5, 6, 7], [8]])
    tok, idx, n = rasp.tokens(batch), rasp.indices(batch), rasp.length(batch)
    assert tok.to_lists() == [[5, 6, 7], [8]]
    assert idx.to_lists() == [[0, 1, 2], [0]]
    assert n.to_lists() == [[3, 3, 3], [1]]
    assert (tok.depth, idx.depth, n.depth) == (0, 0, 1)
    # two leaves of one PyG batch combine
    assert (tok + idx).to_lists() == [[5, 7, 9], [8]]


def test_map_and_sequence_map():
    ctx = rasp.Context.from_sequences([[1, 2, 3], [4]])
    tok, idx = rasp.tokens(ctx), rasp.indices(ctx)
    even = rasp.map(lambda x: x % 2 == 0, tok)
    assert even.values.dtype == torch.bool and even.to_lists() == [[False, True, False], [True]]
    half = rasp.map(lambda x: x / 2, tok, kind=rasp.NUMERICAL)
    assert half.kind == rasp.NUMERICAL and half.to_lists() == [[0.5, 1.0, 1.5], [2.0]]
    mixed = rasp.sequence_map(lambda t, i: 10 * t + i, tok, idx)
    assert mixed.to_lists() == [[10, 21, 32], [40]]
    vec = rasp.map(lambda v: v * 3, tok, vectorized=True)
    assert vec.to_lists() == [[3, 6, 9], [12]]
    assert (1 - tok).to_lists() == [[0, -1, -2], [-3]]
    assert (tok / 2).kind == rasp.NUMERICAL
    with pytest.raises(TypeError, match="numbers or bools"):
        rasp.map(lambda x: "a", tok)


def test_select_matches_predicates():
    sizes = [3, 1, 4]
    ctx = rasp.Context(torch.arange(8) % 3, ptr_of(sizes))
    idx = rasp.indices(ctx)
    refs = {rasp.EQ: lambda i, j: j == i, rasp.LT: lambda i, j: j < i,
            rasp.LEQ: lambda i, j: j <= i, rasp.GT: lambda i, j: j > i,
            rasp.GEQ: lambda i, j: j >= i, rasp.NEQ: lambda i, j: j != i,
            rasp.TRUE: lambda i, j: True, rasp.FALSE: lambda i, j: False}
    for pred, ref in refs.items():
        sel = rasp.select(idx, idx, pred)
        assert_coalesced_equal(sel.edge_index, pairs(sizes, lambda i, j, n, ref=ref: ref(i, j)))
    # a Python callable on (key, query)
    sel = rasp.select(idx, idx, lambda k, q: (k + q) % 2 == 0)
    assert_coalesced_equal(sel.edge_index, pairs(sizes, lambda i, j, n: (i + j) % 2 == 0))
    # a constant query
    sel = rasp.select(idx, 0, rasp.EQ)
    assert_coalesced_equal(sel.edge_index, pairs(sizes, lambda i, j, n: j == 0))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=6), min_size=1, max_size=4))
def test_selector_algebra_is_pattern_algebra(seqs):
    ctx = rasp.Context.from_sequences(seqs)
    tok, idx = rasp.tokens(ctx), rasp.indices(ctx)
    a = rasp.select(tok, tok, rasp.EQ)
    b = rasp.select(idx, idx, rasp.LT)
    full = patterns.full(ctx.ptr)
    n = ctx.num_nodes
    assert torch.equal((a & b).edge_index, patterns.intersection(a.edge_index, b.edge_index, n))
    assert torch.equal((a | b).edge_index, patterns.union(a.edge_index, b.edge_index,
                                                          num_nodes=n)[0])
    assert torch.equal((~a).edge_index, patterns.difference(full, a.edge_index, n))
    assert torch.equal((~a).edge_index, rasp.select(tok, tok, rasp.NEQ).edge_index)
    # dense check of the composition on sequence 0
    t = torch.tensor(seqs[0])
    i = torch.arange(len(seqs[0]))
    dense = (t[None, :] == t[:, None]) & (i[None, :] < i[:, None])
    assert torch.equal((a & b).to_dense(0), dense)


def test_aggregate_numerical_and_width():
    ctx = rasp.Context.from_sequences([[1, 2, 3, 4], [5]])
    tok, idx = rasp.tokens(ctx), rasp.indices(ctx)
    prev = rasp.select(idx, idx, rasp.LT)
    mean_prev = rasp.aggregate(prev, rasp.numerical(tok))
    assert mean_prev.to_lists() == [[0.0, 1.0, 1.5, 2.0], [0.0]]  # empty -> default 0
    assert rasp.aggregate(prev, rasp.numerical(tok), default=-1).to_lists()[1] == [-1.0]
    assert rasp.selector_width(prev).to_lists() == [[0, 1, 2, 3], [0]]
    assert mean_prev.depth == 1


def test_aggregate_categorical_semantics():
    ctx = rasp.Context.from_sequences([[7, 7, 8], [9]])
    tok, idx = rasp.tokens(ctx), rasp.indices(ctx)
    # all selected keys agree -> that value; nothing selected -> default
    first_two = rasp.select(idx, 2, rasp.LT)
    agree = rasp.aggregate(first_two, tok, default=-1)
    assert agree.to_lists() == [[7, 7, 7], [9]]
    none = rasp.aggregate(rasp.select(idx, idx, rasp.FALSE), tok, default=-1)
    assert none.to_lists() == [[-1, -1, -1], [-1]]
    # disagreement -> explicit error, or default on request
    everything = rasp.select(tok, tok, rasp.TRUE)
    with pytest.raises(ValueError, match="position 0 of sequence 0.*different values"):
        rasp.aggregate(everything, tok)
    lenient = rasp.aggregate(everything, tok, default=-1, on_conflict="default")
    assert lenient.to_lists() == [[-1, -1, -1], [9]]
    flags = rasp.map(lambda t: t > 7, tok)
    assert rasp.aggregate(first_two, flags).to_lists() == [[False] * 3, [True]]


def test_errors():
    with pytest.raises(ValueError, match=r"token 2\.5 \(sequence 1, position 1\) is not an "
                                         "integer token id"):
        rasp.Context.from_sequences([[1, 2], [3, 2.5]])
    assert rasp.Context.from_sequences([[1.0, 2]]).tokens.tolist() == [1, 2]
    a = rasp.Context.from_sequences([[1, 2], [3]])
    b = rasp.Context.from_sequences([[1, 2, 3]])
    with pytest.raises(ValueError, match="different batches"):
        rasp.tokens(a) + rasp.tokens(b)
    with pytest.raises(ValueError, match="different batches"):
        rasp.select(rasp.tokens(a), rasp.tokens(b), rasp.EQ)
    with pytest.raises(ValueError, match="different batches"):
        rasp.aggregate(rasp.select(rasp.tokens(a), rasp.tokens(a), rasp.EQ), rasp.tokens(b))
    with pytest.raises(ValueError, match="different batches"):
        rasp.select(rasp.tokens(a), rasp.tokens(a), rasp.EQ) & \
            rasp.select(rasp.tokens(b), rasp.tokens(b), rasp.EQ)
    with pytest.raises(TypeError, match="predicate"):
        rasp.select(rasp.tokens(a), rasp.tokens(a), "==")
    with pytest.raises(TypeError, match="Selector"):
        rasp.aggregate(rasp.tokens(a), rasp.tokens(a))
    with pytest.raises(ValueError, match="on_conflict"):
        rasp.aggregate(rasp.select(rasp.tokens(a), rasp.tokens(a), rasp.EQ), rasp.tokens(a),
                       on_conflict="mean")
    with pytest.raises(TypeError, match="truth value"):
        bool(rasp.tokens(a))


# --------------------------------------------------------------------------- #
# programs vs references
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("program,ref", [
    (rasp.make_reverse, ref_reverse),
    (rasp.make_hist, ref_hist),
    (lambda t: rasp.make_sort(t, t), ref_sort),
    (rasp.make_most_freq, ref_most_freq),
    (rasp.make_hist2, ref_hist2),
    (rasp.make_length, lambda s: [len(s)] * len(s)),
], ids=["reverse", "hist", "sort", "most_freq", "hist2", "length"])
def test_programs_match_reference(program, ref, seed):
    seqs = random_batch(seed)
    assert run(program, seqs) == [ref(s) for s in seqs]


@pytest.mark.parametrize("seed", range(3))
def test_sort_unique_and_stable(seed):
    rng = random.Random(seed)
    seqs = [rng.sample(range(20), rng.randint(1, 8)) for _ in range(5)] + [[4]]
    ctx = rasp.Context.from_sequences(seqs)
    tok, idx = rasp.tokens(ctx), rasp.indices(ctx)
    assert rasp.make_sort_unique(tok, tok).to_lists() == [sorted(s) for s in seqs]
    # stable: sort positions by duplicate-heavy keys; ties keep input order
    keys = rasp.map(lambda t: t % 3, tok)
    got = rasp.make_sort(idx, keys).to_lists()
    assert got == [sorted(range(len(s)), key=lambda i: s[i] % 3) for s in seqs]
    with pytest.raises(ValueError, match="different values"):
        rasp.make_sort_unique(idx, rasp.map(lambda t: 0, tok))  # all keys tie


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.integers(0, 4), min_size=1, max_size=8), min_size=1, max_size=4))
def test_programs_hypothesis(seqs):
    ctx = rasp.Context.from_sequences(seqs)
    tok = rasp.tokens(ctx)
    assert rasp.make_sort(tok, tok).to_lists() == [sorted(s) for s in seqs]
    assert rasp.make_most_freq(tok).to_lists() == [ref_most_freq(s) for s in seqs]
    assert rasp.make_hist2(tok).to_lists() == [ref_hist2(s) for s in seqs]


@pytest.mark.parametrize("seed", range(4))
def test_dyck1(seed):
    seqs = random_dyck(seed, [(0, 1)])
    assert run(rasp.make_dyck1, seqs) == [ref_dyck(s, [(0, 1)]) for s in seqs]


@pytest.mark.parametrize("seed", range(4))
def test_dyck2(seed):
    pairs_ = [(0, 1), (2, 3)]
    seqs = random_dyck(seed, pairs_)
    assert run(rasp.make_dyck2, seqs) == [ref_dyck(s, pairs_) for s in seqs]


def test_dyck_random_batches_cover_every_label():
    pairs_ = [(0, 1), (2, 3)]
    seqs = [s for seed in range(4) for s in random_dyck(seed, pairs_)]
    labels = {lab for s in seqs for lab in ref_dyck(s, pairs_)}
    assert labels == {rasp.DYCK_FALSE, rasp.DYCK_PREFIX, rasp.DYCK_TRUE}
    assert any(9 in s for s in seqs) and any(len(s) == 1 for s in seqs)


def test_dyck_examples_and_other_tokens():
    # ( { } ) , ( { ) , ) ; 9 is not a bracket
    seqs = [[0, 2, 3, 1], [0, 2, 1], [1], [0, 9, 1]]
    got = run(rasp.make_dyck2, seqs)
    P, T, F = rasp.DYCK_PREFIX, rasp.DYCK_TRUE, rasp.DYCK_FALSE
    assert got == [[P, P, P, T], [P, P, F], [F], [P, P, T]]
    assert run(rasp.make_dyck1, [[0, 1, 1, 0]]) == [[P, T, F, F]]
    with pytest.raises(ValueError, match="both openers and closers"):
        run(lambda t: rasp.make_dyck(t, [(0, 1), (1, 2)]), [[0]])


# --------------------------------------------------------------------------- #
# shapes
# --------------------------------------------------------------------------- #
def test_program_shapes():
    ctx = rasp.Context.from_sequences([[0, 1, 2, 1], [3]])
    tok = rasp.tokens(ctx)
    # the paper's Table 1 (Weiss et al. 2021); Dyck-2: 3 there with a "best"
    # primitive, 4 in core RASP (see graphformer.rasp.programs)
    expected = {
        "length": (rasp.make_length(tok), (1, 1)),
        "reverse": (rasp.make_reverse(tok), (2, 1)),
        "hist": (rasp.make_hist(tok), (1, 1)),
        "sort": (rasp.make_sort(tok, tok), (2, 1)),
        "sort_unique": (rasp.make_sort_unique(tok, tok), (2, 1)),
        "most_freq": (rasp.make_most_freq(tok), (3, 2)),
        "hist2": (rasp.make_hist2(tok), (2, 2)),
        "dyck1": (rasp.make_dyck1(tok), (2, 1)),
        "dyck2": (rasp.make_dyck2(tok), (4, 1)),
    }
    for name, (sop, shape) in expected.items():
        assert tuple(rasp.program_shape(sop)) == shape, name
    assert rasp.heads_per_layer(expected["most_freq"][0]) == [2, 1, 1]
    assert rasp.program_shape(tok) == (0, 0)
    assert rasp.program_shape(tok + rasp.indices(ctx)) == (0, 0)  # maps are free


def test_shape_counts_distinct_selectors():
    ctx = rasp.Context.from_sequences([[1, 2, 3]])
    tok, idx = rasp.tokens(ctx), rasp.indices(ctx)
    up = rasp.select(idx, idx, rasp.LEQ)
    same = rasp.aggregate(up, rasp.numerical(tok)) + rasp.selector_width(up)
    assert rasp.program_shape(same) == (1, 1)  # one selector -> one head
    rebuilt = rasp.aggregate(rasp.select(idx, idx, rasp.LEQ), rasp.numerical(tok))
    assert rasp.program_shape(rebuilt + rasp.aggregate(up, rasp.numerical(idx))) == (1, 1)
    other = rasp.aggregate(rasp.select(idx, idx, rasp.GEQ), rasp.numerical(tok))
    assert rasp.program_shape(same + other) == (1, 2)
    chained = rasp.aggregate(rasp.select(rasp.selector_width(up), idx, rasp.EQ), tok)
    assert rasp.program_shape(chained) == (2, 1)


# --------------------------------------------------------------------------- #
# selectors as attention heads
# --------------------------------------------------------------------------- #
def test_uniform_attention_on_selector_is_aggregate(backend):
    ctx = rasp.Context.from_sequences(random_batch(7, vocab=6))
    tok, idx = rasp.tokens(ctx), rasp.indices(ctx)
    sel = rasp.select(idx, idx, rasp.LEQ) & ~rasp.select(tok, tok, rasp.EQ)  # some empty rows
    values = rasp.numerical(tok * 3 + idx)
    edge_index, mask = rasp.selector_to_head(sel)
    assert torch.equal(edge_index, sel.edge_index) and mask.shape == (sel.num_edges, 1)
    layer = RelationalAttention(1, 1, bias=False).double()
    with torch.no_grad():
        layer.lin_q.weight.zero_()
        layer.lin_k.weight.zero_()
        layer.lin_v.weight.fill_(1.0)
        layer.lin_out.weight.fill_(1.0)
    out, alpha = layer(values.values[:, None], edge_index, return_attention_weights=True)
    expected = rasp.aggregate(sel, values).values
    torch.testing.assert_close(out[:, 0], expected)
    torch.testing.assert_close(rasp.attention_match(alpha, edge_index, sel),
                               torch.ones(1, dtype=torch.float64))


def test_selectors_packed_into_heads(backend):
    ctx = rasp.Context.from_sequences(random_batch(3, vocab=3))
    tok, idx = rasp.tokens(ctx), rasp.indices(ctx)
    sels = [rasp.select(idx, idx, rasp.LT), rasp.select(tok, tok, rasp.EQ),
            rasp.select(idx, rasp.length(ctx) - idx - 1, rasp.EQ)]
    vals = [rasp.numerical(idx), rasp.numerical(tok), rasp.numerical(tok * 10)]
    edge_index, mask = rasp.selector_to_head(*sels)
    assert mask.shape == (edge_index.size(1), 3)
    layer = rasp.uniform_attention(heads=3).double()
    x = torch.stack([v.values for v in vals], dim=1)
    out, alpha = layer(x, edge_index, head_mask=mask, return_attention_weights=True)
    for h, (s, v) in enumerate(zip(sels, vals)):
        torch.testing.assert_close(out[:, h], rasp.aggregate(s, v).values)
    torch.testing.assert_close(rasp.attention_match(alpha, edge_index, sels),
                               torch.ones(3, dtype=torch.float64))


def test_attention_match_partial():
    ctx = rasp.Context.from_sequences([[0, 1, 2], [3, 4]])
    idx = rasp.indices(ctx)
    full = patterns.full(ctx.ptr)
    alpha = torch.softmax(torch.zeros(full.size(1)), 0)[:, None].expand(-1, 2).contiguous()
    diag = rasp.select(idx, idx, rasp.EQ)
    share = rasp.attention_match(alpha, full, diag)
    torch.testing.assert_close(share, torch.full((2,), 5 / 13, dtype=alpha.dtype))
    # alpha uniform per query on the full pattern: share = mean over queries of 1/T
    layer = RelationalAttention(1, 1, bias=False)
    with torch.no_grad():
        layer.lin_q.weight.zero_()
        layer.lin_k.weight.zero_()
    _, a = layer(torch.randn(5, 1), full, return_attention_weights=True)
    expected = (3 * (1 / 3) + 2 * (1 / 2)) / 5
    torch.testing.assert_close(rasp.attention_match(a, full, diag),
                               torch.tensor([expected], dtype=a.dtype))
    with pytest.raises(ValueError, match="selectors for 2 heads"):
        rasp.attention_match(alpha, full, [diag])
    with pytest.raises(ValueError, match=r"\[E, H\]"):
        rasp.attention_match(alpha[:3], full, diag)


def test_arithmetic_with_a_float_constant_is_float64():
    """A Python float was made a float32 tensor: ``t * 0.1`` gave 0.10000000149."""
    t = rasp.numerical(rasp.tokens(rasp.Context.from_sequences([[1, 2, 3]])))
    assert (t * 0.1).to_lists() == [[1 * 0.1, 2 * 0.1, 3 * 0.1]]
    assert (t + 0.1).to_lists() == [[1.1, 2.1, 3.1]]
    assert (t / 0.1).to_lists() == [[1 / 0.1, 2 / 0.1, 3 / 0.1]]
    assert (0.1 - t).to_lists() == [[0.1 - 1, 0.1 - 2, 0.1 - 3]]
    y = t + 0.5 - 0.1                                          # 1.4 exactly as Python has it
    assert rasp.selector_width(rasp.select(y, 1.5 - 0.1, rasp.EQ)).to_lists() == [[1, 1, 1]]


def test_arithmetic_on_flags_counts_them_as_python_does():
    """``+ - *`` and unary ``-`` on bool s-ops followed torch's bool rules (a
    logical or) or raised; Python (and tracr) count True as 1."""
    t = rasp.tokens(rasp.Context.from_sequences([[1, 0, 1, 3]]))
    one = rasp.map(lambda v: v == 1, t)                        # T F T F
    odd = rasp.map(lambda v: v % 2 == 1, t)                    # T F T T
    a, b = [True, False, True, False], [True, False, True, True]
    assert (one + odd).to_lists() == [[x + y for x, y in zip(a, b)]]
    assert (odd - one).to_lists() == [[y - x for x, y in zip(a, b)]]
    assert (one * odd).to_lists() == [[x * y for x, y in zip(a, b)]]
    assert (-one).to_lists() == [[-x for x in a]]
    assert (one + True).to_lists() == [[x + True for x in a]]
    assert (one + odd).to_lists() == \
        rasp.sequence_map(lambda x, y: x + y, one, odd).to_lists()
