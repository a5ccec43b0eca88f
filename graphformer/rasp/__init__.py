"""RASP ("Thinking Like Transformers", Weiss, Goldberg & Yahav, ICML 2021) on
batches of token graphs.

RASP's attention primitives are graph operations here: a selector is an edge
set (:mod:`graphformer.patterns` conventions), ``aggregate`` is a scatter-mean
over it and ``selector_width`` its in-degree. Programs run eagerly on a whole
PyG batch and record their computation graph, from which
:func:`program_shape` reads the layers and heads a transformer needs.

Example::

    >>> from graphformer import rasp
    >>> ctx = rasp.Context.from_sequences([[3, 1, 2], [5, 4]])
    >>> rev = rasp.make_reverse(rasp.tokens(ctx))
    >>> rev.to_lists()
    [[2, 1, 3], [4, 5]]
    >>> rasp.program_shape(rev)
    ProgramShape(layers=2, heads=1)
"""
from ._core import (CATEGORICAL, EQ, FALSE, GEQ, GT, LEQ, LT, NEQ, NUMERICAL, TRUE,
                    Comparison, Context, Predicate, Selector, SOp, aggregate, categorical,
                    constant, indices, length, map, numerical, select, selector_width,
                    sequence_map, tokens)
from .compiler import CompiledProgram, compile, head_selectors
from .heads import attention_match, selector_to_head, uniform_attention
from .programs import (DYCK_FALSE, DYCK_LABELS, DYCK_PREFIX, DYCK_TRUE, make_dyck,
                       make_dyck1, make_dyck2, make_hist, make_hist2, make_length,
                       make_most_freq, make_reverse, make_sort, make_sort_unique)
from .shape import ProgramShape, heads_per_layer, program_shape

__all__ = [
    "Context", "SOp", "Selector", "Comparison", "Predicate", "CATEGORICAL", "NUMERICAL",
    "tokens", "indices", "length", "constant", "map", "sequence_map", "numerical",
    "categorical", "select", "aggregate", "selector_width",
    "EQ", "LT", "LEQ", "GT", "GEQ", "NEQ", "TRUE", "FALSE",
    "selector_to_head", "uniform_attention", "attention_match",
    "ProgramShape", "program_shape", "heads_per_layer", "compile", "CompiledProgram",
    "head_selectors",
    "make_length", "make_reverse", "make_hist", "make_sort_unique", "make_sort",
    "make_most_freq", "make_hist2", "make_dyck1", "make_dyck", "make_dyck2",
    "DYCK_FALSE", "DYCK_PREFIX", "DYCK_TRUE", "DYCK_LABELS",
]
