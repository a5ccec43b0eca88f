"""The GPU check: the fused Triton kernel's tests on a real GPU, then the GPU
benchmark, in one prepared run (for a lent GPU machine; see DEVELOPERS.md,
"Measuring on a GPU").

1. ``pytest tests/nn/test_fused.py tests/nn/test_backends.py`` on the GPU
   (the tests put their tensors on CUDA when it is there, and Triton
   compiles for the device instead of interpreting). Its output is kept as
   ``OUT/gpu_tests.log``.
2. When they pass: ``OUT/gpu_record.json``, the record of the run (device,
   compute capability, torch and triton versions, commit, date, the pytest
   summary line). ``scripts/gpu_check.py --apply OUT/gpu_record.json``
   writes it into ``graphformer/nn/fused_record.py``, after which
   ``backend="auto"`` picks the fused kernel on CUDA; commit that file with
   the benchmark's table.
3. ``scripts/bench_attention.py --device cuda`` (the fused kernel against
   ``TransformerConv`` and FlexAttention, time and memory; ``--quick`` for a
   smoke run), as ``OUT/bench_cuda.json`` and ``OUT/bench_cuda.txt``; with
   ``--skip-bench``, not.

Nothing is written into the package on the GPU machine itself: the record
comes back with ``OUT`` and is applied where the repository is committed.

    python scripts/gpu_check.py --out "$OUT"
    python scripts/gpu_check.py --apply gpu_record.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import pprint
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
RECORD_MODULE = ROOT / "graphformer" / "nn" / "fused_record.py"
TESTS = ("tests/nn/test_fused.py", "tests/nn/test_backends.py")
#: the fields a record holds, in this order
FIELDS = ("device", "capability", "torch", "triton", "commit", "date", "tests")


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def summary_line(output: str) -> str:
    """pytest's last ``N passed ...`` line of ``output`` ("" when none)."""
    lines = [line.strip("= ") for line in output.splitlines()
             if re.search(r"\d+ (passed|failed|error)", line)]
    return lines[-1] if lines else ""


def check_record(record: Dict[str, str], source: str = "the record") -> Dict[str, str]:
    """``record`` when it has every field of :data:`FIELDS` as a non-empty
    string and its tests passed with none failed; else SystemExit naming
    what is wrong."""
    if not isinstance(record, dict):
        raise SystemExit(f"error: {source}: expected a JSON object")
    missing = [f for f in FIELDS if not isinstance(record.get(f), str) or not record[f]]
    if missing:
        raise SystemExit(f"error: {source}: missing or empty field(s) {missing}")
    if not re.search(r"\d+ passed", record["tests"]) or re.search(r"failed|error",
                                                                   record["tests"]):
        raise SystemExit(f"error: {source}: its tests did not all pass: {record['tests']!r}")
    return {f: record[f] for f in FIELDS}


def module_text(record: Optional[Dict[str, str]]) -> str:
    """``graphformer/nn/fused_record.py`` with :data:`VERIFIED_ON_GPU` set to
    ``record`` (the rest of the file as it is)."""
    text = RECORD_MODULE.read_text()
    value = pprint.pformat(record, indent=4, width=92, sort_dicts=False)
    new, count = re.subn(r"^VERIFIED_ON_GPU: Optional\[Dict\[str, str\]\] = .*?(?=\n\n\n)",
                         lambda _: f"VERIFIED_ON_GPU: Optional[Dict[str, str]] = {value}",
                         text, count=1, flags=re.S | re.M)
    if count != 1:
        raise SystemExit(f"error: {RECORD_MODULE}: no 'VERIFIED_ON_GPU' assignment to replace")
    return new


def apply(path: Path) -> int:
    record = check_record(json.loads(path.read_text()), str(path))
    RECORD_MODULE.write_text(module_text(record))
    print(f"{RECORD_MODULE.relative_to(ROOT)}: the fused kernel passed its tests on "
          f"{record['device']} (sm_{record['capability']}, commit {record['commit'][:10]}); "
          f"'auto' now picks it on CUDA")
    return 0


def run_on_gpu(out: Path, bench: bool, quick: bool) -> int:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device here: run this on a GPU machine")
    try:
        import triton
    except ImportError as err:
        raise SystemExit(f"error: triton is not installed ({err}): pip install triton") from err
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *TESTS], cwd=ROOT, capture_output=True, text=True)
    (out / "gpu_tests.log").write_text(proc.stdout + proc.stderr)
    tests = summary_line(proc.stdout)
    print(f"fused kernel tests on the GPU: {tests or 'no summary'} (exit {proc.returncode})")
    if proc.returncode != 0:
        print(proc.stdout[-4000:], file=sys.stderr)
        return 1
    major, minor = torch.cuda.get_device_capability()
    record = check_record({
        "device": torch.cuda.get_device_name(), "capability": f"{major}{minor}",
        "torch": torch.__version__, "triton": triton.__version__, "commit": _commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "tests": tests})
    (out / "gpu_record.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out / 'gpu_record.json'}: apply it with "
          f"python scripts/gpu_check.py --apply gpu_record.json")
    if bench:
        cmd = [sys.executable, "scripts/bench_attention.py", "--device", "cuda", "--json",
               str(out / "bench_cuda.json"), *(["--quick"] if quick else [])]
        result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        (out / "bench_cuda.txt").write_text(result.stdout + result.stderr)
        print(result.stdout)
        if result.returncode != 0:
            print(result.stderr[-4000:], file=sys.stderr)
            return 1
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--out", type=Path, help="run the tests (and the benchmark) on this "
                      "machine's GPU; results go here")
    mode.add_argument("--apply", type=Path, metavar="RECORD",
                      help="write a gpu_record.json into graphformer/nn/fused_record.py")
    parser.add_argument("--skip-bench", action="store_true", help="only the tests")
    parser.add_argument("--quick", action="store_true", help="the benchmark's smoke run")
    args = parser.parse_args(argv)
    if args.apply is not None:
        return apply(args.apply)
    return run_on_gpu(args.out, bench=not args.skip_bench, quick=args.quick)


if __name__ == "__main__":
    sys.exit(main())
