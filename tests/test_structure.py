"""The package's structure: no import cycle inside vlm_cli, function-level imports included.

A cycle (``a`` imports ``b``, which imports ``a``, perhaps inside a function) means two modules
share one job; one module should own it and the other import it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def import_graph() -> dict[str, set[str]]:
    """Module -> the vlm_cli modules it imports anywhere in its body (``vlm_cli.commands`` and
    ``vlm_cli.recipes`` live in the repository's commands/ and recipes/)."""
    files = {}
    for top, package in (("vlm_cli", "vlm_cli"), ("commands", "vlm_cli.commands")):
        for path in (ROOT / top).rglob("*.py"):
            parts = path.relative_to(ROOT / top).with_suffix("").parts
            name = ".".join((package, *parts))
            files[name.removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for target in targets:
                # the deepest module of the package named by the import
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle found by depth-first search (each reported once, rotated to start
    at its smallest module)."""
    cycles, seen = set(), set()

    def visit(node: str, stack: list[str]) -> None:
        if node in stack:
            cycle = stack[stack.index(node):]
            i = cycle.index(min(cycle))
            cycles.add(tuple(cycle[i:] + cycle[:i]))
            return
        if node in seen:
            return
        seen.add(node)
        for nxt in sorted(graph[node]):
            visit(nxt, stack + [node])

    for node in sorted(graph):
        visit(node, [])
    return [list(c) for c in sorted(cycles)]


def test_cycle_finder_finds_a_function_level_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_inside_vlm_cli():
    graph = import_graph()
    assert "vlm_cli.model.families.vlm_run" in graph["vlm_cli.merge"]  # imported inside a function
    cycles = find_cycles(graph)
    assert not cycles, "\n".join(" -> ".join(c + c[:1]) for c in cycles)
