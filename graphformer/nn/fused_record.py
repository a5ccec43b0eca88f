"""Whether the fused Triton attention kernel (:mod:`graphformer.nn.fused`)
has passed its tests on a real GPU, and on which.

Until it has, ``backend="auto"`` never picks ``"fused"`` on CUDA (the
sparse and dense backends run there, exact and tested); ``"fused"`` stays
available by name. The kernel's tests run on the CPU through Triton's
interpreter, which accepts code the real compiler rejects, and the
ahead-of-time compile for sm_90 checks only that it compiles: neither is a
run on a GPU.

``scripts/gpu_check.py`` runs the fused kernel's tests on a GPU and, when
they pass, writes the record of that run; ``scripts/gpu_check.py --apply
RECORD.json`` then rewrites :data:`VERIFIED_ON_GPU` below, to be committed.
Do not edit it by hand.
"""
from typing import Dict, Optional

#: None until the fused kernel's tests passed on a GPU; then the run that
#: passed: device name, compute capability, torch and triton versions,
#: commit, date, and the pytest summary line.
VERIFIED_ON_GPU: Optional[Dict[str, str]] = None


def fused_verified() -> bool:
    """True when the fused kernel's tests have passed on a real GPU (so
    ``"auto"`` may pick it on CUDA)."""
    return VERIFIED_ON_GPU is not None
