import os

import pytest
import torch

# The fused Triton kernels run on CPU tensors through Triton's interpreter in
# tests (slow but exact); on a CUDA machine they compile for the GPU.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
from hypothesis import settings

# In CI (CI=true) hypothesis draws the same examples on every run, so a CI
# result is reproducible; locally each run explores new examples.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

from graphformer.nn import cpu_kernels, functional
from graphformer.nn.functional import HAS_TORCH_SCATTER

# Tests that keep a data cache of their own set XDG_CACHE_HOME to a fresh
# directory; the programs they start (graphformer train, the scripts) would
# then build the C++ kernels again (about 20 s each). They find the kernels
# this run already has; a test of the build itself sets
# GRAPHFORMER_KERNEL_CACHE to a directory of its own.
os.environ.setdefault("GRAPHFORMER_KERNEL_CACHE", str(cpu_kernels._cache_dir()))


def force_softmax(monkeypatch, name):
    """Make ``graphformer.nn.functional`` choose the segment softmax ``name``
    where it would choose by itself (``backend="auto"``)."""
    if name == "scatter" and not HAS_TORCH_SCATTER:
        pytest.skip("torch-scatter is not installed")
    real = functional.softmax_implementation
    monkeypatch.setattr(functional, "softmax_implementation",
                        lambda backend: real(name if backend == "auto" else backend))


@pytest.fixture(params=["native", "scatter"])
def backend(request, monkeypatch):
    """Every attention test runs once per softmax implementation: PyTorch's
    native scatter and torch-scatter (skipped, loudly, where it is not
    installed)."""
    force_softmax(monkeypatch, request.param)
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Tiny graphs train faster on one thread than on two contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
