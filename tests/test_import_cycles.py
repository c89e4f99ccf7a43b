"""No import cycles among ``harness``, ``optimizers`` and ``tasks``.

The graph is read from the source with :mod:`ast`, not by importing it. An edge ``a -> b`` is
any ``import`` statement of ``a`` that names ``b`` (or a name defined in ``b``), at module level
*and* inside functions: an import moved into a function still ties the two modules together
(the function fails or imports half-initialised modules when the other side is mid-import), so a
deferred import is no way out of a cycle here. Importing ``p.q.r`` from outside ``p`` also
imports the packages ``p`` and ``p.q``, so those are edges too. Left out, on purpose:

* ``if TYPE_CHECKING:`` blocks (never run);
* the body of a package's module-level ``__getattr__`` (PEP 562): ``harness.run`` and
  ``harness.meta.meta_train`` are re-exports resolved on first attribute access, after every
  import has finished, so they cannot take part in an import-time cycle;
* ``importlib.import_module`` calls: the registry's loading of the built-in plugin packages and
  of user plugins is data, not a static edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("harness", "optimizers", "tasks")


def module_files(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of ``packages`` under ``root``."""
    found: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of ``tree`` except those the module docstring leaves out."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST, top_level: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for stmt in child.orelse:
                    visit_one(stmt, top_level)
                continue
            visit_one(child, top_level)

    def visit_one(child: ast.AST, top_level: bool) -> None:
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            found.append(child)
        elif (
            top_level
            and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            and child.name == "__getattr__"
        ):
            return
        else:
            nested = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            visit(child, top_level and not nested)

    visit(tree, True)
    return found


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """``{module: {imported module: line of the first such import}}`` within ``packages``."""
    files = module_files(root, packages)

    def resolve(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, dict[str, int]] = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        edges: dict[str, int] = {}
        for stmt in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(stmt, ast.Import):
                names = [alias.name for alias in stmt.names]
            else:
                base = stmt.module or ""
                if stmt.level:
                    parents = package.split(".")[: len(package.split(".")) - (stmt.level - 1)]
                    base = ".".join([*parents, *([stmt.module] if stmt.module else [])])
                names = [base, *(f"{base}.{alias.name}" for alias in stmt.names)]
            for name in names:
                if name.split(".")[0] not in packages:
                    continue
                target = resolve(name)
                if target is None:
                    continue
                parts = target.split(".")
                for depth in range(1, len(parts) + 1):  # importing p.q.r imports p and p.q
                    prefix = ".".join(parts[:depth])
                    inside = module == prefix or module.startswith(prefix + ".")
                    if prefix in files and not inside:
                        edges.setdefault(prefix, stmt.lineno)
        graph[module] = edges
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, {}):
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return cycles


def describe(graph: dict[str, dict[str, int]], cycle: list[str]) -> str:
    edges = [
        f"{a} -> {b} (line {line})"
        for a in cycle
        for b, line in sorted(graph[a].items())
        if b in cycle
    ]
    return "; ".join(edges)


def test_harness_optimizers_and_tasks_have_no_import_cycle():
    graph = import_graph(ROOT, PACKAGES)
    assert len(graph) > 50  # the walk found the packages
    cycles = find_cycles(graph)
    assert not cycles, "import cycles: " + " | ".join(describe(graph, c) for c in cycles)


def _tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.mark.parametrize(
    ("y_source", "cyclic"),
    [
        ("from pkg.x import A\n", True),  # module level
        ("def f():\n    from pkg import x\n    return x\n", True),  # deferred into a function
        ("from . import x\n", True),  # relative
        ("import pkg.sub.z\n", True),  # through the package pkg.sub, whose __init__ imports x
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.x import A\n", False),
        ("def __getattr__(name):\n    from pkg.x import A\n    return A\n", False),
        ("import os\n", False),
    ],
)
def test_the_cycle_finder_sees_each_kind_of_import(tmp_path, y_source, cyclic):
    _tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/x.py": "import pkg.y\nA = 1\n",
            "pkg/y.py": y_source,
            "pkg/sub/__init__.py": "from pkg.x import A\n",
            "pkg/sub/z.py": "",
        },
    )
    graph = import_graph(tmp_path, ("pkg",))
    found = find_cycles(graph)
    assert bool(found) == cyclic, found
    if cyclic:
        assert {"pkg.x", "pkg.y"} <= set(found[0])
