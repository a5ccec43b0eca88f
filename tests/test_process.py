"""graphformer._process: freed memory given back to the system."""
import ctypes
import sys

import pytest

from graphformer._process import release_free_memory


def _rss_kb() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's heap, /proc")
def test_release_free_memory_returns_the_heaps_free_pages():
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "malloc_trim"):
        pytest.skip("not glibc")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    # 400 blocks of 64 KiB (below glibc's mmap threshold: on the heap), each
    # touched; all but the last freed: the last pins the heap's top, so free
    # alone cannot give the pages back
    blocks = [libc.malloc(64 << 10) for _ in range(400)]
    try:
        for b in blocks:
            ctypes.memset(b, 1, 64 << 10)
        for b in blocks[:-1]:
            libc.free(b)
        before = _rss_kb()
        assert release_free_memory() is True
        after = _rss_kb()
    finally:
        libc.free(blocks[-1])
    assert before - after > 12_000, (before, after)   # most of the 25 MiB freed
