"""Molecule-level features: RDKit's 2D descriptors and given column values."""
import math

import pytest
import torch
from rdkit import Chem
from rdkit.Chem import Descriptors

from graphformer.data import RDKIT2D_NAMES, from_smiles, molecule_feature_names
from graphformer.data import descriptors

PARACETAMOL = "CC(=O)Nc1ccc(O)cc1"


def test_the_descriptors_are_rdkits_own_values_in_the_fixed_order():
    ref = Descriptors.CalcMolDescriptors(Chem.MolFromSmiles(PARACETAMOL))
    data = from_smiles(PARACETAMOL, molecule_feature_sets=["rdkit2d"])
    assert data.mol_x.dtype == torch.float32 and data.mol_x.shape == (1, len(RDKIT2D_NAMES))
    expected = torch.tensor([[ref[n] for n in RDKIT2D_NAMES]], dtype=torch.float32)
    assert torch.equal(data.mol_x, expected)
    got = dict(zip(RDKIT2D_NAMES, data.mol_x[0].tolist()))
    assert got["NumHDonors"] == 2 and got["RingCount"] == 1 and got["fr_amide"] == 1
    assert got["MolWt"] == pytest.approx(151.165, abs=1e-3)


def test_the_list_is_fixed_named_and_leaves_out_the_slow_and_exponential_ones():
    assert len(RDKIT2D_NAMES) == len(set(RDKIT2D_NAMES)) == 206
    assert RDKIT2D_NAMES[:2] == ("MaxAbsEStateIndex", "MaxEStateIndex")
    assert RDKIT2D_NAMES[-1] == "fr_urea"
    for dropped in ("qed", "Ipc", "SPS", "BCUT2D_MWHI"):
        assert dropped not in RDKIT2D_NAMES
    assert molecule_feature_names(["rdkit2d"], ["a", "b"]) == RDKIT2D_NAMES + ("a", "b")
    with pytest.raises(ValueError, match="unknown molecule feature set 'rdkit3d'"):
        molecule_feature_names(["rdkit3d"])


def test_a_raising_or_infinite_descriptor_is_nan_not_a_crash(monkeypatch):
    real = descriptors._functions()
    fake = list(real)

    def boom(mol):
        raise RuntimeError("descriptor failed")

    fake[0], fake[1] = boom, (lambda mol: math.inf)
    monkeypatch.setattr(descriptors, "_FUNCTIONS", fake)
    x = from_smiles("CCO", molecule_feature_sets=["rdkit2d"]).mol_x[0]
    assert math.isnan(x[0]) and math.isnan(x[1])
    assert torch.isfinite(x[2:]).all()


def test_column_values_follow_the_descriptors_and_nonfinite_ones_are_nan():
    data = from_smiles("CCO", molecule_feature_sets=["rdkit2d"],
                       feature_values=[1.5, math.nan, math.inf, 1e300])
    F = len(RDKIT2D_NAMES)
    assert data.mol_x.shape == (1, F + 4)
    tail = data.mol_x[0, F:]
    assert tail[0] == 1.5 and torch.isnan(tail[1:]).all()  # 1e300 overflows float32
    only = from_smiles("CCO", feature_values=[2.0, -3.0]).mol_x
    assert only.tolist() == [[2.0, -3.0]]
    assert "mol_x" not in from_smiles("CCO")  # nothing asked for, nothing added


@pytest.mark.parametrize("smiles", ["CCOc1ccccc1N", "O=C(O)c1ccccc1OC(C)=O",
                                    "C[C@H](N)C(=O)O", "[Na+].[Cl-]"])
def test_morgan_sets_are_ecfp4_bits_and_counts(smiles):
    """``morgan`` is RDKit's classic ECFP4 (radius 2, 2048 bits) bit vector;
    ``morgan_counts`` counts the environments hashed to each of those bits."""
    import numpy as np
    from rdkit import Chem, DataStructs, RDLogger
    from rdkit.Chem import AllChem

    from graphformer.data import from_smiles
    from graphformer.data.descriptors import MORGAN_BITS, molecule_feature_names

    mol = Chem.MolFromSmiles(smiles)
    RDLogger.DisableLog("rdApp.*")                    # the classic call is deprecated
    classic = AllChem.GetMorganFingerprintAsBitVect(mol, 2, nBits=MORGAN_BITS)
    counts = AllChem.GetHashedMorganFingerprint(mol, 2, nBits=MORGAN_BITS)
    RDLogger.EnableLog("rdApp.*")
    bits = np.zeros(MORGAN_BITS)
    DataStructs.ConvertToNumpyArray(classic, bits)
    counted = np.zeros(MORGAN_BITS)
    for bit, n in counts.GetNonzeroElements().items():
        counted[bit] = n
    data = from_smiles(smiles, molecule_feature_sets=["morgan", "morgan_counts"])
    assert data.mol_x.shape == (1, 2 * MORGAN_BITS)
    assert np.array_equal(data.mol_x[0, :MORGAN_BITS].numpy(), bits)
    assert np.array_equal(data.mol_x[0, MORGAN_BITS:].numpy(), counted)
    assert bits.sum() > 0 and (counted > 0).sum() == bits.sum()
    names = molecule_feature_names(["morgan", "morgan_counts"], ["extra"])
    assert names[0] == "morgan_0" and names[MORGAN_BITS] == "morgan_count_0"
    assert names[-1] == "extra" and len(names) == 2 * MORGAN_BITS + 1
