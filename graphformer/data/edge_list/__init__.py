"""Edge-list files (CSV, TSV, SNAP-style whitespace) <-> PyG graphs.

:func:`read_edge_list` turns an edge-list file, and optionally a node-feature
file and a node-label file, into a :class:`torch_geometric.data.Data`;
:func:`write_edge_list` writes a graph back with its original node ids.

The package, one module per job:

* :mod:`~graphformer.data.edge_list.formats`: the file format rules (lines,
  fields, delimiters, comments, header detection, id and number syntax), the
  head of a file and the types a parse fills (``Layout``, ``Table``);
* :mod:`~graphformer.data.edge_list.fast`: the vectorised parse (pandas' C
  parser), used when it can vouch for the whole file;
* :mod:`~graphformer.data.edge_list.careful`: the line-by-line parse with the
  same rules and precise errors (file, line, value);
* :mod:`~graphformer.data.edge_list.read`: :func:`read_edge_list`, node
  feature and label files, graph assembly;
* :mod:`~graphformer.data.edge_list.write`: :func:`write_edge_list`;
* :mod:`~graphformer.data.edge_list.convert`: :func:`convert_edge_list`, the
  streaming conversion into an on-disk graph (opened by :func:`load_graph`).
"""
from ..graph_store import OnDiskGraph, load_graph
from .convert import convert_edge_list
from .formats import DELIMITER_NAMES, WHITESPACE, Column, PathLike, delimiter_from_name
from .read import read_edge_list
from .write import write_edge_list

__all__ = ["read_edge_list", "write_edge_list", "delimiter_from_name", "DELIMITER_NAMES",
           "WHITESPACE", "Column", "PathLike", "convert_edge_list", "load_graph", "OnDiskGraph"]
