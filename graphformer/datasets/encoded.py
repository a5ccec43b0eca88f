"""A data set with a transform applied once, cached on disk under a key of
the transform, so other encodings never meet a stale cache."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, List, Union

from torch.utils.data import Dataset
from torch_geometric.data import InMemoryDataset
from tqdm.auto import tqdm

from .molecules import describe_transform


class EncodedDataset(InMemoryDataset):
    """``[transform(g) for g in source]``, computed once and cached.

    Used for data sets whose own cache cannot tell pre-transforms apart (PyG
    only warns when they differ): the cache file lives in
    ``root/encoded/<name>-<key>/`` where the key hashes the transform's
    description and the source's length.
    """

    def __init__(self, source: Dataset, transform: Callable, root: Union[str, Path], name: str,
                 log: bool = True) -> None:
        self.source, self.encode, self.name = source, transform, name
        key = f"{name}|{len(source)}|{describe_transform(transform)}"  # type: ignore[arg-type]
        self._key = hashlib.sha256(key.encode()).hexdigest()[:16]
        super().__init__(str(root), log=log)
        self.load(self.processed_paths[0])

    @property
    def raw_file_names(self) -> List[str]:
        return []

    @property
    def processed_dir(self) -> str:
        return os.path.join(self.root, "encoded", f"{self.name}-{self._key}")

    @property
    def processed_file_names(self) -> List[str]:
        return ["data.pt"]

    def download(self) -> None:
        pass

    def process(self) -> None:
        items = tqdm(range(len(self.source)), desc=f"Encoding {self.name}",  # type: ignore[arg-type]
                     disable=not self.log, unit="graph")
        self.save([self.encode(self.source[i]) for i in items], self.processed_paths[0])
