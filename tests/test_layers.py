"""kormed's modules sit on floors, written down once in `LAYERS`: a module imports only from its own floor or the
floors below (at module top or inside a function alike), and nothing imports in a circle. The engine modules
import at the top, and each imports on its own in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import kormed

PACKAGE = Path(kormed.__file__).parent

# The floors, lowest first: (name, module prefixes). A prefix names a module or a package with everything in it;
# the longest matching prefix places a module ("kormed" itself is the package module only).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundation", ("kormed", "kormed.errors", "kormed.stop_reason", "kormed.io", "kormed.precision",
                    "kormed.quantization", "kormed.weights", "kormed.records", "kormed.config", "kormed.flags",
                    "kormed.loss", "kormed.embeddings", "kormed.sample_data", "kormed.run_files", "kormed.markdown",
                    "kormed.pipeline.registry")),
    ("models and data", ("kormed.models", "kormed.data")),
    ("corpus and tokenizer", ("kormed.prepare", "kormed.tokenizer")),
    ("evaluation", ("kormed.eval",)),
    ("training options", ("kormed.train", "kormed.train.config", "kormed.train.sft_config",
                          "kormed.train.stop_conditions")),
    ("training engine", ("kormed.train.engine",)),
    ("recipes", ("kormed.train.cpt", "kormed.train.sft", "kormed.train.loop")),
    ("run directory", ("kormed.pipeline.results", "kormed.pipeline.rundir")),
    ("export", ("kormed.export",)),
    ("commands", ("kormed.pipeline", "kormed.chat", "kormed.bench", "kormed.env_cli")),
    ("command line", ("kormed.cli",)),
)
# (importer, imported) -> why an import may point up. Empty: every import points down or sideways.
ALLOWED_UP: dict[tuple[str, str], str] = {}
ENGINE_MODULES = tuple(f"kormed.train.engine.{m}" for m in (
    "processes", "checkpoints", "stopping", "callbacks", "model_setup", "trainer", "outputs")) + ("kormed.loss",)


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
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


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    paths = {module_name(p, root): p for p in root.rglob("*.py")}
    known = set(paths)
    return {name: kormed_imports(path, known) - {name} for name, path in paths.items()}


def floor_of(module: str, layers: tuple[tuple[str, tuple[str, ...]], ...] = LAYERS) -> int | None:
    """The index of the module's floor in `layers` (longest matching prefix), or None when none names it."""
    best: tuple[int, int] | None = None  # (prefix length, floor)
    for floor, (_, prefixes) in enumerate(layers):
        for prefix in prefixes:
            matches = module == prefix or (prefix != "kormed" and module.startswith(prefix + "."))
            if matches and (best is None or len(prefix) > best[0]):
                best = (len(prefix), floor)
    return None if best is None else best[1]


def upward_imports(graph: dict[str, set[str]], layers=LAYERS, allowed=ALLOWED_UP) -> list[str]:
    """Every import from a floor to a higher one, as 'importer (floor) -> imported (floor)'."""
    names = [name for name, _ in layers]
    up = []
    for importer, imported in sorted((a, b) for a, targets in graph.items() for b in targets):
        low, high = floor_of(importer, layers), floor_of(imported, layers)
        if low is not None and high is not None and high > low and (importer, imported) not in allowed:
            up.append(f"{importer} ({names[low]}) -> {imported} ({names[high]})")
    return up


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
    # the check itself: a function-level import is an edge, a circle through it is found, and an import from a
    # lower floor to a higher one is reported
    pkg = tmp_path / "kormed"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("", encoding="utf-8")
    (pkg / "a.py").write_text("from kormed.b import f\n", encoding="utf-8")
    (pkg / "b.py").write_text("def f():\n    from kormed import a\n    return a\n", encoding="utf-8")
    graph = import_graph(pkg)
    assert graph == {"kormed": set(), "kormed.a": {"kormed.b"}, "kormed.b": {"kormed.a"}}
    assert cycle_through(graph, "kormed.a") == ["kormed.a", "kormed.b", "kormed.a"]
    layers = (("low", ("kormed.b",)), ("high", ("kormed.a",)))
    assert upward_imports(graph, layers, {}) == ["kormed.b (low) -> kormed.a (high)"]
    assert upward_imports(graph, layers, {("kormed.b", "kormed.a"): "a reason"}) == []


def test_every_module_has_a_floor():
    # a new module (or package) is placed on a floor when it is added, not passed over by the check
    assert sorted(m for m in import_graph() if floor_of(m) is None) == []


def test_no_import_points_up():
    assert upward_imports(import_graph()) == []


def test_no_import_circle():
    graph = import_graph()
    assert set(ENGINE_MODULES) <= set(graph)
    assert not graph["kormed.train.engine"]  # the engine package re-exports nothing
    circles = {m: c for m in sorted(graph) if (c := cycle_through(graph, m))}
    assert not circles, circles


def test_a_model_card_needs_neither_the_report_nor_tensorboard():
    script = ("import sys, kormed.export.model_card, kormed.export.command\n"
              "print(sorted(m for m in sys.modules if m.startswith(('tensorboard', 'kormed.pipeline.report'))))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_engine_modules_import_at_the_top():
    for name in ENGINE_MODULES:
        tree = ast.parse((PACKAGE.parent / f"{name.replace('.', '/')}.py").read_text(encoding="utf-8"))
        nested = [
            (fn.name, node.lineno)
            for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
            for node in ast.walk(fn) if isinstance(node, ast.Import | ast.ImportFrom)
        ]
        if name == "kormed.loss":  # liger-kernel is optional (CUDA only): imported where it is used
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
