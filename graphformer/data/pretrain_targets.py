"""What a molecule's graph is pre-trained to predict, computed by RDKit.

:data:`PRETRAIN_DESCRIPTORS` is a fixed list of cheap whole-molecule RDKit
descriptors (one RDKit call each); :func:`descriptor_vector` computes them for
one molecule. The masked-atom objective needs no extra data: its class is OGB
atom feature 0 (atomic number - 1), already in ``data.x[:, 0]``.

The list is part of a pre-trained checkpoint's meaning: changing it changes
:data:`DESCRIPTORS_VERSION`, so cached corpora are processed anew.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Tuple

import numpy as np
from rdkit import Chem, rdBase
from rdkit.Chem import Crippen, Descriptors, Lipinski, rdMolDescriptors

#: name -> RDKit function of a molecule; the order is the target order.
PRETRAIN_DESCRIPTORS: Dict[str, Callable[[Chem.Mol], float]] = {
    "MolWt": Descriptors.MolWt,
    "HeavyAtomCount": Lipinski.HeavyAtomCount,
    "MolLogP": Crippen.MolLogP,
    "MolMR": Crippen.MolMR,
    "TPSA": rdMolDescriptors.CalcTPSA,
    "LabuteASA": rdMolDescriptors.CalcLabuteASA,
    "NumHDonors": Lipinski.NumHDonors,
    "NumHAcceptors": Lipinski.NumHAcceptors,
    "NumRotatableBonds": Lipinski.NumRotatableBonds,
    "NumHeteroatoms": Lipinski.NumHeteroatoms,
    "RingCount": Lipinski.RingCount,
    "NumAromaticRings": Lipinski.NumAromaticRings,
    "NumAliphaticRings": Lipinski.NumAliphaticRings,
    "NumSaturatedRings": Lipinski.NumSaturatedRings,
    "FractionCSP3": Lipinski.FractionCSP3,
    "NHOHCount": Lipinski.NHOHCount,
    "NOCount": Lipinski.NOCount,
    "NumValenceElectrons": Descriptors.NumValenceElectrons,
    "NumAmideBonds": rdMolDescriptors.CalcNumAmideBonds,
    "NumStereocenters": rdMolDescriptors.CalcNumAtomStereoCenters,
}
#: bump when :data:`PRETRAIN_DESCRIPTORS` or how they are computed changes
DESCRIPTORS_VERSION = 1


def descriptor_names() -> Tuple[str, ...]:
    """The names of the pre-training descriptors, in target order."""
    return tuple(PRETRAIN_DESCRIPTORS)


def descriptor_vector(mol: Chem.Mol) -> np.ndarray:
    """The pre-training descriptors of ``mol`` as ``float64 [D]``, in the order
    of :data:`PRETRAIN_DESCRIPTORS`; a descriptor RDKit cannot compute, or one
    that is not finite, is NaN (a missing target, masked out of the loss)."""
    out = np.full(len(PRETRAIN_DESCRIPTORS), np.nan)
    with rdBase.BlockLogs():
        for k, fn in enumerate(PRETRAIN_DESCRIPTORS.values()):
            try:
                value = float(fn(mol))
            except Exception:  # noqa: BLE001 - RDKit raises many kinds; NaN = missing
                continue
            if math.isfinite(value):
                out[k] = value
    return out
