"""ZINC (the 12k subset and the full 250k set), loaded offline.

The dataset is PyG's :class:`torch_geometric.datasets.ZINC`; this module only
refuses to download: when raw files are missing it raises a
:class:`FileNotFoundError` that names them and where they come from, before
anything touches the network or creates a folder.

On-disk layout (PyG's ``download`` unzips ``molecules.zip``, renames its
``molecules`` folder to ``raw`` and fetches the three ``.index`` files into
it)::

    <root>/raw/{train,val,test}.pickle    list of molecule dicts (below)
    <root>/raw/{train,val,test}.index     subset indices: one line "i,j,k,...\\n"
    <root>/raw/{atom,bond}_dict.pickle    vocabularies (in the archive, not read)
    <root>/subset/processed/{train,val,test}.pt   (written, subset=True)
    <root>/full/processed/{train,val,test}.pt     (written, subset=False)

Each molecule dict holds ``atom_type`` (``LongTensor[N]``, indices into
:data:`ZINC_ATOM_TYPES`), ``bond_type`` (``LongTensor[N, N]`` adjacency whose
entries index :data:`ZINC_BOND_TYPES`, 0 = no bond; molecules are kekulized, so
there is no aromatic type), ``logP_SA_cycle_normalized`` (``Tensor[1]``, the
target) and ``num_atom``. PyG turns one into ``Data(x=[N, 1] atom types,
edge_index, edge_attr=[E] bond types, y=[1])`` with both directions of each
bond.
"""
from __future__ import annotations

import os
import os.path as osp
from typing import Callable, List, Optional, Tuple, Union

from torch_geometric.data import Data
from torch_geometric.datasets import ZINC

from ..errors import DataError

__all__ = ["ZINC_ATOM_TYPES", "ZINC_BOND_TYPES", "ZINC_SPLITS", "OfflineZINC",
           "load_zinc", "parse_zinc_atom_type"]

PathLike = Union[str, "os.PathLike[str]"]
Transform = Optional[Callable[[Data], Data]]

#: ZINC's atom vocabulary (``atom_dict.pickle`` of benchmarking-gnns), by
#: index: element, then ``H<n>`` for explicit hydrogens, then the charge sign.
ZINC_ATOM_TYPES: Tuple[str, ...] = (
    "C", "O", "N", "F", "C H1", "S", "Cl", "O -", "N H1 +", "Br", "N H3 +", "N H2 +",
    "N +", "N -", "S -", "I", "P", "O H1 +", "N H1 -", "O +", "S +", "P H1", "P H2",
    "C H2 -", "P +", "S H1 +", "C H1 -", "P H1 +",
)

#: ZINC's bond vocabulary (``bond_dict.pickle``), by index; 0 means no bond.
ZINC_BOND_TYPES: Tuple[str, ...] = ("NONE", "SINGLE", "DOUBLE", "TRIPLE")

#: The split names PyG's ZINC uses.
ZINC_SPLITS: Tuple[str, ...] = ("train", "val", "test")

_RAW_FILES: Tuple[str, ...] = tuple(
    [f"{s}.pickle" for s in ZINC_SPLITS] + [f"{s}.index" for s in ZINC_SPLITS])


def parse_zinc_atom_type(label: Union[int, str]) -> Tuple[str, int, int]:
    """``"N H1 +"`` (or its index 8) -> ``("N", 1, +1)``: element symbol,
    explicit hydrogens, formal charge."""
    if isinstance(label, int) and not isinstance(label, bool):
        if not 0 <= label < len(ZINC_ATOM_TYPES):
            raise ValueError(f"ZINC atom type index must be in 0..{len(ZINC_ATOM_TYPES) - 1}, "
                             f"got {label}")
        label = ZINC_ATOM_TYPES[label]
    if label not in ZINC_ATOM_TYPES:
        raise ValueError(f"unknown ZINC atom type {label!r}")
    symbol, hs, charge = label.split(" ")[0], 0, 0
    for part in label.split(" ")[1:]:
        if part.startswith("H"):
            hs = int(part[1:])
        elif part in ("+", "-"):
            charge = 1 if part == "+" else -1
    return symbol, hs, charge


def _zinc_missing_error(raw_dir: str, missing: List[str]) -> FileNotFoundError:
    listing = "\n".join(f"  {p}" for p in missing)
    index_urls = ", ".join(ZINC.split_url.format(s) for s in ZINC_SPLITS)
    return FileNotFoundError(
        f"ZINC: these files are missing and graphformer does not download:\n{listing}\n"
        f"They come from the official archive {ZINC.url}: unzip it and rename its "
        f"folder 'molecules' to '{raw_dir}' (it holds the .pickle files); the .index "
        f"files come from {index_urls} and go into '{raw_dir}' too.")


class OfflineZINC(ZINC):
    """PyG's :class:`~torch_geometric.datasets.ZINC` that never downloads.

    Args are PyG's; ``subset`` defaults to ``True`` (the 12k benchmark).

    Raises:
        FileNotFoundError: a file of ``<root>/raw`` is missing.
    """

    def __init__(self, root: PathLike, subset: bool = True, split: str = "train",
                 transform: Transform = None, pre_transform: Transform = None,
                 pre_filter: Optional[Callable[[Data], bool]] = None,
                 force_reload: bool = False) -> None:
        if split not in ZINC_SPLITS:
            raise ValueError(f"split must be one of {ZINC_SPLITS}, got {split!r}")
        root = osp.expanduser(os.fspath(root))
        raw_dir = osp.join(root, "raw")
        missing = [osp.join(raw_dir, f) for f in _RAW_FILES
                   if not osp.isfile(osp.join(raw_dir, f))]
        if missing:
            raise _zinc_missing_error(raw_dir, missing)
        if subset:
            for name in (f"{s}.index" for s in ZINC_SPLITS):
                path = osp.join(raw_dir, name)
                with open(path, "rb") as fh:
                    fh.seek(0, os.SEEK_END)
                    if fh.tell() > 0:
                        fh.seek(-1, os.SEEK_END)
                    if fh.read(1) != b"\n":
                        raise DataError(
                            f"{path} does not end with a line break: PyG's ZINC reader drops "
                            f"the file's last character, which would cut a digit off its last "
                            f"index; end the line as the downloaded file does")
        super().__init__(root, subset=subset, split=split, transform=transform,
                         pre_transform=pre_transform, pre_filter=pre_filter,
                         force_reload=force_reload)

    def download(self) -> None:
        """Never downloads: PyG calls this only when raw files are missing."""
        raise _zinc_missing_error(self.raw_dir, [p for p in self.raw_paths
                                                 if not osp.isfile(p)])


def load_zinc(root: PathLike, subset: bool = True, split: str = "train",
              transform: Transform = None, pre_transform: Transform = None) -> OfflineZINC:
    """Load one split of ZINC from local files.

    Args:
        root: the folder that holds ``raw/`` (see the module docstring).
        subset: ``True`` for the 12k subset (the graphs named by
            ``raw/<split>.index``, in that order), ``False`` for the full set.
        split: ``"train"``, ``"val"`` or ``"test"``.
        transform: applied to each graph on access.
        pre_transform: applied to each graph before it is saved.

    Returns:
        The split; the first load processes all three splits into
        ``<root>/{subset,full}/processed`` and later loads read them.

    Raises:
        ValueError: unknown split.
        FileNotFoundError: raw files are missing; nothing is downloaded.
    """
    return OfflineZINC(root, subset=subset, split=split, transform=transform,
                       pre_transform=pre_transform)
