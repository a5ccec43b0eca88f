"""The encoder-decoder example trains and decodes well above chance on a tiny budget."""
import re

import torch

from tests.helpers import load_script


def _load():
    return load_script("seq2seq_example")


def test_cross_attention_stays_inside_each_pair():
    mod = _load()
    torch.manual_seed(0)
    model = mod.Seq2Seq(channels=16, heads=2, layers=1).eval()
    srcs, tgts = [[1, 2, 3, 4], [5, 6, 7, 8, 9, 0]], [[4, 3], [9, 8, 7]]
    src, dec_in, _ = mod.teacher_forcing_batch(list(zip(srcs, tgts)))
    with torch.no_grad():
        both = model.decode(model.encode(src), src.ptr, dec_in)
        src1, dec1, _ = mod.teacher_forcing_batch([(srcs[1], tgts[1])])
        alone = model.decode(model.encode(src1), src1.ptr, dec1)
    torch.testing.assert_close(both[dec_in.ptr[1]:], alone, atol=1e-5, rtol=0)
    # Causal: the logits at a prefix do not change when later target tokens do.
    src2, dec2, _ = mod.teacher_forcing_batch([(srcs[1], [9, 0, 0])])
    with torch.no_grad():
        changed = model.decode(model.encode(src2), src2.ptr, dec2)
    torch.testing.assert_close(changed[:2], alone[:2], atol=1e-5, rtol=0)
    assert not torch.allclose(changed[2:], alone[2:])


def test_short_run_learns_to_reverse(capsys):
    mod = _load()
    threads = torch.get_num_threads()
    try:
        exact, tok = mod.main(["--steps", "150", "--test-size", "200", "--log-every", "75",
                               "--threads", "1", "--seed", "0"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    match = re.search(r"token accuracy ([0-9.]+)", out)
    assert match, out
    printed = float(match.group(1))
    assert abs(printed - tok) < 1e-4
    with capsys.disabled():
        print(f"\n[seq2seq] 150 steps: exact {exact:.3f} token {tok:.3f}")
    assert printed >= 0.6  # chance is 0.1 per token (10 digits)
