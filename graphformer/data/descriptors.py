"""Molecule-level features: RDKit's 2D descriptors, Morgan (ECFP4)
fingerprints as bits or counts, and numeric columns given with the molecules,
as one float row per molecule (``data.mol_x [1, F]``, so
a PyG batch holds ``[B, F]``).

Values are raw: a descriptor that is not finite, or that raises, is NaN, and
so is a missing column value; scaling and imputing are the model's
(:class:`graphformer.nn.FeatureScaler`, fitted on the training split).

The descriptor list is fixed here, in this order, and named
(:data:`RDKIT2D_NAMES`): a checkpoint stores the names it was trained with,
so a change of the list is seen, never silently applied.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from rdkit import rdBase
from rdkit.Chem import Descriptors, Mol
from torch import Tensor

#: The molecule feature sets ``from_smiles(..., molecule_features=...)`` computes:
#: ``rdkit2d`` (:data:`RDKIT2D_NAMES`), ``morgan`` (ECFP4: Morgan radius 2,
#: :data:`MORGAN_BITS` bits, RDKit's default atom invariants) and
#: ``morgan_counts`` (the same hashed environments, counted).
MOLECULE_FEATURE_SETS = ("rdkit2d", "morgan", "morgan_counts")

#: The length of the Morgan fingerprints (bits, or counts per hashed bit).
MORGAN_BITS = 2048
MORGAN_RADIUS = 2

#: RDKit's 2D descriptors (``rdkit.Chem.Descriptors._descList``, RDKit
#: 2024-2026) in its order, less these, for cost or use:
#:
#: - ``qed`` (2.2 ms a molecule, the slowest, a sixth of the whole list): a
#:   desirability score made of molecular weight, logP, H-bond donors and
#:   acceptors, polar surface area, rotatable bonds and aromatic rings, which
#:   are all here on their own;
#: - ``BCUT2D_*`` (8 descriptors, 1 ms): Gasteiger charges and an eigen
#:   decomposition of a Burden matrix per molecule;
#: - ``SPS`` (0.6 ms, spacial score);
#: - ``Ipc``: exponential in the size of the molecule (1e30 and beyond on
#:   drug-sized ones, past float32's range); ``AvgIpc`` carries it on a sane
#:   scale.
#:
#: Measured on Lipophilicity's molecules: the full list takes 12.6 ms a
#: molecule on one core, this one 5.8 (24 s for its 4,200 molecules).
RDKIT2D_NAMES: Tuple[str, ...] = (
    "MaxAbsEStateIndex", "MaxEStateIndex", "MinAbsEStateIndex", "MinEStateIndex", "MolWt",
    "HeavyAtomMolWt", "ExactMolWt", "NumValenceElectrons", "NumRadicalElectrons",
    "MaxPartialCharge", "MinPartialCharge", "MaxAbsPartialCharge", "MinAbsPartialCharge",
    "FpDensityMorgan1", "FpDensityMorgan2", "FpDensityMorgan3", "AvgIpc", "BalabanJ",
    "BertzCT", "Chi0", "Chi0n", "Chi0v", "Chi1", "Chi1n", "Chi1v", "Chi2n", "Chi2v",
    "Chi3n", "Chi3v", "Chi4n", "Chi4v", "HallKierAlpha", "Kappa1", "Kappa2", "Kappa3",
    "LabuteASA", "PEOE_VSA1", "PEOE_VSA10", "PEOE_VSA11", "PEOE_VSA12", "PEOE_VSA13",
    "PEOE_VSA14", "PEOE_VSA2", "PEOE_VSA3", "PEOE_VSA4", "PEOE_VSA5", "PEOE_VSA6",
    "PEOE_VSA7", "PEOE_VSA8", "PEOE_VSA9", "SMR_VSA1", "SMR_VSA10", "SMR_VSA2", "SMR_VSA3",
    "SMR_VSA4", "SMR_VSA5", "SMR_VSA6", "SMR_VSA7", "SMR_VSA8", "SMR_VSA9", "SlogP_VSA1",
    "SlogP_VSA10", "SlogP_VSA11", "SlogP_VSA12", "SlogP_VSA2", "SlogP_VSA3", "SlogP_VSA4",
    "SlogP_VSA5", "SlogP_VSA6", "SlogP_VSA7", "SlogP_VSA8", "SlogP_VSA9", "TPSA",
    "EState_VSA1", "EState_VSA10", "EState_VSA11", "EState_VSA2", "EState_VSA3",
    "EState_VSA4", "EState_VSA5", "EState_VSA6", "EState_VSA7", "EState_VSA8",
    "EState_VSA9", "VSA_EState1", "VSA_EState10", "VSA_EState2", "VSA_EState3",
    "VSA_EState4", "VSA_EState5", "VSA_EState6", "VSA_EState7", "VSA_EState8",
    "VSA_EState9", "FractionCSP3", "HeavyAtomCount", "NHOHCount", "NOCount",
    "NumAliphaticCarbocycles", "NumAliphaticHeterocycles", "NumAliphaticRings",
    "NumAmideBonds", "NumAromaticCarbocycles", "NumAromaticHeterocycles",
    "NumAromaticRings", "NumAtomStereoCenters", "NumBridgeheadAtoms", "NumHAcceptors",
    "NumHDonors", "NumHeteroatoms", "NumHeterocycles", "NumRotatableBonds",
    "NumSaturatedCarbocycles", "NumSaturatedHeterocycles", "NumSaturatedRings",
    "NumSpiroAtoms", "NumUnspecifiedAtomStereoCenters", "Phi", "RingCount", "MolLogP",
    "MolMR", "fr_Al_COO", "fr_Al_OH", "fr_Al_OH_noTert", "fr_ArN", "fr_Ar_COO", "fr_Ar_N",
    "fr_Ar_NH", "fr_Ar_OH", "fr_COO", "fr_COO2", "fr_C_O", "fr_C_O_noCOO", "fr_C_S",
    "fr_HOCCN", "fr_Imine", "fr_NH0", "fr_NH1", "fr_NH2", "fr_N_O", "fr_Ndealkylation1",
    "fr_Ndealkylation2", "fr_Nhpyrrole", "fr_SH", "fr_aldehyde", "fr_alkyl_carbamate",
    "fr_alkyl_halide", "fr_allylic_oxid", "fr_amide", "fr_amidine", "fr_aniline",
    "fr_aryl_methyl", "fr_azide", "fr_azo", "fr_barbitur", "fr_benzene",
    "fr_benzodiazepine", "fr_bicyclic", "fr_diazo", "fr_dihydropyridine", "fr_epoxide",
    "fr_ester", "fr_ether", "fr_furan", "fr_guanido", "fr_halogen", "fr_hdrzine",
    "fr_hdrzone", "fr_imidazole", "fr_imide", "fr_isocyan", "fr_isothiocyan", "fr_ketone",
    "fr_ketone_Topliss", "fr_lactam", "fr_lactone", "fr_methoxy", "fr_morpholine",
    "fr_nitrile", "fr_nitro", "fr_nitro_arom", "fr_nitro_arom_nonortho", "fr_nitroso",
    "fr_oxazole", "fr_oxime", "fr_para_hydroxylation", "fr_phenol",
    "fr_phenol_noOrthoHbond", "fr_phos_acid", "fr_phos_ester", "fr_piperdine",
    "fr_piperzine", "fr_priamide", "fr_prisulfonamd", "fr_pyridine", "fr_quatN",
    "fr_sulfide", "fr_sulfonamd", "fr_sulfone", "fr_term_acetylene", "fr_tetrazole",
    "fr_thiazole", "fr_thiocyan", "fr_thiophene", "fr_unbrch_alkane", "fr_urea",
)

# The four EState index extremes each recompute the molecule's EState indices
# (0.6 ms); with force=False the first computes them and caches them on the
# molecule, and the others read the cache (the same values as RDKit's call).
_CACHED_ESTATE = ("MaxAbsEStateIndex", "MaxEStateIndex", "MinAbsEStateIndex", "MinEStateIndex")

_FUNCTIONS: Optional[List[Callable[[Mol], float]]] = None


def _functions() -> List[Callable[[Mol], float]]:
    """RDKit's function of every name in :data:`RDKIT2D_NAMES`, in order."""
    global _FUNCTIONS
    if _FUNCTIONS is None:
        table: Dict[str, Callable] = dict(Descriptors._descList)
        missing = [n for n in RDKIT2D_NAMES if n not in table]
        if missing:
            raise RuntimeError(f"this RDKit ({rdBase.rdkitVersion}) lacks the descriptor(s) "
                               f"{missing} of graphformer's rdkit2d set")
        _FUNCTIONS = [
            (lambda mol, fn=table[n]: fn(mol, force=False)) if n in _CACHED_ESTATE else table[n]
            for n in RDKIT2D_NAMES]
    return _FUNCTIONS


def rdkit2d(mol: Mol) -> List[float]:
    """The descriptors :data:`RDKIT2D_NAMES` of ``mol`` (``len(RDKIT2D_NAMES)``
    floats): RDKit's own values, NaN where one is not finite or raises."""
    values = []
    with rdBase.BlockLogs():
        for fn in _functions():
            try:
                value = float(fn(mol))
            except Exception:  # RDKit's descriptors raise on odd molecules
                value = math.nan
            values.append(value if math.isfinite(value) else math.nan)
    return values


_MORGAN = None


def _morgan_generator():
    global _MORGAN
    if _MORGAN is None:
        from rdkit.Chem import rdFingerprintGenerator

        _MORGAN = rdFingerprintGenerator.GetMorganGenerator(radius=MORGAN_RADIUS,
                                                            fpSize=MORGAN_BITS)
    return _MORGAN


def morgan(mol: Mol) -> List[float]:
    """The ECFP4 bit vector of ``mol`` (Morgan radius 2, :data:`MORGAN_BITS`
    bits; RDKit's ``GetMorganGenerator(radius=2, fpSize=2048)``), as 0/1."""
    return _morgan_generator().GetFingerprintAsNumPy(mol).astype(float).tolist()


def morgan_counts(mol: Mol) -> List[float]:
    """How many atom environments of ``mol`` hash to each of the
    :data:`MORGAN_BITS` bits of :func:`morgan`."""
    return morgan_count_array(mol).astype(float).tolist()


def morgan_count_array(mol: Mol) -> np.ndarray:
    """:func:`morgan_counts` as RDKit gives it: a NumPy array of
    :data:`MORGAN_BITS` unsigned integers (no list of floats in between)."""
    return _morgan_generator().GetCountFingerprintAsNumPy(mol)


MORGAN_NAMES = tuple(f"morgan_{i}" for i in range(MORGAN_BITS))
MORGAN_COUNT_NAMES = tuple(f"morgan_count_{i}" for i in range(MORGAN_BITS))


def molecule_feature_names(sets: Sequence[str] = (), columns: Sequence[str] = ()
                           ) -> Tuple[str, ...]:
    """The names of the features :func:`molecule_features` computes, in its
    order: each set's names (``rdkit2d`` -> :data:`RDKIT2D_NAMES`, ``morgan``
    -> ``morgan_0 ..``, ``morgan_counts`` -> ``morgan_count_0 ..``), then the
    columns' names.

    Raises:
        ValueError: an unknown set (naming it and the known ones).
    """
    names: List[str] = []
    for name in sets:
        names.extend(_feature_set(name)[0])
    return tuple(names) + tuple(columns)


def _feature_set(name: str) -> Tuple[Tuple[str, ...], Callable[[Mol], List[float]]]:
    """The names and the function of the molecule feature set ``name``."""
    if name == "rdkit2d":
        return RDKIT2D_NAMES, rdkit2d
    if name == "morgan":
        return MORGAN_NAMES, morgan
    if name == "morgan_counts":
        return MORGAN_COUNT_NAMES, morgan_counts
    raise ValueError(f"unknown molecule feature set {name!r}; known: "
                     f"{list(MOLECULE_FEATURE_SETS)}")


def set_values(mol: Mol, sets: Sequence[str]) -> List[float]:
    """The descriptors of each of ``sets`` for ``mol``, as Python floats (the
    part of :func:`molecule_features` that needs RDKit only)."""
    row: List[float] = []
    for name in sets:
        row.extend(_feature_set(name)[1](mol))
    return row


def molecule_features(mol: Mol, sets: Sequence[str] = (),
                      values: Sequence[float] = ()) -> Tensor:
    """One molecule's features, ``FloatTensor [1, F]``: the descriptors of each
    of ``sets`` (see :func:`molecule_feature_names`), then ``values`` (numeric
    columns given with the molecule, NaN = missing). Every value that is not
    finite as a float32 (NaN, inf, a descriptor that raised, a value beyond
    float32's range) is NaN."""
    row = set_values(mol, sets)
    row.extend(float(v) for v in values)
    x = torch.tensor(row, dtype=torch.float64).to(torch.float32).view(1, -1)
    return torch.where(torch.isfinite(x), x, torch.full_like(x, math.nan))
