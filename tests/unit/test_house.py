"""The house keeps its shape (docs/architecture.md): imports run one way, down the layers, with
no circle, and no module or function outgrows the limits. Each test walks the source with `ast`;
it fails on the first import, circle or size that breaks the rule, and names it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# from the bottom up; a module may import from its own layer and the ones below, never above
LAYERS = [
    ("tasks.core",),
    ("tasks.infra", "expectations", "simvllm"),
    ("tasks.annotators",),
    ("tasks.method",),
    ("tasks.stages",),
    ("tasks.tools",),
    ("flows",),
]
PACKAGES = ("tasks", "flows", "expectations", "simvllm")
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 450, 60


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            parts = f.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


MODULES = _modules()


def _layer(module: str) -> int | None:
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    return None


def _imports(module: str, f: Path) -> set[str]:
    """The project modules `module` imports, at the top or inside a function."""
    out = set()
    pkg = module if f.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(f.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for n in names:
            while n and n not in MODULES:
                n = n.rpartition(".")[0]
            if n and n != module:
                out.add(n)
    return out


GRAPH = {m: _imports(m, f) for m, f in MODULES.items()}


def test_the_layers_cover_every_module():
    assert [m for m in MODULES if _layer(m) is None and m not in PACKAGES] == []


def test_no_import_runs_back_up():
    up = [
        f"{m} (layer {_layer(m)}) imports {d} (layer {_layer(d)})"
        for m, deps in GRAPH.items()
        for d in deps
        if _layer(m) is not None and _layer(d) is not None and _layer(d) > _layer(m)
    ]
    assert up == []


def test_no_import_circle():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            # a package's __init__ importing its own submodules is not a circle of the house
            if len([c for c in comp if MODULES[c].name != "__init__.py"]) > 1:
                circles.append(sorted(comp))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert circles == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_sizes(module):
    f = MODULES[module]
    text = f.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{f.relative_to(ROOT)}: {len(text.splitlines())} lines"
    long = [
        f"{n.name}: {n.end_lineno - n.lineno + 1} lines"
        for n in ast.walk(ast.parse(text))
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == [], f"{f.relative_to(ROOT)}: functions over {MAX_FUNCTION_LINES} lines"


def test_the_walk_sees_a_planted_upward_import(tmp_path):
    """The check itself can fail: an infra module that imports a stage is caught."""
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from tasks.stages import sample\n")
    deps = _imports("tasks.infra.x", f)
    assert "tasks.stages.sample" in deps and _layer("tasks.stages.sample") > _layer("tasks.infra.x")
