"""Import directions and I/O at the edges (docs/architecture.md, "Rules"):
config <- balancing, tls <- l7proxy."""

from __future__ import annotations

import ast
import pathlib
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("config", "balancing", "tls", "l7proxy")
ALLOWED: dict[str, set[str]] = {
    "config": set(),
    "balancing": {"config"},
    "tls": {"config"},
    "l7proxy": {"config", "balancing", "tls"},
}


def edge_modules() -> set[str]:
    """The modules allowed to do I/O with trio or raw sockets: the one list, kept in
    pyproject.toml as ruff's per-file exceptions to the banned-api rule (TID251)."""
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())
    ignores = settings["tool"]["ruff"]["lint"]["per-file-ignores"]
    return {name for name, rules in ignores.items() if "TID251" in rules and "*" not in name}


EDGE_MODULES = edge_modules()


def imported_roots(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def modules() -> list[pathlib.Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_one_way(path: pathlib.Path) -> None:
    package = path.relative_to(ROOT).parts[0]
    forbidden = (set(PACKAGES) - {package}) - ALLOWED[package]
    assert not imported_roots(path) & forbidden


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_only_edge_modules_do_io(path: pathlib.Path) -> None:
    relative = str(path.relative_to(ROOT))
    if relative in EDGE_MODULES:
        return
    assert not imported_roots(path) & {"trio", "socket"}, relative
