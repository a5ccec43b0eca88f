"""Input checks shared by every floor (no graphformer imports here).

Each check raises an error that names the offending tensor and, where there is
one, the offending entry, so that a bad ``edge_index`` is found without a
debugger.
"""
from __future__ import annotations

import numbers
from typing import Dict, Optional

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
    if torch.compiler.is_compiling():   # the value check reads data: eager mode only
        return
    if edge_index.numel() > 0 and edge_index.min() < 0:
        row, col = (edge_index < 0).nonzero()[0].tolist()
        raise ValueError(
            f"'{name}' has a negative node index: {name}[{row}, {col}] = "
            f"{int(edge_index[row, col])}")


def check_node_range(edge_index: Tensor, num_src: int, num_dst: int,
                     name: str = "edge_index") -> None:
    """Check that sources (row 0) are below ``num_src`` and targets (row 1) below
    ``num_dst``; the error names the first offending edge."""
    if torch.compiler.is_compiling():   # the check reads data: eager mode only
        return
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


#: The largest node count: node ids, and a node id times a small factor
#: (edge types, heads: ``node · R + type``), stay within int64.
MAX_NODES = 2**62 - 1


def check_num_nodes(value: object, name: str = "num_nodes") -> int:
    """A node count: a whole number (a Python or NumPy integer, or a 0-dim
    integer tensor) in ``[0, MAX_NODES]``. A float (``5.7`` or ``5.0``), a bool
    or a negative count is refused by name rather than truncated."""
    if isinstance(value, Tensor):
        if value.dim() != 0 or value.dtype not in _INT_DTYPES:
            raise TypeError(f"'{name}' must be a whole number, got a {value.dtype} tensor of "
                            f"shape {list(value.shape)}")
        value = int(value)
    if isinstance(value, torch.SymInt):  # a size traced by torch.export: kept symbolic
        torch._check(value >= 0)
        torch._check(value <= MAX_NODES)
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"'{name}' must be a whole number, got "
                        f"{type(value).__name__} {value!r}")
    value = int(value)
    if torch.compiler.is_compiling():   # a count read off data is a symbol: assumed, not tested
        torch._check(value >= 0)
        torch._check(value <= MAX_NODES)
    elif not 0 <= value <= MAX_NODES:
        raise ValueError(f"'{name}' must be in [0, 2^62 - 1], got {value}")
    return value


def check_batch(batch: object, num_nodes: int, name: str = "batch") -> Tensor:
    """A graph index per node: an integer tensor [N] of non-negative entries
    (the error names the first negative one)."""
    if not isinstance(batch, Tensor):
        raise TypeError(f"'{name}' must be a torch.Tensor [N], got {type(batch).__name__}")
    if batch.dtype not in _INT_DTYPES:
        raise TypeError(f"'{name}' must be an integer tensor (the graph of every node), got "
                        f"{batch.dtype}")
    if batch.dim() != 1 or batch.numel() != num_nodes:
        raise ValueError(f"'{name}' must have shape [N] = [{num_nodes}], got {list(batch.shape)}")
    if batch.numel() > 0 and not torch.compiler.is_compiling() and int(batch.min()) < 0:
        i = int((batch < 0).nonzero()[0])
        raise ValueError(f"'{name}' has a negative graph index: {name}[{i}] = {int(batch[i])}")
    return batch


def check_node_features(x: object, name: str, channels: Optional[int],
                        dtype: Optional[torch.dtype]) -> None:
    """Node features for a layer of ``channels`` input channels and weights
    of ``dtype`` (either None: not checked, as for lazy layers): a
    floating-point ``[N, channels]`` tensor of the weights' dtype (any dtype
    under autocast, which casts itself)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"'{name}' must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"'{name}' must have shape [N, F] (one row per node), got "
                         f"{list(x.shape)}; a single node's features are x.unsqueeze(0)")
    if not x.is_floating_point():
        raise TypeError(f"'{name}' must be a floating-point tensor, got {x.dtype}")
    if channels is not None and channels > 0 and x.size(1) != channels:
        raise ValueError(f"'{name}' has {x.size(1)} features per node but the layer takes "
                         f"{channels} (shape [N, {channels}] expected, got {list(x.shape)})")
    if dtype is not None and x.dtype != dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(f"'{name}' is {x.dtype} but the layer's weights are {dtype}: convert "
                        f"one to the other (x.to({dtype}) or layer.to({x.dtype}))")


#: PyG ``MessagePassing`` options an attention layer takes, with the values
#: its equations fix: each target sums its incoming messages weighted by
#: their softmax, on every backend.
ATTENTION_MESSAGE_PASSING = {"aggr": ("add", "sum"), "flow": ("source_to_target",)}


def refuse_message_passing_options(where: str, kwargs: Dict[str, object]) -> None:
    """An attention layer passes no option to PyG's ``MessagePassing``: only
    the ``"propagate"`` backend would obey another aggregation or flow, so
    the result would change with the backend. Fixed values are accepted;
    anything else is an error naming the argument."""
    for name, value in kwargs.items():
        allowed = ATTENTION_MESSAGE_PASSING.get(name)
        if allowed is None:
            raise TypeError(f"{where}() got an unexpected keyword argument {name!r}")
        if value not in allowed:
            raise ValueError(
                f"{where}({name}={value!r}): the attention sums each target's incoming "
                f"messages weighted by their softmax, on every backend; {name} must be "
                f"{' or '.join(repr(a) for a in allowed)}"
                + (" (for the other direction pass edge_index.flip(0))" if name == "flow"
                   else ""))


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
