"""scripts/compare_uncertainty.py: chemprop's uncertainty methods run on
graphformer's split files and are scored by graphformer's functions. A
stand-in ``chemprop`` (predicting validation targets + 0.5 and test targets
+ 1 with variance 1, an ensemble as two members at +-1) makes every number
exact without chemprop installed."""
import json
import math
import sys

import pytest

from tests.helpers import load_script
from tests.scripts.test_compare_chemprop import fake_chemprop  # noqa: F401  (fixture)

FAKE = """#!{python}
import csv, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_CHEMPROP_LOG"], "a") as fh:
    fh.write(" ".join(args) + "\\n")
if args[0] == "train":
    out = args[args.index("--output-dir") + 1]
    size = int(args[args.index("--ensemble-size") + 1]) if "--ensemble-size" in args else 1
    for k in range(size):
        os.makedirs(os.path.join(out, f"model_{{k}}"))
        open(os.path.join(out, f"model_{{k}}", "best.pt"), "w").close()
    sys.exit(0)
test = args[args.index("--test-path") + 1]
output = args[args.index("--output") + 1]
offset = 0.5 if test.endswith("valid.csv") else 1.0
var = 0.25 if "--cal-path" in args else 1.0   # chemprop's own z-scaling: s = 0.5
with open(test) as fh:
    rows = list(csv.reader(fh))
with open(output, "w", newline="") as fh:
    w = csv.writer(fh)
    w.writerow(["smiles", "y0", "y0_unc"])
    for r in rows[1:]:
        w.writerow([r[0], float(r[1]) + offset, var])
if args[args.index("--uncertainty-method") + 1] == "ensemble":
    stem, ext = os.path.splitext(output)
    with open(stem + "_individual" + ext, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["smiles", "y0_model_0", "y0_model_1"])
        for r in rows[1:]:
            w.writerow([r[0], float(r[1]) + offset + 1, float(r[1]) + offset - 1])
"""


@pytest.fixture
def stand_in(fake_chemprop):
    """compare_chemprop's stand-in ``chemprop`` on ``PATH`` (and its call log),
    with this module's program."""
    exe = fake_chemprop.parent / "bin" / "chemprop"
    exe.write_text(FAKE.format(python=sys.executable))
    return fake_chemprop


def test_chemprop_methods_scored_by_graphformers_functions(tmp_path, capsys, stand_in):
    compare = load_script("compare_uncertainty")
    out = tmp_path / "unc.json"
    assert compare.main(["--datasets", "freesolv", "--seeds", "3", "--tools", "chemprop",
                         "--json", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    # every method chemprop has (not graphformer's `default`, which it has no counterpart of)
    assert [r["method"] for r in runs] == ["ensemble", "mve", "evidential"]
    # validation: errors 0.5, std 1 -> z-scale 0.5; test: errors 1, calibrated std 0.5
    nll = 0.5 * math.log(2 * math.pi * 0.25) + 2.0
    for r in runs:
        assert r["rmse"] == pytest.approx(1.0) and r["nll"] == pytest.approx(nll)
        assert r["zscale"] == [pytest.approx(0.5)]
        assert r["uncalibrated"]["nll"] == pytest.approx(0.5 * math.log(2 * math.pi) + 0.5)
        # conformal: every score 0.5 -> intervals +-0.5 miss every error of 1
        assert r["conformal_coverage"] == 0.0 and r["conformal_width"] == pytest.approx(1.0)
        assert r["zscale_coverage"] == 0.0 and r["spearman"] is None
        assert r["chemprop_zscaling_nll"] == pytest.approx(r["nll"])   # the check agrees
        assert r["zscale_only_nll"] == pytest.approx(r["nll"]) and r["floor"] == [0.0]
    calls = [c.split() for c in stand_in.read_text().splitlines()]
    trains = [c for c in calls if c[0] == "train"]
    assert trains[0][trains[0].index("--ensemble-size") + 1] == "2"
    assert trains[1][trains[1].index("--task-type") + 1] == "regression-mve"
    assert trains[2][trains[2].index("--v-kl") + 1] == "0.2"
    assert all(c[c.index("--pytorch-seed") + 1] == "3" for c in trains)
    methods = [c[c.index("--uncertainty-method") + 1] for c in calls if c[0] == "predict"]
    assert methods == ["ensemble"] * 3 + ["mve"] * 3 + ["evidential-total"] * 3
    ensemble_predicts = [c for c in calls if c[0] == "predict"][:3]
    assert all(len(c[c.index("--model-paths") + 1:c.index("--uncertainty-method")]) == 2
               for c in ensemble_predicts)
    capsys.readouterr()
    assert compare.main(["--markdown-from", str(out)]) == 0
    table = capsys.readouterr().out
    assert f"| freesolv | mve | chemprop | 1.000 | {nll:.3f} |" in table
    assert "with our z-scaling alone (no floor) / with chemprop's own" in table
    # compare_chemprop.py --uncertainty is this comparison, by the name the issue gave it
    assert load_script("compare_chemprop").main(["--uncertainty", "--markdown-from",
                                                 str(out)]) == 0
    assert capsys.readouterr().out == table


def test_the_methods_flags():
    compare = load_script("compare_uncertainty")
    assert compare.graphformer_flags("ensemble", 3, 0.2) == [
        "--loss", "mse", "--ensemble", "3", "--kernel-member", "none"]
    assert compare.graphformer_flags("evidential", 3, 0.1) == [
        "--loss", "evidential", "--ensemble", "1", "--evidential-lambda", "0.1"]
    assert compare.chemprop_flags("evidential", 3, 0.1) == (
        ["--task-type", "regression-evidential", "--v-kl", "0.1"], "evidential-total")
    # the defaults as a user trains them: the kernel member is left to `auto`
    assert compare.graphformer_flags("default", 2, 0.2) == ["--loss", "mse", "--ensemble", "2"]
    with pytest.raises(ValueError, match="no counterpart of the method 'default'"):
        compare.chemprop_flags("default", 2, 0.2)


def test_an_existing_json_is_continued_not_redone(tmp_path, capsys, stand_in):
    compare = load_script("compare_uncertainty")
    out = tmp_path / "unc.json"
    base = ["--datasets", "freesolv", "--tools", "chemprop", "--json", str(out)]
    assert compare.main([*base, "--seeds", "3", "--methods", "mve"]) == 0
    calls = len(stand_in.read_text().splitlines())
    # seed 3's mve is kept and not run again; seed 4 and the other method are added
    assert compare.main([*base, "--seeds", "3", "4", "--methods", "mve", "evidential"]) == 0
    saved = json.loads(out.read_text())
    assert [(r["seed"], r["method"]) for r in saved["runs"]] == [
        (3, "mve"), (3, "evidential"), (4, "mve"), (4, "evidential")]
    assert saved["seeds"] == [3, 4]
    trains = [c for c in stand_in.read_text().splitlines()[calls:] if c.startswith("train")]
    assert len(trains) == 3
    with pytest.raises(SystemExit):     # other settings: refused, nothing run or written
        compare.main([*base, "--seeds", "5", "--interval", "0.8"])
    assert "other settings (interval 0.9)" in capsys.readouterr().err
    assert json.loads(out.read_text()) == saved
