"""The README stays true: its commands and its quick start run."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def code_blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def setup_commands():
    main_job, tests = [b.strip() for b in code_blocks("bash")[:2]]
    return main_job, tests


def test_ci_runs_the_readme_test_command_steps_in_order():
    _, tests = setup_commands()
    steps = [s.strip() for s in tests.split("&&")]
    assert steps[-1] == "python -m pytest -q"
    ci_lines = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()]
    positions = [ci_lines.index(step) for step in steps]  # ValueError if one is missing
    assert positions == sorted(positions)
    assert ci_lines[-1] == steps[-1], "CI must end with the README's test command"


def test_main_job_runs():
    main_job, _ = setup_commands()
    command = main_job.split("&&")[-1].strip()
    assert command == "python scripts/attention_example.py"
    result = subprocess.run([sys.executable, *command.split()[1:]], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "3 sequences, 17 tokens, 65 causal edges" in result.stdout
    assert "weights sum to 1 over each query's keys: True" in result.stdout


def test_quick_start_runs():
    snippet, = code_blocks("python")
    result = subprocess.run([sys.executable, "-c", snippet], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    # window(2): 12 + 6 edges; global tokens: 9 + 5; they share 3 + 3.
    assert result.stdout.strip() == "torch.Size([8, 64]) torch.Size([26, 4])"
