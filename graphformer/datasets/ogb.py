"""OGB molecular benchmarks (``ogbg-mol*`` and PCQM4Mv2), loaded offline.

The datasets are ogb's own :class:`~ogb.graphproppred.PygGraphPropPredDataset`
and :class:`~ogb.lsc.PygPCQM4Mv2Dataset`: ogb reads the raw files, builds the
graphs (``x``, ``edge_index``, ``edge_attr``, ``y``) and owns the official
splits. The subclasses here change only what ogb 1.3.6 gets wrong for an
offline user on torch >= 2.6:

* **Loading** (``torch.load`` now defaults to ``weights_only=True``). ogb saves
  its processed file as a pickled ``(Data, slices)`` pair, which
  ``torch.load(path)`` refuses; ``get_idx_split`` may ``torch.load`` a
  ``split_dict.pt`` that holds numpy arrays, refused the same way. Both files
  are read here with ``weights_only=True`` inside a
  :func:`torch.serialization.safe_globals` block that allows only the few
  classes those files are made of (PyG's storage classes, numpy's array
  reconstruction). Nothing is loaded with ``weights_only=False`` and torch is
  not patched: the allowance ends with the block.
* **No prompts.** ogb calls ``input("Will you update the dataset now?")`` when
  the dataset folder has no ``RELEASE_v<version>.txt`` (the marker of the
  current release). Here that never reads stdin: the local files are kept and
  used, and a :class:`UserWarning` says so and how to update by hand.
* **No downloads.** When raw files are missing, ogb downloads them (and on
  refusal calls ``exit()``). Here a :class:`FileNotFoundError` is raised
  before anything touches the network or creates a folder; it names every
  missing file by full path and the official archive it comes from.

Processing itself (ogb's ``process``) is unchanged, so the graphs are exactly
ogb's: for molecules, ``ogb.utils.smiles2graph`` features.
"""
from __future__ import annotations

import os
import os.path as osp
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch
from ogb.graphproppred import Evaluator, PygGraphPropPredDataset
from ogb.lsc.pcqm4mv2 import PCQM4Mv2Evaluator
from ogb.lsc.pcqm4mv2_pyg import PygPCQM4Mv2Dataset
from ogb.utils import smiles2graph as ogb_smiles2graph
from ogb.utils.torch_util import replace_numpy_with_torchtensor
from torch import Tensor
from torch_geometric.data import Data, InMemoryDataset
from torch_geometric.data.data import DataEdgeAttr, DataTensorAttr
from torch_geometric.data.storage import GlobalStorage

__all__ = [
    "PCQM4MV2",
    "PCQM4MV2_URL",
    "OGBMolDataset",
    "PCQM4Mv2Dataset",
    "ogb_mol_names",
    "canonical_name",
    "load_ogb",
    "evaluate",
]

PathLike = Union[str, "os.PathLike[str]"]
Transform = Optional[Callable[[Data], Data]]
ArrayLike = Union[Tensor, np.ndarray, Sequence[float], Sequence[Sequence[float]]]

#: The canonical name of the PCQM4Mv2 dataset in this module.
PCQM4MV2 = "pcqm4mv2"

#: The archive ogb 1.3.6 downloads PCQM4Mv2 from (``PygPCQM4Mv2Dataset.url``).
PCQM4MV2_URL = "https://dgl-data.s3-accelerate.amazonaws.com/dataset/OGB-LSC/pcqm4m-v2.zip"

_PCQM4MV2_ALIASES = frozenset({"pcqm4mv2", "pcqm4m-v2", "pcqm4m_v2", "ogbg-pcqm4mv2",
                               "ogb-lsc-pcqm4mv2"})

# The classes a pickled PyG ``Data`` object (ogb's processed file) is made of,
# beyond those PyG itself allows (``Data``, ``dict``, ``list``, ...).
_PYG_DATA_GLOBALS: List[Any] = [GlobalStorage, DataEdgeAttr, DataTensorAttr]


def _numpy_array_globals() -> List[Any]:
    """What a pickled integer/float numpy array is made of, under the names
    numpy 2 (``numpy._core``) and numpy 1 (``numpy.core``, which is what
    ogb's published ``split_dict.pt`` files were written with) give it."""
    core = getattr(np, "_core", None) or np.core  # numpy 1 has no ``_core``
    reconstruct = core.multiarray._reconstruct
    dtypes = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
              np.uint32, np.uint64, np.float16, np.float32, np.float64)
    return [np.ndarray, np.dtype, reconstruct,
            (reconstruct, "numpy.core.multiarray._reconstruct"),
            (reconstruct, "numpy._core.multiarray._reconstruct"),
            *{type(np.dtype(t)) for t in dtypes}]


def _load_restricted(path: str, allowed: Sequence[Any]) -> Any:
    """``torch.load(path, weights_only=True)`` that also accepts the classes in
    ``allowed``, for the duration of this call only."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is None:  # pragma: no cover - torch 2.4: no scoped allowlist,
        # and torch.load still defaults to weights_only=False, as ogb expects.
        return torch.load(path)
    with safe_globals(list(allowed)):
        return torch.load(path, weights_only=True, map_location="cpu")


def _load_processed_into(dataset: InMemoryDataset, path: str) -> None:
    """Read a processed file, in ogb's format (a pickled ``(Data, slices)``)
    or PyG's (``(dict, slices, cls)``), into ``dataset``."""
    out = _load_restricted(path, _PYG_DATA_GLOBALS)
    if not isinstance(out, tuple) or len(out) not in (2, 3):
        raise RuntimeError(f"{path} is not a processed dataset file "
                           f"(got {type(out).__name__}); delete it to re-process")
    data, slices = out[0], out[1]
    if isinstance(data, dict):
        data_cls = out[2] if len(out) == 3 else Data
        data = data_cls.from_dict(data)
    dataset.data = data  # the public setter; it also clears PyG's item cache
    dataset.slices = slices


def _load_split_dict(path: str) -> Dict[str, Tensor]:
    """A ``split_dict.pt`` (tensors or numpy arrays) as ``{split: LongTensor}``."""
    split = replace_numpy_with_torchtensor(_load_restricted(path, _numpy_array_globals()))
    if not isinstance(split, dict):
        raise RuntimeError(f"{path} should hold a dict of index arrays, "
                           f"got {type(split).__name__}")
    return {key: torch.as_tensor(value).long() for key, value in split.items()}


def _warn_if_not_release(folder: str, version: Any, what: str, url: str) -> None:
    """ogb asks on stdin whether to delete and re-download a dataset folder
    that lacks ``RELEASE_v<version>.txt``. Never prompt: keep the local files
    and say so."""
    marker = osp.join(folder, f"RELEASE_v{version}.txt")
    if osp.isdir(folder) and not osp.exists(marker):
        warnings.warn(
            f"{what}: {marker} is missing, so '{folder}' may hold an older release "
            f"of the dataset. ogb would ask on stdin whether to delete it and download "
            f"the current one; graphformer never prompts and keeps using the local "
            f"files. To update, delete '{folder}' and unpack {url} in its place.",
            UserWarning, stacklevel=3)


def _missing_files_error(what: str, missing: Sequence[str], url: str,
                         how: str) -> FileNotFoundError:
    listing = "\n".join(f"  {p}" for p in missing)
    return FileNotFoundError(
        f"{what}: these files are missing and graphformer does not download:\n"
        f"{listing}\nThey come from the official archive {url}; {how}")


def _master() -> pd.DataFrame:
    """ogb's table of graph-property datasets (``graphproppred/master.csv``)."""
    import ogb.graphproppred as gpp
    path = osp.join(osp.dirname(gpp.__file__), "master.csv")
    return pd.read_csv(path, index_col=0, keep_default_na=False)


def ogb_mol_names() -> List[str]:
    """Every ``ogbg-mol*`` dataset ogb knows (``ogbg-molhiv``, ``ogbg-molesol``, ...)."""
    return [name for name in _master().columns if name.startswith("ogbg-mol")]


def canonical_name(name: str) -> str:
    """``"ogbg-molhiv"``, ``"molhiv"``, ``"OGBG-MOLHIV"`` -> ``"ogbg-molhiv"``;
    ``"PCQM4Mv2"``, ``"pcqm4m-v2"`` -> ``"pcqm4mv2"``. Unknown names raise a
    ``ValueError`` that lists the known ones."""
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a str, got {type(name).__name__}")
    key = name.strip().lower()
    if key in _PCQM4MV2_ALIASES:
        return PCQM4MV2
    if not key.startswith("ogbg-"):
        key = "ogbg-" + key
    names = ogb_mol_names()
    if key in names:
        return key
    raise ValueError(f"unknown OGB molecular dataset {name!r}; known: "
                     f"{', '.join(names + [PCQM4MV2])}")


class OGBMolDataset(PygGraphPropPredDataset):
    """ogb's ``PygGraphPropPredDataset`` for an ``ogbg-mol*`` dataset, offline
    and loadable under torch >= 2.6 (see the module docstring).

    On-disk layout (that of ogb's download, unpacked into ``root``)::

        <root>/<ogbg_molxxx>/RELEASE_v1.txt
        <root>/<ogbg_molxxx>/raw/{edge,node-feat,edge-feat,num-node-list,
                                  num-edge-list,graph-label}.csv.gz
        <root>/<ogbg_molxxx>/split/scaffold/{train,valid,test}.csv.gz
        <root>/<ogbg_molxxx>/mapping/mol.csv.gz       (not read)
        <root>/<ogbg_molxxx>/processed/geometric_data_processed.pt  (written)

    where ``<ogbg_molxxx>`` is the name with ``-`` replaced by ``_``
    (``ogbg_molhiv``), or that plus ``_pyg`` when such a folder exists (ogb's
    rule for older downloads).

    Args:
        name: an ``ogbg-mol*`` name (see :func:`ogb_mol_names`).
        root: the folder that holds the dataset folder.
        transform: applied to each graph on access.
        pre_transform: applied to each graph before it is saved.

    Raises:
        ValueError: ``name`` is not an ``ogbg-mol*`` dataset.
        FileNotFoundError: raw files are missing (nothing is downloaded).
    """

    def __init__(self, name: str, root: PathLike, transform: Transform = None,
                 pre_transform: Transform = None) -> None:
        name = canonical_name(name)
        if name == PCQM4MV2:
            raise ValueError("PCQM4Mv2 is not an ogbg-mol* dataset; use "
                             "PCQM4Mv2Dataset or load_ogb('pcqm4mv2', root)")
        root = osp.expanduser(os.fspath(root))
        # The attributes ogb's __init__ sets, set the same way; its __init__ is
        # skipped because it prompts on stdin and loads with a bare torch.load.
        self.name = name
        self.dir_name = "_".join(name.split("-"))
        if osp.exists(osp.join(root, self.dir_name + "_pyg")):
            self.dir_name = self.dir_name + "_pyg"
        self.original_root = root
        self.root = osp.join(root, self.dir_name)
        self.meta_info = _master()[name]
        self.download_name = self.meta_info["download_name"]
        self.num_tasks = int(self.meta_info["num tasks"])
        self.eval_metric = self.meta_info["eval metric"]
        self.task_type = self.meta_info["task type"]
        self.__num_classes__ = int(self.meta_info["num classes"])
        self.binary = self.meta_info["binary"] == "True"

        _warn_if_not_release(self.root, self.meta_info["version"], name,
                             self.meta_info["url"])
        missing = [p for p in self._raw_paths() if not osp.isfile(p)]
        if missing:
            raise self._missing_error(missing)

        InMemoryDataset.__init__(self, self.root, transform, pre_transform)
        _load_processed_into(self, self.processed_paths[0])

    def _raw_paths(self) -> List[str]:
        return [osp.join(self.root, "raw", f) for f in self.raw_file_names]

    def _missing_error(self, missing: Sequence[str]) -> FileNotFoundError:
        return _missing_files_error(
            self.name, missing, self.meta_info["url"],
            f"unzip it and move the folder '{self.download_name}' it contains to "
            f"'{self.root}' (it holds raw/, split/, mapping/ and RELEASE_v"
            f"{self.meta_info['version']}.txt).")

    @property
    def raw_file_names(self) -> List[str]:
        """Every raw file ogb's ``process`` reads (ogb lists only the graph
        files, so a missing label file would fail late, inside pandas)."""
        if self.binary:
            return ["data.npz", "graph-label.npz"]
        names = ["edge", "num-node-list", "num-edge-list"]
        if self.meta_info["has_node_attr"] == "True":
            names.append("node-feat")
        if self.meta_info["has_edge_attr"] == "True":
            names.append("edge-feat")
        names.append("graph-label")
        return [f"{n}.csv.gz" for n in names]

    def download(self) -> None:
        """Never downloads: PyG calls this only when raw files are missing."""
        raise self._missing_error([p for p in self._raw_paths() if not osp.isfile(p)])

    def get_idx_split(self, split_type: Optional[str] = None) -> Dict[str, Tensor]:
        """The official split: ``{"train", "valid", "test"} -> LongTensor`` of
        graph indices (the scaffold split for ``ogbg-mol*``), read from
        ``split/<split_type>/`` as ogb does."""
        if split_type is None:
            split_type = self.meta_info["split"]
        path = osp.join(self.root, "split", split_type)
        pt = osp.join(path, "split_dict.pt")
        if osp.isfile(pt):
            return _load_split_dict(pt)
        files = [osp.join(path, f"{s}.csv.gz") for s in ("train", "valid", "test")]
        missing = [p for p in files if not osp.isfile(p)]
        if missing:
            raise self._missing_error(missing)
        return super().get_idx_split(split_type)


class PCQM4Mv2Dataset(PygPCQM4Mv2Dataset):
    """ogb's ``PygPCQM4Mv2Dataset``, offline and loadable under torch >= 2.6
    (see the module docstring).

    On-disk layout (that of ``pcqm4m-v2.zip``, unpacked into ``root``)::

        <root>/pcqm4m-v2/RELEASE_v1.txt
        <root>/pcqm4m-v2/raw/data.csv.gz     (columns idx, smiles, homolumogap)
        <root>/pcqm4m-v2/split_dict.pt       (train, valid, test-dev, test-challenge)
        <root>/pcqm4m-v2/processed/geometric_data_processed.pt  (written)

    ogb's ``process`` checks that train/valid graphs have a target and that
    test-dev/test-challenge graphs have ``NaN``; each graph's ``y`` has
    shape ``[1]``.

    Args:
        root: the folder that holds ``pcqm4m-v2``.
        smiles2graph: SMILES -> graph dict, as ogb's (the default).
        transform: applied to each graph on access.
        pre_transform: applied to each graph before it is saved.

    Raises:
        FileNotFoundError: ``raw/data.csv.gz`` or ``split_dict.pt`` is missing.
    """

    def __init__(self, root: PathLike,
                 smiles2graph: Callable[[str], Dict[str, Any]] = ogb_smiles2graph,
                 transform: Transform = None, pre_transform: Transform = None) -> None:
        root = osp.expanduser(os.fspath(root))
        # The attributes ogb's __init__ sets; its __init__ is skipped (see
        # OGBMolDataset).
        self.original_root = root
        self.smiles2graph = smiles2graph
        self.folder = osp.join(root, "pcqm4m-v2")
        self.version = 1
        self.url = PCQM4MV2_URL

        _warn_if_not_release(self.folder, self.version, "PCQM4Mv2", self.url)
        missing = [p for p in self._required_paths() if not osp.isfile(p)]
        if missing:
            raise self._missing_error(missing)

        InMemoryDataset.__init__(self, self.folder, transform, pre_transform)
        _load_processed_into(self, self.processed_paths[0])

    def _required_paths(self) -> List[str]:
        return [osp.join(self.folder, "raw", "data.csv.gz"),
                osp.join(self.folder, "split_dict.pt")]

    def _missing_error(self, missing: Sequence[str]) -> FileNotFoundError:
        return _missing_files_error(
            "PCQM4Mv2", missing, self.url,
            f"unzip it into '{self.original_root}' (it unpacks to the folder "
            f"'pcqm4m-v2' with raw/data.csv.gz, split_dict.pt and RELEASE_v1.txt).")

    def download(self) -> None:
        """Never downloads: PyG calls this only when raw files are missing."""
        raise self._missing_error([p for p in self._required_paths() if not osp.isfile(p)])

    def get_idx_split(self) -> Dict[str, Tensor]:
        """The official split: ``{"train", "valid", "test-dev",
        "test-challenge"} -> LongTensor`` of graph indices."""
        path = osp.join(self.folder, "split_dict.pt")
        if not osp.isfile(path):
            raise self._missing_error([path])
        return _load_split_dict(path)


def load_ogb(name: str, root: PathLike, transform: Transform = None,
             pre_transform: Transform = None) -> Union[OGBMolDataset, PCQM4Mv2Dataset]:
    """Load an OGB molecular benchmark from local files.

    Args:
        name: ``"ogbg-molhiv"``, ``"ogbg-molpcba"``, ``"ogbg-molesol"``, ...
            (any ``ogbg-mol*`` name; the ``ogbg-`` prefix may be left out) or
            ``"pcqm4mv2"``.
        root: the folder that holds the dataset folder (``ogbg_molhiv``,
            ``pcqm4m-v2``); see :class:`OGBMolDataset` and
            :class:`PCQM4Mv2Dataset` for the layouts.
        transform: applied to each graph on access.
        pre_transform: applied to each graph before it is saved.

    Returns:
        The dataset; ``dataset.get_idx_split()`` gives the official split. The
        first load processes the raw files into ``processed/``; later loads
        read that file.

    Raises:
        ValueError: unknown name.
        FileNotFoundError: raw files are missing; the message lists them by
            full path with the archive they come from. Nothing is downloaded.
    """
    key = canonical_name(name)
    if key == PCQM4MV2:
        return PCQM4Mv2Dataset(root, transform=transform, pre_transform=pre_transform)
    return OGBMolDataset(key, root, transform=transform, pre_transform=pre_transform)


def _as_numpy(values: ArrayLike, what: str) -> np.ndarray:
    if isinstance(values, Tensor):
        return values.detach().cpu().numpy()
    out = np.asarray(values)
    if out.dtype == object:
        raise TypeError(f"{what} must be numeric, got an object array")
    return out


def evaluate(name: str, y_true: ArrayLike, y_pred: ArrayLike) -> Dict[str, float]:
    """The official metric of ``name``, computed by ogb's evaluator.

    ``ogbg-mol*`` sets use :class:`ogb.graphproppred.Evaluator` (ROC-AUC, AP or
    RMSE; ``NaN`` targets are ignored); inputs are ``[num_graphs, num_tasks]``,
    a 1-D input counts as one task. PCQM4Mv2 uses ogb's
    ``PCQM4Mv2Evaluator`` (MAE); inputs of shape ``[N]`` or ``[N, 1]``.

    Returns:
        ``{"rmse": 0.93}`` etc., with plain Python floats (JSON-serialisable).
    """
    key = canonical_name(name)
    true = _as_numpy(y_true, "y_true")
    pred = _as_numpy(y_pred, "y_pred")
    if key == PCQM4MV2:
        if true.size != pred.size:
            raise ValueError(f"y_true has {true.size} values but y_pred has {pred.size}")
        result = PCQM4Mv2Evaluator().eval({
            "y_true": true.reshape(-1).astype(np.float64),
            "y_pred": pred.reshape(-1).astype(np.float64)})
    else:
        if true.ndim == 1:
            true = true.reshape(-1, 1)
        if pred.ndim == 1:
            pred = pred.reshape(-1, 1)
        result = Evaluator(key).eval({"y_true": true, "y_pred": pred})
    return {metric: float(value) for metric, value in result.items()}
