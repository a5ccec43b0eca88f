"""graphformer's atom and bond encoders against ogb's own
(ogb.graphproppred.mol_encoder): the same parameters under the same seed,
the same outputs and gradients, and a clear error for a value outside a
feature's vocabulary."""
import subprocess
import sys

import pytest
import torch
from ogb.graphproppred.mol_encoder import AtomEncoder as OgbAtomEncoder
from ogb.graphproppred.mol_encoder import BondEncoder as OgbBondEncoder
from ogb.utils.features import get_atom_feature_dims, get_bond_feature_dims

from graphformer.models import encoders
from graphformer.models.encoders import AtomEncoder, BondEncoder


@pytest.mark.parametrize("dense_counts", [True, False])   # the two ways of the gradient
@pytest.mark.parametrize("ours, theirs, dims", [
    (AtomEncoder, OgbAtomEncoder, get_atom_feature_dims()),
    (BondEncoder, OgbBondEncoder, get_bond_feature_dims()),
])
def test_same_parameters_values_and_gradients_as_ogb(ours, theirs, dims, dense_counts,
                                                     monkeypatch):
    if not dense_counts:
        monkeypatch.setattr(encoders, "DENSE_COUNTS_ABOVE", 0)
    torch.manual_seed(0)
    a = ours(16)
    torch.manual_seed(0)
    b = theirs(16)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    g = torch.Generator().manual_seed(1)
    x = torch.stack([torch.randint(0, d, (300,), generator=g) for d in dims], 1)
    x[0] = torch.tensor(dims) - 1                        # every column's last value
    for cols in (len(dims), 2):                          # all columns, and the first two
        out_a, out_b = a(x[:, :cols]), b(x[:, :cols])
        torch.testing.assert_close(out_a, out_b, atol=1e-6, rtol=1e-6)
        w = torch.randn_like(out_a)
        grads_a = torch.autograd.grad((out_a * w).sum(), list(a.parameters()), allow_unused=True)
        grads_b = torch.autograd.grad((out_b * w).sum(), list(b.parameters()), allow_unused=True)
        for ga, gb in zip(grads_a, grads_b):
            if gb is None:
                assert ga is None or ga.abs().sum() == 0
            else:   # sums of ~300 float32 rows, added in another order
                torch.testing.assert_close(ga, gb, atol=1e-5, rtol=1e-5)


def test_a_value_outside_its_feature_is_refused_naming_row_and_column():
    enc = AtomEncoder(8)
    x = torch.zeros(5, 9, dtype=torch.long)
    x[3, 1] = 5                                          # feature 1 has 5 values: 0..4
    with pytest.raises(IndexError, match=r"x\[3, 1\] = 5 is outside feature 1's 5 values"):
        enc(x)
    x[3, 1] = -1
    with pytest.raises(IndexError, match=r"x\[3, 1\] = -1"):
        enc(x)
    with pytest.raises(ValueError, match="has 9 feature columns but 'x' has 10"):
        enc(torch.zeros(2, 10, dtype=torch.long))


def test_the_command_line_does_not_import_scikit_learn():
    """ogb.graphproppred's evaluator imports scikit-learn (about a second):
    the CLI's import path avoids it."""
    code = "import sys, graphformer.cli.commands; print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
