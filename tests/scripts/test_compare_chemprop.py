"""scripts/compare_chemprop.py: chemprop runs on graphformer's split files and
is scored by the same RMSE; the table is printed from the JSON. A stand-in
``chemprop`` executable (predicting every test target + 1 + seed and every
validation target + 0.5 + seed, or reordering rows) makes the scores exact
without chemprop installed."""
import csv
import json
import math
import os
import stat
import sys

import pytest

from graphformer.train import RunConfig
from tests.helpers import load_script

FAKE = """#!{python}
import csv, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_CHEMPROP_LOG"], "a") as fh:
    fh.write(" ".join(args) + "\\n")
if args[0] == "predict":   # the seed from the "model" train wrote; validation + 0.5
    with open(args[args.index("--model-paths") + 1]) as fh:
        seed = fh.read()
    with open(args[args.index("--test-path") + 1]) as fh:
        rows = list(csv.reader(fh))
    with open(args[args.index("--output") + 1], "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(rows[0])
        for r in rows[1:]:
            w.writerow([r[0]] + [float(v) + 0.5 + int(seed) for v in r[1:]])
    sys.exit(0)
paths = args[args.index("--data-path") + 1: args.index("--data-path") + 4]
out = args[args.index("--output-dir") + 1]
seed = args[args.index("--pytorch-seed") + 1]
with open(paths[2]) as fh:
    rows = list(csv.reader(fh))
body = rows[1:]
if os.environ.get("FAKE_CHEMPROP_SHUFFLE"):
    body = body[::-1]
os.makedirs(os.path.join(out, "model_0"))
with open(os.path.join(out, "model_0", "best.pt"), "w") as fh:
    fh.write(seed)
with open(os.path.join(out, "model_0", "test_predictions.csv"), "w", newline="") as fh:
    w = csv.writer(fh)
    w.writerow(rows[0])
    for r in body:
        w.writerow([r[0]] + [float(v) + 1.0 + int(seed) for v in r[1:]])
"""


@pytest.fixture
def fake_chemprop(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "chemprop"
    exe.write_text(FAKE.format(python=sys.executable))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_CHEMPROP_LOG", str(tmp_path / "calls.log"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "calls.log"


def test_chemprop_scored_on_the_same_split(tmp_path, capsys, fake_chemprop):
    compare = load_script("compare_chemprop")
    out = tmp_path / "compare.json"
    assert compare.main(["--datasets", "freesolv", "--seeds", "0", "2", "--peers", "chemprop",
                         "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    runs = results["runs"]
    assert [(r["peer"], r["seed"]) for r in runs] == [("chemprop", 0), ("chemprop", 2)]
    # predictions are target + 1 + seed on every labelled molecule: RMSE 1 and 3
    assert runs[0]["test"] == pytest.approx(1.0, abs=1e-9)
    assert runs[1]["test"] == pytest.approx(3.0, abs=1e-9)
    # the validation part predicted by the model train kept: + 0.5 + seed
    assert runs[0]["valid"] == pytest.approx(0.5, abs=1e-9)
    assert runs[1]["valid"] == pytest.approx(2.5, abs=1e-9)
    calls = [c.split() for c in fake_chemprop.read_text().splitlines()]
    assert [c[0] for c in calls] == ["train", "predict", "train", "predict"]
    assert calls[0][calls[0].index("--pytorch-seed") + 1] == "0"
    assert calls[2][calls[2].index("--pytorch-seed") + 1] == "2"
    for c in calls[1::2]:
        assert c[c.index("--test-path") + 1].endswith("valid.csv")
        assert c[c.index("--model-paths") + 1].endswith("best.pt")
    capsys.readouterr()
    assert compare.main(["--markdown-from", str(out)]) == 0
    test_table, valid_table = capsys.readouterr().out.split("Validation RMSE")
    assert "| freesolv | **2.000** ± 1.000 (1.000 / 3.000), " in test_table
    assert "| freesolv | **1.500** ± 1.000 (0.500 / 2.500) |" in valid_table


def test_split_files_hold_the_split(tmp_path, fake_chemprop):
    peer = load_script("chemprop_peer")
    from graphformer.train import RunConfig, prepare
    from graphformer.train.config import DataConfig

    prepared = prepare(RunConfig(data=DataConfig(dataset="freesolv", split="scaffold")),
                       log=False)
    paths = peer.write_split_files(prepared, tmp_path)
    for part, path in paths.items():
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))[1:]
        idx = prepared.split[part].tolist()
        assert [r[0] for r in rows] == [prepared.bench.dataset[i].smiles for i in idx]
        assert [float(r[1]) for r in rows] == [
            float(prepared.bench.dataset[i].y.view(-1)[0]) for i in idx]
    assert sum(1 for _ in open(paths["test"])) - 1 == len(prepared.split["test"])
    assert math.isfinite(peer.rmse_of(paths["test"], paths["test"]))
    assert peer.rmse_of(paths["test"], paths["test"]) == 0.0


def test_reordered_predictions_are_refused(tmp_path, monkeypatch, fake_chemprop):
    monkeypatch.setenv("FAKE_CHEMPROP_SHUFFLE", "1")
    compare = load_script("compare_chemprop")
    with pytest.raises(RuntimeError, match="does not list the molecules"):
        compare.main(["--datasets", "freesolv", "--seeds", "0", "--peers", "chemprop"])


def test_bad_override_is_named():
    compare = load_script("compare_chemprop")
    with pytest.raises(SystemExit, match="SECTION.KEY=VALUE"):
        compare.overrides(["dropout=0"])
    assert compare.overrides(["model.dropout=0", "model.patterns=bonds,full"]) == {
        "model": {"dropout": "0", "patterns": ["bonds", "full"]}}
    assert compare.overrides(["train.pretrained=false", "model.norm_first=True"]) == {
        "train": {"pretrained": False}, "model": {"norm_first": True}}


@pytest.mark.slow
def test_graphformer_runs_as_a_user_runs_it(tmp_path, fake_chemprop):
    compare = load_script("compare_chemprop")
    out = tmp_path / "compare.json"
    assert compare.main(["--datasets", "freesolv", "--seeds", "1", "--peers", "graphformer",
                         "chemprop", "--epochs", "1", "--threads", "1",
                         "--set", "model.layers=1", "--json", str(out)]) == 0
    runs = {r["peer"]: r for r in json.loads(out.read_text())["runs"]}
    gf = runs["graphformer"]
    assert gf["best_epoch"] == [1, 1] and gf["metric"] == "rmse"   # the default ensemble
    assert math.isfinite(gf["test"]) and math.isfinite(gf["valid"]) and gf["seconds"] > 0
    assert runs["chemprop"]["test"] == pytest.approx(2.0, abs=1e-9)
    assert runs["chemprop"]["valid"] == pytest.approx(1.5, abs=1e-9)


def test_bad_setting_fails_before_any_run(fake_chemprop):
    compare = load_script("compare_chemprop")
    from graphformer.errors import UsageError

    with pytest.raises(UsageError, match="divisible"):
        compare.main(["--datasets", "freesolv", "--seeds", "0", "--peers", "graphformer",
                      "--set", "model.hidden=7"])
    assert not fake_chemprop.exists()


def test_set_reads_each_value_by_its_fields_type():
    """One reading of ``--set`` for every comparison script: a list field
    splits at commas (also one whose type is Optional), a bool field takes
    true / false, the rest stays a string for the config's own checks."""
    from graphformer.errors import UsageError
    from graphformer.train.config import parse_overrides

    sets = parse_overrides(["data.molecule_features=rdkit2d,morgan_counts",
                            "model.patterns=bonds", "train.pretrained=False", "model.dropout=0.1",
                            "data.target_columns=a, b"])
    assert sets == {"data": {"molecule_features": ["rdkit2d", "morgan_counts"],
                             "target_columns": ["a", "b"]},
                    "model": {"patterns": ["bonds"], "dropout": "0.1"},
                    "train": {"pretrained": False}}
    cfg = RunConfig.from_dict(sets)
    assert cfg.data.molecule_features == ["rdkit2d", "morgan_counts"]
    assert cfg.model.dropout == 0.1 and cfg.train.pretrained is False
    with pytest.raises(UsageError, match="'model' has no key 'colour'"):
        parse_overrides(["model.colour=red"])
    # compare_moleculeace.py reads --set the same way (it split any comma before)
    assert load_script("compare_moleculeace").overrides(["model.patterns=bonds"]) == {
        "model": {"patterns": ["bonds"]}}


def test_the_table_bolds_the_highest_roc_auc_and_names_the_metric():
    """The lowest mean was bold whatever the metric, and the text said RMSE."""
    compare = load_script("compare_chemprop")
    runs = [{"dataset": "ogbg-molbace", "peer": p, "seed": 0, "test": t, "valid": t,
             "seconds": 1.0, "metric": "rocauc"} for p, t in (("graphformer", 0.85),
                                                              ("gin", 0.70))]
    text = compare.markdown({"machine": "m", "seeds": [0], "runs": runs})
    assert "test ROC-AUC at the best validation epoch" in text and "RMSE" not in text
    assert "| ogbg-molbace | **0.850** ± 0.000 (0.850), 1 s | 0.700 ± 0.000 (0.700), 1 s |" \
        in text
