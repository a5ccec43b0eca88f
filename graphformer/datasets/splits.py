"""Train / validation / test splits: random, scaffold, from a column, from files.

Every split is a dict ``{"train": LongTensor, "valid": LongTensor, "test":
LongTensor}`` of row indices, the shape of OGB's ``get_idx_split()``.
"""
from __future__ import annotations

import gzip
import random
from collections import defaultdict
from fractions import Fraction
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from rdkit import rdBase
from rdkit.Chem.Scaffolds import MurckoScaffold
from torch import Tensor

from ..data.molecule import parse_smiles
from ..errors import DataError

Split = Dict[str, Tensor]
Fractions = Tuple[float, float, float]
PARTS = ("train", "valid", "test")


def _check_fractions(fractions: Sequence[float]) -> Fractions:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"'fractions' must be three non-negative numbers summing to 1 "
                         f"(train, valid, test), got {tuple(fractions)}")
    return tuple(float(f) for f in fractions)  # type: ignore[return-value]


def _as_split(train, valid, test) -> Split:
    return {name: torch.as_tensor(sorted(idx), dtype=torch.long)
            for name, idx in zip(PARTS, (train, valid, test))}


def random_split(num: int, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> Split:
    """A seeded random split of ``num`` rows (sizes rounded down for valid and
    test, but at least one row each when their fraction is not 0 and there
    are 3 rows or more; train takes the rest)."""
    f = _check_fractions(fractions)
    perm = torch.randperm(num, generator=torch.Generator().manual_seed(seed)).tolist()
    # rounded down exactly: 0.29 * 100 is 28.999999999999996 in floats
    n_valid, n_test = (max(int(Fraction(repr(frac)) * num), 1 if frac > 0 and num >= 3 else 0)
                       for frac in f[1:])
    n_valid = min(n_valid, num)
    n_test = min(n_test, num - n_valid)
    n_train = num - n_valid - n_test
    return _as_split(perm[:n_train], perm[n_train:n_train + n_valid], perm[n_train + n_valid:])


def stratified_split(labels: Tensor, train_fraction: float, valid_fraction: float,
                     seed: int = 0) -> Split:
    """A seeded split of labelled items (nodes) that keeps every class's
    proportions: within each class the items are shuffled and the first
    ``round(train_fraction · n_c)`` (at least one) train, the next
    ``round(valid_fraction · n_c)`` validate, the rest test. Items with a
    negative label are unlabelled and in no part."""
    if not 0 < train_fraction < 1 or not 0 <= valid_fraction < 1 \
            or train_fraction + valid_fraction >= 1:
        raise ValueError(f"need a train fraction > 0, a validation fraction >= 0 and their sum "
                         f"< 1 (the rest is the test part), got {train_fraction} and "
                         f"{valid_fraction}")
    generator = torch.Generator().manual_seed(seed)
    parts: List[List[Tensor]] = [[], [], []]
    for c in torch.unique(labels[labels >= 0]).tolist():
        items = (labels == c).nonzero().view(-1)
        items = items[torch.randperm(items.numel(), generator=generator)]
        n = items.numel()
        n_train = min(n, max(1, round(train_fraction * n)))
        n_valid = min(n - n_train, round(valid_fraction * n))
        for part, chunk in zip(parts, (items[:n_train], items[n_train:n_train + n_valid],
                                       items[n_train + n_valid:])):
            part.append(chunk)
    return {name: torch.sort(torch.cat(part))[0] if part else torch.zeros(0, dtype=torch.long)
            for name, part in zip(PARTS, parts)}


def scaffold(smiles: str, include_chirality: bool = False) -> str:
    """The Bemis-Murcko scaffold SMILES of a molecule ('' for acyclic ones)."""
    mol = parse_smiles(smiles)
    with rdBase.BlockLogs():
        return MurckoScaffold.MurckoScaffoldSmiles(mol=mol, includeChirality=include_chirality)


def scaffold_split(smiles: Sequence[str], fractions: Sequence[float] = (0.8, 0.1, 0.1),
                   include_chirality: bool = False) -> Split:
    """Deterministic Bemis-Murcko scaffold split, by OGB's rule.

    Molecules are grouped by scaffold; groups are sorted largest first (equal
    sizes: larger first index first, exactly OGB's
    ``sorted(key=(len(group), group[0]), reverse=True)``) and go to train
    until it would exceed its share, then to valid, then to test. A
    scaffold never straddles two parts, so test molecules have scaffolds
    unseen in training.

    The scaffold is compared without its stereochemistry by default, as
    chemprop's ``scaffold_to_smiles`` does (and the splits of every
    graphformer run so far); OGB's ``ogbg-mol*`` splits (pretrain-gnns'
    ``generate_scaffold``) keep it: ``include_chirality=True`` gives exactly
    their parts. The two agree on the bundled ESOL and FreeSolv; on
    Lipophilicity 33 of 4,200 molecules sit in another part.
    """
    f = _check_fractions(fractions)
    groups = _scaffold_groups(smiles, range(len(smiles)), include_chirality)
    ordered = sorted(groups.values(), key=lambda g: (len(g), g[0]), reverse=True)
    n = len(smiles)
    train_cut, valid_cut = f[0] * n, (f[0] + f[1]) * n
    train, valid, test = [], [], []
    for group in ordered:
        if len(train) + len(group) > train_cut:
            if len(train) + len(valid) + len(group) > valid_cut:
                test += group
            else:
                valid += group
        else:
            train += group
    return _as_split(train, valid, test)


def _scaffold_groups(smiles: Sequence[str], rows: Sequence[int],
                     include_chirality: bool = False) -> Dict[str, list]:
    groups: Dict[str, list] = defaultdict(list)
    for idx in rows:
        try:
            groups[scaffold(smiles[idx], include_chirality)].append(idx)
        except ValueError as err:
            raise DataError(f"molecule {idx}: {err}") from None
    return groups


def scaffold_folds(smiles: Sequence[str], split: Split, num_folds: int = 5,
                   seed: int = 0) -> List[Split]:
    """Scaffold cross-validation inside a split's training and validation
    parts: ``num_folds`` splits that keep ``split["test"]`` as their test part
    and take turns validating on a fold of the pooled train and valid rows.

    The pooled rows are grouped by Bemis-Murcko scaffold, as
    :func:`scaffold_split` groups them. A group larger than half a fold
    (``len(pool) / (2 * num_folds)`` rows) trains in every fold, as the
    largest groups train in a scaffold split (chemprop's balanced scaffold
    split sets the same bound); the other groups are shuffled with ``seed``
    and each goes to the fold with the fewest rows so far. A scaffold never
    straddles a fold's training and validation parts, and every pooled row
    outside the large groups is validated in exactly one fold. The test part
    trains and validates in none: choosing settings on these folds never
    looks at it.
    """
    if num_folds < 2:
        raise ValueError(f"'num_folds' must be at least 2, got {num_folds}")
    pool = sorted(split["train"].tolist() + split["valid"].tolist())
    groups = sorted(_scaffold_groups(smiles, pool).values(), key=lambda g: (len(g), g[0]),
                    reverse=True)
    bound = len(pool) / (2 * num_folds)
    rest = [g for g in groups if len(g) <= bound]   # larger ones train in every fold
    random.Random(seed).shuffle(rest)
    folds: List[list] = [[] for _ in range(num_folds)]
    for group in rest:
        min(folds, key=len).extend(group)
    if any(not fold for fold in folds):
        raise DataError(f"{num_folds} folds need {num_folds} scaffold groups of at most half "
                        f"a fold ({bound:.1f} molecules) to validate on; the training and "
                        f"validation parts have {len(rest)}: use fewer folds")
    test = split["test"].tolist()
    out = []
    for valid in folds:
        held = set(valid)
        out.append(_as_split([i for i in pool if i not in held], valid, test))
    return out


_COLUMN_NAMES = {"train": "train", "training": "train", "val": "valid", "valid": "valid",
                 "validation": "valid", "test": "test"}


def column_split(values: Sequence[str], where: str = "split column",
                 rows: Optional[Sequence[int]] = None) -> Split:
    """A split given per row (``train`` / ``val`` or ``valid`` / ``test``,
    case-insensitive). An unknown value is a ``DataError`` naming its row:
    ``rows[k]`` for the k-th value (the CSV row numbers of
    :func:`~graphformer.datasets.molecules.read_csv`), 1-based ``k + 1``
    without ``rows``, as every message numbers rows."""
    parts: Dict[str, list] = {p: [] for p in PARTS}
    for k, value in enumerate(values):
        part = _COLUMN_NAMES.get(str(value).strip().lower())
        if part is None:
            row = rows[k] if rows is not None else k + 1
            raise DataError(f"{where}, row {row}: unknown split {value!r} "
                            f"(expected train, val/valid or test)")
        parts[part].append(k)
    return _as_split(parts["train"], parts["valid"], parts["test"])


def _read_indices(path: Union[str, Path]) -> list:
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    out = []
    with opener(path, "rt") as fh:
        for line_no, line in enumerate(fh, start=1):
            fields = [f.strip() for f in line.split(",") if f.strip()]
            if not fields:
                continue
            text = fields[0]
            if len(fields) > 1:     # e.g. ZINC's one-line .index files: not this layout
                raise DataError(f"{path}, line {line_no}: {len(fields)} comma-separated "
                                f"fields; an index file holds one row index per line")
            try:
                index = int(text)
            except ValueError:
                raise DataError(f"{path}, line {line_no}: {text!r} is not a row index") from None
            if index < 0:   # Python's -1 would be the last row, unchecked against the others
                raise DataError(f"{path}, line {line_no}: row index {index} is negative")
            out.append(index)
    return out


def index_split(train: Union[str, Path], valid: Union[str, Path], test: Union[str, Path],
                num: Optional[int] = None) -> Split:
    """A split from three index files (one row index per line; ``.gz`` allowed;
    OGB's ``split/<name>/{train,valid,test}.csv.gz`` are such files).

    The parts must be disjoint and, with ``num``, inside ``range(num)``.
    """
    parts = {name: _read_indices(p) for name, p in zip(PARTS, (train, valid, test))}
    seen: Dict[int, str] = {}
    for name, idx in parts.items():
        for i in idx:
            if num is not None and not 0 <= i < num:
                raise DataError(f"{name} index {i} is out of range for {num} rows")
            if i in seen:
                raise DataError(f"row {i} is in both {seen[i]} and {name}")
            seen[i] = name
    return _as_split(parts["train"], parts["valid"], parts["test"])
