"""scripts/snli_decomposable.py on tiny SNLI files in the distributed format."""
import re

import pytest
import torch

from graphformer.data import from_token_batch
from tests.data.snli_files import write_glove, write_snli
from tests.helpers import load_script


def _files(tmp_path):
    root = tmp_path / "snli"
    write_snli(root / "snli_1.0", "train", "jsonl")
    write_snli(root / "snli_1.0", "test", "txt")
    glove = tmp_path / "glove.6B.100d.txt"
    words = ["the", "a", "person", "horse", "boy", ".", ",", "is", "on", "kids", "unused"]
    return root, glove, write_glove(glove, words, dim=100)


def test_defaults_are_d2ls():
    args = load_script("snli_decomposable").parse_args([])
    assert (args.lr, args.epochs, args.batch_size, args.num_steps, args.min_freq, args.embed,
            args.hidden, args.dropout) == (0.001, 4, 256, 50, 5, 100, 200, 0.2)
    assert not args.pad and not args.lowercase and not args.no_glove


def test_glove_initialises_the_embedding(tmp_path, capsys):
    root, glove, vectors = _files(tmp_path)
    mod = load_script("snli_decomposable")
    out = mod.main(["--data-dir", str(root), "--glove", str(glove), "--epochs", "0",
                    "--min-freq", "1"])
    text = capsys.readouterr().out
    assert ("snli_1.0_train.jsonl: 9 pairs (entailment 3, contradiction 3, neutral 3); dropped 1 "
            "with gold label '-'") in text
    assert "snli_1.0_test.txt: 9 pairs" in text
    vocab, weight = out["vocab"], out["model"].embedding.weight
    found = [w for w in vectors if w in vocab]
    assert sorted(found) == sorted(["the", "a", "person", "horse", "boy", ".", ",", "is", "on",
                                    "kids"])
    assert f"GloVe glove.6B.100d.txt: {len(found)} of {len(vocab)} vocabulary tokens found" in text
    for w in found:
        torch.testing.assert_close(weight[vocab[w]], vectors[w], atol=0, rtol=0)
    assert torch.all(weight[vocab["A"]] == 0) and torch.all(weight[vocab["<pad>"]] == 0)


@pytest.mark.parametrize("pad", [False, True])
def test_one_epoch_on_tiny_files(tmp_path, capsys, one_thread, pad):
    root, glove, _ = _files(tmp_path)
    mod = load_script("snli_decomposable")
    argv = ["--data-dir", str(root), "--glove", str(glove), "--epochs", "1", "--min-freq", "1",
            "--batch-size", "4", "--num-steps", "6"] + (["--pad"] if pad else [])
    out = mod.main(argv)
    text = capsys.readouterr().out
    match = re.search(r"epoch 1: loss ([0-9.]+)  train acc ([0-9.]+)  test acc ([0-9.]+)", text)
    assert match, text
    assert out["history"][0]["loss"] == pytest.approx(float(match.group(1)), abs=1e-4)
    assert torch.isfinite(torch.tensor(out["history"][0]["loss"]))
    # Truncated to 6 tokens (and padded to 6 with --pad).
    premises, hypotheses, labels = out["data"]["test"]
    lengths = {p.numel() for p in premises + hypotheses}
    if pad:
        assert lengths == {6}
    else:  # the shortest: "There are children present", "The kids are frowning"
        assert max(lengths) == 6 and min(lengths) == 4
    # The reported test accuracy is the model's, recomputed independently.
    model = out["model"].eval()
    with torch.no_grad():
        pred = model(from_token_batch(premises), from_token_batch(hypotheses)).argmax(-1)
    acc = (pred == labels).float().mean().item()
    assert out["test_acc"] == pytest.approx(acc)
    assert f"test accuracy {acc:.4f} on 9 pairs" in text


def test_missing_files_say_what_to_put_where(tmp_path, capsys):
    mod = load_script("snli_decomposable")
    with pytest.raises(SystemExit) as exit_info:
        mod.main(["--data-dir", str(tmp_path / "snli")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "put snli_1.0_train.jsonl (or snli_1.0_train.txt) in" in err
    assert "snli_1.0.zip" in err
    root, glove, _ = _files(tmp_path)
    with pytest.raises(SystemExit):
        mod.main(["--data-dir", str(root), "--glove", str(tmp_path / "none.txt")])
    err = capsys.readouterr().err
    assert f"GloVe vectors not found at {tmp_path / 'none.txt'}: put glove.6B.100d.txt" in err
    assert "--no-glove" in err


def synthetic_records(n, seed):
    """SNLI-format pairs with a rule the model can learn: the hypothesis is
    2-3 premise words (entailment), the same plus 'not' (contradiction), or
    2-3 words of which one is absent from the premise (neutral)."""
    gen = torch.Generator().manual_seed(seed)
    words = [f"w{k}" for k in range(30)]
    records = []
    for k in range(n):
        perm = torch.randperm(len(words), generator=gen).tolist()
        la = int(torch.randint(4, 8, (1,), generator=gen))
        lb = int(torch.randint(2, 4, (1,), generator=gen))
        premise = [words[i] for i in perm[:la]]
        hyp = [premise[i] for i in torch.randperm(la, generator=gen)[:lb].tolist()]
        gold = ("entailment", "contradiction", "neutral")[k % 3]
        if gold == "contradiction":
            hyp.insert(int(torch.randint(len(hyp) + 1, (1,), generator=gen)), "not")
        elif gold == "neutral":
            hyp[int(torch.randint(lb, (1,), generator=gen))] = words[perm[la]]
        s1, s2 = " ".join(premise), " ".join(hyp)
        b1, b2 = f"( {s1} )", f"( {s2} )"
        records.append((gold, [gold], (s1, b1, "(ROOT (S " + s1 + "))"),
                        (s2, b2, "(ROOT (S " + s2 + "))"), f"{k}.jpg#0", f"{k}.jpg#0r1"))
    return records


@pytest.mark.slow
def test_learns_a_synthetic_inference_rule(tmp_path, capsys, one_thread):
    root = tmp_path / "snli"
    write_snli(root, "train", "jsonl", synthetic_records(3000, seed=0))
    write_snli(root, "test", "txt", synthetic_records(300, seed=1))
    mod = load_script("snli_decomposable")
    # A small model; dropout 0 (D2L's 0.2 slows this tiny model's learning of
    # exact token matches far beyond a test's budget).
    out = mod.main(["--data-dir", str(root), "--no-glove", "--epochs", "6", "--batch-size", "64",
                    "--lr", "0.005", "--embed", "16", "--hidden", "32", "--dropout", "0",
                    "--min-freq", "1"])
    with capsys.disabled():
        print(f"\n[snli_decomposable synthetic] test accuracy {out['test_acc']:.3f} (chance 0.33)")
    assert out["test_acc"] >= 0.75
