"""Worker processes: how many cores this process may use, and a worker that
ends with the process that started it. Shared below every floor (the
descriptor workers of ``data``, the screening workers of ``datasets``, the
ensemble members of ``train``)."""
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
