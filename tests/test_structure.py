"""The code's structure as tests: the driver/worker boundary and no import cycles.

Imports are read from the source (``ast``), at every depth: a function-level import is
still a dependency."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "workers")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules ``name`` imports, anywhere in its source."""
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def test_the_driver_imports_no_worker_code():
    graph = _graph()
    bad = {
        m: sorted(d for d in deps if d.split(".")[0] == "workers")
        for m, deps in graph.items()
        if m.split(".")[0] == "pipeline"
    }
    assert not {m: d for m, d in bad.items() if d}


def test_there_are_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            # A package's own __init__ importing its submodules is not a cycle back.
            if node.startswith(dep + "."):
                continue
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert not cycles, cycles


def test_the_checker_sees_a_cycle_and_a_boundary_crossing(tmp_path, monkeypatch):
    """The walk above finds what it is meant to (a check that cannot fail is none)."""
    pkg = tmp_path / "pipeline"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from pipeline import b\n")
    (pkg / "b.py").write_text("from pipeline.a import f\nimport workers.x\n")
    wk = tmp_path / "workers"
    wk.mkdir()
    (wk / "__init__.py").write_text("")
    (wk / "x.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    graph = _graph()
    assert graph["pipeline.a"] == {"pipeline.b"}
    assert graph["pipeline.b"] == {"pipeline.a", "workers.x"}
    with pytest.raises(AssertionError):
        test_there_are_no_import_cycles()
    with pytest.raises(AssertionError):
        test_the_driver_imports_no_worker_code()
