"""Writing: a graph's edges as an edge-list file, with the original node ids,
that :func:`graphformer.data.edge_list.read_edge_list` reads back."""
from __future__ import annotations

import gzip
import os
from typing import Optional

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data

from graphformer._checks import check_edge_index, check_node_range

from .formats import (
    INT,
    WHITESPACE,
    PathLike,
    check_delimiter,
    file_suffix,
    header_names,
    is_written_header,
    show,
)


def _format_floats(values: Tensor) -> np.ndarray:
    """Decimal strings that read back to exactly ``values``: the shortest
    round-tripping repr for float32/float64, the exact float64 repr else."""
    values = values.detach().cpu()
    if values.dtype == torch.bool:          # 1 / 0: the format's numbers
        values = values.to(torch.uint8)
    if not values.dtype.is_floating_point:
        return values.numpy().astype(str)
    if values.dtype in (torch.float32, torch.float64):
        array = values.numpy()
        text = array.astype(str)
        wrong = text.astype(np.float64).astype(array.dtype) != array
        if wrong.any():
            text = text.astype(object)
            text[wrong] = [repr(float(v)) for v in array[wrong]]
        return text.astype(str)
    return np.array([repr(v) for v in values.double().reshape(-1).tolist()],
                    dtype=str).reshape(values.shape)


def _writer_delimiter(name: str, delimiter: Optional[str]) -> str:
    if delimiter is not None:
        return check_delimiter(delimiter)
    return {".csv": ",", ".tsv": "\t"}.get(file_suffix(name), WHITESPACE)


def _id_texts(data: Data, num_nodes: int, delimiter: str, comment: Optional[str]) -> np.ndarray:
    """The id of each node as written; refuses ids that would not read back."""
    ids = getattr(data, "node_ids", None)
    if ids is None:
        return np.arange(num_nodes).astype(str)
    if isinstance(ids, Tensor):
        if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.dim() != 1:
            raise ValueError(f"data.node_ids must be a 1-D integer tensor or a list of ints/str, "
                             f"got a {ids.dtype} tensor of shape {list(ids.shape)}")
        ids = ids.tolist()
    ids = list(ids)
    if len(ids) != num_nodes:
        raise ValueError(f"data.node_ids has {len(ids)} entries but the graph has "
                         f"{num_nodes} nodes")
    texts = [_id_text(value, k, delimiter, comment) for k, value in enumerate(ids)]
    keys = [int(t) for t in texts] if all(INT.fullmatch(t) for t in texts) else texts
    first: dict = {}
    for k, key in enumerate(keys):
        if first.setdefault(key, k) != k:
            raise ValueError(f"data.node_ids[{first[key]}] and data.node_ids[{k}] would read "
                             f"back as the same node ({texts[first[key]]!r}, {texts[k]!r})")
    return np.array(texts, dtype=str)


def _id_text(value: object, k: int, delimiter: str, comment: Optional[str]) -> str:
    """``str(value)``, checked to read back as the same id."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"data.node_ids[{k}] must be an int or a str, got {value!r}")
    text = str(value)
    separators = " \t" if delimiter == WHITESPACE else delimiter
    if (not text or text != text.strip(" \t") or "\n" in text or "\r" in text
            or any(s in text for s in separators)
            or (comment is not None and text.startswith(comment))):
        raise ValueError(f"data.node_ids[{k}] = {show(text)} cannot be written: ids must be "
                         f"non-empty, one line, without the delimiter {delimiter!r}, without "
                         f"surrounding spaces and not start with the comment {comment!r}")
    return text


def _edge_values(data: Data, key: str, wanted: Optional[bool], num_edges: int) -> Optional[Tensor]:
    """``data[key]`` as [E, K] for writing, or None when not written."""
    value = getattr(data, key, None)
    if wanted is False or (wanted is None and value is None):
        return None
    if value is None:
        raise ValueError(f"data.{key} is missing (asked to write it)")
    if not isinstance(value, Tensor) or value.size(0) != num_edges or value.dim() > 2 or (
            key == "edge_weight" and value.dim() != 1):
        shape = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
        expected = "[E]" if key == "edge_weight" else "[E] or [E, F]"
        raise ValueError(f"data.{key} must be a tensor of shape {expected} with E = "
                         f"{num_edges}, got {shape}")
    value = value.reshape(num_edges, -1)
    if value.dtype.is_floating_point and not bool(torch.isfinite(value).all()):
        edge = int((~torch.isfinite(value)).any(dim=1).nonzero()[0])
        raise ValueError(f"data.{key} of edge {edge} is not finite: {value[edge].tolist()}")
    return value


def _written_edges(edge_index: Tensor, values: Tensor) -> Tensor:
    """Mask of the edges an undirected write keeps: an edge that is the exact
    reverse (same values) of the edge just before it, when that one is kept,
    is left out (read_edge_list(directed=False) adds it back in place)."""
    src, dst = edge_index
    mirror = torch.zeros(src.numel(), dtype=torch.bool)
    if src.numel() > 1:
        mirror[1:] = ((src[1:] == dst[:-1]) & (dst[1:] == src[:-1]) & (src[1:] != dst[1:])
                      & (values[1:] == values[:-1]).all(dim=1))
    position = torch.arange(src.numel())
    last_kept = torch.cummax(torch.where(mirror, -1, position), dim=0).values
    return ~(mirror & ((position - last_kept) % 2 == 1))


def write_edge_list(data: Data, path: PathLike, *, delimiter: Optional[str] = None,
                    header: bool = True, weight: Optional[bool] = None,
                    features: Optional[bool] = None, directed: bool = True,
                    comment: Optional[str] = "#", allow_isolated: bool = False) -> None:
    """Write ``data``'s edges as an edge-list file, with the original node ids.

    ``read_edge_list(path)`` of the written file gives back the same
    ``edge_index``, ``node_ids``, ``edge_weight`` and ``edge_attr`` (read
    with the same ``dtype``) when the nodes are numbered in order of first
    appearance, as :func:`read_edge_list` numbers them.

    Parameters
    ----------
    data : torch_geometric.data.Data
        ``edge_index`` and optionally ``node_ids`` (int tensor, or list of
        int/str; without it node ``k`` is written as ``k``), ``edge_weight``
        ([E]) and ``edge_attr`` ([E] or [E, F]).
    path : str or os.PathLike
        The file to write (``.gz``: gzipped).
    delimiter : str, optional
        ``","``, ``"\\t"``, ``" "`` (one space, read back as whitespace
        format) or another single character. ``None``: ``","`` for ``.csv``,
        ``"\\t"`` for ``.tsv``, ``" "`` otherwise.
    header : bool
        Write a header line ``source target [weight] [feature_0 ...]``, which
        :func:`read_edge_list` recognises with ``header=None``.
    weight, features : bool, optional
        Write ``edge_weight`` / ``edge_attr`` as columns. ``None``: when the
        graph has them; ``True``: they must exist.
    directed : bool
        ``False`` writes an undirected graph as read by
        ``read_edge_list(directed=False)``: an edge that is the exact reverse
        (same weight and features) of the edge just before it is left out,
        since reading adds it back there. The round trip is identical when
        the original file lists no pair in both directions.
    comment : str, optional
        The comment prefix the file will be read with; ids starting with it
        are refused.
    allow_isolated : bool
        An edge list cannot hold nodes without edges, so by default they are
        an error; ``True`` writes the edges anyway, leaving those nodes out.

    Raises
    ------
    ValueError
        For nodes without edges (unless ``allow_isolated``), ids that would
        not read back (empty, containing the delimiter or a line break,
        with surrounding spaces, starting with ``comment``, or two ids that
        read back as one), non-finite weights or features, wrong shapes.

    Examples
    --------
    >>> write_edge_list(data, "edges.csv")                # source,target[,weight]...
    >>> write_edge_list(data, "edges.tsv", header=False)  # tab-separated
    >>> write_edge_list(data, "edges.txt.gz")             # whitespace, gzipped
    """
    name = os.fspath(path)
    delim = _writer_delimiter(name, delimiter)
    edge_index = data.edge_index
    check_edge_index(edge_index)
    num_nodes = int(data.num_nodes)
    check_node_range(edge_index, num_nodes, num_nodes)
    edge_index = edge_index.long().cpu()
    ids = _id_texts(data, num_nodes, delim, comment)
    if not allow_isolated:
        has_edge = torch.zeros(num_nodes, dtype=torch.bool)
        has_edge[edge_index.reshape(-1)] = True
        if not bool(has_edge.all()):
            node = int((~has_edge).nonzero()[0])
            raise ValueError(f"node {node} (id {str(ids[node])!r}) has no edge, so an edge "
                             f"list cannot hold it; pass allow_isolated=True to write the "
                             f"edges anyway")
    num_edges = edge_index.size(1)
    weights = _edge_values(data, "edge_weight", weight, num_edges)
    attrs = _edge_values(data, "edge_attr", features, num_edges)
    values = torch.cat([v.double() for v in (weights, attrs) if v is not None]
                       + [torch.zeros(num_edges, 0, dtype=torch.float64)], dim=1)
    if not directed:
        keep = _written_edges(edge_index, values)
        edge_index = edge_index[:, keep]
        weights = None if weights is None else weights[keep]
        attrs = None if attrs is None else attrs[keep]
    columns = [ids[edge_index[0].numpy()], ids[edge_index[1].numpy()]]
    columns += [] if weights is None else [_format_floats(weights[:, 0])]
    columns += [] if attrs is None else list(_format_floats(attrs).T)
    sep = " " if delim == WHITESPACE else delim
    rows = [sep.join(header_names(weights is not None,
                                   0 if attrs is None else attrs.size(1)))] if header else []
    first = [str(c[0]) for c in columns] if len(columns[0]) else []
    if not header and first and is_written_header(first):
        raise ValueError(f"the first edge, {first[0]!r} -> {first[1]!r}, would be read back "
                         f"as the header line {sep.join(first)!r}: write the header "
                         f"(header=True)")
    rows += map(sep.join, zip(*(c.tolist() for c in columns)))
    text = "".join(row + "\n" for row in rows).encode("utf-8")
    opener = gzip.open if name.lower().endswith(".gz") else open
    with opener(path, "wb") as handle:
        handle.write(text)
