import pandas as pd
import pytest

from graphformer.datasets.molecules import bundled_dir
from graphformer.train import RunConfig
from graphformer.train.config import DataConfig, TrainConfig
from graphformer.models import GraphTransformerConfig


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory):
    """The first 60 ESOL molecules as a SMILES CSV (column y)."""
    frame = pd.read_csv(bundled_dir() / "ESOL.csv").head(60)
    path = tmp_path_factory.mktemp("data") / "tiny.csv"
    pd.DataFrame({"smiles": frame["smiles"],
                  "y": frame["measured log solubility in mols per litre"]}).to_csv(path, index=False)
    return path


def tiny_config(csv, root, **train):
    """A model and run small enough for a unit test (random split 48/6/6):
    one model, and an ensemble (``ensemble=K``) of graph transformers alone
    unless ``kernel_member`` asks for the fingerprint member (the default,
    ``auto``, is tested in ``test_kernel_member.py``)."""
    return RunConfig(
        data=DataConfig(dataset=str(csv), target_columns=["y"], split="random", root=str(root)),
        model=GraphTransformerConfig(hidden=16, layers=1, heads=2, rwse_steps=4, dropout=0.1),
        train=TrainConfig(**{"epochs": 3, "batch_size": 16, "warmup_epochs": 1, "threads": 1,
                             "ensemble": 1, "kernel_member": "none",
                             **train}),
    )


BAD_ROW = 7  # the row of the unparsable SMILES in corpus_csv


def write_corpus(folder):
    """A pre-training corpus: 30 ESOL SMILES and, at row 7, one that does not
    parse, as ``folder/corpus.csv``."""
    smiles = list(pd.read_csv(bundled_dir() / "ESOL.csv")["smiles"].head(30))
    smiles.insert(BAD_ROW - 1, "C1CC(")
    path = folder / "corpus.csv"
    pd.DataFrame({"smiles": smiles}).to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def corpus_csv(tmp_path_factory):
    """:func:`write_corpus` once per session."""
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def train_until_crash(cfg, run_dir, monkeypatch, evaluation):
    """Train ``cfg`` into ``run_dir`` and crash (KeyboardInterrupt) at the
    ``evaluation``-th call of ``evaluate_split`` (two per epoch: valid, test);
    afterwards ``evaluate_split`` is the real one again."""
    import graphformer.train.loop as loop
    from graphformer.train import train

    calls = {"n": 0}
    real = loop.evaluate_split

    def crash(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == evaluation:
            raise KeyboardInterrupt("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "evaluate_split", crash)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run_dir, progress=False)
    monkeypatch.setattr(loop, "evaluate_split", real)
