"""scripts/gpu_check.py without a GPU: it refuses to run here, reads pytest's
summary, refuses a record of a failed or incomplete run, and --apply writes a
passing record into graphformer/nn/fused_record.py so that the fused kernel
is verified (a copy of the module stands in for the package's own)."""
import importlib.util
import json
import shutil

import pytest
import torch

from tests.helpers import load_script

RECORD = {"device": "NVIDIA H100 80GB HBM3", "capability": "90", "torch": "2.13.0+cu128",
          "triton": "3.5.0", "commit": "0123456789abcdef", "date": "2026-12-06 15:00 UTC",
          "tests": "153 passed, 2 skipped in 41.20s"}


def load_module(path):
    spec = importlib.util.spec_from_file_location("fused_record_copy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_apply_writes_a_passing_record_into_the_module(tmp_path, monkeypatch, capsys):
    check = load_script("gpu_check")
    copy = tmp_path / "fused_record.py"
    shutil.copy(check.RECORD_MODULE, copy)
    assert load_module(copy).VERIFIED_ON_GPU is None          # as shipped: not verified
    monkeypatch.setattr(check, "RECORD_MODULE", copy)
    monkeypatch.setattr(check, "ROOT", tmp_path)
    record = tmp_path / "gpu_record.json"
    record.write_text(json.dumps(RECORD))
    assert check.main(["--apply", str(record)]) == 0
    assert "NVIDIA H100 80GB HBM3 (sm_90, commit 0123456789)" in capsys.readouterr().out
    module = load_module(copy)
    assert module.VERIFIED_ON_GPU == RECORD and module.fused_verified()
    # applying again replaces the record, and the rest of the file stays
    again = dict(RECORD, device="NVIDIA H200")
    record.write_text(json.dumps(again))
    assert check.main(["--apply", str(record)]) == 0
    assert load_module(copy).VERIFIED_ON_GPU == again
    assert copy.read_text().split("VERIFIED_ON_GPU:")[0] == \
        check.RECORD_MODULE.read_text().split("VERIFIED_ON_GPU:")[0]


@pytest.mark.parametrize("change,message", [
    ({"tests": "150 passed, 3 failed in 40s"}, "did not all pass"),
    ({"tests": ""}, r"missing or empty field\(s\) \['tests'\]"),
    ({"device": None}, r"\['device'\]"),
])
def test_a_record_of_a_run_that_did_not_pass_is_refused(tmp_path, change, message):
    check = load_script("gpu_check")
    record = tmp_path / "r.json"
    record.write_text(json.dumps({**RECORD, **change}))
    with pytest.raises(SystemExit, match=message):
        check.main(["--apply", str(record)])


def test_pytests_summary_line_is_read():
    check = load_script("gpu_check")
    out = "....\n[100%]\n===== 12 passed, 1 skipped in 3.21s =====\n"
    assert check.summary_line(out) == "12 passed, 1 skipped in 3.21s"
    assert check.summary_line("nothing ran") == ""


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour")
def test_without_a_gpu_it_refuses_to_run(tmp_path):
    with pytest.raises(SystemExit, match="no CUDA device here"):
        load_script("gpu_check").main(["--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())
