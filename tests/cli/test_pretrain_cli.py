"""``graphformer pretrain`` and ``graphformer train --init`` on the command line."""
from graphformer.cli import main
from tests.train.conftest import write_corpus

TINY = ["--hidden", "16", "--layers", "1", "--heads", "2", "--rwse-steps", "4", "--threads", "1"]


def test_pretrain_then_fine_tune_from_it(tmp_path, capsys):
    corpus_csv = write_corpus(tmp_path)
    root = str(tmp_path / "cache")
    run = tmp_path / "pre"
    assert main(["pretrain", "--smiles", str(corpus_csv), "--run-dir", str(run), "--root", root,
                 "--epochs", "1", "--batch-size", "8", "--valid-fraction", "0.2", "--quiet",
                 *TINY]) == 0
    out = capsys.readouterr().out
    assert "pretrained on 30 molecules (1 bad SMILES left out)" in out
    assert f"graphformer train --init {run / 'best.pt'}" in out

    # A resumed run may not change what it computes.
    assert main(["pretrain", "--resume", str(run), "--lr", "0.1"]) == 2
    assert "these flags would change it: --lr" in capsys.readouterr().err

    assert main(["train", "--dataset", "freesolv", "--epochs", "1", "--root", root, "--quiet",
                 "--run-dir", str(tmp_path / "fine"), "--init", str(run / "best.pt"),
                 *TINY]) == 0
    assert main(["train", "--dataset", "freesolv", "--epochs", "1", "--root", root, "--quiet",
                 "--run-dir", str(tmp_path / "other"), "--init", str(run / "best.pt"),
                 *TINY[:-2], "--layers", "2"]) == 1
    assert "its model has layers = 1, this run's has 2" in capsys.readouterr().err


def test_pretrain_without_a_corpus_or_with_a_missing_one_exits_2(tmp_path, capsys):
    assert main(["pretrain", "--run-dir", str(tmp_path / "run")]) == 2
    assert "give the corpus: --smiles FILE" in capsys.readouterr().err
    assert main(["pretrain", "--smiles", str(tmp_path / "none.csv"),
                 "--run-dir", str(tmp_path / "run")]) == 2
    assert "no SMILES file at" in capsys.readouterr().err
    assert main(["pretrain", "--smiles", "x.csv", "--mask-rate", "1.5"]) == 2
    assert "argument --mask-rate: must be in (0, 1), got 1.5" in capsys.readouterr().err
