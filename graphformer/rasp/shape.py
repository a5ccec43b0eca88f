"""How big a transformer a RASP program needs: layers and heads.

Convention (the paper's analysis, Weiss et al. 2021, Sec. 4 and Table 1):

* only the attention ops count: :func:`~graphformer.rasp.aggregate` and
  :func:`~graphformer.rasp.selector_width` (one head each); ``map``,
  ``sequence_map``, ``select`` and the selector algebra ``& | ~`` are free
  (feed-forward layers and the attention pattern itself);
* every op is placed as early as possible: an attention op sits in layer
  ``1 + max(depth of its selector, depth of its values)``, where the depth of
  ``tokens``/``indices``/constants is 0. ``length`` is not free: it is
  ``selector_width(select(tokens, tokens, TRUE))``, one layer (which is why the
  paper's ``reverse`` needs 2 layers);
* **layers** = the longest chain of attention ops = the output's depth;
* **heads** = the largest number, over layers, of *distinct selectors* used by
  that layer's attention ops. Attention ops at one layer that share a selector
  share a head (their values are concatenated in the value vector), as in the
  paper's Dyck-1 program, whose two counts use one ``select(indices, indices,
  <=)`` head. Selectors are compared by construction (same op, same inputs,
  same predicate), not by object identity.
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Sequence, Set, Union

from ._core import Node, Selector, SOp


class ProgramShape(NamedTuple):
    """Attention layers and heads (per layer, at most) a program needs."""

    layers: int
    heads: int


def _attention_ops(outputs: Sequence[Node]) -> Dict[int, List[Node]]:
    by_layer: Dict[int, List[Node]] = {}
    seen: Set[int] = set()
    stack: List[Node] = list(outputs)
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.is_attention:
            by_layer.setdefault(node.depth, []).append(node)
        stack.extend(node.inputs)
    return by_layer


def heads_per_layer(*outputs: Union[SOp, Selector]) -> List[int]:
    """The number of heads each layer ``1..L`` needs (distinct selectors of
    its attention ops) for the program computing ``outputs``."""
    if not outputs:
        raise ValueError("heads_per_layer needs at least one s-op")
    for o in outputs:
        if not isinstance(o, (SOp, Selector)):
            raise TypeError(f"expected SOp or Selector, got {type(o).__name__}")
    by_layer = _attention_ops(outputs)
    depth = max(o.depth for o in outputs)
    memo: Dict[int, object] = {}
    return [len({op.inputs[0]._signature(memo) for op in by_layer.get(layer, [])})
            for layer in range(1, depth + 1)]


def program_shape(*outputs: Union[SOp, Selector]) -> ProgramShape:
    """``(layers, heads)`` of the transformer that computes ``outputs``: its
    attention depth (longest chain of aggregate/selector_width) and width (most
    distinct selectors in one layer). See the module docstring for the
    convention; e.g. histogram is ``(1, 1)``, reverse ``(2, 1)``.
    """
    counts = heads_per_layer(*outputs)
    return ProgramShape(len(counts), max(counts, default=0))


__all__ = ["ProgramShape", "program_shape", "heads_per_layer"]
