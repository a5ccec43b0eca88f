"""scripts/bench_attention.py --quick runs end to end and its JSON is
self-consistent: every case, positive finite times, ratios that follow from
the times, estimates beside the graphformer rows, the sweep's crossover.
No assertion on timings: they depend on the machine."""
import itertools
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "bench_attention.py"
CASES = ("molecules", "medium", "large", "tokens", "long", "crossover", "edge-crossover")
GROUPED = CASES[:-2]                     # the crossovers are sweeps only
TIME_FIELDS = ("fwd_ms", "fwd_ms_min", "fwd_bwd_ms", "fwd_bwd_ms_min")

pytestmark = [pytest.mark.slow, pytest.mark.bench]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.pop("TRITON_INTERPRET", None)   # set by tests/conftest.py for the fused tests
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--threads", "1",
                           "--repeats", "1", "--json", str(out)],
                          cwd=ROOT, env=env, text=True, capture_output=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, f"bench_attention.py failed:\n{proc.stdout}\n{proc.stderr}"
    table = subprocess.run([sys.executable, str(SCRIPT), "--markdown-from", str(out)],
                           cwd=ROOT, env=env, text=True, capture_output=True, timeout=120)
    assert table.returncode == 0, table.stderr
    return proc.stdout, json.loads(out.read_text()), table.stdout


def _groups(result):
    for case in GROUPED:
        for group in result["cases"][case]["groups"]:
            yield case, group


def _positive(value):
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_every_case_and_machine_line(run):
    stdout, result, _ = run
    assert set(result["cases"]) == set(CASES)
    for case in GROUPED:
        assert result["cases"][case]["groups"], case
    assert re.search(r"^machine: CPU .+ \| \d+ cores \| torch \S+ \| threads 1 \| device cpu",
                     stdout, re.MULTILINE), stdout
    assert result["machine"]["threads"] == 1
    assert f"| allocator {result['machine']['allocator']}" in stdout
    assert result["machine"]["allocator"].startswith(("glibc", "libc", "jemalloc", "tcmalloc",
                                                      "mimalloc", "musl"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc settings")
def test_allocator_names_the_settings_that_move_cpu_times(monkeypatch):
    bench = load_script("bench_attention")
    for key in ("LD_PRELOAD",) + bench.MALLOC_ENV:
        monkeypatch.delenv(key, raising=False)
    assert bench.allocator().endswith(" defaults")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "4294967296")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "68719476736")
    assert bench.allocator().endswith(
        "(MALLOC_MMAP_THRESHOLD_=4294967296, MALLOC_TRIM_THRESHOLD_=68719476736)")
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    assert bench.allocator() == "libjemalloc.so.2"


def test_rows_have_positive_finite_times(run):
    _, result, _ = run
    for case, group in _groups(result):
        roles = [row["role"] for row in group["rows"]]
        assert "graphformer" in roles and "peer" in roles, (case, group["name"])
        assert sum(row["auto"] for row in group["rows"]) == 1, group["name"]
        for row in group["rows"]:
            for name in TIME_FIELDS:
                assert _positive(row[name]), (group["name"], row["method"], name, row[name])
            assert row["fwd_ms_min"] <= row["fwd_ms"]
            assert row["fwd_bwd_ms_min"] <= row["fwd_bwd_ms"]
            assert len(row["fwd_ms_all"]) == len(row["fwd_bwd_ms_all"]) == 1  # --repeats 1
            assert row["peak_bytes"] is None or row["peak_bytes"] >= 0


def test_ratios_follow_from_the_times(run):
    _, result, _ = run
    for _, group in _groups(result):
        peers = {row["method"]: row for row in group["rows"] if row["role"] == "peer"}
        for row in group["rows"]:
            if row["role"] != "graphformer":
                assert row["vs"] == {}
                continue
            assert set(row["vs"]) == set(peers), group["name"]
            for name, peer in peers.items():
                vs = row["vs"][name]
                assert vs["speedup_fwd"] == pytest.approx(peer["fwd_ms"] / row["fwd_ms"])
                assert vs["speedup_fwd_bwd"] == pytest.approx(
                    peer["fwd_bwd_ms"] / row["fwd_bwd_ms"])
                assert vs["speedup_fwd_bwd_rounds"] == pytest.approx(
                    [p / g for p, g in zip(peer["fwd_bwd_ms_all"], row["fwd_bwd_ms_all"])])
                if row["peak_bytes"] is None or not peer["peak_bytes"]:
                    assert vs["memory_ratio"] is None
                else:
                    assert vs["memory_ratio"] == pytest.approx(
                        row["peak_bytes"] / peer["peak_bytes"])


def test_estimates_beside_graphformer_rows(run):
    _, result, _ = run
    for _, group in _groups(result):
        for row in group["rows"]:
            for name in ("estimate_peak_bytes", "estimate_flops", "estimate_over_measured"):
                assert name in row
            if row["role"] != "graphformer":
                assert row["estimate_peak_bytes"] is None
                continue
            assert _positive(row["estimate_peak_bytes"]) and _positive(row["estimate_flops"])
            if row["peak_bytes"]:
                assert row["estimate_over_measured"] == pytest.approx(
                    row["estimate_peak_bytes"] / row["peak_bytes"])


def test_same_function_peers_were_checked(run):
    _, result, _ = run
    for case, group in _groups(result):
        peers = {row["method"] for row in group["rows"] if row["role"] == "peer"}
        if "dense masked SDPA" in peers:
            assert group["check"]["against"] == "dense masked SDPA"
            assert group["check"]["max_abs_diff"] <= group["check"]["atol"] <= 1e-4
        if case in ("tokens", "long"):
            assert group["check"] is not None, group["name"]


def test_sweep_and_crossover(run):
    _, result, _ = run
    sweep = result["cases"]["long"]["sweep"]
    assert "crossover_density" in sweep
    points = sorted(sweep["points"], key=lambda p: p["density"])
    assert len(points) >= 2
    for p in points:
        assert _positive(p["graphformer_sparse_fwd_bwd_ms"]) and _positive(p["sdpa_fwd_bwd_ms"])
        assert p["speedup_fwd_bwd"] == pytest.approx(
            p["sdpa_fwd_bwd_ms"] / p["graphformer_sparse_fwd_bwd_ms"])
        assert p["density"] == pytest.approx(p["num_edges"] / sweep["seq_len"] ** 2)
    # log(sparse / SDPA) linear in log(density) between the first bracketing pair
    expected = None
    logs = [(math.log(p["density"]), -math.log(p["speedup_fwd_bwd"])) for p in points]
    for (d0, r0), (d1, r1) in itertools.pairwise(logs):
        if r0 == 0:
            expected = math.exp(d0)
            break
        if r0 * r1 < 0:
            expected = math.exp(d0 - r0 * (d1 - d0) / (r1 - r0))
            break
    if expected is None:
        assert sweep["crossover_density"] is None
    else:
        assert sweep["crossover_density"] == pytest.approx(expected)


def test_dense_sweep_crosses_per_sequence_length(run):
    """The dense backend against the one auto runs below the crossover, per
    T: the measured crossover from the points, beside the cost model's."""
    from graphformer.nn.backend import dense_crossover
    from graphformer.nn.fused_cpu import fused_cpu_available

    stdout, result, table = run
    sweep = result["cases"]["crossover"]["dense_sweep"]
    assert sweep["other_backend"] == ("fused_cpu" if fused_cpu_available() else "sparse")
    bench = load_script("bench_attention")
    assert [(c["seq_len"], c["num_graphs"]) for c in sweep["curves"]] == \
        [tuple(t) for t in bench.QUICK.crossover_sizes]
    for curve in sweep["curves"]:
        T, B = curve["seq_len"], curve["num_graphs"]
        assert len(curve["points"]) == len(bench.QUICK.crossover_densities)
        for p in curve["points"]:
            assert _positive(p["dense_fwd_bwd_ms"]) and _positive(p["other_fwd_bwd_ms"])
            assert p["density"] == pytest.approx(p["num_edges"] / (B * T * T))
        assert curve["crossover_density"] == bench.crossover_density(
            curve["points"], "other_fwd_bwd_ms", "dense_fwd_bwd_ms")
        assert curve["cost_model_crossover"] == pytest.approx(
            dense_crossover(torch.device("cpu"), T, sweep["other_backend"] == "fused_cpu"))
        assert f"T = {T}: " in table
    assert "crossover: B sequences of T tokens" in stdout


def test_edge_sweep_crosses_by_message_size(run):
    """propagate against fused_cpu with per-edge features over batches of
    molecules: the measured crossover in E·H·C from the points, beside the
    cost model's (only where the C++ kernels run)."""
    from graphformer.nn.backend import PROPAGATE_BELOW_FUSED_CPU
    from graphformer.nn.fused_cpu import fused_cpu_available

    stdout, result, table = run
    case = result["cases"]["edge-crossover"]
    if not fused_cpu_available():
        assert "edge_sweep" not in case and "[edge-crossover] skipped" in stdout
        return
    sweep = case["edge_sweep"]
    bench = load_script("bench_attention")
    assert [p["num_graphs"] for p in sweep["points"]] == list(bench.QUICK.edge_crossover_graphs)
    for p in sweep["points"]:
        assert _positive(p["propagate_fwd_bwd_ms"]) and _positive(p["fused_cpu_fwd_bwd_ms"])
        assert p["messages"] == p["num_edges"] * bench.HEADS * bench.HEAD_CHANNELS
    assert sweep["crossover_messages"] == bench.crossover_density(
        sweep["points"], "propagate_fwd_bwd_ms", "fused_cpu_fwd_bwd_ms", at="messages")
    assert sweep["cost_model"] == PROPAGATE_BELOW_FUSED_CPU
    assert "edge-crossover: batches of B molecules" in stdout
    assert "fused_cpu vs propagate with per-edge features" in table


def test_markdown_table_has_every_row(run):
    _, result, table = run
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    rows = [r for _, g in _groups(result) for r in g["rows"]]
    assert len(lines) == 2 + len(rows)           # header, separator, one line per row
    for _, group in _groups(result):
        for r in group["rows"]:
            assert any(line.startswith(f"| {group['name']} | {r['method']} | {r['backend']}")
                       for line in lines)
    assert "crossover at density" in table


def test_methods_are_timed_in_interleaved_rounds(monkeypatch):
    """Each round times every method once, fwd then fwd+bwd, starting one
    method later than the round before; warm-up runs come first."""
    torch = pytest.importorskip("torch")
    bench = load_script("bench_attention")
    # the order is under test, not the timing: a full collection before every
    # timed call costs ~0.3 s each inside the whole suite's process
    monkeypatch.setattr(bench.gc, "collect", lambda *args: 0)
    calls = []

    def method(name):
        lin = torch.nn.Linear(2, 2)

        def call():
            calls.append(name)
            return lin(work.x)
        return bench.Method(name, "-", "peer", lin, call)

    work = bench.Workload(torch.randn(3, 2, requires_grad=True),
                          torch.zeros(2, 0, dtype=torch.long), torch.tensor([0, 3]),
                          torch.randn(3, 2))
    timing = bench.Timing(torch.device("cpu"), warmup=1, repeats=3)
    rows = bench.measure_group([method("a"), method("b"), method("c")], work, timing)
    assert [len(r.fwd_bwd_ms_all) for r in rows] == [3, 3, 3]
    timed = calls[6:6 + 18]                     # after 1 warm-up fwd and fwd+bwd per method
    assert timed == list("abcabc" "bcabca" "cabcab")
