"""Dense references and batch helpers shared by the tests."""
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Sequence

import torch
from torch import Tensor

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` imported as a module (registered in
    ``sys.modules``, which its dataclasses look up)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def ptr_of(sizes: Sequence[int]) -> Tensor:
    return torch.tensor([0, *sizes], dtype=torch.long).cumsum(0)


def edge_list(edge_index: Tensor) -> list:
    """``[(src, dst), ...]`` in the tensor's own order."""
    return [tuple(e) for e in edge_index.t().tolist()]


def assert_coalesced_equal(edge_index: Tensor, expected: set) -> None:
    """The edge set equals ``expected`` and is in the documented order: no
    duplicates, sorted by target then source."""
    assert edge_index.dtype == torch.long and edge_index.dim() == 2 and edge_index.size(0) == 2
    got = edge_list(edge_index)
    assert len(got) == len(set(got)), "duplicate edges"
    assert got == sorted(got, key=lambda e: (e[1], e[0])), "not sorted by (target, source)"
    assert set(got) == expected


def pairs(sizes: Sequence[int], pred) -> set:
    """The reference edge set ``{(ptr_b + j, ptr_b + i) : pred(i, j, n_b)}``."""
    out, start = set(), 0
    for n in sizes:
        for i in range(n):
            for j in range(n):
                if pred(i, j, n):
                    out.add((start + j, start + i))
        start += n
    return out


def interrupt_on_call(monkeypatch, module, name: str, call: int):
    """Make ``module.name`` raise KeyboardInterrupt on its ``call``-th call
    (1-based), as Ctrl-C would there; the other calls run the real function,
    which is returned (``monkeypatch.setattr(module, name, real)`` restores it)."""
    real, calls = getattr(module, name), {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, interrupted)
    return real
