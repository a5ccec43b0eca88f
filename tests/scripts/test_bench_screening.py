"""scripts/bench_screening.py at a tiny size, without chemprop (--peers none):
every graphformer run is measured and tabled, and the runs agree."""
import json

import pandas as pd
import pytest

from graphformer.datasets.molecules import bundled_dir
from tests.cli.test_predict_stream import train_tiny
from tests.helpers import load_script


@pytest.mark.slow
@pytest.mark.bench
def test_the_benchmark_measures_each_run_and_they_agree(tmp_path, capsys, monkeypatch):
    ckpt = train_tiny(tmp_path, "model", "--ensemble", "1")
    smiles = tmp_path / "corpus.csv"
    pd.DataFrame({"smiles": pd.read_csv(bundled_dir() / "ESOL.csv")["smiles"].head(50)}).to_csv(
        smiles, index=False)
    bench = load_script("bench_screening")
    work = tmp_path / "work"
    # the graph-only checkpoint is trained with --molecule-features none (here: stands in)
    asked = []
    given = bench.graphformer_checkpoint

    def checkpoint(args, work):
        asked.append(args.molecule_features)
        return given(args, work) if args.checkpoint is not None else ckpt

    monkeypatch.setattr(bench, "graphformer_checkpoint", checkpoint)
    assert bench.main(["-n", "30", "--smiles", str(smiles), "--work", str(work), "--checkpoint",
                       str(ckpt), "--peers", "none", "--workers", "1", "2",
                       "--graph-only-workers", "1", "--json", str(tmp_path / "r.json")]) == 0
    assert asked == [None, ["none"]]
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "r.json").read_text())
    rows = report["results"]
    assert [(r["tool"], r["workers"], r["molecules"]) for r in rows] == [
        ("graphformer", 1, 30), ("graphformer", 2, 30),
        ("graphformer --molecule-features none", 1, 30)]
    for r in rows:
        assert r["seconds"] > 0 and r["mol_per_s"] == pytest.approx(30 / r["seconds"])
        assert 50 < r["peak_rss_mb"] <= r["tree_rss_mb"] * 1.5 + 1
    # two workers: more processes, so more memory in all
    assert rows[1]["tree_rss_mb"] > rows[0]["peak_rss_mb"]
    assert "| graphformer | in process |" in out and "| graphformer | 2 |" in out
    assert out.startswith("30 SMILES, 1 thread(s), batch size 128; ")
    assert (work / "screen-30.csv").read_text().splitlines()[1] == \
        pd.read_csv(smiles)["smiles"][0]
    assert (work / "graphformer-w1.csv").read_bytes() == (work / "graphformer-w2.csv").read_bytes()
    assert (work / "graphformer-none-w1.csv").read_bytes() == \
        (work / "graphformer-w1.csv").read_bytes()      # the same checkpoint stood in
    assert "| graphformer --molecule-features none | in process |" in out
    # the floor: the checkpoint's descriptors alone, timed on the first molecules
    floor = report["feature_floor"]
    assert floor["sets"] == "rdkit2d" and floor["molecules"] == 30 and floor["mol_per_s"] > 0
    assert "| rdkit2d features alone (the floor; first 30) | in process |" in out
