import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from graphformer.cli import main
from tests.train.conftest import tiny_csv  # noqa: F401  (fixture)

TINY = ["--hidden", "16", "--layers", "2", "--heads", "2", "--rwse-steps", "4",
        "--batch-size", "16", "--threads", "1", "--split", "random", "--epochs", "1",
        "--ensemble", "1"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_csv):  # noqa: F811
    tmp = tmp_path_factory.mktemp("explain")
    code = main(["train", "--dataset", str(tiny_csv), "--target-columns", "y",
                 "--root", str(tmp / "cache"), "--run-dir", str(tmp / "run"), "--quiet", *TINY])
    assert code == 0
    return tmp / "run" / "best.pt"


def test_explain_writes_the_picture_and_the_same_prediction_as_predict(checkpoint, tmp_path,
                                                                       capsys):
    smiles = "CC(=O)Oc1ccccc1C(=O)O"
    out = tmp_path / "pics" / "aspirin.png"
    assert main(["explain", str(checkpoint), "--smiles", smiles, "-o", str(out),
                 "--layer", "0", "--head", "1", "--pattern", "bonds"]) == 0
    printed = capsys.readouterr().out
    assert f"to {out}" in printed
    value = float(printed.split("prediction y: ")[1].split()[0])
    img = imread(out)
    assert img.shape[:2] == (400, 500)
    rgb = img[..., :3].reshape(-1, 3)
    assert rgb.std() > 0.02 and len(np.unique(np.round(rgb * 255), axis=0)) > 10

    src = tmp_path / "in.csv"
    src.write_text(f"smiles\n{smiles}\n")
    assert main(["predict", str(checkpoint), str(src), "-o", str(tmp_path / "p.csv")]) == 0
    assert value == pytest.approx(pd.read_csv(tmp_path / "p.csv")["y"][0], rel=1e-5, abs=1e-6)


def test_explain_defaults_and_size(checkpoint, tmp_path, capsys):
    out = tmp_path / "e.png"
    assert main(["explain", str(checkpoint), "--smiles", "CCO", "-o", str(out),
                 "--size", "300", "200"]) == 0
    assert "layer 1, mean over heads" in capsys.readouterr().out
    assert imread(out).shape[:2] == (200, 300)


def test_explain_errors(checkpoint, tmp_path, capsys):
    out = tmp_path / "x.png"
    assert main(["explain", str(checkpoint), "--smiles", "C1CC", "-o", str(out)]) == 2
    assert "cannot parse SMILES 'C1CC'" in capsys.readouterr().err and not out.exists()
    assert main(["explain", str(checkpoint), "--smiles", "CCO", "-o", str(out),
                 "--pattern", "k_hop"]) == 2
    assert "pattern 'k_hop' is not one of this model's ['bonds', 'full']" \
        in capsys.readouterr().err
    assert main(["explain", str(checkpoint), "--smiles", "CCO", "-o", str(out),
                 "--layer", "2"]) == 2
    assert "layer 2 out of range" in capsys.readouterr().err and not out.exists()


def test_help_lists_explain(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0 and "explain" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["explain", "--help"])
    assert exit_.value.code == 0 and "--smiles" in capsys.readouterr().out
