"""RASP primitives over a batch of token graphs.

RASP (Weiss, Goldberg & Yahav, "Thinking Like Transformers", ICML 2021) has two
kinds of values:

* **s-ops** (sequence operations, :class:`SOp`): one value per token. Here an
  s-op holds a tensor ``[N]`` over all ``N`` tokens of a batch (global node
  numbering, sequence boundaries ``ptr`` as PyG's ``Batch.ptr``);
* **selectors** (:class:`Selector`): a boolean pattern between queries ``i``
  and keys ``j`` of the same sequence. A selector *is* an edge set in the
  conventions of :mod:`graphformer.patterns`: ``edge_index [2, E]`` with row 0
  the key ``j``, row 1 the query ``i``, coalesced (sorted by query then key).

The attention primitives are message passing on that edge set:
:func:`aggregate` is a scatter-mean over each query's selected keys,
:func:`selector_width` its in-degree.

Evaluation is eager (every s-op holds its values), and every s-op and selector
also records how it was made, so that :func:`graphformer.rasp.program_shape`
can read off the layers and heads a transformer needs for it.

Kinds of values: an s-op is ``"categorical"`` (tokens, indices, counts,
flags: compared for equality) or ``"numerical"`` (a float64 number: averaged
by :func:`aggregate`). Values are tensors of numbers or bools; encode strings
as ids first (e.g. with :func:`graphformer.data.from_token_batch`'s vocab).
"""
from __future__ import annotations

import enum
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .. import patterns
from ..patterns import as_ptr, node_info

CATEGORICAL = "categorical"
NUMERICAL = "numerical"
_KINDS = (CATEGORICAL, NUMERICAL)

Scalar = Union[int, float, bool]


# --------------------------------------------------------------------------- #
# batch context
# --------------------------------------------------------------------------- #
class Context:
    """The batch a RASP program runs on: token ids and sequence boundaries.

    Args:
        tokens (Tensor [N]): token ids (or any numbers), all sequences
            concatenated.
        ptr (LongTensor [B + 1] or int): sequence boundaries (an int ``T``
            means one sequence of ``T`` tokens).

    Build it from a PyG batch of token graphs with :meth:`from_batch` or from
    Python lists with :meth:`from_sequences`. S-ops of one program must all
    come from the same batch; combining s-ops of different batches raises
    ``ValueError``.
    """

    def __init__(self, tokens: Tensor, ptr: Union[Tensor, int]) -> None:
        if not isinstance(tokens, Tensor) or tokens.dim() != 1:
            raise ValueError("'tokens' must be a 1-D tensor [N] of token values, got "
                             f"{type(tokens).__name__}"
                             + (f" of shape {list(tokens.shape)}"
                                if isinstance(tokens, Tensor) else ""))
        self.ptr = as_ptr(ptr, device=tokens.device)
        if int(self.ptr[-1]) != tokens.numel():
            raise ValueError(f"'ptr' describes {int(self.ptr[-1])} tokens but 'tokens' has "
                             f"{tokens.numel()}")
        self.tokens = tokens
        info = node_info(self.ptr)
        self.graph, self.start, self.pos, self.size = info
        self._full: Optional[Tensor] = None

    @classmethod
    def from_batch(cls, batch: Any) -> "Context":
        """From a PyG ``Batch`` (or ``Data``) with token ids in ``x`` (as built by
        :func:`graphformer.data.from_token_batch`); ``ptr`` from ``batch.ptr``,
        or one sequence when the object has no ``ptr``."""
        x = getattr(batch, "x", None)
        if x is None:
            raise ValueError("the batch has no 'x' (token ids); build it with "
                             "graphformer.data.from_token_batch")
        x = x.view(-1) if x.dim() == 2 and x.size(1) == 1 else x
        ptr = getattr(batch, "ptr", None)
        return cls(x, ptr if ptr is not None else x.numel())

    @classmethod
    def from_sequences(cls, sequences: Sequence[Sequence[Scalar]]) -> "Context":
        """From Python sequences of token ids (ints), one per sequence."""
        lengths = [len(s) for s in sequences]
        flat = [t for s in sequences for t in s]
        ptr = torch.tensor([0] + lengths, dtype=torch.long).cumsum(0)
        values = torch.tensor(flat) if flat else torch.zeros(0, dtype=torch.long)
        bad = (values != values.round()).nonzero() if values.is_floating_point() else []
        if len(bad):   # a cast to int64 would truncate it
            at = int(bad[0])
            b = int(torch.searchsorted(ptr, at, right=True)) - 1
            raise ValueError(f"token {flat[at]!r} (sequence {b}, position {at - int(ptr[b])}) "
                             "is not an integer token id")
        return cls(values.long(), ptr)

    @property
    def num_nodes(self) -> int:
        """The number of tokens ``N`` in the batch."""
        return self.tokens.numel()

    @property
    def num_sequences(self) -> int:
        return self.ptr.numel() - 1

    def full(self) -> Tensor:
        """The all-pairs pattern (cached on this context): ``E_full = sum T_b^2``."""
        if self._full is None:
            self._full = patterns.full(self.ptr)
        return self._full

    def same_as(self, other: "Context") -> bool:
        """True when ``other`` is this batch (same object, or equal ``ptr`` and
        tokens, e.g. two contexts built from one PyG batch)."""
        return self is other or (
            self.ptr.shape == other.ptr.shape and torch.equal(self.ptr, other.ptr)
            and self.tokens.shape == other.tokens.shape
            and torch.equal(self.tokens, other.tokens))

    def __repr__(self) -> str:
        return f"Context(sequences={self.num_sequences}, tokens={self.num_nodes})"


ContextLike = Union[Context, Any]


def _as_context(obj: ContextLike) -> Context:
    if isinstance(obj, Context):
        return obj
    if isinstance(obj, (SOp, Selector)):
        return obj.context
    return Context.from_batch(obj)


def common_context(*objs: Union["SOp", "Selector"], op: str) -> Context:
    ctx = objs[0].context
    for o in objs[1:]:
        if not ctx.same_as(o.context):
            raise ValueError(
                f"{op}: the operands come from different batches ({ctx!r} with sequence "
                f"lengths {ctx.ptr.diff().tolist()} vs {o.context!r} with "
                f"{o.context.ptr.diff().tolist()}); build every s-op of a program from "
                "one batch")
    return ctx


# --------------------------------------------------------------------------- #
# program graph nodes
# --------------------------------------------------------------------------- #
class Node:
    """Common part of s-ops and selectors: the op that made it, its inputs and
    its depth (the number of attention layers needed before it is available)."""

    op: str
    inputs: Tuple["Node", ...]
    params: Tuple[Any, ...]
    depth: int
    context: Context
    name: Optional[str]

    def _signature(self, memo: Dict[int, Any]) -> Any:
        key = id(self)
        if key not in memo:
            # the kind and each parameter's type too: a categorical and a numerical
            # map of one function differ, and so do `t + 1` and `t + 1.0` (1 == 1.0)
            memo[key] = (self.op, getattr(self, "kind", None),
                         tuple((type(p), p) for p in self.params),
                         tuple(n._signature(memo) for n in self.inputs))
        return memo[key]

    @property
    def is_attention(self) -> bool:
        """True for the ops a transformer computes with an attention head:
        :func:`aggregate` and :func:`selector_width`."""
        return self.op in ("aggregate", "selector_width")


#: ``+ - * /`` on s-op values (``/`` is true division, in float64)
ARITH: Dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "+": torch.add, "-": torch.sub, "*": torch.mul, "/": lambda a, b: a.double() / b,
}


def _operand(value: Any, device: torch.device) -> Tensor:
    """A value of an arithmetic op as Python computes with it: a flag (bool)
    counts as 0 or 1, a Python float is a float64 (not torch's float32)."""
    if isinstance(value, Tensor):
        return value.long() if value.dtype == torch.bool else value
    if isinstance(value, float):
        return torch.tensor(value, dtype=torch.float64, device=device)
    return torch.tensor(int(value), device=device)


def arith(sym: str, a: Any, b: Any) -> Tensor:
    """``a sym b`` elementwise, one of them a tensor, with Python's rules
    (:func:`_operand`): what :class:`SOp` arithmetic and the compiler's value
    tables compute."""
    device = a.device if isinstance(a, Tensor) else b.device
    return ARITH[sym](_operand(a, device), _operand(b, device))


def negate(values: Tensor) -> Tensor:
    """``-values`` with Python's rules (a flag negates to 0 or -1)."""
    return -_operand(values, values.device)


class SOp(Node):
    """A sequence operation: one value per token of the batch.

    Attributes:
        values (Tensor [N]): the values, batch numbering.
        kind (str): ``"categorical"`` or ``"numerical"``.
        depth (int): attention layers on the longest chain that produced it.

    Arithmetic (``+ - * /``, unary ``-``) with s-ops or Python numbers is an
    elementwise map (no attention) computed as Python computes it (a flag
    counts as 0 or 1, a float constant is a float64); the result is numerical
    when an operand is numerical or the op is ``/``, else categorical.
    """

    def __init__(self, values: Tensor, kind: str, context: Context, op: str,
                 inputs: Tuple[Node, ...] = (), params: Tuple[Any, ...] = (),
                 depth: Optional[int] = None, name: Optional[str] = None) -> None:
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
        if kind == NUMERICAL and values.dtype != torch.float64:
            values = values.to(torch.float64)
        self.values = values
        self.kind = kind
        self.context = context
        self.op = op
        self.inputs = inputs
        self.params = params
        self.depth = max((n.depth for n in inputs), default=0) if depth is None else depth
        self.name = name

    def named(self, name: str) -> "SOp":
        """Set a display name (returns self)."""
        self.name = name
        return self

    def to_lists(self) -> List[List[Any]]:
        """The values as one Python list per sequence."""
        vals = self.values.tolist()
        bounds = self.context.ptr.tolist()
        return [vals[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    # arithmetic -----------------------------------------------------------
    def _arith(self, other: Any, sym: str, reverse: bool = False) -> "SOp":
        force_numerical = sym == "/"
        if isinstance(other, SOp):
            ctx = common_context(self, other, op=f"'{sym}'")
            a, b = (other, self) if reverse else (self, other)
            numeric = force_numerical or NUMERICAL in (a.kind, b.kind)
            vals = arith(sym, a.values, b.values)
            return SOp(vals, NUMERICAL if numeric else CATEGORICAL, ctx, "sequence_map",
                       (a, b), (sym,))
        if isinstance(other, (bool, int, float)):
            vals = arith(sym, other, self.values) if reverse else arith(sym, self.values, other)
            numeric = force_numerical or self.kind == NUMERICAL or isinstance(other, float)
            return SOp(vals, NUMERICAL if numeric else CATEGORICAL, self.context, "map",
                       (self,), (sym, other, reverse))
        return NotImplemented

    def __add__(self, o: Any) -> "SOp":
        return self._arith(o, "+")

    def __radd__(self, o: Any) -> "SOp":
        return self._arith(o, "+", reverse=True)

    def __sub__(self, o: Any) -> "SOp":
        return self._arith(o, "-")

    def __rsub__(self, o: Any) -> "SOp":
        return self._arith(o, "-", reverse=True)

    def __mul__(self, o: Any) -> "SOp":
        return self._arith(o, "*")

    def __rmul__(self, o: Any) -> "SOp":
        return self._arith(o, "*", reverse=True)

    def __truediv__(self, o: Any) -> "SOp":
        return self._arith(o, "/")

    def __rtruediv__(self, o: Any) -> "SOp":
        return self._arith(o, "/", reverse=True)

    def __neg__(self) -> "SOp":
        return SOp(negate(self.values), self.kind, self.context, "map", (self,), ("neg",))

    def __bool__(self) -> bool:
        raise TypeError("an s-op has no truth value; use map() for elementwise conditions")

    def __repr__(self) -> str:
        label = self.name or self.op
        return f"SOp({label}, kind={self.kind}, depth={self.depth}, values={self.to_lists()})"


# --------------------------------------------------------------------------- #
# leaves
# --------------------------------------------------------------------------- #
def tokens(batch: ContextLike) -> SOp:
    """RASP ``tokens``: the input token of every position (categorical).

    ``batch`` is a :class:`Context` or a PyG batch of token graphs (``x``,
    ``ptr``), e.g. from :func:`graphformer.data.from_token_batch`.
    """
    ctx = _as_context(batch)
    return SOp(ctx.tokens, CATEGORICAL, ctx, "tokens", depth=0, name="tokens")


def indices(batch: ContextLike) -> SOp:
    """RASP ``indices``: the position ``0..T-1`` of every token in its sequence
    (categorical)."""
    ctx = _as_context(batch)
    return SOp(ctx.pos, CATEGORICAL, ctx, "indices", depth=0, name="indices")


def length(batch: ContextLike) -> SOp:
    """RASP ``length``: the length ``T`` of each token's sequence (categorical).

    As in the paper's analysis, it is computed with attention:
    ``selector_width(select(tokens, tokens, TRUE))``, so it costs one layer
    (reverse needs 2 layers because of it).
    """
    tok = tokens(batch)
    return selector_width(select(tok, tok, TRUE)).named("length")


def constant(batch: ContextLike, value: Scalar, kind: Optional[str] = None) -> SOp:
    """An s-op equal to ``value`` everywhere (no attention, depth 0)."""
    ctx = _as_context(batch)
    vals = values_tensor([value], ctx.tokens.device).expand(ctx.num_nodes).clone()
    kind = kind or (NUMERICAL if isinstance(value, float) else CATEGORICAL)
    return SOp(vals, kind, ctx, "constant", params=(value,), depth=0, name=repr(value))


# --------------------------------------------------------------------------- #
# elementwise maps
# --------------------------------------------------------------------------- #
def values_tensor(out: Sequence[Any], device: torch.device) -> Tensor:
    for v in out:
        if not isinstance(v, (bool, int, float)) and not (isinstance(v, Tensor) and v.numel() == 1):
            raise TypeError(f"s-op values must be numbers or bools, got {v!r} of type "
                            f"{type(v).__name__}; encode other values as integer ids")
    out = [v.item() if isinstance(v, Tensor) else v for v in out]
    if all(isinstance(v, bool) for v in out):
        return torch.tensor(out, dtype=torch.bool, device=device)
    if all(isinstance(v, int) for v in out):  # bools mixed with ints count as ints
        return torch.tensor([int(v) for v in out], dtype=torch.long, device=device)
    return torch.tensor([float(v) for v in out], dtype=torch.float64, device=device)


def _check_kind(kind: str) -> str:
    if kind not in _KINDS:
        raise ValueError(f"kind must be {CATEGORICAL!r} or {NUMERICAL!r}, got {kind!r}")
    return kind


def _check_sop(x: Any, what: str) -> SOp:
    if not isinstance(x, SOp):
        raise TypeError(f"{what} must be an SOp, got {type(x).__name__}")
    return x


def map(fn: Callable[[Any], Any], sop: SOp, kind: str = CATEGORICAL,
        vectorized: bool = False, name: Optional[str] = None) -> SOp:
    """RASP ``map``: ``fn`` applied to every value of ``sop`` (a feed-forward
    layer in the transformer; no attention).

    Args:
        fn: a Python function of one value. It is called once per *distinct*
            value of the batch (values are Python numbers/bools), so arbitrary
            Python is fine. With ``vectorized=True`` it is called once on the
            whole values tensor ``[N]`` and must return a tensor ``[N]``.
        sop: the input s-op.
        kind: the kind of the result, ``"categorical"`` (default) or
            ``"numerical"``.
    """
    _check_sop(sop, "map's input")
    _check_kind(kind)
    vals = apply_unary(fn, sop.values, vectorized)
    return SOp(vals, kind, sop.context, "map", (sop,), (fn,), name=name)


def apply_unary(fn: Callable[[Any], Any], values: Tensor, vectorized: bool) -> Tensor:
    if vectorized:
        out = fn(values)
        if not isinstance(out, Tensor) or out.shape != values.shape:
            raise ValueError(f"a vectorized map must return a tensor of shape "
                             f"{list(values.shape)}")
        return out
    if values.numel() == 0:
        return values.clone()
    uniq, inverse = torch.unique(values, return_inverse=True)
    table = values_tensor([fn(v) for v in uniq.tolist()], values.device)
    return table[inverse]


def sequence_map(fn: Callable[[Any, Any], Any], a: SOp, b: SOp, kind: str = CATEGORICAL,
                 vectorized: bool = False, name: Optional[str] = None) -> SOp:
    """RASP ``sequence_map``: ``fn(a_i, b_i)`` at every position (two s-ops of
    the same batch combined elementwise; a feed-forward layer, no attention).

    ``fn`` is called once per distinct pair of values (or, with
    ``vectorized=True``, once on the two values tensors).
    """
    _check_sop(a, "sequence_map's first input")
    _check_sop(b, "sequence_map's second input")
    _check_kind(kind)
    ctx = common_context(a, b, op="sequence_map")
    vals = apply_binary(fn, a.values, b.values, vectorized)
    return SOp(vals, kind, ctx, "sequence_map", (a, b), (fn,), name=name)


def _pair_codes(x: Tensor, y: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    ux, ix = torch.unique(x, return_inverse=True)
    uy, iy = torch.unique(y, return_inverse=True)
    code = ix * max(uy.numel(), 1) + iy
    uc, inverse = torch.unique(code, return_inverse=True)
    return ux[uc // max(uy.numel(), 1)], uy[uc % max(uy.numel(), 1)], inverse, uc


def apply_binary(fn: Callable[[Any, Any], Any], x: Tensor, y: Tensor,
                  vectorized: bool) -> Tensor:
    if vectorized:
        out = fn(x, y)
        if not isinstance(out, Tensor) or out.shape != x.shape:
            raise ValueError(f"a vectorized function must return a tensor of shape "
                             f"{list(x.shape)}")
        return out
    if x.numel() == 0:
        return x.clone()
    px, py, inverse, _ = _pair_codes(x, y)
    table = values_tensor([fn(u, v) for u, v in zip(px.tolist(), py.tolist())], x.device)
    return table[inverse]


def numerical(sop: SOp) -> SOp:
    """The same values as a numerical s-op (float64; averaged by aggregate)."""
    _check_sop(sop, "numerical's input")
    return SOp(sop.values, NUMERICAL, sop.context, "map", (sop,), ("numerical",))


def categorical(sop: SOp) -> SOp:
    """The same values as a categorical s-op (compared for equality by aggregate)."""
    _check_sop(sop, "categorical's input")
    return SOp(sop.values, CATEGORICAL, sop.context, "map", (sop,), ("categorical",))


# --------------------------------------------------------------------------- #
# select
# --------------------------------------------------------------------------- #
class Comparison(enum.Enum):
    """Built-in selector predicates, applied as ``predicate(key, query)``:
    ``select(indices, indices, LT)`` selects, for query ``i``, the keys
    ``j < i``."""

    EQ = "=="
    LT = "<"
    LEQ = "<="
    GT = ">"
    GEQ = ">="
    NEQ = "!="
    TRUE = "true"
    FALSE = "false"

    def __call__(self, key: Any, query: Any) -> bool:
        return bool(COMPARE[self](torch.as_tensor(key), torch.as_tensor(query)))

    def __repr__(self) -> str:
        return self.name


COMPARE: Dict[Comparison, Callable[[Tensor, Tensor], Tensor]] = {
    Comparison.EQ: torch.eq, Comparison.LT: torch.lt, Comparison.LEQ: torch.le,
    Comparison.GT: torch.gt, Comparison.GEQ: torch.ge, Comparison.NEQ: torch.ne,
    Comparison.TRUE: lambda k, q: torch.ones(torch.broadcast_shapes(k.shape, q.shape),
                                             dtype=torch.bool, device=k.device),
    Comparison.FALSE: lambda k, q: torch.zeros(torch.broadcast_shapes(k.shape, q.shape),
                                               dtype=torch.bool, device=k.device),
}

EQ, LT, LEQ, GT, GEQ, NEQ, TRUE, FALSE = (
    Comparison.EQ, Comparison.LT, Comparison.LEQ, Comparison.GT, Comparison.GEQ,
    Comparison.NEQ, Comparison.TRUE, Comparison.FALSE)

Predicate = Union[Comparison, Callable[[Any, Any], bool]]


class Selector(Node):
    """A RASP selector: for each query ``i``, the keys ``j`` of its sequence it
    selects. It *is* an edge set: :attr:`edge_index` ``[2, E]`` (row 0 key
    ``j``, row 1 query ``i``, batch numbering, coalesced: sorted by query, then
    key), the attention pattern of one head.

    ``a & b``, ``a | b`` and ``~a`` are :func:`graphformer.patterns.intersection`,
    :func:`~graphformer.patterns.union` and the difference from
    :func:`~graphformer.patterns.full` (the complement within each sequence).
    They are selector ops: no attention, no layer.
    """

    def __init__(self, edge_index: Tensor, context: Context, op: str,
                 inputs: Tuple[Node, ...] = (), params: Tuple[Any, ...] = (),
                 name: Optional[str] = None) -> None:
        self.edge_index = edge_index
        self.context = context
        self.op = op
        self.inputs = inputs
        self.params = params
        self.depth = max((n.depth for n in inputs), default=0)
        self.name = name

    @property
    def num_edges(self) -> int:
        return self.edge_index.size(1)

    @property
    def ptr(self) -> Tensor:
        return self.context.ptr

    def _binary(self, other: Any, op: str) -> "Selector":
        if not isinstance(other, Selector):
            return NotImplemented
        ctx = common_context(self, other, op=f"selector '{op}'")
        n = ctx.num_nodes
        if op == "&":
            ei = patterns.intersection(self.edge_index, other.edge_index, num_nodes=n)
        else:
            ei = patterns.union(self.edge_index, other.edge_index, num_nodes=n)[0]
        return Selector(ei, ctx, op, (self, other))

    def __and__(self, other: "Selector") -> "Selector":
        return self._binary(other, "&")

    def __or__(self, other: "Selector") -> "Selector":
        return self._binary(other, "|")

    def __invert__(self) -> "Selector":
        ctx = self.context
        ei = patterns.difference(ctx.full(), self.edge_index, num_nodes=ctx.num_nodes)
        return Selector(ei, ctx, "~", (self,))

    def to_dense(self, sequence: int = 0) -> Tensor:
        """The ``[T, T]`` boolean matrix (query rows, key columns) of one
        sequence, for display and tests only."""
        a, b = int(self.ptr[sequence]), int(self.ptr[sequence + 1])
        src, dst = self.edge_index
        keep = (dst >= a) & (dst < b)
        mat = torch.zeros(b - a, b - a, dtype=torch.bool)
        mat[dst[keep] - a, src[keep] - a] = True
        return mat

    def __bool__(self) -> bool:
        raise TypeError("a selector has no truth value; use '&', '|' and '~' to combine "
                        "selectors")

    def __repr__(self) -> str:
        return (f"Selector({self.name or self.op}, edges={self.num_edges}, "
                f"depth={self.depth})")


def _as_operand(x: Any, other: Any, role: str) -> SOp:
    if isinstance(x, SOp):
        return x
    if isinstance(x, (bool, int, float)):
        if not isinstance(other, SOp):
            raise TypeError("select needs at least one s-op among keys and queries")
        return constant(other.context, x)
    raise TypeError(f"select's {role} must be an SOp or a Python number/bool, got "
                    f"{type(x).__name__}")


def select(keys: Union[SOp, Scalar], queries: Union[SOp, Scalar],
           predicate: Predicate) -> Selector:
    """RASP ``select``: query ``i`` selects key ``j`` (of the same sequence)
    when ``predicate(keys[j], queries[i])`` holds.

    Args:
        keys: an s-op (or a constant, e.g. ``select(flag, True, EQ)``).
        queries: an s-op (or a constant).
        predicate: a :class:`Comparison` (``EQ``, ``LT``, ``LEQ``, ``GT``,
            ``GEQ``, ``NEQ``, ``TRUE``, ``FALSE``), vectorised; or a Python
            callable ``(key, query) -> bool``, called once per distinct
            ``(key value, query value)`` pair occurring in the batch.

    Returns:
        A :class:`Selector` (an edge set, row 0 = key, row 1 = query).

    Cost: select's semantics are all pairs, so the predicate is evaluated on
    every edge of :func:`graphformer.patterns.full`, vectorised over the whole
    batch: time and memory ``O(E_full)`` with ``E_full = sum_b T_b^2``. No
    per-sequence Python loop and no padded ``T x T`` tensor is built.
    """
    k = _as_operand(keys, queries, "keys")
    q = _as_operand(queries, keys, "queries")
    ctx = common_context(k, q, op="select")
    if isinstance(predicate, Comparison):
        if predicate is Comparison.TRUE:
            ei = ctx.full()
        elif predicate is Comparison.FALSE:
            ei = ctx.full()[:, :0]
        else:
            full = ctx.full()
            kv, qv = k.values[full[0]], q.values[full[1]]
            ei = full[:, COMPARE[predicate](kv, qv)]
    elif callable(predicate):
        full = ctx.full()
        ei = full[:, apply_binary(predicate, k.values[full[0]], q.values[full[1]],
                                   vectorized=False).bool()]
    else:
        raise TypeError(f"predicate must be a Comparison (EQ, LT, ...) or a callable "
                        f"(key, query) -> bool, got {predicate!r}")
    return Selector(ei, ctx, "select", (k, q), (predicate,))


# --------------------------------------------------------------------------- #
# attention primitives
# --------------------------------------------------------------------------- #
def _check_selector(x: Any, what: str) -> Selector:
    if not isinstance(x, Selector):
        raise TypeError(f"{what} must be a Selector (from select()), got {type(x).__name__}")
    return x


def aggregate(selector: Selector, values: SOp, default: Scalar = 0,
              on_conflict: str = "error", name: Optional[str] = None) -> SOp:
    """RASP ``aggregate``: for every query ``i``, combine ``values`` over the
    keys its selector selects. One attention head with uniform scores on the
    selector's edges (see :func:`graphformer.rasp.selector_to_head`).

    * numerical ``values``: the **mean** over the selected keys (a scatter-mean
      over the edge set); ``default`` (0) where nothing is selected;
    * categorical ``values`` (standard RASP semantics): defined when every
      selected key holds the same value, which is the result (with one selected
      key this is a plain lookup). Where nothing is selected the result is
      ``default``. Where selected keys disagree the mean is not a value of the
      category: with ``on_conflict="error"`` (default) a ``ValueError`` names
      the first such query; with ``on_conflict="default"`` it gets ``default``.

    The result has the kind of ``values`` and depth
    ``max(selector.depth, values.depth) + 1``.
    """
    _check_selector(selector, "aggregate's selector")
    _check_sop(values, "aggregate's values")
    if on_conflict not in ("error", "default"):
        raise ValueError(f"on_conflict must be 'error' or 'default', got {on_conflict!r}")
    ctx = common_context(selector, values, op="aggregate")
    n = ctx.num_nodes
    src, dst = selector.edge_index
    count = torch.bincount(dst, minlength=n)
    empty = count == 0
    if values.kind == NUMERICAL:
        total = torch.zeros(n, dtype=torch.float64, device=values.values.device)
        total.index_add_(0, dst, values.values[src])
        out = torch.where(empty, torch.full_like(total, float(default)),
                          total / count.clamp_min(1))
    else:
        vals = values.values
        work = vals.long() if vals.dtype == torch.bool else vals
        sel = work[src]
        lo = work.new_zeros(n).scatter_reduce(0, dst, sel, "amin", include_self=False)
        hi = work.new_zeros(n).scatter_reduce(0, dst, sel, "amax", include_self=False)
        conflict = (lo != hi) & ~empty
        if on_conflict == "error" and bool(conflict.any()):
            q = int(conflict.nonzero()[0])
            b = int(ctx.graph[q])
            raise ValueError(
                f"categorical aggregate: query at position {int(ctx.pos[q])} of sequence {b} "
                f"selects keys with different values (e.g. {lo[q].item()!r} and "
                f"{hi[q].item()!r}); RASP defines a categorical aggregate only where the "
                "selected keys agree. Pass on_conflict='default', or aggregate a "
                "numerical s-op to average")
        fill = torch.tensor(default, dtype=work.dtype, device=work.device)
        out = torch.where(empty | conflict, fill, lo)
        if vals.dtype == torch.bool:
            out = out.bool()
    return SOp(out, values.kind, ctx, "aggregate", (selector, values), (default, on_conflict),
               depth=max(selector.depth, values.depth) + 1, name=name)


def selector_width(selector: Selector, name: Optional[str] = None) -> SOp:
    """RASP ``selector_width``: the number of keys each query selects (the
    in-degree of the selector's edge set), categorical. One attention layer
    (the paper compiles it to one head plus an MLP)."""
    _check_selector(selector, "selector_width's input")
    ctx = selector.context
    width = torch.bincount(selector.edge_index[1], minlength=ctx.num_nodes)
    return SOp(width, CATEGORICAL, ctx, "selector_width", (selector,),
               depth=selector.depth + 1, name=name)


__all__ = [
    "Context", "SOp", "Selector", "Comparison", "Predicate",
    "CATEGORICAL", "NUMERICAL",
    "tokens", "indices", "length", "constant", "map", "sequence_map",
    "numerical", "categorical", "select", "aggregate", "selector_width",
    "EQ", "LT", "LEQ", "GT", "GEQ", "NEQ", "TRUE", "FALSE",
]
