"""Small local copies of the real OGB / PCQM4Mv2 / ZINC downloads, for tests.

Each ``write_*`` function writes, under a (pytest ``tmp_path``) root, the files
and folders the official archive unpacks to, in the formats the loaders read
(checked against ogb 1.3.6's ``read_csv_graph_raw`` / ``PygPCQM4Mv2Dataset``
and PyG's ``ZINC.process``), built from real molecules of ESOL.
"""
from __future__ import annotations

import builtins
import gzip
import pickle
import socket
import urllib.request
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import pytest
import torch
from ogb.utils import smiles2graph
from rdkit import Chem
from rdkit.Chem.Scaffolds import MurckoScaffold

from graphformer.datasets.zinc import ZINC_ATOM_TYPES, ZINC_SPLITS

ESOL_CSV = Path(__file__).resolve().parents[2] / "datasets" / "moleculenet" / "ESOL.csv"
ESOL_TARGET = "measured log solubility in mols per litre"


def esol(n: int) -> Tuple[List[str], List[float]]:
    """SMILES and measured log-solubility of the first ``n`` ESOL molecules."""
    df = pd.read_csv(ESOL_CSV, nrows=n)
    return df["smiles"].tolist(), df[ESOL_TARGET].astype(float).tolist()


def block_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every network access (and any stdin prompt) fail loudly."""
    def no_network(*args, **kwargs):
        raise AssertionError("a test tried to reach the network")

    def no_prompt(*args, **kwargs):
        raise AssertionError(f"a test tried to read stdin: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(builtins, "input", no_prompt)


def _write_csv_gz(path: Path, rows, header: Optional[Sequence[str]] = None) -> None:
    """A gzipped CSV; without ``header`` no header line, as ogb's raw files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=header).to_csv(
        path, header=header is not None, index=False, compression="gzip")


# --------------------------------------------------------------------- ogbg-mol*

@dataclass
class OgbMolLayout:
    """What :func:`write_ogbg_mol` wrote."""
    root: Path                      # the ``root`` to pass to the loader
    folder: Path                    # <root>/ogbg_molesol
    smiles: List[str]
    targets: List[float]
    split: Dict[str, List[int]]     # as written to split/scaffold/*.csv.gz
    raw_files: List[Path] = field(default_factory=list)


def scaffold_split(smiles: Sequence[str], frac_train: float = 0.8,
                   frac_valid: float = 0.1) -> Dict[str, List[int]]:
    """The deterministic Bemis-Murcko scaffold split OGB's mol sets use
    (pretrain-gnns' ``scaffold_split``): scaffold sets, largest first, fill
    train, then valid, then test."""
    groups: Dict[str, List[int]] = defaultdict(list)
    for i, s in enumerate(smiles):
        groups[MurckoScaffold.MurckoScaffoldSmiles(smiles=s, includeChirality=True)].append(i)
    sets = sorted(groups.values(), key=lambda g: (len(g), g[0]), reverse=True)
    n = len(smiles)
    train, valid, test = [], [], []
    for g in sets:
        if len(train) + len(g) > frac_train * n:
            if len(train) + len(valid) + len(g) > (frac_train + frac_valid) * n:
                test.extend(g)
            else:
                valid.extend(g)
        else:
            train.extend(g)
    return {"train": train, "valid": valid, "test": test}


def write_ogbg_mol(root: Path, smiles: Sequence[str], targets: Sequence[float],
                   name: str = "ogbg-molesol", release: bool = True) -> OgbMolLayout:
    """The unpacked ``esol.zip`` of ogb (for ``ogbg-molesol``), in ``root``::

        <root>/ogbg_molesol/RELEASE_v1.txt               (unless release=False)
        <root>/ogbg_molesol/raw/edge.csv.gz              "src,dst" per bond, once,
                                                         graph-local atom indices
        <root>/ogbg_molesol/raw/edge-feat.csv.gz         3 ints per bond
        <root>/ogbg_molesol/raw/node-feat.csv.gz         9 ints per atom
        <root>/ogbg_molesol/raw/num-node-list.csv.gz     atoms per molecule
        <root>/ogbg_molesol/raw/num-edge-list.csv.gz     bonds per molecule
        <root>/ogbg_molesol/raw/graph-label.csv.gz       target per molecule
        <root>/ogbg_molesol/split/scaffold/{train,valid,test}.csv.gz  one index a line
        <root>/ogbg_molesol/mapping/mol.csv.gz           task, smiles, mol_id (header)
        <root>/ogbg_molesol/mapping/README.md

    All ``raw/`` and ``split/`` files are gzipped CSV without header or index
    column (ogb reads them with ``header=None``). Features are
    ``ogb.utils.smiles2graph``'s; each bond is stored once, as ogb does for
    sets with ``add_inverse_edge=True`` (all mol sets): ogb's reader turns
    bond ``(i, j)`` back into the edge pair ``(i, j), (j, i)``, which is
    exactly ``smiles2graph``'s order.
    """
    folder = Path(root) / "_".join(name.split("-"))
    raw = folder / "raw"
    edges, edge_feats, node_feats, num_nodes, num_edges = [], [], [], [], []
    for s in smiles:
        g = smiles2graph(s)
        ei, ef = g["edge_index"], g["edge_feat"]
        # smiles2graph lists bond k as columns 2k (i -> j) and 2k + 1 (j -> i).
        assert (ei[:, 0::2] == ei[::-1, 1::2]).all()
        edges.extend(ei[:, 0::2].T.tolist())
        edge_feats.extend(ef[0::2].tolist())
        node_feats.extend(g["node_feat"].tolist())
        num_nodes.append(int(g["num_nodes"]))
        num_edges.append(ei.shape[1] // 2)
    files = {
        "edge.csv.gz": edges, "edge-feat.csv.gz": edge_feats,
        "node-feat.csv.gz": node_feats, "num-node-list.csv.gz": num_nodes,
        "num-edge-list.csv.gz": num_edges,
        "graph-label.csv.gz": [float(t) for t in targets],
    }
    for fname, rows in files.items():
        _write_csv_gz(raw / fname, rows)

    split = scaffold_split(smiles)
    for key, idx in split.items():
        _write_csv_gz(folder / "split" / "scaffold" / f"{key}.csv.gz", idx)

    # mapping/ is in the real archive but never read by ogb; columns as ogb's
    # mapping README documents them ([tasks...], smiles, mol_id). The mol_id
    # values are placeholders.
    _write_csv_gz(folder / "mapping" / "mol.csv.gz",
                  [[float(t), s, f"id{i}"] for i, (s, t) in enumerate(zip(smiles, targets))],
                  header=[ESOL_TARGET, "smiles", "mol_id"])
    (folder / "mapping" / "README.md").write_text(
        "# ogbg-mol\n\n## mol.csv.gz\n\n[task_1, ... task_n], SMILES, mol_id\n")
    if release:
        (folder / "RELEASE_v1.txt").write_text("ogbg-molesol, release 1 (test copy)\n")
    return OgbMolLayout(root=Path(root), folder=folder, smiles=list(smiles),
                        targets=[float(t) for t in targets], split=split,
                        raw_files=[raw / f for f in files])


def read_gz_lines(path: Path) -> List[str]:
    """The text lines of a gzipped file (to check the 'no header' format)."""
    with gzip.open(path, "rt") as f:
        return f.read().splitlines()


# --------------------------------------------------------------------- PCQM4Mv2

@dataclass
class PCQMLayout:
    """What :func:`write_pcqm4mv2` wrote."""
    root: Path                      # the ``root`` to pass to the loader
    folder: Path                    # <root>/pcqm4m-v2
    smiles: List[str]
    targets: List[float]            # NaN for test-dev / test-challenge molecules
    split: Dict[str, List[int]]


SplitFormat = Literal["numpy", "numpy1", "torch"]


def _save_split_dict(path: Path, split: Dict[str, List[int]], fmt: SplitFormat) -> None:
    """``torch.save`` the split as int64 numpy arrays (``"numpy"``), the same
    with the pickle names numpy 1 writes (``numpy.core.multiarray``, as in
    files published before numpy 2; ``"numpy1"``) or as LongTensors."""
    if fmt == "torch":
        torch.save({k: torch.tensor(v, dtype=torch.long) for k, v in split.items()}, path)
        return
    torch.save({k: np.asarray(v, dtype=np.int64) for k, v in split.items()}, path)
    if fmt == "numpy1":
        # torch.save pickles with protocol 2, whose GLOBAL opcode spells module
        # names as newline-terminated text: renaming is a byte substitution.
        with zipfile.ZipFile(path) as z:
            members = [(info.filename, z.read(info.filename)) for info in z.infolist()]
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
            for fname, data in members:
                if fname.endswith("/data.pkl"):
                    assert b"numpy._core.multiarray" in data
                    data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
                z.writestr(fname, data)


def write_pcqm4mv2(root: Path, smiles: Sequence[str], targets: Sequence[float],
                   release: bool = True, split_format: SplitFormat = "numpy",
                   seed: int = 0) -> PCQMLayout:
    """The unpacked ``pcqm4m-v2.zip``, in ``root``::

        <root>/pcqm4m-v2/RELEASE_v1.txt           (unless release=False)
        <root>/pcqm4m-v2/raw/data.csv.gz          header "idx,smiles,homolumogap"
        <root>/pcqm4m-v2/split_dict.pt            train / valid / test-dev /
                                                  test-challenge index arrays

    The split is a seeded shuffle (60/20/10/10 %); as in the real data the
    test-dev and test-challenge molecules have no target (``NaN``), which
    ogb's ``process`` asserts. ``targets`` stand in for the HOMO-LUMO gap.
    """
    folder = Path(root) / "pcqm4m-v2"
    n = len(smiles)
    perm = np.random.RandomState(seed).permutation(n).tolist()
    a, b, c = int(0.6 * n), int(0.8 * n), int(0.9 * n)
    split = {"train": perm[:a], "valid": perm[a:b], "test-dev": perm[b:c],
             "test-challenge": perm[c:]}
    gap = [float(t) for t in targets]
    for i in split["test-dev"] + split["test-challenge"]:
        gap[i] = float("nan")
    _write_csv_gz(folder / "raw" / "data.csv.gz",
                  {"idx": list(range(n)), "smiles": list(smiles), "homolumogap": gap},
                  header=["idx", "smiles", "homolumogap"])
    _save_split_dict(folder / "split_dict.pt", split, split_format)
    if release:
        (folder / "RELEASE_v1.txt").write_text("PCQM4Mv2, release 1 (test copy)\n")
    return PCQMLayout(root=Path(root), folder=folder, smiles=list(smiles),
                      targets=gap, split=split)


# ------------------------------------------------------------------------- ZINC

_ZINC_BOND = {Chem.BondType.SINGLE: 1, Chem.BondType.DOUBLE: 2, Chem.BondType.TRIPLE: 3}


def zinc_atom_label(atom: Chem.Atom) -> str:
    """ZINC's atom type name: element, ``H<n>`` for explicit (bracket)
    hydrogens, charge sign (``[NH3+]`` -> ``"N H3 +"``)."""
    label = atom.GetSymbol()
    if atom.GetNumExplicitHs():
        label += f" H{atom.GetNumExplicitHs()}"
    charge = atom.GetFormalCharge()
    if charge:
        label += " +" if charge == 1 else " -" if charge == -1 else f" {charge:+d}"
    return label


def zinc_kekulized(smiles: str) -> Chem.Mol:
    """RDKit molecule with kekulé bonds (ZINC has no aromatic bond type)."""
    mol = Chem.MolFromSmiles(smiles)
    Chem.Kekulize(mol, clearAromaticFlags=True)
    return mol


def zinc_molecule(smiles: str, target: float) -> Optional[dict]:
    """One molecule dict as in ZINC's ``<split>.pickle``, or ``None`` when
    the molecule has an atom (or bond) outside ZINC's vocabulary."""
    mol = zinc_kekulized(smiles)
    labels = [zinc_atom_label(a) for a in mol.GetAtoms()]
    if any(label not in ZINC_ATOM_TYPES for label in labels):
        return None
    n = mol.GetNumAtoms()
    adj = torch.zeros(n, n, dtype=torch.long)
    for bond in mol.GetBonds():
        if bond.GetBondType() not in _ZINC_BOND:
            return None
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        adj[i, j] = adj[j, i] = _ZINC_BOND[bond.GetBondType()]
    return {
        "num_atom": n,
        "atom_type": torch.tensor([ZINC_ATOM_TYPES.index(x) for x in labels], dtype=torch.long),
        "bond_type": adj,
        "logP_SA_cycle_normalized": torch.tensor([target], dtype=torch.float),
    }


@dataclass
class ZincLayout:
    """What :func:`write_zinc` wrote."""
    root: Path                                # the ``root`` to pass to the loader
    smiles: Dict[str, List[str]]              # per split, in pickle order
    targets: Dict[str, List[float]]
    index: Dict[str, List[int]]               # subset indices, as in <split>.index
    skipped: List[str]                        # ESOL SMILES outside ZINC's vocabulary


def write_zinc(root: Path, smiles: Sequence[str], targets: Sequence[float],
               seed: int = 0) -> ZincLayout:
    """ZINC's raw layout (``molecules.zip`` with its ``molecules`` folder
    renamed to ``raw``, plus the three ``.index`` files), in ``root``::

        <root>/raw/{train,val,test}.pickle   pickled list of molecule dicts
        <root>/raw/{train,val,test}.index    one line "i,j,k,...\\n"

    The archive's ``atom_dict.pickle`` / ``bond_dict.pickle`` are left out:
    they are pickles of a ``__main__.Dictionary`` class from benchmarking-gnns
    that cannot be recreated faithfully here, and PyG never reads them.

    Molecules are split 60/20/20 in order; each split's subset index is a
    seeded shuffle of about two thirds of it (so order matters).

    TEST FIXTURE ONLY: ESOL molecules with an atom outside ZINC's 28 atom
    types (e.g. aromatic ``[nH]``, which ZINC has no ``"N H1"`` type for, or
    elements ZINC lacks) are skipped here and listed in ``skipped``; the
    loader itself never skips anything.
    """
    raw = Path(root) / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    kept: List[Tuple[str, float, dict]] = []
    skipped: List[str] = []
    for s, t in zip(smiles, targets):
        mol = zinc_molecule(s, float(t))
        if mol is None:
            skipped.append(s)
        else:
            kept.append((s, float(t), mol))
    n = len(kept)
    bounds = {"train": (0, int(0.6 * n)), "val": (int(0.6 * n), int(0.8 * n)),
              "test": (int(0.8 * n), n)}
    rng = np.random.RandomState(seed)
    layout = ZincLayout(root=Path(root), smiles={}, targets={}, index={}, skipped=skipped)
    for split in ZINC_SPLITS:
        lo, hi = bounds[split]
        part = kept[lo:hi]
        with open(raw / f"{split}.pickle", "wb") as f:
            pickle.dump([m for _, _, m in part], f)
        index = rng.permutation(len(part))[: max(1, (2 * len(part)) // 3)].tolist()
        (raw / f"{split}.index").write_text(",".join(map(str, index)) + "\n")
        layout.smiles[split] = [s for s, _, _ in part]
        layout.targets[split] = [t for _, t, _ in part]
        layout.index[split] = index
    return layout
