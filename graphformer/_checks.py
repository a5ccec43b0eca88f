"""Input checks shared by every floor (no graphformer imports here).

Each check raises an error that names the offending tensor and, where there is
one, the offending entry, so that a bad ``edge_index`` is found without a
debugger.
"""
from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor

_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def check_edge_index(edge_index: Tensor, name: str = "edge_index") -> None:
    """Check that ``edge_index`` is an integer tensor of shape ``[2, E]`` with no
    negative entry."""
    if not isinstance(edge_index, Tensor):
        raise TypeError(f"'{name}' must be a torch.Tensor, got {type(edge_index).__name__}")
    if edge_index.dtype not in _INT_DTYPES:
        raise TypeError(f"'{name}' must have an integer dtype (torch.long), got {edge_index.dtype}")
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"'{name}' must have shape [2, E], got {list(edge_index.shape)}")
    if edge_index.numel() > 0 and edge_index.min() < 0:
        row, col = (edge_index < 0).nonzero()[0].tolist()
        raise ValueError(
            f"'{name}' has a negative node index: {name}[{row}, {col}] = "
            f"{int(edge_index[row, col])}")


def check_node_range(edge_index: Tensor, num_src: int, num_dst: int,
                     name: str = "edge_index") -> None:
    """Check that sources (row 0) are below ``num_src`` and targets (row 1) below
    ``num_dst``; the error names the first offending edge."""
    for row, bound, what in ((0, num_src, "source"), (1, num_dst, "target")):
        idx = edge_index[row]
        if idx.numel() > 0 and int(idx.max()) >= bound:
            e = int((idx >= bound).nonzero()[0])
            raise IndexError(
                f"'{name}' is out of range: {name}[{row}, {e}] = {int(idx[e])} but "
                f"there are only {bound} {what} nodes (valid indices 0..{bound - 1})")


def check_nonneg_int(value: object, name: str, minimum: int = 0) -> int:
    """Check that ``value`` is a Python int (not bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"'{name}' must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"'{name}' must be >= {minimum}, got {value}")
    return value


def refuse_softmax_backend(where: str, kwargs: Dict[str, object]) -> None:
    """``softmax_backend`` was a constructor argument until graphformer 0.1:
    say what replaced it instead of an unknown-argument error."""
    if "softmax_backend" in kwargs:
        raise TypeError(
            f"{where}(softmax_backend=...) was removed: graphformer.nn.functional "
            "chooses the segment softmax itself (torch-scatter when it is installed, "
            "PyTorch's native scatter otherwise and under torch.compile). Drop the "
            "argument; to pick one explicitly call graphformer.nn.functional."
            "segment_softmax(..., backend='native' or 'scatter').")
    if where.endswith(".from_torch") and kwargs:
        raise TypeError(f"{where}() got unexpected keyword argument(s) {sorted(kwargs)}")
