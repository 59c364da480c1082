"""The architecture, enforced: imports go only downward through the layers of docs/architecture (DESIGN.md),
never in a circle, never into a package's own `__init__`, and plugins use only the public namespace.

Every import between the project's files counts: module-level, function-level (lazy) and `TYPE_CHECKING` ones.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("multimae_cli", "multimae_plugins")
# Layers, bottom up: a module may import its own layer or any layer below it.
LAYERS = {
    "multimae_cli._version": 0, "multimae_cli.errors": 0, "multimae_cli.config": 0, "multimae_cli.io": 0,
    "multimae_cli.metrics": 0,
    "multimae_cli.model": 1,
    "multimae_cli.plugin": 2,
    "multimae_cli.data": 3, "multimae_cli.formats": 3,
    "multimae_cli.train": 4,
    "multimae_cli.infer": 5, "multimae_cli.testing": 5,
    "multimae_cli.cli": 6, "multimae_cli.__main__": 6,
    "multimae_cli": 7,  # the public namespace re-exports from every layer below the applications
}
MAX_FLOORS = 9
ENTRY = {"multimae_cli.__main__", "multimae_cli.cli"}


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports. `from pkg import a, b` imports `pkg.a` and `pkg.b` when they are
    modules, else `pkg` itself."""

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(resolve(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                found.update(resolve(f"{base}.{alias.name}") for alias in node.names)
        edges[name] = {target for target in found if target and target != name}
    return edges


def layer(name: str) -> int:
    while name not in LAYERS:
        name = name.rpartition(".")[0]
    return LAYERS[name]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while (w := stack.pop()) != v:
                group.append(w)
            groups.append([v, *group])

    for v in edges:
        if v not in index:
            visit(v)
    return [sorted(group) for group in groups if len(group) > 1]


def floors(edges: dict[str, set[str]]) -> tuple[int, list[str]]:
    """The longest chain of imports (no cycles: checked apart), and the chain."""
    chain: dict[str, list[str]] = {}

    def longest(v: str) -> list[str]:
        if v not in chain:
            chain[v] = [v, *max((longest(w) for w in edges[v]), key=len, default=[])]
        return chain[v]

    top = max((longest(v) for v in edges), key=len)
    return len(top), top


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return imports(modules())


def test_no_import_cycles(graph):
    assert cycles(graph) == []


def test_no_module_imports_its_own_package_init(graph):
    mods = modules()
    offenders = [f"{name} -> {target}" for name, targets in graph.items() for target in targets
                 if mods[target].name == "__init__.py" and name.startswith(target + ".")]
    assert offenders == []


def test_imports_go_only_downward(graph):
    upward = [f"{name} (layer {layer(name)}) -> {target} (layer {layer(target)})"
              for name, targets in graph.items() if name.startswith("multimae_cli")
              for target in targets if layer(target) > layer(name)]
    assert upward == []


def test_core_never_imports_builtin_plugins(graph):
    assert [f"{n} -> {t}" for n, ts in graph.items() if n.startswith("multimae_cli")
            for t in ts if t.startswith("multimae_plugins")] == []


def test_at_most_nine_floors(graph):
    """Counted below the two entry modules, which sit on top of everything by purpose: `__main__` and the `cli`
    app that imports every command (with them: two floors more)."""
    below = {name: targets - ENTRY for name, targets in graph.items() if name not in ENTRY}
    count, chain = floors(below)
    assert count <= MAX_FLOORS, " -> ".join(chain)
    assert floors(graph)[0] <= MAX_FLOORS + len(ENTRY)


def test_the_figures_are_measured_not_assumed():
    """The checks above can fail: a planted circle and a planted upward import are caught."""
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c"]]
    assert floors({"a": {"b"}, "b": {"c"}, "c": set()}) == (3, ["a", "b", "c"])
    assert layer("multimae_cli.model.heads") < layer("multimae_cli.plugin.factory") < layer("multimae_cli.cli.info")


def plugin_imports(path: Path) -> set[str]:
    """Every `multimae_cli...` module a file imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("multimae_cli"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("multimae_cli"):
            found.add(node.module)
    return found


@pytest.mark.parametrize("folder", ["multimae_plugins", "examples/multimae-plugin-thermal/multimae_thermal",
                                    "examples/multimae-plugin-csvlog/multimae_csvlog"])
def test_plugins_import_only_the_public_namespace(folder):
    """The built-ins and the example plugin use `multimae_cli` alone: the documented contract is the whole one."""
    files = sorted((ROOT / folder).rglob("*.py"))
    assert files
    outside = {f"{path.relative_to(ROOT)}: {module}" for path in files for module in plugin_imports(path)
               if module != "multimae_cli"}
    assert outside == set()


def test_plugin_tests_use_the_namespace_and_the_kit():
    files = sorted((ROOT / "examples").rglob("test_*.py"))
    assert files
    outside = {f"{path.relative_to(ROOT)}: {module}" for path in files for module in plugin_imports(path)
               if module not in ("multimae_cli", "multimae_cli.testing")}
    assert outside == set()


def test_public_namespace_is_whole_and_light():
    """Every exported name resolves, and importing the namespace (what plugin discovery does) loads no torch."""
    import subprocess
    import sys

    code = ("import sys, multimae_cli; assert 'torch' not in sys.modules, 'torch imported'; "
            "[getattr(multimae_cli, name) for name in multimae_cli.__all__]; print(len(multimae_cli.__all__))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) >= 50


def test_application_functions_fit_a_screen():
    """Loops and commands read top to bottom: no function in train/, infer/ or cli/ over about 80 lines
    (nested helpers count with their function)."""
    long = []
    for folder in ("train", "infer", "cli"):
        for path in sorted((ROOT / "multimae_cli" / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno + 1 > 90:
                    long.append(f"{path.relative_to(ROOT)}: {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert long == []
