"""scripts/graph_stats.py and scripts/node_classification.py on a real graph
in real files: Zachary's karate club (bundled with PyG, no download) written
as a SNAP edge list, a node-feature CSV and a node-label CSV with
non-contiguous node ids and string community names."""
import os
import re
import subprocess
import sys
from collections import deque
from pathlib import Path

import pytest
import torch
from torch_geometric.data import Data
from torch_geometric.datasets import KarateClub

from graphformer.data.edge_list import read_edge_list, write_edge_list
from tests.helpers import load_script

ROOT = Path(__file__).resolve().parents[1]
N, E = 34, 156
H, C = 8, 32  # graph_stats' default heads and channels per head


def node_id(k: int) -> int:
    return 100 + 7 * k


@pytest.fixture(scope="module")
def karate():
    return KarateClub()[0]


@pytest.fixture(scope="module")
def files(karate, tmp_path_factory):
    """edges.txt (SNAP: whitespace, '#' comments), features.csv (node_id,f0..f33)
    and labels.csv (node_id,label), node rows in a shuffled order."""
    root = tmp_path_factory.mktemp("karate")
    ids = torch.tensor([node_id(k) for k in range(N)])
    write_edge_list(Data(edge_index=karate.edge_index, num_nodes=N, node_ids=ids),
                    root / "body.txt", header=False)
    (root / "edges.txt").write_text("# Zachary's karate club (PyG KarateClub)\n"
                                    "# FromNodeId\tToNodeId\n" + (root / "body.txt").read_text())
    order = torch.randperm(N, generator=torch.Generator().manual_seed(1)).tolist()
    features = ["node_id," + ",".join(f"f{c}" for c in range(karate.x.size(1)))]
    features += [f"{node_id(k)}," + ",".join(f"{v:g}" for v in karate.x[k].tolist()) for k in order]
    (root / "features.csv").write_text("\n".join(features) + "\n")
    labels = ["node_id,label"] + [f"{node_id(k)},community_{int(karate.y[k])}" for k in order[::-1]]
    (root / "labels.csv").write_text("\n".join(labels) + "\n")
    return root


def _run(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, *map(str, args)], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture(scope="module", autouse=True)
def started(files):
    """Both scripts, started together before this module's first test (each
    spends most of its time importing torch); the in-process tests run meanwhile."""
    stats = _run("scripts/graph_stats.py", "--edges", files / "edges.txt", "--k", "1", "2", "3")
    train = _run("scripts/node_classification.py", "--edges", files / "edges.txt",
                 "--node-features", files / "features.csv", "--node-labels", files / "labels.csv",
                 "--patterns", "graph", "--epochs", "60", "--hidden", "32", "--log-every", "20",
                 "--seed", "0", "--run-dir", files / "run", "--quiet")
    yield {"stats": stats, "train": train}
    for proc in (stats, train):
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.fixture(scope="module")
def outputs(started):
    results = {}
    for name, proc in started.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name} failed:\n{out}\n{err}"
        results[name] = out
    return results


def _value(pattern, text):
    match = re.search(pattern, text, re.M)
    assert match, f"no line matching {pattern!r} in:\n{text}"
    return match.group(1)


def _reach_pairs(edge_index, n, k):
    """Pairs (j, i), j != i, with a directed path j -> i of 1..k edges (BFS)."""
    out = [[] for _ in range(n)]
    for j, i in edge_index.t().tolist():
        out[j].append(i)
    count = 0
    for start in range(n):
        dist = {start: 0}
        queue = deque([start])
        while queue:
            v = queue.popleft()
            if dist[v] == k:
                continue
            for w in out[v]:
                if w not in dist:
                    dist[w] = dist[v] + 1
                    queue.append(w)
        count += len(dist) - 1
    return count


def _mib(num_edges):
    scores_and_weights = 2 * num_edges * H * 4
    messages = num_edges * H * C * 4
    return f"{(scores_and_weights + messages) / 2 ** 20:.3f}"


def test_the_files_hold_karate(files, karate):
    data = read_edge_list(files / "edges.txt", node_features=files / "features.csv",
                          node_labels=files / "labels.csv")
    assert (files / "edges.txt").read_text().startswith("# Zachary")
    original = (data.node_ids - 100) // 7  # node k of the file is karate node original[k]
    assert sorted(original.tolist()) == list(range(N)) and not torch.equal(original, torch.arange(N))
    assert {tuple(e) for e in original[data.edge_index].t().tolist()} == {
        tuple(e) for e in karate.edge_index.t().tolist()}
    assert torch.equal(data.x, karate.x[original])
    assert data.label_names == ["community_0", "community_1", "community_2", "community_3"]
    assert torch.equal(data.y, karate.y[original])


def test_node_classification_without_features_and_all_patterns(files, capsys, one_thread):
    script = load_script("node_classification")
    assert script.main(["--edges", str(files / "edges.txt"), "--node-labels",
                        str(files / "labels.csv"), "--patterns", "graph", "k_hop", "random",
                        "--k", "2", "--random-keys", "4", "--epochs", "5", "--hidden", "16",
                        "--layers", "1", "--log-every", "5", "--batch-size", "8",
                        "--num-neighbors", "4", "4", "--run-dir", str(files / "run-nf"),
                        "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "no --node-features: every node gets a learnable embedding of size 16" in out
    assert "mini-batches: 8 seed nodes, fan-outs [4, 4] per hop" in out
    assert re.findall(r"^epoch\s+(\d+)\s+loss", out, re.M) == ["5"]
    assert re.search(r"^test accuracy: \d\.\d{4}$", out, re.M)


def test_stratified_split(karate):
    """The script's split, now graphformer.datasets.stratified_split."""
    from graphformer.datasets import stratified_split

    def masks(seed):
        split = stratified_split(karate.y, 0.6, 0.2, seed=seed)
        out = [torch.zeros(N, dtype=torch.bool) for _ in range(3)]
        for m, part in zip(out, ("train", "valid", "test")):
            m[split[part]] = True
        return out

    train, val, test = masks(0)
    assert not bool((train & val).any() | (train & test).any() | (val & test).any())
    assert bool((train | val | test).all())
    per_class = [[int((m & (karate.y == c)).sum()) for c in range(4)] for m in (train, val, test)]
    # class sizes 13, 12, 4, 5: round(0.6 n) train, round(0.2 n) val, the rest test
    assert per_class == [[8, 7, 2, 3], [3, 2, 1, 1], [2, 3, 1, 1]]
    assert all(torch.equal(a, b) for a, b in zip((train, val, test), masks(0)))
    assert not torch.equal(train, masks(1)[0])
    with pytest.raises(ValueError, match="their sum < 1"):
        stratified_split(karate.y, 0.8, 0.2, seed=0)


def test_graph_stats_undirected_small_graph(tmp_path, capsys):
    """Two components, a self-loop-only node, a duplicate edge, a one-way edge."""
    (tmp_path / "g.csv").write_text("src,dst\na,b\nb,c\na,b\nc,a\nx,y\nz,z\n")
    script = load_script("graph_stats")
    assert script.main(["--edges", str(tmp_path / "g.csv"), "--header", "--undirected", "--k", "1",
                        "--random-keys", "2", "--heads", "2", "--head-channels", "4"]) == 0
    out = capsys.readouterr().out
    assert "nodes: 6\nedges: 6\ndistinct edges: 5\nself-loops: 1\n" in out
    assert "isolated nodes: 1 " in out  # z: only its self loop
    assert "reciprocated edges: 0 of 4" in out
    # symmetrised: a-b, b-c, c-a, x-y both ways (8) + z-z
    assert "--undirected: 9 directed edges after symmetrising (4 node pairs, 1 self-loops)" in out
    assert "degree: min 0, mean 1.3333, max 2" in out
    assert _value(r"^weakly connected components: (\d+)", out) == "3"
    rows = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\S+)\s+(\d+)\s+[\d.]+\s", out, re.M)}
    assert rows == {"graph": 9, "graph+self": 14, "k_hop(k=1)": 8, "random(k=2)": 12,
                    "global(1/component)": 2 * 6 + 3, "graph+self+global": 29, "full": 36}
    assert "E*H*(8 + 4*C) B = E * 48 B" in out


def test_graph_stats_counts(outputs, karate):
    out = outputs["stats"]
    assert _value(r"^nodes: (\d+)$", out) == "34"
    assert _value(r"^edges: (\d+)$", out) == "156"
    assert _value(r"^distinct edges: (\d+)$", out) == "156"
    assert _value(r"^self-loops: (\d+)$", out) == "0"
    assert _value(r"^isolated nodes: (\d+)", out) == "0"
    assert _value(r"^weakly connected components: (\d+)", out) == "1"
    assert _value(r"^reciprocated edges: (\d+) of 156", out) == "156"
    degree = torch.bincount(karate.edge_index[0], minlength=N)
    assert _value(r"^out-degree: (.*) \(", out) == (
        f"min {int(degree.min())}, mean {E / N:.4f}, max {int(degree.max())}")
    assert "min 1, mean 4.5882, max 17" in out

    rows = {m.group(1): m.groups()[1:] for m in re.finditer(
        r"^(\S+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s", out, re.M)}
    expected = {
        "graph": E,
        "graph+self": E + N,
        "k_hop(k=1)": _reach_pairs(karate.edge_index, N, 1),
        "k_hop(k=2)": _reach_pairs(karate.edge_index, N, 2),
        "k_hop(k=3)": _reach_pairs(karate.edge_index, N, 3),
        "random(k=8)": N * 8,
        "global(1/component)": 2 * N + 1,  # token <-> 34 nodes, plus token -> token
        "graph+self+global": E + N + 2 * N + 1,
        "full": N * N,
    }
    assert expected["k_hop(k=1)"] == E and expected["full"] == 1156
    assert set(rows) == set(expected), out
    for name, count in expected.items():
        edges, per_node, naive, _ = rows[name]
        assert int(edges) == count, (name, edges, count)
        assert per_node == f"{count / N:.2f}"
        assert naive == _mib(count), name
    assert rows["full"][2] == "1.199"  # 1156 * 8 * (8 + 4 * 32) B
    assert "E*H*(8 + 4*C) B = E * 1088 B" in out


def test_node_classification_beats_the_majority_baseline(outputs, files):
    out = outputs["train"]
    assert ("graph: 34 nodes, 156 edges, 4 classes (community_0: 13, community_1: 12, "
            "community_2: 4, community_3: 5)") in out
    assert "split (seed 0, stratified): 20 train, 7 val, 7 test nodes" in out
    assert "node features: 34 per node" in out
    assert "mini-batches: 512 seed nodes, fan-outs [10, 10] per hop" in out
    assert f"run directory: {files / 'run'}" in out and (files / "run" / "best.pt").is_file()
    epochs = [int(e) for e in re.findall(r"^epoch\s+(\d+)\s+loss", out, re.M)]
    assert epochs == [20, 40, 60]
    best = int(_value(r"best epoch (\d+)", out))
    assert 1 <= best <= 60
    test_acc = float(_value(r"^test accuracy: (\d\.\d{4})$", out))
    baseline = float(_value(r"^majority-class baseline: (\d\.\d{4})", out))
    assert baseline == pytest.approx(2 / 7, abs=1e-4)  # community_0: 2 of the 7 test nodes
    assert test_acc > baseline + 0.2, out
    assert test_acc * 7 == pytest.approx(round(test_acc * 7), abs=1e-3)  # k of 7 nodes
    assert float(_value(r"^train accuracy: (\d\.\d{4})$", out)) >= 0.9
