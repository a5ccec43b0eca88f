"""Link prediction under 2 processes (gloo, CPU) and in one process with the
combined batch: the same run.

Why the equality is exact (up to the order of float sums):

- the batches: every process shuffles the training links alike (the epoch's
  seed) and takes its slice of every global batch (``rank_seeds``); the
  graph's 132 training links split into 4 global batches of 32 and one of 4,
  each halved evenly, so the one process's batches of 32 are the two
  processes' batches of 16 put together;
- the negatives: a link's negatives are drawn from its id and the epoch's
  seed (``training_negatives``), not from the batch that holds it, so the
  halves carry exactly the combined batch's negatives;
- the states: with every in-edge sampled (fan-out -1) along directed edges
  and as many layers as hops, an endpoint's state depends only on its own
  2-hop in-neighbourhood, which its process's subgraph and the combined
  batch's subgraph both hold whole (and dropout is 0: nothing random is
  drawn);
- the gradient: each process's loss is the mean over its 16 · (1 + 2)
  labelled links, and DDP's average of two such means is the combined mean;
- the evaluation runs whole in every process from the run's seed, as in one
  process.

A run cut in its second epoch and resumed under 2 processes also ends as the
one-process run does."""
import json
import os
from dataclasses import replace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from graphformer.models.link_predictor import LinkPredictorConfig
from graphformer.models.node_transformer import NodeTransformerConfig
from graphformer.train import link as link_mod
from graphformer.train.link import (NEGATIVE_BLOCK, LinkDataConfig, LinkRunConfig,
                                    LinkTrainConfig, load_link_graph, train_links,
                                    training_negatives)
from tests.train.test_node import write_planted_graph

KEYS = ("train_loss", "valid_mrr", "valid_hits@10", "test_mrr", "test_hits@1", "test_hits@50")


class _Cut(Exception):
    """Stops a run in the evaluation of its second epoch (after epoch 1's last.pt)."""


def _config(folder, batch_size):
    data = LinkDataConfig(edges=str(folder / "edges.txt"), node_features=str(folder / "x.csv"))
    encoder = NodeTransformerConfig(in_channels=1, num_classes=1, hidden=16, layers=2, heads=2,
                                    dropout=0.0, patterns=("graph",), undirected=False)
    train = LinkTrainConfig(epochs=2, batch_size=batch_size, eval_batch_size=32,
                            num_neighbors=[-1, -1], negatives=2, eval_negatives=20, lr=0.01,
                            threads=1, device="cpu")
    return LinkRunConfig(data, LinkPredictorConfig(encoder, "mlp"), train)


def _worker(rank, world, store, folder):
    """A run of 2 processes in ``folder/ddp``, and one cut in epoch 2 and
    resumed in ``folder/resumed``."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        train_links(_config(folder, 16), folder / "ddp", progress=False, log=lambda l: None)
        real, calls = link_mod.evaluate_parts, []

        def crash_in_epoch_2(*args, **kwargs):      # in both processes, at the same point
            calls.append(1)
            if len(calls) == 2:
                raise _Cut
            return real(*args, **kwargs)

        link_mod.evaluate_parts = crash_in_epoch_2
        with pytest.raises(_Cut):
            train_links(_config(folder, 16), folder / "resumed", progress=False,
                        log=lambda l: None)
        link_mod.evaluate_parts = real
        train_links(None, folder / "resumed", resume=True, progress=False, log=lambda l: None)
    finally:
        dist.destroy_process_group()


def test_a_links_negatives_depend_on_its_id_and_the_seed_alone():
    ids = torch.tensor([5, NEGATIVE_BLOCK + 3, 0, 2 * NEGATIVE_BLOCK - 1, 17, NEGATIVE_BLOCK])
    whole = training_negatives(ids, 1000, 3, seed=7)
    assert whole.shape == (2, 6, 3)
    assert 0 <= int(whole.min()) and int(whole.max()) < 1000
    for part in (ids[:2], ids[2:], ids.flip(0)):         # another batch, another order
        got = training_negatives(part, 1000, 3, seed=7)
        want = whole[:, [ids.tolist().index(i) for i in part.tolist()]]
        assert torch.equal(got, want)
    assert not torch.equal(training_negatives(ids, 1000, 3, seed=8), whole)
    # uniform over the nodes: 20000 links' sources and targets in 10 bins
    many = training_negatives(torch.arange(20000), 10, 1, seed=0)
    counts = torch.bincount(many.view(-1), minlength=10).double()
    assert float((counts / counts.sum() - 0.1).abs().max()) < 0.01


def test_a_training_batch_is_its_links_and_their_negatives(tmp_path):
    write_planted_graph(tmp_path, n=40, classes=4)
    cfg = _config(tmp_path, 16)
    graph = load_link_graph(cfg.data)
    ids = torch.tensor([3, 1, 4, 0])
    batch = next(iter(link_mod.training_loader(graph, ids, replace(cfg.train, batch_size=4), 9)))
    labelled = batch.n_id[batch.edge_label_index].view(2, 4, 3)
    assert torch.equal(labelled[:, :, 0], graph.links["train"][:, ids])
    assert torch.equal(labelled[:, :, 1:], training_negatives(ids, graph.num_nodes, 2, 9))
    assert batch.edge_label.view(4, 3).tolist() == [[1.0, 0.0, 0.0]] * 4


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_combined_batch(tmp_path):
    write_planted_graph(tmp_path, n=40, classes=4)
    graph = load_link_graph(_config(tmp_path, 32).data)
    assert graph.links["train"].size(1) == 132         # 4 · 32 + 4: every batch halves evenly
    train_links(_config(tmp_path, 32), tmp_path / "single", progress=False, log=lambda l: None)
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), tmp_path), nprocs=2, join=True)
    one = json.loads((tmp_path / "single" / "metrics.json").read_text())
    w1 = torch.load(tmp_path / "single" / "last.pt", weights_only=True)["model"]
    assert one[1]["valid_mrr"] > one[0]["valid_mrr"] or one[1]["train_loss"] < one[0]["train_loss"]
    for run in ("ddp", "resumed"):
        two = json.loads((tmp_path / run / "metrics.json").read_text())
        assert [row["epoch"] for row in two] == [1, 2]
        for a, b in zip(two, one):
            for key in KEYS:
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (run, key)
        w2 = torch.load(tmp_path / run / "last.pt", weights_only=True)["model"]
        assert w2.keys() == w1.keys()
        for k in w1:
            torch.testing.assert_close(w2[k], w1[k], atol=1e-5, rtol=1e-4)
        # only rank 0 wrote: the same files as one process
        assert sorted(os.listdir(tmp_path / run)) == sorted(os.listdir(tmp_path / "single"))
