"""``graphformer node train --task regression``: numeric node labels, trained
on standardised targets, scored by RMSE / MAE / R² in the targets' units, on a
planted-partition graph whose target is the community's value plus noise."""
import csv
import re
import json

import numpy as np
import pytest
import torch

from graphformer.train.node import (NodeDataConfig, TargetScale, load_node_graph,
                                    node_scores)
from tests.commands import cli, refused
from tests.train.test_node import write_planted_graph

N = 240


@pytest.fixture(scope="module")
def value_files(tmp_path_factory):
    """The planted graph's files, with ``target.csv``: 10 · community + 50,
    plus noise of standard deviation 1 (a node's features and neighbours tell
    its community)."""
    folder = tmp_path_factory.mktemp("planted-values")
    labels = write_planted_graph(folder)
    rng = np.random.default_rng(1)
    target = 10.0 * labels + 50 + rng.normal(size=labels.size)
    (folder / "target.csv").write_text("node,target\n" + "".join(
        f"v{i},{float(target[i])!r}\n" for i in range(N)))
    return folder, target


def flags(folder, run_dir, *extra):
    return ["node", "train", "--task", "regression", "--edges", folder / "edges.txt",
            "--node-features", folder / "x.csv", "--node-labels", folder / "target.csv",
            "--run-dir", run_dir, "--epochs", "20", "--batch-size", "32", "--hidden", "16",
            "--layers", "1", "--heads", "2", "--num-neighbors", "-1", "--no-undirected",
            "--threads", "1",
            "--lr", "0.01", "--quiet", *extra]


@pytest.fixture(scope="module")
def trained(value_files, tmp_path_factory):
    folder, _ = value_files
    run_dir = tmp_path_factory.mktemp("regression-run") / "run"
    code, out, err = cli(*flags(folder, run_dir))
    assert code == 0, err
    return run_dir, out


def test_regression_learns_the_community_values(trained, value_files):
    run_dir, out = trained
    folder, target = value_files
    assert "regression targets (train mean" in out and "3 classes" not in out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary) == {"best_epoch", "valid_rmse", "test_rmse", "epochs"}
    # always predicting the mean is off by the targets' spread (~8.3); the
    # communities are told apart as well as the classifier tells them (~70 %
    # of the test nodes: an error of 10 on the rest gives RMSE ~6)
    graph = load_node_graph(NodeDataConfig(edges=str(folder / "edges.txt"),
                                           node_labels=str(folder / "target.csv"),
                                           task="regression"))
    split = graph.split(NodeDataConfig(edges="e", node_labels="y", task="regression"))
    test = graph.y[split["test"]].double()
    baseline = float((test - graph.y[split["train"]].double().mean()).pow(2).mean().sqrt())
    assert baseline > 7
    assert summary["test_rmse"] < 0.8 * baseline, summary
    history = json.loads((run_dir / "metrics.json").read_text())
    assert {"train_rmse", "valid_rmse", "valid_mae", "valid_r2", "test_r2"} <= set(history[0])
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    best = min(history, key=lambda row: row["valid_rmse"])
    assert summary["best_epoch"] == best["epoch"] and summary["test_rmse"] == best["test_rmse"]
    assert (run_dir / "learning_curve.png").is_file()


def test_predict_and_evaluate_agree_in_the_targets_units(trained, value_files, tmp_path):
    """``predict``'s values over the test nodes give ``evaluate``'s RMSE: the
    outputs are un-standardised by the training part's mean and std. (Every
    in-edge sampled, along directed edges, one layer: a node's output does not
    depend on the batch it is predicted in.)"""
    run_dir, _ = trained
    folder, target = value_files
    code, out, err = cli("node", "evaluate", run_dir / "best.pt", "--parts", "test")
    assert code == 0, err
    scores = dict(line.split(": ") for line in out.strip().splitlines())
    assert set(scores) == {"test_rmse", "test_mae", "test_r2"}
    code, out, err = cli("node", "predict", run_dir / "best.pt", "-o", tmp_path / "p.csv",
                         "--quiet")
    assert code == 0, err
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert len(rows) == N and list(rows[0]) == ["node", "predicted"]
    predicted = {r["node"]: float(r["predicted"]) for r in rows}
    graph = load_node_graph(NodeDataConfig(edges=str(folder / "edges.txt"),
                                           node_labels=str(folder / "target.csv"),
                                           task="regression"))
    test = graph.split(NodeDataConfig(edges="e", node_labels="y", task="regression"))["test"]
    error = np.array([predicted[graph.node_ids[int(i)]] - target[int(graph.node_ids[int(i)][1:])]
                      for i in test])
    assert float(np.sqrt((error ** 2).mean())) == pytest.approx(float(scores["test_rmse"]),
                                                                abs=1e-4)
    assert float(np.abs(error).mean()) == pytest.approx(float(scores["test_mae"]), abs=1e-4)


def test_a_converted_graph_of_values_trains_as_the_files_do(value_files, trained, tmp_path):
    folder, _ = value_files
    code, _, err = cli("node", "convert", "--edges", folder / "edges.txt", "--node-features",
                       folder / "x.csv", "--node-labels", folder / "target.csv", "--label-type",
                       "value", "-o", tmp_path / "g", "--chunk-rows", "500", "--quiet")
    assert code == 0, err
    run = flags(folder, tmp_path / "disk")
    for name in ("--edges", "--node-features", "--node-labels"):
        i = run.index(name)
        del run[i:i + 2]
    code, _, err = cli(*run, "--graph", tmp_path / "g")
    assert code == 0, err
    strip = [[{k: v for k, v in r.items() if k != "seeds_per_s"}
              for r in json.loads((d / "metrics.json").read_text())]
             for d in (trained[0], tmp_path / "disk")]
    assert strip[0] == strip[1]
    # a graph of values is not a classification graph, and the reverse
    i = run.index("--task")
    refused(cli(*(run[:i] + run[i + 2:]), "--graph", tmp_path / "g", "--run-dir",
                tmp_path / "r1"), 1, "labels are numbers", "--task regression")
    assert cli("node", "convert", "--edges", folder / "edges.txt", "--node-labels",
               folder / "y.csv", "-o", tmp_path / "classes", "--quiet")[0] == 0
    refused(cli(*run, "--graph", tmp_path / "classes", "--run-dir", tmp_path / "r2"), 1,
            "labels are classes", "--label-type value")


def test_class_names_are_not_numbers(value_files, tmp_path):
    folder, _ = value_files
    run = flags(folder, tmp_path / "run")
    run[run.index(folder / "target.csv")] = folder / "y.csv"
    refused(cli(*run), 1, "y.csv, line 1", "non-numeric label 'class_")
    assert not (tmp_path / "run" / "best.pt").exists()


def test_a_resumed_regression_run_repeats_the_uninterrupted_one(value_files, trained, tmp_path,
                                                                 monkeypatch):
    from graphformer.train import node as node_mod

    from tests.helpers import interrupt_on_call

    folder, _ = value_files
    real = interrupt_on_call(monkeypatch, node_mod, "evaluate_parts", 9)     # in epoch 9
    assert cli(*flags(folder, tmp_path / "cut"))[0] == 130
    monkeypatch.setattr(node_mod, "evaluate_parts", real)
    assert cli("node", "train", "--resume", tmp_path / "cut", "--quiet", "--threads", "1")[0] == 0
    rows = [[{k: v for k, v in r.items() if k != "seeds_per_s"}
             for r in json.loads((d / "metrics.json").read_text())]
            for d in (trained[0], tmp_path / "cut")]
    assert rows[0] == rows[1]


def test_node_scores_by_hand():
    out = torch.tensor([[0.0], [1.0], [-1.0], [0.5]])
    scale = TargetScale(mean=10.0, std=2.0)            # values 10, 12, 8, 11
    y = torch.tensor([11.0, 12.0, 6.0, 11.0])           # errors -1, 0, 2, 0
    scores = node_scores(out, y, "regression", scale)
    assert scores["rmse"] == pytest.approx((5 / 4) ** 0.5)
    assert scores["mae"] == pytest.approx(3 / 4)
    assert scores["r2"] == pytest.approx(1 - 5 / 22)    # y's mean 10, squares 1+4+16+1
    fitted = TargetScale.fit(torch.tensor([1.0, 3.0]))
    assert (fitted.mean, fitted.std) == (2.0, 1.0)
    assert TargetScale.fit(torch.tensor([4.0, 4.0])).std == 1.0     # constant targets
    assert node_scores(torch.tensor([[2.0, 1.0], [0.0, 3.0]]), torch.tensor([0, 0]),
                       "classification", TargetScale()) == {"accuracy": 0.5}


def test_the_example_script_trains_a_regression(value_files, tmp_path, capsys, one_thread):
    from tests.helpers import load_script

    folder, _ = value_files
    script = load_script("node_classification")
    assert script.main(["--task", "regression", "--edges", str(folder / "edges.txt"),
                        "--node-features", str(folder / "x.csv"), "--node-labels",
                        str(folder / "target.csv"), "--epochs", "3", "--hidden", "16",
                        "--layers", "1", "--batch-size", "64", "--log-every", "3",
                        "--run-dir", str(tmp_path / "run"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "split (seed 0, random): 144 train, 48 val, 48 test nodes" in out
    baseline = float(re.search(r"^mean baseline: (\d+\.\d{4}) ", out, re.M).group(1))
    test = float(re.search(r"^test RMSE: (\d+\.\d{4})$", out, re.M).group(1))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert test == round(summary["test_rmse"], 4) and baseline > 7
