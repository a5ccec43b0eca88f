"""The molecule features and the attention backend are no longer model
hyper-parameters: the first are arguments of the model (saved beside the
config in a checkpoint), the second a runtime setting (``train.attention_backend``).
Configs and checkpoints of an older graphformer, which held them in their
``model`` section, still load, to the same model and predictions."""
import pytest
import torch

from graphformer.cli.commands import build_parser
from graphformer.cli.train import _FLAGS, check_resume_flags, config_from_args
from graphformer.models import GraphTransformer, GraphTransformerConfig
from graphformer.nn import RelationalAttention
from graphformer.train import RunConfig, load_checkpoint, predict, prepare, save_checkpoint, train
from graphformer.train.checkpoint import load_run, mol_features_of, tensor_checksum
from graphformer.train.init import default_checkpoint, resolve_init
from graphformer.train.pretrain import PretrainConfig
from graphformer.train.run_dir import resume_config
from tests.train.conftest import tiny_config

OLD_MODEL = {"hidden": 16, "heads": 2, "attention_backend": "sparse", "mol_features": 2,
             "mol_feature_names": ["a", "b"]}


def test_an_old_model_section_is_moved():
    cfg = RunConfig.from_dict({"model": OLD_MODEL})
    assert cfg.train.attention_backend == "sparse" and cfg.model.hidden == 16
    assert not {"attention_backend", "mol_features", "mol_feature_names"} & set(
        cfg.model.to_dict())
    # the train section's own setting wins over the old key
    both = RunConfig.from_dict({"model": OLD_MODEL, "train": {"attention_backend": "dense"}})
    assert both.train.attention_backend == "dense"
    with pytest.raises(Exception, match="train.attention_backend"):
        RunConfig.from_dict({"model": {"attention_backend": "quick"}})
    with pytest.raises(TypeError):
        GraphTransformerConfig(attention_backend="sparse")  # type: ignore[call-arg]


def test_a_config_file_with_model_attention_backend_still_works(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("model:\n  hidden: 16\n  heads: 2\n  attention_backend: dense\n")
    parser = build_parser()
    cfg = config_from_args(parser.parse_args(["train", "--config", str(path)]))
    assert cfg.train.attention_backend == "dense" and cfg.model.hidden == 16
    flagged = config_from_args(parser.parse_args(["train", "--config", str(path),
                                                  "--attention-backend", "sparse"]))
    assert flagged.train.attention_backend == "sparse"    # the flag wins
    with pytest.raises(SystemExit):     # argparse names the flag and its choices
        parser.parse_args(["train", "--attention-backend", "quick"])


def test_a_resumed_run_may_change_the_attention_backend(tmp_path):
    args = build_parser().parse_args(["train", "--resume", str(tmp_path),
                                      "--attention-backend", "dense"])
    check_resume_flags(args, _FLAGS)     # not refused
    saved = RunConfig.from_dict({"model": {"hidden": 16, "heads": 2}})
    given = RunConfig.from_dict({"model": {"hidden": 16, "heads": 2},
                                 "train": {"attention_backend": "dense"}})
    assert resume_config(saved, given).train.attention_backend == "dense"


def test_a_resumed_run_takes_every_runtime_setting_given():
    """Each of RUNTIME_KEYS given with --resume is the resumed run's (each
    was listed by hand before, and --member-processes was accepted but
    dropped); the other settings stay the saved ones."""
    from graphformer.train.run_dir import RUNTIME_KEYS

    values = {"device": "cpu", "threads": 3, "attention_backend": "propagate", "compile": True,
              "member_processes": 1, "root": "elsewhere"}
    assert {key for _, key in RUNTIME_KEYS} == set(values)
    # pretrain refuses the train-only settings (compile, member_processes)
    for kind, train_only in ((RunConfig, ()), (PretrainConfig, ("compile", "member_processes"))):
        train = {k: values[k] for s, k in RUNTIME_KEYS if s == "train" and k not in train_only}
        saved = kind.from_dict({"model": {"hidden": 16, "heads": 2}, "train": {"ensemble": 1}})
        given = kind.from_dict({"model": {"hidden": 16, "heads": 2},
                                "train": {"ensemble": 1, **train},
                                "data": {"root": values["root"]}})
        resumed = resume_config(saved, given)
        for section, key in RUNTIME_KEYS:
            expected = values[key] if key not in train_only else getattr(saved.train, key)
            assert getattr(getattr(resumed, section), key) == expected, (kind, key)
        assert resumed.model == saved.model and resumed.train.seed == saved.train.seed
    # each is a flag --resume accepts, the flag of that very setting
    for section, key in RUNTIME_KEYS:
        assert _FLAGS[key] == (section, key)
    args = build_parser().parse_args(["train", "--resume", "run", "--member-processes", "1",
                                      "--compile", "--threads", "3"])
    check_resume_flags(args, _FLAGS)     # not refused


def test_the_backend_is_set_on_every_block_and_changes_no_prediction():
    from torch_geometric.data import Batch

    from graphformer.data import from_smiles

    torch.manual_seed(0)
    cfg = GraphTransformerConfig(hidden=16, layers=2, heads=2, rwse_steps=0)
    model = GraphTransformer(cfg, attention_backend="sparse").eval()
    layers = [m for m in model.modules() if isinstance(m, RelationalAttention)]
    assert len(layers) == 2 and {m.backend for m in layers} == {"sparse"}
    batch = Batch.from_data_list([from_smiles("CCO"), from_smiles("c1ccccc1O")])
    with torch.no_grad():
        sparse = model(batch)
        model.set_attention_backend("dense")
        dense = model(batch)
    assert model.attention_backend == "dense" and {m.backend for m in layers} == {"dense"}
    torch.testing.assert_close(dense, sparse, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="'attention_backend' must be one of"):
        model.set_attention_backend("quick")
    with pytest.raises(ValueError, match="'attention_backend' must be one of"):
        GraphTransformer(cfg, attention_backend="quick")


def old_format(state):
    """``state`` as a graphformer before the move wrote it: the molecule
    features and the attention backend in its config's model section."""
    old = {k: v for k, v in state.items() if k != "mol_feature_names"}
    names = state["mol_feature_names"]
    train = {k: v for k, v in state["config"]["train"].items() if k != "attention_backend"}
    old["config"] = {**state["config"], "train": train,
                     "model": {**state["config"]["model"], "attention_backend": "sparse",
                               "mol_features": len(names), "mol_feature_names": names}}
    return old


def test_an_old_format_checkpoint_loads_and_predicts_the_same(tmp_path, tiny_csv):
    cfg = tiny_config(tiny_csv, tmp_path / "cache", epochs=1)
    train(cfg, tmp_path / "run", progress=False)
    new_path, old_path = tmp_path / "run" / "best.pt", tmp_path / "old.pt"
    new = load_checkpoint(new_path)
    assert len(new["mol_feature_names"]) > 0          # rdkit2d, the CSV default
    assert "mol_feature_names" not in new["config"]["model"]
    save_checkpoint(old_format(new), old_path)
    old = load_checkpoint(old_path)
    assert tensor_checksum(old) == tensor_checksum(new)  # the tensors are the same
    assert mol_features_of(old) == mol_features_of(new) == (
        len(new["mol_feature_names"]), tuple(new["mol_feature_names"]))

    _, new_cfg, new_model = load_run(new_path)
    _, old_cfg, old_model = load_run(old_path)
    assert new_cfg.train.attention_backend == "auto" and old_cfg.train.attention_backend == "sparse"
    assert old_cfg.model == new_cfg.model
    assert old_model.mol_feature_names == new_model.mol_feature_names
    assert old_model.attention_backend == "sparse"
    prepared = prepare(new_cfg, log=False)
    batches = list(prepared.eval_batches("test", 16))
    a = predict(new_model, batches, new["y_mean"], new["y_std"], torch.device("cpu"))
    b = predict(old_model, batches, old["y_mean"], old["y_std"], torch.device("cpu"))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(a).all() and a.std() > 0


def test_the_shipped_checkpoint_still_starts_a_default_model():
    shipped = default_checkpoint()
    if shipped is None:
        pytest.skip("no shipped checkpoint in this installation")
    state = load_checkpoint(shipped)
    assert "attention_backend" in state["config"]["model"]      # written before the move
    assert PretrainConfig.from_dict(state["config"]).train.attention_backend == "auto"
    assert resolve_init(None, True, GraphTransformer(GraphTransformerConfig())) == shipped
