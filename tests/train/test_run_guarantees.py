"""What a run directory guarantees: one writer at a time (a lock naming the
first run's process), ``--overwrite`` removing only what graphformer wrote
(its manifest) and only once the new run has been checked, a full disk as
one clear line with resume still exact, stale temporaries of an ensemble
removed on resume, and clear refusals to resume the wrong kind of run."""
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import graphformer._files as files_module
import graphformer.train.loop as loop
from graphformer.train import load_checkpoint
from graphformer.train.run_dir import LOCK, MANIFEST, RUN_FILES
from tests.commands import cli, refused
from tests.train.conftest import corpus_csv, tiny_csv  # noqa: F401  (fixtures)

TINY = ["--hidden", "16", "--layers", "1", "--heads", "2", "--rwse-steps", "4",
        "--batch-size", "16", "--threads", "1", "--split", "random", "--quiet",
        "--no-pretrained"]


def train_args(csv, run_dir, root, *more, epochs=3, ensemble=1):
    return ["train", "--dataset", csv, "--target-columns", "y", "--root", root,
            "--run-dir", run_dir, "--epochs", epochs, "--ensemble", ensemble, *TINY, *more]


def history(run_dir):
    return [{k: v for k, v in row.items() if k != "seconds"}
            for row in json.loads((run_dir / "metrics.json").read_text())]


def contents(folder):
    """Every file under ``folder`` (but the lock) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != LOCK}


def temporaries(folder):
    return sorted(str(p) for p in folder.rglob(".*.tmp"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_csv):  # noqa: F811
    """A run of one model (3 epochs) and an ensemble of two (1 epoch)."""
    tmp = tmp_path_factory.mktemp("runs")
    assert cli(*train_args(tiny_csv, tmp / "one", tmp / "cache"))[0] == 0
    assert cli(*train_args(tiny_csv, tmp / "ens", tmp / "cache", epochs=1, ensemble=2))[0] == 0
    return tmp


def copy(runs, name, tmp_path):
    return Path(shutil.copytree(runs / name, tmp_path / name))


# --------------------------------------------------------------------------- the lock

def test_a_second_run_on_a_directory_being_written_is_refused(runs, tmp_path, tiny_csv,
                                                              monkeypatch):  # noqa: F811
    """While a run writes its directory, another run there (even with
    --overwrite) is refused with one line naming the first's process."""
    run_dir = tmp_path / "r"
    second = {}
    real = loop.evaluate_split

    def evaluate(*args, **kwargs):
        if not second:  # the first run is at its first evaluation
            second["new"] = cli(*train_args(tiny_csv, run_dir, runs / "cache"))
            second["overwrite"] = cli(*train_args(tiny_csv, run_dir, runs / "cache",
                                                  "--overwrite"))
            second["resume"] = cli("train", "--resume", run_dir, "--quiet")
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "evaluate_split", evaluate)
    assert cli(*train_args(tiny_csv, run_dir, runs / "cache"))[0] == 0
    me = f"PID {os.getpid()} on host {socket.gethostname()}"
    for result in second.values():
        refused(result, 2, f"run directory {run_dir} is in use by another graphformer run "
                           f"({me}")
    monkeypatch.setattr(loop, "evaluate_split", real)
    assert history(run_dir) == history(runs / "one")  # the first run is whole
    assert cli("train", "--resume", run_dir, "--quiet")[0] == 0  # the lock went with it


def test_the_lock_names_another_process_and_dies_with_it(runs, tmp_path, tiny_csv):  # noqa: F811
    """A run directory held by another process (here one that holds the lock
    as a run does) is refused naming its PID and host; once that process is
    killed (-9), the directory is free."""
    run_dir = tmp_path / "held"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from pathlib import Path; from graphformer.train.run_dir import "
         "RunDirectory; d = RunDirectory(Path(sys.argv[1]), False, False).__enter__(); "
         "d.start(); print('locked', flush=True); sys.stdin.read()", str(run_dir)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        line = refused(cli(*train_args(tiny_csv, run_dir, runs / "cache", epochs=1)), 2,
                       f"PID {holder.pid} on host {socket.gethostname()}")
        assert "wait for it to end, or choose another --run-dir" in line
        refused(cli("pretrain", "--smiles", tiny_csv, "--run-dir", run_dir, "--epochs", "1",
                    "--quiet"), 2, f"PID {holder.pid}")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert cli(*train_args(tiny_csv, run_dir, runs / "cache", epochs=1))[0] == 0


# --------------------------------------------------------------------------- overwrite

def test_a_folder_with_someone_elses_config_is_not_a_run(runs, tmp_path, tiny_csv):  # noqa: F811
    """A ``config.json`` that graphformer did not write is never called a run
    nor removed: a run there is refused, with or without --overwrite."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "config.json").write_text('{"name": "my project", "version": 3}\n')
    for more in ([], ["--overwrite"]):
        line = refused(cli(*train_args(tiny_csv, folder, runs / "cache", *more, epochs=1)), 2,
                       folder, "holds config.json, which graphformer did not write")
        assert "already holds a run" not in line
    assert (folder / "config.json").read_text() == '{"name": "my project", "version": 3}\n'
    assert [p.name for p in folder.iterdir()] == ["config.json"]  # no lock file left there


def test_a_tensorboard_folder_graphformer_did_not_write_is_never_removed(runs, tmp_path,
                                                                          tiny_csv):  # noqa: F811
    """A user's own ``tensorboard/`` in a run directory is refused like their
    own ``config.json``: it was listed as the run's and ``--overwrite`` then
    deleted it."""
    folder = tmp_path / "project"
    (folder / "tensorboard").mkdir(parents=True)
    (folder / "tensorboard" / "notes.txt").write_text("my own logs\n")
    for more in ([], ["--overwrite"]):
        refused(cli(*train_args(tiny_csv, folder, runs / "cache", *more, epochs=1)), 2,
                folder, "holds tensorboard, which graphformer did not write")
    assert (folder / "tensorboard" / "notes.txt").read_text() == "my own logs\n"
    assert sorted(p.name for p in folder.iterdir()) == ["tensorboard"]


def test_overwriting_an_ensemble_with_one_model_removes_its_members(runs, tmp_path,
                                                                    tiny_csv):  # noqa: F811
    ens = copy(runs, "ens", tmp_path)
    (ens / "member-1" / "notes.txt").write_text("mine")
    (ens / "notes.txt").write_text("mine too")
    refused(cli(*train_args(tiny_csv, ens, runs / "cache", epochs=1)), 2,
            "already holds an ensemble's members (member-0, member-1)", "--overwrite")
    assert cli(*train_args(tiny_csv, ens, runs / "cache", "--overwrite", epochs=1))[0] == 0
    assert not (ens / "member-0").exists()
    assert sorted(p.name for p in (ens / "member-1").iterdir()) == ["notes.txt"]  # theirs only
    assert (ens / "notes.txt").read_text() == "mine too"
    assert load_checkpoint(ens / "last.pt")["config"]["train"]["ensemble"] == 1
    assert json.loads((ens / MANIFEST).read_text())["files"] == [*RUN_FILES, "tensorboard"]


@pytest.mark.parametrize("ensemble", [1, 2])
def test_an_overwrite_that_fails_its_checks_keeps_the_old_run(runs, tmp_path, tiny_csv,
                                                              ensemble):  # noqa: F811
    """--overwrite removes the old run only after the new run's config, data
    and starting checkpoint have been checked."""
    old = copy(runs, "one" if ensemble == 1 else "ens", tmp_path)
    before = contents(old)
    smiles = pd.read_csv(tiny_csv)["smiles"]
    pd.DataFrame({"smiles": smiles, "y": [float("nan")] * len(smiles)}).to_csv(
        tmp_path / "nan.csv", index=False)
    refused(cli(*train_args(tmp_path / "nan.csv", old, runs / "cache", "--overwrite",
                            ensemble=ensemble)), 1, "no valid rmse")
    refused(cli(*train_args(tiny_csv, old, runs / "cache", "--overwrite", "--init",
                            tmp_path / "none.pt", ensemble=ensemble)), 2, "none.pt")
    assert contents(old) == before


def test_a_run_of_an_older_graphformer_is_recognised_without_a_manifest(runs, tmp_path,
                                                                        tiny_csv):  # noqa: F811
    """No manifest: a folder is a run when its checkpoint is graphformer's or
    its config.json has graphformer's sections; then its run files go."""
    old = copy(runs, "one", tmp_path)
    (old / MANIFEST).unlink()
    (old / "notes.txt").write_text("mine")
    refused(cli(*train_args(tiny_csv, old, runs / "cache", epochs=1)), 2,
            "already holds a run (config.json, metrics.csv, metrics.json, last.pt, best.pt")
    (old / "config.json").write_text("{}")  # the checkpoints alone make it a run
    assert cli(*train_args(tiny_csv, old, runs / "cache", "--overwrite", epochs=1))[0] == 0
    assert [row["epoch"] for row in history(old)] == [1]
    assert (old / "notes.txt").read_text() == "mine" and (old / MANIFEST).is_file()


# --------------------------------------------------------------------------- temporaries

def test_resuming_an_ensemble_removes_its_stale_temporaries(runs, tmp_path):
    ens = copy(runs, "ens", tmp_path)
    stale = [ens / ".best.pt.0123456789ab.tmp", ens / ".summary.json.deadbeef0000.tmp",
             ens / ".config.json.00000000abcd.tmp", ens / f".{MANIFEST}.0123456789ab.tmp"]
    for path in stale:
        path.write_bytes(b"partial")
    (ens / ".notes.0123456789ab.tmp").write_bytes(b"theirs")  # not a temporary of ours
    assert cli("train", "--resume", ens, "--quiet")[0] == 0
    assert not any(path.exists() for path in stale)
    assert (ens / ".notes.0123456789ab.tmp").read_bytes() == b"theirs"


# --------------------------------------------------------------------------- a full disk

class _Full:
    """A file whose writes fail as on a full disk."""

    def __init__(self, fh):
        self.fh = fh

    def __getattr__(self, name):
        return getattr(self.fh, name)

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()


class FullDisk:
    """``os`` as ``graphformer._files`` sees it when the disk fills: the
    ``nth`` file written to ``target`` fails (``torch.save`` then raises its
    ``RuntimeError``, a text write the ``OSError``)."""

    def __init__(self, target, nth=1):
        self.target, self.nth, self.seen, self.paths = Path(target), nth, 0, {}

    def __getattr__(self, name):
        return getattr(os, name)

    def open(self, path, *args, **kwargs):
        fd = os.open(path, *args, **kwargs)
        self.paths[fd] = Path(path)
        return fd

    def fdopen(self, fd, *args, **kwargs):
        fh = os.fdopen(fd, *args, **kwargs)
        tmp = self.paths.pop(fd)
        if tmp.parent == self.target.parent and tmp.name.startswith(f".{self.target.name}."):
            self.seen += 1
            if self.seen == self.nth:
                return _Full(fh)
        return fh


@pytest.mark.parametrize("name", ["last.pt", "metrics.csv"])
def test_a_full_disk_is_one_line_and_resume_stays_exact(runs, tmp_path, tiny_csv, monkeypatch,
                                                        name):  # noqa: F811
    run_dir = tmp_path / "r"
    monkeypatch.setattr(files_module, "os", FullDisk(run_dir / name, nth=2))  # in epoch 2
    refused(cli(*train_args(tiny_csv, run_dir, runs / "cache")), 1,
            f"no space left on device while writing {run_dir / name}", "--resume")
    monkeypatch.undo()
    assert temporaries(run_dir) == []
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 1  # metrics go first, then it
    assert cli("train", "--resume", run_dir, "--quiet")[0] == 0
    assert history(run_dir) == history(runs / "one")


def test_a_full_disk_in_an_ensemble_and_in_pretrain(runs, tmp_path, tiny_csv, corpus_csv,
                                                    monkeypatch):  # noqa: F811
    ens = tmp_path / "ens"
    monkeypatch.setattr(files_module, "os", FullDisk(ens / "best.pt"))
    refused(cli(*train_args(tiny_csv, ens, runs / "cache", epochs=1, ensemble=2)), 1,
            f"no space left on device while writing {ens / 'best.pt'}")
    monkeypatch.undo()
    assert temporaries(ens) == [] and not (ens / "best.pt").exists()
    assert cli("train", "--resume", ens, "--quiet")[0] == 0
    assert load_checkpoint(ens / "best.pt")["model"].keys() == \
        load_checkpoint(runs / "ens" / "best.pt")["model"].keys()

    pre = tmp_path / "pre"
    args = ["pretrain", "--smiles", corpus_csv, "--run-dir", pre, "--root", runs / "cache",
            "--epochs", "2", "--batch-size", "8", "--valid-fraction", "0.2", *TINY[:8],
            "--quiet"]
    monkeypatch.setattr(files_module, "os", FullDisk(pre / "last.pt", nth=2))
    refused(cli(*args), 1, f"no space left on device while writing {pre / 'last.pt'}")
    monkeypatch.undo()
    assert temporaries(pre) == [] and load_checkpoint(pre / "last.pt")["epoch"] == 1
    assert cli("pretrain", "--resume", pre, "--quiet")[0] == 0
    assert [row["epoch"] for row in history(pre)] == [1, 2]


# --------------------------------------------------------------------------- wrong kinds

def test_resuming_the_wrong_kind_of_run_says_which_command(runs, tmp_path,
                                                           corpus_csv):  # noqa: F811
    for name, what in (("one", "a run of 'graphformer train'"),
                       ("ens", "an ensemble of 'graphformer train'")):
        run_dir = runs / name
        before = contents(run_dir)
        refused(cli("pretrain", "--resume", run_dir, "--quiet"), 2,
                f"cannot resume {run_dir} with 'graphformer pretrain': it is {what}",
                f"graphformer train --resume {run_dir}")
        refused(cli("pretrain", "--resume", run_dir, "--threads", "1", "--quiet"), 2, what)
        assert contents(run_dir) == before
    pre = tmp_path / "pre"
    assert cli("pretrain", "--smiles", corpus_csv, "--run-dir", pre, "--root", runs / "cache",
               "--epochs", "1", "--batch-size", "8", "--valid-fraction", "0.2", *TINY[:8],
               "--quiet")[0] == 0
    for more in ([], ["--threads", "1"]):
        refused(cli("train", "--resume", pre, "--quiet", *more), 2,
                f"cannot resume {pre} with 'graphformer train': it is a run of 'graphformer "
                f"pretrain'", f"graphformer pretrain --resume {pre}")
