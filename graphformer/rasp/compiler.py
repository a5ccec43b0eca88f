r"""RASP programs compiled to graphformer models: attention over edge sets and
lookup-table MLPs whose forward pass *is* the program.

:func:`compile` reads the computation graph a RASP program recorded (the
primitives of :mod:`graphformer.rasp`), enumerates the finite set of values
every s-op can take on inputs of length ``<= max_len`` over ``vocab``, and
writes weights that compute each op. The result, :class:`CompiledProgram`, is
a ``torch.nn.Module`` of ``L`` attention layers
(:class:`~graphformer.nn.RelationalAttention`) with ``heads_per_layer[l]``
heads each, where ``L`` and the heads are exactly
:func:`~graphformer.rasp.program_shape`'s. Nothing in its forward pass calls
the RASP evaluator: every value is computed by the model's layers from the
token ids and the sequence boundaries ``ptr``.

How each RASP op becomes weights
--------------------------------
**Residual stream.** float64, one *slot* per s-op: a categorical s-op with
value set :math:`V` is a one-hot block of :math:`|V|` channels; a numerical
s-op is one channel holding its value (plus a one-hot block when a map or a
selector reads it). Every layer adds its result to the stream (residual
connections); no slot is ever written twice, so other slots are added exact
zeros.

**Leaves** (``tokens``, ``indices``, constants): a fixed embedding, the one-hot
of the token id's position in ``vocab`` plus the one-hot of the position
``0 .. max_len - 1`` (token and positional embeddings) plus a constant vector
for constants.

**map / sequence_map** (feed-forward, no attention): a lookup-table MLP over
the enumerated value sets. For inputs ``a`` (and ``b``) with one-hot blocks,
one hidden unit per input value (pair)
:math:`h_{ab} = \mathrm{clamp}(x_a + x_b - 1, 0, 1)` is 1 exactly when the
token holds ``(a, b)``; the output layer writes the one-hot of ``f(a, b)`` (or
the number ``f(a, b)``, and its one-hot when something reads it). The table is
``f`` called on every value (pair) as the evaluator calls it (same Python
values and dtypes), once, when compiling. The activation is
:math:`\mathrm{clamp}(z, 0, 1) = \mathrm{relu}(z) - \mathrm{relu}(z - 1)`
(``Hardtanh(0, 1)``), so hidden units are exactly 0 or 1.

**select** (an edge set): a primitive ``select(keys, queries, predicate)``
is the query/key half of an attention head. ``W_q`` maps the query's one-hot
to row ``M[q, :]`` of the predicate table :math:`M_{qk} = [\text{predicate}(k,
q)]`, ``W_k`` copies the key's one-hot, so the score
:math:`(\mathbf{W}_q \mathbf{x}_i) \cdot (\mathbf{W}_k \mathbf{x}_j) = M_{q_i k_j}`
is exactly 0 or 1 on every edge of :func:`graphformer.patterns.full`; the
selector is the set of edges scoring 1 (hard attention). ``TRUE`` and
``FALSE`` are ``full`` and the empty set. ``&``, ``|`` and ``~`` are
:func:`~graphformer.patterns.intersection`, :func:`~graphformer.patterns.union`
and the difference from ``full``: composite selectors are edge-set algebra and
compile like any other.

**aggregate** (one head, shared by the aggregates of a layer that use the same
selector, as :func:`~graphformer.rasp.program_shape` counts): the head attends
over the selector's own edge set with zero query and key weights, so its
softmax is exactly uniform over the selected keys: the mean of RASP's
numerical aggregate. A query that selects nothing has in-degree 0 and gets 0,
RASP's default, with no beginning-of-sequence token. A categorical aggregate
averages the values' one-hot blocks; a cleanup MLP turns the mean into the
one-hot of the agreed value (a component >= ``1 - 1 / (2 max_len)``) or of
``default`` (nothing selected, or selected keys disagree: the mean of
disagreeing keys is at most ``1 - 1 / max_len`` everywhere).

**selector_width** (one head): the in-degree computed by attention. The head
attends uniformly over the selector's edges plus a self-loop on every query
(the union's membership is the edge feature); the edge value is
``1 + c [i selects i]`` on the self-loop and 0 elsewhere (``c = 2 max_len``),
so the head returns ``1 / (w + 1)`` when ``i`` does not select itself and
``(1 + c) / w`` when it does: all distinct, so a threshold MLP (clamped ramps
at the midpoints, exact 0/1 outside a band far wider than rounding) reads
``w`` off as a one-hot. Numerical aggregates read by maps or selectors are
turned into one-hot blocks by the same kind of threshold MLP over their
enumerated means.

**Layout.** ``embedding -> MLP stack 0 -> [attention l -> MLP stack l]``
for ``l = 1 .. L``: an op computed from attention results of depth ``d`` sits
in stack ``d``; a stack has as many MLP sublayers as its longest chain of maps
(maps are free in RASP's count of layers and heads). Decoding is fixed: the
argmax of the output's one-hot block looked up in its value table (numerical
output: the nearest enumerated value).

**Exactness.** Hidden units are exactly 0/1 and one-hot blocks exact; the
only rounding is in the attention means (``1/k`` summed ``k`` times, a few
ulps), which the cleanup and threshold MLPs absorb (their margins are
``>= 1 / (2 max_len^2)``). Tests compare the decoded output with the RASP
evaluator on every input where the space is small and on thousands of random
inputs otherwise.

**Refused** (``ValueError`` naming the op): a numerical aggregate with a
non-zero default, a ``selector_width`` and an ``aggregate`` sharing one
selector in one layer (one head cannot be both), a value set larger than
``max_values``, numerical values too close to tell apart, a map or predicate
that fails on an enumerated value, and ops the compiler does not know. Where
the evaluator *raises* (a categorical aggregate over disagreeing keys with
``on_conflict="error"``), the compiled model outputs ``default``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .. import patterns
from ..nn.attention import RelationalAttention
from ..patterns import as_ptr, node_info
from ._core import (ARITH, CATEGORICAL, COMPARE, NUMERICAL, Comparison, Context, Node, Selector,
                    SOp, apply_binary, apply_unary, arith, negate, values_tensor)
from ._core import tokens as rasp_tokens
from .shape import ProgramShape, heads_per_layer

#: the default cap on the size of an enumerated value set
MAX_VALUES = 4096


def _positions(values: Tensor, items: Tensor) -> Tensor:
    """Index of every entry of ``items`` in the value set ``values``."""
    match = items.reshape(-1, 1) == values.reshape(1, -1)
    if not bool(match.any(1).all()):  # pragma: no cover - value sets are closed
        raise AssertionError("a value is missing from its enumerated value set")
    return match.to(torch.uint8).argmax(1)


def _describe(node: Node) -> str:
    kind = "selector" if isinstance(node, Selector) else "s-op"
    named = node.name and node.name != node.op
    return f"{kind} {node.op} {node.name!r}" if named else f"{kind} {node.op}"


# --------------------------------------------------------------------------- #
# the program's graph
# --------------------------------------------------------------------------- #
def _program_nodes(root: Node, memo: Dict[int, Any]) -> List[Node]:
    """The nodes computing ``root``, inputs first (depth-first post-order), one
    per construction (nodes built the same way, e.g. two ``length`` s-ops, are
    one node, as in :func:`~graphformer.rasp.program_shape`)."""
    seen: Dict[Any, Node] = {}
    order: List[Node] = []
    stack: List[Tuple[Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        k = node._signature(memo)
        if done:
            if k not in seen:
                seen[k] = node
                order.append(node)
            continue
        if k in seen:
            continue
        stack.append((node, True))
        stack.extend((child, False) for child in reversed(node.inputs))
    return order


def _attention_groups(order: List[Node], depth: int,
                      memo: Dict[int, Any]) -> List[List[List[SOp]]]:
    """Per layer ``1..depth``, the attention ops grouped by selector (one group
    per head), in program order."""
    layers: List[Dict[Any, List[SOp]]] = [{} for _ in range(depth)]
    for node in order:
        if isinstance(node, SOp) and node.is_attention:
            layers[node.depth - 1].setdefault(node.inputs[0]._signature(memo), []).append(node)
    return [list(groups.values()) for groups in layers]


def head_selectors(output: SOp) -> List[List[Selector]]:
    """The selector of every head of the compiled model, per layer, in the
    order of :func:`compile`'s heads, as evaluated on the batch ``output`` was
    computed on: ``head_selectors(program(tokens(ctx)))[l][h]`` is the edge set
    head ``h`` of layer ``l + 1`` attends over on ``ctx`` (for a
    ``selector_width`` head, without the self-loops it adds). Use it with
    :func:`~graphformer.rasp.attention_match` to compare trained attention
    with the program."""
    if not isinstance(output, SOp):
        raise TypeError(f"expected an SOp, got {type(output).__name__}")
    memo: Dict[int, Any] = {}
    groups = _attention_groups(_program_nodes(output, memo), output.depth, memo)
    return [[ops[0].inputs[0] for ops in layer] for layer in groups]


# --------------------------------------------------------------------------- #
# the model's modules
# --------------------------------------------------------------------------- #
class _Embedding(nn.Module):
    """Token one-hot + position one-hot + constants, written into their slots."""

    def __init__(self, vocab: Tensor, max_len: int, dim: int) -> None:
        super().__init__()
        self.max_len = max_len
        self.register_buffer("vocab", vocab)
        self.token = nn.Parameter(torch.zeros(vocab.numel(), dim, dtype=torch.float64),
                                  requires_grad=False)
        self.position = nn.Parameter(torch.zeros(max_len, dim, dtype=torch.float64),
                                     requires_grad=False)
        self.constant = nn.Parameter(torch.zeros(dim, dtype=torch.float64),
                                     requires_grad=False)

    def forward(self, tokens: Tensor, pos: Tensor) -> Tensor:
        match = tokens[:, None] == self.vocab[None, :]
        bad = ~match.any(1)
        idx = match.to(torch.uint8).argmax(1)
        if bool(bad.any()):
            k = int(bad.nonzero()[0])
            raise ValueError(f"token {tokens[k].item()!r} at node {k} is not in the compiled "
                             f"vocabulary {self.vocab.tolist()}")
        if tokens.numel() and int(pos.max()) >= self.max_len:
            k = int((pos >= self.max_len).nonzero()[0])
            raise ValueError(f"node {k} is at position {int(pos[k])} but the program was "
                             f"compiled for max_len={self.max_len}")
        return self.token[idx] + self.position[pos] + self.constant


class _MLP(nn.Module):
    r"""One feed-forward sublayer: :math:`x + W_2\,\mathrm{clamp}(W_1 x + b_1, 0, 1) + b_2`."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden, dtype=torch.float64)
        self.act = nn.Hardtanh(0.0, 1.0)
        self.lin2 = nn.Linear(hidden, dim, dtype=torch.float64)
        self.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.lin2(self.act(self.lin1(x)))


class _Select(nn.Module):
    r"""The query/key half of a head: score :math:`(W_q x_i)\cdot(W_k x_j)`, 0 or 1
    on every edge of ``full``; the selector is the edges scoring 1."""

    def __init__(self, dim: int, rank: int) -> None:
        super().__init__()
        self.lin_q = nn.Linear(dim, rank, bias=False, dtype=torch.float64)
        self.lin_k = nn.Linear(dim, rank, bias=False, dtype=torch.float64)
        self.requires_grad_(False)

    def forward(self, x: Tensor, full: Tensor) -> Tensor:
        src, dst = full
        score = (self.lin_q(x)[dst] * self.lin_k(x)[src]).sum(-1)
        return full[:, score > 0.5]


@dataclass
class _Head:
    selector: Any                 # selector expression (nested tuples)
    width: bool                   # a selector_width head (edges + self-loops)
    label: str


@dataclass
class _Plan:
    heads: List[_Head] = field(default_factory=list)


class CompiledProgram(nn.Module):
    """A RASP program as a graphformer model (see the module docstring for the
    construction). Build it with :func:`compile`.

    ``model(tokens, ptr)`` returns the output s-op's block of the residual
    stream, ``[N, |values|]`` one-hot (categorical) or ``[N, 1]`` (numerical);
    :meth:`decode` turns it into values, :meth:`run` does both on Python
    sequences. Attributes: :attr:`shape` (``ProgramShape``),
    :attr:`heads_per_layer`, :attr:`attention` (the ``RelationalAttention``
    layers), :attr:`output_values` (the decoding table).
    """

    def __init__(self, embedding: _Embedding, stacks: List[List[_MLP]],
                 attention: List[RelationalAttention], plans: List[_Plan],
                 selects: Dict[str, _Select], output: slice, output_values: Tensor,
                 output_kind: str) -> None:
        super().__init__()
        self.embedding = embedding
        self.stacks = nn.ModuleList(nn.ModuleList(s) for s in stacks)
        self.attention = nn.ModuleList(attention)
        self.selects = nn.ModuleDict(selects)
        self.plans = plans
        self.output = output
        self.output_kind = output_kind
        self.register_buffer("output_values", output_values)

    @property
    def heads_per_layer(self) -> List[int]:
        return [layer.heads for layer in self.attention]

    @property
    def shape(self) -> ProgramShape:
        return ProgramShape(len(self.attention), max(self.heads_per_layer, default=0))

    @property
    def max_len(self) -> int:
        return self.embedding.max_len

    @property
    def vocab(self) -> List[Any]:
        return self.embedding.vocab.tolist()

    def head_labels(self) -> List[List[str]]:
        """What each head computes, per layer (for pictures and reports)."""
        return [[h.label for h in plan.heads] for plan in self.plans]

    # --- forward -----------------------------------------------------------
    def _edges(self, expr: Any, x: Tensor, full: Tensor, num_nodes: int,
               cache: Dict[Any, Tensor]) -> Tensor:
        if expr in cache:
            return cache[expr]
        op = expr[0]
        if op == "select":
            out = self.selects[expr[1]](x, full)
        elif op == "true":
            out = full
        elif op == "false":
            out = full[:, :0]
        elif op == "&":
            out = patterns.intersection(self._edges(expr[1], x, full, num_nodes, cache),
                                        self._edges(expr[2], x, full, num_nodes, cache),
                                        num_nodes=num_nodes)
        elif op == "|":
            out = patterns.union(self._edges(expr[1], x, full, num_nodes, cache),
                                 self._edges(expr[2], x, full, num_nodes, cache),
                                 num_nodes=num_nodes)[0]
        else:  # "~"
            out = patterns.difference(full, self._edges(expr[1], x, full, num_nodes, cache),
                                      num_nodes=num_nodes)
        cache[expr] = out
        return out

    def forward(self, tokens: Tensor, ptr: Union[Tensor, int],
                return_attention: bool = False
                ) -> Union[Tensor, Tuple[Tensor, List[Tuple[Tensor, Tensor, Tensor]]]]:
        """Run the program.

        Args:
            tokens (Tensor [N]): token ids (values of ``vocab``), all sequences
                concatenated.
            ptr (LongTensor [B + 1] or int): sequence boundaries.
            return_attention (bool): also return, per layer,
                ``(edge_index [2, E], alpha [E, H], head_mask [E, H])``.

        Returns:
            The output block ``[N, K]`` (and the attention list).
        """
        if not isinstance(tokens, Tensor) or tokens.dim() != 1:
            raise ValueError("'tokens' must be a 1-D tensor [N] of token ids")
        ptr = as_ptr(ptr, device=tokens.device)
        if int(ptr[-1]) != tokens.numel():
            raise ValueError(f"'ptr' describes {int(ptr[-1])} tokens but 'tokens' has "
                             f"{tokens.numel()}")
        info = node_info(ptr)
        n = tokens.numel()
        x = self.embedding(tokens, info.pos)
        for mlp in self.stacks[0]:
            x = mlp(x)
        full = patterns.full(ptr) if self.attention else None
        loops = patterns.window(ptr, 0) if self.attention else None  # j = i
        cache: Dict[Any, Tensor] = {}
        attention = []
        for layer, plan, stack in zip(self.attention, self.plans, self.stacks[1:]):
            sets = [self._edges(h.selector, x, full, n, cache) for h in plan.heads]
            edge_attr = None
            if layer.edge_dim is None:
                edge_index, head_mask = patterns.union(*sets, num_nodes=n)
            else:  # selector_width heads also attend over self-loops
                width = torch.tensor([h.width for h in plan.heads], device=x.device)
                edge_index, member = patterns.union(*sets, loops, num_nodes=n)
                head_mask = member[:, :-1] | (member[:, -1:] & width)
                edge_attr = torch.cat([member.to(x.dtype), x.new_ones(member.size(0), 1)], 1)
            h, alpha = layer(x, edge_index, edge_attr, head_mask, return_attention_weights=True,
                             batch=info.graph)
            x = x + h
            for mlp in stack:
                x = mlp(x)
            attention.append((edge_index, alpha, head_mask))
        out = x[:, self.output]
        return (out, attention) if return_attention else out

    def decode(self, out: Tensor) -> Tensor:
        """Values ``[N]`` from the output block: argmax (categorical) or nearest
        enumerated value (numerical), looked up in :attr:`output_values`."""
        if self.output_kind == CATEGORICAL:
            return self.output_values[out.argmax(-1)]
        dist = (out - self.output_values.to(out.dtype)[None, :]).abs()
        return self.output_values[dist.argmin(-1)]

    def run(self, sequences: Sequence[Sequence[Any]]) -> List[List[Any]]:
        """The program's output on Python sequences, one list per sequence."""
        ctx = Context.from_sequences(sequences)
        with torch.no_grad():
            vals = self.decode(self(ctx.tokens, ctx.ptr)).tolist()
        bounds = ctx.ptr.tolist()
        return [vals[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def __repr__(self) -> str:
        mlps = [len(s) for s in self.stacks]
        return (f"{self.__class__.__name__}(layers={len(self.attention)}, "
                f"heads={self.heads_per_layer}, channels={self.embedding.constant.numel()}, "
                f"mlp_sublayers={mlps}, max_len={self.max_len})")


# --------------------------------------------------------------------------- #
# compiling
# --------------------------------------------------------------------------- #
@dataclass
class _Info:
    node: SOp
    values: Tensor                       # sorted unique values
    onehot: Optional[slice] = None
    num: Optional[slice] = None
    raw: Optional[slice] = None          # attention result (aggregate, selector_width)
    level: int = 0                       # MLP sublayer (within its stack) after which ready
    needs_onehot: bool = False


class _Compiler:
    def __init__(self, output: SOp, max_len: int, vocab: Tensor, max_values: int) -> None:
        self.max_len = max_len
        self.vocab = vocab
        self.max_values = max_values
        self.output = output
        self.memo: Dict[int, Any] = {}
        self.order = _program_nodes(output, self.memo)
        self.info: Dict[Any, _Info] = {}
        self.dim = 0
        self.select_ids: Dict[Any, int] = {}
        self.select_modules: Dict[str, _Select] = {}

    # --- graph ---------------------------------------------------------------
    def key(self, node: Node) -> Any:
        return node._signature(self.memo)

    def slot(self, size: int) -> slice:
        s = slice(self.dim, self.dim + size)
        self.dim += size
        return s

    # --- value sets ----------------------------------------------------------
    def _check_size(self, node: Node, values: Tensor) -> Tensor:
        if values.numel() > self.max_values:
            raise ValueError(f"{_describe(node)}: {values.numel()} possible values over "
                             f"inputs up to max_len={self.max_len} exceed max_values="
                             f"{self.max_values}; compile with a smaller max_len or vocab")
        return values

    def _map_table(self, node: SOp, ins: List[_Info]) -> Tensor:
        """Output of the map for every input value (pair), flattened a-major."""
        params = node.params
        try:
            if node.op == "map":
                a = ins[0].values
                tag = params[0] if params else None
                if tag == "numerical" or tag == "categorical":
                    out = a.clone()
                elif tag == "neg":
                    out = negate(a)
                elif isinstance(tag, str) and tag in ARITH and len(params) == 3:
                    out = arith(tag, params[1], a) if params[2] else arith(tag, a, params[1])
                elif callable(tag):
                    out = apply_unary(tag, a, vectorized=False)
                else:
                    raise ValueError(f"{_describe(node)}: unknown map {params!r}")
            else:
                a, b = ins[0].values, ins[1].values
                ia = torch.arange(a.numel()).repeat_interleave(b.numel())
                ib = torch.arange(b.numel()).repeat(a.numel())
                tag = params[0] if params else None
                if isinstance(tag, str) and tag in ARITH:
                    out = arith(tag, a[ia], b[ib])
                elif callable(tag):
                    out = apply_binary(tag, a[ia], b[ib], vectorized=False)
                else:
                    raise ValueError(f"{_describe(node)}: unknown sequence_map {params!r}")
        except ValueError:
            raise
        except Exception as err:  # the user's function on a value it rejects
            raise ValueError(f"{_describe(node)}: cannot tabulate its function over the "
                             f"enumerated input values ({type(err).__name__}: {err}); a "
                             "compiled map must accept every value its inputs can take "
                             "(and vectorized maps must be elementwise)") from err
        if node.kind == NUMERICAL:
            out = out.to(torch.float64)
        return out

    def _means(self, node: SOp, values: Tensor) -> Tensor:
        """Every mean of 1..max_len values drawn (with repeats) from ``values``,
        as the evaluator computes it (exact sum, then one division)."""
        try:
            fracs = sorted({Fraction(v) for v in values.tolist()})
        except (ValueError, OverflowError) as err:
            raise ValueError(f"{_describe(node)}: cannot enumerate means of {values.tolist()}"
                             f" ({err})") from err
        sums = {Fraction(0)}
        means = set()
        for k in range(1, self.max_len + 1):
            sums = {s + v for s in sums for v in fracs}
            if len(sums) > self.max_values:
                raise ValueError(f"{_describe(node)}: the numerical aggregate can take more "
                                 f"than max_values={self.max_values} means; compile with a "
                                 "smaller max_len or fewer distinct values")
            means.update(float(s) / k for s in sums)
        means.add(float(node.params[0]))
        return self._check_size(node, torch.tensor(sorted(means), dtype=torch.float64))

    def _cat_aggregate_values(self, values: Tensor, default: Any) -> Tensor:
        # the evaluator's dtype rules for the default of a categorical aggregate
        work = values.long() if values.dtype == torch.bool else values
        fill = torch.tensor(default, dtype=work.dtype).reshape(1)
        out = torch.unique(torch.cat([work, fill]))
        return out.bool().unique() if values.dtype == torch.bool else out

    def values_of(self, node: SOp, ins: List[_Info]) -> Tuple[Tensor, Optional[Tensor]]:
        """(sorted value set, map table or None)."""
        op = node.op
        if op == "tokens":
            return self.vocab, None
        if op == "indices":
            return torch.arange(self.max_len), None
        if op == "constant":
            v = values_tensor([node.params[0]], torch.device("cpu"))
            return (v.to(torch.float64) if node.kind == NUMERICAL else v), None
        if op in ("map", "sequence_map"):
            table = self._map_table(node, ins)
            return self._check_size(node, torch.unique(table)), table
        if op == "selector_width":
            return torch.arange(self.max_len + 1), None
        if op == "aggregate":
            vals = ins[-1].values
            if node.kind == NUMERICAL:
                return self._means(node, vals), None
            return self._cat_aggregate_values(vals, node.params[0]), None
        raise ValueError(f"{_describe(node)}: the compiler does not know the op {op!r}")

    # --- the program ---------------------------------------------------------
    def build(self) -> CompiledProgram:
        sops = [n for n in self.order if isinstance(n, SOp)]
        sels = [n for n in self.order if isinstance(n, Selector)]
        for s in sels:
            if s.op not in ("select", "&", "|", "~"):
                raise ValueError(f"{_describe(s)}: the compiler does not know the selector "
                                 f"op {s.op!r}")
        # value sets, in topological order
        tables: Dict[Any, Optional[Tensor]] = {}
        for node in sops:
            ins = [self.info[self.key(i)] for i in node.inputs if isinstance(i, SOp)]
            if node.op == "aggregate" and node.kind == NUMERICAL and node.params[0] != 0:
                raise ValueError(f"{_describe(node)}: a numerical aggregate with default="
                                 f"{node.params[0]!r} cannot be compiled (an empty selection "
                                 "gives 0); use default=0")
            values, table = self.values_of(node, ins)
            self.info[self.key(node)] = _Info(node, values)
            tables[self.key(node)] = table
        # who needs one-hot blocks
        for node in self.order:
            if node.op in ("map", "sequence_map") or (isinstance(node, Selector)
                                                       and node.op == "select"):
                for i in node.inputs:
                    self.info[self.key(i)].needs_onehot = True
        out_info = self.info[self.key(self.output)]
        if self.output.kind == CATEGORICAL:
            out_info.needs_onehot = True
        for inf in self.info.values():
            if inf.node.kind == CATEGORICAL:
                inf.needs_onehot = True

        depth = self.output.depth
        plans, attn_ops = self._plan_heads(depth)

        # slots
        for inf in self.info.values():
            node = inf.node
            if node.kind == NUMERICAL:
                inf.num = self.slot(1)
            if inf.needs_onehot:
                inf.onehot = self.slot(inf.values.numel())
            if node.op == "aggregate" and node.kind == CATEGORICAL:
                inf.raw = self.slot(self.info[self.key(node.inputs[1])].values.numel())
            elif node.op == "selector_width":
                inf.raw = self.slot(1)
        dim = self.dim = max(self.dim, 1)

        # embedding
        emb = _Embedding(self.vocab, self.max_len, dim)
        with torch.no_grad():
            for inf in self.info.values():
                node = inf.node
                if node.op == "tokens" and inf.onehot is not None:
                    emb.token[:, inf.onehot] = torch.eye(self.vocab.numel(), dtype=torch.float64)
                elif node.op == "indices" and inf.onehot is not None:
                    emb.position[:, inf.onehot] = torch.eye(self.max_len, dtype=torch.float64)
                elif node.op == "constant":
                    if inf.onehot is not None:
                        emb.constant[inf.onehot] = 1.0
                    if inf.num is not None:
                        emb.constant[inf.num] = float(inf.values[0])

        # MLP ops, with levels
        stacks_ops: List[List[Tuple[int, Any]]] = [[] for _ in range(depth + 1)]
        for node in sops:
            inf = self.info[self.key(node)]
            d = node.depth
            if node.op == "aggregate":
                if node.kind == CATEGORICAL:
                    stacks_ops[d].append((0, ("cleanup", inf)))
                    inf.level = 1
                elif inf.onehot is not None:
                    stacks_ops[d].append((0, ("discretize", inf)))
                    inf.level = 1
            elif node.op == "selector_width":
                stacks_ops[d].append((0, ("width", inf)))
                inf.level = 1
            elif node.op in ("map", "sequence_map"):
                ins = [self.info[self.key(i)] for i in node.inputs]
                sub = max((i.level if i.node.depth == d else 0) for i in ins)
                stacks_ops[d].append((sub, ("lookup", inf, ins, tables[self.key(node)])))
                inf.level = sub + 1
        stacks = [self._build_stack(ops, dim) for ops in stacks_ops]

        # attention layers
        attention = [self._build_attention(plan, ops, dim) for plan, ops in zip(plans, attn_ops)]
        out_slot = out_info.onehot if self.output.kind == CATEGORICAL else out_info.num
        model = CompiledProgram(emb, stacks, attention, plans, self.select_modules, out_slot,
                                out_info.values, self.output.kind)
        expected = heads_per_layer(self.output)
        if model.heads_per_layer != expected:  # pragma: no cover - internal consistency
            raise AssertionError(f"compiled heads {model.heads_per_layer} != {expected}")
        return model

    # --- attention -----------------------------------------------------------
    def _selector_expr(self, sel: Selector) -> Any:
        op = sel.op
        if op == "select":
            keys, queries = sel.inputs
            pred = sel.params[0]
            if pred is Comparison.TRUE:
                return ("true",)
            if pred is Comparison.FALSE:
                return ("false",)
            name = f"s{self.select_ids.setdefault(self.key(sel), len(self.select_ids))}"
            if name not in self.select_modules:
                self.select_modules[name] = self._build_select(sel, keys, queries, pred)
            return ("select", name)
        if op == "~":
            return ("~", self._selector_expr(sel.inputs[0]))
        return (op, self._selector_expr(sel.inputs[0]), self._selector_expr(sel.inputs[1]))

    def _build_select(self, sel: Selector, keys: SOp, queries: SOp, pred: Any) -> _Select:
        kinf, qinf = self.info[self.key(keys)], self.info[self.key(queries)]
        kv, qv = kinf.values, qinf.values
        ik = torch.arange(kv.numel()).repeat(qv.numel())
        iq = torch.arange(qv.numel()).repeat_interleave(kv.numel())
        try:
            if isinstance(pred, Comparison):
                m = COMPARE[pred](kv[ik], qv[iq])
            else:
                m = apply_binary(pred, kv[ik], qv[iq], vectorized=False).bool()
        except Exception as err:
            raise ValueError(f"{_describe(sel)}: cannot tabulate the predicate {pred!r} over "
                             f"the enumerated values ({type(err).__name__}: {err})") from err
        m = m.view(qv.numel(), kv.numel()).to(torch.float64)
        mod = _Select(self.dim, kv.numel())
        with torch.no_grad():
            mod.lin_q.weight.zero_()
            mod.lin_k.weight.zero_()
            mod.lin_q.weight[:, qinf.onehot] = m.t()
            mod.lin_k.weight[:, kinf.onehot] = torch.eye(kv.numel(), dtype=torch.float64)
        return mod

    def _plan_heads(self, depth: int) -> Tuple[List[_Plan], List[List[List[SOp]]]]:
        plans: List[_Plan] = []
        ops_per_layer: List[List[List[SOp]]] = []
        for layer, groups in enumerate(_attention_groups(self.order, depth, self.memo), 1):
            plan = _Plan()
            layer_ops = []
            for ops in groups:
                width = [o for o in ops if o.op == "selector_width"]
                if width and len(width) != len(ops):
                    agg = next(o for o in ops if o.op == "aggregate")
                    raise ValueError(f"{_describe(width[0])} and {_describe(agg)} use the same "
                                     f"selector in layer {layer}: one head cannot compute both "
                                     "(its edge set would need the self-loops); build the "
                                     "selector twice differently or move one op")
                label = ", ".join(o.name or o.op for o in ops)
                plan.heads.append(_Head(ops[0].inputs[0], bool(width), label))
                layer_ops.append(ops)
            plans.append(plan)
            ops_per_layer.append(layer_ops)
        return plans, ops_per_layer

    def _build_attention(self, plan: _Plan, ops: List[List[SOp]], dim: int
                         ) -> RelationalAttention:
        H = len(plan.heads)
        channels = []
        for group in ops:
            c = 0
            for o in group:
                if o.op == "aggregate":
                    vals = self.info[self.key(o.inputs[1])]
                    c += vals.values.numel() if o.kind == CATEGORICAL else 1
                else:
                    c += 1
            channels.append(c)
        C = max(channels)
        has_width = any(h.width for h in plan.heads)
        edge_dim = H + 2 if has_width else None
        layer = RelationalAttention(dim, dim, heads=H, head_channels=C, edge_dim=edge_dim,
                                    bias=False).double()
        layer.requires_grad_(False)
        c_scale = 2.0 * self.max_len
        with torch.no_grad():
            for lin in (layer.lin_q, layer.lin_k, layer.lin_v, layer.lin_out,
                        layer.lin_edge_q, layer.lin_edge_k, layer.lin_edge_v):
                if lin is not None:
                    lin.weight.zero_()
            for h, (head, group) in enumerate(zip(plan.heads, ops)):
                head.selector = self._selector_expr(head.selector)
                ch = h * C
                for o in group:
                    inf = self.info[self.key(o)]
                    if o.op == "selector_width":
                        # edge value: 1 on the self-loop, + c_scale when i selects itself
                        # (edges of this head are in its selector or self-loops, so
                        # [selector] + [loop] - 1 is "both")
                        w = layer.lin_edge_v.weight
                        w[ch, H] = 1.0 + c_scale     # self-loop membership
                        w[ch, h] = c_scale           # membership of the head's selector
                        w[ch, H + 1] = -c_scale      # constant 1
                        layer.lin_out.weight[inf.raw.start, ch] = 1.0
                        ch += 1
                    elif o.kind == CATEGORICAL:
                        src = self.info[self.key(o.inputs[1])].onehot
                        k = src.stop - src.start
                        eye = torch.eye(k, dtype=torch.float64)
                        layer.lin_v.weight[ch:ch + k, src] = eye
                        layer.lin_out.weight[inf.raw, ch:ch + k] = eye
                        ch += k
                    else:
                        src = self.info[self.key(o.inputs[1])].num
                        layer.lin_v.weight[ch, src.start] = 1.0
                        layer.lin_out.weight[inf.num.start, ch] = 1.0
                        ch += 1
        return layer

    # --- MLPs ----------------------------------------------------------------
    def _build_stack(self, ops: List[Tuple[int, Any]], dim: int) -> List[_MLP]:
        depth = max((sub for sub, _ in ops), default=-1) + 1
        mlps = []
        for sub in range(depth):
            rows: List[Tuple[Dict[int, float], float, Dict[int, float]]] = []
            bias2 = torch.zeros(dim, dtype=torch.float64)
            for s, op in ops:
                if s == sub:
                    self._hidden_units(op, rows, bias2)
            mlp = _MLP(dim, max(len(rows), 1))
            with torch.no_grad():
                mlp.lin1.weight.zero_()
                mlp.lin1.bias.zero_()
                mlp.lin2.weight.zero_()
                mlp.lin2.bias.copy_(bias2)
                for r, (w_in, b, w_out) in enumerate(rows):
                    for col, val in w_in.items():
                        mlp.lin1.weight[r, col] = val
                    mlp.lin1.bias[r] = b
                    for col, val in w_out.items():
                        mlp.lin2.weight[col, r] = val
            mlps.append(mlp)
        return mlps

    def _hidden_units(self, op: Tuple[Any, ...], rows: list, bias2: Tensor) -> None:
        kind = op[0]
        if kind == "lookup":
            _, inf, ins, table = op
            blocks = [i.onehot for i in ins]
            sizes = [b.stop - b.start for b in blocks]
            combos = torch.cartesian_prod(*(torch.arange(s) for s in sizes)).view(-1, len(ins))
            out_index = _positions(inf.values, table) if inf.onehot is not None else None
            for r, combo in enumerate(combos.tolist()):
                w_in: Dict[int, float] = {}
                for blk, v in zip(blocks, combo):
                    w_in[blk.start + v] = w_in.get(blk.start + v, 0.0) + 1.0
                w_out: Dict[int, float] = {}
                if inf.onehot is not None:
                    w_out[inf.onehot.start + int(out_index[r])] = 1.0
                if inf.num is not None:
                    w_out[inf.num.start] = float(table[r])
                rows.append((w_in, 1.0 - len(ins), w_out))
        elif kind == "cleanup":
            inf = op[1]
            node = inf.node
            vals = self.info[self.key(node.inputs[1])].values
            n = self.max_len
            theta, sigma = 1.0 - 1.0 / (2 * n), 4.0 * n
            out_vals = inf.values
            work = vals.long() if vals.dtype == torch.bool else vals
            dflt = self._cat_aggregate_values(vals[:0], node.params[0])
            d_idx = int(_positions(out_vals, dflt)[0])
            bias2[inf.onehot.start + d_idx] += 1.0
            for k in range(vals.numel()):
                v = work[k:k + 1].bool() if vals.dtype == torch.bool else work[k:k + 1]
                o = int(_positions(out_vals, v)[0])
                w_out = {inf.onehot.start + o: 1.0}
                w_out[inf.onehot.start + d_idx] = w_out.get(inf.onehot.start + d_idx, 0.0) - 1.0
                rows.append(({inf.raw.start + k: sigma}, 0.5 - sigma * theta, w_out))
        elif kind == "width":
            inf = op[1]
            n, c = self.max_len, 2.0 * self.max_len
            cands = [(1.0 / (w + 1), w) for w in range(n)] + [((1 + c) / w, w)
                                                             for w in range(1, n + 1)]
            cands.sort()
            self._thresholds(inf.raw.start, [v for v, _ in cands],
                             [inf.onehot.start + w for _, w in cands], rows, bias2, inf.node)
        elif kind == "discretize":
            inf = op[1]
            vals = inf.values.tolist()
            self._thresholds(inf.num.start, vals,
                             [inf.onehot.start + k for k in range(len(vals))], rows, bias2,
                             inf.node)

    def _thresholds(self, col: int, values: List[float], targets: List[int], rows: list,
                    bias2: Tensor, node: Node) -> None:
        """One-hot of the nearest of ``values`` (sorted) read from channel ``col``:
        steps ``s_k = clamp(2 (x - t_k) / gap_k + 1/2, 0, 1)`` at the midpoints
        ``t_k``; ``onehot_k = s_{k-1} - s_k``."""
        bias2[targets[0]] += 1.0
        scale = max(1.0, max(abs(v) for v in values))
        for k in range(len(values) - 1):
            gap = values[k + 1] - values[k]
            if gap <= 1e-9 * scale:
                raise ValueError(f"{_describe(node)}: values {values[k]!r} and "
                                 f"{values[k + 1]!r} are too close to tell apart")
            t = 0.5 * (values[k] + values[k + 1])
            w = 2.0 / gap
            w_out = {targets[k + 1]: 1.0}
            w_out[targets[k]] = w_out.get(targets[k], 0.0) - 1.0
            rows.append(({col: w}, 0.5 - w * t, w_out))


def compile(program: Union[SOp, Callable[[SOp], SOp]], max_len: int,
            vocab: Iterable[Any], max_values: int = MAX_VALUES) -> CompiledProgram:
    """Compile a RASP program to a graphformer model that computes it exactly.

    Args:
        program: a function of the ``tokens`` s-op returning the output s-op
            (e.g. :func:`~graphformer.rasp.make_reverse`,
            ``lambda t: make_sort(t, t)``), or an output s-op already built on
            some batch (only its recorded computation graph is used).
        max_len (int): the longest input sequence the model must handle.
        vocab: the token ids (integers) inputs are drawn from.
        max_values (int): refuse value sets larger than this.

    Returns:
        :class:`CompiledProgram` with ``program_shape`` layers and heads.

    Raises:
        ValueError: naming the op that cannot be compiled (see the module
            docstring for the list).
    """
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"'max_len' must be a positive int, got {max_len!r}")
    vocab_list = list(vocab)
    if not vocab_list:
        raise ValueError("'vocab' is empty")
    voc = torch.unique(values_tensor(vocab_list, torch.device("cpu")))
    if voc.is_floating_point() and bool((voc != voc.round()).any()):
        raise ValueError(f"'vocab' holds token ids that are not integers: "
                         f"{voc[voc != voc.round()].tolist()!r}")
    if voc.numel() != len(vocab_list):
        raise ValueError(f"'vocab' has repeated token ids: {vocab_list!r}")
    if isinstance(program, SOp):
        out = program
    elif callable(program):
        ctx = Context(voc[:1].clone(), 1)
        try:  # the graph is recorded on a one-token input
            out = program(rasp_tokens(ctx))
        except Exception as err:
            raise ValueError(f"running the program on the one-token input "
                             f"{voc[:1].tolist()} (to record its graph) failed "
                             f"({type(err).__name__}: {err}); pass its output s-op built on an "
                             "input it accepts instead") from err
    else:
        raise TypeError(f"'program' must be an SOp or a function of the tokens s-op, got "
                        f"{type(program).__name__}")
    if not isinstance(out, SOp):
        raise TypeError(f"the program must return an SOp, got {type(out).__name__}")
    comp = _Compiler(out, max_len, voc, max_values)
    return comp.build()


__all__ = ["compile", "CompiledProgram", "head_selectors", "MAX_VALUES"]
