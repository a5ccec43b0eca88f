"""scripts/sweep.py: variants become config overrides, runs are appended as
JSON lines, the table ranks variants by validation score."""
import json

import pandas as pd
import pytest

from tests.helpers import load_script


def test_variants_are_config_overrides():
    sweep = load_script("sweep")
    assert sweep.parse_variant("default") == {"model": {}, "train": {}}
    assert sweep.parse_variant("local=gine,patterns=bonds+full,batch_size=64") == {
        "model": {"local": "gine", "patterns": ["bonds", "full"]},
        "train": {"batch_size": "64"}}
    # true / false are booleans, as YAML reads them (the config refuses strings)
    assert sweep.parse_variant("pretrained=False,edge_update=true,init=c.pt") == {
        "model": {"edge_update": True}, "train": {"pretrained": False, "init": "c.pt"}}
    from graphformer.train import RunConfig
    assert RunConfig.from_dict(sweep.parse_variant("pretrained=false")).train.pretrained is False
    with pytest.raises(SystemExit, match="unknown key 'colour'"):
        sweep.parse_variant("colour=red")
    with pytest.raises(SystemExit, match="is not KEY=VALUE"):
        sweep.parse_variant("dropout")


def test_table_ranks_by_validation_not_test(tmp_path, capsys):
    sweep = load_script("sweep")
    rows = [{"dataset": "esol", "variant": v, "seed": s, "valid": val, "test": test,
             "seconds": 10.0}
            for v, s, val, test in [("a", 0, 0.9, 0.5), ("a", 1, 0.7, 0.5),
                                    ("b", 0, 0.6, 0.9), ("b", 1, 0.6, 0.9)]]
    out = tmp_path / "sweep.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert sweep.main(["--markdown-from", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == "| esol | b | 0 1 | 0.600 ± 0.000 | 0.900 ± 0.000 | 10 |"
    assert lines[3] == "| esol | a | 0 1 | 0.800 ± 0.100 | 0.500 ± 0.000 | 10 |"


def test_table_ranks_a_higher_is_better_metric_highest_first(tmp_path, capsys):
    """ROC-AUC was ranked as RMSE is, lowest first: the worst variant on top."""
    sweep = load_script("sweep")
    rows = [{"dataset": "ogbg-molbace", "variant": v, "seed": 0, "metric": "rocauc",
             "valid": val, "test": 0.8, "seconds": 10.0}
            for v, val in [("dropout=0.1", 0.70), ("default", 0.85)]]
    out = tmp_path / "sweep.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert sweep.main(["--markdown-from", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" | ")[1] for line in lines[2:]] == ["default", "dropout=0.1"]


def test_a_file_of_plain_and_cv_runs_prints_both_tables(tmp_path, capsys):
    """Both modes append to the same default --out: a file of both crashed
    (KeyError 'fold')."""
    sweep = load_script("sweep")
    rows = [{"dataset": "esol", "variant": "default", "seed": 0, "metric": "rmse",
             "valid": 1.0, "test": 1.1, "seconds": 10.0},
            {"dataset": "esol", "variant": "default", "seed": 0, "metric": "rmse", "fold": 0,
             "valid_size": 10, "valid": 2.0, "test": 1.2, "seconds": 10.0}]
    out = tmp_path / "sweep.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert sweep.main(["--markdown-from", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| esol | default | 0 | 1.000 ± 0.000 | 1.100 ± 0.000 | 10 |" in text
    assert "| esol | default | 0 | 0 | 2.000 ± 0.000 |" in text


def test_cv_table_ranks_by_out_of_fold_rmse(tmp_path, capsys):
    sweep = load_script("sweep")
    # variant a: folds of 10 and 30 molecules at RMSE 1 and 3, then 2 and 2
    rows = [{"dataset": "esol", "variant": v, "seed": s, "fold": k, "valid_size": n,
             "valid": val, "test": 0.5, "seconds": 10.0}
            for v, s, k, n, val in [("default", 0, 0, 10, 1.0), ("default", 0, 1, 30, 3.0),
                                    ("default", 1, 0, 10, 2.0), ("default", 1, 1, 30, 2.0),
                                    ("b", 0, 0, 10, 2.0), ("b", 0, 1, 30, 2.0),
                                    ("b", 1, 0, 10, 9.0)]]       # seed 1 of b: one fold yet
    assert sweep.out_of_fold(rows[:2]) == pytest.approx((280 / 40) ** 0.5)
    out = tmp_path / "cv.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert sweep.main(["--markdown-from", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    default = ((280 / 40) ** 0.5 + 2.0) / 2
    spread = ((280 / 40) ** 0.5 - 2.0) / 2
    assert lines[2] == "| esol | b | 0 | 0 1 | 2.000 ± 0.000 | " \
        f"{100 * (2.0 / default - 1):+.1f} % | 0.500 ± 0.000 | 10 |"
    assert lines[3] == f"| esol | default | 0 1 | 0 1 | {default:.3f} ± {spread:.3f} | " \
        "+0.0 % | 0.500 ± 0.000 | 10 |"


def test_cv_file_has_a_split_column_per_fold(tmp_path, capsys):
    from graphformer.datasets import scaffold_folds, scaffold_split

    sweep = load_script("sweep")
    path = sweep.cv_file("freesolv", 3, tmp_path / "cv")
    assert path == tmp_path / "cv" / "freesolv-scaffold-cv3.csv"
    frame = pd.read_csv(path)
    smiles = list(frame["smiles"])
    folds = scaffold_folds(smiles, scaffold_split(smiles), 3)
    names = {"train": "train", "valid": "val", "test": "test"}
    for k, fold in enumerate(folds):
        for part, rows in fold.items():
            assert set(frame[f"cv{k}"].iloc[rows.tolist()]) == {names[part]}
    assert sweep.cv_file("freesolv", 3, tmp_path / "cv") == path     # written once
    with pytest.raises(SystemExit, match="bundled data set"):
        sweep.cv_file("my.csv", 3, tmp_path / "cv")
    for argv, message in ([["--folds", "1"], "--folds needs --cv"],
                          [["--cv", "3", "--folds", "3"], "--folds needs --cv"],
                          [["--cv", "1"], "--cv must be at least 2"]):
        with pytest.raises(SystemExit):
            sweep.main(argv)
        assert message in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("cv", [False, True], ids=["split", "cv"])
def test_a_run_is_appended(tmp_path, monkeypatch, one_thread, cv):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    sweep = load_script("sweep")
    out = tmp_path / "sweep.jsonl"
    variant = "hidden=8,heads=2,layers=1,epochs=1,ensemble=1"
    if not cv:   # with a kernel member: ranked by its cross-fitted score
        variant = "hidden=8,heads=2,layers=1,epochs=1,ensemble=2,kernel_member=morgan," \
            "member_processes=1"
    folds = ["--cv", "5", "--folds", "3", "--cv-dir", str(tmp_path / "cv")] if cv else []
    assert sweep.main(["--datasets", "freesolv", "--variants", variant, "--seeds", "3",
                       "--out", str(out), *folds]) == 0
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["variant"] == variant and row["seed"] == 3
    assert row["metric"] == "rmse" and row["valid"] > 0 and row["test"] > 0
    if cv:
        assert row["best_epoch"] == 1
        frame = pd.read_csv(tmp_path / "cv" / "freesolv-scaffold-cv5.csv")
        assert row["fold"] == 3 and row["valid_size"] == (frame["cv3"] == "val").sum() > 0
    else:
        assert "fold" not in row and row["best_epoch"] == [1, 1]
        assert row["valid_fitted"] <= row["valid_transformers"] + 1e-6   # w = 0 is a candidate
        assert row["valid"] > 0
