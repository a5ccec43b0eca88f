"""scripts/bench_training.py runs, measures every model through the same
step, and prints the README table from its JSON."""
import json

import pytest

from tests.helpers import load_script


@pytest.mark.slow
@pytest.mark.bench
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
                      "graphformer, attention removed (floor)",
                      "graphformer, attention's projections only", "GIN"]
    for row in results["steps"]:
        assert row["train_mol_s"] > 0 and row["eval_mol_s"] > 0 and row["batch_size"] == 32
    assert "torch" in results["machine"] and "1 threads" in results["machine"]
    capsys.readouterr()
    assert bench.main(["--markdown-from", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| esol | GIN |" in table and "| esol | graphformer (auto) |" in table
    assert "1.00× |" in table   # GIN against itself
    assert "of the floor (train / eval) |" in table
    floor = next(line for line in table.splitlines()
                 if line.startswith("| esol | graphformer, attention removed (floor) |"))
    assert floor.endswith("| 1.00× / 1.00× |")   # the floor against itself


def test_cli_runs_pair_with_chemprop_alternating(tmp_path, capsys, monkeypatch):
    """Every `graphformer train` timing has chemprop's run on the same data set
    beside it; repeats swap which goes first; the table gives each pair's
    ratio and their median."""
    bench = load_script("bench_training")
    calls = []
    seconds = iter([40.0, 50.0, 20.0, 10.0, 30.0, 45.0, 12.0, 11.0])

    def fake_cli(extra):
        calls.append(("graphformer", tuple(extra)))
        return {"command": " ".join(["graphformer", "train", *extra]),
                "seconds": next(seconds), "metric": "rmse", "test_at_best": 0.5}

    def fake_chemprop(name, epochs):
        calls.append(("chemprop", name))
        return {"dataset": name, "seconds": next(seconds), "epochs": 50}

    monkeypatch.setattr(bench, "bench_cli", fake_cli)
    monkeypatch.setattr(bench, "bench_chemprop", fake_chemprop)
    out = tmp_path / "bench.json"
    assert bench.main(["--datasets", "--cli", "--cli-datasets", "freesolv", "--chemprop",
                       "--cli-repeats", "2", "--json", str(out)]) == 0
    assert calls == [("graphformer", ()), ("chemprop", "esol"),
                     ("graphformer", ("--dataset", "freesolv")), ("chemprop", "freesolv"),
                     ("chemprop", "esol"), ("graphformer", ()),
                     ("chemprop", "freesolv"), ("graphformer", ("--dataset", "freesolv"))]
    results = json.loads(out.read_text())
    assert [(r["dataset"], r["repeat"]) for r in results["chemprop"]] == \
        [("esol", 0), ("freesolv", 0), ("esol", 1), ("freesolv", 1)]
    capsys.readouterr()
    assert bench.main(["--markdown-from", str(out)]) == 0
    table = capsys.readouterr().out
    # esol: 40 s against 50 s, then 45 s against 30 s: ratios 0.80 and 1.50
    assert "| `graphformer train` | 40 / 45 s | 50 / 30 s | 0.80 / 1.50; **1.15×** |" in table
    assert "| `graphformer train --dataset freesolv` | 20 / 11 s | 10 / 12 s | " \
           "2.00 / 0.92; **1.46×** |" in table


def test_markdown_gives_each_row_against_each_floor():
    """With the floor compiled too (--floor --compile), every row's rates
    are given against the eager floor and against the compiled one."""
    bench = load_script("bench_training")

    def row(model, train, evaluation):
        return {"dataset": "esol", "model": model, "train_mol_s": train, "eval_mol_s": evaluation}

    results = {"machine": "m", "datasets": ["esol"], "steps": [
        row("graphformer (auto)", 1500, 3000),
        row("graphformer (auto, compiled)", 2400, 4000),
        row(bench.FLOOR, 3000, 5000),
        row(f"{bench.FLOOR}, compiled", 4000, 8000),
        row("GIN", 6000, 10000)]}
    table = bench.markdown(results)
    assert "| of the floor (train / eval) | of the compiled floor (train / eval) |" in table
    assert "| esol | graphformer (auto, compiled) | 2400 | 4000 | 0.40× | 0.80× / 0.80× | " \
           "0.60× / 0.50× |" in table
