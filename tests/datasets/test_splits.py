import gzip

import pytest
import torch

from graphformer.datasets.molecules import load_bundled
from graphformer.datasets.splits import (column_split, index_split, random_split, scaffold,
                                         scaffold_folds, scaffold_split)
from graphformer.errors import DataError


def as_sets(split):
    return {k: set(v.tolist()) for k, v in split.items()}


def check_partition(split, n):
    parts = as_sets(split)
    assert set().union(*parts.values()) == set(range(n))
    assert sum(len(p) for p in parts.values()) == n


def test_random_split_is_seeded_partition():
    a, b, c = random_split(100, seed=1), random_split(100, seed=1), random_split(100, seed=2)
    check_partition(a, 100)
    assert [len(a[k]) for k in ("train", "valid", "test")] == [80, 10, 10]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["test"], c["test"])
    with pytest.raises(ValueError, match="summing to 1"):
        random_split(10, (0.5, 0.5, 0.5))


def test_scaffold_of_known_molecules():
    assert scaffold("c1ccccc1CCO") == "c1ccccc1"
    assert scaffold("CCO") == ""
    assert scaffold("OC(=O)c1ccc(cc1)C1CC1") == "c1ccc(C2CC2)cc1"


def test_scaffold_split_groups_and_orders_like_ogb():
    # 5 benzenes, 3 cyclohexanes, 1 pyridine, 1 acyclic: groups of 5, 3, 1, 1.
    smiles = ["c1ccccc1C", "CCO", "c1ccccc1O", "C1CCCCC1C", "c1ccccc1N", "c1ccncc1",
              "C1CCCCC1O", "c1ccccc1Cl", "C1CCCCC1N", "c1ccccc1F"]
    split = scaffold_split(smiles, (0.8, 0.1, 0.1))
    assert split["train"].tolist() == [0, 2, 3, 4, 6, 7, 8, 9]
    # Two singleton groups: OGB's order puts the larger first index first.
    assert split["valid"].tolist() == [5] and split["test"].tolist() == [1]


def test_scaffold_split_on_esol_matches_ogb_sizes_and_never_shares_scaffolds(tmp_path):
    ds = load_bundled("esol", root=tmp_path, log=False)
    smiles = [d.smiles for d in ds]
    split = scaffold_split(smiles)
    check_partition(split, len(ds))
    # ogbg-molesol's official scaffold split has 902 / 113 / 113 molecules.
    assert [len(split[k]) for k in ("train", "valid", "test")] == [902, 113, 113]
    scaf = {k: {scaffold(smiles[i]) for i in v.tolist()} for k, v in split.items()}
    assert not (scaf["train"] & scaf["test"]) and not (scaf["train"] & scaf["valid"])
    assert all(torch.equal(split[k], scaffold_split(smiles)[k]) for k in split)


def test_scaffold_folds_validate_each_small_group_once_and_hold_the_test_part_out(tmp_path):
    ds = load_bundled("esol", root=tmp_path, log=False)
    smiles = [d.smiles for d in ds]
    split = scaffold_split(smiles)
    folds = scaffold_folds(smiles, split, num_folds=5, seed=0)
    assert len(folds) == 5
    pool = set(split["train"].tolist()) | set(split["valid"].tolist())
    groups = {}
    for i in pool:
        groups.setdefault(scaffold(smiles[i]), set()).add(i)
    bound = len(pool) / 10
    small = set().union(*(g for g in groups.values() if len(g) <= bound))
    validated = []
    for fold in folds:
        parts = as_sets(fold)
        check_partition(fold, len(ds))
        assert torch.equal(fold["test"], split["test"])     # the test part never moves
        assert parts["train"] | parts["valid"] == pool
        # no scaffold on both sides of a fold
        scaf = {k: {scaffold(smiles[i]) for i in parts[k]} for k in ("train", "valid")}
        assert not scaf["train"] & scaf["valid"]
        validated += fold["valid"].tolist()
    # every row of a group of at most half a fold is validated exactly once;
    # the larger groups (ESOL: benzenes and acyclic molecules) train in every fold
    assert sorted(validated) == sorted(small) and len(small) < len(pool)
    assert all(len(g) > bound for g in groups.values() if not g <= small)
    sizes = [len(f["valid"]) for f in folds]
    assert max(sizes) - min(sizes) <= max(len(g) for g in groups.values() if g <= small)
    again = scaffold_folds(smiles, split, num_folds=5, seed=0)
    assert all(torch.equal(a["valid"], b["valid"]) for a, b in zip(folds, again))
    other = scaffold_folds(smiles, split, num_folds=5, seed=1)
    assert not all(torch.equal(a["valid"], b["valid"]) for a, b in zip(folds, other))


def test_scaffold_folds_of_a_small_split_and_refusals():
    # pool: two benzenes, a pyridine, a cyclopropane, a cyclobutane; test: ethanol
    smiles = ["c1ccccc1C", "c1ccccc1O", "c1ccncc1", "CC1CC1", "CC1CCC1", "CCO"]
    split = {"train": torch.tensor([0, 1, 2, 3]), "valid": torch.tensor([4]),
             "test": torch.tensor([5])}
    folds = scaffold_folds(smiles, split, num_folds=2)   # bound 5 / 4: benzenes always train
    assert sorted(len(f["valid"]) for f in folds) == [1, 2]
    assert sorted(sum((f["valid"].tolist() for f in folds), [])) == [2, 3, 4]
    assert all({0, 1} <= set(f["train"].tolist()) and f["test"].tolist() == [5]
               for f in folds)
    with pytest.raises(ValueError, match="at least 2"):
        scaffold_folds(smiles, split, num_folds=1)
    with pytest.raises(DataError, match=r"3 folds need 3 scaffold groups of at most half a "
                                        r"fold \(0.8 molecules\) to validate on; the training "
                                        r"and validation parts have 0: use fewer folds"):
        scaffold_folds(smiles, split, num_folds=3)


def test_column_split():
    split = column_split(["train", "VAL", "test", "valid", "Train"])
    assert as_sets(split) == {"train": {0, 4}, "valid": {1, 3}, "test": {2}}
    with pytest.raises(ValueError, match=r"row 3: unknown split 'dev'"):  # 1-based rows
        column_split(["train", "test", "dev"])
    with pytest.raises(ValueError, match=r"row 7: unknown split 'dev'"):  # CSV row numbers
        column_split(["train", "test", "dev"], rows=[1, 2, 7])


def test_index_split_from_ogb_style_files(tmp_path):
    for name, idx in (("train", [0, 3, 4]), ("valid", [1]), ("test", [2])):
        with gzip.open(tmp_path / f"{name}.csv.gz", "wt") as fh:
            fh.write("\n".join(map(str, idx)) + "\n")
    split = index_split(*(tmp_path / f"{n}.csv.gz" for n in ("train", "valid", "test")), num=5)
    assert as_sets(split) == {"train": {0, 3, 4}, "valid": {1}, "test": {2}}
    (tmp_path / "bad.txt").write_text("1\nx\n")
    with pytest.raises(ValueError, match=r"bad.txt, line 2: 'x' is not a row index"):
        index_split(tmp_path / "bad.txt", tmp_path / "valid.csv.gz", tmp_path / "test.csv.gz")
    with pytest.raises(ValueError, match="row 1 is in both train and valid"):
        index_split(tmp_path / "valid.csv.gz", tmp_path / "valid.csv.gz", tmp_path / "test.csv.gz")
    with pytest.raises(ValueError, match="train index 3 is out of range for 3 rows"):
        index_split(*(tmp_path / f"{n}.csv.gz" for n in ("train", "valid", "test")), num=3)
    # -1 would be the last row (the test part's 2 here) in Python's indexing
    (tmp_path / "neg.txt").write_text("0\n-1\n")
    with pytest.raises(ValueError, match=r"neg.txt, line 2: row index -1 is negative"):
        index_split(tmp_path / "neg.txt", tmp_path / "valid.csv.gz", tmp_path / "test.csv.gz")


def test_stratified_split_keeps_each_class_and_is_seeded():
    from graphformer.datasets import stratified_split

    labels = torch.tensor([0] * 10 + [1] * 5 + [2] * 1 + [-1] * 3)
    split = stratified_split(labels, 0.6, 0.2, seed=3)
    parts = [split[p].tolist() for p in ("train", "valid", "test")]
    every = sorted(i for part in parts for i in part)
    assert every == list(range(16))                    # unlabelled (-1) nodes in no part
    for c, (n_train, n_valid) in {0: (6, 2), 1: (3, 1), 2: (1, 0)}.items():
        got = [sum(int(labels[i]) == c for i in part) for part in parts]
        assert got[:2] == [n_train, n_valid], (c, got)
    assert all(part == sorted(part) for part in parts)
    assert {p: t.tolist() for p, t in stratified_split(labels, 0.6, 0.2, seed=3).items()} == \
        {p: t.tolist() for p, t in split.items()}
    assert stratified_split(labels, 0.6, 0.2, seed=4)["train"].tolist() != parts[0]
    with pytest.raises(ValueError, match="sum < 1"):
        stratified_split(labels, 0.8, 0.2)


def test_config_lists_of_whole_numbers_follow_the_int_rule():
    from typing import List

    from graphformer.errors import ConfigError
    from graphformer.train.config import coerce

    assert coerce("train", "num_neighbors", [10, "5", 2.0], List[int]) == [10, 5, 2]
    assert coerce("train", "num_neighbors", 7, List[int]) == [7]
    with pytest.raises(ConfigError, match=r"'train.num_neighbors' must be a whole number"):
        coerce("train", "num_neighbors", [10, 2.5], List[int])


def test_an_index_file_with_several_indices_on_a_line_is_refused(tmp_path):
    """A line ``0,1,...,7`` (ZINC's one-line ``.index`` layout) kept its first
    index and dropped the rest without a word."""
    (tmp_path / "train.txt").write_text("0,1,2,3,4,5,6,7\n")
    (tmp_path / "valid.txt").write_text("8\n")
    (tmp_path / "test.txt").write_text("9,\n")                 # a trailing comma is one field
    with pytest.raises(ValueError, match=r"train.txt, line 1: 8 comma-separated fields; an "
                                         r"index file holds one row index per line"):
        index_split(*(tmp_path / f"{n}.txt" for n in ("train", "valid", "test")))
    (tmp_path / "train.txt").write_text("\n".join(map(str, range(8))) + "\n")
    split = index_split(*(tmp_path / f"{n}.txt" for n in ("train", "valid", "test")), num=10)
    assert as_sets(split) == {"train": set(range(8)), "valid": {8}, "test": {9}}


@pytest.mark.parametrize("num", [100, 200, 400, 800])
def test_random_split_sizes_are_exact_floors(num):
    """0.29 of 100 rows is 29 (floats say 28.999999999999996, which made 28)."""
    split = random_split(num, (0.42, 0.29, 0.29))
    assert [len(split[p]) for p in ("valid", "test")] == [29 * num // 100] * 2
    assert sum(len(v) for v in split.values()) == num


def test_scaffold_split_with_chirality_is_ogbs_and_without_moves_33_lipophilicity_rows(tmp_path):
    """OGB's rule compares scaffolds with their stereochemistry; the default,
    as chemprop, without: the docs give the difference on Lipophilicity."""
    from tests.datasets.layouts import scaffold_split as ogb_scaffold_split

    import pandas as pd

    from graphformer.datasets.molecules import bundled_dir

    smiles = pd.read_csv(bundled_dir() / "Lipophilicity.csv")["smiles"].tolist()
    ogb = ogb_scaffold_split(smiles)
    ours = scaffold_split(smiles, include_chirality=True)
    assert {k: v.tolist() for k, v in ours.items()} == {k: sorted(v) for k, v in ogb.items()}
    default = scaffold_split(smiles)
    part = {i: k for k, v in ogb.items() for i in v}
    assert sum(part[i] != k for k, v in default.items() for i in v.tolist()) == 33
