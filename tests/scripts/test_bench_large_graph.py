"""scripts/make_planted_graph.py writes the planted-partition graph as the
edge-list reader reads it; scripts/bench_large_graph.py runs every phase and
model on a tiny graph and prints the table from its JSON."""
import json

import numpy as np
import pytest

from graphformer.data.edge_list import read_edge_list
from tests.helpers import load_script


def test_planted_graph_files_read_back(tmp_path):
    mpg = load_script("make_planted_graph")
    meta = mpg.generate(tmp_path / "g", 300, 4000, num_classes=4, num_features=6, p_in=0.8,
                        seed=3, chunk=1000, log=None)
    assert meta["nodes"] == 300 and meta["edges"] == 4000 and meta["classes"] == 4
    assert mpg.matches(tmp_path / "g", nodes=300, edges=4000, seed=3)
    assert not mpg.matches(tmp_path / "g", nodes=300, edges=4000, seed=4)
    data = read_edge_list(tmp_path / "g" / "edges.txt", node_features=tmp_path / "g" / "x.csv",
                          node_labels=tmp_path / "g" / "y.csv")
    assert data.num_nodes == 300 and data.edge_index.size(1) == 4000
    assert data.x.shape == (300, 6)
    ids = data.node_ids.numpy()
    labels = mpg.communities(300, 4, 3)
    assert (data.y.numpy() == labels[ids]).all()
    # the features, to the 3 written decimals
    x = mpg.features(labels, 4, 6, 3, 0, 300)
    np.testing.assert_allclose(data.x.numpy(), x[ids], atol=5.1e-4)
    # the edges, chunk by chunk, in file order; about p_in + (1 - p_in) / C inside
    src, dst = map(np.concatenate, zip(*mpg.edge_chunks(labels, 4000, 4, 0.8, 3, 1000)))
    edge_index = data.edge_index.numpy()
    assert (ids[edge_index[0]] == src).all() and (ids[edge_index[1]] == dst).all()
    inside = (labels[src] == labels[dst]).mean()
    assert 0.8 < inside < 0.9
    # the same seed and chunk give the same files
    mpg.generate(tmp_path / "h", 300, 4000, num_classes=4, num_features=6, p_in=0.8, seed=3,
                 chunk=1000, log=None)
    for name in ("edges.txt", "x.csv", "y.csv"):
        assert (tmp_path / "g" / name).read_bytes() == (tmp_path / "h" / name).read_bytes()


def test_render_formats_numbers_as_python_does():
    mpg = load_script("make_planted_graph")
    values = np.array([0, 7, 10, 99, 123456789, 10 ** 12])
    text = mpg.edge_lines(values, values[::-1]).decode()
    assert text.splitlines() == [f"{a} {b}" for a, b in zip(values, values[::-1])]
    x = np.array([[0.0, -0.0004, -1.25], [12.3456, 0.0005, -0.9996]])
    lines = mpg.float_lines(np.array([5, 6]), x).decode().splitlines()
    assert lines == ["5,0.000,0.000,-1.250", "6,12.346,0.000,-1.000"] or \
        lines == ["5,0.000,0.000,-1.250", "6,12.346,0.001,-1.000"]


@pytest.mark.bench
def test_bench_large_graph_smoke(tmp_path, capsys):
    bench = load_script("bench_large_graph")
    out = tmp_path / "bench.json"
    assert bench.main(["--nodes", "400", "--edges", "3000", "--classes", "4", "--features",
                       "8", "--workdir", str(tmp_path / "work"), "--max-steps", "3",
                       "--warmup", "1", "--batch-size", "64", "--eval-batch-size", "128",
                       "--fanout", "3", "2", "--hidden", "16", "--heads", "2",
                       "--models", "graphformer", "graphsage", "sgformer",
                       "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert "torch" in results["machine"] and "1 threads" in results["machine"]
    assert results["convert"]["nodes"] == 400 and results["convert"]["edges"] == 3000
    for phase in ("generate", "convert"):
        assert results[phase]["seconds"] > 0 and results[phase]["peak_rss_gb"] > 0
        assert results[phase]["bytes"] > 0
    assert [r["model"] for r in results["models"]] == ["graphformer", "graphsage", "sgformer"]
    for r in results["models"]:
        assert "error" not in r, r
        assert r["steps"] == 3 and r["seeds_trained"] == 3 * 64 and r["timed_steps"] == 2
        assert r["train_seeds_s"] > 0 and r["train_peak_rss_gb"] > 0
        assert r["infer_nodes"] == 400 and r["infer_seconds"] > 0
        assert r["valid_nodes"] + r["test_nodes"] == 400 - 240
        assert 0 <= r["valid_accuracy"] <= 1 and 0 <= r["test_accuracy"] <= 1
        assert r["peak_rss_gb"] >= r["train_peak_rss_gb"]
    # every model saw the same sampled batches
    assert len({(r["nodes_per_batch"], r["edges_per_batch"]) for r in results["models"]}) == 1
    assert results["ratio"] == pytest.approx(results["models"][0]["train_seeds_s"]
                                             / results["models"][1]["train_seeds_s"])
    # a second run reuses the generated files
    capsys.readouterr()
    assert bench.main(["--nodes", "400", "--edges", "3000", "--classes", "4", "--features",
                       "8", "--workdir", str(tmp_path / "work"), "--max-steps", "1",
                       "--warmup", "0", "--batch-size", "64", "--fanout", "2",
                       "--hidden", "16", "--heads", "2", "--models", "graphsage",
                       "--infer", "sample", "--infer-nodes", "50", "--skip-convert"]) == 0
    printed = capsys.readouterr().out
    assert "reusing the generated graph" in printed and "reusing the converted graph" in printed
    assert "| graphsage |" in printed and "sample 50" in printed
    assert bench.main(["--markdown-from", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| graphformer |" in table and "| sgformer |" in table and "1.00×" in table
    assert "| convert |" in table
