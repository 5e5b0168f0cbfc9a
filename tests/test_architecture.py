"""Import direction (DESIGN.md "Layout"): the faces sit on top, nothing imports them, and
the semwatch modules form no import cycle.

Read from the source's syntax tree, so a lazy import inside a function counts like one at
the top (it runs all the same); imports under ``if TYPE_CHECKING:`` do not (they never run).
Run as a script it prints the graph's findings: ``python tests/test_architecture.py``.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("semwatch", "trainer")
# The faces: command lines and the daemon, started by an entry point or systemd.
FACES = frozenset({"semwatch.cli", "semwatch.service_cli", "semwatch.daemon"})
# Who may import a face: the entry points (console script, `python -m semwatch`), and the
# faces' own command groups, which the CLI dispatches to.
ENTRY_POINTS = frozenset({"semwatch.__main__", "semwatch.cli", "semwatch.service_cli", "semwatch.style_cli"})


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" not in path.parts:
                modules[module_name(path)] = path
    return modules


def _type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    stack = [tree]
    while stack:
        node = stack.pop()
        if _type_checking_block(node):
            stack.extend(node.orelse)  # the else branch does run
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The known modules ``name`` imports (``from pkg import sub`` counts as importing sub)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*anchor, base] if base else anchor)
        found.add(base)
        found.update(f"{base}.{alias.name}" for alias in node.names)
    return {module for module in found if module in known and module != name}


def import_graph() -> dict[str, set[str]]:
    modules = source_modules()
    known = set(modules)
    return {name: imported_modules(name, path, known) for name, path in modules.items()}


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, face) for every import of a face by a module that is not an entry point."""
    return sorted(
        (importer, target)
        for importer, targets in graph.items()
        for target in targets
        if target in FACES and importer not in ENTRY_POINTS
    )


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_a_face_except_the_entry_points() -> None:
    assert upward_imports(import_graph()) == []


def test_app_imports_no_face() -> None:
    graph = import_graph()
    offending = {
        (name, target)
        for name, targets in graph.items()
        if name.startswith("semwatch.app")
        for target in targets
    }
    assert {pair for pair in offending if pair[1] in FACES} == set()


def test_no_import_cycle_among_the_modules() -> None:
    assert cycles(import_graph()) == []


def test_the_queue_is_the_small_protocols_its_callers_use() -> None:
    """Each caller codes against one part (the watcher: Intake, status: Fleet...); the SQL
    back-end is all of them, and no method is left outside a part."""
    from semwatch.queue import Claims, Fleet, Intake, JobQueue, SqlJobQueue, Status

    parts = (Intake, Claims, Status, Fleet)
    methods = [set(SqlJobQueue.__abstractmethods__)]  # empty: the back-end implements everything
    assert methods == [set()]
    names = [{name for name in vars(part) if not name.startswith("_")} for part in parts]
    assert sum(len(n) for n in names) == len(set().union(*names)), "a method in two parts"
    whole = {name for name in JobQueue.__abstractmethods__}
    assert whole == set().union(*names) | {"close"}
    assert all(issubclass(SqlJobQueue, part) for part in parts)


def test_the_check_sees_a_lazy_import_and_ignores_type_checking(tmp_path: Path) -> None:
    """The checker itself: a cycle through an import inside a function is found; one through
    ``if TYPE_CHECKING:`` is not (it never runs)."""
    (tmp_path / "a.py").write_text("def f():\n    from pkg import b\n")
    (tmp_path / "b.py").write_text("import pkg.a\n")
    (tmp_path / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\n")
    known = {"pkg.a", "pkg.b", "pkg.c"}
    graph = {name: imported_modules(name, tmp_path / f"{name[4:]}.py", known) for name in sorted(known)}
    assert graph == {"pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}, "pkg.c": set()}
    assert cycles(graph) == [["pkg.a", "pkg.b"]]


if __name__ == "__main__":
    graph = import_graph()
    print(f"{len(graph)} modules, {sum(len(t) for t in graph.values())} imports")
    for importer, face in upward_imports(graph):
        print(f"upward import: {importer} -> {face}")
    for component in cycles(graph):
        print("cycle: " + " <-> ".join(component))
    sys.exit(1 if upward_imports(graph) or cycles(graph) else 0)
