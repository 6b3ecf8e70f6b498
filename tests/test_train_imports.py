"""The training modules import each other in one direction: no import circle (at module top or inside a
function), every module imports on its own in a fresh interpreter, and the engine modules import at the top."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import kormed

PACKAGE = Path(kormed.__file__).parent
ENGINE_MODULES = tuple(f"kormed.train.engine.{m}" for m in (
    "processes", "checkpoints", "stopping", "callbacks", "model_setup", "trainer", "outputs")) + ("kormed.train.loss",)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def kormed_imports(path: Path, known: set[str]) -> set[str]:
    """The kormed modules `path` imports anywhere in its code (`from kormed.x import y` counts kormed.x.y when
    that is a module, else kormed.x)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module in known:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(paths)
    return {name: kormed_imports(path, known) - {name} for name, path in paths.items()}


def cycle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """One import path that leads from `start` back to it, or None."""
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def test_the_graph_sees_imports_inside_functions(tmp_path):
    # the check itself: a function-level import is an edge, and a circle through it is found
    pkg = tmp_path / "kormed"
    pkg.mkdir()
    (pkg / "a.py").write_text("from kormed.b import f\n", encoding="utf-8")
    (pkg / "b.py").write_text("def f():\n    from kormed import a\n    return a\n", encoding="utf-8")
    known = {"kormed", "kormed.a", "kormed.b"}
    graph = {"kormed.a": kormed_imports(pkg / "a.py", known), "kormed.b": kormed_imports(pkg / "b.py", known)}
    assert graph == {"kormed.a": {"kormed.b"}, "kormed.b": {"kormed.a"}}
    assert cycle_through(graph, "kormed.a") == ["kormed.a", "kormed.b", "kormed.a"]


def test_no_import_circle_through_a_training_module():
    graph = import_graph()
    train = sorted(m for m in graph if m.startswith("kormed.train."))
    assert set(ENGINE_MODULES) <= set(train)
    assert not graph["kormed.train.engine"]  # split by concern, no re-export shim
    circles = {m: c for m in train if (c := cycle_through(graph, m))}
    assert not circles, circles


def test_engine_modules_import_at_the_top():
    for name in ENGINE_MODULES:
        tree = ast.parse((PACKAGE.parent / f"{name.replace('.', '/')}.py").read_text(encoding="utf-8"))
        nested = [
            (fn.name, node.lineno)
            for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
            for node in ast.walk(fn) if isinstance(node, ast.Import | ast.ImportFrom)
        ]
        if name.endswith(".loss"):  # liger-kernel is optional (CUDA only): imported where it is used
            nested = [(fn, line) for fn, line in nested if fn != "liger_nll_sum"]
        assert not nested, f"{name}: imports inside functions {nested}"


def test_each_module_imports_first():
    # one interpreter; before each module every kormed module is forgotten, so each is imported first, as a
    # command that needs only it would (a circle shows up as an ImportError of a partly initialised module)
    script = (
        "import importlib, sys\n"
        f"for name in {list(ENGINE_MODULES)!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'kormed' or m.startswith('kormed.')]:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
