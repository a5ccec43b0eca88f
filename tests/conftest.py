import pytest
import torch

from graphformer.nn.functional import HAS_TORCH_SCATTER


@pytest.fixture(params=["native", "scatter"])
def backend(request):
    """Every attention test runs once per softmax backend: PyTorch's native
    scatter and torch-scatter (skipped, loudly, where it is not installed)."""
    if request.param == "scatter" and not HAS_TORCH_SCATTER:
        pytest.skip("torch-scatter is not installed")
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
