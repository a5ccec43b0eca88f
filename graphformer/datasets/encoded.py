"""A data set with a transform applied once, cached on disk under a key of
the transform, so other encodings never meet a stale cache."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, List, Tuple, Union

from torch.utils.data import ConcatDataset, Dataset
from tqdm.auto import tqdm

from .molecules import KeyedDataset, describe_transform


class EncodedDataset(KeyedDataset):
    """``[transform(g) for g in source]``, computed once and cached.

    Used for data sets whose own cache cannot tell pre-transforms apart (PyG
    only warns when they differ): the cache lives in
    ``root/processed/<key>/`` where the key hashes the data set's name and
    length, the transform's description and the size and modification time
    of the source's own processed files (:func:`source_stamp`): a data set
    downloaded or processed again (OGB's advice when it updates one) is
    encoded anew, never served from the old graphs.
    """

    def __init__(self, source: Dataset, transform: Callable, root: Union[str, Path], name: str,
                 log: bool = True) -> None:
        self.source, self.encode, self.name = source, transform, name
        self._key = self.make_key("encoded", name, len(source),  # type: ignore[arg-type]
                                  describe_transform(transform), source_stamp(source))
        super().__init__(str(Path(root) / "encoded" / name), log=log)
        self.load(self.processed_paths[0])

    def process(self) -> None:
        items = tqdm(range(len(self.source)), desc=f"Encoding {self.name}",  # type: ignore[arg-type]
                     disable=not self.log, unit="graph")
        self.save([self.encode(self.source[i]) for i in items], self.processed_paths[0])


def source_stamp(source: Dataset) -> List[Tuple[str, int, int]]:
    """``(file name, size, modification time in ns)`` of every processed file
    of ``source`` (a PyG dataset, or a ``ConcatDataset`` of them): what
    changes when the data set is processed again, read without reading the
    files (OGB's largest are gigabytes)."""
    parts = source.datasets if isinstance(source, ConcatDataset) else [source]
    stamp = []
    for part in parts:
        for path in getattr(part, "processed_paths", []):
            if os.path.exists(path):
                st = os.stat(path)
                stamp.append((os.path.basename(path), st.st_size, st.st_mtime_ns))
    return stamp
