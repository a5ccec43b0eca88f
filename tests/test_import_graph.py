"""The package's import graph: no cycle, and no import that goes up a floor.

The floors (DEVELOPERS.md, "Layout and floors"), lowest first:
``patterns`` / ``nn`` → ``data`` → ``datasets`` → ``models`` / ``rasp`` →
``train`` → ``cli``. A module imports only from its floor or the floors
below it. The shared modules below every floor (``_checks``, ``errors``,
``_files``, ``_settings``, ``_process``) import no floor. ``viz`` (pictures of molecules
and their attention, for ``graphformer explain``) sits beside ``models``.
``graphformer/__init__.py`` and ``__main__.py`` stand above every floor.

Every import counts for the floors, also one inside a function; for cycles,
the imports a module runs when it is imported (not those inside functions,
which run later: ``cli/__init__.py`` imports its commands lazily, to start
fast).
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import pytest

import graphformer

PACKAGE = Path(graphformer.__file__).resolve().parent
FLOORS = {"patterns": 0, "nn": 0, "data": 1, "datasets": 2, "models": 3, "rasp": 3,
          "viz": 3, "train": 4, "cli": 5}
SHARED = {"_checks", "errors", "_files", "_settings", "_process"}
ABOVE = {"__init__", "__main__"}

#: module name -> (file, whether it is a package's ``__init__``)
Modules = Dict[str, Tuple[Path, bool]]


def modules(root: Path = PACKAGE) -> Modules:
    found: Modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _runs_at_import(tree: ast.Module) -> List[ast.stmt]:
    """The import statements of a module outside function bodies."""
    found: List[ast.stmt] = []
    todo: List[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            todo.append(child)
    return found


def imports(name: str, mods: Modules, at_import_only: bool) -> Dict[str, int]:
    """The package's modules that ``name`` imports, each with a line that
    imports it. ``from pkg import x`` imports the module ``pkg.x`` when
    there is one, else ``pkg`` (its ``__init__``)."""
    path, is_package = mods[name]
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = _runs_at_import(tree) if at_import_only else \
        [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    package = name if is_package else name.rpartition(".")[0]
    found: Dict[str, int] = {}
    for node in nodes:
        targets: List[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                       for a in node.names]
        for target in targets:
            if target.split(".")[0] != "graphformer":
                continue
            while target not in mods:   # `import graphformer.x.y as z` names a module
                target = target.rpartition(".")[0]
            if target != name:
                found.setdefault(target, node.lineno)
    return found


def cycles(graph: Dict[str, Dict[str, int]]) -> List[List[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def floor(name: str) -> Optional[int]:
    """The module's floor; -1 for the shared modules, None above every floor."""
    part = name.split(".")[1] if "." in name else "__init__"
    if part in SHARED:
        return -1
    if part in ABOVE:
        return None
    if part not in FLOORS:
        raise AssertionError(f"graphformer.{part} is on no floor: add it to FLOORS, SHARED "
                             f"or ABOVE in {Path(__file__).name} (and to DEVELOPERS.md)")
    return FLOORS[part]


def floor_violations(mods: Modules, root: Path = PACKAGE) -> List[str]:
    """Every import of a module from a floor above its own, with its line."""
    wrong = []
    for name in sorted(mods):
        own = floor(name)
        if own is None:
            continue
        for target, line in sorted(imports(name, mods, at_import_only=False).items()):
            theirs = floor(target)
            if theirs is None or theirs > own:
                wrong.append(f"{mods[name][0].relative_to(root.parent).as_posix()}:{line}: {name} "
                             f"imports {target}, a floor above it")
    return wrong


def test_the_package_has_no_import_cycle():
    mods = modules()
    graph = {name: imports(name, mods, at_import_only=True) for name in mods}
    assert cycles(graph) == []


def test_no_module_imports_from_a_floor_above_it():
    assert floor_violations(modules()) == []


@pytest.mark.parametrize("at_import_only", [True, False])
def test_the_check_sees_a_cycle_and_an_import_up_a_floor(tmp_path, at_import_only):
    """The checks on a made-up package: ``train.a`` and ``train.b`` import
    each other (once inside a function), ``data.c`` imports ``train``."""
    root = tmp_path / "graphformer"
    for folder in ("train", "data"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "train" / "a.py").write_text("from .b import f\n")
    (root / "train" / "b.py").write_text("def f():\n    from . import a\n")
    (root / "data" / "c.py").write_text("from ..train.a import f\nfrom .. import errors\n")
    (root / "errors.py").write_text("")
    mods = modules(root)
    graph = {name: imports(name, mods, at_import_only) for name in mods}
    assert graph["graphformer.data.c"] == {"graphformer.train.a": 1, "graphformer.errors": 2}
    expected = [] if at_import_only else [["graphformer.train.a", "graphformer.train.b"]]
    assert cycles(graph) == expected
    assert [floor(n) for n in ("graphformer.errors", "graphformer.data.c",
                               "graphformer.train", "graphformer")] == [-1, 1, 4, None]
    assert floor_violations(mods, root) == [
        "graphformer/data/c.py:1: graphformer.data.c imports graphformer.train.a, a floor "
        "above it"]
