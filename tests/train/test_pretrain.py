"""Pre-training (``graphformer pretrain``) and starting from it (``--init``)."""
import gzip
import json
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch
from rdkit import Chem
from rdkit.Chem import Crippen, Descriptors, Lipinski, rdMolDescriptors
from torch_geometric.data import Batch

import graphformer.train.pretrain as pretrain_module
from graphformer.data import from_smiles
from graphformer.data.pretrain_targets import descriptor_names
from graphformer.datasets.corpus import PretrainCorpus, corpus_source, read_smiles
from graphformer.models import GraphTransformer, GraphTransformerConfig
from graphformer.models.pretrain import NUM_ATOM_CLASSES, PretrainModel, mask_atoms, \
    pretrain_losses
from graphformer.train import CheckpointError, load_checkpoint, train
from graphformer.train.config import TrainConfig
from graphformer.train.init import export_checkpoint, init_trunk
from graphformer.train.pretrain import (CorpusConfig, PretrainConfig, descriptor_stats,
                                        normalise_descriptors, pretrain)
from tests.train.conftest import BAD_ROW, tiny_config

def tiny(csv, root, **train):
    return PretrainConfig(
        data=CorpusConfig(smiles=str(csv), root=str(root), valid_fraction=0.2),
        model=GraphTransformerConfig(hidden=16, layers=1, heads=2, rwse_steps=4),
        train=TrainConfig(**{"epochs": 2, "batch_size": 8, "warmup_epochs": 1, "threads": 1,
                             "ensemble": 1, **train}))


def history(run_dir):
    rows = json.loads((run_dir / "metrics.json").read_text())
    for row in rows:
        row.pop("seconds")
    return rows


def test_a_run_writes_checkpoints_metrics_and_reports_bad_smiles(tmp_path, corpus_csv, capsys):
    summary = pretrain(tiny(corpus_csv, tmp_path / "cache", epochs=1), tmp_path / "run")
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir() if p.name != "tensorboard") == [
        ".graphformer-run.json", ".graphformer.lock",  # the manifest, the lock
        "best.pt", "config.json", "last.pt", "metrics.csv", "metrics.json", "summary.json"]
    rows = history(run)
    assert [r["epoch"] for r in rows] == [1]
    assert rows[0]["valid_loss"] == pytest.approx(rows[0]["valid_atom_loss"]
                                                  + rows[0]["valid_descriptor_loss"])
    assert 0.0 <= rows[0]["valid_atom_accuracy"] <= 1.0
    assert summary["molecules"] == 30 and summary["bad_smiles"] == 1
    state = load_checkpoint(run / "last.pt")
    assert state["kind"] == "pretrain" and state["epoch"] == 1
    assert state["corpus"]["bad"] == 1 and state["descriptors"] == list(descriptor_names())
    assert json.loads((run / "config.json").read_text())["model"]["hidden"] == 16
    err = capsys.readouterr().err
    assert "30 of 31 molecules; 1 SMILES did not parse" in err
    assert f"{corpus_csv}, row {BAD_ROW}" in err and "'C1CC('" in err


def test_resume_after_a_crash_gives_the_uninterrupted_run(tmp_path, corpus_csv, monkeypatch):
    cfg = tiny(corpus_csv, tmp_path / "cache", epochs=3)
    pretrain(cfg, tmp_path / "straight", progress=False)

    real = pretrain_module._Pretraining.evaluate
    calls = {"n": 0}

    def crash_in_epoch_2(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated crash")
        return real(self)

    monkeypatch.setattr(pretrain_module._Pretraining, "evaluate", crash_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg, tmp_path / "crashed", progress=False)
    assert load_checkpoint(tmp_path / "crashed" / "last.pt")["epoch"] == 1
    monkeypatch.setattr(pretrain_module._Pretraining, "evaluate", real)
    pretrain(None, tmp_path / "crashed", resume=True, progress=False)

    assert history(tmp_path / "crashed") == history(tmp_path / "straight")
    a = load_checkpoint(tmp_path / "crashed" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_masks_hide_exactly_the_masked_atoms_and_targets_are_their_elements():
    mask = mask_atoms(40, 0.15, torch.Generator().manual_seed(0))
    assert mask.dtype == torch.bool and int(mask.sum()) == 6  # round(0.15 * 40)
    assert torch.equal(mask, mask_atoms(40, 0.15, torch.Generator().manual_seed(0)))
    assert int(mask_atoms(3, 0.15).sum()) == 1  # at least one atom

    smiles = ["OCC(=O)N", "c1ccccc1Cl", "C[Si](C)(C)F"]
    batch = Batch.from_data_list([from_smiles(s) for s in smiles])
    elements = [a.GetAtomicNum() for s in smiles for a in Chem.MolFromSmiles(s).GetAtoms()]
    torch.manual_seed(0)
    model = PretrainModel(GraphTransformerConfig(hidden=16, layers=2, heads=2, rwse_steps=0,
                                                 dropout=0.0), len(descriptor_names())).eval()
    mask = torch.zeros(batch.num_nodes, dtype=torch.bool)
    mask[[1, 11, 13]] = True  # the C of CH2, Cl, Si
    desc = torch.zeros(3, len(descriptor_names()))
    out = pretrain_losses(model, batch, mask, desc)
    logits, _ = model(batch, mask)
    target = torch.tensor([elements[i] - 1 for i in (1, 11, 13)])
    assert target.tolist() == [5, 16, 13] and logits.shape == (3, NUM_ATOM_CLASSES)
    assert out["atom"].item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, target).item())

    # What the model sees of a masked atom does not depend on its features...
    changed = batch.clone()
    changed.x = batch.x.clone()
    changed.x[mask, 0] = 0  # hydrogen
    with torch.no_grad():
        a, da = model(batch, mask)
        b, db = model(changed, mask)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(da, db)
    # ...but it does without the mask.
    with torch.no_grad():
        _, dc = model(changed, torch.zeros_like(mask))
        _, dd = model(batch, torch.zeros_like(mask))
    assert not torch.allclose(dc, dd)


def test_descriptor_targets_are_rdkit_s_values(tmp_path, corpus_csv):
    corpus = PretrainCorpus(corpus_source(corpus_csv), root=tmp_path / "cache", log=False)
    assert len(corpus) == 30 and corpus.total == 31 and corpus.bad == 1
    smiles = [s for s in pd.read_csv(corpus_csv)["smiles"] if s != "C1CC("]
    names = list(descriptor_names())
    reference = {"MolWt": Descriptors.MolWt, "MolLogP": Crippen.MolLogP,
                 "TPSA": rdMolDescriptors.CalcTPSA, "NumHDonors": Lipinski.NumHDonors,
                 "NumRotatableBonds": Descriptors.NumRotatableBonds,
                 "RingCount": Descriptors.RingCount, "FractionCSP3": Descriptors.FractionCSP3,
                 "HeavyAtomCount": Descriptors.HeavyAtomCount}
    for k, s in enumerate(smiles):
        mol = Chem.MolFromSmiles(s)
        for name, fn in reference.items():
            assert corpus.descriptors[k, names.index(name)].item() == pytest.approx(
                fn(mol), rel=1e-6, abs=1e-5), (s, name)
    assert torch.equal(corpus[3].desc, corpus.descriptors[3:4])


def test_descriptor_normalisation_ignores_and_masks_non_finite_values():
    values = torch.tensor([[1.0, float("nan")], [3.0, 2.0], [float("inf"), 4.0], [5.0, 1e9]])
    mean, std = descriptor_stats(values)
    assert mean.tolist() == pytest.approx([3.0, (2 + 4 + 1e9) / 3])
    assert std[0].item() == pytest.approx((8 / 3) ** 0.5)
    out = normalise_descriptors(values, torch.tensor([3.0, 3.0]), torch.tensor([1.0, 1.0]), 10)
    assert out[0, 0].item() == -2.0 and out[3, 1].item() == 10.0  # clipped
    assert torch.isnan(out[0, 1]) and torch.isnan(out[2, 0])
    mean, std = descriptor_stats(torch.full((3, 1), float("nan")))
    assert mean.item() == 0.0 and std.item() == 1.0


def test_a_molsets_wheel_and_a_smi_file_are_read(tmp_path):
    wheel = tmp_path / "molsets-0.3.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("moses/dataset/data/train.csv.gz", gzip.compress(b"SMILES\nCCO\nc1ccccc1\nCN\n"))
    source = corpus_source(wheel)
    assert read_smiles(source) == [(1, "CCO"), (2, "c1ccccc1"), (3, "CN")]
    assert read_smiles(source, limit=2) == [(1, "CCO"), (2, "c1ccccc1")]
    smi = tmp_path / "mols.smi"
    smi.write_text("CCO ethanol\n\nCN\tmethylamine\n")
    assert read_smiles(corpus_source(smi)) == [(1, "CCO"), (3, "CN")]


def test_train_init_loads_the_trunk_exactly_and_records_it(tmp_path, corpus_csv, tiny_csv):
    pretrain(tiny(corpus_csv, tmp_path / "cache", epochs=1), tmp_path / "pre", progress=False)
    ckpt = tmp_path / "pre" / "best.pt"
    saved = load_checkpoint(ckpt)["model"]
    cfg = GraphTransformerConfig(hidden=16, layers=1, heads=2, rwse_steps=4)
    torch.manual_seed(1)
    model = GraphTransformer(cfg)
    head = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("head.")}
    record = init_trunk(model, ckpt)
    state = model.state_dict()
    trunk_keys = [k for k in state if not k.startswith("head.")]
    assert trunk_keys and all(torch.equal(state[k], saved["trunk." + k]) for k in trunk_keys)
    assert all(torch.equal(state[k], v) for k, v in head.items())  # the head is fresh
    assert record["path"] == str(ckpt) and len(record["sha256"]) == 64
    # A slim copy (no optimiser state) starts a model the same way.
    export_checkpoint(ckpt, tmp_path / "slim.pt")
    assert "optimizer" not in load_checkpoint(tmp_path / "slim.pt")
    other = GraphTransformer(cfg)
    init_trunk(other, tmp_path / "slim.pt")
    assert all(torch.equal(other.state_dict()[k], state[k]) for k in trunk_keys)

    run_cfg = tiny_config(tiny_csv, tmp_path / "cache", epochs=1)
    run_cfg.train.init = str(ckpt)
    summary = train(run_cfg, tmp_path / "fine", progress=False)
    assert summary["init"] == record
    assert load_checkpoint(tmp_path / "fine" / "last.pt")["init"] == record
    assert json.loads((tmp_path / "fine" / "config.json").read_text())["train"]["init"] \
        == str(ckpt)


def test_init_from_a_model_of_another_shape_names_the_key(tmp_path, corpus_csv):
    pretrain(tiny(corpus_csv, tmp_path / "cache", epochs=1), tmp_path / "pre", progress=False)
    for change, message in (({"hidden": 32}, "hidden = 16, this run's has 32"),
                            ({"rwse_steps": 8}, "rwse_steps = 4, this run's has 8"),
                            ({"patterns": ("bonds",)}, "patterns = ['bonds', 'full'], this "
                                                       "run's has ['bonds']")):
        cfg = GraphTransformerConfig(**{"hidden": 16, "layers": 1, "heads": 2, "rwse_steps": 4,
                                        **change})
        with pytest.raises(CheckpointError, match=message.replace("[", r"\[").replace("]", r"\]")):
            init_trunk(GraphTransformer(cfg), tmp_path / "pre" / "best.pt")


def _ddp_worker(rank, world, store, csv, root, run_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        pretrain(tiny(csv, root, epochs=1), run_dir, progress=False)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_pretrain_and_only_rank_0_writes(tmp_path, corpus_csv):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "store"), corpus_csv, tmp_path / "cache",
                                tmp_path / "ddp"), nprocs=2, join=True)
    pretrain(tiny(corpus_csv, tmp_path / "cache", epochs=1), tmp_path / "one", progress=False)
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == \
        sorted(p.name for p in (tmp_path / "one").iterdir())
    ddp, one = history(tmp_path / "ddp"), history(tmp_path / "one")
    assert len(ddp) == 1 and list(ddp[0]) == list(one[0])
    assert all(torch.isfinite(torch.tensor(v)) for v in ddp[0].values())
    # the same corpus, split and descriptor statistics; each rank trained on its half
    a = load_checkpoint(tmp_path / "ddp" / "last.pt")
    b = load_checkpoint(tmp_path / "one" / "last.pt")
    assert torch.equal(a["desc_mean"], b["desc_mean"]) and a["corpus"] == b["corpus"]


def test_the_shipped_checkpoint_starts_only_a_matching_model_and_only_when_asked(monkeypatch):
    from graphformer.train import init as init_module

    default = GraphTransformer(GraphTransformerConfig())
    small = GraphTransformer(GraphTransformerConfig(hidden=16, layers=1, heads=2))
    shipped = init_module.default_checkpoint()
    if shipped is not None:  # it fits the default model config
        assert init_module.resolve_init(None, True, default) == shipped
        record = init_trunk(GraphTransformer(GraphTransformerConfig()), shipped)
        assert len(record["sha256"]) == 64
    assert init_module.resolve_init(None, False, default) is None   # --no-pretrained
    assert init_module.resolve_init(None, True, small) is None      # another size: scratch
    assert init_module.resolve_init("x.pt", False, small) == Path("x.pt")
    monkeypatch.setattr(init_module, "DEFAULT_CHECKPOINT", Path("/no/such.pt"))
    assert init_module.resolve_init(None, True, default) is None


def test_an_ensemble_is_refused_naming_the_real_default():
    """The message put the given count where TrainConfig's default (2) goes."""
    from graphformer.errors import ConfigError
    from graphformer.train.config import TrainConfig
    from graphformer.train.pretrain import PretrainConfig

    with pytest.raises(ConfigError, match=r"TrainConfig's default, 2, is for fine-tuning\), "
                                          r"got 3"):
        PretrainConfig(train=TrainConfig(ensemble=3))
