"""rasp.compile: the compiled graphformer model equals the RASP evaluator on
every input of small spaces and on thousands of random inputs of larger ones,
has program_shape's layers and heads, realises selectors as attention over
their edge sets, and refuses what it cannot compile by name."""
import itertools
import random

import pytest
import torch

from graphformer import rasp
from graphformer.nn import RelationalAttention


def all_sequences(vocab, max_len):
    return [list(s) for n in range(1, max_len + 1) for s in itertools.product(vocab, repeat=n)]


def random_sequences(vocab, max_len, num, seed):
    rng = random.Random(seed)
    out = [[rng.choice(vocab) for _ in range(max_len)]]  # the longest length is drawn
    out += [[rng.choice(vocab) for _ in range(rng.randint(1, max_len))] for _ in range(num - 1)]
    return out


def evaluate(program, seqs):
    return program(rasp.tokens(rasp.Context.from_sequences(seqs))).to_lists()


def sort(t):
    return rasp.make_sort(t, t)


def composite(t):
    """~, | and & selectors, a callable predicate, empty selections (numerical
    and categorical defaults), a conflict resolved to the default, a constant
    operand, bool values and a sequence_map of one s-op with itself."""
    idx = rasp.indices(t)
    before = rasp.select(idx, idx, rasp.LT)
    differs = ~rasp.select(t, t, rasp.EQ)
    width = rasp.selector_width(before & differs)                      # may be 0
    neighbour = rasp.select(idx, idx, lambda k, q: abs(k - q) == 1) | rasp.select(t, 0, rasp.EQ)
    near = rasp.aggregate(neighbour, t, default=7, on_conflict="default")
    odd = rasp.map(lambda v: v % 2 == 1, t)
    mean_before = rasp.aggregate(before & ~differs, rasp.numerical(odd))  # 0 where empty
    above = rasp.map(lambda m: m > 0.5, mean_before)
    square = rasp.sequence_map(lambda a, b: a * b, width, width)
    return rasp.sequence_map(lambda a, b: a + 100 * b, square,
                             rasp.sequence_map(lambda n, u: n * 2 + int(u), near, above))


def numeric_output(t):
    idx = rasp.indices(t)
    return rasp.aggregate(rasp.select(idx, idx, rasp.LT) & rasp.select(t, t, rasp.NEQ),
                          rasp.numerical(t * 2 + 1))


PROGRAMS = {
    "length": (rasp.make_length, (0, 1, 2)),
    "reverse": (rasp.make_reverse, (0, 1, 2)),
    "hist": (rasp.make_hist, (0, 1, 2)),
    "double_hist": (rasp.make_hist2, (0, 1, 2)),
    "sort": (sort, (0, 1, 2)),
    "most_freq": (rasp.make_most_freq, (0, 1, 2)),
    "dyck1": (rasp.make_dyck1, (0, 1, 9)),
    "dyck2": (rasp.make_dyck2, (0, 1, 2, 3)),
    "composite": (composite, (0, 1, 2)),
    "numeric_output": (numeric_output, (0, 1, 2)),
}


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_exact_on_every_input_up_to_length_5(name):
    program, vocab = PROGRAMS[name]
    model = rasp.compile(program, 5, vocab)
    seqs = all_sequences(vocab, 5)    # 363 inputs (1364 for Dyck-2)
    assert model.run(seqs) == evaluate(program, seqs)


@pytest.mark.parametrize("name,vocab,max_len,num", [
    ("reverse", range(6), 10, 3000),
    ("hist", range(6), 10, 3000),
    ("double_hist", range(4), 10, 3000),
    ("sort", range(6), 10, 3000),
    ("most_freq", range(6), 10, 3000),
    pytest.param("composite", range(4), 8, 2000, marks=pytest.mark.slow),
    pytest.param("dyck1", (0, 1, 9), 8, 2000, marks=pytest.mark.slow),
    pytest.param("dyck2", (0, 1, 2, 3), 8, 2000, marks=pytest.mark.slow),
])
def test_exact_on_random_inputs(name, vocab, max_len, num):
    program = PROGRAMS[name][0]
    vocab = tuple(vocab)
    model = rasp.compile(program, max_len, vocab)
    seqs = random_sequences(vocab, max_len, num, seed=len(name))
    assert model.run(seqs) == evaluate(program, seqs)


def test_dyck_labels_all_occur_in_the_exhaustive_space():
    seqs = all_sequences((0, 1, 2, 3), 5)
    labels = {v for s in evaluate(rasp.make_dyck2, seqs) for v in s}
    assert labels == {rasp.DYCK_FALSE, rasp.DYCK_PREFIX, rasp.DYCK_TRUE}


@pytest.mark.parametrize("name", ["reverse", "hist", "double_hist", "sort", "most_freq",
                                  "dyck1", "dyck2", "composite"])
def test_shape_is_program_shape(name):
    program, vocab = PROGRAMS[name]
    model = rasp.compile(program, 4, vocab)
    out = program(rasp.tokens(rasp.Context.from_sequences([[vocab[0]]])))
    assert model.shape == rasp.program_shape(out)
    assert model.heads_per_layer == rasp.heads_per_layer(out)
    assert len(model.attention) == model.shape.layers
    assert all(isinstance(layer, RelationalAttention) for layer in model.attention)
    assert [len(sels) for sels in rasp.head_selectors(out)] == model.heads_per_layer


def test_heads_attend_uniformly_over_the_selectors_edges():
    """Each compiled head's attention is the selector's edge set (aggregate
    heads) or it plus self-loops (selector_width heads), uniform per query."""
    seqs = random_sequences((0, 1, 2), 6, 40, seed=3)
    ctx = rasp.Context.from_sequences(seqs)
    out = rasp.make_most_freq(rasp.tokens(ctx))
    model = rasp.compile(rasp.make_most_freq, 6, (0, 1, 2))
    _, attention = model(ctx.tokens, ctx.ptr, return_attention=True)
    loops = rasp.select(rasp.indices(ctx), rasp.indices(ctx), rasp.EQ)
    for layer, (sels, plan, (edge_index, alpha, mask)) in enumerate(
            zip(rasp.head_selectors(out), model.plans, attention)):
        for h, (sel, head) in enumerate(zip(sels, plan.heads)):
            expected = (sel | loops) if head.width else sel
            got = edge_index[:, mask[:, h]]
            assert torch.equal(got, expected.edge_index), (layer, h)
            deg = torch.bincount(got[1], minlength=ctx.num_nodes).double()
            torch.testing.assert_close(alpha[mask[:, h], h], 1.0 / deg[got[1]])
            assert float(rasp.attention_match(alpha[:, h], edge_index, expected)[0]) == 1.0


def test_no_bos_token_and_zero_in_degree():
    """An aggregate whose selector is empty for some query reads RASP's default
    from a zero in-degree, on the tokens as given (no extra token)."""
    program = PROGRAMS["numeric_output"][0]
    model = rasp.compile(program, 4, (0, 1, 2))
    seqs = [[0], [1, 1, 1], [2, 0, 1, 0]]
    ctx = rasp.Context.from_sequences(seqs)
    out, attention = model(ctx.tokens, ctx.ptr, return_attention=True)
    assert out.shape[0] == ctx.num_nodes
    edge_index, _, mask = attention[0]
    deg = torch.bincount(edge_index[1][mask[:, 0]], minlength=ctx.num_nodes)
    assert (deg == 0).any()
    assert model.run(seqs) == [[0.0], [0.0, 0.0, 0.0], [0.0, 5.0, 3.0, 4.0]]


def test_decoding_is_a_fixed_lookup():
    model = rasp.compile(rasp.make_hist, 4, (0, 1))
    ctx = rasp.Context.from_sequences([[0, 1, 1]])
    out = model(ctx.tokens, ctx.ptr)
    assert torch.equal(out, torch.nn.functional.one_hot(out.argmax(-1), out.size(1)).double())
    assert model.decode(out).tolist() == [1, 2, 2]
    assert model.output_values.tolist() == list(range(5))


def test_weights_not_the_evaluator_compute_the_values():
    """Zeroing a lookup MLP or an attention value map breaks the output: the
    values flow through the model's weights."""
    model = rasp.compile(rasp.make_reverse, 5, (0, 1, 2))
    seqs = random_sequences((0, 1, 2), 5, 50, seed=1)
    assert model.run(seqs) == evaluate(rasp.make_reverse, seqs)
    with torch.no_grad():
        model.attention[1].lin_v.weight.zero_()
    assert model.run(seqs) != evaluate(rasp.make_reverse, seqs)


def test_conflicting_categorical_aggregate_outputs_default():
    """Where the evaluator raises (disagreeing keys, on_conflict='error'), the
    model outputs the default; elsewhere it equals the evaluator."""
    def argsort(t):
        return rasp.make_sort_unique(rasp.indices(t), t)

    model = rasp.compile(argsort, 4, (0, 1, 2, 3))
    distinct = [[3, 1, 2], [0], [2, 3, 0, 1]]
    assert model.run(distinct) == evaluate(argsort, distinct) == [[1, 2, 0], [0], [2, 3, 0, 1]]
    with pytest.raises(ValueError, match="different values"):
        evaluate(argsort, [[1, 1]])
    assert model.run([[1, 1]]) == [[0, 0]]


def test_input_errors():
    model = rasp.compile(rasp.make_hist, 3, (0, 1))
    with pytest.raises(ValueError, match="token 5 at node 1 is not in the compiled vocab"):
        model(torch.tensor([0, 5]), 2)
    with pytest.raises(ValueError, match="position 3 .* max_len=3"):
        model.run([[0, 1, 0, 1]])
    with pytest.raises(ValueError, match="'max_len' must be a positive int"):
        rasp.compile(rasp.make_hist, 0, (0, 1))
    with pytest.raises(ValueError, match="'vocab' is empty"):
        rasp.compile(rasp.make_hist, 3, [])
    with pytest.raises(ValueError, match="repeated"):
        rasp.compile(rasp.make_hist, 3, [1, 1])
    with pytest.raises(ValueError, match=r"not integers: \[1\.5\]"):   # not cast to 1
        rasp.compile(rasp.make_reverse, 3, [1, 1.5, 2])
    with pytest.raises(TypeError, match="must return an SOp"):
        rasp.compile(lambda t: rasp.select(t, t, rasp.EQ), 3, (0, 1))


def test_refusals_name_the_operation():
    ctx = rasp.Context.from_sequences([[0]])
    tok, idx = rasp.tokens(ctx), rasp.indices(ctx)
    up = rasp.select(idx, idx, rasp.LEQ)
    with pytest.raises(ValueError, match="s-op aggregate: .*default=1"):
        rasp.compile(rasp.aggregate(up, rasp.numerical(tok), default=1), 3, (0, 1))
    shared = rasp.sequence_map(lambda a, b: a + b,
                               rasp.selector_width(up, name="width"),
                               rasp.aggregate(up, tok, name="fetch"))
    with pytest.raises(ValueError, match="s-op selector_width 'width' and s-op aggregate "
                                         "'fetch' use the same selector in layer 1"):
        rasp.compile(shared, 3, (0, 1))
    with pytest.raises(ValueError, match="s-op map 'inverse'.*ZeroDivisionError"):
        # built on a batch it can run on; compiling enumerates token 0 too
        tokens = rasp.tokens(rasp.Context.from_sequences([[1]]))
        rasp.compile(rasp.map(lambda v: 10 // v, tokens, name="inverse"), 3, (0, 1))
    with pytest.raises(ValueError, match="s-op sequence_map: 20 possible values .*"
                                         "max_values=10"):
        rasp.compile(lambda t: t * 100 + rasp.indices(t), 4, range(5), max_values=10)
    with pytest.raises(ValueError, match="s-op aggregate: .*more than max_values"):
        rasp.compile(lambda t: rasp.aggregate(rasp.select(t, t, rasp.TRUE), rasp.numerical(t)),
                     6, range(8), max_values=20)
    with pytest.raises(ValueError, match="selector select: cannot tabulate the predicate"):
        tokens = rasp.tokens(rasp.Context.from_sequences([[1]]))
        rasp.compile(rasp.selector_width(rasp.select(tokens, tokens, lambda k, q: 1 // k)),
                     3, (0, 1))
    mystery = rasp.SOp(tok.values, rasp.CATEGORICAL, ctx, "mystery", (tok,))
    with pytest.raises(ValueError, match="s-op mystery: .*does not know the op"):
        rasp.compile(mystery, 3, (0, 1))


def test_program_given_as_an_sop():
    ctx = rasp.Context.from_sequences([[2, 0, 1], [1]])
    out = rasp.make_reverse(rasp.tokens(ctx))
    model = rasp.compile(out, 4, (0, 1, 2))
    assert model.run([[2, 0, 1], [1], [0, 0, 2, 1]]) == [[1, 0, 2], [1], [1, 2, 0, 0]]


def test_forward_never_calls_the_evaluator(monkeypatch):
    """Once compiled, the model runs with every RASP evaluation function
    disabled: the values come from its layers."""
    import graphformer.rasp._core as core
    import graphformer.rasp.compiler as compiler

    model = rasp.compile(rasp.make_dyck2, 6, (0, 1, 2, 3))
    seqs = random_sequences((0, 1, 2, 3), 6, 300, seed=5)
    expected = evaluate(rasp.make_dyck2, seqs)

    def forbidden(*args, **kwargs):
        raise AssertionError("the RASP evaluator was called")

    for name in ("select", "aggregate", "selector_width", "map", "sequence_map",
                 "apply_unary", "apply_binary", "tokens", "indices"):
        monkeypatch.setattr(core, name, forbidden)
    for name in ("apply_unary", "apply_binary", "rasp_tokens"):
        monkeypatch.setattr(compiler, name, forbidden)
    monkeypatch.setattr(core, "COMPARE", {})
    assert model.run(seqs) == expected


def test_programs_without_attention():
    model = rasp.compile(lambda t: rasp.sequence_map(lambda a, b: a * 10 + b, t + 1,
                                                     rasp.indices(t)), 3, (0, 1))
    assert model.shape == (0, 0) and len(model.stacks[0]) == 2
    assert model.run([[0, 1, 1], [1]]) == [[10, 21, 22], [20]]
    identity = rasp.compile(lambda t: t, 3, (4, 2))
    assert identity.run([[2, 4, 4]]) == [[2, 4, 4]]


def test_s_ops_that_differ_in_kind_or_constant_type_are_not_merged():
    """The compiler took two s-ops of one op, parameters and inputs as one,
    whatever their kind (a categorical and a numerical map of one function)
    or their constant's type (``t + 1`` and ``t + 1.0``, since 1 == 1.0): it
    crashed, or returned another s-op's values."""
    def is_one(v):
        return v == 1

    def kinds(t):
        idx = rasp.indices(t)
        ones = rasp.selector_width(rasp.select(rasp.map(is_one, t), True, rasp.EQ)
                                   & rasp.select(idx, idx, rasp.LEQ))
        share = rasp.aggregate(rasp.select(idx, idx, rasp.LEQ),
                               rasp.map(is_one, t, kind=rasp.NUMERICAL))
        return rasp.sequence_map(lambda a, b: a + b, ones, share)

    def constants(t):
        idx = rasp.indices(t)
        up = rasp.select(idx, idx, rasp.LEQ)
        return rasp.sequence_map(lambda a, b: a + b,
                                 rasp.aggregate(up, t + 1, on_conflict="default"),
                                 rasp.aggregate(up, t + 1.0, on_conflict="default"))

    def flags(t):
        one, odd = rasp.map(is_one, t), rasp.map(lambda v: v % 2 == 1, t)
        return rasp.numerical(one + odd - (-one)) * 0.1

    seqs = all_sequences([0, 1, 3], 3)
    for program in (kinds, constants, flags):
        compiled = rasp.compile(program, max_len=3, vocab=[0, 1, 3])
        assert compiled.run(seqs) == evaluate(program, seqs), program.__name__
