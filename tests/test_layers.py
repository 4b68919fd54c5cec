"""The package layers: each imports only those below it, and no module imports itself back in a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "her2score"
#: Lower number, lower layer. A module may import its own layer and those below.
LAYERS = {
    "errors": 0, "io": 0, "paths": 0, "progress": 0, "rules": 0, "optics": 0, "__init__": 0, "__main__": 9,
    "cluster": 0,
    "slide": 1, "stain": 2, "quantify": 3, "data": 4, "models": 5, "features": 5, "report": 5, "engine": 6,
    "export": 6, "serve": 8, "cli": 9,
}  # fmt: skip


def _imports(path: Path, top_level_only: bool = False) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("her2score"):
            out.append(node.module)
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("her2score")]
    return out


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def test_every_package_imports_only_its_layer_and_below() -> None:
    wrong = []
    for path in ROOT.rglob("*.py"):
        layer = path.relative_to(ROOT).parts[0].removesuffix(".py")
        assert layer in LAYERS, f"{layer} has no layer; add it to LAYERS"
        for target in _imports(path):
            parts = target.split(".")
            if len(parts) > 1 and LAYERS.get(parts[1], 0) > LAYERS[layer]:
                wrong.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not wrong, wrong


def test_no_import_cycle_at_module_level() -> None:
    graph: dict[str, set[str]] = {}
    modules = {_module(p): p for p in ROOT.rglob("*.py")}
    for name, path in modules.items():
        graph[name] = {t for t in _imports(path, top_level_only=True) if t in modules and t != name}
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*trail[trail.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, cycles
