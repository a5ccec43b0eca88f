"""Command-line flags are built from the config dataclasses' settings: one
field, one flag, with its type, choices and help from the field."""
import argparse
import dataclasses
from typing import List, Literal, Optional, Tuple

import pytest

from graphformer._settings import setting
from graphformer.cli._config_flags import add_config_flags, config_flags
from graphformer.cli.train import _FLAGS
from graphformer.models.graph_transformer import GraphTransformerConfig
from graphformer.train.config import DataConfig, TrainConfig
from tests.commands import cli, refused


@dataclasses.dataclass
class Example:
    count: int = setting(3, help="how many")
    rate: Optional[float] = setting(None, help="how fast")
    names: List[str] = setting(default_factory=list, help="names", metavar="NAME")
    mode: Literal["a", "b"] = setting("a", help="which mode")
    shape: Tuple[int, ...] = setting((1, 2), help="a shape")
    colour: str = setting("red", choices=("red", "blue"), help="a colour")
    on: bool = setting(True, help="switch")
    derived: int = 0          # no help: no flag


def parse(*argv):
    parser = argparse.ArgumentParser()
    table = add_config_flags(parser, Example, "example")
    return parser, table, parser.parse_args(list(argv))


def test_one_field_is_one_flag_with_its_type_and_choices():
    parser, table, args = parse()
    assert table == {n: ("example", n) for n in ("count", "rate", "names", "mode", "shape",
                                                 "colour", "on")}
    assert all(getattr(args, n) is None for n in table)      # the config's default applies
    _, _, args = parse("--count", "4", "--rate", "0.5", "--names", "x", "y", "--mode", "b",
                       "--shape", "3", "4", "--colour", "blue", "--no-on")
    assert (args.count, args.rate, args.names, args.mode, args.shape, args.colour, args.on) == \
        (4, 0.5, ["x", "y"], "b", [3, 4], "blue", False)
    for bad in (["--count", "x"], ["--mode", "c"], ["--colour", "green"], ["--derived", "1"]):
        with pytest.raises(SystemExit):
            parse(*bad)
    text = parser.format_help()
    assert "--names NAME [NAME ...]" in text and "--on, --no-on" in text and "how fast" in text


def test_a_leave_out_must_name_a_field():
    with pytest.raises(ValueError, match="Example has no field"):
        config_flags(Example, "example", leave_out=("counts",))
    assert "count" not in config_flags(Example, "example", leave_out=("count",))


def test_train_has_a_flag_for_every_setting_and_none_for_derived_fields():
    expected = {f.name for cls in (DataConfig, GraphTransformerConfig, TrainConfig)
                for f in dataclasses.fields(cls) if "help" in f.metadata}
    assert set(_FLAGS) == expected
    # data-derived and fixed fields have no flag
    for name in ("num_tasks", "mol_features", "mol_feature_names", "output", "features"):
        assert name not in _FLAGS
    # the attention backend is a runtime setting of the train section, flag unchanged
    assert _FLAGS["attention_backend"] == ("train", "attention_backend")
    from graphformer.cli.commands import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    out = sub.choices["train"].format_help()
    for name in expected:
        assert f"--{name.replace('_', '-')}" in out, name


def test_a_bad_flag_value_is_named_by_its_flag(tmp_path):
    refused(cli("train", "--batch-size", "0", "--run-dir", tmp_path / "r"), 2,
            "argument --batch-size: must be >= 1, got 0")
    refused(cli("train", "--pretrained", "--ema", "1.5", "--run-dir", tmp_path / "r"), 2,
            "argument --ema: must be in [0, 1)")


def test_pretrain_has_a_flag_for_every_corpus_objective_model_and_shared_training_setting():
    from graphformer.cli.commands import build_parser
    from graphformer.cli.pretrain import _PRETRAIN_FLAGS
    from graphformer.cli.train import TRAIN_ONLY
    from graphformer.train.pretrain import CorpusConfig, ObjectiveConfig

    sections = {"data": CorpusConfig, "objective": ObjectiveConfig,
                "model": GraphTransformerConfig, "train": TrainConfig}
    expected = {(s, f.name) for s, cls in sections.items() for f in dataclasses.fields(cls)
                if "help" in f.metadata and not (s == "train" and f.name in TRAIN_ONLY)}
    assert set(_PRETRAIN_FLAGS.values()) == expected
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    options = {o for a in sub.choices["pretrain"]._actions for o in a.option_strings}
    assert "--descriptor-clip" in options and "--no-edge-update" in options
    assert not {"--ensemble", "--init", "--loss"} & options
