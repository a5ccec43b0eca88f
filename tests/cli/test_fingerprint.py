"""``graphformer fingerprint``: the vectors a model's head reads, streamed as
``predict`` is (same reader, workers, partial output and ``--resume``), as
.npz or .csv; the README's scikit-learn example on them runs."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import graphformer.cli.fingerprint as fingerprint_cli
from graphformer.train.checkpoint import load_run
from graphformer.train.screen import partial_folder
from tests.cli.test_bad_input import assert_error, cli
from tests.cli.test_predict_stream import (FAST, SMILES, checkpoint, crash_in_chunk,  # noqa: F401
                                           ensemble, source, work, write_input)

ROOT = Path(__file__).resolve().parents[2]

#: the README's example (section "Molecule vectors for other models"), run by
#: test_the_readme_example_runs: fingerprints of a model trained on ESOL as
#: the features of scikit-learn models of another property
EXAMPLE = '''\
import numpy as np
import pandas as pd
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsRegressor

fp = np.load("lipo_fp.npz")
X = fp["fingerprint"]                          # [N, D] float32, one row per molecule
lipo = pd.read_csv("datasets/moleculenet/Lipophilicity.csv")
y = lipo["exp"].to_numpy()[fp["row"] - 1]       # row N is the file's N-th molecule
for model in (RidgeCV(alphas=np.logspace(-3, 3, 13)), KNeighborsRegressor(n_neighbors=5)):
    rmse = -cross_val_score(model, X, y, cv=5, scoring="neg_root_mean_squared_error").mean()
    print(f"{type(model).__name__}: 5-fold RMSE {rmse:.3f} logD")
'''


def predictions(ckpt, src, tmp_path):
    out = tmp_path / "pred.csv"
    code, _, err = cli("predict", ckpt, src, "-o", out, *FAST)
    assert code == 0, err
    return pd.read_csv(out)


def test_fingerprints_are_what_the_head_reads(checkpoint, source, tmp_path):  # noqa: F811
    npz, table = tmp_path / "fp.npz", tmp_path / "fp.csv"
    for out in (npz, table):
        code, stdout, err = cli("fingerprint", checkpoint, source, "-o", out, "--chunk-size",
                                "7", "--batch-size", "3", *FAST)
        assert code == 0, err
    state, cfg, model = load_run(checkpoint)
    width = cfg.model.hidden + model.mol_features
    assert model.mol_features > 0      # the scaled descriptors are part of the vector
    assert stdout.strip() == f"wrote 40 fingerprints ({width} values each) to {table}"
    fp = np.load(npz)
    assert sorted(fp.files) == ["fingerprint", "row", "smiles"]
    assert fp["row"].dtype == np.int64 and fp["fingerprint"].dtype == np.float32
    assert fp["fingerprint"].shape == (40, width)
    assert fp["smiles"].tolist() == SMILES
    pred = predictions(checkpoint, source, tmp_path)
    assert fp["row"].tolist() == pred["row"].tolist()
    # the head on the vectors gives the predictions
    with torch.no_grad():
        y = model.head(torch.from_numpy(fp["fingerprint"]))[:, 0] * state["y_std"] \
            + state["y_mean"]
    np.testing.assert_allclose(y.numpy(), pred["y"].to_numpy(), rtol=1e-5, atol=1e-5)
    # the CSV holds the same numbers
    frame = pd.read_csv(table)
    assert list(frame.columns[:3]) == ["row", "smiles", "fingerprint_0"]
    assert frame.columns[-1] == f"fingerprint_{width - 1}"
    np.testing.assert_allclose(frame.iloc[:, 2:].to_numpy(), fp["fingerprint"], rtol=1e-6,
                               atol=1e-6)


def test_an_ensembles_members_mean_or_all(ensemble, source, tmp_path):  # noqa: F811
    blocks, mean = tmp_path / "all.npz", tmp_path / "mean.npz"
    assert cli("fingerprint", ensemble, source, "-o", blocks, "--members", "all", *FAST)[0] == 0
    assert cli("fingerprint", ensemble, source, "-o", mean, *FAST)[0] == 0
    state, cfg, model = load_run(ensemble)
    every, avg = np.load(blocks)["fingerprint"], np.load(mean)["fingerprint"]
    assert every.shape == (40, 2, cfg.model.hidden) and avg.shape == (40, cfg.model.hidden)
    np.testing.assert_allclose(every.mean(1), avg, rtol=1e-5, atol=1e-6)
    assert not np.allclose(every[:, 0], every[:, 1])
    # each member's head on its own block; their mean is the ensemble's prediction
    with torch.no_grad():
        members = torch.stack([m.head(torch.from_numpy(every[:, k]))[:, 0]
                               for k, m in enumerate(model.members)])
    expected = (members * state["y_std"] + state["y_mean"]).mean(0)
    np.testing.assert_allclose(expected.numpy(), predictions(ensemble, source, tmp_path)["y"],
                               rtol=1e-5, atol=1e-5)
    table = tmp_path / "all.csv"
    assert cli("fingerprint", ensemble, source, "-o", table, "--members", "all", *FAST)[0] == 0
    columns = pd.read_csv(table).columns
    assert columns[2] == "fingerprint_0_0" and columns[-1] == f"fingerprint_1_{cfg.model.hidden - 1}"


def test_an_interrupted_npz_resumes_to_the_same_bytes(ensemble, tmp_path,  # noqa: F811
                                                      monkeypatch):
    smiles = SMILES[:30]
    smiles[4] = "C1CC"
    src = write_input(tmp_path / "in.csv", smiles, blank_after=(10,))
    flags = ["--chunk-size", "6", "--batch-size", "4", "--skip-invalid", "--members", "all",
             "--workers", "2", *FAST]
    whole = tmp_path / "whole.npz"
    code, stdout, _ = cli("fingerprint", ensemble, src, "-o", whole, *flags)
    assert code == 0 and "(1 invalid rows skipped)" in stdout
    out = tmp_path / "out.npz"
    with monkeypatch.context() as m:
        crash_in_chunk(m, fingerprint_cli, "fingerprint_columns", 5)
        assert cli("fingerprint", ensemble, src, "-o", out, *flags)[0] == 130
    assert not out.exists() and partial_folder(out).is_dir()
    assert_error(cli("fingerprint", ensemble, src, "-o", out, "--resume", *flags, "--members",
                     "mean"), 2, "--members mean differs", "--members all")
    code, _, err = cli("fingerprint", ensemble, src, "-o", out, "--resume", *flags)
    assert code == 0, err
    assert out.read_bytes() == whole.read_bytes()
    got = np.load(out)
    assert got["row"].tolist() == [1, 2, 3, 4, *range(6, 12), *range(13, 32)]
    assert got["smiles"].tolist() == [s for k, s in enumerate(smiles) if k != 4]


def test_an_output_of_another_kind_is_refused(checkpoint, source, tmp_path):  # noqa: F811
    assert_error(cli("fingerprint", checkpoint, source, "-o", tmp_path / "fp.parquet", *FAST), 2,
                 "fp.parquet", ".npz", ".csv")
    assert_error(cli("fingerprint", checkpoint, source, "-o", tmp_path / "fp.npz", "--members",
                     "some", *FAST), 2, "--members")
    assert not list(tmp_path.iterdir())


def test_the_readme_example_runs(checkpoint, tmp_path):  # noqa: F811
    lipo = pd.read_csv(ROOT / "datasets" / "moleculenet" / "Lipophilicity.csv").head(40)
    (tmp_path / "datasets" / "moleculenet").mkdir(parents=True)
    src = tmp_path / "datasets" / "moleculenet" / "Lipophilicity.csv"
    lipo.to_csv(src, index=False)
    code, _, err = cli("fingerprint", checkpoint, src, "-o", tmp_path / "lipo_fp.npz", *FAST)
    assert code == 0, err
    result = subprocess.run([sys.executable, "-c", EXAMPLE], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["RidgeCV", "KNeighborsRegressor"]
    assert all(re.fullmatch(r"\w+: 5-fold RMSE \d+\.\d{3} logD", line) for line in lines)
    page = (ROOT / "docs" / "screening.md").read_text()      # the documented example
    assert EXAMPLE in re.findall(r"```python\n(.*?)```", page, flags=re.S)
