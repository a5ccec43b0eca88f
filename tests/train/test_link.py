"""``graphformer link train | evaluate | predict``: link prediction by
mini-batches of subgraphs sampled around seed links and their negatives, on a
planted-partition graph written as edge-list files (string node ids)."""
import csv
import json
import re

import numpy as np
import pytest
import torch

from graphformer.data import convert_edge_list
from graphformer.train import link as link_mod
from graphformer.train.link import (LinkDataConfig, load_link_graph, random_mrr, ranks,
                                    ranking_metrics, split_links)
from tests.commands import cli, refused
from tests.helpers import interrupt_on_call
from tests.train.test_node import write_planted_graph

N, CLASSES = 240, 8


def tiny_flags(folder, run_dir, *extra, features=True):
    flags = ["link", "train", "--edges", folder / "edges.txt", "--run-dir", run_dir,
             "--epochs", "3", "--batch-size", "128", "--hidden", "16", "--layers", "1",
             "--heads", "2", "--num-neighbors", "5", "5", "--lr", "0.01", "--threads", "1",
             "--quiet"]
    if features:
        flags += ["--node-features", folder / "x.csv"]
    return [*flags, *extra]


@pytest.fixture(scope="module")
def graph_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("planted")
    labels = write_planted_graph(folder, n=N, classes=CLASSES)
    return folder, labels


@pytest.fixture(scope="module")
def trained(graph_files, tmp_path_factory):
    folder, _ = graph_files
    run_dir = tmp_path_factory.mktemp("link-run") / "run"
    code, out, err = cli(*tiny_flags(folder, run_dir, "--epochs", "12"))
    assert code == 0, err
    return run_dir, out


def test_ranks_and_metrics_on_hand_made_scores():
    pos = torch.tensor([5.0, 1.0, 2.0, 0.0])
    neg = torch.tensor([[1.0, 2.0, 3.0],       # best: rank 1
                        [2.0, 3.0, 4.0],       # worst: rank 4
                        [2.0, 2.0, 1.0],       # two ties: 1 + 0 + 2/2 = 2
                        [1.0, -1.0, 0.0]])     # one above, one tie: 1 + 1 + 1/2 = 2.5
    assert ranks(pos, neg).tolist() == [1.0, 4.0, 2.0, 2.5]
    m = ranking_metrics(pos, neg, hits_at=(1, 2, 3))
    assert m["mrr"] == pytest.approx((1 + 1 / 4 + 1 / 2 + 1 / 2.5) / 4)
    assert (m["hits@1"], m["hits@2"], m["hits@3"]) == (0.25, 0.5, 0.75)
    assert random_mrr(1) == pytest.approx(0.75)         # (1 + 1/2) / 2
    # a random scorer's MRR is H(K+1)/(K+1)
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(20000, 11, generator=g)
    got = ranking_metrics(scores[:, 0], scores[:, 1:])["mrr"]
    assert got == pytest.approx(random_mrr(10), abs=0.01)


def test_split_groups_pairs_and_holds_out_their_edges():
    # 0-1 listed both ways, 1-2 twice, a self-loop 3-3, and a path of pairs
    src = torch.tensor([0, 1, 1, 2, 1, 3, 3, 4, 5, 6, 7, 8])
    dst = torch.tensor([1, 0, 2, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    cfg = LinkDataConfig(edges="x", valid_fraction=0.25, test_fraction=0.25, split_seed=1)
    parts, links = split_links(src, dst, torch.arange(src.numel()), 10, cfg)
    assert parts[5] == link_mod.MESSAGE                       # the self-loop carries messages
    pairs = {p: {tuple(sorted(l)) for l in links[p].t().tolist()} for p in links}
    assert sum(len(v) for v in pairs.values()) == 8          # 8 distinct pairs, each once
    assert len(pairs["test"]) == 2 and len(pairs["valid"]) == 2
    for part, code in (("valid", link_mod.VALID), ("test", link_mod.TEST)):
        for e in range(src.numel()):    # every edge of a held-out pair is held out with it
            pair = tuple(sorted((int(src[e]), int(dst[e]))))
            assert (pair in pairs[part]) == (int(parts[e]) == code)
    # a link runs as its pair's first edge: 1 -> 2 (edge 2), 0 -> 1 (edge 0)
    everything = {tuple(l) for p in links for l in links[p].t().tolist()}
    assert (0, 1) in everything and (1, 2) in everything
    # the same edges in another order split alike (a graph on disk is in CSC order)
    perm = torch.randperm(src.numel(), generator=torch.Generator().manual_seed(3))
    parts2, links2 = split_links(src[perm], dst[perm], perm, 10, cfg)
    assert torch.equal(parts2, parts[perm])
    assert all(torch.equal(links[p], links2[p]) for p in links)


def test_training_beats_a_random_ranking(trained):
    run_dir, out = trained
    for name in ("config.json", "metrics.csv", "metrics.json", "last.pt", "best.pt",
                 "summary.json", "learning_curve.png"):
        assert (run_dir / name).is_file(), name
    assert re.search(r"^graph: 240 nodes, 1920 edges; links train \d+, valid \d+, test \d+; "
                     r"1 negative\(s\) per training link, 100 per evaluated link", out, re.M), out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["random_mrr"] == pytest.approx(random_mrr(100))   # ~0.051
    # 8 communities: knowing the community alone gives an MRR near 0.2
    assert summary["valid_mrr"] > 1.8 * summary["random_mrr"], summary
    assert summary["test_mrr"] > 1.8 * summary["random_mrr"], summary
    assert summary["test_hits@10"] > 0.2 and summary["test_hits@50"] > 0.6, summary
    history = json.loads((run_dir / "metrics.json").read_text())
    assert [row["epoch"] for row in history] == list(range(1, 13))
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert {"valid_hits@1", "valid_hits@10", "valid_hits@50", "test_mrr"} <= set(history[0])


def test_evaluate_repeats_the_runs_best_scores(trained):
    run_dir, _ = trained
    summary = json.loads((run_dir / "summary.json").read_text())
    code, out, err = cli("link", "evaluate", run_dir / "best.pt")
    assert code == 0, err
    for key in ("valid_mrr", "valid_hits@10", "test_mrr", "test_hits@50"):
        assert f"{key}: {summary[key]:.4f}" in out, (key, out)


def test_one_negative_a_link_is_ranked_against_its_own(graph_files, tmp_path, monkeypatch):
    """With ``--eval-negatives 1`` PyG's triplet sampling gives the negatives
    as ``[B]``, not ``[B, 1]``: each positive was ranked against the negatives
    of its whole evaluation batch ([B, B] scores; Hits@1 0 whatever the
    model)."""
    from graphformer.models.link_predictor import LinkPredictor, LinkPredictorConfig
    from graphformer.models.node_transformer import NodeTransformerConfig

    folder, _ = graph_files
    enc = NodeTransformerConfig(in_channels=1, num_classes=1, hidden=8, layers=1, heads=1,
                                dropout=0.0)
    cfg = link_mod.LinkRunConfig(
        LinkDataConfig(edges=str(folder / "edges.txt"), node_features=str(folder / "x.csv")),
        LinkPredictorConfig(enc, "dot"),
        link_mod.LinkTrainConfig(epochs=1, batch_size=64, eval_batch_size=16, eval_negatives=1,
                                 num_neighbors=[5], device="cpu"))
    graph = load_link_graph(cfg.data)
    cfg = link_mod.replace(cfg, model=link_mod._model_config(cfg, graph))
    torch.manual_seed(0)
    model = link_mod._build(cfg, graph, torch.device("cpu"))
    shapes = []

    def spy(pos, neg):
        shapes.append((pos.numel(), tuple(neg.shape)))
        return ranks(pos, neg)

    monkeypatch.setattr(link_mod, "ranks", spy)
    scores = link_mod.evaluate_parts(model, graph, cfg, torch.device("cpu"), parts=("valid",))
    assert shapes and all(neg == (b, 1) for b, neg in shapes), shapes
    assert max(b for b, _ in shapes) == 16
    assert scores["valid_hits@1"] > 0
    # the scorer itself: [B] negatives are one a link
    predictor = LinkPredictor(LinkPredictorConfig(enc, "dot"), num_nodes=6)
    h = torch.randn(6, 8)
    src, pos, neg = torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5]), torch.tensor([5, 3, 4])
    flat = predictor.score_triplets(h, src, pos, neg)[1]
    assert flat.shape == (3, 1)
    assert torch.equal(flat, predictor.score_triplets(h, src, pos, neg[:, None])[1])
    with pytest.raises(ValueError, match=r"'dst_neg' must be \[B, K\] or \[B\] with B = 3"):
        predictor.score_triplets(h, src, pos, neg[:2])


def test_predict_writes_the_listed_links_by_their_ids(trained, graph_files, tmp_path):
    run_dir, _ = trained
    _, labels = graph_files
    same = [(a, b) for a in range(N) for b in range(a + 1, N) if labels[a] == labels[b]][:40]
    other = [(a, b) for a in range(N) for b in range(a + 1, N) if labels[a] != labels[b]][:40]
    listed = same + other
    (tmp_path / "links.txt").write_text("# source target\n" + "".join(
        f"v{a}{',' if k % 2 else ' '}v{b}\n" for k, (a, b) in enumerate(listed)))
    code, out, err = cli("link", "predict", run_dir / "best.pt", tmp_path / "links.txt",
                         "-o", tmp_path / "p.csv", "--quiet")
    assert code == 0, err
    assert f"wrote scores for {len(listed)} links" in out
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert [(r["source"], r["target"]) for r in rows] == [(f"v{a}", f"v{b}") for a, b in listed]
    for r in rows:
        assert float(r["probability"]) == pytest.approx(1 / (1 + np.exp(-float(r["score"]))),
                                                        rel=1e-4)
    # links inside a community score higher than links across
    scores = [float(r["score"]) for r in rows]
    assert np.mean(scores[:40]) > np.mean(scores[40:])


def test_node_index_reads_ids_as_the_edge_list_format_does():
    """Integer ids are ASCII digits with an optional sign (Python's int would
    take '1_0' as 10 and other scripts' digits); text ids match their exact
    text ('007' is not node '7'); integer ids beyond int64 compare by value."""
    from graphformer.train.link import NodeIndex

    by_range = NodeIndex(None, 40)
    assert [by_range.find(t) for t in ("10", "+10", "010", "1_0", "\u0663" "0", "40")] == \
        [10, 10, 10, None, None, None]
    by_value = NodeIndex(torch.tensor([5, -3, 70]), 3)
    assert [by_value.find(t) for t in ("-3", "070", "7_0", "x")] == [1, 2, None, None]
    by_text = NodeIndex(["7", "a", "0x"], 3)
    assert [by_text.find(t) for t in ("7", "007", "+7", "a", "0x")] == [0, None, None, 1, 2]
    huge = NodeIndex([2 ** 70, 3], 2)
    assert [huge.find(t) for t in (str(2 ** 70), "+3", "0003", "3_")] == [0, 1, 1, None]


def test_predict_refuses_an_unknown_id_naming_its_line(trained, tmp_path):
    run_dir, _ = trained
    (tmp_path / "links.txt").write_text("v1 v2\n\nv3 nobody\n")
    refused(cli("link", "predict", run_dir / "best.pt", tmp_path / "links.txt", "-o",
                tmp_path / "p.csv"), 1, "links.txt, line 3: unknown node id 'nobody'")
    assert not (tmp_path / "p.csv").exists()
    (tmp_path / "links.txt").write_text("v1 v2 v3\n")
    refused(cli("link", "predict", run_dir / "best.pt", tmp_path / "links.txt", "-o",
                tmp_path / "p.csv"), 1, "line 1: expected 'source target'")


def test_a_resumed_run_repeats_the_uninterrupted_one(graph_files, tmp_path, monkeypatch):
    folder, _ = graph_files
    code, _, err = cli(*tiny_flags(folder, tmp_path / "whole", "--negatives", "2"))
    assert code == 0, err
    real = interrupt_on_call(monkeypatch, link_mod, "evaluate_parts", 3)     # in epoch 3
    assert cli(*tiny_flags(folder, tmp_path / "cut", "--negatives", "2"))[0] == 130
    assert json.loads((tmp_path / "cut" / "metrics.json").read_text())[-1]["epoch"] == 2
    monkeypatch.setattr(link_mod, "evaluate_parts", real)
    code, _, err = cli("link", "train", "--resume", tmp_path / "cut", "--quiet")
    assert code == 0, err

    def scores(run):
        rows = json.loads((tmp_path / run / "metrics.json").read_text())
        return [{k: v for k, v in row.items() if k != "links_per_s"} for row in rows]

    assert scores("cut") == scores("whole")
    whole = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)["model"]
    cut = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(whole[k], cut[k]) for k in whole)


def test_a_converted_graph_trains_as_the_files_do(graph_files, tmp_path):
    """The same run from the edge list in memory and from the graph converted
    to disk (memory-mapped, each part's graph a CSC): the same split, scores
    and weights, without features (an embedding per node) and with the MLP."""
    folder, _ = graph_files
    convert_edge_list(folder / "edges.txt", tmp_path / "g")
    memory = load_link_graph(LinkDataConfig(edges=str(folder / "edges.txt")))
    disk = load_link_graph(LinkDataConfig(graph=str(tmp_path / "g")))
    assert all(torch.equal(memory.links[p], disk.links[p]) for p in memory.links)
    extra = ("--score", "mlp", "--epochs", "2")
    assert cli(*tiny_flags(folder, tmp_path / "files", *extra, features=False))[0] == 0
    flags = tiny_flags(folder, tmp_path / "disk", *extra, features=False)
    i = flags.index("--edges")
    del flags[i:i + 2]
    code, _, err = cli(*flags, "--graph", tmp_path / "g")
    assert code == 0, err
    rows = [json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("files", "disk")]
    strip = [[{k: v for k, v in r.items() if k != "links_per_s"} for r in rs] for rs in rows]
    assert strip[0] == strip[1]
    a = torch.load(tmp_path / "files" / "best.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "disk" / "best.pt", weights_only=True)["model"]
    assert "encoder.embedding.weight" in a and "mlp.0.weight" in a
    assert all(torch.equal(a[k], b[k]) for k in a)
    (tmp_path / "links.txt").write_text("v0 v1\nv5\tv7\n")
    outs = []
    for run in ("files", "disk"):
        code, _, err = cli("link", "predict", tmp_path / run / "best.pt", tmp_path / "links.txt",
                           "-o", tmp_path / f"{run}.csv", "--quiet")
        assert code == 0, err
        outs.append((tmp_path / f"{run}.csv").read_text())
    assert outs[0] == outs[1]


@pytest.mark.parametrize("extra,flag", [
    (["--num-neighbors", "5", "0"], "--num-neighbors must hold one fan-out per hop"),
    (["--val-fraction", "0.5", "--test-fraction", "0.5"], "--val-fraction plus test_fraction"),
    (["--test-fraction", "0"], "--test-fraction must be > 0"),
    (["--disjoint-train-ratio", "1"], "--disjoint-train-ratio must be >= 0 and < 1"),
    (["--negatives", "0"], "--negatives must be >= 1"),
    (["--eval-negatives", "-3"], "--eval-negatives must be >= 1"),
    (["--graph", "somewhere"], "--edges must be given (an edge-list file) unless"),
])
def test_bad_settings_name_their_flag(graph_files, tmp_path, extra, flag):
    folder, _ = graph_files
    refused(cli(*tiny_flags(folder, tmp_path / "run", *extra)), 2, flag)
    assert not (tmp_path / "run").exists()


def test_other_commands_refuse_a_link_checkpoint_by_name(trained, tmp_path):
    run_dir, _ = trained
    refused(cli("evaluate", run_dir / "best.pt"), 1, "link-prediction run",
            "graphformer link evaluate")
    (tmp_path / "m.csv").write_text("smiles\nCCO\n")
    refused(cli("predict", run_dir / "best.pt", tmp_path / "m.csv", "-o", tmp_path / "o.csv"),
            1, "link-prediction run", "graphformer link predict")
    refused(cli("node", "evaluate", run_dir / "best.pt"), 1, "link-prediction run",
            "graphformer link evaluate")


def test_link_commands_refuse_other_checkpoints_by_name(tmp_path):
    from graphformer.train.checkpoint import save_checkpoint

    save_checkpoint({"kind": "node-classification", "config": {}}, tmp_path / "node.pt")
    refused(cli("link", "evaluate", tmp_path / "node.pt"), 1, "node-classification run",
            "graphformer node evaluate")
    save_checkpoint({"config": {}}, tmp_path / "mol.pt")
    refused(cli("link", "evaluate", tmp_path / "mol.pt"), 1, "molecule model",
            "graphformer evaluate")


def test_a_tiny_graph_with_an_empty_part_is_refused(tmp_path):
    (tmp_path / "edges.txt").write_text("a b\nb c\n")
    refused(cli(*tiny_flags(tmp_path, tmp_path / "run", features=False)), 1,
            "the valid part of the link split is empty (2 links")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_torchrun_two_processes(graph_files, tmp_path):
    """The README's ``torchrun --standalone --nproc-per-node 2 -m graphformer
    link train ...`` on CPU (gloo): rank 0 alone reports and writes, and the
    loss is the two processes' mean (``test_link_ddp.py``: exactly one
    process's with the combined batch)."""
    import os
    import subprocess
    import sys

    folder, _ = graph_files
    flags = [str(f) for f in tiny_flags(folder, tmp_path / "run", "--epochs", "1")]
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "graphformer", *flags], capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-8000:]
    assert result.stdout.count("run directory: ") == 1, result.stdout   # rank 0 alone
    assert "batches of 128 links per process, 2 processes" in result.stdout
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [row["epoch"] for row in history] == [1]
    assert 0.3 < history[0]["train_loss"] < 3 and 0 < history[0]["valid_mrr"] <= 1
