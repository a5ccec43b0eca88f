import multiprocessing
import os
import signal
import subprocess
import sys
import time
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ogb.utils import smiles2graph

import graphformer.data.molecule as molecule
from graphformer.data import from_smiles
from graphformer.datasets.molecules import BUNDLED, bundled_dir

import pandas as pd


def assert_same_as_ogb(data, smiles):
    ref = smiles2graph(smiles)
    assert torch.equal(data.x, torch.from_numpy(ref["node_feat"]))
    assert torch.equal(data.edge_index, torch.from_numpy(ref["edge_index"]))
    assert torch.equal(data.edge_attr, torch.from_numpy(ref["edge_feat"]))
    assert data.num_nodes == ref["num_nodes"]
    assert data.x.dtype == data.edge_index.dtype == data.edge_attr.dtype == torch.long


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_every_bundled_molecule_parses_and_equals_ogb(name):
    frame = pd.read_csv(bundled_dir() / BUNDLED[name].file)
    assert len(frame) in (1128, 642, 4200)
    for smiles in frame["smiles"]:
        assert_same_as_ogb(from_smiles(smiles), smiles)


@pytest.mark.parametrize("smiles, atoms, bonds", [
    ("C", 1, 0), ("[Na+].[Cl-]", 2, 0), ("O", 1, 0), ("c1ccccc1", 6, 6),
    ("Cl[C@H](/C=C/C)Br", 6, 5),
])
def test_small_and_single_atom_molecules(smiles, atoms, bonds):
    data = from_smiles(smiles, y=[1.5, float("nan")])
    assert data.num_nodes == atoms and data.edge_index.size(1) == 2 * bonds
    assert data.edge_attr.shape == (2 * bonds, 3) and data.x.shape == (atoms, 9)
    assert data.smiles == smiles
    assert data.y.shape == (1, 2) and data.y[0, 0] == 1.5 and torch.isnan(data.y[0, 1])
    assert_same_as_ogb(data, smiles)


def test_chiral_atom_features_match_ogb_example():
    # The example in ogb.utils.features: the chiral carbon of Cl[C@H](/C=C/C)Br.
    assert from_smiles("Cl[C@H](/C=C/C)Br").x[1].tolist() == [5, 2, 4, 5, 1, 0, 2, 0, 0]


@pytest.mark.parametrize("bad, match", [
    ("C1CC", "cannot parse SMILES 'C1CC'"),
    ("", "empty SMILES"),
    ("   ", "empty SMILES"),
    ("CC(", "cannot parse SMILES 'CC\\('"),
    ("CCO ethanol", "contains the character ' '"),
    ("CC\x00C", "contains the character"),
    (None, "must be a string"),
    (42, "must be a string"),
])
def test_bad_smiles_are_quoted(bad, match):
    with pytest.raises(ValueError, match=match):
        from_smiles(bad)


def test_error_names_the_source():
    with pytest.raises(ValueError, match=r"'C1CC' \(mols.csv, row 7\)"):
        from_smiles("C1CC", where="mols.csv, row 7")


ALPHABET = "CNOSPFIBrcnos()[]=#@+-1234567890%/\\.Hl* \t\n\x00é"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=ALPHABET, max_size=30))
def test_fuzz_smiles_gives_a_graph_or_a_value_error(text):
    try:
        data = from_smiles(text)
    except ValueError as err:
        assert repr(text)[1:-1][:10] in str(err) or "string" in str(err)
        return
    # Nothing silently shortened: the graph has every heavy atom RDKit sees.
    ref = smiles2graph(text.strip())
    assert data.num_nodes == ref["num_nodes"] > 0
    assert np.array_equal(data.edge_index.numpy(), ref["edge_index"])


def _dies_on_methane(job):
    """A descriptor worker that is killed (as by the out-of-memory killer) on
    one molecule."""
    if job[0] == "C":
        os._exit(1)
    return [float(len(job[0]))]


def test_a_worker_that_dies_is_an_error_not_a_hang(monkeypatch):
    monkeypatch.setattr(molecule, "PARALLEL_ABOVE", 2)
    monkeypatch.setattr(molecule, "_set_features_of", _dies_on_methane)
    smiles = ["CC", "CCO", "CCN", "C", "CCC", "CCCC"] * 8
    with pytest.raises(BrokenProcessPool):
        molecule.molecule_set_features(smiles, ["rdkit2d"], workers=2)
    assert multiprocessing.active_children() == []
    assert molecule.molecule_set_features(smiles[:3] * 2, ["rdkit2d"], workers=2) == \
        [[2.0], [3.0], [3.0]] * 2


_KILLED_PARENT = """
import multiprocessing, sys, time
import graphformer.data.molecule as molecule
molecule.PARALLEL_ABOVE = 2
with molecule.iter_molecule_set_features(["CCO"] * 4000, ["rdkit2d"], workers=2) as rows:
    next(rows)
    print(" ".join(str(p.pid) for p in multiprocessing.active_children()), flush=True)
    time.sleep(600)
"""


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_end_with_a_killed_caller():
    """A caller killed outright (SIGKILL: no cleanup runs) takes its descriptor
    workers with it, rather than leaving them holding its output open."""
    caller = subprocess.Popen([sys.executable, "-c", _KILLED_PARENT], stdout=subprocess.PIPE,
                              text=True)
    try:
        pids = [int(p) for p in caller.stdout.readline().split()]
        assert len(pids) == 2 and all(_alive(p) for p in pids)
    finally:
        caller.send_signal(signal.SIGKILL)
        caller.wait()
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = [p for p in pids if _alive(p)]
    for pid in survivors:                       # leave no orphan behind a failure
        os.kill(pid, signal.SIGKILL)
    assert survivors == []
