"""The encoder-only reverse example: one layer with sinusoidal positions learns to reverse."""
import re

import pytest
import torch

from tests.helpers import load_script


@pytest.mark.slow
def test_quick_run_reverses_held_out_sequences(one_thread, capsys):
    mod = load_script("reverse_encoder")
    tok, exact = mod.main(["--quick", "--log-every", "100", "--seed", "0"])
    out = capsys.readouterr().out
    match = re.search(r"token accuracy ([0-9.]+)  exact-sequence accuracy ([0-9.]+)", out)
    assert match, out
    assert abs(float(match.group(1)) - tok) < 1e-4 and abs(float(match.group(2)) - exact) < 1e-4
    assert "8 digits of 10, 1 layer(s), 1 head(s)" in out
    with capsys.disabled():
        print(f"\n[reverse_encoder --quick] token {tok:.4f} exact {exact:.4f}")
    assert tok >= 0.95  # chance is 0.1 per token
    assert exact >= 0.7  # chance is 1e-8 per sequence


def test_positions_are_per_sequence_and_needed():
    mod = load_script("reverse_encoder")
    torch.manual_seed(0)
    model = mod.ReversePredictor(mod.ReverseConfig(seq_len=5)).eval()
    seqs = [torch.tensor([1, 2, 3, 4, 5]), torch.tensor([7, 7]), torch.tensor([0, 9, 8])]
    with torch.no_grad():
        both = model(seqs)
        alone = torch.cat([model([s]) for s in seqs])
        torch.testing.assert_close(both, alone, atol=1e-5, rtol=1e-5)
        # Without positions a full edge set is permutation-equivariant: the
        # reversed input gives the reversed outputs, so reversal cannot be learnt.
        model = mod.ReversePredictor(mod.ReverseConfig(seq_len=5, positions=False)).eval()
        plain = model(seqs[:1])
        flipped = model([seqs[0].flip(0)])
        torch.testing.assert_close(flipped, plain.flip(0), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_without_positions_stays_near_chance(one_thread, capsys):
    mod = load_script("reverse_encoder")
    tok, _ = mod.main(["--quick", "--no-positions", "--log-every", "100"])
    # Without positions the output at token i is a function of x_i and the
    # multiset of its sequence; given those, the target x_{T-1-i} (T = 8 is
    # even, so never i itself) is a uniform draw from the multiset less one
    # copy of x_i. The best such predictor scores E[max count] / (T - 1):
    x = torch.randint(10, (20000, 8), generator=torch.Generator().manual_seed(5))
    counts = torch.nn.functional.one_hot(x, 10).sum(1)                  # [n, 10]
    rest = counts.unsqueeze(1) - torch.nn.functional.one_hot(x, 10)     # [n, T, 10]
    bound = (rest.max(-1).values.float() / 7).mean().item()
    with capsys.disabled():
        print(f"\n[reverse_encoder --no-positions] token {tok:.4f} "
              f"(best possible without positions {bound:.4f})")
    assert 0.25 < bound < 0.4
    assert tok <= bound + 0.03


def test_config_checks():
    mod = load_script("reverse_encoder")
    with pytest.raises(ValueError, match="'model_dim' \\(30\\) is not divisible by 'heads' \\(4\\)"):
        mod.ReverseConfig(model_dim=30, heads=4)
    with pytest.raises(ValueError, match="'seq_len' must be an int >= 1, got 0"):
        mod.ReverseConfig(seq_len=0)
