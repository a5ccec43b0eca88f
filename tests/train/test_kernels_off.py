"""The CPU kernels off (``GRAPHFORMER_CPU_KERNELS=0``, or no C++ compiler): the
default molecule model trains and an ensemble predicts with PyTorch
operations only, and gives what the kernels give.

The kernels are exact, so with dropout 0 (the default molecule model's) both
runs agree to float rounding. With dropout > 0 they cannot agree: the kernels
draw their decisions from a hash of a seed (fused_cpu attention: 32-bit
slices; dropout and GELU: 16-bit slices), the fallback from PyTorch random
integers, and the fallback attention backend ("sparse") drops the weights
through :func:`graphformer.nn.functional.dropout` rather than inside the
kernel. That case is checked to train, not to agree.
"""
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

from graphformer.nn.cpu_kernels import ENV_SWITCH, kernels_available, kernels_unavailable
from graphformer.nn import fused_cpu
from tests.commands import cli
from tests.train.conftest import tiny_csv  # noqa: F401  (fixture)

#: the tests that compare with the kernels on need them
needs_kernels = pytest.mark.skipif(
    not kernels_available(), reason=f"the CPU kernels are unavailable: {kernels_unavailable()}")

#: the default molecule model (typed bonds and full attention: fused_cpu when
#: the kernels are on), one short epoch; dropout 0 is the model's default
FLAGS = ["--epochs", "1", "--batch-size", "16", "--threads", "1", "--split", "random",
         "--dropout", "0", "--ensemble", "2", "--quiet"]


def run(tmp_path, csv, name):
    """Train a 2-model ensemble and predict the training file with it: the
    metrics of each member and the predictions."""
    run_dir = tmp_path / name
    code, _, err = cli("train", "--dataset", csv, "--target-columns", "y", "--root",
                       tmp_path / "cache", "--run-dir", run_dir, *FLAGS)
    assert code == 0, err
    out = tmp_path / f"{name}.csv"
    code, _, err = cli("predict", run_dir / "best.pt", csv, "-o", out, "--threads", "1",
                       "--quiet")
    assert code == 0, err
    members = sorted(run_dir.glob("**/metrics.json"))
    assert len(members) >= 2, list(run_dir.iterdir())
    return [json.loads(m.read_text()) for m in members], pd.read_csv(out)


#: the custom ops the C++ kernels implement
OPS = ("fused_attention", "fused_attention_backward", "dropout_multiplier", "hashed_dropout",
       "gelu_dropout", "gelu_dropout_backward", "group_by_source")


def kernel_calls(monkeypatch):
    """The names of the kernels' ops called from now on (every caller reads
    them from ``torch.ops.graphformer`` at the call)."""
    calls = []
    for name in OPS:
        real = getattr(torch.ops.graphformer, name)
        monkeypatch.setattr(torch.ops.graphformer, name,
                            lambda *args, name=name, real=real: calls.append(name) or real(*args))
    return calls


@pytest.mark.slow
@needs_kernels
def test_training_and_ensemble_predict_with_the_kernels_off_equal_them_on(
        tmp_path, tiny_csv, monkeypatch):  # noqa: F811
    calls = kernel_calls(monkeypatch)
    torch.manual_seed(0)
    on_metrics, on_pred = run(tmp_path, tiny_csv, "on")
    assert {"fused_attention", "fused_attention_backward"} <= set(calls)  # fused_cpu ran
    calls.clear()
    monkeypatch.setenv(ENV_SWITCH, "0")
    assert not kernels_available() and not fused_cpu.fused_cpu_available()
    assert kernels_unavailable() == f"turned off by {ENV_SWITCH}=0"
    torch.manual_seed(0)
    off_metrics, off_pred = run(tmp_path, tiny_csv, "off")
    assert calls == []
    for on, off in zip(on_metrics, off_metrics):
        assert len(on) == len(off) == 1
        for key, value in on[0].items():
            if isinstance(value, float) and "time" not in key and "per_s" not in key \
                    and "seconds" not in key:
                assert off[0][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert len(on_pred) == len(off_pred) == 60
    assert on_pred["y"].notna().all()
    pd.testing.assert_series_equal(off_pred["y"], on_pred["y"], rtol=1e-4, atol=1e-6)


@needs_kernels
def test_the_switch_refuses_what_it_does_not_know(monkeypatch):
    monkeypatch.setenv(ENV_SWITCH, "maybe")
    with pytest.raises(ValueError, match=f"{ENV_SWITCH}='maybe': use 0"):
        kernels_available()
    for on in ("1", "on", "TRUE", ""):
        monkeypatch.setenv(ENV_SWITCH, on)
        assert kernels_available()


#: a fresh process without a compiler: attention (typed edges), dropout, GELU
#: dropout and the CSR transpose, forward and backward, twice, recording every
#: warning
NO_COMPILER = """
import warnings
warnings.simplefilter("always")
import torch
from graphformer.nn import EdgeSet, RelationalAttention, functional
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for _ in range(2):
        x = torch.randn(5, 8, requires_grad=True)
        edges = EdgeSet(torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]]), 5,
                        edge_type=torch.tensor([0, 1, 0, 1]))
        layer = RelationalAttention(8, 8, heads=2, edge_dim=3, dropout=0.2)
        out = functional.gelu_dropout(layer(x, edges, torch.randn(2, 3)), 0.3)
        functional.dropout(out, 0.3).sum().backward()
        edges.csr.transpose()
        assert torch.isfinite(x.grad).all()
for w in caught:
    print("WARNING", w.category.__name__, str(w.message))
"""


@pytest.mark.slow
def test_without_a_compiler_one_warning_says_why_and_what_is_used(tmp_path):
    env = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"),
               GRAPHFORMER_KERNEL_CACHE=str(tmp_path / "cache"))
    env.pop(ENV_SWITCH, None)
    proc = subprocess.run([sys.executable, "-c", NO_COMPILER], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("WARNING")]
    assert len(lines) == 1, proc.stdout
    assert lines[0].startswith("WARNING KernelsUnavailableWarning graphformer's CPU kernels are "
                               "unavailable: building the CPU kernels failed: no C++ compiler "
                               "found")
    assert "no-such-compiler" in lines[0]
    assert "Using PyTorch operations instead (attention backend 'sparse' for 'fused_cpu'" \
        in lines[0]
    # turned off: nothing is built, nothing is said
    env[ENV_SWITCH] = "0"
    proc = subprocess.run([sys.executable, "-c", NO_COMPILER], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "WARNING" not in proc.stdout
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


#: a fresh process whose kernel source does not compile
BROKEN_SOURCE = """
import pathlib, sys, warnings
from graphformer.nn import cpu_kernels
source = pathlib.Path(sys.argv[1])
source.write_text('#error this kernel is broken\\n')
cpu_kernels.SOURCE = source
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    assert not cpu_kernels.kernels_available()
for w in caught:
    print("WARNING", w.category.__name__, str(w.message).splitlines()[0])
"""


def test_a_compile_error_is_one_warning_with_the_compilers_first_error(tmp_path):
    env = dict(os.environ, GRAPHFORMER_KERNEL_CACHE=str(tmp_path / "cache"))
    env.pop(ENV_SWITCH, None)
    proc = subprocess.run([sys.executable, "-c", BROKEN_SOURCE, str(tmp_path / "broken.cpp")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("WARNING")]
    assert len(lines) == 1, proc.stdout
    assert lines[0].startswith("WARNING KernelsUnavailableWarning graphformer's CPU kernels are "
                               "unavailable: building the CPU kernels failed: ")
    assert "error: #error this kernel is broken" in lines[0]
    # the private build directory is gone, and nothing is cached
    assert list((tmp_path / "cache").iterdir()) == []
