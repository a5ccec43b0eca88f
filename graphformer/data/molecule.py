"""Molecules (SMILES) become graphs with OGB's atom and bond features."""
from __future__ import annotations

import contextlib
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch
from ogb.utils.features import atom_to_feature_vector, bond_to_feature_vector
from rdkit import Chem, rdBase
from torch_geometric.data import Data

from .._process import end_with_parent, usable_cores
from ..errors import DataError
from .descriptors import MORGAN_BITS, molecule_features, morgan_count_array, set_values

NUM_ATOM_FEATURES = 9
NUM_BOND_FEATURES = 3

Target = Union[float, Sequence[float], torch.Tensor, None]

#: The most atoms a molecule may have for its descriptors (molecule feature
#: sets such as ``rdkit2d``). RDKit computes many of them from the distance
#: matrix or the characteristic polynomial, in time quadratic to quartic in
#: the atoms (``AvgIpc``: 1 s at 400 atoms, 30 s at 1,000; all of them, 13 s
#: for a 1,200-atom chain): a larger molecule is refused, naming its row,
#: rather than computed for minutes or hours. The graph itself
#: (:func:`from_mol`) takes time linear in the atoms and bonds.
MAX_DESCRIPTOR_ATOMS = 500


def parse_smiles(smiles: str, where: str = "") -> Chem.Mol:
    """RDKit molecule of ``smiles``, or a :class:`~graphformer.errors.DataError`
    (a ``ValueError``) that quotes it.

    Args:
        smiles: the SMILES string.
        where: where it came from (``"file.csv, row 7"``), added to the error.
    """
    suffix = f" ({where})" if where else ""
    shown = repr(smiles) if not isinstance(smiles, str) or len(smiles) <= 200 else \
        f"{smiles[:60]!r}... ({len(smiles)} characters)"
    if not isinstance(smiles, str):
        raise DataError(f"SMILES must be a string, got {type(smiles).__name__} "
                        f"{shown}{suffix}")
    if not smiles.strip():
        raise DataError(f"empty SMILES {shown}{suffix}")
    # RDKit stops at a NUL and reads text after a space as the molecule's
    # name: either would silently parse a shorter molecule than was written.
    bad = next((c for c in smiles.strip() if c.isspace() or ord(c) < 32 or ord(c) == 127),
               None)
    if bad is not None:
        raise DataError(f"SMILES {shown} contains the character {bad!r}{suffix}")
    with rdBase.BlockLogs():  # RDKit would print its own complaint to stderr
        try:
            mol = Chem.MolFromSmiles(smiles.strip())
        except Exception as err:  # Boost argument errors, embedded NULs, ...
            raise DataError(f"cannot parse SMILES {shown}{suffix}: {err}") from err
    if mol is None:
        raise DataError(f"cannot parse SMILES {shown}{suffix}")
    if mol.GetNumAtoms() == 0:
        raise DataError(f"SMILES {shown} has no atoms{suffix}")
    return mol


#: ECFP4 counts are capped here (stored as bytes)
MAX_COUNT = 255
#: the batch attribute that carries :func:`count_fingerprints` of its molecules
ECFP_COUNTS = "ecfp_counts"


def count_fingerprints(smiles: Sequence[str]) -> torch.Tensor:
    """The ECFP4 count fingerprints ``[B, 2048]`` (uint8, counts capped at
    255) of ``smiles``, as the fingerprint kernel member reads them
    (:class:`~graphformer.models.kernel.MorganKernelRidge`); an unreadable
    SMILES is a :class:`~graphformer.errors.DataError` naming it."""
    out = np.zeros((len(smiles), MORGAN_BITS), dtype=np.uint8)
    for k, s in enumerate(smiles):
        out[k] = np.minimum(morgan_count_array(parse_smiles(s)), MAX_COUNT)
    return torch.from_numpy(out)


def bonds_of(mol: Chem.Mol) -> List[Chem.Bond]:
    """The bonds of ``mol`` in RDKit's order (``mol.GetBonds()``'s), in time
    linear in their number. ``mol.GetBonds()`` (like ``GetBondWithIdx``)
    finds every bond by walking the bond list from its start: quadratic, a
    minute for 80,000 bonds. Each atom's own bonds come without that walk."""
    found: List[Optional[Chem.Bond]] = [None] * mol.GetNumBonds()
    for atom in mol.GetAtoms():
        for bond in atom.GetBonds():
            found[bond.GetIdx()] = bond
    return found  # type: ignore[return-value]  # every bond has an atom


def from_mol(mol: Chem.Mol) -> Data:
    """An RDKit molecule -> ``Data`` with OGB's features (see :func:`from_smiles`)."""
    x = np.asarray([atom_to_feature_vector(a) for a in mol.GetAtoms()], dtype=np.int64)
    bonds = bonds_of(mol)
    src = np.empty(2 * len(bonds), dtype=np.int64)
    dst = np.empty(2 * len(bonds), dtype=np.int64)
    edge_attr = np.empty((2 * len(bonds), NUM_BOND_FEATURES), dtype=np.int64)
    for k, bond in enumerate(bonds):
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        feat = bond_to_feature_vector(bond)
        src[2 * k], dst[2 * k] = i, j  # both directions, as OGB
        src[2 * k + 1], dst[2 * k + 1] = j, i
        edge_attr[2 * k] = edge_attr[2 * k + 1] = feat
    return Data(x=torch.from_numpy(x.reshape(-1, NUM_ATOM_FEATURES)),
                edge_index=torch.from_numpy(np.stack([src, dst])),
                edge_attr=torch.from_numpy(edge_attr))


def from_smiles(smiles: str, y: Target = None, where: str = "",
                molecule_feature_sets: Sequence[str] = (),
                feature_values: Optional[Sequence[float]] = None,
                set_features: Optional[Sequence[float]] = None) -> Data:
    """A molecule as a graph, identical to ``ogb.utils.smiles2graph``; with
    molecule-level features when asked for.

    Returns:
        ``Data`` with ``x`` (``LongTensor [n, 9]``: OGB's atom features),
        ``edge_index`` (``[2, E]``, every bond in both directions, in OGB's
        order), ``edge_attr`` (``LongTensor [E, 3]``: bond type, stereo,
        conjugation), ``smiles``, and ``y`` (``FloatTensor [1, T]``, NaN for
        a missing target) when given; ``mol_x`` (``FloatTensor [1, F]``, NaN
        where a value is missing or not finite) when ``molecule_feature_sets``
        (e.g. ``["rdkit2d"]``) or ``feature_values`` (numeric columns of the
        molecule's row) are given: the sets' descriptors, then the values (see
        :func:`graphformer.data.descriptors.molecule_features`).
        ``set_features``, when given, are the sets' descriptors already
        computed for this SMILES (:func:`molecule_set_features`).

    Raises:
        ValueError: the SMILES does not parse (the message quotes it, and
            ``where`` — e.g. the file and row — when given).
    """
    mol = parse_smiles(smiles, where)
    if molecule_feature_sets and set_features is None:
        check_descriptor_size(mol, smiles, molecule_feature_sets, where)
    data = from_mol(mol)
    data.smiles = smiles
    if set_features is not None:
        data.mol_x = molecule_features(mol, (), [*set_features, *(feature_values or ())])
    elif molecule_feature_sets or feature_values is not None:
        data.mol_x = molecule_features(mol, molecule_feature_sets, feature_values or ())
    if y is not None:
        data.y = torch.as_tensor(y, dtype=torch.float).view(1, -1)
    return data


def check_descriptor_size(mol: Chem.Mol, smiles: str, sets: Sequence[str],
                          where: str = "") -> None:
    """Refuse (:class:`~graphformer.errors.DataError`) a molecule of more than
    :data:`MAX_DESCRIPTOR_ATOMS` atoms whose descriptor ``sets`` are asked
    for, naming it (and ``where``) and the limit."""
    atoms = mol.GetNumAtoms()
    if atoms > MAX_DESCRIPTOR_ATOMS:
        shown = repr(smiles) if len(smiles) <= 60 else f"{smiles[:40]!r}..."
        suffix = f" ({where})" if where else ""
        raise DataError(f"SMILES {shown} has {atoms} atoms{suffix}: the molecule features "
                        f"{list(sets)} (RDKit descriptors, quadratic or worse in the atoms) "
                        f"are computed for molecules of at most {MAX_DESCRIPTOR_ATOMS} atoms; "
                        f"leave it out, or train without them (--molecule-features none)")


def _set_features_of(job) -> Optional[List[float]]:
    """Worker: the descriptor sets of one SMILES, None when it does not parse
    or is too large (:func:`from_smiles` then reports it, with its row)."""
    smiles, sets = job
    try:
        mol = parse_smiles(smiles)
        check_descriptor_size(mol, smiles, sets)
    except DataError:
        return None
    return set_values(mol, sets)


#: Below this many molecules the descriptors are computed in-process (worker
#: processes cost more to start than they save).
PARALLEL_ABOVE = 256


def molecule_set_features(smiles: Sequence[str], sets: Sequence[str],
                          workers: Optional[int] = None,
                          progress: Optional[Callable[[Iterable], Iterable]] = None,
                          ) -> List[Optional[List[float]]]:
    """The descriptors of ``sets`` for every SMILES, in order (None where one
    does not parse), computed in ``workers`` processes (default: one per CPU
    this process may use) when there are more than :data:`PARALLEL_ABOVE`.

    The workers run RDKit only (forked on Linux, where that is cheap; no
    PyTorch work happens in them). ``progress`` wraps the iterator of
    results (e.g. ``tqdm``)."""
    wrap = progress or (lambda it: it)
    with iter_molecule_set_features(smiles, sets, workers) as rows:
        return list(wrap(rows))


@contextlib.contextmanager
def iter_molecule_set_features(smiles: Sequence[str], sets: Sequence[str],
                               workers: Optional[int] = None
                               ) -> Iterator[Iterator[Optional[List[float]]]]:
    """:func:`molecule_set_features` as an iterator, in order, while the
    workers compute ahead: the caller builds the graphs of the molecules
    whose descriptors have arrived as the workers compute the next ones. The
    workers stop when the ``with`` block ends (also on an error).

    The workers are a :class:`~concurrent.futures.ProcessPoolExecutor`, not a
    ``multiprocessing.Pool``, whose ``terminate()`` can hang for good
    (CPython issues 73945 and 78178): a worker that dies (killed for memory,
    say) raises :class:`~concurrent.futures.process.BrokenProcessPool`
    instead of leaving the caller waiting."""
    jobs = [(s, tuple(sets)) for s in smiles]
    if workers is None:
        workers = usable_cores()
    if workers <= 1 or len(jobs) <= PARALLEL_ABOVE or not sets:
        yield map(_set_features_of, jobs)
        return
    method = "fork" if sys.platform.startswith("linux") else None
    executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method),
                                   initializer=end_with_parent)
    try:
        yield executor.map(_set_features_of, jobs, chunksize=16)
    finally:
        # the chunks not started are dropped; a running one takes well under
        # a second
        executor.shutdown(wait=True, cancel_futures=True)
