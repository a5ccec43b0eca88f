"""scripts/compare_moleculeace.py on a small set laid out as MoleculeACE's
files are (ESOL's molecules with made-up split and cliff labels, in a wheel
and in a folder): the SVM baseline, the scoring, the seeded validation part,
the held-out guard, resuming from the JSON lines and graphformer's run."""
import json
import zipfile

import numpy as np
import pandas as pd
import pytest

from tests.datasets.layouts import ESOL_CSV, ESOL_TARGET
from tests.helpers import load_script


@pytest.fixture(scope="module")
def mace():
    return load_script("compare_moleculeace")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """``CHEMBL1862_Ki.csv`` (a development set) and ``CHEMBL234_Ki.csv`` (a
    held-out one) made of 80 ESOL molecules, in a folder and in a wheel."""
    folder = tmp_path_factory.mktemp("mace")
    esol = pd.read_csv(ESOL_CSV).head(80)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"smiles": esol["smiles"], "exp_mean [nM]": 1.0,
                          "y": esol[ESOL_TARGET],
                          "cliff_mol": (rng.random(80) < 0.3).astype(int),
                          "split": np.where(np.arange(80) < 60, "train", "test")})
    data = folder / "data"
    data.mkdir()
    for name in ("CHEMBL1862_Ki", "CHEMBL234_Ki"):
        frame.to_csv(data / f"{name}.csv", index=False)
    wheel = folder / "MoleculeACE-3.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(data / "CHEMBL1862_Ki.csv", "MoleculeACE/Data/benchmark_data/CHEMBL1862_Ki.csv")
    return folder, frame


def test_the_wheel_and_the_folder_read_the_same_set(mace, files):
    folder, frame = files
    a = mace.read_set("CHEMBL1862_Ki", wheel=folder / "MoleculeACE-3.0.0-py3-none-any.whl")
    b = mace.read_set("CHEMBL1862_Ki", data_dir=folder / "data")
    pd.testing.assert_frame_equal(a, b)
    assert list(a.columns) == ["smiles", "y", "cliff_mol", "split"] and len(a) == 80
    with pytest.raises(ValueError, match="holds no MoleculeACE/Data/benchmark_data/CHEMBL2"):
        mace.read_set("CHEMBL204_Ki", wheel=folder / "MoleculeACE-3.0.0-py3-none-any.whl")


def test_validation_is_a_seeded_tenth_of_train(mace, files):
    _, frame = files
    a, b, c = (mace.with_validation(frame, s) for s in (0, 0, 1))
    assert (a["split"] == "val").sum() == 6 and (a["split"] == "train").sum() == 54
    assert (a["split"] == "test").sum() == 20 and a["split"].equals(b["split"])
    assert not a["split"].equals(c["split"])
    assert (a[frame["split"] == "test"]["split"] == "test").all()      # test kept whole


def test_scores_and_tanimoto_by_hand(mace):
    test = pd.DataFrame({"y": [1.0, 2.0, 3.0, 4.0], "cliff_mol": [0, 1, 0, 1]})
    s = mace.scores([1.0, 3.0, 3.0, 2.0], test)          # errors 0, 1, 0, -2
    assert s["test_rmse"] == pytest.approx((5 / 4) ** 0.5)
    assert s["cliff_rmse"] == pytest.approx((5 / 2) ** 0.5)
    assert (s["test_count"], s["cliff_count"]) == (4, 2)
    a = np.array([[1, 1, 0, 0], [0, 0, 0, 0]], dtype=bool)
    b = np.array([[1, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=bool)
    np.testing.assert_allclose(mace.tanimoto(a, b), [[1 / 3, 1, 0], [0, 0, 1]])


def test_the_svm_run_is_tabled_and_resumed(mace, files, tmp_path, capsys):
    folder, _ = files
    out = tmp_path / "runs.jsonl"
    argv = ["--data-dir", str(folder / "data"), "--datasets", "CHEMBL1862_Ki", "--methods",
            "svm", "--seeds", "0", "1", "--out", str(out)]
    assert mace.main(argv) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["method"], r["seed"]) for r in rows] == [("svm", 0), ("svm", 1)]
    # the SVM learns solubility from ECFP: well below the spread of the targets
    _, frame = files
    spread = float(frame[frame["split"] == "test"]["y"].std(ddof=0))
    assert all(r["test_rmse"] < 0.9 * spread for r in rows), (rows, spread)
    printed = capsys.readouterr().out
    assert "| CHEMBL1862_Ki | " in printed and "mean of 1 sets" in printed
    assert mace.main(argv) == 0                                    # nothing new to run
    assert len(out.read_text().splitlines()) == 2
    assert "seed 0: test RMSE" not in capsys.readouterr().out
    assert mace.main(["--markdown-from", str(out)]) == 0
    assert capsys.readouterr().out.startswith("| set | svm test | svm cliff |")


def test_a_variant_of_other_settings_under_the_same_label_is_refused(mace, files, tmp_path,
                                                                    capsys):
    """Runs were matched by set, method label and seed only: a second
    ``--set`` variant without ``--label`` was skipped as done and shown with
    the first one's scores."""
    folder, _ = files
    out = tmp_path / "runs.jsonl"
    first = {"dataset": "CHEMBL1862_Ki", "method": "graphformer:custom", "seed": 0,
             "seconds": 1.0, "settings": {"model": {"dropout": "0.1"}}, "test_rmse": 0.5,
             "cliff_rmse": 0.6}
    out.write_text(json.dumps(first) + "\n")
    argv = ["--data-dir", str(folder / "data"), "--datasets", "CHEMBL1862_Ki", "--methods",
            "graphformer", "--seeds", "0", "--out", str(out)]
    with pytest.raises(SystemExit) as exit_info:
        mace.main([*argv, "--set", "model.dropout=0.3"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "holds runs of graphformer:custom with other settings ({'model': {'dropout': " \
           "'0.1'}}; these: {'model': {'dropout': '0.3'}})" in err and "--label" in err
    assert out.read_text() == json.dumps(first) + "\n"
    assert mace.main([*argv, "--set", "model.dropout=0.1"]) == 0    # the same: done
    assert "0.500" in capsys.readouterr().out


def test_held_out_sets_are_refused(mace, files, capsys):
    folder, _ = files
    with pytest.raises(SystemExit) as exit_info:
        mace.main(["--data-dir", str(folder / "data"), "--datasets", "CHEMBL234_Ki",
                   "--methods", "svm"])
    assert exit_info.value.code == 2
    assert "['CHEMBL234_Ki'] are held out for an independent measurement" in \
        capsys.readouterr().err
    assert set(mace.DEVELOPMENT_SETS) | set(mace.HELD_OUT) == set(mace.ALL_SETS)
    assert len(mace.DEVELOPMENT_SETS) == 25 and len(mace.ALL_SETS) == 30


@pytest.mark.slow
def test_graphformer_is_trained_and_scored_on_the_same_molecules(mace, files, tmp_path):
    folder, frame = files
    out = tmp_path / "runs.jsonl"
    assert mace.main(["--data-dir", str(folder / "data"), "--datasets", "CHEMBL1862_Ki",
                      "--methods", "graphformer", "--seeds", "0", "--set", "train.epochs=1",
                      "--set", "train.kernel_member=morgan", "--set",
                      "data.molecule_features=morgan", "--set", "train.member_processes=1",
                      "--label", "tiny", "--out", str(out), "--root", str(tmp_path / "c")]) == 0
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["method"] == "graphformer:tiny" and row["test_count"] == 20
    assert row["settings"] == {"train": {"epochs": "1", "kernel_member": "morgan",
                                         "member_processes": "1"},
                               "data": {"molecule_features": ["morgan"]}}
    assert np.isfinite(row["test_rmse"]) and np.isfinite(row["cliff_rmse"])
    assert np.isfinite(row["valid_rmse"]) and np.isfinite(row["valid_rmse_crossfit"])
    assert 0.0 <= row["kernel_weight"] <= 1.0 and np.isfinite(row["valid_rmse_transformers"])
    # the transformers alone: their test RMSE differs from the blend's unless w = 0
    assert np.isfinite(row["test_rmse_transformers"]) and np.isfinite(row["cliff_rmse_transformers"])
    if row["kernel_weight"] == 0.0:
        assert row["test_rmse_transformers"] == pytest.approx(row["test_rmse"], rel=1e-5)
