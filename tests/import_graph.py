"""Import graphs of a package's source, read with `ast` (nothing is imported): what each module
imports, either anywhere in it (`imported_modules`) or when it is itself imported
(`module_level_imports`), and the cycles of such a graph (`find_cycles`)."""
from __future__ import annotations

import ast
from pathlib import Path


def imported_modules(path: Path, package: str) -> set[str]:
    """Absolute names of the modules `path` (in `package`) imports anywhere (function bodies
    included), relative imports resolved; `from m import x` gives both m and m.x."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def package_modules(root: Path) -> dict[str, Path]:
    """Dotted name -> file of every module under the package folder `root` (a package is named
    by its folder and stands for its __init__.py)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _executed_at_import(body: list[ast.stmt]):
    """The import statements that run when the module is imported: those at module level, in
    module-level if/else, try/except/else/finally, with, for and while blocks and class bodies;
    not those in functions, nor in the body of `if TYPE_CHECKING:` (its else branch does run)."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _executed_at_import(node.body)
            yield from _executed_at_import(node.orelse)
        elif isinstance(node, ast.Try) or type(node).__name__ == "TryStar":
            yield from _executed_at_import(node.body)
            for handler in node.handlers:
                yield from _executed_at_import(handler.body)
            yield from _executed_at_import(node.orelse)
            yield from _executed_at_import(node.finalbody)
        elif isinstance(node, (ast.With, ast.For, ast.While)):
            yield from _executed_at_import(node.body)
            yield from _executed_at_import(getattr(node, "orelse", []))
        elif isinstance(node, ast.ClassDef):
            yield from _executed_at_import(node.body)


def _known(name: str, modules: set[str]) -> str | None:
    """`name` or its longest prefix that is one of `modules` (None when outside them all)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def module_level_imports(path: Path, module: str, modules: set[str]) -> set[str]:
    """The modules among `modules` that `module` (source `path`) imports when it is imported.

    Relative imports are resolved; `import a.b` means a.b; `from pkg import name` means pkg.name
    when that is a module, else pkg (its __init__). A package's own parents, which Python imports
    first, are not counted: every module would otherwise "import" the package it belongs to."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in _executed_at_import(ast.parse(path.read_text(encoding="utf-8"), str(path)).body):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = parts[: len(parts) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                       for alias in node.names]
        found.update(t for name in targets if (t := _known(name, modules)) is not None)
    found.discard(module)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports at module level, for the package folder `root`."""
    modules = package_modules(root)
    return {name: module_level_imports(path, name, set(modules)) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle [a, b, ..., a] for each strongly connected component of `graph` that has one
    (Tarjan's algorithm, iterative); [] when the graph is acyclic."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    nodes = sorted(set(graph) | {t for targets in graph.values() for t in targets})
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph.get(node, ()):
                    components.append(sorted(component))
    return [_cycle_through(graph, set(c), c[0]) for c in components]


def _cycle_through(graph: dict[str, set[str]], component: set[str], start: str) -> list[str]:
    """A shortest path start -> ... -> start inside `component` (breadth first)."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph.get(node, ())):
                if child not in component:
                    continue
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"{start} is on no cycle of its component")
