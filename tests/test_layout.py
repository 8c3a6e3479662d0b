"""The tree keeps its design: one import namespace, every package packaged, imports only run downward."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"graph": "guardgraph.graph", "nodes": "guardgraph.nodes", "policies": "guardgraph.policies"}


def modules() -> dict[str, Path]:
    """Every module of the three folders, by its name in the guardgraph namespace."""
    found: dict[str, Path] = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            found[name] = path
    return found


def imports_of(path: Path) -> set[str]:
    """The modules ``path`` imports (absolute names), at any depth of the file."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_every_package_is_packaged_under_the_namespace() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"] == {package: folder for folder, package in FOLDERS.items()}
    on_disk = {name for name, path in modules().items() if path.name == "__init__.py"}
    assert set(setuptools["packages"]) == on_disk


@pytest.mark.parametrize("name", sorted(modules()))
def test_imports_use_the_namespace_and_run_downward(name: str) -> None:
    imported = imports_of(modules()[name])
    assert not {i for i in imported if i.split(".")[0] in FOLDERS}, "import through guardgraph.*, not the folders"
    if name.startswith(("guardgraph.nodes", "guardgraph.policies")):
        assert not {i for i in imported if i.startswith("guardgraph.graph")}, "nodes/ and policies/ never import graph/"
    if name.startswith("guardgraph.policies"):
        assert not {i for i in imported if i.startswith("guardgraph.nodes")}, "policies/ is the ground floor"
    if not name.startswith("guardgraph.nodes.training"):
        assert not {i for i in imported if i.startswith("guardgraph.nodes.training")}, "training is never run-time"


@pytest.mark.parametrize("document", ["README.md", "DEVELOPERS.md"])
def test_every_module_is_listed_with_a_line(document: str) -> None:
    text = (ROOT / document).read_text(encoding="utf-8")
    for path in modules().values():
        if path.name != "__init__.py":
            assert f" {path.name} " in text or f" {path.name}\n" in text, f"{document} does not list {path}"
