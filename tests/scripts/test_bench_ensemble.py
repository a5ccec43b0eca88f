"""scripts/bench_ensemble.py at a tiny size: every variant is timed in every
round and tabled with its ratio to side by side. No assertion on timings."""
import json

import pandas as pd
import pytest

from graphformer.datasets.molecules import bundled_dir
from tests.helpers import load_script


@pytest.mark.slow
def test_the_benchmark_times_every_variant(tmp_path, capsys):
    frame = pd.read_csv(bundled_dir() / "ESOL.csv").head(40)
    data = tmp_path / "tiny.csv"
    pd.DataFrame({"smiles": frame["smiles"],
                  "y": frame["measured log solubility in mols per litre"]}).to_csv(data,
                                                                               index=False)
    bench = load_script("bench_ensemble")
    out = tmp_path / "r.json"
    assert bench.main(["--dataset", str(data), "--epochs", "1", "--repeats", "1", "--root",
                       str(tmp_path / "cache"), "--json", str(out), "--extra",
                       "--target-columns", "y", "--hidden", "16", "--layers", "1",
                       "--molecule-features", "none"]) == 0
    report = json.loads(out.read_text())
    assert set(report["times"]) == {"in turn", "in turn, 1 thread", "side by side"}
    assert all(len(t) == 1 and t[0] > 0 for t in report["times"].values())
    table = capsys.readouterr().out
    side = report["median"]["side by side"]
    assert f"| in turn | {report['median']['in turn']:.1f} | " \
           f"{report['median']['in turn'] / side:.2f}x |" in table
    assert "| side by side |" in table and "(an ensemble of 2), median of 1;" in table
