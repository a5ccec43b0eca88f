"""scripts/rasp_train.py --quick runs end to end: the table, the JSON and the
pictures are written and agree with each other; the compiled model is exact
on the test set; the sizes trained are the predicted one, one layer fewer and
(with two heads) one head fewer. No assertion on learned accuracy (20 steps)."""
import json

import pytest
import torch

from graphformer import rasp
from tests.helpers import load_script

pytestmark = pytest.mark.slow  # the --quick run: about 10 s


@pytest.fixture(scope="module")
def script():
    return load_script("rasp_train")


@pytest.fixture(scope="module")
def results(script, tmp_path_factory):
    out = tmp_path_factory.mktemp("rasp")
    res = script.main(["--quick", "--programs", "hist", "double_hist", "dyck1",
                       "--out", str(out)])
    return out, res


def test_outputs_written_and_consistent(results):
    out, res = results
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["programs"]) == {"hist", "double_hist", "dyck1"}
    for name in saved["programs"]:
        assert (out / f"attention_{name}.png").stat().st_size > 0
    table = (out / "results.md").read_text()
    assert table.count("\n") == 2 + 3
    for name, prog in saved["programs"].items():
        L, H = prog["shape"]
        assert prog["compiled_seq_acc"] == 1.0 and prog["compiled_token_acc"] == 1.0
        expected = {"predicted": [L, H], "layer_fewer": [L - 1, H]}
        if H > 1:
            expected["head_fewer"] = [L, H - 1]
        assert {k: [v[0]["layers"], v[0]["heads"]] for k, v in prog["variants"].items()} \
            == expected
        for runs in prog["variants"].values():
            for r in runs:
                assert 0.0 <= r["seq_acc"] <= r["token_acc"] <= 1.0
                assert len(r["match"]) == min(r["layers"], L)
                for match, chance in zip(r["match"], r["chance"]):
                    assert all(0.0 <= m <= 1.0 + 1e-9 for m in match + chance)
        assert f"| {name} | ({L}, {H}) |" in table
    assert saved["programs"]["double_hist"]["shape"] == [2, 2]
    assert saved["programs"]["hist"]["variants"]["layer_fewer"][0]["match"] == []


def test_attention_scores_against_uniform_and_exact_heads(script):
    """A head attending exactly over the selector scores 1; uniform attention
    scores the chance share; BOS edges are left out."""
    task = script.TASKS["reverse"]
    classes = rasp.compile(task.program, 4, task.vocab).output_values
    batch = script.make_batch(task, [[0, 1, 2], [3, 4]], classes, bos=True)
    sel = rasp.head_selectors(batch.output)[1][0]
    # the flip selector lifted to the model's numbering (with BOS)
    lift = torch.nonzero(batch.original >= 0).view(-1)
    edges = lift[sel.edge_index]
    alpha = torch.ones(edges.size(1), 1)
    alpha = alpha / torch.bincount(edges[1], minlength=batch.original.numel())[edges[1]][:, None]
    best, chance = script.attention_scores([alpha, alpha], edges, [[sel], [sel]], batch.original)
    assert best == [[1.0], [1.0]] and chance == [[1.0], [1.0]]
    full = rasp.select(rasp.indices(batch.context), rasp.indices(batch.context), rasp.TRUE)
    full_edges = script.patterns.full(batch.model_ptr)
    uniform = script._uniform_alpha(full_edges, batch.original.numel())
    best, chance = script.attention_scores([uniform], full_edges, [[sel, full]], batch.original)
    # T + 1 keys (BOS included) per query, one of them selected; BOS mass left out
    share = (3 / 4 + 2 / 3) / (3 * 3 / 4 + 2 * 2 / 3)
    assert best[0] == pytest.approx([share, 1.0]) and chance[0] == pytest.approx([share, 1.0])


def test_config_invariants(script):
    with pytest.raises(ValueError, match="unknown programs"):
        script.Config(programs=["nope"])
    with pytest.raises(ValueError, match="'steps' must be >= 1"):
        script.Config(steps=0)
