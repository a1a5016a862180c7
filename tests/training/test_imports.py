"""The package's import graph, read with ``ast`` (imports inside functions count): no cycle, and the
library never imports the applications (``transformers_pard.apps``) except through the deprecated
aliases listed here."""

from __future__ import annotations

import ast
from pathlib import Path

import transformers_pard

ROOT = Path(transformers_pard.__file__).parent
PACKAGE = "transformers_pard"
APPS = f"{PACKAGE}.apps"
#: Library-side modules allowed to import the applications: the entry point and deprecated aliases.
APP_ALIASES = {
    f"{PACKAGE}.__main__",
    f"{PACKAGE}.cli",
    f"{PACKAGE}.benchmark",
    f"{PACKAGE}.embedded",
    f"{PACKAGE}.recipes",
    f"{PACKAGE}.recipes.distill",
    f"{PACKAGE}.recipes.prompts",
    f"{PACKAGE}.recipes.self_instruct",
    f"{PACKAGE}.recipes.smollm2",
    f"{PACKAGE}.training.cli",
}
#: Modules outside training/ and apps/recipes/ (other owners) whose cycles are known and left to them.
KNOWN_CYCLE_MODULES: set[str] = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in ROOT.rglob("*.py")}


def imported_modules(name: str, path: Path) -> set[str]:
    """The package modules ``name`` imports anywhere in its file (a ``from X import y`` counts as X.y
    when that is a module, else X)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {module for module in found if module in MODULES and module != name}


GRAPH = {name: imported_modules(name, path) for name, path in MODULES.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_is_read():
    assert f"{PACKAGE}.training.trainers" in GRAPH[f"{PACKAGE}.training.run"]
    assert f"{PACKAGE}.training.losses" in GRAPH[f"{PACKAGE}.training.trainers"]
    assert f"{PACKAGE}.pard2" in GRAPH[f"{PACKAGE}.training.target_pass"]  # two dots: the library module
    assert f"{PACKAGE}.apps.train_cli" in GRAPH[f"{PACKAGE}.apps.recipes.smollm2"]  # three dots


def test_cycles_finds_strongly_connected_modules():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert sorted(cycles(graph)) == [["a", "b", "c"], ["e"]]


def test_no_import_cycle():
    found = [component for component in cycles(GRAPH) if not set(component) <= KNOWN_CYCLE_MODULES]
    assert found == [], f"import cycles (function-level imports included): {found}"


def test_training_and_recipes_import_nothing_at_function_level():
    """Ours import at the top of the module: no import hidden in a function."""
    for name, path in MODULES.items():
        if not name.startswith((f"{PACKAGE}.training", f"{PACKAGE}.apps.recipes", f"{PACKAGE}.apps.train_cli")):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner = [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]
                assert not inner, f"{name}.{node.name} imports inside the function (line {inner[0].lineno})"


def test_the_library_does_not_import_the_applications():
    offenders = {name: sorted(m for m in imports if m == APPS or m.startswith(APPS + "."))
                 for name, imports in GRAPH.items()
                 if not (name == APPS or name.startswith(APPS + ".")) and name not in APP_ALIASES}
    assert {name: apps for name, apps in offenders.items() if apps} == {}
