"""Reading: an edge file, and optionally node feature and label files, into
one :class:`torch_geometric.data.Data`.

Reading is vectorised: pandas' C parser (:mod:`graphformer.data.edge_list.fast`)
reads the whole file when it can vouch that its result is the one the format
rules (:mod:`graphformer.data.edge_list.formats`) give, and a careful
line-by-line pass with the same rules (:mod:`graphformer.data.edge_list.careful`)
reads anything else, so both give the same graph and only the careful pass
raises, with the file, line and value of the first malformed row.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data

from ...errors import DataError
from . import careful, fast
from .formats import (
    INT,
    Column,
    Head,
    Layout,
    PathLike,
    Table,
    column_index,
    int_array,
    read_head,
    show,
)


def _read_body(head: Head, layout: Layout, *, dtype: torch.dtype,
               ids_as_text: bool) -> Table:
    """The rows of the file: the vectorised parser when it can vouch for the
    whole file, else the careful line-by-line pass (same result, precise errors)."""
    table = fast.parse_fast(head, layout, dtype, ids_as_text)
    return table if table is not None else careful.parse_careful(head, layout, dtype, ids_as_text)


@dataclass(frozen=True)
class _Source:
    """A file to read: where, and which columns."""

    head: Head
    layout: Layout


def _read_tables(sources: List[_Source], dtype: torch.dtype) -> List[Table]:
    """Read every file; if some have string ids, read the others' ids as strings
    too (ids are integers only when all of them are)."""
    tables = [_read_body(s.head, s.layout, dtype=dtype, ids_as_text=False) for s in sources]
    if any(t.text_ids for t in tables):
        tables = [t if t.text_ids else _read_body(s.head, s.layout, dtype=dtype, ids_as_text=True)
                  for s, t in zip(sources, tables)]
    return tables


def _factorize(tables: List[Table]) -> Tuple[np.ndarray, List[np.ndarray]]:
    """Index the nodes by first appearance: edge rows in file order (source
    before target), then the node files' rows. Returns the unique ids and, per
    table, the node index of each row ([rows, 2] for the edges, [rows] else)."""
    import pandas as pd

    edges, others = tables[0], tables[1:]
    parts = [np.stack(edges.ids, axis=1).reshape(-1)] + [t.ids[0] for t in others]
    if any(p.dtype == object for p in parts):
        parts = [p.astype(object) for p in parts]
    codes, uniques = pd.factorize(np.concatenate(parts), sort=False)
    codes = codes.astype(np.int64, copy=False)
    bounds = np.cumsum([0] + [len(p) for p in parts])
    per_table = [codes[bounds[0]:bounds[1]].reshape(-1, 2)]
    per_table += [codes[a:b] for a, b in zip(bounds[1:-1], bounds[2:])]
    return np.asarray(uniques), per_table


def _node_ids(uniques: np.ndarray) -> Union[Tensor, List[int], List[str]]:
    """Original ids in node order: a long tensor for int64 ids, else a list."""
    if uniques.dtype == object:
        return uniques.tolist()
    return torch.from_numpy(uniques.astype(np.int64))


class _Origins:
    """Where each node is first mentioned, for error messages."""

    def __init__(self, uniques: np.ndarray, tables: List[Table], codes: List[np.ndarray]):
        self.uniques, self.tables, self.codes = uniques, tables, codes

    def id(self, node: int) -> str:
        value = self.uniques[node]
        return repr(value if isinstance(value, str) else int(value))

    def where(self, node: int) -> str:
        for table, codes in zip(self.tables, self.codes):
            rows = np.flatnonzero((codes == node).reshape(len(codes), -1).any(axis=1))
            if rows.size:
                return f"line {table.line(rows[0])} of {table.name}"
        raise AssertionError(f"node {node} comes from no row")


def _check_node_rows(table: Table, codes: np.ndarray, num_nodes: int, num_edge_nodes: int,
                     what: str, extra_nodes: str, origins: _Origins) -> None:
    """Each node has exactly one row in a node file; with ``extra_nodes='error'``
    no row names a node without edges."""
    if extra_nodes == "error" and codes.size and codes.max() >= num_edge_nodes:
        row = int(np.argmax(codes >= num_edge_nodes))
        raise DataError(f"{table.name}, line {table.line(row)}: node id "
                        f"{origins.id(codes[row])} appears in no edge of "
                        f"{origins.tables[0].name} (extra_nodes='error')")
    order = np.argsort(codes, kind="stable")
    repeat = np.flatnonzero(codes[order][1:] == codes[order][:-1])
    if repeat.size:
        k = repeat[np.argmin(order[repeat + 1])]
        first, second = int(order[k]), int(order[k + 1])
        raise DataError(f"{table.name}, lines {table.line(first)} and {table.line(second)}: "
                        f"duplicate {what} rows for node {origins.id(codes[first])}")
    present = np.zeros(num_nodes, dtype=bool)
    present[codes] = True
    missing = np.flatnonzero(~present)
    if missing.size:
        node = int(missing[0])
        more = f" (and {missing.size - 1} more nodes)" if missing.size > 1 else ""
        raise DataError(f"{table.name}: node {origins.id(node)} has no {what} row; it "
                        f"appears on {origins.where(node)}{more}")


def _labels(table: Table) -> Tuple[Tensor, Optional[List[str]]]:
    """Label column -> (long labels, class names or None for integer labels)."""
    column = table.texts[0]
    if column.dtype == np.int64:
        return torch.tensor(column, dtype=torch.long), None
    tokens = column.tolist()
    if all(INT.fullmatch(t) for t in tokens):
        values = int_array(tokens)
        if values.dtype == object:
            row = next(r for r, v in enumerate(tokens) if not -2**63 <= int(v) < 2**63)
            raise DataError(f"{table.name}, line {table.line(row)}: label {show(tokens[row])} "
                            f"does not fit in int64")
        return torch.from_numpy(values), None
    names = sorted(set(tokens))
    index = {n: k for k, n in enumerate(names)}
    return torch.tensor([index[t] for t in tokens], dtype=torch.long), names


def _undirected(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """For each edge, in order: its index, followed by ``-1 - index`` when its
    reverse must be added (not a self-loop, reverse not listed)."""
    n = int(max(src.max(), dst.max())) + 1 if src.size else 1
    listed = src * n + dst
    mirror = (src != dst) & ~np.isin(dst * n + src, listed)
    edges = np.arange(src.size, dtype=np.int64)
    take = np.repeat(edges, 1 + mirror)
    slots = np.cumsum(1 + mirror) - 1  # last slot of each edge's group
    take[slots[mirror]] = -1 - edges[mirror]
    return take


def _feature_columns(features: Optional[Sequence[Column]]) -> List[Column]:
    """``features`` as a list (a lone str would otherwise be read as characters)."""
    if features is None:
        return []
    if isinstance(features, (str, bytes)) or not isinstance(features, Sequence):
        raise TypeError(f"features must be a list of columns, got {type(features).__name__}")
    return list(features)


def _edge_layout(head: Head, source: Column, target: Column, weight: Optional[Column],
                 features: List[Column]) -> Layout:
    nums = [] if weight is None else [(column_index(head, weight, "weight"), "weight")]
    nums += [(column_index(head, f, "feature"), "feature") for f in features]
    return Layout(ids=((column_index(head, source, "source"), "source"),
                       (column_index(head, target, "target"), "target")), nums=tuple(nums))


def _node_source(path: PathLike, kind: str, *, delimiter: Optional[str],
                 header: Optional[bool], comment: Optional[str],
                 label_type: str = "class") -> _Source:
    """A node feature (``kind='feature'``) or label file: id in column 0, then
    the features / the label."""
    head = read_head(path, delimiter=delimiter, header=header, comment=comment)
    return _Source(head, node_layout(head, kind, label_type))


#: what a node label file holds: class labels (integers or names), or numbers
#: (regression targets)
LABEL_TYPES = ("class", "value")


def node_layout(head: Head, kind: str, label_type: str = "class") -> Layout:
    """The columns of a node feature (``kind='feature'``) or label file with
    this head: id in column 0, then the features / the label (a class label
    as text, or with ``label_type='value'`` a number)."""
    if kind == "feature" and head.ncols == 1:
        raise DataError(f"{head.name}, line {head.ref_line}: a node feature file needs a node "
                        f"id and at least one feature column, found 1 field")
    if kind == "label" and head.ncols not in (0, 2):
        raise DataError(f"{head.name}, line {head.ref_line}: a node label file has 2 columns "
                        f"(node id, label), found {head.ncols}: {show(head.ref_text)}")
    role = "node feature" if kind == "feature" else "label"
    rest = tuple((c, role) for c in range(1, max(head.ncols, 2)))
    ids = ((0, "node id"),)
    if kind == "feature" or label_type == "value":
        return Layout(ids=ids, nums=rest)
    return Layout(ids=ids, texts=rest)


def check_options(comment: Optional[str], extra_nodes: str, dtype: torch.dtype,
                  header: Optional[bool], node_header: Optional[bool],
                  label_type: str = "class") -> None:
    if label_type not in LABEL_TYPES:
        raise ValueError(f"label_type must be 'class' or 'value', got {label_type!r}")
    if comment is not None and (not isinstance(comment, str) or not comment
                                or "\n" in comment or "\r" in comment):
        raise ValueError(f"comment must be a non-empty one-line string or None, got {comment!r}")
    if extra_nodes not in ("add", "error"):
        raise ValueError(f"extra_nodes must be 'add' or 'error', got {extra_nodes!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    for flag, name in ((header, "header"), (node_header, "node_header")):
        if flag is not None and not isinstance(flag, bool):
            raise TypeError(f"{name} must be True, False or None, got {flag!r}")


def read_edge_list(path: PathLike, *, delimiter: Optional[str] = None,
                   header: Optional[bool] = None, source: Column = 0, target: Column = 1,
                   weight: Optional[Column] = None,
                   features: Optional[Sequence[Column]] = None, directed: bool = True,
                   comment: Optional[str] = "#",
                   node_features: Optional[PathLike] = None,
                   node_labels: Optional[PathLike] = None,
                   node_header: Optional[bool] = None, extra_nodes: str = "add",
                   label_type: str = "class", dtype: torch.dtype = torch.float32) -> Data:
    """Read an edge-list file (CSV, TSV or whitespace) into a PyG ``Data``.

    The file rules (delimiters, comments, header detection, id and number
    syntax) are in the module docstring of
    :mod:`graphformer.data.edge_list.formats`.
    Each data row is one edge; nothing is skipped but blank and comment lines,
    and any malformed row raises a ``ValueError`` naming the file, the line
    and the offending value.

    Parameters
    ----------
    path : str or os.PathLike
        The edge file (``.gz`` is gunzipped).
    delimiter : str, optional
        ``","``, ``"\\t"``, ``" "`` (runs of spaces and tabs, SNAP style) or
        another single character. ``None`` detects it from the extension
        (``.csv``, ``.tsv``) or from the first data line. Applies to the node
        files too (each auto-detected on its own when ``None``).
    header : bool, optional
        Whether the first non-comment line is a header. ``None`` detects it
        (see :mod:`graphformer.data.edge_list.formats`); it is ``True`` when
        a column is selected by name.
    source, target : int or str
        Column of the source (row 0 of ``edge_index``) and target (row 1)
        node ids: a 0-based index or a header name.
    weight : int or str, optional
        Column of the edge weight, read into ``data.edge_weight`` ([E]).
    features : list of int or str, optional
        Columns of the edge features, read into ``data.edge_attr`` ([E, F]).
    directed : bool
        ``True`` keeps the edges as listed, in file order. ``False`` makes the
        graph undirected: every listed edge ``(u, v)`` keeps its place and is
        followed by its reverse ``(v, u)``, which gets the same weight and
        features, unless ``u == v`` (self-loop) or ``(v, u)`` is itself
        listed somewhere in the file, in which case that line supplies the
        reverse direction with its own weight and features. Nothing is
        deduplicated: a line listed twice gives two copies of each direction.
    comment : str, optional
        Lines starting with it (after spaces/tabs) are ignored; ``None``: no
        comments.
    node_features : str or os.PathLike, optional
        A file ``node_id, f_1, ..., f_F`` (same format rules, header
        optional): ``data.x`` [N, F]. Every node needs exactly one row.
    node_labels : str or os.PathLike, optional
        A file ``node_id, label``: ``data.y`` (long [N]). Integer labels are
        kept as they are; otherwise every label is a class name, classes are
        numbered in sorted (Python string) order and ``data.label_names[c]``
        is the name of class ``c``. Every node needs exactly one row. With
        ``label_type="value"`` the labels are numbers (regression targets):
        ``data.y`` is float [N] of ``dtype``.
    node_header : bool, optional
        ``header`` for the node files; ``None`` detects it in each file.
    extra_nodes : {"add", "error"}
        What a node-file row whose id is in no edge means. ``"add"``: an
        isolated node, numbered after the edge nodes in order of first
        appearance in ``node_features`` then ``node_labels``. ``"error"``: a
        ValueError naming the file, line and id.
    label_type : {"class", "value"}
        What ``node_labels`` holds: class labels (integers or names), or
        numbers, each finite (a malformed or non-finite one is an error naming
        file, line and value, as for features).
    dtype : torch.dtype
        Floating dtype of ``edge_weight``, ``edge_attr``, ``x`` and value
        labels.

    Returns
    -------
    torch_geometric.data.Data
        ``edge_index`` (long [2, E]), ``num_nodes``, ``node_ids`` and, as
        requested, ``edge_weight``, ``edge_attr``, ``x``, ``y``,
        ``label_names``. Nodes are numbered 0..N-1 in order of first
        appearance: edge rows in file order, source before target, then the
        node files' extra nodes. ``node_ids[k]`` is the original id of node
        ``k``: a long tensor when all ids are integers that fit in int64, a
        list of Python ints for larger integers, a list of str otherwise.

    Raises
    ------
    ValueError
        For malformed content, naming file, line and value: a row with a
        missing column or another field count than the first row, an empty
        node id or label, a non-numeric or non-finite weight or feature, a
        duplicate node row (both lines named), a node without a feature or
        label row (its id named), a header name that does not exist.
    FileNotFoundError
        If a file does not exist.

    Examples
    --------
    >>> data = read_edge_list("web-Google.txt")       # SNAP: '#' comments, tabs
    >>> data = read_edge_list("edges.csv", weight="weight", directed=False)
    >>> data = read_edge_list("edges.tsv", source=0, target=1, features=[2, 3],
    ...                       node_features="x.tsv", node_labels="y.tsv")
    >>> data.node_ids[0]                              # original id of node 0
    """
    check_options(comment, extra_nodes, dtype, header, node_header, label_type)
    feature_columns = _feature_columns(features)
    if header is None and any(isinstance(c, str)
                              for c in [source, target, weight, *feature_columns]):
        header = True
    head = read_head(path, delimiter=delimiter, header=header, comment=comment)
    sources = [_Source(head, _edge_layout(head, source, target, weight, feature_columns))]
    kinds = [kind for kind, node_path in (("feature", node_features), ("label", node_labels))
             if node_path is not None]
    for kind in kinds:
        sources.append(_node_source(node_features if kind == "feature" else node_labels, kind,
                                    delimiter=delimiter, header=node_header, comment=comment,
                                    label_type=label_type))
    tables = _read_tables(sources, dtype)
    uniques, codes = _factorize(tables)
    num_nodes = len(uniques)
    edge_codes = codes[0]
    num_edge_nodes = int(edge_codes.max()) + 1 if edge_codes.size else 0
    origins = _Origins(uniques, tables, codes)

    data = Data(num_nodes=num_nodes)
    data.node_ids = _node_ids(uniques)
    src, dst = edge_codes[:, 0], edge_codes[:, 1]
    edge_values = tables[0].nums
    if not directed:
        take = _undirected(src, dst)
        reverse = take < 0
        take = np.where(reverse, -1 - take, take)
        src, dst = np.where(reverse, dst[take], src[take]), np.where(reverse, src[take], dst[take])
        edge_values = edge_values[torch.from_numpy(take)]
    data.edge_index = torch.from_numpy(np.stack([src, dst])).long()
    if weight is not None:
        data.edge_weight = edge_values[:, 0].contiguous()
    if features is not None:
        data.edge_attr = edge_values[:, int(weight is not None):].contiguous()

    for kind, table, table_codes in zip(kinds, tables[1:], codes[1:]):
        _check_node_rows(table, table_codes, num_nodes, num_edge_nodes, kind, extra_nodes, origins)
        index = torch.from_numpy(table_codes)
        if kind == "feature":
            data.x = torch.zeros(num_nodes, table.nums.size(1), dtype=dtype)
            data.x[index] = table.nums
        elif label_type == "value":
            data.y = torch.zeros(num_nodes, dtype=dtype)
            data.y[index] = table.nums[:, 0]
        else:
            labels, names = _labels(table)
            data.y = torch.zeros(num_nodes, dtype=torch.long)
            data.y[index] = labels
            if names is not None:
                data.label_names = names
    return data
