"""scripts/compare_pretrained.py: the two starts differ only in the trunk's
starting weights; --set, --epochs, --batch-size and --lr reach both; the
summary holds every run's scores. ``train`` is replaced by a stand-in that
records the configs (training itself is tested in tests/train)."""
import json

import pytest

from tests.helpers import load_script


def test_both_starts_get_the_same_settings(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    compare = load_script("compare_pretrained")
    seen = []

    def fake_train(cfg, run_dir, progress, prepared):
        seen.append((cfg.data.dataset, cfg.train.seed, cfg.train.init, cfg.train.pretrained,
                     cfg.train.epochs, cfg.train.batch_size, cfg.train.lr, cfg.model.dropout))
        score = 1.0 + cfg.train.seed + (0.5 if cfg.train.init else 0.0)
        return {"metric": "rmse", "best_valid_rmse": score, "test_rmse_at_best": 2 * score,
                "best_epoch": [3, 4] if cfg.train.ensemble > 1 else 3}   # the default: 2

    monkeypatch.setattr(compare, "train", fake_train)
    out = tmp_path / "out.json"
    assert compare.main(["--init", "ckpt.pt", "--datasets", "freesolv", "--seeds", "0", "1",
                         "--epochs", "7", "--batch-size", "16", "--lr", "0.002",
                         "--set", "model.dropout=0.25", "--out", str(out)]) == 0
    assert seen == [("freesolv", seed, init, False, 7, 16, 0.002, 0.25)
                    for seed in (0, 1) for init in (None, "ckpt.pt")]
    result = json.loads(out.read_text())
    assert result["set"] == ["model.dropout=0.25"] and result["epochs"] == 7
    runs = result["results"]["freesolv"]
    assert runs["scratch"] == {"valid": [1.0, 2.0], "test": [2.0, 4.0]}
    assert runs["init"] == {"valid": [1.5, 2.5], "test": [3.0, 5.0]}
    printed = capsys.readouterr().out
    assert "| freesolv | init | 2.000 ± 0.707 | 4.000 ± 1.414 |" in printed
    assert "freesolv seed 1 init    best epoch [3, 4]  valid rmse 2.5000" in printed


def test_a_bad_setting_is_refused_before_any_run(tmp_path, monkeypatch):
    compare = load_script("compare_pretrained")
    monkeypatch.setattr(compare, "train", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(SystemExit, match="SECTION.KEY=VALUE"):
        compare.main(["--init", "c.pt", "--set", "dropout=0.1"])
