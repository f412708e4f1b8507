"""fedq's modules import one way (cli -> handle/pointer -> client -> transport -> wire): no
import circle among them, counting every import a module makes, in a function or under
TYPE_CHECKING too (a function-level import hides a circle; it does not break it)."""

from __future__ import annotations

import ast
from pathlib import Path

import fedq

PACKAGE = Path(fedq.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The fedq modules `path` imports, wherever in it the import statement stands."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            # `from . import wire` names a module; `from .client import Client` a name in one
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names)
    # `import fedq.x.y` imports fedq.x.y (and its packages, which import what they import)
    return {module for module in found if module in modules and module != name}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(path) for path in paths}
    return {_module_name(path): _imports(path, modules) for path in paths}


def _a_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of `graph` (its modules in order, the first repeated last), or None."""
    state: dict[str, str] = {}  # module -> "open" (on the path being walked) or "done"
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                return path[path.index(imported):] + [imported]
            if imported not in state:
                circle = visit(imported)
                if circle:
                    return circle
        path.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            circle = visit(module)
            if circle:
                return circle
    return None


def test_the_graph_sees_function_level_and_type_checking_imports():
    graph = import_graph()
    assert "fedq.launcher" in graph["fedq.handle"] and "fedq.client" in graph["fedq.handle"]  # module level
    assert "fedq.worker" in graph["fedq.cli"]  # inside a command's function
    assert "fedq.bench.suite" in graph["fedq.bench"]  # a package's __init__, relative
    assert _a_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _a_circle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_fedq_modules_import_one_way():
    circle = _a_circle(import_graph())
    assert circle is None, "an import circle among fedq's modules: " + " -> ".join(circle)


#: the house rule's order, top to bottom (the modules of one layer do not import each other)
LAYERS = [["fedq.cli"], ["fedq.handle"], ["fedq.pointer"], ["fedq.client"], ["fedq.peers"], ["fedq.refs", "fedq.transport"], ["fedq.codec"], ["fedq.messages"]]


def test_the_layers_point_down():
    """Nothing below imports what stands above it, or beside it, even through other modules."""
    graph = import_graph()
    for i, layer in enumerate(LAYERS):
        for module in layer:
            below = _reachable(graph, module)
            for upper in [m for upper_layer in LAYERS[:i + 1] for m in upper_layer if m != module]:
                assert upper not in below, f"{module} imports {upper} (directly or through others)"


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for imported in graph[todo.pop()]:
            if imported not in seen:
                seen.add(imported)
                todo.append(imported)
    return seen
