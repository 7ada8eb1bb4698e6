"""The code's structure as tests: the driver/worker boundary and no import cycles.

Imports are read from the source (``ast``), at every depth: a function-level import is
still a dependency. The driver reaches worker code only by name, and only as a stage
target (``Stage``/``PoolSpec``) or a model's ``factory`` (``ModelSpec``), so every such
name is declared where the runner can see it."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "workers")
WORKER_NAME = re.compile(r"^workers(\.\w+)+(:\w+)?$")
# Where the driver may name worker code: (call, positional index, keyword).
DECLARATIONS = {"Stage": (1, "target"), "PoolSpec": (1, "target"), "ModelSpec": (None, "factory")}


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


def test_the_checker_sees_a_cycle_through_a_package_init(tmp_path, monkeypatch):
    """A package __init__ that imports its submodule, which imports the package (the
    shape ``pipeline.qc`` had), is a cycle: package __init__s are not exempt."""
    pkg = tmp_path / "pipeline" / "qc"
    pkg.mkdir(parents=True)
    (tmp_path / "pipeline" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from pipeline.qc.meters import M\nLIMIT = 1\n")
    (pkg / "meters.py").write_text("from pipeline.qc import LIMIT\nM = LIMIT\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert _graph()["pipeline.qc.meters"] == {"pipeline.qc"}
    with pytest.raises(AssertionError, match="pipeline.qc.meters"):
        test_there_are_no_import_cycles()


def _base_name(node: ast.expr) -> str:
    return node.id if isinstance(node, ast.Name) else getattr(node, "attr", "")


def _declared_names(tree: ast.AST) -> set[int]:
    """ids of the string constants that are a declaration's target or factory: an
    argument of ``Stage(...)``/``PoolSpec(...)``/``ModelSpec(...)``, or the ``target``
    default of a ``Stage`` subclass (``class DecodeStage(Stage): target: str = ...``)."""
    ok: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(
            _base_name(b).endswith(("Stage", "PoolSpec")) for b in node.bases
        ):
            for item in node.body:
                names = [item.target] if isinstance(item, ast.AnnAssign) else []
                names += item.targets if isinstance(item, ast.Assign) else []
                value = getattr(item, "value", None)
                if any(getattr(n, "id", "") == "target" for n in names):
                    ok.add(id(value))
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        if name not in DECLARATIONS:
            continue
        index, keyword = DECLARATIONS[name]
        args = [node.args[index]] if index is not None and len(node.args) > index else []
        args += [k.value for k in node.keywords if k.arg == keyword]
        ok |= {id(a) for a in args if isinstance(a, ast.Constant)}
    return ok


def test_the_driver_names_worker_code_only_as_stage_targets():
    bad = []
    for name, path in _modules().items():
        if name.split(".")[0] != "pipeline":
            continue
        tree = ast.parse(path.read_text())
        declared = _declared_names(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and WORKER_NAME.match(node.value)
                and id(node) not in declared
            ):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value}")
    assert not bad, bad


def test_package_inits_hold_only_docstrings():
    """A package __init__ that imports its submodules ties them together (the cycle of
    ``pipeline.qc`` and its meters); only ``pipeline``'s public API may."""
    bad = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("__init__.py")):
            if path == ROOT / "pipeline" / "__init__.py":
                continue
            body = ast.parse(path.read_text()).body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                body = body[1:]
            if body:
                bad.append(str(path.relative_to(ROOT)))
    assert not bad, bad


def test_the_checker_sees_a_worker_named_outside_a_stage(tmp_path, monkeypatch):
    """Worker names passed to importlib are found; declared ones are not (nor a package
    __init__ that imports a submodule back)."""
    pkg = tmp_path / "pipeline"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('"""The package."""\n')
    (pkg / "ok.py").write_text(
        "from pipeline.runner.stage import PoolSpec, Stage\n"
        'A = Stage("a", "workers.foo:bar")\n'
        'B = PoolSpec("k", target="workers.foo:Pool")\n'
        'C = ModelSpec(name="m", factory="workers.foo:Model")\n'
        "class D(Stage):\n"
        '    target: str = "workers.foo:Actor"\n'
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    test_the_driver_names_worker_code_only_as_stage_targets()
    test_package_inits_hold_only_docstrings()
    (pkg / "bad.py").write_text(
        'import importlib\nX = "workers.foo:bar"\nimportlib.import_module(X.split(":")[0])\n'
        'class E:\n    target = "workers.foo:Other"\n'
    )
    with pytest.raises(AssertionError, match="workers.foo:bar") as found:
        test_the_driver_names_worker_code_only_as_stage_targets()
    assert "workers.foo:Other" in str(found.value)  # not a stage: no declaration
    assert "workers.foo:Actor" not in str(found.value)
    sub = pkg / "sub"
    sub.mkdir()
    (sub / "__init__.py").write_text('"""A package."""\nfrom pipeline.sub import a\n')
    (sub / "a.py").write_text("from pipeline.sub import b\n")
    (sub / "b.py").write_text("")
    with pytest.raises(AssertionError, match="sub"):
        test_package_inits_hold_only_docstrings()


def _folder(module: str) -> str:
    """The room a module stands in: its sub-package of ``pipeline`` (``pipeline.video``),
    or the module itself at the top (``pipeline.api``, ``workers.region``)."""
    parts = module.split(".")
    if parts[0] == "pipeline" and len(parts) > 2:
        return ".".join(parts[:2])
    return module


def _folder_cycles(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Pairs of folders each of which reaches the other through imports."""
    edges: dict[str, set[str]] = {}
    for module, deps in graph.items():
        for dep in deps:
            a, b = _folder(module), _folder(dep)
            if a != b:
                edges.setdefault(a, set()).add(b)

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in edges.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    return sorted((a, b) for a in edges for b in edges[a] if a in reach(b))


def test_folders_import_one_way():
    """The folders read as the flow: job -> video/image -> regions -> runner/store -> pure;
    no folder imports one that imports it back, however indirectly."""
    assert not _folder_cycles(_graph())


def test_the_checker_sees_folders_importing_each_other():
    graph = {
        "pipeline.job.launch": {"pipeline.video.graph"},
        "pipeline.video.graph": {"pipeline.regions.graph"},
        "pipeline.regions.graph": {"pipeline.job.plan"},
        "pipeline.job.plan": set(),
    }
    assert ("pipeline.regions", "pipeline.job") in _folder_cycles(graph)
    graph["pipeline.regions.graph"] = {"pipeline.pure.tiling"}
    assert not _folder_cycles(graph)
