r"""Graphformer's C++ kernels for the CPU: built on first use with
:mod:`torch.utils.cpp_extension`, as PyTorch custom ops.

``cpu_kernels.cpp`` (beside this module) holds the fused attention of
:mod:`graphformer.nn.fused_cpu`, the hashed dropout of
:func:`graphformer.nn.functional.dropout` (alone and fused with GELU,
:func:`~graphformer.nn.functional.gelu_dropout`), the counting sort of
:meth:`graphformer.nn.csr.EdgeCSR.transpose` and the regrouped edge-feature
score terms of :mod:`graphformer.nn.edge_terms`, as the CPU implementations of
the custom ops ``torch.ops.graphformer.fused_attention`` and
``fused_attention_backward``, ``dropout_multiplier``
(:mod:`graphformer.nn.fused_cpu`), ``hashed_dropout``, ``gelu_dropout`` and
``gelu_dropout_backward`` (:mod:`graphformer.nn.functional`),
``group_by_source`` (:mod:`graphformer.nn.csr`), ``edge_quadratic``,
``edge_quadratic_backward``, ``edge_cross``, ``edge_cross_backward``,
``edge_values``, ``edge_values_into`` and ``edge_values_backward``
(:mod:`graphformer.nn.edge_terms`). Those modules define each
op's schema (:func:`define_op`), fake (meta) implementation and, where
differentiable, autograd formula, so that :func:`torch.compile` and
:func:`torch.export.export` trace them. Random decisions take their seed as
an int64 tensor [1] (:func:`seed_tensor`), so drawing it is part of a traced
graph. Each op checks the device, dtype, contiguity and size of every array
it reads (``ValueError`` naming the argument); the index values (CSR
structure, sources, edge types) are checked by the Python callers.

The first use (:func:`kernels_available`, or the first call of an op) builds
the one translation unit with :func:`torch.utils.cpp_extension.load` (the
C++ compiler ``$CXX``, else ``c++``, and ``ninja``; about 13 s, once per
machine, :data:`CFLAGS`) in a private build directory under the cache
directory (``$GRAPHFORMER_KERNEL_CACHE``, else ``$XDG_CACHE_HOME`` or
``~/.cache``, then ``graphformer/kernels``), and renames the library into
place, keyed by the source, the flags, the PyTorch and Python versions and
the CPU; later processes load the cached library (no compiler needed).
Concurrent first uses each build privately and rename atomically, so they
agree, and a killed build leaves no lock behind. The kernels run on
PyTorch's intra-op threads (``at::parallel_for``), so
``torch.set_num_threads`` sets their number.

Where the build fails (no compiler, no ``ninja``, a compile error),
:func:`kernels_available` is False, :func:`kernels_unavailable` says why, and
the callers use PyTorch operations instead: ``"auto"`` attention picks the
``"sparse"`` backend where it would pick ``"fused_cpu"``, dropout and GELU
are PyTorch's operations, the grouping by source is ``torch.sort``. The
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

import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = ["kernels_available", "kernels_unavailable", "kernels_turned_off", "define_op",
           "draw_seed", "seed_tensor", "dropout_threshold", "CFLAGS", "ENV_SWITCH",
           "KernelsUnavailableWarning"]

#: The environment variable that turns the kernels off (see the module documentation).
ENV_SWITCH = "GRAPHFORMER_CPU_KERNELS"
_OFF = ("0", "off", "false", "no")
_ON = ("", "1", "on", "true", "yes")
#: The namespace of the custom ops, ``torch.ops.graphformer``.
NAMESPACE = "graphformer"


class KernelsUnavailableWarning(RuntimeWarning):
    """The CPU kernels could not be built: PyTorch operations are used instead."""


SOURCE = Path(__file__).resolve().with_name("cpu_kernels.cpp")
#: Compiler flags, besides :func:`torch.utils.cpp_extension.load`'s own
#: (``-fPIC``, the C++ standard, PyTorch's include directories).
#: ``-march=native``: the library is built on, and for, the machine that runs
#: it (the CPU is part of the cache key). Reassociation lets the channel
#: loops' sums vectorise; no flag assumes finite values (scores may be
#: -inf), and none changes the process's floating-point mode (as
#: ``-ffast-math`` can when it links ``crtfastmath.o``). ``-fopenmp`` where
#: PyTorch's thread pool is OpenMP: ``at::parallel_for`` is a header template
#: that opens the parallel region in the kernels' own code.
CFLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fno-signed-zeros",
          "-fassociative-math") + (("-fopenmp",) if torch.backends.openmp.is_available() else ())
_LDFLAGS = ("-fopenmp",) if "-fopenmp" in CFLAGS else ()


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


def _key() -> str:
    """What the built library depends on: the source, the flags, PyTorch
    (its headers and libraries), Python and the CPU."""
    parts = [SOURCE.read_bytes(), " ".join(CFLAGS + _LDFLAGS).encode(), torch.__version__.encode(),
             str(torch.version.git_version).encode(), sys.version.encode(), _cpu_id().encode()]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def _build(target: Path, name: str) -> str:
    """Builds the kernels with :func:`torch.utils.cpp_extension.load` in a
    private directory beside ``target`` (so concurrent builders never wait
    on each other's lock, nor on a killed one's), loads them, and renames the
    library to ``target``. Returns "" or why it failed."""
    from torch.utils import cpp_extension   # imports setuptools: only when building

    compiler = cpp_extension.get_cxx_compiler()
    if not shutil.which(compiler):
        return (f"building the CPU kernels failed: no C++ compiler found ('{compiler}': set "
                f"CXX, or install g++ or clang++)")
    path = os.environ.get("PATH")
    if not shutil.which("ninja"):
        try:    # the ninja wheel (a dependency) outside an activated environment
            import ninja
        except ImportError:
            return ("building the CPU kernels failed: ninja, which torch.utils.cpp_extension "
                    "builds with, is not installed (pip install ninja)")
        os.environ["PATH"] = os.pathsep.join(filter(None, [ninja.BIN_DIR, path]))
    target.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f"{name}-build-", dir=target.parent))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")     # its compiler-version remarks; errors raise
            cpp_extension.load(name=name, sources=[str(SOURCE)], extra_cflags=list(CFLAGS),
                               extra_ldflags=list(_LDFLAGS), build_directory=str(build),
                               is_python_module=False, verbose=False)
        os.replace(build / f"{name}.so", target)      # atomic: concurrent builders agree
    except (OSError, RuntimeError, ImportError, subprocess.SubprocessError) as err:
        # first line: the compiler's first error where it gave one; then all it said
        lines = str(err).splitlines() or [repr(err)]
        first = ([line for line in lines[1:] if "error:" in line] or lines)[0].strip()
        return "\n".join([f"building the CPU kernels failed: {compiler}: {first}", *lines])
    finally:
        if path is None:
            os.environ.pop("PATH", None)
        else:
            os.environ["PATH"] = path
        shutil.rmtree(build, ignore_errors=True)
    return ""


@functools.lru_cache(maxsize=None)
def _library() -> Tuple[Optional[Path], str]:
    """(the loaded library, "") or (None, why not); built or loaded once per process."""
    try:
        key = _key()
        name = f"graphformer_cpu_kernels_{key}"
        target = _cache_dir() / f"{name}.so"
        if target.exists():
            torch.ops.load_library(str(target))
        else:
            why = _build(target, name)
            if why:
                return None, why
    except (OSError, RuntimeError) as err:
        return None, f"loading the CPU kernels failed: {err}"
    return target, ""


def _hint(why: str) -> str:
    """What to do about a failed build, where the reason says it."""
    if "fopenmp" in why or "omp.h" in why:
        return (" (the compiler has no OpenMP, which PyTorch's thread pool uses here: install "
                "libgomp)")
    return ""


@functools.lru_cache(maxsize=None)
def _built() -> Tuple[Optional[Path], str]:
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


def define_op(name: str, schema: str, *, loads: bool = True) -> str:
    """Defines the custom op ``torch.ops.graphformer.<name>`` with ``schema``
    (``"(Tensor x, ...) -> Tensor"``), tagged PT2-compliant as
    :func:`torch.library.custom_op` tags its ops; its CPU implementation is
    ``cpu_kernels.cpp``'s. The caller registers its fake implementation and
    autograd formula. Returns the qualified name.

    ``loads``: until the kernels are loaded, a call builds (or loads) them
    and then runs there, so the op works from import on, as a traced or
    exported program calls it; where they cannot be built it raises why.
    False for an op without tensor arguments, which has no backend to
    dispatch on (its C++ implementation is for every backend): call
    :func:`kernels_available` before it."""
    qualname = f"{NAMESPACE}::{name}"
    torch.library.define(qualname, schema, tags=(torch.Tag.pt2_compliant_tag,))
    if loads:
        def load_then_run(*args):
            if not kernels_available():
                raise RuntimeError(f"{qualname}: the CPU kernels are unavailable: "
                                   f"{kernels_unavailable()}")
            devices = sorted({a.device.type for a in args if isinstance(a, Tensor)})
            if devices != ["cpu"] or not torch._C._dispatch_has_kernel_for_dispatch_key(
                    qualname, "CPU"):
                raise NotImplementedError(f"{qualname} runs on CPU tensors only, got tensors "
                                          f"on {devices}")
            return getattr(getattr(torch.ops, NAMESPACE), name).default(*args)

        torch.library.impl(qualname, "CompositeExplicitAutograd", load_then_run)
    return qualname
