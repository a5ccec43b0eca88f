"""scripts/bench_training.py runs, measures every model through the same
step, and prints the README table from its JSON."""
import json

import pytest

from tests.helpers import load_script


@pytest.mark.slow
def test_bench_training_smoke(tmp_path, capsys, monkeypatch, one_thread):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    bench = load_script("bench_training")
    out = tmp_path / "bench.json"
    assert bench.main(["--datasets", "esol", "--batches", "1", "--repeats", "1",
                       "--backends", "auto", "propagate", "--floor",
                       "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    models = [r["model"] for r in results["steps"]]
    assert models == ["graphformer (auto)", "graphformer (propagate)",
                      "graphformer, attention removed (floor)", "GIN"]
    for row in results["steps"]:
        assert row["train_mol_s"] > 0 and row["eval_mol_s"] > 0 and row["batch_size"] == 32
    assert "torch" in results["machine"] and "1 threads" in results["machine"]
    capsys.readouterr()
    assert bench.main(["--markdown-from", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| esol | GIN |" in table and "| esol | graphformer (auto) |" in table
    assert "1.00× |" in table   # GIN against itself
