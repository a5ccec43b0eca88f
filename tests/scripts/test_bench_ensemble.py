"""scripts/bench_ensemble.py: every variant is timed in every round with its
own flags (the runs stood in for: ``graphformer train`` itself is tested
elsewhere, in turn and side by side), the data cache is built before the
timed runs, and the table's ratios follow from the medians."""
import json

from tests.helpers import load_script


def test_the_benchmark_times_every_variant(tmp_path, monkeypatch, capsys):
    bench = load_script("bench_ensemble")
    calls = []
    seconds = {("--member-processes", "1"): 30.0, ("--member-processes", "1", "--threads", "1"):
               28.0, (): 16.0}

    def run_once(dataset, epochs, flags, root, extra):
        calls.append((dataset, epochs, tuple(flags), root, tuple(extra)))
        return seconds.get(tuple(flags), 5.0) + len(calls) * 0.001

    monkeypatch.setattr(bench, "run_once", run_once)
    out = tmp_path / "r.json"
    assert bench.main(["--dataset", "esol", "--epochs", "3", "--repeats", "2", "--root",
                       str(tmp_path / "cache"), "--json", str(out), "--extra", "--hidden",
                       "16"]) == 0
    # the cache first (one model, one epoch), then each round every variant
    assert calls[0][:3] == ("esol", 1, ("--ensemble", "1"))
    assert [c[2] for c in calls[1:]] == [tuple(f) for f in bench.VARIANTS.values()] * 2
    assert all(c[1] == 3 and c[4] == ("--hidden", "16") for c in calls[1:])
    report = json.loads(out.read_text())
    side = report["times"]["side by side"]
    assert len(side) == 2 and report["median"]["side by side"] == sum(side) / 2
    table = capsys.readouterr().out
    med = report["median"]
    assert f"| in turn | {med['in turn']:.1f} | {med['in turn'] / med['side by side']:.2f}x |" \
        in table
    assert "| side by side | 16.0 | - |" in table
    assert "graphformer train --dataset esol --epochs 3 (an ensemble of 2), median of 2;" in table
