"""The package graph only points down (docs/architecture.md, "Layers").

Every ``import`` in every module counts, including the ones inside functions:
a lazy import is still an arrow, it only moves the failure to run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Each package and the packages of this repository it may import.
ALLOWED: dict[str, set[str]] = {
    "schemas": set(),
    "heatmap": {"schemas"},
    "ingest_gateway": {"heatmap", "schemas"},
    "stream_workers": {"heatmap", "schemas"},
    "query_api": {"heatmap", "schemas"},
    "heatmap_devtools": {"heatmap", "schemas"},
    "heatmap_cli": {
        "heatmap",
        "heatmap_devtools",
        "ingest_gateway",
        "query_api",
        "schemas",
        "stream_workers",
    },
}
OURS = set(ALLOWED) | {"tests", "bench"}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & OURS


def arrows() -> dict[str, dict[str, set[str]]]:
    """package -> imported package -> the modules that import it."""
    graph: dict[str, dict[str, set[str]]] = {}
    for package in ALLOWED:
        for path in sorted((ROOT / package).rglob("*.py")):
            for target in imported_packages(path) - {package}:
                rel = path.relative_to(ROOT).as_posix()
                graph.setdefault(package, {}).setdefault(target, set()).add(rel)
    return graph


def test_every_top_level_package_is_placed() -> None:
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert packages - {"tests", "bench"} == set(ALLOWED), (
        "a new top-level package needs its place in ALLOWED and in docs/architecture.md"
    )


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_down(package: str) -> None:
    wrong = {
        target: sorted(modules)
        for target, modules in arrows().get(package, {}).items()
        if target not in ALLOWED[package]
    }
    assert not wrong, f"{package} must not import {wrong}"


def test_no_cycles_between_packages() -> None:
    graph = {p: set(targets) for p, targets in arrows().items()}
    seen: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, f"cycle: {' -> '.join((*path, node))}"
        if node in seen:
            return
        for target in graph.get(node, set()):
            visit(target, (*path, node))
        seen.add(node)

    for package in graph:
        visit(package, ())


def test_the_checker_sees_a_lazy_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "def f():\n    from query_api.app import QueryService\n    import heatmap.x\n"
    )
    assert imported_packages(module) == {"query_api", "heatmap"}
