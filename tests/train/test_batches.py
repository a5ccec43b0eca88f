"""Batches gathered from an in-memory data set's storage against PyG's
DataLoader: the same Batch, attribute by attribute."""
import pytest
import torch
from torch.utils.data import DistributedSampler, Subset
from torch_geometric.data import Batch, Data, InMemoryDataset
from torch_geometric.loader import DataLoader

from graphformer.datasets import load_dataset
from graphformer.train.batches import GraphBatches, batch_loader


class Graphs(InMemoryDataset):
    """Graphs from a list, stored the way PyG stores a processed data set."""

    def __init__(self, graphs, transform=None):
        super().__init__(None, transform)
        self.data, self.slices = self.collate(graphs)


def random_graphs(count=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    graphs = []
    for i in range(count):
        n = int(torch.randint(1, 9, (1,), generator=g))
        m = int(torch.randint(0, 3 * n, (1,), generator=g))
        graphs.append(Data(
            x=torch.randn(n, 3, generator=g),
            edge_index=torch.randint(0, n, (2, m), generator=g),
            edge_attr=torch.randint(0, 5, (m, 2), generator=g),
            pos_index=torch.randint(0, n, (m,), generator=g),   # incremented, 1-D
            y=torch.randn(1, 2, generator=g), label=torch.tensor([i]),
            name=f"graph {i}"))
    return graphs


def assert_same_batch(ours, theirs):
    assert type(ours).__name__ == type(theirs).__name__ == "DataBatch"
    assert set(ours.keys()) == set(theirs.keys())
    for key in theirs.keys():
        a, b = ours[key], theirs[key]
        if isinstance(b, torch.Tensor):
            assert a.dtype == b.dtype and torch.equal(a, b), key
        else:
            assert a == b, key
    assert ours.num_graphs == theirs.num_graphs
    assert ours._slice_dict.keys() == theirs._slice_dict.keys()
    for key, b in theirs._slice_dict.items():
        assert torch.equal(ours._slice_dict[key], b), key
    for key, b in theirs._inc_dict.items():
        a = ours._inc_dict[key]
        assert (a is None and b is None) or torch.equal(a, b), key
    for a, b in zip(ours.to_data_list(), theirs.to_data_list()):
        for key in b.keys():
            assert (torch.equal(a[key], b[key]) if isinstance(b[key], torch.Tensor)
                    else a[key] == b[key]), key


@pytest.mark.parametrize("subset", [False, True])
def test_batches_are_pygs(subset):
    ds = Graphs(random_graphs())
    if subset:
        ds = Subset(ds, [5, 3, 17, 0, 39, 22, 8, 8, 11, 30, 2])
    batches = GraphBatches.of(ds)
    assert batches is not None and len(batches) == len(ds)
    for items in ([0], [1, 0], list(range(len(ds))), [len(ds) - 1, 2, 2, 4]):
        assert_same_batch(batches(items), Batch.from_data_list([ds[i] for i in items]))


def test_a_molecule_set_and_the_loaders_give_the_same_batches(tmp_path):
    bench = load_dataset("freesolv", tmp_path / "cache", log=False)
    train = Subset(bench.dataset, list(range(0, len(bench.dataset), 3)))
    sampler = DistributedSampler(train, num_replicas=1, rank=0, shuffle=True, seed=4)
    sampler.set_epoch(2)
    ours = batch_loader(train, 32, sampler=sampler)
    assert not isinstance(ours, DataLoader)  # the fast path
    theirs = DataLoader(train, batch_size=32, sampler=sampler)
    count = 0
    for a, b in zip(ours, theirs):
        assert_same_batch(a, b)
        count += 1
    assert count == len(theirs) == len(ours)
    evaluation = batch_loader(train, 128)   # in order
    for a, b in zip(evaluation, DataLoader(train, batch_size=128)):
        assert_same_batch(a, b)


def test_what_it_cannot_read_goes_to_pyg():
    graphs = random_graphs(6)
    assert GraphBatches.of(graphs) is None                       # not an InMemoryDataset
    assert GraphBatches.of(Graphs(graphs, transform=lambda d: d)) is None  # run at access

    class Own(Data):
        def __inc__(self, key, value, *args, **kwargs):
            return 0

    assert GraphBatches.of(Graphs([Own(**g.to_dict()) for g in graphs])) is None
    with_batch = [Data(x=g.x, node_batch=torch.zeros(g.num_nodes, dtype=torch.long))
                  for g in graphs]
    assert GraphBatches.of(Graphs(with_batch)) is None
    loader = batch_loader(graphs, 4)
    assert isinstance(loader, DataLoader)
    assert_same_batch(next(iter(loader)), Batch.from_data_list(graphs[:4]))
