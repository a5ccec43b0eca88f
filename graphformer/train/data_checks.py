"""What training checks about its data before the first epoch, and the data
fingerprint stored in every checkpoint.

- every target is finite (NaN = missing is allowed; ``inf`` is not);
- every part of the split is non-empty and indexes the data set;
- the validation and test parts can be scored (a regression part has a
  target; a classification part has both classes in some task), and every
  regression task has a target in the training part;
- :func:`fingerprint` hashes each part's row indices, targets and SMILES, so
  that ``evaluate`` and ``--resume`` can tell when the data changed since the
  checkpoint was written (:func:`changed_parts`).

Each failure is a :class:`~graphformer.errors.DataError` naming the data set,
the part and what would be accepted.
"""
from __future__ import annotations

import hashlib
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import Tensor

from ..datasets import Benchmark
from ..errors import DataError

PARTS = ("train", "valid", "test")


def molecules(n: object) -> str:
    return f"{n} molecule{'' if n == 1 else 's'}"


def _stacked(bench: Benchmark, attr: str, width: int) -> Tensor:
    """Every graph's ``attr`` (one row of ``width`` values per graph) as
    ``[N, width]`` float, read from the collated in-memory store where there
    is one (no per-graph ``Data``)."""
    ds = bench.dataset
    n = len(ds)  # type: ignore[arg-type]
    value = None
    if getattr(ds, "_indices", None) is None and getattr(ds, "transform", None) is None:
        try:
            value = getattr(getattr(ds, "_data", None), attr, None)
        except Exception:
            value = None
    if not isinstance(value, Tensor) or value.numel() != n * width:
        value = torch.stack([ds[i][attr].reshape(-1) for i in range(n)]) if n else \
            torch.zeros(0, width)
    return value.reshape(n, width).float()


def all_targets(bench: Benchmark) -> Tensor:
    """Every graph's targets as ``[N, T]`` float (NaN = missing)."""
    return _stacked(bench, "y", bench.num_tasks)


def all_mol_features(bench: Benchmark) -> Optional[Tensor]:
    """Every graph's molecule features ``mol_x`` as ``[N, F]`` float (NaN =
    missing or not finite); None when the data set has none."""
    if not bench.feature_names:
        return None
    return _stacked(bench, "mol_x", len(bench.feature_names))


def check_targets(bench: Benchmark, y: Tensor) -> None:
    """No infinite target (the error names the graph and the task)."""
    bad = torch.isinf(y)
    if bad.any():
        i, t = bad.nonzero()[0].tolist()
        raise DataError(f"{bench.name}: graph {i} (0-based), task {t} has the target "
                        f"{float(y[i, t])}: targets must be finite (NaN marks a missing one)")


def check_split(bench: Benchmark, split: Dict[str, Tensor], kind: Optional[str]) -> None:
    """Every part is present, non-empty and inside the data set."""
    n = len(bench.dataset)  # type: ignore[arg-type]
    sizes = {p: len(split.get(p, ())) for p in PARTS}
    for part in PARTS:
        if part not in split:
            raise DataError(f"{bench.name}: the split has no {part!r} part")
        if sizes[part] == 0:
            raise DataError(
                f"{bench.name}: the {kind or 'default'} split leaves the {part} part empty "
                f"({molecules(n)}: train {sizes['train']}, valid {sizes['valid']}, test "
                f"{sizes['test']}); training needs at least one molecule in each part: use "
                f"more data, another split (--split random gives each part one molecule from "
                f"3 on), or a split column (--split column:NAME)")
        idx = split[part]
        if int(idx.min()) < 0 or int(idx.max()) >= n:
            raise DataError(f"{bench.name}: the {part} part of the split has index "
                            f"{int(idx.max()) if int(idx.max()) >= n else int(idx.min())}, "
                            f"outside the {n} molecules")


def check_scorable(bench: Benchmark, split: Dict[str, Tensor], y: Tensor,
                   task_names: Sequence[str] = ()) -> None:
    """The validation and test parts give a metric, and every regression task
    has a target in the training part (else its normalisation is undefined)."""
    names = list(task_names) if len(task_names) == bench.num_tasks else \
        [f"task {t}" for t in range(bench.num_tasks)]
    for part in ("valid", "test"):
        part_y = y[split[part]]
        present = ~torch.isnan(part_y)
        if bench.task == "regression":
            ok = bool(present.any())
            why = "every target there is missing"
        else:
            both = [bool(((part_y[:, t] == 1) & present[:, t]).any()
                         and ((part_y[:, t] == 0) & present[:, t]).any())
                    for t in range(part_y.size(1))]
            ok = any(both)
            why = f"no task has both classes (0 and 1) there, which {bench.metric} needs"
        if not ok:
            raise DataError(
                f"{bench.name}: the {part} part ({molecules(len(split[part]))}) has no valid "
                f"{bench.metric}: {why}; use another split or more data")
    if bench.task == "regression":
        train_y = y[split["train"]]
        empty = [names[t] for t in range(train_y.size(1))
                 if not bool((~torch.isnan(train_y[:, t])).any())]
        if empty:
            raise DataError(f"{bench.name}: {empty[0]} has no target in the train part "
                            f"({molecules(len(split['train']))}), so it cannot be learnt")


def fingerprint(bench: Benchmark, split: Dict[str, Tensor], y: Tensor,
                mol_x: Optional[Tensor] = None) -> Dict[str, Any]:
    """A hash of each part: its row indices, its targets, (where known) its
    SMILES, and its molecule features ``mol_x`` ``[N, F]`` when given; with
    the part sizes and the data set's size. Plain data, stored in
    checkpoints."""
    parts = {}
    for part in PARTS:
        idx = split[part].to(torch.long).contiguous()
        h = hashlib.sha256()
        h.update(idx.numpy().tobytes())
        part_y = y[idx].to(torch.float64)
        h.update(torch.nan_to_num(part_y, nan=-1.5e308).numpy().tobytes())
        h.update(torch.isnan(part_y).numpy().tobytes())
        if bench.smiles is not None:
            h.update("\n".join(bench.smiles[i] for i in idx.tolist()).encode())
        if mol_x is not None:
            part_x = mol_x[idx].to(torch.float64)
            h.update(torch.nan_to_num(part_x, nan=-1.5e308).numpy().tobytes())
        parts[part] = {"size": int(idx.numel()), "sha256": h.hexdigest()}
    return {"graphs": len(bench.dataset), "parts": parts}  # type: ignore[arg-type]


def changed_parts(saved: Optional[Dict[str, Any]], now: Dict[str, Any],
                  parts: Sequence[str] = PARTS) -> List[str]:
    """The parts among ``parts`` whose data differ between a checkpoint's
    fingerprint ``saved`` and ``now``, each as ``"test (113 molecules then,
    110 now)"``. A checkpoint without a fingerprint changes nothing."""
    if not saved or "parts" not in saved:
        return []
    out = []
    for part in parts:
        then, cur = saved["parts"].get(part), now["parts"][part]
        if then is None or then["sha256"] != cur["sha256"]:
            size = then["size"] if then else "?"
            out.append(f"{part} ({molecules(size)} then, {cur['size']} now)")
    return out
