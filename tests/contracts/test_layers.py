"""Imports flow one way, read from the code (``ast``, nothing imported).

Layers: the core (``shared/`` = ``loopwise``, the client and the generated
``loopwise.v1`` included) <- the tools (``shared/tools/`` = ``loopwise.tools``:
CLI, local stack, demo, datasets, simulators) and the services
(``services/<name>/`` = ``loopwise.<name>``). So:

- a service imports no other service and not the tools;
- the core imports neither the tools nor a service;
- every package folder under ``shared/`` and ``services/`` is listed in
  ``[tool.setuptools] packages`` (else an install silently lacks it).

Function-level and ``TYPE_CHECKING`` imports count like the others.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.contracts import tree

CORE, TOOLS = "core", "tools"


def layer(module: str) -> str | None:
    """``core``, ``tools``, ``service:<name>`` for a ``loopwise`` module, else None."""
    parts = module.split(".")
    if parts[0] != "loopwise":
        return None
    if len(parts) > 1 and parts[1] == "tools":
        return TOOLS
    if len(parts) > 1 and parts[1] in tree.SERVICES:
        return f"service:{parts[1]}"
    return CORE


def imports(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, module) for each import in ``source``, relative ones resolved
    against ``module``; ``from a import b`` yields ``a`` and ``a.b`` (b may be a
    module); ``importlib.import_module("x")`` with a literal name counts too."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found.append((node.lineno, target))
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names if alias.name != "*"]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value))
    return found


def _sources() -> list[tuple[Path, str, str]]:
    """(file, module, its layer) for every .py under the source roots."""
    out = []
    for top in tree.SOURCE_ROOTS:
        for path in sorted((tree.ROOT / top).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            package = tree.package_of(path.parent)
            module = package if path.stem == "__init__" else f"{package}.{path.stem}"
            out.append((path, module, layer(module) or CORE))
    return out


def _check(allowed: Callable[[str, str], bool]) -> None:
    """Fail listing every import from one layer into another that ``allowed`` refuses."""
    bad: dict[tuple[str, int], str] = {}
    for path, module, own in _sources():
        for line, target in imports(path.read_text(), module, path.stem == "__init__"):
            other = layer(target)
            if other is not None and not allowed(own, other):
                where = (str(path.relative_to(tree.ROOT)), line)
                bad[where] = max(bad.get(where, ""), f"({own}) imports {target} ({other})", key=len)
    assert not bad, "\n".join(f"{path}:{line} {what}" for (path, line), what in sorted(bad.items()))


def test_no_service_imports_another_service() -> None:
    _check(lambda own, other: not (own.startswith("service:") and other.startswith("service:") and own != other))


def test_no_service_imports_the_tools() -> None:
    _check(lambda own, other: not (own.startswith("service:") and other == TOOLS))


def test_the_core_imports_neither_tools_nor_services() -> None:
    _check(lambda own, other: own != CORE or other == CORE)


def test_every_package_folder_is_listed_in_pyproject() -> None:
    listed = set(tree.PACKAGES)
    on_disk = {tree.package_of(folder): folder for folder in tree.package_folders()}
    assert sorted(set(on_disk) - listed) == [], "add these to [tool.setuptools] packages in pyproject.toml"
    assert sorted(p for p in listed if not (tree.folder_of(p) / "__init__.py").is_file()) == []


@pytest.mark.parametrize(("source", "module", "expected"), [
    ("import loopwise.tools.cli", "loopwise.features", ["loopwise.tools.cli"]),
    ("from loopwise import tools", "loopwise.features", ["loopwise", "loopwise.tools"]),
    ("def f():\n    from ..inference import models", "loopwise.miner.app",
     ["loopwise.inference", "loopwise.inference.models"]),
    ("from . import chain", "loopwise.miner.reformulation.rules",
     ["loopwise.miner.reformulation", "loopwise.miner.reformulation.chain"]),
    ("importlib.import_module('loopwise.trainer.app')", "loopwise.tools.stack", ["loopwise.trainer.app"]),
])
def test_the_import_reader_sees_every_form(source: str, module: str, expected: list[str]) -> None:
    assert [name for _, name in imports(source, module)] == expected
