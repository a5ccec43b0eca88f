"""The README and the pages of docs/ stay true: their commands parse with
the real parsers, their snippets run, the tests they name exist, and the
README's links lead to pages that exist."""
import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
#: every page a user reads, by its path: the README, then docs/ (API pages too)
PAGES = {"README.md": README,
         **{p.relative_to(ROOT).as_posix(): p.read_text()
            for p in sorted((ROOT / "docs").rglob("*.md"))}}
#: what marks each python block of the pages as run by a test (the test's
#: name beside it): a new snippet needs a test, or the check below fails
SNIPPETS = {
    "patterns.window(ptr, size=2)": "test_quick_start_runs",
    "read_edge_list(": "test_data_snippet_runs",
    "estimate(": "test_attention_backend_snippet_runs",
    "EdgeSet(": "test_typed_edges_snippet_runs",
    "TransformerDecoderLayer(": "test_sequence_snippet_runs",
    "rasp.compile(": "test_rasp_snippet_runs",
    "node_sampler=neighbor_sampler(": "test_layers_on_a_sampled_mini_batch_snippet_runs",
    "KNeighborsRegressor": "tests/cli/test_fingerprint.py::test_the_readme_example_runs",
    "for_export()": "test_compile_and_export_snippet_runs",
}


def code_blocks(lang, text=README):
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def page(name):
    """The text of a page (``docs/NAME.md``, or ``README.md``)."""
    assert name in PAGES, f"{name} is gone: the tests that read it must follow its text"
    return PAGES[name]


def python_block(marker):
    """The one python block, on any page, that contains ``marker``."""
    found = [(name, block) for name, text in PAGES.items()
             for block in code_blocks("python", text) if marker in block]
    assert len(found) == 1, f"{marker!r} is in {len(found)} python blocks: {[n for n, _ in found]}"
    return found[0][1]


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
    # the default: an ensemble of two models, each a run of its own, and the
    # fingerprint kernel member (regression on SMILES)
    assert re.search(r"^test rmse of the ensemble of 2 and a fingerprint kernel member of "
                     r"weight \d\.\d\d: \d+\.\d{4} \(each member at its best "
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
    snippet = python_block("read_edge_list(")
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
    """The backend example: auto picks dense for two all-pairs molecules, and
    the layer runs on it."""
    snippet = python_block("estimate(")
    result = subprocess.run([sys.executable, "-c", snippet], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["dense", "torch.Size([50,", "64])"]


def test_benchmark_table_is_the_scripts_output_format():
    """The benchmark table has the columns bench_attention.py --markdown-from
    prints, and every target the text reports is in it."""
    text = page("docs/attention-backends.md")
    header = ("| case | method | backend | fwd ms | fwd+bwd ms | peak MB | speed-up fwd+bwd "
              "| memory vs peer |")
    assert header in text
    for case in ("molecules/bonds", "large/edge-features", "large/no-edge-features",
                 "tokens/full", "tokens/causal", "long/window", "long/window+strided-heads"):
        assert f"| {case} | graphformer |" in text


def test_training_speed_tables_are_the_scripts_output_format():
    """The training-speed tables are what bench_training.py --markdown-from
    prints: the same header lines, and every `graphformer train` row paired
    with chemprop's runs and their ratios."""
    from tests.helpers import load_script

    text = page("docs/training-speed.md")

    bench = load_script("bench_training")
    results = {"machine": "m", "datasets": ["esol"],
               "steps": [{"dataset": "esol", "model": "GIN", "train_mol_s": 2.0,
                          "eval_mol_s": 4.0}],
               "cli": [{"command": "graphformer train", "dataset": "esol", "repeat": 0,
                        "seconds": 30.0, "metric": "rmse", "test_at_best": 0.8}],
               "chemprop": [{"dataset": "esol", "repeat": 0, "seconds": 50.0, "epochs": 50}]}
    table = bench.markdown(results).splitlines()
    for header in (table[2], table[-3]):
        assert header in text
    for command in ("graphformer train", "graphformer train --dataset freesolv",
                    "graphformer train --dataset lipophilicity"):
        row = next(line for line in text.splitlines() if line.startswith(f"| `{command}` |"))
        assert re.search(r"; \*\*\d\.\d\d×\*\* \|", row), row   # the pairs' median


def run_snippet(marker):
    """Run the python block (of any page) that contains ``marker``; its stdout."""
    snippet = python_block(marker)
    result = subprocess.run([sys.executable, "-c", snippet], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_typed_edges_snippet_runs():
    """The typed-edge example: a shared EdgeSet with edge types gives
    what per-edge features give."""
    assert run_snippet("EdgeSet(") == "torch.Size([9, 16]) True"


def test_sequence_snippet_runs():
    """The decoder example: positions per sequence, causal
    self-attention and bipartite cross-attention."""
    assert run_snippet("TransformerDecoderLayer(") == "torch.Size([5, 64]) torch.Size([5, 64])"


def test_rasp_snippet_runs():
    """The RASP example: the compiled model reverses, at the predicted size."""
    assert run_snippet("rasp.compile(").startswith("[[3, 2, 1], [2, 1, 3, 3]] CompiledProgram(layers=2, "
                                            "heads=[1, 1]")


class _Parsed(Exception):
    """Raised in place of running a script once its arguments parsed."""


def page_commands(text):
    """Every `graphformer ...`, `torchrun ... -m graphformer ...` and `python
    scripts/NAME.py ...` line of a page's code blocks (continuations joined,
    `# comments` and `[optional]` brackets dropped)."""
    commands = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line.strip())
            line = re.sub(r"\[(--[^\]]+)\]", r"\1", line)
            if re.match(r"graphformer\s|torchrun\s|python scripts/", line + " "):
                commands.append(line)
    return commands


def test_the_pages_commands_are_found():
    """The extraction finds the commands (and each page's count is its own
    test's)."""
    commands = [c for text in PAGES.values() for c in page_commands(text)]
    scripts = [c for c in commands if c.startswith("python scripts/")]
    assert len(commands) >= 35 and len(scripts) >= 15
    assert len(page_commands(README)) >= 8


@pytest.mark.parametrize("name", [n for n, text in PAGES.items() if page_commands(text)])
def test_every_command_parses(name, monkeypatch):
    """A page's commands name options that exist, with values of the right
    type: each is parsed by the parser of the CLI or script it calls
    (nothing is run; the scripts stop as soon as their arguments parse)."""
    import argparse
    import shlex

    from graphformer.cli.commands import build_parser
    from tests.helpers import load_script

    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        parse(self, args, namespace)
        raise _Parsed

    modules = {}                                            # each script imported once
    for command in page_commands(page(name)):
        words = shlex.split(command)
        try:
            if words[0] == "python":
                script = Path(words[1]).stem
                if script not in modules:
                    modules[script] = load_script(script)
                module = modules[script]
                with monkeypatch.context() as m:
                    m.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
                    with pytest.raises(_Parsed):
                        module.main(words[2:])
            else:
                args = words[words.index("graphformer") + 1:]
                build_parser().parse_args(args)
        except SystemExit as err:   # argparse's error: the command is wrong
            raise AssertionError(f"{name}: command does not parse: {command}") from err


@pytest.mark.parametrize("name", [n for n, text in PAGES.items() if "tests/" in text])
def test_every_test_a_page_names_exists(name):
    """The tests a page names (`tests/FILE.py::NAME`) exist, file and function."""
    named = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", page(name))
    for path, test in named:
        source = (ROOT / path).read_text()
        assert re.search(rf"^def {test}\(", source, re.M), f"{name}: {path}::{test} does not exist"


def test_every_guarantee_names_a_test_that_exists():
    """The "Errors and guarantees" table names real tests (file and function)."""
    section = page("docs/guarantees.md").split("Each guarantee and the test that checks it", 1)[1]
    named = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", section)
    assert len(named) >= 30
    for path, name in named:
        source = (ROOT / path).read_text()
        assert re.search(rf"^def {name}\(", source, re.M), f"{path}::{name} does not exist"


def test_layers_on_a_sampled_mini_batch_snippet_runs():
    """The mini-batch example: a RelationalAttention on a subgraph
    sampled by NodeLoader, its seed nodes' outputs."""
    out = run_snippet("node_sampler=neighbor_sampler(")
    assert out.startswith("torch.Size([64, 32]) [64, "), out


def test_every_python_block_of_every_page_is_run_by_a_test():
    """Each python block of the README and of docs/ holds the marker of the
    test that runs it (SNIPPETS): no snippet goes untested."""
    for name, text in PAGES.items():
        for block in code_blocks("python", text):
            assert any(marker in block for marker in SNIPPETS), (
                f"{name}: a python block no test runs (add it to SNIPPETS with its test):\n{block}")


def test_the_pages_repeating_readme_blocks_repeat_them_exactly():
    """docs/index.md repeats the README's two set-up commands and
    docs/layers.md its quick start, which the tests above run: word for word."""
    assert code_blocks("bash", page("docs/index.md"))[:2] == code_blocks("bash")[:2]
    assert code_blocks("python", page("docs/layers.md"))[0] == code_blocks("python")[0]


def test_the_fingerprint_example_is_the_one_its_test_runs():
    """The scikit-learn example of docs/screening.md is test_fingerprint.py's
    EXAMPLE, which tests/cli/test_fingerprint.py runs on real fingerprints."""
    source = (ROOT / "tests" / "cli" / "test_fingerprint.py").read_text()
    example = next(ast.literal_eval(node.value) for node in ast.parse(source).body
                   if isinstance(node, ast.Assign)
                   and any(getattr(t, "id", None) == "EXAMPLE" for t in node.targets))
    assert example in code_blocks("python", page("docs/screening.md"))


def test_the_readmes_links_lead_to_files_that_exist():
    """Every relative link of the README names a file of the repository (and,
    for a docs page with an #anchor, a heading of that page); links inside
    docs/ are checked by `mkdocs build --strict`, which CI runs."""
    links = re.findall(r"\]\(([^)\s]+)\)", README)
    relative = [link for link in links if not re.match(r"[a-z]+:", link)]
    assert len(relative) >= 15
    for link in relative:
        path, _, anchor = link.partition("#")
        assert (ROOT / path).is_file(), f"README links to {link}, which does not exist"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", (ROOT / path).read_text(), re.M)
            slugs = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-")
                     for h in headings}
            assert anchor in slugs, f"README links to {link}: no such heading"


def test_compile_and_export_snippet_runs():
    """The torch.compile / torch.export example: the step on a prepared
    batch compiles with fullgraph=True under dynamo's default settings (no
    capture_* setting), and the exported program equals eager mode on
    another batch. Run with the aot_eager backend and a one-block model
    (inductor on the default model takes a minute here); tests/nn/
    test_compile.py checks the default model."""
    block = python_block("for_export()")
    assert "fullgraph=True" in block and "capture_" not in block
    snippet = block.replace("dynamic=True,", 'dynamic=True, backend="aot_eager",').replace(
        "GraphTransformerConfig()", "GraphTransformerConfig(hidden=16, layers=1, heads=2)")
    assert snippet.count("aot_eager") == 1 and snippet.count("layers=1") == 1
    result = subprocess.run([sys.executable, "-c", snippet], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
