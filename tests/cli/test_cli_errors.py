"""The command line's own outcomes: argparse's errors are one line (exit 2)
while ``--help`` prints the whole usage, and Ctrl-C at any moment, also
while the commands' imports run, ends in ``graphformer: interrupted`` and
exit code 130, never a traceback."""
import importlib.abc
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from graphformer.cli import main

ARGPARSE_ERRORS = [
    ([], "required: command", "graphformer --help"),
    (["bogus"], "invalid choice: 'bogus'", "graphformer --help"),
    (["train", "--epochs", "x"], "argument --epochs: invalid int value: 'x'",
     "graphformer train --help"),
    (["train", "--no-such-flag"], "unrecognized arguments: --no-such-flag", "graphformer --help"),
    (["pretrain", "--pooling", "max"], "argument --pooling: invalid choice: 'max'",
     "graphformer pretrain --help"),
    (["predict"], "required: checkpoint, input, -o/--output", "graphformer predict --help"),
    (["evaluate", "a.pt", "--parts", "all"], "argument --parts: invalid choice: 'all'",
     "graphformer evaluate --help"),
    (["evaluate", "a.pt", "--threads", "-1"], "argument --threads: must be a whole number >= 0",
     "graphformer evaluate --help"),
    (["predict", "a.pt", "in.csv", "-o", "o.csv", "--threads", "two"],
     "argument --threads: must be a whole number >= 0", "graphformer predict --help"),
    (["explain", "a.pt", "-o", "a.png"], "required: --smiles", "graphformer explain --help"),
    (["explain", "a.pt", "--smiles", "C", "-o", "a.png", "--size", "32768", "400"],
     "argument --size: each side must be a whole number of pixels from 1 to 8192, got '32768'",
     "graphformer explain --help"),
]


@pytest.mark.parametrize("argv, message, hint", ARGPARSE_ERRORS)
def test_argparse_errors_are_one_line_with_exit_2(argv, message, hint, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    out, err = capsys.readouterr()
    assert exit_.value.code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("graphformer: error: "), err
    assert message in err and f"(see: {hint})" in err, err
    assert "usage:" not in err


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["predict", "--help"],
                                  ["evaluate", "--help"], ["explain", "--help"]])
def test_help_still_prints_the_whole_usage(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    out, err = capsys.readouterr()
    assert exit_.value.code == 0 and err == ""
    assert out.startswith("usage: graphformer") and len(out.splitlines()) > 10


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_predict_and_evaluate_document_threads(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "--threads N" in capsys.readouterr().out


class _Interrupting(importlib.abc.MetaPathFinder):
    """Ctrl-C while ``graphformer.cli.commands`` (and with it PyTorch) is imported."""

    def find_spec(self, name, path=None, target=None):
        if name == "graphformer.cli.commands":
            raise KeyboardInterrupt
        return None


def test_an_interrupt_while_the_commands_import_exits_130(monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, "graphformer.cli.commands")
    monkeypatch.setattr(sys, "meta_path", [_Interrupting(), *sys.meta_path])
    assert main(["evaluate", "a.pt"]) == 130
    assert capsys.readouterr().err == "graphformer: interrupted\n"


def _console_script():
    script = Path(sys.executable).parent / "graphformer"
    return [str(script)] if script.is_file() else None


@pytest.mark.parametrize("entry", ["console script", "python -m graphformer"])
def test_ctrl_c_during_the_first_seconds_is_one_line_and_exit_130(entry, tmp_path):
    """SIGINT while PyTorch is being imported, in a real process: Python
    reports every import as it ends (``-X importtime``), so the signal is
    sent once an import of torch has ended and before the command runs."""
    command = _console_script() if entry == "console script" else \
        [sys.executable, "-m", "graphformer"]
    if command is None:
        pytest.skip("no graphformer console script beside this Python")
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1", "OMP_NUM_THREADS": "1"}
    # as in a terminal: a test run started in the background (`cmd &` in a
    # script) has SIGINT ignored, which the child would inherit and keep
    process = subprocess.Popen([*command, "evaluate", str(tmp_path / "none.pt")], env=env,
                               stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               cwd=tmp_path,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        seen = []
        for line in process.stderr:
            seen.append(line)
            if line.startswith("import time:") and "torch" in line:
                process.send_signal(signal.SIGINT)
                break
        _, rest = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    err = [line for line in [*seen, *rest.splitlines(True)]
           if not line.startswith("import time:")]
    assert any("torch" in line for line in seen), "torch was never imported"
    assert process.returncode == 130, "".join(err)
    assert err == ["graphformer: interrupted\n"], "".join(err)
