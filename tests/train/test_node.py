"""``graphformer node train | evaluate | predict``: node classification by
mini-batches of sampled subgraphs, on a planted-partition graph written as
edge-list files (string node ids and class names)."""
import csv
import json
import re

import numpy as np
import pytest
import torch

from graphformer.train import node as node_mod
from graphformer.train.node import (NodeDataConfig, NodeRunConfig, NodeTrainConfig,
                                    load_node_graph, node_loader, train_nodes)
from graphformer.models.node_transformer import NodeClassifier, NodeTransformerConfig
from tests.commands import cli, refused
from tests.helpers import interrupt_on_call

N, CLASSES = 240, 3


def write_planted_graph(folder, n=N, classes=CLASSES, seed=0, features=True):
    """Nodes ``v<k>`` in ``classes`` communities: 8 edges per node, 80 % inside
    its community; features are noisy class indicators. Returns the labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    src = np.repeat(np.arange(n), 8)
    same = rng.random(src.size) < 0.8
    members = [np.flatnonzero(y == c) for c in range(classes)]
    dst = np.where(same, [rng.choice(members[y[s]]) for s in src], rng.integers(0, n, src.size))
    (folder / "edges.txt").write_text("# planted partition\n" + "".join(
        f"v{a} v{b}\n" for a, b in zip(src, dst)))
    if features:
        x = np.eye(classes)[y] + rng.normal(scale=1.0, size=(n, classes))
        (folder / "x.csv").write_text("".join(
            f"v{i}," + ",".join(f"{v:.5f}" for v in x[i]) + "\n" for i in range(n)))
    (folder / "y.csv").write_text("".join(f"v{i},class_{y[i]}\n" for i in range(n)))
    return y


def tiny_flags(folder, run_dir, *extra):
    return ["node", "train", "--edges", folder / "edges.txt", "--node-features", folder / "x.csv",
            "--node-labels", folder / "y.csv", "--run-dir", run_dir, "--epochs", "3",
            "--batch-size", "64", "--hidden", "16", "--layers", "1", "--heads", "2",
            "--num-neighbors", "5", "5", "--threads", "1", "--quiet", *extra]


@pytest.fixture(scope="module")
def graph_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("planted")
    labels = write_planted_graph(folder)
    return folder, labels


@pytest.fixture(scope="module")
def trained(graph_files, tmp_path_factory):
    folder, _ = graph_files
    run_dir = tmp_path_factory.mktemp("node-run") / "run"
    code, out, err = cli(*tiny_flags(folder, run_dir, "--epochs", "6"))
    assert code == 0, err
    return run_dir, out


def test_training_learns_the_communities(trained, graph_files):
    run_dir, out = trained
    for name in ("config.json", "metrics.csv", "metrics.json", "last.pt", "best.pt",
                 "summary.json", "learning_curve.png"):
        assert (run_dir / name).is_file(), name
    assert re.search(r"^graph: 240 nodes, 1920 edges, 3 classes; split train 145, valid 48, "
                     r"test 47", out, re.M), out
    summary = json.loads((run_dir / "summary.json").read_text())
    _, labels = graph_files
    majority = np.bincount(labels).max() / labels.size
    # features alone give ~0.75; the communities' neighbours push it higher
    assert summary["valid_accuracy"] > majority + 0.3, summary
    history = json.loads((run_dir / "metrics.json").read_text())
    assert [row["epoch"] for row in history] == list(range(1, 7))
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_evaluate_repeats_the_runs_best_scores(trained):
    run_dir, _ = trained
    summary = json.loads((run_dir / "summary.json").read_text())
    code, out, err = cli("node", "evaluate", run_dir / "best.pt")
    assert code == 0, err
    assert f"valid_accuracy: {summary['valid_accuracy']:.4f}" in out
    assert f"test_accuracy: {summary['test_accuracy']:.4f}" in out


def test_predict_writes_every_node_by_its_file_id(trained, graph_files, tmp_path):
    run_dir, _ = trained
    code, out, err = cli("node", "predict", run_dir / "best.pt", "-o", tmp_path / "p.csv",
                         "--quiet")
    assert code == 0, err
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert len(rows) == N and f"wrote predictions for {N} nodes" in out
    assert {r["node"] for r in rows} == {f"v{i}" for i in range(N)}
    for r in rows:
        probs = [float(r[f"p_class_{c}"]) for c in range(CLASSES)]
        assert abs(sum(probs) - 1) < 1e-4
        assert r["predicted"] == f"class_{int(np.argmax(probs))}"
    _, labels = graph_files
    right = sum(r["predicted"] == f"class_{labels[int(r['node'][1:])]}" for r in rows)
    assert right / N > 0.7


def test_a_resumed_run_repeats_the_uninterrupted_one(graph_files, tmp_path, monkeypatch):
    folder, _ = graph_files
    code, _, err = cli(*tiny_flags(folder, tmp_path / "whole"))
    assert code == 0, err
    real = interrupt_on_call(monkeypatch, node_mod, "evaluate_parts", 3)     # in epoch 3
    assert cli(*tiny_flags(folder, tmp_path / "cut"))[0] == 130
    assert json.loads((tmp_path / "cut" / "metrics.json").read_text())[-1]["epoch"] == 2
    monkeypatch.setattr(node_mod, "evaluate_parts", real)
    refused(cli("node", "train", "--resume", tmp_path / "cut", "--epochs", "9", "--lr", "0.1"),
            2, "only --device, --threads and --quiet may be given with it, not --epochs, --lr")
    code, _, err = cli("node", "train", "--resume", tmp_path / "cut", "--quiet", "--threads", "1")
    assert code == 0, err

    def scores(run):
        rows = json.loads((tmp_path / run / "metrics.json").read_text())
        return [{k: v for k, v in row.items() if k != "seeds_per_s"} for row in rows]

    assert scores("cut") == scores("whole")
    whole = torch.load(tmp_path / "whole" / "best.pt", weights_only=True)["model"]
    cut = torch.load(tmp_path / "cut" / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(whole[k], cut[k]) for k in whole)


def test_without_features_every_node_learns_an_embedding(graph_files, tmp_path):
    folder, _ = graph_files
    flags = [f for f in tiny_flags(folder, tmp_path / "run")]
    i = flags.index("--node-features")
    del flags[i:i + 2]
    code, _, err = cli(*flags, "--patterns", "graph", "k_hop", "random", "global")
    assert code == 0, err
    state = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert state["model"]["embedding.weight"].shape == (N, 16)


def test_each_step_sees_a_bounded_subgraph(graph_files):
    folder, _ = graph_files
    data = NodeDataConfig(edges=str(folder / "edges.txt"), node_labels=str(folder / "y.csv"),
                          node_features=str(folder / "x.csv"))
    graph = load_node_graph(data)
    train = NodeTrainConfig(num_neighbors=[3, 2])
    loader = node_loader(graph, torch.arange(N), train, 16, True, 0)
    for batch in loader:
        # 16 seeds, at most 3 in-edges each, then at most 2 for each of those
        assert batch.batch_size <= 16
        assert batch.num_nodes <= 16 * (1 + 3 + 3 * 2)
        assert batch.edge_index.size(1) <= 16 * (3 + 3 * 2)
        assert torch.equal(batch.x, graph.source.x[batch.n_id])
        assert torch.equal(batch.y, graph.y[batch.n_id])


def test_the_classifier_takes_a_sampled_batch():
    cfg = NodeTransformerConfig(in_channels=4, num_classes=3, hidden=8, layers=1, heads=2,
                                patterns=("graph", "random"))
    model = NodeClassifier(cfg, num_nodes=10, features=True).eval()
    batch = type("Batch", (), {})()
    batch.x, batch.batch_size = torch.randn(6, 4), 2
    batch.edge_index = torch.tensor([[2, 3, 4, 5], [0, 0, 1, 1]])
    out = model(batch, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3)
    # the seeds' logits are those of the whole subgraph's forward pass
    ei, mem = model.net.edge_set(batch.edge_index, 6, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, model.net(batch.x, ei, mem)[:2])
    assert "NodeClassifier(NodeTransformer(4 -> 3" in repr(model)


@pytest.mark.parametrize("extra,flag", [
    (["--num-neighbors", "5", "0"], "--num-neighbors must hold one fan-out per hop"),
    (["--train-fraction", "0.9", "--val-fraction", "0.2"], "--train-fraction must be > 0"),
    (["--graph", "somewhere"], "--edges must be given (an edge-list file) unless"),
])
def test_bad_settings_name_their_flag(graph_files, tmp_path, extra, flag):
    folder, _ = graph_files
    refused(cli(*tiny_flags(folder, tmp_path / "run", *extra)), 2, flag)
    assert not (tmp_path / "run").exists()


def test_a_malformed_file_is_a_data_error(graph_files, tmp_path):
    """A bad row of an input file exits 1 (the data), not 2 (the flags),
    naming the file, line and value, in memory and when converting."""
    folder, _ = graph_files
    bad = tmp_path / "edges.txt"
    lines = (folder / "edges.txt").read_text().splitlines()
    lines[4] = "7"                           # one column of two
    bad.write_text("\n".join(lines) + "\n")
    flags = tiny_flags(folder, tmp_path / "run")
    flags[flags.index(folder / "edges.txt")] = bad
    refused(cli(*flags), 1, "edges.txt, line 5", "missing in '7'")
    assert not (tmp_path / "run").exists()
    refused(cli("node", "convert", "--edges", bad, "-o", tmp_path / "g", "--quiet"), 1,
            "edges.txt, line 5", "missing in '7'")


def test_molecule_commands_name_the_node_commands(trained):
    run_dir, _ = trained
    refused(cli("evaluate", run_dir / "best.pt"), 1, "node-classification run",
            "graphformer node evaluate")


def test_config_round_trips(trained):
    run_dir, _ = trained
    saved = json.loads((run_dir / "config.json").read_text())
    cfg = NodeRunConfig.from_dict(saved)
    assert cfg.to_dict() == saved and cfg.model.in_channels == CLASSES
    assert saved["data"]["edges"].startswith("/")        # absolute: evaluates from anywhere


def test_a_converted_graph_trains_as_the_files_do(graph_files, tmp_path):
    """The same run from the edge list in memory and from the graph converted
    to disk (memory-mapped stores): the same scores and weights."""
    folder, _ = graph_files
    code, out, err = cli("node", "convert", "--edges", folder / "edges.txt", "--node-features",
                         folder / "x.csv", "--node-labels", folder / "y.csv", "-o",
                         tmp_path / "g", "--chunk-rows", "500", "--quiet")
    assert code == 0, err
    assert f"converted {N} nodes, 1920 edges, 3 features to {tmp_path / 'g'}" in out
    refused(cli("node", "convert", "--edges", folder / "edges.txt", "-o", tmp_path / "g",
                "--quiet"), 2, str(tmp_path / "g"))
    assert cli(*tiny_flags(folder, tmp_path / "files"))[0] == 0
    flags = tiny_flags(folder, tmp_path / "disk")
    for name in ("--edges", "--node-features", "--node-labels"):
        i = flags.index(name)
        del flags[i:i + 2]
    code, _, err = cli(*flags, "--graph", tmp_path / "g")
    assert code == 0, err
    rows = [json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("files", "disk")]
    strip = [[{k: v for k, v in r.items() if k != "seeds_per_s"} for r in rs] for rs in rows]
    assert strip[0] == strip[1]
    code, out, err = cli("node", "predict", tmp_path / "disk" / "best.pt", "-o",
                         tmp_path / "p.csv", "--quiet")
    assert code == 0, err
    assert {r["node"] for r in csv.DictReader((tmp_path / "p.csv").open())} == \
        {f"v{i}" for i in range(N)}


def test_a_resumed_node_run_may_change_only_where_it_runs(graph_files):
    """check_resume (node and link runs) goes through run_dir.resume_config
    with the node run's keys: device and threads taken from the given
    config, the derived sizes not compared, any other difference refused
    by name."""
    from dataclasses import replace

    from graphformer.errors import UsageError
    from graphformer.train.node import check_resume

    folder, _ = graph_files
    data = NodeDataConfig(edges=str(folder / "edges.txt"), node_labels=str(folder / "y.csv"))
    model = NodeTransformerConfig(in_channels=4, num_classes=3, hidden=8, layers=1, heads=2)
    saved = NodeRunConfig(data, model, NodeTrainConfig(lr=0.005))
    given = NodeRunConfig(data, replace(model, in_channels=7, num_classes=2),
                          NodeTrainConfig(lr=0.005, device="cpu", threads=3))
    resumed = check_resume(saved, given)
    assert (resumed.train.device, resumed.train.threads) == ("cpu", 3)
    assert resumed.model == saved.model and resumed.data == saved.data
    assert check_resume(saved, None) is saved
    with pytest.raises(UsageError, match=r"train\.lr: saved 0\.005, given 0\.1; start a new run"):
        check_resume(saved, replace(given, train=replace(given.train, lr=0.1)))


def test_negative_class_labels_are_refused_from_edges_and_from_a_converted_graph(tmp_path):
    """A negative integer label would leave its node out of every part of the
    split: refused, naming the node, whether the labels come with the edge
    list or in a converted graph."""
    from graphformer.data import convert_edge_list
    from graphformer.errors import DataError

    (tmp_path / "edges.txt").write_text("".join(f"{i} {(i + 1) % 6}\n" for i in range(6)))
    (tmp_path / "y.csv").write_text("".join(f"{i},{-1 if i == 3 else i % 2}\n" for i in range(6)))
    convert_edge_list(tmp_path / "edges.txt", tmp_path / "g", node_labels=tmp_path / "y.csv")
    for data in (NodeDataConfig(edges=str(tmp_path / "edges.txt"),
                                node_labels=str(tmp_path / "y.csv")),
                 NodeDataConfig(graph=str(tmp_path / "g"))):
        with pytest.raises(DataError, match="integer labels must be >= 0, node 3 has -1"):
            load_node_graph(data)
