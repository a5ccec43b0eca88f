r"""Graphformer's C kernels for the CPU: built on first use, loaded with ctypes.

``cpu_kernels.c`` (beside this module) holds the fused attention of
:mod:`graphformer.nn.fused_cpu`, the hashed dropout of
:func:`graphformer.nn.functional.dropout` (alone and fused with GELU,
:func:`~graphformer.nn.functional.gelu_dropout`) and the counting sort of
:meth:`graphformer.nn.csr.EdgeCSR.transpose`. The first use compiles it with the
system C compiler (``$CC``, else ``cc`` — the compiler ``pip install
torch-scatter`` needs; well under a second, :data:`CFLAGS`) into a cache
directory (``$GRAPHFORMER_KERNEL_CACHE``, else ``$XDG_CACHE_HOME`` or
``~/.cache``, then ``graphformer/kernels``), keyed by the source, the flags,
the compiler and the CPU; later processes load the cached library. Concurrent
first uses build into temporary files and rename them into place, so they
agree. The kernels run on OpenMP threads: the process's libgomp is PyTorch's
own (the same soname), so ``torch.set_num_threads`` sets their number.

Where no compiler works, :func:`kernels_available` is False and
:func:`kernels_unavailable` says why; the callers then use PyTorch operations.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = ["kernels_available", "kernels_unavailable", "kernel", "pointer", "draw_seed",
           "dropout_threshold", "CFLAGS"]

SOURCE = Path(__file__).resolve().with_name("cpu_kernels.c")   # absolute: it includes itself
#: Compiler flags. ``-march=native``: the library is built on, and for, the
#: machine that runs it (the CPU is part of the cache key). Reassociation
#: lets the channel loops' sums vectorise; no flag assumes finite values
#: (scores may be -inf), and none changes the process's floating-point mode
#: (as ``-ffast-math`` can when it links ``crtfastmath.o``).
CFLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fno-signed-zeros",
          "-fassociative-math", "-fopenmp", "-fPIC", "-shared", "-std=gnu11")


def _cpu_id() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_dir() -> Path:
    root = os.environ.get("GRAPHFORMER_KERNEL_CACHE")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "graphformer" / "kernels"


_P, _I, _D, _U = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_uint64
_SIGNATURES = {
    "forward": [_I] * 5 + [_P] * 10 + [_I, _D, _U, _U, _D, _P, _P, _P],
    "backward_targets": [_I] * 5 + [_P] * 9 + [_D, _P, _D] + [_P] * 5,
    "backward_sources": [_I] * 4 + [_P] * 10,
    "multiplier": [_I, _I, _U, _U, _D, _P],
    "dropout": [_I, _I, _P, _P, _P, _U, _U, _D],
}
#: Kernels on indices (int64), one version for every dtype; they return a
#: status their caller reads.
_INDEX_SIGNATURES = {
    "group_by_source": [_I, _I, _P, _P, _P],
}


#: Kernels that return a status: nonzero when per-thread scratch memory could
#: not be allocated.
_STATUS = ("forward", "backward_targets", "backward_sources")


def _raise_on_failure(result, fn, args):
    if result != 0:
        raise MemoryError(f"{fn.__name__}: out of memory for the per-thread scratch")
    return result


@functools.lru_cache(maxsize=None)
def _library() -> Tuple[Optional[ctypes.CDLL], str]:
    """(the loaded kernels, "") or (None, why not); built once per process."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        return None, "no C compiler found (set CC or install gcc)"
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                                 timeout=60).stdout.splitlines()[:1]
        source = SOURCE.read_bytes()
        key = hashlib.sha256(b"\0".join([source, " ".join(CFLAGS).encode(),
                                          str(version).encode(), _cpu_id().encode()]))
        target = _cache_dir() / f"cpu_kernels-{key.hexdigest()[:16]}.so"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                built = Path(tmp) / target.name
                proc = subprocess.run([compiler, *CFLAGS, str(SOURCE), "-o", str(built), "-lm"],
                                      capture_output=True, text=True, timeout=600)
                if proc.returncode != 0:
                    return None, (f"compiling {SOURCE.name} with {compiler} failed:\n"
                                  f"{proc.stderr.strip()[-2000:]}")
                os.replace(built, target)      # atomic: concurrent builders agree
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as err:
        return None, f"building the CPU kernels failed: {err}"
    functions = [(f"{name}_{suffix}", name, args) for name, args in _SIGNATURES.items()
                 for suffix in ("f32", "f64")]
    functions += [(name, name, args) for name, args in _INDEX_SIGNATURES.items()]
    for symbol, name, args in functions:
        fn = getattr(lib, symbol)
        fn.argtypes = args
        fn.restype = ctypes.c_int if name in _STATUS or name in _INDEX_SIGNATURES else None
        if name in _STATUS:
            fn.errcheck = _raise_on_failure
    return lib, ""


def kernels_available() -> bool:
    """True when the kernels are built and loaded (the first call builds
    them, or loads them from the cache)."""
    return _library()[0] is not None


def kernels_unavailable() -> str:
    """Why the kernels cannot run here ("" when they can)."""
    return _library()[1]


def draw_seed() -> int:
    """A seed for the kernels' hashed random decisions, from PyTorch's default
    generator (so ``torch.manual_seed`` makes runs reproducible)."""
    return int(torch.randint(0, 2**62, (1,)).item())


def dropout_threshold(p: float, bits: int) -> Tuple[int, float]:
    """``(threshold, keep_mult)`` of drop probability ``p`` for the kernels'
    hashed decisions of ``bits`` bits: an entry is dropped when its bits are
    below ``threshold = round(p 2^bits)``, and a kept one is multiplied by
    ``keep_mult = 2^bits / (2^bits - threshold)``; ``(2^bits, 0.0)`` when
    every entry is dropped."""
    levels = 1 << bits
    threshold = min(int(round(p * levels)), levels)
    if threshold >= levels:
        return levels, 0.0
    return threshold, levels / (levels - threshold)


def kernel(name: str, dtype: Optional[torch.dtype] = None):
    """The kernel ``name`` for ``dtype`` (float32 or float64; None for the
    kernels on indices), as a ctypes function taking the C signature's
    arguments (pointers as integers)."""
    lib, why = _library()
    if lib is None:
        raise RuntimeError(f"the CPU kernels are unavailable: {why}")
    if dtype is None:
        return getattr(lib, name)
    return getattr(lib, f"{name}_{'f32' if dtype == torch.float32 else 'f64'}")


def pointer(t: Optional[Tensor], dtype: Optional[torch.dtype] = None,
            name: str = "tensor") -> Optional[int]:
    """The data pointer of ``t`` for a kernel, or None (NULL) for None.

    The kernels read their arrays through raw pointers, densely and in
    row-major order: every array handed to them goes through here, which
    refuses (naming ``name``) a tensor that is not on the CPU, not of
    ``dtype`` (when given) or not contiguous, instead of letting a kernel read
    a strided view's memory as if it were dense."""
    if t is None:
        return None
    if t.device.type != "cpu":
        raise ValueError(f"the CPU kernels read '{name}' on the CPU, got a tensor on {t.device}")
    if dtype is not None and t.dtype != dtype:
        raise ValueError(f"the CPU kernels read '{name}' as {dtype}, got {t.dtype}")
    if not t.is_contiguous():
        raise ValueError(f"the CPU kernels read '{name}' as a contiguous array, got one of "
                         f"shape {list(t.shape)} and strides {list(t.stride())}; pass "
                         f"'{name}'.contiguous()")
    return t.data_ptr()
