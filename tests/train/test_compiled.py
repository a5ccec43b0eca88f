"""``graphformer train --compile`` (``train.compile``): the training step
through torch.compile (inductor with its C++ wrapper), on prepared batches."""
import json

import pytest
import torch
from torch._dynamo.utils import compilation_time_metrics, counters

import graphformer.train.loop as loop
from graphformer.errors import UsageError
from graphformer.train import load_checkpoint, resume, train
from graphformer.train.compiled import compile_model, model_input

from .conftest import tiny_config, train_until_crash

pytestmark = pytest.mark.slow   # inductor generates and compiles C++: about 30 s


def _metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


def test_compiled_training_computes_the_eager_run(tmp_path, tiny_csv, monkeypatch):
    """The same seed trains the same model compiled as eager, to float
    rounding (fused kernels reorder sums), each step through the compiled
    module on a prepared batch; the checkpoint holds the model's own keys.
    The compile analyses the step once (its floats specialised up front,
    no second attempt) into a graph AOTAutograd's cache takes (no
    autograd.Function in it), so that a later process compiles it faster."""
    calls = []
    real_step = loop.train_step

    def spy(net, batch, *args, **kwargs):
        calls.append((type(net).__name__, hasattr(batch, "prepared_edges")))
        return real_step(net, batch, *args, **kwargs)

    eager_dir, compiled_dir = tmp_path / "eager", tmp_path / "compiled"
    train(tiny_config(tiny_csv, tmp_path / "root", epochs=2), eager_dir, progress=False)
    monkeypatch.setattr(loop, "train_step", spy)
    bypassed = counters["aot_autograd"]["autograd_cache_bypass"]
    compilation_time_metrics.clear()
    train(tiny_config(tiny_csv, tmp_path / "root", epochs=2, compile=True), compiled_dir,
          progress=False)
    assert calls and set(calls) == {("OptimizedModule", True)}, set(calls)
    attempts = sorted(k for k in compilation_time_metrics if k.startswith("compile_attempt_"))
    assert attempts == ["compile_attempt_0"], attempts
    assert counters["aot_autograd"]["autograd_cache_bypass"] == bypassed
    eager, compiled = _metrics(eager_dir), _metrics(compiled_dir)
    assert len(eager) == len(compiled) == 2
    for a, b in zip(eager, compiled):
        for key in ("train_loss", "valid_rmse", "test_rmse"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), key
    state = load_checkpoint(compiled_dir / "last.pt")
    assert not any("_orig_mod" in k for k in state["model"])
    assert state["config"]["train"]["compile"] is True
    reference = load_checkpoint(eager_dir / "last.pt")["model"]
    for key, value in reference.items():
        torch.testing.assert_close(state["model"][key], value, rtol=1e-3, atol=1e-4)


def test_a_resumed_run_may_turn_compile_on_or_off(tmp_path, tiny_csv, monkeypatch):
    """``compile`` is a runtime setting, as the backend and the threads: a
    run interrupted eagerly resumes compiled (and ends at the
    uninterrupted run's metrics, to float rounding); other settings are
    still refused."""
    cfg = tiny_config(tiny_csv, tmp_path / "root", epochs=2)
    whole = tmp_path / "whole"
    train(cfg, whole, progress=False)
    run_dir = tmp_path / "run"
    train_until_crash(cfg, run_dir, monkeypatch, evaluation=3)   # in epoch 2
    resume(run_dir, tiny_config(tiny_csv, tmp_path / "root", epochs=2, compile=True),
           progress=False)
    ours, ref = _metrics(run_dir), _metrics(whole)
    assert [r["epoch"] for r in ours] == [1, 2]
    assert ours[-1]["test_rmse"] == pytest.approx(ref[-1]["test_rmse"], rel=1e-4)
    assert load_checkpoint(run_dir / "last.pt")["config"]["train"]["compile"] is True


def test_compile_flag_reaches_the_config():
    """``--compile`` on the command line is ``train.compile`` (off without
    it); ``--resume`` accepts it (a runtime flag) and pretrain has no such
    flag."""
    from graphformer.cli.commands import build_parser
    from graphformer.cli.train import RUNTIME_FLAGS, TRAIN_ONLY, config_from_args
    parser = build_parser()
    assert config_from_args(parser.parse_args(["train", "--compile"])).train.compile is True
    assert config_from_args(parser.parse_args(["train"])).train.compile is False
    assert "compile" in RUNTIME_FLAGS and "compile" in TRAIN_ONLY
    with pytest.raises(SystemExit):
        parser.parse_args(["pretrain", "--compile"])


def test_model_input_prepares_graph_transformer_batches_only():
    """A GraphTransformer's batch is prepared (its edge set computed outside
    the compiled code); another model's batch is passed as it is."""
    from torch_geometric.data import Batch

    from graphformer.data import from_smiles
    from graphformer.models import GraphTransformer, GraphTransformerConfig

    batch = Batch.from_data_list([from_smiles("CCO"), from_smiles("c1ccccc1")])
    model = GraphTransformer(GraphTransformerConfig(hidden=16, layers=1, heads=2,
                                                    rwse_steps=0))
    prepared = model_input(model, batch)
    assert prepared is not batch and hasattr(prepared, "prepared_edges")
    assert not hasattr(batch, "prepared_edges")
    other = torch.nn.Linear(2, 2)
    assert model_input(other, batch) is batch
    assert isinstance(compile_model(other), torch._dynamo.eval_frame.OptimizedModule)


def test_a_batch_with_as_many_edge_types_as_atom_features_compiles_one_graph():
    """The first batch has 9 edge types, as many as an atom has features;
    with the batch's feature widths static (``model_input``), dynamo does
    not tie the two sizes together (duck shaping) and specialise the number
    of types to 9: batches with 8 and 5 types run the same graph."""
    from torch_geometric.data import Batch

    from graphformer.data import from_smiles
    from graphformer.models import GraphTransformer, GraphTransformerConfig
    from graphformer.train.compiled import DYNAMO_CONFIG

    graphs = []

    def backend(gm, example_inputs):    # dynamo's graphs, run as they are
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = GraphTransformer(GraphTransformerConfig(hidden=16, layers=1, heads=2,
                                                    rwse_steps=0)).train()
    compiled = torch.compile(model, dynamic=True, backend=backend)
    chain = ["c1ccccc1", "C=CC#N", "C/C=C/C", "F/C=C\\F"]
    types = []
    with torch._dynamo.config.patch(**DYNAMO_CONFIG):
        for smiles in (chain + ["CC=O"], chain, ["CCO", "C=CC#N"]):
            batch = model_input(model, Batch.from_data_list([from_smiles(s) for s in smiles]))
            types.append(batch.prepared_edges.types.size(0))
            compiled(batch).sum().backward()
    assert types == [batch.x.size(1), 8, 5] == [9, 8, 5]
    assert len(graphs) == 1


def test_compile_under_torchrun_is_refused(tmp_path, tiny_csv, monkeypatch):
    """Not supported with DistributedDataParallel yet: a clear error before
    any work, not a silent eager run."""
    import graphformer.train.run as run
    monkeypatch.setattr(run.Processes, "current", classmethod(lambda cls: cls(0, 2)))
    with pytest.raises(UsageError, match="--compile"):
        train(tiny_config(tiny_csv, tmp_path / "root", compile=True), tmp_path / "run",
              progress=False)


def test_pretrain_refuses_compile_by_name():
    """pretrain runs eagerly: a config asking it to compile is refused, not
    silently run eagerly."""
    from graphformer.errors import ConfigError
    from graphformer.train.config import TrainConfig
    from graphformer.train.pretrain import PretrainConfig
    with pytest.raises(ConfigError, match=r"train\.compile.*not used by pretrain"):
        PretrainConfig(train=TrainConfig(compile=True, ensemble=1))
