"""Bad input, as a careless or hostile user gives it, to the command line (in
process, through ``main(argv)``) and to the public data and config API.

Every case must end in the documented outcome: exit code 2 (usage error) or
1 (data error) with one ``graphformer: error:`` line naming the offending
file, row, key or flag; or the correct result. Never a traceback, never a
destroyed file. Data are tiny (a dozen molecules, one epoch, hidden 8, one
layer), so each training example costs well under a second.
"""
import contextlib
import errno
import io
import json
import math
import os
import shutil
import stat
import subprocess
import sys

import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings, strategies as st

import graphformer.train.loop as loop
from graphformer._files import atomic_write
from graphformer.cli import main
from graphformer.data import from_smiles
from graphformer.datasets import MoleculeCSVDataset, load_dataset, make_split, random_split
from graphformer.datasets.molecules import bundled_dir, read_csv
from graphformer.errors import ConfigError, DataError, UsageError
from graphformer.train import RunConfig, load_checkpoint, read_config_file, train
from graphformer.train.checkpoint import save_checkpoint
from graphformer.train.run_dir import RUN_FILES

SMILES = list(pd.read_csv(bundled_dir() / "ESOL.csv")["smiles"].head(12))
BAD_SMILES = ["C1CC", "xyz", "C(", "c1cccc1X", "C" * 300 + "("]
TINY = ["--epochs", "1", "--hidden", "8", "--layers", "1", "--heads", "2", "--rwse-steps", "0",
        "--threads", "1", "--batch-size", "8", "--quiet", "--ensemble", "1"]
FIXTURE = [HealthCheck.function_scoped_fixture]  # tmp_path is fine: each example writes anew
FEW = settings(max_examples=12, deadline=None, suppress_health_check=[*FIXTURE,
                                                                      HealthCheck.too_slow])


def cli(*argv):
    """``main(argv)`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exit_:  # argparse's own usage errors
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


def assert_error(result, code, *names):
    """Exit ``code``, no traceback, and a ``graphformer`` error line that
    names every one of ``names``."""
    got, _, err = result
    assert got == code, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert lines and lines[0].startswith("graphformer"), err
    for name in names:
        assert str(name) in err, (name, err)


def write_csv(path, rows, header="smiles,y"):
    path.write_text(header + "\n" + "".join(r + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("bad_input")


@pytest.fixture(scope="module")
def data(work):
    y = pd.read_csv(bundled_dir() / "ESOL.csv")["measured log solubility in mols per litre"]
    return write_csv(work / "tiny.csv", [f"{s},{v}" for s, v in zip(SMILES, y)])


def train_args(csv, run_dir, root, *extra):
    return ["train", "--dataset", csv, "--target-columns", "y", "--split", "random",
            "--root", root, "--run-dir", run_dir, *TINY, *extra]


@pytest.fixture(scope="module")
def run(work, data):
    """One finished run (and its data cache) that the tests read, never change."""
    code, _, err = cli(*train_args(data, work / "run", work / "cache"))
    assert code == 0, err
    return work / "run"


# --------------------------------------------------------------------------- config values

INT_KEYS = [("train", k) for k in ("epochs", "batch_size", "warmup_epochs", "seed", "threads")] \
    + [("model", k) for k in ("hidden", "layers", "heads", "k", "rwse_steps", "lap_pe")]
FLOAT_KEYS = [("train", k) for k in ("lr", "weight_decay", "grad_clip", "evidential_lambda")] \
    + [("model", "dropout")]
STR_KEYS = [("data", "dataset"), ("data", "smiles_column"), ("train", "device"),
            ("train", "loss"), ("model", "pooling"), ("train", "attention_backend"),
            ("model", "output")]
BOOL_KEYS = [("model", k) for k in ("edge_update", "norm_first", "self_loops")]
LIST_KEYS = [("data", "target_columns"), ("model", "patterns")]

not_int = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).filter(
        lambda x: not (math.isfinite(x) and x.is_integer())),
    st.booleans(), st.none(), st.lists(st.integers(), max_size=2),
    st.text(max_size=8).filter(lambda t: not t.strip().lstrip("+-").isdigit()),
    st.integers(min_value=2**63, max_value=2**200), st.integers(max_value=-2**63 - 1))
not_float = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, "nan", "inf", "-inf", "1e999", "one", "",
                     "1,5"]),
    st.booleans(), st.none(), st.lists(st.floats(), max_size=2),
    st.text(max_size=8).filter(lambda t: not _is_number(t)))
not_str = st.one_of(st.integers(), st.floats(), st.booleans(), st.none(),
                    st.lists(st.integers(), min_size=1, max_size=2))
not_bool = st.one_of(st.integers(), st.text(max_size=5), st.none(), st.floats())
not_list = st.one_of(st.integers(), st.floats(), st.booleans(),
                     st.lists(st.integers(), min_size=1, max_size=2))


def _is_number(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


bad_config_value = st.one_of(
    st.tuples(st.sampled_from(INT_KEYS), not_int),
    st.tuples(st.sampled_from(FLOAT_KEYS), not_float),
    st.tuples(st.sampled_from(STR_KEYS), not_str),
    st.tuples(st.sampled_from(BOOL_KEYS), not_bool),
    st.tuples(st.sampled_from(LIST_KEYS), not_list))


@given(bad=bad_config_value)
@settings(max_examples=150, deadline=None)
def test_a_config_value_of_the_wrong_type_is_named_by_key(bad):
    (section, key), value = bad
    with pytest.raises(UsageError, match=rf"'{section}\.{key}'") as info:
        RunConfig.from_dict({section: {key: value}})
    assert isinstance(info.value, ConfigError) and (info.value.section, info.value.key) == (
        section, key)


@given(bad=bad_config_value, as_yaml=st.booleans())
@FEW
def test_a_bad_config_file_value_exits_2_naming_file_and_key(tmp_path, bad, as_yaml):
    (section, key), value = bad
    path = tmp_path / ("c.yaml" if as_yaml else "c.json")
    if as_yaml:
        import yaml
        path.write_text(yaml.safe_dump({section: {key: value}}))
    else:
        path.write_text(json.dumps({section: {key: value}}))
    assert_error(cli("train", "--config", path, "--run-dir", tmp_path / "run"), 2,
                 path, f"'{section}.{key}'")
    assert not (tmp_path / "run").exists()


@given(lr=st.floats(min_value=1e-9, max_value=10), epochs=st.integers(1, 10**6),
       patterns=st.sampled_from(["bonds", "full", "k_hop"]))
@settings(max_examples=50, deadline=None)
def test_numbers_as_strings_and_one_pattern_as_a_string_are_accepted(lr, epochs, patterns):
    # YAML 1.1 (PyYAML) reads 1e-3 as a string; whole floats are whole numbers.
    import yaml
    text = f"train:\n  lr: {lr!r}\n  epochs: {float(epochs)!r}\nmodel:\n  patterns: {patterns}\n"
    cfg = RunConfig.from_dict(yaml.safe_load(text))
    assert cfg.train.lr == lr and cfg.train.epochs == epochs and type(cfg.train.epochs) is int
    assert cfg.model.patterns == (patterns,)
    cfg = RunConfig.from_dict({"train": {"lr": str(lr), "epochs": str(epochs)}})
    assert cfg.train.lr == float(str(lr)) and cfg.train.epochs == epochs


@given(doc=st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=6)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.sampled_from(
                                ["data", "model", "train", "epochs", "lr", "hidden",
                                 "dataset", "patterns", "x"]), inner, max_size=3)),
    max_leaves=8))
@settings(max_examples=200, deadline=None)
def test_any_parsed_document_is_a_config_or_a_usage_error(doc):
    try:
        RunConfig.from_dict(doc)
    except UsageError:
        pass


@given(content=st.binary(max_size=60), suffix=st.sampled_from([".yaml", ".json", ".yml"]))
@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURE)
def test_any_config_file_reads_or_is_a_usage_error_naming_it(tmp_path, content, suffix):
    path = tmp_path / f"c{suffix}"
    path.write_bytes(content)
    try:
        values = read_config_file(path)
    except UsageError as err:
        assert str(path) in str(err)
    else:
        assert isinstance(values, dict)


def test_config_paths_of_the_wrong_kind(tmp_path):
    assert_error(cli("train", "--config", tmp_path / "none.yaml"), 2, "none.yaml")
    assert_error(cli("train", "--config", tmp_path), 2, "is a directory")


# --------------------------------------------------------------------------- flags

FLAG_BAD = {
    "--epochs": ["0", "-3", "1.5", "one", str(2**70)], "--batch-size": ["0", "-1", "x"],
    "--threads": ["-1", "-8", "two"], "--lr": ["0", "-0.1", "nan", "inf", "-inf", "x"],
    "--weight-decay": ["-1e-5", "nan", "inf"], "--warmup-epochs": ["-1"],
    "--grad-clip": ["-1", "nan", "inf"], "--seed": ["-1", str(2**32), str(2**70)],
    "--hidden": ["0", "-8", "7.5"], "--heads": ["0", "3", "-2"], "--layers": ["-1"],
    "--dropout": ["1", "1.5", "-0.1", "nan"], "--k": ["0", "-1"], "--rwse-steps": ["-1"],
    "--lap-pe": ["-2"], "--split": ["sideways", "column:"], "--task": ["guess"],
    "--patterns": ["all"], "--pooling": ["max"], "--attention-backend": ["magic"],
}


@given(flag_value=st.sampled_from([(f, v) for f, vs in FLAG_BAD.items() for v in vs]))
@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURE)
def test_a_flag_out_of_range_exits_2_naming_it(work, data, flag_value):
    flag, value = flag_value
    run_dir = work / "never"
    result = cli(*train_args(data, run_dir, work / "cache", flag, value))
    name = flag.lstrip("-")
    got, _, err = result
    assert_error(result, 2)
    assert flag in err or repr(name.replace("-", "_")) in err, err
    assert not run_dir.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_a_usage_error(work, data):
    assert_error(cli(*train_args(data, work / "never", work / "cache", "--device", "cuda")),
                 2, "cuda", "--device cpu")


def test_evaluate_and_predict_batch_size_flags(run, data, tmp_path):
    assert_error(cli("evaluate", run / "best.pt", "--batch-size", "0"), 2, "--batch-size")
    assert_error(cli("predict", run / "best.pt", data, "-o", tmp_path / "p.csv",
                     "--batch-size", "-4"), 2, "--batch-size")


@given(side=st.one_of(st.integers(max_value=0), st.integers(min_value=8193, max_value=2**70),
                     st.sampled_from(["32768", "1.5", "x", "", "1e3"])))
@settings(max_examples=10, deadline=None, suppress_health_check=FIXTURE)
def test_explain_size_out_of_range_exits_2_naming_size_and_range(run, tmp_path, side):
    out = tmp_path / "a.png"
    result = cli("explain", run / "best.pt", "--smiles", "CCO", "-o", out, "--size", side, "400")
    assert_error(result, 2, "argument --size", "from 1 to 8192", repr(str(side)))
    assert result[2].count("\n") == 1 and not out.exists()


def test_evaluate_from_another_directory(tmp_path, data, monkeypatch):
    """A run stores its CSV file's and cache's paths absolute; a checkpoint
    of an older graphformer, which stored them relative to where training
    ran, is evaluated from elsewhere with --data (and --root), and without
    them is one line naming the file and --data."""
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir(), elsewhere.mkdir()
    shutil.copy(data, here / "d.csv")
    monkeypatch.chdir(here)
    assert cli(*train_args("d.csv", "run", "cache"))[0] == 0
    saved = json.loads((here / "run" / "config.json").read_text())["data"]
    assert saved["dataset"] == str(here / "d.csv") and saved["root"] == str(here / "cache")
    monkeypatch.chdir(elsewhere)
    code, out, err = cli("evaluate", here / "run" / "best.pt", "--threads", "2")
    assert code == 0, err
    first = json.loads(out)
    assert first["data"] == "unchanged" and not (elsewhere / "cache").exists()

    state = load_checkpoint(here / "run" / "best.pt")
    state["config"]["data"].update(dataset="d.csv", root="cache")   # as older runs stored it
    old = tmp_path / "old.pt"
    save_checkpoint(state, old)
    result = cli("evaluate", old)
    assert_error(result, 2, "old.pt", "d.csv", "relative", str(elsewhere), "--data PATH")
    assert result[2].count("\n") == 1
    code, out, err = cli("evaluate", old, "--data", here / "d.csv", "--root", here / "cache")
    assert code == 0, err
    assert json.loads(out)["test"] == first["test"]
    # --data is checked like the stored path: other data are refused
    other = write_csv(elsewhere / "other.csv", [f"{s},1.0" for s in SMILES])
    assert_error(cli("evaluate", old, "--data", other), 1, "differ", "--allow-changed-data")
    assert_error(cli("evaluate", old, "--data", elsewhere / "none.csv"), 2, "none.csv")
    monkeypatch.chdir(here)   # where it was trained, the relative path still serves
    code, out, err = cli("evaluate", old, "--threads", "1")
    assert code == 0 and json.loads(out)["test"] == first["test"], err


def test_predict_and_explain_name_a_molecule_too_large_for_its_descriptors(run, tmp_path):
    big = "C" * 600
    src = write_csv(tmp_path / "in.csv", ["CCO", big], header="smiles")
    out = tmp_path / "p.csv"
    assert_error(cli("predict", run / "best.pt", src, "-o", out), 1, "in.csv, row 2",
                 "600 atoms", "at most 500 atoms")
    assert not out.exists()
    code, _, err = cli("predict", run / "best.pt", src, "-o", out, "--skip-invalid",
                       "--threads", "1")
    assert code == 0 and "row 2" in err
    assert pd.read_csv(out)["row"].tolist() == [1]
    assert_error(cli("explain", run / "best.pt", "--smiles", big, "-o", tmp_path / "a.png"), 2,
                 "--smiles", "600 atoms")


# --------------------------------------------------------------------------- CSV files

cell = st.sampled_from(["1.5", "-0.25", "3", "", "nan", "inf", "-inf", "1e999", "abc"])


@given(rows=st.lists(st.tuples(st.one_of(st.sampled_from(SMILES), st.sampled_from(BAD_SMILES)),
                               cell, st.booleans()), min_size=0, max_size=8),
       valid_bias=st.booleans())
@settings(max_examples=30, deadline=None,
          suppress_health_check=[*FIXTURE, HealthCheck.too_slow])
def test_a_generated_csv_trains_or_names_its_first_bad_row(tmp_path_factory, rows, valid_bias):
    if valid_bias:  # half the examples are mostly clean, so that some of them train
        rows = [(SMILES[k % len(SMILES)], "1.5" if v in ("inf", "-inf", "1e999", "abc") else v,
                 blank) for k, (_, v, blank) in enumerate(rows)]
    tmp = tmp_path_factory.mktemp("csv")
    lines, line_of = [], []
    for smiles, value, blank_before in rows:
        if blank_before:
            lines.append("")
        lines.append(f"{smiles},{value}")
        line_of.append(len(lines) + 1)  # the header is line 1
    csv = write_csv(tmp / "gen.csv", lines)
    result = cli(*train_args(csv, tmp / "run", tmp / "cache"))

    bad_target = [k for k, (_, v, _) in enumerate(rows) if v in ("inf", "-inf", "1e999", "abc")]
    bad_smiles = [k for k, (s, _, _) in enumerate(rows) if s in BAD_SMILES]
    n = len(rows)
    event("trained" if result[0] == 0 else f"exit {result[0]}")
    if n == 0:
        assert_error(result, 1, "gen.csv", "no molecules")
    elif bad_target:
        k = bad_target[0]
        assert_error(result, 1, "gen.csv", f"row {line_of[k] - 1}, column 'y'")
    elif bad_smiles:
        assert_error(result, 1, "gen.csv", f"row {line_of[bad_smiles[0]] - 1})")
    else:
        split = random_split(n, seed=0)
        has = {p: any(rows[i][1] not in ("", "nan") for i in split[p].tolist())
               for p in ("train", "valid", "test")}
        if n < 3:
            assert_error(result, 1, "gen.csv", "part empty")
        elif not has["valid"] or not has["test"]:
            assert_error(result, 1, "gen.csv", "has no valid rmse")
        elif not has["train"]:
            assert_error(result, 1, "gen.csv", "no target in the train part")
        else:
            code, out, err = result
            assert code == 0, err
            summary = json.loads((tmp / "run" / "summary.json").read_text())
            assert math.isfinite(summary["test_rmse_at_best"])


@given(values=st.lists(st.tuples(st.sampled_from(["train", "valid", "val", "Test", "TRAIN",
                                                  "dev", "", "?"]), st.booleans()),
                       min_size=1, max_size=10))
@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURE)
def test_split_column_rows_are_csv_rows_and_blank_lines_do_not_shift_them(
        tmp_path_factory, values):
    tmp = tmp_path_factory.mktemp("split")
    lines, rows = [], []
    for k, (part, blank_before) in enumerate(values):
        if blank_before:
            lines.append("")
        lines.append(f"{SMILES[k % len(SMILES)]},1.0,{part}")
        rows.append(len(lines))  # line len(lines) + 1, row = line - 1
    csv = write_csv(tmp / "s.csv", lines, header="smiles,y,split")
    frame = read_csv(csv)
    assert list(frame.index) == rows
    bench = load_dataset(str(csv), tmp / "cache", target_columns=["y"], log=False)
    known = {"train", "valid", "val", "test"}
    bad = [k for k, (p, _) in enumerate(values) if p.lower() not in known]
    if bad:
        with pytest.raises(DataError, match=rf"s\.csv, column 'split', row {rows[bad[0]]}:"):
            make_split(bench, "column:split")
    else:
        split = make_split(bench, "column:split")
        for k, (p, _) in enumerate(values):
            part = {"val": "valid"}.get(p.lower(), p.lower())
            assert k in split[part].tolist()


def test_smiles_rows_and_split_rows_agree_after_a_blank_line(tmp_path):
    csv = write_csv(tmp_path / "b.csv", ["CCO,1,train", "", "", "C1CC,2,test"],
                    header="smiles,y,split")
    with pytest.raises(DataError, match=r"b\.csv, row 4\)"):  # line 5
        MoleculeCSVDataset(csv, target_columns=["y"], root=tmp_path / "c", log=False)
    csv = write_csv(tmp_path / "b.csv", ["CCO,1,train", "", "", "CCC,2,dev"],
                    header="smiles,y,split")
    assert_error(cli("train", "--dataset", csv, "--target-columns", "y", "--split",
                     "column:split", "--root", tmp_path / "c", "--run-dir", tmp_path / "r",
                     *TINY), 1, "b.csv, column 'split', row 4:")


@given(content=st.one_of(st.binary(max_size=80),
                         st.text(alphabet=st.sampled_from('smiles,y"\n\r\t C1()=;\x00'),
                                 max_size=60)))
@settings(max_examples=80, deadline=None, suppress_health_check=FIXTURE)
def test_any_file_reads_as_csv_or_is_a_data_error_naming_it(tmp_path, content):
    path = tmp_path / "x.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    try:
        frame = read_csv(path)
    except DataError as err:
        assert str(path) in str(err)
    else:
        assert list(frame.index) == sorted(set(frame.index))  # rows numbered, increasing


@given(text=st.one_of(st.text(max_size=30), st.sampled_from(SMILES + BAD_SMILES)))
@settings(max_examples=200, deadline=None)
def test_any_string_is_a_molecule_or_a_data_error_quoting_it(text):
    try:
        data = from_smiles(text, where="here")
    except DataError as err:
        assert "here" in str(err) and len(str(err)) < 400
    else:
        assert data.x.size(0) > 0 and data.smiles == text


@given(n=st.integers(0, 60), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=100, deadline=None)
def test_random_split_partitions_and_gives_each_part_a_row_from_3_rows(n, seed):
    split = random_split(n, seed=seed)
    rows = sorted(i for part in split.values() for i in part.tolist())
    assert rows == list(range(n))
    if n >= 3:
        assert all(len(part) >= 1 for part in split.values())
    if n >= 10:
        assert len(split["valid"]) == int(0.1 * n) and len(split["test"]) == int(0.1 * n)


def test_empty_header_only_and_tiny_csv_files(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    assert_error(cli(*train_args(empty, tmp_path / "r", tmp_path / "c")), 1, "empty.csv",
                 "is empty")
    header = write_csv(tmp_path / "header.csv", [])
    assert_error(cli(*train_args(header, tmp_path / "r", tmp_path / "c")), 1, "header.csv",
                 "no molecules")
    one = write_csv(tmp_path / "one.csv", ["CCO,1.0"])
    assert_error(cli(*train_args(one, tmp_path / "r", tmp_path / "c")), 1, "one.csv",
                 "part empty")
    (tmp_path / "dir.csv").mkdir()
    assert_error(cli(*train_args(tmp_path / "dir.csv", tmp_path / "r", tmp_path / "c")), 2,
                 "dir.csv is a directory")
    assert not (tmp_path / "r").exists()


def test_no_valid_score_before_training(tmp_path):
    nan = write_csv(tmp_path / "nan.csv", [f"{s}," for s in SMILES])
    assert_error(cli(*train_args(nan, tmp_path / "r", tmp_path / "c")), 1, "nan.csv",
                 "no valid rmse")
    one_class = write_csv(tmp_path / "cls.csv", [f"{s},1" for s in SMILES])
    assert_error(cli(*train_args(one_class, tmp_path / "r", tmp_path / "c", "--task",
                                 "classification")), 1, "cls.csv", "both classes")


def test_no_valid_score_after_training_is_a_message(tmp_path, data, monkeypatch):
    def nan_metrics(*args, **kwargs):
        return {"rmse": math.nan, "mae": math.nan}

    monkeypatch.setattr(loop, "evaluate_split", nan_metrics)
    assert_error(cli(*train_args(data, tmp_path / "r", tmp_path / "c")), 1,
                 "no epoch", "valid")
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["best_epoch"] is None and not (tmp_path / "r" / "best.pt").exists()


# --------------------------------------------------------------------------- files

def test_a_run_directory_is_never_silently_replaced(tmp_path, data, work):
    run_dir = tmp_path / "r"
    args = train_args(data, run_dir, work / "cache")
    assert cli(*args)[0] == 0
    before = {n: (run_dir / n).read_bytes() for n in RUN_FILES}
    assert_error(cli(*args), 2, run_dir, "--overwrite", "--resume")
    assert {n: (run_dir / n).read_bytes() for n in RUN_FILES} == before

    (run_dir / "notes.txt").write_text("mine")
    (run_dir / ".last.pt.0123456789ab.tmp").write_bytes(b"")  # left by a kill
    assert cli(*args, "--overwrite", "--seed", "3")[0] == 0
    assert (run_dir / "notes.txt").read_text() == "mine"  # not a run file: kept
    assert not list(run_dir.glob(".*.tmp"))
    assert json.loads((run_dir / "config.json").read_text())["train"]["seed"] == 3
    modes = {stat.S_IMODE((run_dir / n).stat().st_mode) for n in RUN_FILES}
    assert len(modes) == 1  # checkpoints as the other files, not 0600

    (tmp_path / "file").write_text("x")
    assert_error(cli(*train_args(data, tmp_path / "file", work / "cache")), 2, "is a file")
    assert (tmp_path / "file").read_text() == "x"


def test_resume_removes_stale_temporaries(tmp_path, data, work):
    run_dir = tmp_path / "r"
    assert cli(*train_args(data, run_dir, work / "cache"))[0] == 0
    stale = run_dir / ".metrics.json.deadbeef0000.tmp"
    stale.write_bytes(b"")
    assert cli("train", "--resume", run_dir, "--quiet")[0] == 0
    assert not stale.exists()
    assert_error(cli("train", "--resume", tmp_path / "nothing"), 2, "nothing")
    assert_error(cli("train", "--resume", run_dir, "--overwrite"), 2, "--overwrite")


CONFLICTS = {"--epochs": "5", "--lr": "0.5", "--hidden": "16", "--seed": "4",
             "--batch-size": "4", "--dataset": "esol", "--patterns": "bonds",
             "--dropout": "0.3", "--split": "scaffold", "--no-norm-first": None}


@given(flags=st.lists(st.sampled_from(sorted(CONFLICTS)), min_size=1, max_size=4, unique=True))
@settings(max_examples=25, deadline=None, suppress_health_check=FIXTURE)
def test_resume_with_flags_that_change_the_run_is_refused_naming_them(run, flags):
    argv = ["train", "--resume", run]
    for flag in flags:
        argv += [flag] if CONFLICTS[flag] is None else [flag, CONFLICTS[flag]]
    before = (run / "last.pt").read_bytes()
    assert_error(cli(*argv), 2, "--resume", *flags)
    assert (run / "last.pt").read_bytes() == before


def test_resume_refuses_changed_data_and_a_changed_config_through_the_api(tmp_path, data, work):
    csv = tmp_path / "d.csv"
    shutil.copy(data, csv)
    run_dir = tmp_path / "r"
    assert cli(*train_args(csv, run_dir, work / "cache"))[0] == 0
    saved = load_checkpoint(run_dir / "last.pt")
    cfg = RunConfig.from_dict(saved["config"])
    cfg.train.lr = 0.5
    with pytest.raises(UsageError, match=r"train\.lr: saved 0\.001, given 0\.5"):
        train(cfg, run_dir, resume=True, progress=False)
    frame = pd.read_csv(csv)
    frame.loc[0, "y"] += 1.0
    frame.to_csv(csv, index=False)
    assert_error(cli("train", "--resume", run_dir), 1, "data changed", "train")


def test_predict_never_writes_over_its_input_or_the_checkpoint(run, data, tmp_path):
    src = tmp_path / "in.csv"
    shutil.copy(data, src)
    before = src.read_bytes()
    (tmp_path / "sub").mkdir()
    os.symlink(src, tmp_path / "link.csv")
    for out in (src, tmp_path / "sub" / ".." / "in.csv", tmp_path / "link.csv"):
        assert_error(cli("predict", run / "best.pt", src, "-o", out), 2, "the input file")
    assert src.read_bytes() == before
    assert_error(cli("predict", run / "best.pt", src, "-o", run / "best.pt"), 2,
                 "the checkpoint")
    assert_error(cli("predict", run / "best.pt", src, "-o", tmp_path / "sub"), 2,
                 "is a directory")
    code, out, err = cli("predict", run / "best.pt", src, "-o", tmp_path / "p.csv")
    assert code == 0, err
    assert pd.read_csv(tmp_path / "p.csv")["row"].tolist() == list(range(1, 13))
    assert not list(tmp_path.glob(".*.tmp"))


def test_explain_refuses_a_directory_and_a_bad_smiles(run, tmp_path):
    assert_error(cli("explain", run / "best.pt", "--smiles", "CCO", "-o", tmp_path), 2,
                 "is a directory")
    assert_error(cli("explain", run / "best.pt", "--smiles", "C1CC", "-o", tmp_path / "a.png"),
                 2, "C1CC")
    assert_error(cli("explain", run / "best.pt", "--smiles", "CCO", "--layer", "5", "-o",
                     tmp_path / "a.png"), 2, "--layer 5")


def test_a_zinc_feature_model_is_refused_by_the_smiles_commands(run, data, tmp_path):
    """A model of ZINC's atom types was given OGB features made from the
    SMILES: a traceback (a shape error) from predict, fingerprint, explain."""
    import copy

    from graphformer.models import GraphTransformer
    from graphformer.models.graph_transformer import GraphTransformerConfig

    state = copy.deepcopy(load_checkpoint(run / "best.pt"))
    state["config"]["model"]["features"] = "zinc"
    state["config"]["data"].update(dataset="zinc", molecule_features=[], target_columns=[],
                                   feature_columns=[])
    state.update(dataset="zinc", metric="mae", mol_feature_names=[])
    state["model"] = GraphTransformer(GraphTransformerConfig(**state["config"]["model"])
                                      ).state_dict()
    save_checkpoint(state, tmp_path / "zinc.pt")
    said = "its model reads 'zinc' atom features (it was trained on zinc), not the OGB features"
    for command in (["predict", tmp_path / "zinc.pt", data, "-o", tmp_path / "p.csv"],
                    ["fingerprint", tmp_path / "zinc.pt", data, "-o", tmp_path / "f.npz"],
                    ["explain", tmp_path / "zinc.pt", "--smiles", "CCO", "-o",
                     tmp_path / "a.png"]):
        assert_error(cli(*command), 2, said, f"graphformer {command[0]} takes models of SMILES")


def test_atomic_write_keeps_the_old_file_and_respects_the_umask(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as fh:
            fh.write("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]
    old = os.umask(0o027)
    try:
        with atomic_write(tmp_path / "g.bin", "wb") as fh:
            fh.write(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "g.bin").stat().st_mode) == 0o640


def test_atomic_write_writes_through_a_link_keeps_a_files_mode_and_names_the_file(
        tmp_path, monkeypatch):
    """As ``open(path, "w")``: a symbolic link was replaced by a plain file
    (the file it named kept the old content) and an existing file's mode
    reset; a file-system error named the hidden temporary, or nothing."""
    (tmp_path / "shared").mkdir()
    real, link = tmp_path / "shared" / "p.csv", tmp_path / "p.csv"
    real.write_text("old")
    real.chmod(0o600)
    link.symlink_to(real)
    with atomic_write(link) as fh:
        fh.write("new")
    assert link.is_symlink() and real.read_text() == "new"
    assert stat.S_IMODE(real.stat().st_mode) == 0o600
    with pytest.raises(DataError, match=r"cannot write .*missing/x.csv: No such file"):
        with atomic_write(tmp_path / "missing" / "x.csv") as fh:
            fh.write("x")

    def failing_sync(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_sync)
    with pytest.raises(DataError, match=r"cannot write .*y.csv: Input/output error"):
        with atomic_write(tmp_path / "y.csv") as fh:
            fh.write("y")
    assert not list(tmp_path.glob(".*.tmp")) and not (tmp_path / "y.csv").exists()


# --------------------------------------------------------------------------- checkpoints

def test_evaluate_uses_the_checkpoints_normalisation_and_detects_changed_data(
        tmp_path, data, work):
    csv = tmp_path / "d.csv"
    shutil.copy(data, csv)
    run_dir = tmp_path / "r"
    assert cli(*train_args(csv, run_dir, work / "cache"))[0] == 0
    code, out, err = cli("evaluate", run_dir / "best.pt")
    assert code == 0, err
    first = json.loads(out)
    assert first["data"] == "unchanged"

    frame = pd.read_csv(csv)
    frame["y"] = frame["y"] * 3.0 + 1.0  # other targets: the normalisation would change
    frame.to_csv(csv, index=False)
    assert_error(cli("evaluate", run_dir / "best.pt"), 1, "d.csv", "valid", "test",
                 "--allow-changed-data")
    code, out, err = cli("evaluate", run_dir / "best.pt", "--allow-changed-data")
    assert code == 0 and "warning" in err
    changed = json.loads(out)
    # By hand: the checkpoint's model and normalisation against the new targets.
    from graphformer.train.checkpoint import model_from_checkpoint
    from graphformer.train import prepare
    from torch_geometric.loader import DataLoader
    state = load_checkpoint(run_dir / "best.pt")
    prepared = prepare(RunConfig.from_dict(state["config"]), log=False)
    test = prepared.subset("test")
    pred = loop.predict(model_from_checkpoint(state), DataLoader(test, batch_size=64), state["y_mean"],
                        state["y_std"], torch.device("cpu"))
    y = torch.cat([g.y for g in test])
    rmse = float(((pred - y) ** 2).mean().sqrt())
    assert changed["test"]["rmse"] == pytest.approx(rmse, rel=1e-5)
    assert not torch.allclose(prepared.y_mean, state["y_mean"])  # it would have differed


MUTATIONS = ["drop_field", "wrong_type", "drop_weight", "reshape_weight", "other_hidden",
             "y_mean_size", "y_std_zero", "bad_config"]


@given(mutation=st.sampled_from(MUTATIONS), field=st.sampled_from(
    ["config", "model", "epoch", "y_mean", "y_std", "dataset", "metric", "history", "best"]))
@settings(max_examples=30, deadline=None, suppress_health_check=FIXTURE)
def test_a_damaged_checkpoint_is_a_data_error_naming_the_file(run, tmp_path_factory, mutation,
                                                               field):
    state = torch.load(run / "best.pt", weights_only=True)
    name = sorted(state["model"])[0]
    if mutation == "drop_field":
        del state[field]
    elif mutation == "wrong_type":
        state[field] = 5 if field in ("dataset", "metric") else "oops"
    elif mutation == "drop_weight":
        del state["model"][name]
    elif mutation == "reshape_weight":
        state["model"][name] = torch.zeros(3, 3, 3)
    elif mutation == "other_hidden":
        state["config"]["model"]["hidden"] = 16
    elif mutation == "y_mean_size":
        state["y_mean"] = torch.zeros(3)
    elif mutation == "y_std_zero":
        state["y_std"] = torch.zeros(1)
    elif mutation == "bad_config":
        state["config"] = {"train": {"epochs": "many"}}
    path = tmp_path_factory.mktemp("ckpt") / "damaged.pt"
    torch.save(state, path)
    for argv in (["evaluate", path], ["predict", path, "in.csv", "-o", path.parent / "p.csv"],
                 ["explain", path, "--smiles", "CCO", "-o", path.parent / "a.png"]):
        assert_error(cli(*argv), 1, "damaged.pt")


# --------------------------------------------------------------------------- processes

@pytest.mark.slow
def test_subprocess_refusal_is_one_line_without_traceback(tmp_path, run, data):
    src = tmp_path / "in.csv"
    shutil.copy(data, src)
    result = subprocess.run(
        [sys.executable, "-m", "graphformer", "predict", str(run / "best.pt"), str(src), "-o",
         str(src)], capture_output=True, text=True, timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("graphformer: error: output ")
    assert src.read_bytes() == data.read_bytes()


def test_an_interrupt_exits_130(tmp_path, data, monkeypatch, work):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "evaluate_split", interrupt)
    code, _, err = cli(*train_args(data, tmp_path / "r", work / "cache"))
    assert code == 130 and "interrupted" in err and "Traceback" not in err
