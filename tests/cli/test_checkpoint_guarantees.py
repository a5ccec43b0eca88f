"""Damaged checkpoints are refused by every command that reads one.

A checkpoint carries a SHA-256 of its tensors, written when it is saved; a
mismatch (flipped bytes in its weights) or NaN / infinite weights end every
command with exit code 1 and one line naming the file (and the first bad
tensor). Checkpoints written before the checksum existed, such as the shipped
pre-trained one, are still read, and still refused with non-finite weights.
"""
import json
import re
import shutil
import struct
import zipfile

import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from graphformer.train import CheckpointError, load_checkpoint, save_checkpoint
from graphformer.train.checkpoint import CHECKSUM
from graphformer.train.init import DEFAULT_CHECKPOINT
from tests.commands import cli, refused
from tests.train.conftest import tiny_csv  # noqa: F401  (fixture)

TINY = ["--hidden", "16", "--layers", "1", "--heads", "2", "--rwse-steps", "4",
        "--batch-size", "16", "--threads", "1", "--split", "random", "--epochs", "1",
        "--quiet", "--no-pretrained"]


def tensor_records(path):
    """(offset, size) of every tensor storage in a torch zip checkpoint."""
    out = []
    with zipfile.ZipFile(path) as archive, open(path, "rb") as fh:
        for info in archive.infolist():
            if re.search(r"/data/\d+$", info.filename) and info.file_size:
                fh.seek(info.header_offset)
                name_len, extra_len = struct.unpack("<HH", fh.read(30)[26:30])
                out.append((info.header_offset + 30 + name_len + extra_len, info.file_size))
    return out


def flip(path, target, positions, mask=0xFF):
    """Copy ``path`` to ``target`` with the bytes at ``positions`` xor-ed."""
    data = bytearray(path.read_bytes())
    for p in positions:
        data[p] ^= mask
    target.write_bytes(bytes(data))
    return target


def with_nan(path, target, key="model"):
    """``path`` saved again (with a valid checksum) with a NaN in its first
    floating weight of ``state[key]``; returns the tensor's name."""
    state = load_checkpoint(path)
    name = next(k for k, v in state[key].items() if v.is_floating_point() and v.numel())
    state[key][name] = state[key][name].clone()
    state[key][name].view(-1)[0] = float("nan")
    save_checkpoint({k: v for k, v in state.items() if k not in ("format", "version")}, target)
    return f"{key}.{name}"


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_csv):  # noqa: F811
    tmp = tmp_path_factory.mktemp("ckpt")
    code, _, err = cli("train", "--dataset", tiny_csv, "--target-columns", "y",
                       "--root", tmp / "cache", "--run-dir", tmp / "run", "--ensemble", "1",
                       *TINY)
    assert code == 0, err
    pd.DataFrame({"smiles": ["CCO", "c1ccccc1O"]}).to_csv(tmp / "m.csv", index=False)
    return tmp


def commands(ckpt, tmp, tiny_csv):  # noqa: F811
    """Every command that reads ``ckpt`` as a trained model or a trunk."""
    return {
        "evaluate": ["evaluate", ckpt],
        "predict": ["predict", ckpt, tmp / "m.csv", "-o", tmp / "p.csv"],
        "explain": ["explain", ckpt, "--smiles", "CCO", "-o", tmp / "e.png"],
        "train --init": ["train", "--dataset", tiny_csv, "--target-columns", "y",
                         "--root", tmp / "cache", "--run-dir", tmp / "init-run", "--ensemble",
                         "1", "--init", ckpt, *TINY],
    }


@pytest.mark.parametrize("command", ["evaluate", "predict", "explain", "train --init"])
def test_flipped_bytes_in_the_weights_are_refused(run, tiny_csv, command):  # noqa: F811
    offset, size = max(tensor_records(run / "run" / "best.pt"), key=lambda r: r[1])
    damaged = flip(run / "run" / "best.pt", run / "flipped.pt",
                   range(offset + size // 2, offset + size // 2 + 64), 0x01)
    refused(cli(*commands(damaged, run, tiny_csv)[command]), 1, damaged, "is damaged",
            "do not match the checksum written when it was saved")
    assert not (run / "p.csv").exists() and not (run / "e.png").exists()
    assert not (run / "init-run" / "last.pt").exists()


@pytest.mark.parametrize("command", ["evaluate", "predict", "explain", "train --init"])
def test_nan_weights_are_refused_naming_the_tensor(run, tiny_csv, command):  # noqa: F811
    name = with_nan(run / "run" / "best.pt", run / "nan.pt")
    refused(cli(*commands(run / "nan.pt", run, tiny_csv)[command]), 1, run / "nan.pt",
            "is damaged", f"NaN or infinite values (first in {name})")


def test_resume_refuses_a_damaged_last_checkpoint(run, tmp_path):
    copy = shutil.copytree(run / "run", tmp_path / "copy")
    offset, size = tensor_records(copy / "last.pt")[0]
    flip(copy / "last.pt", copy / "last.pt", [offset + size - 1])
    before = (copy / "metrics.json").read_bytes()
    refused(cli("train", "--resume", copy, "--quiet"), 1, copy / "last.pt", "is damaged")
    assert (copy / "metrics.json").read_bytes() == before


def test_a_checkpoint_without_a_checksum_is_read_and_checked_for_nan(run, tmp_path):
    """A checkpoint of an older graphformer (no checksum) gives the same metrics
    as the checksummed one; NaN weights in one are refused all the same."""
    state = torch.load(run / "run" / "best.pt", weights_only=True)
    assert isinstance(state.pop(CHECKSUM), str)
    torch.save(state, tmp_path / "old.pt")
    new, old = cli("evaluate", run / "run" / "best.pt"), cli("evaluate", tmp_path / "old.pt")
    assert new[0] == old[0] == 0
    assert json.loads(new[1])["test"] == json.loads(old[1])["test"]
    state["model"] = dict(state["model"])
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][name] = torch.full_like(state["model"][name], float("inf"))
    torch.save(state, tmp_path / "old-inf.pt")
    refused(cli("evaluate", tmp_path / "old-inf.pt"), 1, tmp_path / "old-inf.pt",
            f"first in model.{name}")


def test_the_shipped_checkpoint_loads_without_a_checksum_and_is_still_checked(tmp_path):
    """The shipped checkpoint predates the checksum and is kept byte for byte
    (its SHA-256 is published): it loads; with a NaN it would be refused."""
    assert CHECKSUM not in torch.load(DEFAULT_CHECKPOINT, weights_only=True)
    assert load_checkpoint(DEFAULT_CHECKPOINT)["kind"] == "pretrain"
    state = torch.load(DEFAULT_CHECKPOINT, weights_only=True)
    name = sorted(state["model"])[-1]
    state["model"][name] = torch.full_like(state["model"][name], float("nan"))
    torch.save(state, tmp_path / "shipped-nan.pt")
    with pytest.raises(CheckpointError, match=rf"shipped-nan.pt is damaged: .*first in "
                                              rf"model.{re.escape(name)}\)"):
        load_checkpoint(tmp_path / "shipped-nan.pt")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_flipped_bytes_in_tensor_data_are_refused(run, data):
    """Property: xor-ing any 1-8 bytes of any tensor's stored data (optimiser
    moments, steps and normalisation included, not only the weights) is
    refused as damaged."""
    source = run / "run" / "last.pt"
    records = tensor_records(source)
    offset, size = data.draw(st.sampled_from(records))
    positions = data.draw(st.lists(st.integers(offset, offset + size - 1), min_size=1,
                                   max_size=8, unique=True))
    mask = data.draw(st.integers(1, 255))
    damaged = flip(source, run / "hyp.pt", positions, mask)
    with pytest.raises(CheckpointError, match="hyp.pt is damaged"):
        load_checkpoint(damaged)


def test_an_intact_checkpoint_loads_as_it_was_saved(run):
    """The checksum is written beside the state and taken off it on loading:
    the state read back is the file's, tensor for tensor, without the key."""
    path = run / "run" / "last.pt"
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert isinstance(raw.pop(CHECKSUM), str)
    state = load_checkpoint(path)
    assert CHECKSUM not in state and set(state) == set(raw)
    for key, value in raw["model"].items():
        assert torch.equal(state["model"][key], value), key


def test_init_with_an_ensemble_checkpoint_names_a_member(tmp_path, tiny_csv):  # noqa: F811
    base = ["train", "--dataset", tiny_csv, "--target-columns", "y", "--root",
            tmp_path / "cache", *TINY]
    assert cli(*base, "--run-dir", tmp_path / "ens", "--ensemble", "2")[0] == 0
    ckpt = tmp_path / "ens" / "best.pt"
    refused(cli(*base, "--run-dir", tmp_path / "fine", "--ensemble", "1", "--init", ckpt), 2,
            f"--init {ckpt} is the checkpoint of an ensemble of 2 models",
            f"--init {tmp_path / 'ens' / 'member-0' / 'best.pt'}")
    assert not (tmp_path / "fine").exists()
    assert cli(*base, "--run-dir", tmp_path / "fine", "--ensemble", "1", "--init",
               tmp_path / "ens" / "member-0" / "best.pt")[0] == 0

    # a damaged member is refused when the ensemble is put together again
    member = tmp_path / "ens" / "member-1" / "best.pt"
    offset, size = tensor_records(member)[-1]
    flip(member, member, [offset])
    refused(cli("train", "--resume", tmp_path / "ens", "--quiet"), 1, member, "is damaged")
    # and a damaged ensemble checkpoint by every reader
    offset, size = max(tensor_records(ckpt), key=lambda r: r[1])
    flip(ckpt, ckpt, [offset + 3])
    refused(cli("evaluate", ckpt), 1, ckpt, "is damaged")
    refused(cli("predict", ckpt, tiny_csv, "-o", tmp_path / "p.csv"), 1, ckpt, "is damaged")
