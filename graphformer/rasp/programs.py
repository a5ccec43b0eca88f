"""The classic RASP programs of Weiss et al. (2021), on batches.

Every ``make_*`` takes s-ops of one batch (usually ``tokens(batch)``) and
returns the output s-op; run ``program_shape`` on it for its size. Tokens are
integer ids (map strings to ids with a vocabulary first).

======================  ==========================================  =============
program                 output at position ``i``                    layers, heads
======================  ==========================================  =============
``make_length``         sequence length ``T``                       1, 1
``make_reverse``        ``x[T - 1 - i]``                            2, 1
``make_hist``           number of ``j`` with ``x[j] == x[i]``       1, 1
``make_sort_unique``    ``vals`` sorted by (distinct) ``keys``      2, 1
``make_sort``           stable sort by ``keys`` (duplicates ok)     2, 1
``make_most_freq``      distinct tokens by decreasing frequency     3, 2
``make_hist2``          distinct tokens with the count of ``x[i]``  2, 2
``make_dyck1``          Dyck-1 prefix label (F / P / T)             2, 1
``make_dyck2``          Dyck-2 prefix label (F / P / T)             4, 1
======================  ==========================================  =============

The counts follow :mod:`graphformer.rasp.shape` and agree with Table 1 of the
paper except Dyck-2: the paper reports 3 layers assuming a selection primitive
("best": keep only the highest-scoring selected key) that core RASP lacks; in
core RASP, as in the authors' own library code, finding each closer's opener
takes an extra ``selector_width`` layer.
"""
from __future__ import annotations

from typing import Sequence, Tuple

from ._core import (EQ, LEQ, LT, NUMERICAL, Selector, SOp, aggregate, indices, length,
                    numerical, select, selector_width, sequence_map)
from ._core import map as sop_map

#: Dyck labels (the paper's "PTF" output): the prefix up to ``i`` ...
DYCK_FALSE = 0   #: "F": can never be completed to a balanced string
DYCK_PREFIX = 1  #: "P": is unbalanced but a valid prefix (open brackets pending)
DYCK_TRUE = 2    #: "T": is balanced
DYCK_LABELS = {DYCK_FALSE: "F", DYCK_PREFIX: "P", DYCK_TRUE: "T"}


def make_length(sop: SOp) -> SOp:
    """The length of each sequence: ``selector_width(select(tokens, tokens,
    TRUE))`` (1 layer, 1 head)."""
    return length(sop.context)


def make_reverse(sop: SOp) -> SOp:
    """``reverse``: position ``i`` gets ``sop[T - 1 - i]``.

    ``opp = length - indices - 1``; ``flip = select(indices, opp, EQ)``;
    ``aggregate(flip, sop)``. 2 layers (``length`` is one), 1 head.
    """
    idx = indices(sop.context)
    opp = length(sop.context) - idx - 1
    return aggregate(select(idx, opp, EQ), sop).named("reverse")


def make_hist(sop: SOp) -> SOp:
    """``hist``: how many tokens of the sequence equal ``sop[i]`` (itself
    included): ``selector_width(select(sop, sop, EQ))``. 1 layer, 1 head."""
    return selector_width(select(sop, sop, EQ)).named("hist")


def make_sort_unique(vals: SOp, keys: SOp) -> SOp:
    """Sort ``vals`` by ``keys`` when the keys of a sequence are distinct.

    ``target = selector_width(select(keys, keys, LT))`` is the number of
    smaller keys, i.e. the sorted position; position ``i`` then fetches the
    value whose target is ``i``. 2 layers, 1 head. Duplicate keys collide (a
    categorical aggregate over disagreeing values raises); use :func:`make_sort`.
    """
    idx = indices(vals.context)
    target = selector_width(select(keys, keys, LT))
    return aggregate(select(target, idx, EQ), vals).named("sort")


def make_sort(vals: SOp, keys: SOp) -> SOp:
    """Stable sort of ``vals`` by ``keys``; duplicate keys keep their order.

    A key ``j`` comes before ``i`` when ``keys[j] < keys[i]``, or they are
    equal and ``j < i``: the selector
    ``select(keys, keys, LT) | (select(keys, keys, EQ) & select(indices,
    indices, LT))`` (the paper's tie-breaking, written with the selector
    algebra instead of its ``key + i / max_len`` trick). 2 layers, 1 head.
    """
    idx = indices(vals.context)
    earlier = select(keys, keys, LT) | (select(keys, keys, EQ) & select(idx, idx, LT))
    target = selector_width(earlier)
    return aggregate(select(target, idx, EQ), vals).named("sort")


def _has_earlier_copy(sop: SOp) -> SOp:
    idx = indices(sop.context)
    earlier_copy = select(sop, sop, EQ) & select(idx, idx, LT)
    return sop_map(lambda w: w > 0, selector_width(earlier_copy))


def make_most_freq(sop: SOp, pad: int = -1) -> SOp:
    """``most_freq``: the distinct tokens of each sequence in order of
    decreasing frequency (ties: first occurrence first), then ``pad``.

    ``hist`` and "has an earlier copy" (layer 1, two heads); first occurrences
    get key ``-hist``, repeats key ``+hist`` and value ``pad``; a stable sort
    (layers 2 and 3). 3 layers, 2 heads, as in the paper.
    """
    hist = make_hist(sop)
    repeat = _has_earlier_copy(sop)
    key = sequence_map(lambda h, r: h if r else -h, hist, repeat)
    vals = sequence_map(lambda t, r: pad if r else t, sop, repeat)
    return make_sort(vals, key).named("most_freq")


def make_hist2(sop: SOp) -> SOp:
    """``double histogram``: for each position, how many *distinct* tokens of
    the sequence occur exactly as often as ``sop[i]``.

    Layer 1: ``hist`` and "has an earlier copy" (2 heads); layer 2: the width
    of ``select(hist, hist, EQ) & select(repeat, False, EQ)`` (the first copies
    with the same count). 2 layers, 2 heads.
    """
    hist = make_hist(sop)
    repeat = _has_earlier_copy(sop)
    return selector_width(select(hist, hist, EQ) & select(repeat, False, EQ)).named("hist2")


def _prefix_count(up_to_self: Selector, flag: SOp, idx: SOp) -> SOp:
    """``(i + 1) * mean_{j <= i} flag[j]``, rounded back to an int."""
    frac = aggregate(up_to_self, numerical(flag))
    return sop_map(round, (idx + 1) * frac)


def make_dyck1(sop: SOp, open: int = 0, close: int = 1) -> SOp:
    """Dyck-1 (balanced parentheses), the paper's "PTF" task: at each position,
    :data:`DYCK_TRUE` if the prefix is balanced, :data:`DYCK_PREFIX` if it is
    a valid unbalanced prefix, :data:`DYCK_FALSE` if some prefix closed more
    than it opened. Other tokens are ignored.

    Layer 1 counts opens and closes up to ``i`` (one head,
    ``select(indices, indices, LEQ)``, two aggregates); layer 2 averages
    "balance < 0" over the prefix. 2 layers, 1 head.
    """
    idx = indices(sop.context)
    up = select(idx, idx, LEQ)
    balance = (_prefix_count(up, sop_map(lambda t: t == open, sop), idx)
               - _prefix_count(up, sop_map(lambda t: t == close, sop), idx))
    prev_negative = aggregate(up, numerical(sop_map(lambda b: b < 0, balance)))
    return sequence_map(
        lambda bad, b: DYCK_FALSE if bad > 0 else (DYCK_TRUE if b == 0 else DYCK_PREFIX),
        prev_negative, balance).named("dyck1")


def make_dyck(sop: SOp, pairs: Sequence[Tuple[int, int]]) -> SOp:
    """Dyck-k over the bracket pairs ``pairs`` (``(open, close)`` token ids),
    with the PTF labels of :func:`make_dyck1`; other tokens are ignored.

    The program of the paper's authors (``dyckk_ptf``): ``depth`` = opens -
    closes up to ``i`` (layer 1); a closer's opener is the opener at the same
    level (``depth + is_closer``) whose rank among that level's positions is
    one less (layer 2: the rank by ``selector_width``; layer 3: fetch its
    token); a prefix fails if a closer's opener does not match or the depth
    went negative (layer 4). 4 layers, 1 head.
    """
    pairs = [tuple(p) for p in pairs]
    if not pairs or any(len(p) != 2 for p in pairs):
        raise ValueError(f"'pairs' must be a non-empty list of (open, close) ids, got {pairs!r}")
    openers = {p[0] for p in pairs}
    closers = {p[1] for p in pairs}
    if openers & closers:
        raise ValueError(f"tokens {sorted(openers & closers)} are both openers and closers")
    pair_set = set(pairs)
    idx = indices(sop.context)
    up = select(idx, idx, LEQ)
    opens = sop_map(lambda t: int(t in openers), sop)
    closes = sop_map(lambda t: int(t in closers), sop)
    depth = _prefix_count(up, opens, idx) - _prefix_count(up, closes, idx)
    level = depth + closes  # an opener's level after opening = its closer's before closing
    bracket = sequence_map(lambda o, c: o + c, opens, closes)
    # rank among the brackets of the same level up to i (other tokens skipped)
    rank = selector_width(select(level, level, EQ) & up & select(bracket, 1, EQ))
    opener_of = select(opens, 1, EQ) & select(level, level, EQ) & select(rank, rank - 1, EQ)
    matched = aggregate(opener_of, sop, default=-1, on_conflict="default")
    mismatch = sequence_map(lambda m, t: t in closers and (m, t) not in pair_set, matched, sop)
    problem = sequence_map(lambda mm, d: bool(mm) or d < 0, mismatch, depth, kind=NUMERICAL)
    had_problem = aggregate(up, problem)
    return sequence_map(
        lambda bad, d: DYCK_FALSE if bad > 0 else (DYCK_TRUE if d == 0 else DYCK_PREFIX),
        had_problem, depth).named("dyck")


def make_dyck2(sop: SOp, pairs: Sequence[Tuple[int, int]] = ((0, 1), (2, 3))) -> SOp:
    """Dyck-2 (two bracket kinds, by default ``(``=0 ``)``=1 ``{``=2 ``}``=3):
    :func:`make_dyck` with two pairs. 4 layers, 1 head (paper: 3 with "best")."""
    if len(pairs) != 2:
        raise ValueError(f"Dyck-2 needs exactly 2 bracket pairs, got {len(pairs)}")
    return make_dyck(sop, pairs).named("dyck2")


__all__ = [
    "make_length", "make_reverse", "make_hist", "make_sort_unique", "make_sort",
    "make_most_freq", "make_hist2", "make_dyck1", "make_dyck", "make_dyck2",
    "DYCK_FALSE", "DYCK_PREFIX", "DYCK_TRUE", "DYCK_LABELS",
]
