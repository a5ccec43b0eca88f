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

Every kernel is called through a PyTorch custom op with a fake (meta)
implementation and, where differentiable, a registered autograd formula, so
that :func:`torch.compile` and :func:`torch.export.export` trace it:
``torch.ops.graphformer.fused_attention`` and ``fused_attention_backward``,
``dropout_multiplier`` (:mod:`graphformer.nn.fused_cpu`), ``hashed_dropout``,
``gelu_dropout`` and ``gelu_dropout_backward``
(:mod:`graphformer.nn.functional`), ``group_by_source``
(:mod:`graphformer.nn.csr`). Random decisions take their seed as an int64
tensor [1] (:func:`seed_tensor`), so drawing it is part of a traced graph.

Where no compiler works (none installed, a compile error, macOS's clang
without OpenMP), :func:`kernels_available` is False, :func:`kernels_unavailable`
says why, and the callers use PyTorch operations instead: ``"auto"`` attention
picks the ``"sparse"`` backend where it would pick ``"fused_cpu"``, dropout and
GELU are PyTorch's operations, the grouping by source is ``torch.sort``. The
results are the same to float rounding (with dropout the random decisions
differ: the kernels hash a seed, the fallback draws PyTorch random integers),
only slower. One :class:`KernelsUnavailableWarning` per process says so, at
the first use.

The environment variable :data:`ENV_SWITCH` (``GRAPHFORMER_CPU_KERNELS``)
turns the kernels off: ``0``, ``off``, ``false`` or ``no`` (any case) and
:func:`kernels_available` is False without compiling anything and without a
warning; unset, empty, ``1``, ``on``, ``true`` or ``yes``: used when they
build. It is read at every :func:`kernels_available` call, so it takes effect
for the next layer call, not only at import.
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
import warnings
from pathlib import Path
from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = ["kernels_available", "kernels_unavailable", "kernels_turned_off", "kernel", "pointer",
           "draw_seed", "seed_tensor", "dropout_threshold", "CFLAGS", "ENV_SWITCH", "KernelsUnavailableWarning"]

#: The environment variable that turns the kernels off (see the module documentation).
ENV_SWITCH = "GRAPHFORMER_CPU_KERNELS"
_OFF = ("0", "off", "false", "no")
_ON = ("", "1", "on", "true", "yes")


class KernelsUnavailableWarning(RuntimeWarning):
    """The CPU kernels could not be built: PyTorch operations are used instead."""

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


def _hint(why: str) -> str:
    """What to do about a failed build, where the reason says it."""
    if "fopenmp" in why or "omp.h" in why:
        return (" (the compiler has no OpenMP: on macOS 'brew install libomp' and "
                "CC=$(brew --prefix llvm)/bin/clang, or CC=gcc-14)")
    return ""


@functools.lru_cache(maxsize=None)
def _built() -> Tuple[Optional[ctypes.CDLL], str]:
    """:func:`_library`, warning once per process when it failed."""
    lib, why = _library()
    if lib is None:
        first = why.splitlines()[0] if why else why
        detail = why.splitlines()[-1] if len(why.splitlines()) > 1 else ""
        warnings.warn(
            f"graphformer's CPU kernels are unavailable: {first}"
            f"{' ... ' + detail if detail else ''}{_hint(why)}. Using PyTorch operations "
            f"instead (attention backend 'sparse' for 'fused_cpu', torch dropout and GELU, "
            f"torch.sort): same results, slower. Set {ENV_SWITCH}=0 to not try building them.",
            KernelsUnavailableWarning, stacklevel=3)
    return lib, why


def kernels_turned_off() -> bool:
    """True when :data:`ENV_SWITCH` turns the kernels off (read now).

    Raises:
        ValueError: on a value that is neither on nor off."""
    value = os.environ.get(ENV_SWITCH, "").strip().lower()
    if value in _OFF:
        return True
    if value in _ON:
        return False
    raise ValueError(f"{ENV_SWITCH}={os.environ[ENV_SWITCH]!r}: use 0 (the CPU kernels off) "
                     f"or 1 (on when they build)")


@torch.compiler.assume_constant_result
def kernels_available() -> bool:
    """True when the kernels are used: not turned off by :data:`ENV_SWITCH`,
    and built and loaded (the first call builds them, or loads them from the
    cache; where that fails it warns once, :class:`KernelsUnavailableWarning`).
    Under :func:`torch.compile` it is read once, when the code is traced."""
    return not kernels_turned_off() and _built()[0] is not None


def kernels_unavailable() -> str:
    """Why the kernels are not used here ("" when they are)."""
    if kernels_turned_off():
        return f"turned off by {ENV_SWITCH}={os.environ[ENV_SWITCH]}"
    return _built()[1]


def draw_seed() -> int:
    """A seed for the kernels' hashed random decisions, from PyTorch's default
    generator (so ``torch.manual_seed`` makes runs reproducible)."""
    return int(torch.randint(0, 2**62, (1,)).item())


def seed_tensor(seed: Optional[int] = None) -> Tensor:
    """A seed as the custom ops take it, an int64 tensor [1]: ``seed`` (any
    64-bit value; read back as unsigned by the kernels), or, when None, drawn
    as :func:`draw_seed` draws it. Drawing it is traced by
    :func:`torch.compile` (no ``.item()`` in the graph): the ops read it inside."""
    if seed is None:
        return torch.randint(0, 2**62, (1,))
    seed = int(seed) % 2**64
    return torch.tensor([seed - 2**64 if seed >= 2**63 else seed], dtype=torch.int64)


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
