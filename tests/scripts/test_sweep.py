"""scripts/sweep.py: variants become config overrides, runs are appended as
JSON lines, the table ranks variants by validation score."""
import json

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


@pytest.mark.slow
def test_a_run_is_appended(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    sweep = load_script("sweep")
    out = tmp_path / "sweep.jsonl"
    variant = "hidden=8,heads=2,layers=1,epochs=1"
    assert sweep.main(["--datasets", "freesolv", "--variants", variant, "--seeds", "3",
                       "--out", str(out)]) == 0
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["variant"] == variant and row["seed"] == 3 and row["best_epoch"] == 1
    assert row["metric"] == "rmse" and row["valid"] > 0 and row["test"] > 0
