"""Node classification under 2 processes (gloo, CPU) and in one process with
the combined batch: the same run. With every in-edge sampled (fan-out -1)
along directed edges and as many layers as hops, a seed's output depends only
on its own in-neighbourhood, which its process's subgraph and the combined
batch's subgraph both hold whole; DDP's average of the two halves' gradients
is then the gradient of the combined batch."""
import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from graphformer.datasets import stratified_split
from graphformer.models.node_transformer import NodeTransformerConfig
from graphformer.train.node import (NodeDataConfig, NodeRunConfig, NodeTrainConfig,
                                    load_node_graph, rank_seeds, share_weights, train_nodes)
from tests.train.test_node import write_planted_graph


def _config(folder, batch_size):
    data = NodeDataConfig(edges=str(folder / "edges.txt"), node_features=str(folder / "x.csv"),
                          node_labels=str(folder / "y.csv"), train_fraction=0.5,
                          valid_fraction=0.25)
    model = NodeTransformerConfig(in_channels=1, num_classes=1, hidden=16, layers=2, heads=2,
                                  dropout=0.0, patterns=("graph",), undirected=False)
    train = NodeTrainConfig(epochs=2, batch_size=batch_size, num_neighbors=[-1, -1],
                            threads=1, device="cpu")
    return NodeRunConfig(data, model, train)


def _worker(rank, world, store, folder, run_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        train_nodes(_config(folder, 10), run_dir, progress=False, log=lambda line: None)
    finally:
        dist.destroy_process_group()


def test_each_process_takes_its_slice_of_every_global_batch():
    nodes = torch.arange(100, 147)                     # 47 seeds, batches of 5 per process
    one = rank_seeds(nodes, 10, seed=3)
    parts = [rank_seeds(nodes, 5, seed=3, rank=r, world=2) for r in (0, 1)]
    assert sorted(one.tolist()) == nodes.tolist()
    for k in range(4):                                 # global batch k = one's batch k
        together = torch.cat([p[5 * k:5 * k + 5] for p in parts])
        assert torch.equal(together, one[10 * k:10 * k + 10])
    assert torch.equal(torch.cat([parts[0][20:], parts[1][20:]]), one[40:])   # 7 left: 4 + 3
    assert rank_seeds(torch.arange(21), 5, 0, 1, 2).numel() == 10  # 1 left over: dropped
    assert share_weights(47, 5, 0, 2) == [1.0] * 4 + [2 * 4 / 7]
    assert share_weights(47, 5, 1, 2) == [1.0] * 4 + [2 * 3 / 7]
    assert share_weights(21, 5, 1, 2) == [1.0] * 2 and share_weights(47, 10) == [1.0] * 5


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_combined_batch(tmp_path):
    """87 training nodes: four global batches of 20 split evenly, the last, 7
    seeds, splits 4 + 3, each process's loss weighted by its share (DDP's
    plain average of the two means weighed a seed 1/8 or 1/6, not 1/7)."""
    write_planted_graph(tmp_path, n=173)
    train = stratified_split(load_node_graph(_config(tmp_path, 20).data).y, 0.5, 0.25)["train"]
    assert train.numel() % 20 == 7, train.numel()
    train_nodes(_config(tmp_path, 20), tmp_path / "single", progress=False, log=lambda l: None)
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), tmp_path, tmp_path / "ddp"),
             nprocs=2, join=True)
    one = json.loads((tmp_path / "single" / "metrics.json").read_text())
    two = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    for a, b in zip(two, one):
        for key in ("train_loss", "train_accuracy", "valid_accuracy", "test_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), key
    w1 = torch.load(tmp_path / "single" / "last.pt", weights_only=True)["model"]
    w2 = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)["model"]
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], atol=1e-5, rtol=1e-4)
    # only rank 0 wrote: the same files as one process
    assert sorted(os.listdir(tmp_path / "ddp")) == sorted(os.listdir(tmp_path / "single"))
