"""SinusoidalPosition: the sinusoid table of Vaswani et al., per sequence of a batch."""
import math

import pytest
import torch
from torch_geometric.data import Batch

from graphformer.data import SinusoidalPosition, from_token_batch, from_tokens, sinusoidal_encoding

SEQS = [[3, 1, 4, 1, 5], [9], [2, 6, 5, 3, 5, 8, 9, 7], [], [3, 2]]


class TutorialPositionalEncoding(torch.nn.Module):
    """The PyTorch tutorial's ``PositionalEncoding`` buffer ("Language
    Modeling with nn.Transformer"), batch-first, without its dropout: float32
    throughout, as there."""

    def __init__(self, d_model: int, max_len: int = 5000):
        super().__init__()
        position = torch.arange(max_len).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe)

    def forward(self, x):  # [B, T, d]
        return x + self.pe[:x.size(1)]


def direct(pos: int, d: int) -> list:
    """PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(same), term by term."""
    row = []
    for k in range(d):
        i2 = k - (k % 2)  # 2i
        angle = pos / 10000.0 ** (i2 / d)
        row.append(math.sin(angle) if k % 2 == 0 else math.cos(angle))
    return row


@pytest.mark.parametrize("d", [8, 7, 1])
def test_values_equal_the_formula_per_sequence(d):
    seqs = SEQS + [[k % 10 for k in range(300)]]  # long: angles up to 299 rad
    batch = from_token_batch(seqs)
    out = SinusoidalPosition(d, dtype=torch.float64)(batch)
    assert out.pos_enc.shape == (batch.num_nodes, d) and out.pos_enc.dtype == torch.float64
    expected = torch.tensor([direct(p, d) for s in seqs for p in range(len(s))],
                            dtype=torch.float64)
    torch.testing.assert_close(out.pos_enc, expected, atol=1e-12, rtol=0)
    # The first token of every sequence is position 0: sin 0 = 0, cos 0 = 1.
    starts = batch.ptr[:-1][batch.ptr.diff() > 0]
    first = out.pos_enc[starts]
    assert torch.all(first[:, 0::2] == 0) and torch.all(first[:, 1::2] == 1)


def test_equals_pytorch_tutorial_buffer_on_uneven_batch():
    d = 16
    batch = SinusoidalPosition(d)(from_token_batch(SEQS))
    assert batch.pos_enc.dtype == torch.float32
    lengths = [len(s) for s in SEQS]
    x = torch.randn(len(SEQS), max(lengths), d)
    ref = TutorialPositionalEncoding(d, max_len=64)(x)
    real = torch.arange(max(lengths)) < torch.tensor(lengths).unsqueeze(1)  # [B, T]
    # The tutorial computes its frequencies in float32; ours are float64
    # rounded once, so the two differ by float32 rounding only.
    torch.testing.assert_close(x[real] + batch.pos_enc, ref[real], atol=2e-7, rtol=1e-6)
    f64 = SinusoidalPosition(d, dtype=torch.float64)(from_token_batch(SEQS)).pos_enc
    torch.testing.assert_close(batch.pos_enc, f64.float(), atol=0, rtol=0)


def test_batch_vector_single_graph_and_per_sequence_collation_agree():
    d = 6
    t = SinusoidalPosition(d)
    batch = t(from_token_batch(SEQS))
    # Each sequence encoded alone, then batched by PyG: the same table.
    collated = Batch.from_data_list([t(from_tokens(s)) for s in SEQS])
    torch.testing.assert_close(collated.pos_enc, batch.pos_enc, atol=0, rtol=0)
    # Only a sorted batch vector (no ptr): the same positions.
    no_ptr = from_token_batch(SEQS)
    data = no_ptr.to_data_list()[0].__class__(x=no_ptr.x, batch=no_ptr.batch)
    torch.testing.assert_close(t(data).pos_enc, batch.pos_enc, atol=0, rtol=0)
    # One sequence without batch information: positions 0..N-1.
    one = t(from_tokens(SEQS[2]))
    torch.testing.assert_close(one.pos_enc, sinusoidal_encoding(torch.arange(8), d))


def test_add_to_float_features_and_errors():
    d = 4
    batch = from_token_batch(SEQS)
    x = torch.randn(batch.num_nodes, d)
    batch.x = x.clone()
    out = SinusoidalPosition(d, add=True)(batch)
    assert "pos_enc" not in out
    torch.testing.assert_close(out.x, x + SinusoidalPosition(d)(from_token_batch(SEQS)).pos_enc)
    with pytest.raises(ValueError, match=r"needs a float 'x' of shape \[N, 4\], got dtype "
                                         r"torch.int64"):
        SinusoidalPosition(d, add=True)(from_token_batch(SEQS))
    with pytest.raises(ValueError, match="'dim' must be an int >= 1, got 0"):
        SinusoidalPosition(0)
    with pytest.raises(ValueError, match="'base' must be a number > 1"):
        SinusoidalPosition(4, base=1)
    unsorted = from_tokens([1, 2, 3])
    unsorted.batch = torch.tensor([0, 1, 0])
    with pytest.raises(ValueError, match="'batch' must be sorted.*node 2 has batch 0 after 1"):
        SinusoidalPosition(4)(unsorted)
    assert repr(SinusoidalPosition(4)) == "SinusoidalPosition(dim=4, base=10000, add=False)"
