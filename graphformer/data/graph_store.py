"""An on-disk graph (written by :func:`~graphformer.data.edge_list.convert_edge_list`)
opened memory-mapped, behind PyG's ``FeatureStore`` and ``GraphStore``.

Nothing is read into memory when a graph is opened: ``x``, ``y``, ``row``,
``colptr`` and ``perm`` are ``np.load(..., mmap_mode='r')`` arrays, so a graph
larger than RAM is served from the page cache. The feature store gathers only
the rows asked for; the graph store hands out the CSC as tensors over the
memory maps (no copy), which is what PyG's samplers read.

The layout of the folder is in :mod:`graphformer.data.edge_list.convert`.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data, EdgeAttr, FeatureStore, GraphStore, TensorAttr
from torch_geometric.data.graph_store import EdgeLayout

from ..errors import DataError

FORMAT = "graphformer-ondisk-graph"
VERSION = 1


def shared_tensor(array: np.ndarray) -> Tensor:
    """``torch.from_numpy`` on a (possibly read-only) array, sharing its memory;
    a read-only memory map must not be written through the tensor."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "The given NumPy array is not writable"
        return torch.from_numpy(array)


def _rows(array: np.ndarray, index) -> Tensor:
    """``array[index]`` as a tensor: a gather reads only those rows; ``None``
    is the whole array (a view of the memory map)."""
    if index is None:
        return shared_tensor(array)
    if isinstance(index, Tensor):
        index = index.cpu().numpy()
    return torch.from_numpy(np.ascontiguousarray(array[index]))


class OnDiskFeatureStore(FeatureStore):
    """``x`` and ``y`` (group ``None``) of an :class:`OnDiskGraph`, read-only."""

    def __init__(self, graph: "OnDiskGraph"):
        super().__init__()
        self._arrays = {name: a for name, a in (("x", graph.x_array), ("y", graph.y_array))
                        if a is not None}

    def _get_tensor(self, attr: TensorAttr) -> Optional[Tensor]:
        if attr.group_name is not None or attr.attr_name not in self._arrays:
            return None
        return _rows(self._arrays[attr.attr_name], attr.index)

    def _put_tensor(self, tensor, attr: TensorAttr) -> bool:
        raise NotImplementedError("an on-disk graph's feature store is read-only")

    def _remove_tensor(self, attr: TensorAttr) -> bool:
        raise NotImplementedError("an on-disk graph's feature store is read-only")

    def _get_tensor_size(self, attr: TensorAttr) -> Optional[Tuple[int, ...]]:
        if attr.group_name is not None or attr.attr_name not in self._arrays:
            return None
        return tuple(self._arrays[attr.attr_name].shape)

    def get_all_tensor_attrs(self) -> List[TensorAttr]:
        return [TensorAttr(group_name=None, attr_name=name) for name in self._arrays]


class OnDiskGraphStore(GraphStore):
    """The edges of an :class:`OnDiskGraph`: stored as CSC (edge type
    ``None``). ``layout='csc'`` gives ``(row, colptr)`` over the memory maps;
    ``'coo'`` and ``'csr'`` are computed (O(E) memory: for graphs that fit)."""

    def __init__(self, graph: "OnDiskGraph"):
        super().__init__()
        self._graph = graph

    def _edge_attr(self) -> EdgeAttr:
        n = self._graph.num_nodes
        return EdgeAttr(None, EdgeLayout.CSC, is_sorted=True, size=(n, n))

    def _get_edge_index(self, edge_attr: EdgeAttr) -> Optional[Tuple[Tensor, Tensor]]:
        if edge_attr.edge_type is not None:
            return None
        g = self._graph
        row, colptr = shared_tensor(g.row_array), shared_tensor(g.colptr_array)
        if edge_attr.layout == EdgeLayout.CSC:
            return row, colptr
        col = torch.repeat_interleave(torch.arange(g.num_nodes), colptr.diff())
        if edge_attr.layout == EdgeLayout.COO:
            return row.clone(), col
        order = torch.argsort(row, stable=True)  # CSR
        rowptr = torch.zeros(g.num_nodes + 1, dtype=torch.long)
        torch.cumsum(torch.bincount(row, minlength=g.num_nodes), 0, out=rowptr[1:])
        return rowptr, col[order]

    def _put_edge_index(self, edge_index, edge_attr: EdgeAttr) -> bool:
        raise NotImplementedError("an on-disk graph's graph store is read-only")

    def _remove_edge_index(self, edge_attr: EdgeAttr) -> bool:
        raise NotImplementedError("an on-disk graph's graph store is read-only")

    def get_all_edge_attrs(self) -> List[EdgeAttr]:
        return [self._edge_attr()]

    def csc(self, edge_types=None, store: bool = False):
        """``(row, colptr, perm)`` over the memory maps; ``perm[k]`` is the
        edge id (the column of ``read_edge_list``'s ``edge_index``) of CSC slot
        ``k``, so samplers report the file's edge ids."""
        return (shared_tensor(self._graph.row_array), shared_tensor(self._graph.colptr_array),
                shared_tensor(self._graph.perm_array))


class OnDiskGraph:
    """A converted graph folder, opened memory-mapped.

    Attributes: ``num_nodes``, ``num_edges``, ``num_features`` (``None``
    without features), ``directed``, ``node_ids`` (original ids in node order:
    a long tensor, or a list of str / int), ``label_names`` (or ``None``),
    ``label_type`` (``"class"``, ``"value"`` or ``None`` without labels),
    ``feature_store``, ``graph_store``; ``(feature_store, graph_store)`` is
    what PyG's loaders take as ``data``.
    """

    def __init__(self, path: Union[str, os.PathLike]):
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"{self.path}: no such folder (an on-disk graph is a "
                                    f"folder written by convert_edge_list)")
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise DataError(f"{self.path}: not a converted graph: no meta.json (an interrupted "
                            f"conversion leaves none; convert the edge list again)")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as err:
            raise DataError(f"{meta_path}: damaged meta.json ({err}); convert the edge list "
                            f"again") from err
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise DataError(f"{meta_path}: not a graphformer on-disk graph of version {VERSION} "
                            f"(format {meta.get('format')!r}, version {meta.get('version')!r})")
        try:
            self.num_nodes = int(meta["num_nodes"])
            self.num_edges = int(meta["num_edges"])
            self.directed = bool(meta["directed"])
            self.num_features = meta["num_features"]
            files = dict(meta["files"])
            id_type = meta["node_id_type"]
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"{meta_path}: damaged meta.json (field {err})") from err
        self.meta = meta
        arrays = {name: self._open(name, spec) for name, spec in files.items()}
        for name in ("colptr.npy", "row.npy", "perm.npy"):
            if name not in arrays:
                raise DataError(f"{meta_path}: damaged meta.json: {name} is not listed")
        self.colptr_array = arrays["colptr.npy"]
        self.row_array = arrays["row.npy"]
        self.perm_array = arrays["perm.npy"]
        self.x_array = arrays.get("x.npy")
        self.y_array = arrays.get("y.npy")
        if self.colptr_array.shape != (self.num_nodes + 1,) or \
                self.row_array.shape != (self.num_edges,):
            raise DataError(f"{self.path}: colptr.npy / row.npy do not match meta.json's "
                            f"{self.num_nodes} nodes and {self.num_edges} edges")
        #: "class" or "value" (regression targets), None without labels;
        #: graphs converted before value labels existed hold classes
        self.label_type = meta.get("label_type", "class" if self.y_array is not None else None)
        self.label_names = None
        if meta.get("label_names"):
            self.label_names = json.loads((self.path / "label_names.json").read_text("utf-8"))
        if id_type == "range":
            self.node_ids = torch.arange(self.num_nodes)
        elif id_type == "int64":
            self.node_ids = torch.from_numpy(np.load(self.path / "node_ids.npy"))
        else:
            # one id a line; an id may hold a lone "\r" (text), so no newline translation
            with open(self.path / "node_ids.txt", encoding="utf-8", newline="") as fh:
                text = fh.read().split("\n")[:-1]
            if len(text) != self.num_nodes:
                raise DataError(f"{self.path / 'node_ids.txt'} holds {len(text)} node ids for "
                                f"{self.num_nodes} nodes: the converted graph is damaged; "
                                f"convert the edge list again")
            self.node_ids = text if id_type == "str" else [int(t) for t in text]
        self.feature_store = OnDiskFeatureStore(self)
        self.graph_store = OnDiskGraphStore(self)

    def _open(self, name: str, spec: dict) -> np.ndarray:
        path = self.path / name
        if not path.is_file():
            raise DataError(f"{path}: missing (listed in meta.json); convert the edge list again")
        if path.stat().st_size != spec.get("bytes"):
            raise DataError(f"{path}: {path.stat().st_size} bytes, meta.json says "
                            f"{spec.get('bytes')}: the graph is damaged; convert it again")
        try:
            array = np.load(path, mmap_mode="r")
        except ValueError as err:  # numpy maps no empty array
            try:
                array = np.load(path)
            except ValueError:
                raise DataError(f"{path}: damaged .npy file ({err})") from err
        if list(array.shape) != list(spec.get("shape", [])) or str(array.dtype) != spec.get(
                "dtype"):
            raise DataError(f"{path}: shape {list(array.shape)} {array.dtype}, meta.json says "
                            f"{spec.get('shape')} {spec.get('dtype')}")
        return array

    def __repr__(self) -> str:
        return (f"OnDiskGraph({str(self.path)!r}, num_nodes={self.num_nodes}, "
                f"num_edges={self.num_edges}, num_features={self.num_features})")

    @property
    def data(self) -> Tuple[FeatureStore, GraphStore]:
        """``(feature_store, graph_store)``: the ``data`` PyG's loaders take."""
        return self.feature_store, self.graph_store

    def edge_index(self) -> Tensor:
        """long [2, E] in edge-id order (``read_edge_list``'s): O(E) memory."""
        row = torch.from_numpy(np.asarray(self.row_array, dtype=np.int64).copy())
        colptr = torch.from_numpy(np.asarray(self.colptr_array).copy())
        col = torch.repeat_interleave(torch.arange(self.num_nodes), colptr.diff())
        perm = torch.from_numpy(np.asarray(self.perm_array).copy())
        edge_index = torch.empty(2, self.num_edges, dtype=torch.long)
        edge_index[0, perm] = row
        edge_index[1, perm] = col
        return edge_index

    def to_data(self) -> Data:
        """The whole graph in memory, as ``read_edge_list`` gives it (same
        node numbering, edge order, ``x``, ``y``, ``label_names``)."""
        data = Data(num_nodes=self.num_nodes)
        data.node_ids = self.node_ids
        data.edge_index = self.edge_index()
        if self.x_array is not None:
            data.x = torch.from_numpy(np.array(self.x_array))
        if self.y_array is not None:
            data.y = torch.from_numpy(np.array(self.y_array))
        if self.label_names is not None:
            data.label_names = self.label_names
        return data


def load_graph(path: Union[str, os.PathLike]) -> OnDiskGraph:
    """Open a folder written by :func:`~graphformer.data.edge_list.convert_edge_list`."""
    return OnDiskGraph(path)
