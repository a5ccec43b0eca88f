"""Processes: how many cores this process may use, a worker that ends with
the process that started it, and freed memory given back to the system.
Shared below every floor (the descriptor workers of ``data``, the screening
workers of ``datasets``, the ensemble members of ``train``, the screening
loop of ``train``)."""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system
    says, else the machine's count; at least 1)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def end_with_parent() -> None:
    """In a worker process: be sent SIGTERM when the process that started it
    ends (Linux ``PR_SET_PDEATHSIG``), so that a worker never outlives a
    caller that was killed, holding its output open. Elsewhere nothing."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def release_free_memory() -> bool:
    """Give the C heap's free pages back to the system (glibc's
    ``malloc_trim(0)``): True where it ran, False elsewhere (another C
    library, another system).

    A long-lived process that frees as much as it allocates still grows
    under glibc: tensors and arrays of ever-changing sizes leave free holes
    in the heap that the allocator keeps mapped, so its resident memory
    creeps up with the work done, not with what it holds. A streaming loop
    (``graphformer predict``'s chunks) calls this once per chunk, a few
    milliseconds, and its memory stays flat."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):   # not glibc (musl has no malloc_trim)
        return False
    trim(0)
    return True
