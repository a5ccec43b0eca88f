"""A data set with a transform applied once, cached on disk under a key of
the transform, so other encodings never meet a stale cache."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Union

from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .molecules import KeyedDataset, describe_transform


class EncodedDataset(KeyedDataset):
    """``[transform(g) for g in source]``, computed once and cached.

    Used for data sets whose own cache cannot tell pre-transforms apart (PyG
    only warns when they differ): the cache lives in
    ``root/processed/<key>/`` where the key hashes the data set's name and
    length and the transform's description.
    """

    def __init__(self, source: Dataset, transform: Callable, root: Union[str, Path], name: str,
                 log: bool = True) -> None:
        self.source, self.encode, self.name = source, transform, name
        self._key = self.make_key("encoded", name, len(source),  # type: ignore[arg-type]
                                  describe_transform(transform))
        super().__init__(str(Path(root) / "encoded" / name), log=log)
        self.load(self.processed_paths[0])

    def process(self) -> None:
        items = tqdm(range(len(self.source)), desc=f"Encoding {self.name}",  # type: ignore[arg-type]
                     disable=not self.log, unit="graph")
        self.save([self.encode(self.source[i]) for i in items], self.processed_paths[0])
