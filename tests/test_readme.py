"""The README stays true: its commands and its quick start run."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_main_job_runs_with_a_tiny_epoch_budget(tmp_path):
    main_job, _ = setup_commands()
    command = main_job.split("&&")[-1].strip()
    assert command == "graphformer train"
    # The same command, with one epoch and its files kept in tmp_path.
    result = subprocess.run(
        [sys.executable, "-m", "graphformer", *command.split()[1:], "--epochs", "1",
         "--root", str(tmp_path / "cache"), "--run-dir", str(tmp_path / "run")],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    # the default: an ensemble of two models, each a run of its own
    assert re.search(r"^test rmse of the ensemble of 2: \d+\.\d{4} \(each member at its best "
                     r"validation epoch: 1, 1\)", result.stdout, re.M)
    assert result.stderr.count("esol: 1128 graphs, split {'train': 902, 'valid': 113, "
                               "'test': 113}") == 2
    assert (tmp_path / "run" / "learning_curve.png").is_file()   # both members' curves


def test_attention_example_runs():
    result = subprocess.run([sys.executable, "scripts/attention_example.py"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "3 sequences, 17 tokens, 65 causal edges" in result.stdout
    assert "weights sum to 1 over each query's keys: True" in result.stdout


def test_quick_start_runs():
    snippet = code_blocks("python")[0]
    result = subprocess.run([sys.executable, "-c", snippet], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    # window(2): 12 + 6 edges; global tokens: 9 + 5; they share 3 + 3.
    assert result.stdout.strip() == "torch.Size([8, 64]) torch.Size([26, 4])"


def test_data_snippet_runs(tmp_path):
    snippet = next(b for b in code_blocks("python") if "read_edge_list(" in b)
    (tmp_path / "edges.txt").write_text("# a triangle and a tail\n1 2\n2 3\n3 1\n3 40\n")
    (tmp_path / "labels.csv").write_text("node,label\n1,a\n2,a\n3,b\n40,b\n")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    # 11 atoms; 3 + 2 tokens, causal: 6 + 3 edges, 9 one-hot offsets; 4 nodes; 1128 molecules.
    assert result.stdout.strip().splitlines()[-1] == (
        "torch.Size([11, 9]) torch.Size([9, 9]) 4 1128")


def test_attention_backend_snippet_runs():
    """The README's backend example: auto picks dense for two all-pairs
    molecules, and the layer runs on it."""
    snippet = next(b for b in code_blocks("python") if "estimate(" in b)
    result = subprocess.run([sys.executable, "-c", snippet], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["dense", "torch.Size([50,", "64])"]


def test_benchmark_table_is_the_scripts_output_format():
    """The README's benchmark table has the columns bench_attention.py
    --markdown-from prints, and every target the text reports is in it."""
    header = ("| case | method | backend | fwd ms | fwd+bwd ms | peak MB | speed-up fwd+bwd "
              "| memory vs peer |")
    assert header in README
    for case in ("molecules/bonds", "large/edge-features", "large/no-edge-features",
                 "tokens/full", "tokens/causal", "long/window", "long/window+strided-heads"):
        assert f"| {case} | graphformer |" in README


def test_training_speed_tables_are_the_scripts_output_format():
    """The README's training-speed tables are what bench_training.py
    --markdown-from prints: the same header lines, and every `graphformer
    train` row paired with chemprop's runs and their ratios."""
    from tests.helpers import load_script

    bench = load_script("bench_training")
    results = {"machine": "m", "datasets": ["esol"],
               "steps": [{"dataset": "esol", "model": "GIN", "train_mol_s": 2.0,
                          "eval_mol_s": 4.0}],
               "cli": [{"command": "graphformer train", "dataset": "esol", "repeat": 0,
                        "seconds": 30.0, "metric": "rmse", "test_at_best": 0.8}],
               "chemprop": [{"dataset": "esol", "repeat": 0, "seconds": 50.0, "epochs": 50}]}
    table = bench.markdown(results).splitlines()
    for header in (table[2], table[-3]):
        assert header in README
    for command in ("graphformer train", "graphformer train --dataset freesolv",
                    "graphformer train --dataset lipophilicity"):
        row = next(line for line in README.splitlines() if line.startswith(f"| `{command}` |"))
        assert re.search(r"; \*\*\d\.\d\d×\*\* \|", row), row   # the pairs' median


def run_snippet(marker):
    """Run the README's python block that contains ``marker``; its stdout."""
    snippet = next(b for b in code_blocks("python") if marker in b)
    result = subprocess.run([sys.executable, "-c", snippet], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_typed_edges_snippet_runs():
    """The README's typed-edge example: a shared EdgeSet with edge types gives
    what per-edge features give."""
    assert run_snippet("EdgeSet(") == "torch.Size([9, 16]) True"


def test_sequence_snippet_runs():
    """The README's decoder example: positions per sequence, causal
    self-attention and bipartite cross-attention."""
    assert run_snippet("TransformerDecoderLayer(") == "torch.Size([5, 64]) torch.Size([5, 64])"


def test_rasp_snippet_runs():
    """The README's RASP example: the compiled model reverses, at the predicted size."""
    assert run_snippet("rasp.compile(").startswith("[[3, 2, 1], [2, 1, 3, 3]] CompiledProgram(layers=2, "
                                            "heads=[1, 1]")


class _Parsed(Exception):
    """Raised in place of running a script once its arguments parsed."""


def readme_commands():
    """Every `graphformer ...`, `torchrun ... -m graphformer ...` and `python
    scripts/NAME.py ...` line of the README's code blocks (continuations
    joined, `# comments` and `[optional]` brackets dropped)."""
    commands = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", README, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line.strip())
            line = re.sub(r"\[(--[^\]]+)\]", r"\1", line)
            if re.match(r"graphformer\s|torchrun\s|python scripts/", line + " "):
                commands.append(line)
    return commands


def test_every_readme_command_parses(monkeypatch):
    """The README's commands name options that exist, with values of the
    right type: each is parsed by the parser of the CLI or script it calls
    (nothing is run; the scripts stop as soon as their arguments parse)."""
    import argparse
    import shlex

    from graphformer.cli.commands import build_parser
    from tests.helpers import load_script

    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        parse(self, args, namespace)
        raise _Parsed

    commands = readme_commands()
    scripts = [c for c in commands if c.startswith("python scripts/")]
    assert len(commands) >= 35 and len(scripts) >= 15      # the extraction found them
    modules = {}                                            # each script imported once
    for command in commands:
        words = shlex.split(command)
        try:
            if words[0] == "python":
                name = Path(words[1]).stem
                if name not in modules:
                    modules[name] = load_script(name)
                module = modules[name]
                with monkeypatch.context() as m:
                    m.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
                    with pytest.raises(_Parsed):
                        module.main(words[2:])
            else:
                args = words[words.index("graphformer") + 1:]
                build_parser().parse_args(args)
        except SystemExit as err:   # argparse's error: the command is wrong
            raise AssertionError(f"README command does not parse: {command}") from err


def test_every_guarantee_names_a_test_that_exists():
    """The "Errors and guarantees" table names real tests (file and function)."""
    section = README.split("## Errors and guarantees", 1)[1].split("\n## ", 1)[0]
    named = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", section)
    assert len(named) >= 30
    for path, name in named:
        source = (ROOT / path).read_text()
        assert re.search(rf"^def {name}\(", source, re.M), f"{path}::{name} does not exist"


def test_layers_on_a_sampled_mini_batch_snippet_runs():
    """The README's mini-batch example: a RelationalAttention on a subgraph
    sampled by NodeLoader, its seed nodes' outputs."""
    out = run_snippet("node_sampler=neighbor_sampler(")
    assert out.startswith("torch.Size([64, 32]) [64, "), out
