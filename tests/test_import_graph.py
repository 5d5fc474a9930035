"""hastelm's module-level import graph (issue 14): no cycle, and only the command-line layers
(hastelm.server, hastelm.bench, hastelm.cli) import the server or the benchmarks. Read with `ast`
(tests/import_graph.py); imports inside functions and `if TYPE_CHECKING:` blocks do not count."""
from __future__ import annotations

from pathlib import Path

import pytest
from import_graph import find_cycles, import_graph, module_level_imports, package_modules

ROOT = Path(__file__).resolve().parent.parent
TOOL_LAYERS = ("hastelm.server", "hastelm.bench")       # what the library itself must not import
MAY_IMPORT_THEM = ("hastelm.server", "hastelm.bench", "hastelm.cli")


def _in(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    graph = import_graph(ROOT / "hastelm")
    assert {"hastelm", "hastelm.cli", "hastelm.formats.tokenizer", "hastelm.server.app"} <= set(graph)
    assert "hastelm.formats.chat_template" in graph["hastelm.formats.tokenizer"]   # the parsing works
    return graph


def test_no_import_cycle(graph: dict[str, set[str]]) -> None:
    cycles = find_cycles(graph)
    assert not cycles, "module-level import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_only_the_command_layers_import_the_server_or_the_bench(graph: dict[str, set[str]]) -> None:
    offenders = {m: sorted(t for t in targets if _in(t, TOOL_LAYERS))
                 for m, targets in graph.items() if not _in(m, MAY_IMPORT_THEM)}
    assert not {m: t for m, t in offenders.items() if t}, offenders


def test_the_library_does_not_reach_the_server_or_the_bench(graph: dict[str, set[str]]) -> None:
    """Transitively too: importing any library module loads neither the server nor the benchmarks."""
    for module in graph:
        if _in(module, MAY_IMPORT_THEM):
            continue
        seen, todo = set(), [module]
        while todo:
            for target in graph[todo.pop()] - seen:
                seen.add(target)
                todo.append(target)
        assert not [t for t in seen if _in(t, TOOL_LAYERS)], (module, sorted(t for t in seen if _in(t, TOOL_LAYERS)))


# ----------------------------------------------------------------------------- the checker itself

@pytest.mark.parametrize("graph, cycles", [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}, []),               # a diamond is no cycle
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, [["a", "b", "c", "a"]]),
    ({"a": {"a"}}, [["a", "a"]]),
    ({"x": {"a"}, "a": {"b"}, "b": {"a", "c"}, "c": {"d"}, "d": {"c"}}, [["a", "b", "a"], ["c", "d", "c"]]),
    ({"a": {"b"}, "b": {"c", "d"}, "c": {"a"}, "d": {"b"}}, [["a", "b", "c", "a"]]),   # one component
])
def test_find_cycles(graph: dict[str, set[str]], cycles: list[list[str]]) -> None:
    assert sorted(find_cycles(graph)) == cycles


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_module_level_imports_resolution(tmp_path: Path) -> None:
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "from .util import helper\n",
        "pkg/util.py": "import os\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/leaf.py": "",
        "pkg/sub/mod.py": (
            "from __future__ import annotations\n"
            "from typing import TYPE_CHECKING\n"
            "from .. import util\n"                 # a submodule: pkg.util
            "from .. import helper\n"               # not a module: pkg (its __init__)
            "from . import leaf\n"
            "import pkg.sub\n"
            "if TYPE_CHECKING:\n    from ..typing_only import T\nelse:\n    from ..runtime import R\n"
            "try:\n    from ..optional import O\nexcept ImportError:\n    pass\n"
            "def f():\n    from ..lazy import L\n"
            "class C:\n    from ..in_class import K\n"),
        **{f"pkg/{m}.py": "" for m in ("typing_only", "runtime", "optional", "lazy", "in_class")},
    })
    modules = package_modules(pkg)
    assert modules["pkg.sub"] == pkg / "sub" / "__init__.py"
    got = module_level_imports(modules["pkg.sub.mod"], "pkg.sub.mod", set(modules))
    assert got == {"pkg", "pkg.util", "pkg.sub", "pkg.sub.leaf", "pkg.runtime", "pkg.optional", "pkg.in_class"}
    assert module_level_imports(modules["pkg"], "pkg", set(modules)) == {"pkg.util"}   # relative to itself


def test_a_cycle_through_a_package_init_is_found(tmp_path: Path) -> None:
    pkg = _write(tmp_path, {"pkg/__init__.py": "from .a import x\n", "pkg/a.py": "from .b import y\nx = 1\n",
                            "pkg/b.py": "from pkg import a\ny = 2\n", "pkg/c.py": "from . import x\n"})
    graph = import_graph(pkg)
    assert graph["pkg.c"] == {"pkg"}
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.a"]]
    (pkg / "b.py").write_text("import pkg\n")      # b -> the package's __init__ -> a -> b
    assert find_cycles(import_graph(pkg)) == [["pkg", "pkg.a", "pkg.b", "pkg"]]
