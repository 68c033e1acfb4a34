"""The package's shape: imports run one way down the pipeline, no cycles, no module too large."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "transferkit"
# Lowest first. A module may import from its own layer or any layer below, never above.
LAYERS = [
    {"_env", "errors", "progress", "atomic"},
    {"data"},
    {"modeling"},
    {"settings"},
    {"runs"},
    {"training"},
    {"analysis"},
    {"deploy"},
    {"api", "serve", "run_logging", "__init__"},
    {"cli", "__main__"},
]
MAX_LINES, MAX_API_LINES = 500, 300


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"
        found[name] = path
    return found


def _imports(name: str, path: Path) -> set[str]:
    """transferkit modules that `name` imports, at module level or inside functions."""
    is_package = path.name == "__init__.py"
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                module = ".".join(["transferkit", *base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            targets.add(module)
            targets.update(f"{module}.{a.name}" for a in node.names)
    modules = _modules()
    resolved = set()
    for target in targets:
        if not target.startswith("transferkit"):
            continue
        inner = target.removeprefix("transferkit").lstrip(".")
        while inner and inner not in modules:
            inner = inner.rpartition(".")[0]
        if inner and inner != name:
            resolved.add(inner)
    return resolved


def _layer(name: str) -> int:
    top = name.split(".")[0]
    return next(i for i, layer in enumerate(LAYERS) if top in layer)


def test_every_module_has_a_layer():
    for name in _modules():
        assert _layer(name) is not None, name


@pytest.mark.parametrize("name", sorted(_modules()))
def test_imports_only_go_down(name):
    path = _modules()[name]
    upward = [t for t in _imports(name, path) if _layer(t) > _layer(name)]
    assert not upward, f"{name} (layer {_layer(name)}) imports from higher layers: {upward}"


def test_no_import_cycles():
    modules = _modules()
    graph = {m: {t for t in _imports(m, p) if not m.startswith(t + ".")} for m, p in modules.items()}
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])


def test_no_module_is_too_large():
    sizes = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    assert sizes["api"] <= MAX_API_LINES, sizes["api"]
    large = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not large, large
