"""Each service runs with only its own extra installed (``pip install loopwise[<service>]``).

The distributions an install of ``loopwise[<service>]`` brings are the base
dependencies and the service's extra with everything they require (read from
this environment's metadata). Every other distribution of the project's extras
counts as absent: its top-level modules are blocked on import.

- Dynamic: in a fresh interpreter with those modules blocked, import every
  module of the service's package (its app, and what its ``main()`` imports
  lazily) and every core module it reaches.
- Static: no import statement the service runs, function-level ones included
  (e.g. `loopwise.topics.ensure_topics` imports kafka-python when called),
  names a blocked module.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import re
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]["name"]
SERVICES = ("collector", "inference", "miner", "trainer")
# Imported by a meta_path finder that refuses the blocked top-level modules.
BLOCKER = """
import importlib, json, sys
blocked, modules = set(json.loads(sys.argv[1])), json.loads(sys.argv[2])
class Absent:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (not in this extra)", name=name)
        return None
sys.meta_path.insert(0, Absent)
for module in modules:
    importlib.import_module(module)
"""


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", Requirement(requirement).name).lower()


@cache
def _distribution_closure(requirements: frozenset[str]) -> frozenset[str]:
    """Normalised names of the distributions ``requirements`` install, recursively
    (a requirement's own extras and markers evaluated for this interpreter)."""
    seen: set[str] = set()
    todo = [(r, "") for r in requirements]
    while todo:
        text, extra = todo.pop()
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({**default_environment(), "extra": extra}):
            continue
        name = _name(text)
        if name == PROJECT:  # the project's own extras (dev = loopwise[...]): their requirements
            todo += [(r, "") for extra_name in req.extras for r in _extra(extra_name)]
            continue
        for wanted in (req.extras or {""}):
            key = f"{name}[{wanted}]"
            if key in seen:
                continue
            seen.add(key)
            try:
                dist = md.distribution(name)
            except md.PackageNotFoundError:
                continue
            todo += [(r, wanted) for r in dist.requires or []]
    return frozenset(key.partition("[")[0] for key in seen)


def _extra(name: str) -> list[str]:
    return PYPROJECT["project"]["optional-dependencies"][name]


@cache
def _top_level_by_distribution() -> dict[str, frozenset[str]]:
    by_dist: dict[str, set[str]] = {}
    for module, dists in md.packages_distributions().items():
        for dist in dists:
            by_dist.setdefault(re.sub(r"[-_.]+", "-", dist).lower(), set()).add(module)
    return {dist: frozenset(modules) for dist, modules in by_dist.items()}


def _modules_of(distributions: frozenset[str]) -> set[str]:
    tops = _top_level_by_distribution()
    return {m for d in distributions for m in tops.get(d, ())}


def blocked_modules(service: str) -> set[str]:
    """Top-level modules that only distributions outside ``base + extra`` install."""
    everything = frozenset(r for extra in PYPROJECT["project"]["optional-dependencies"] for r in _extra(extra))
    own = frozenset(PYPROJECT["project"]["dependencies"] + _extra(service))
    own_modules = _modules_of(_distribution_closure(own)) | set(sys.stdlib_module_names)
    return _modules_of(_distribution_closure(everything)) - own_modules - {"loopwise"}


# -- the project's modules and where they live ------------------------------------------------
def _module_file(module: str) -> Path | None:
    """The source file of a ``loopwise`` module, from pyproject's package-dir."""
    dirs = PYPROJECT["tool"]["setuptools"]["package-dir"]
    parts = module.split(".")
    for cut in range(len(parts), 0, -1):
        package = ".".join(parts[:cut])
        if package in dirs:
            base = ROOT / dirs[package] / Path(*parts[cut:])
            for candidate in (base.with_suffix(".py"), base / "__init__.py"):
                if candidate.is_file():
                    return candidate
            return None
    return None


def _module_name(path: Path, package: str, package_dir: Path) -> str:
    rel = path.relative_to(package_dir).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join([package, *parts])


def _included(tree: ast.Module, used: set[str] | None) -> list[ast.AST]:
    """The parts of a module whose imports count: all of it (``used`` None), else its
    module-level code and the top-level functions and classes named in ``used``."""
    if used is None:
        return [tree]
    return [node for node in tree.body
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) or node.name in used]


def _imports(module: str, parts: list[ast.AST], is_package: bool) -> list[tuple[str, int]]:
    """(absolute module name, line) of every import statement in ``parts``."""
    here = module if is_package else module.rpartition(".")[0]
    found: list[tuple[str, int]] = []
    for node in (n for part in parts for n in ast.walk(part)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = here
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = (f"{base}.{node.module}" if node.module else base) if node.level else node.module or ""
            found.append((target, node.lineno))
            # `from package import module`: the submodule is imported too.
            found += [(f"{target}.{alias.name}", node.lineno) for alias in node.names]
    return found


def _names(parts: list[ast.AST]) -> set[str]:
    """Every name ``parts`` refer to (variables, attributes, imported names)."""
    names: set[str] = set()
    for node in (n for part in parts for n in ast.walk(part)):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.alias):
            names.add(node.asname or node.name.rpartition(".")[2])
    return names


def reached(service: str) -> tuple[list[str], list[tuple[str, str, int]]]:
    """The ``loopwise`` modules a service reaches and every third-party import they
    make on its behalf: (module, file, line).

    All of the service's own package counts. Of a core module it imports, the
    module-level code counts, and the functions and classes the counted code
    names (a lazy import inside `loopwise.topics.ensure_topics` counts for the
    services that call it, not for every service that reads a topic name).
    """
    package = f"loopwise.{service}"
    package_dir = ROOT / PYPROJECT["tool"]["setuptools"]["package-dir"][package]
    own = [_module_name(p, package, package_dir) for p in sorted(package_dir.rglob("*.py"))]
    used: set[str] = set()
    while True:
        seen: dict[str, Path] = {}
        third_party: list[tuple[str, str, int]] = []
        names: set[str] = set()
        todo = list(own)
        while todo:
            module = todo.pop()
            path = _module_file(module)
            if module in seen or path is None:
                continue
            seen[module] = path
            parts = _included(ast.parse(path.read_text(), str(path)), None if module in own else used)
            names |= _names(parts)
            for name, line in _imports(module, parts, path.name == "__init__.py"):
                if name.partition(".")[0] == "loopwise":
                    todo.append(name)
                elif name and name.partition(".")[0] != "__future__":
                    third_party.append((name, str(path.relative_to(ROOT)), line))
        if names <= used:
            return sorted(seen), third_party
        used |= names


@pytest.mark.parametrize("service", SERVICES)
def test_the_service_imports_with_only_its_extra(service):
    blocked = blocked_modules(service)
    modules = [m for m in reached(service)[0] if not m.endswith(".__main__")]  # that one runs main()
    run = subprocess.run([sys.executable, "-c", BLOCKER, json.dumps(sorted(blocked)), json.dumps(modules)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, (f"loopwise[{service}] does not install what {service} imports:\n"
                                 f"{run.stderr[-3000:]}")


@pytest.mark.parametrize("service", SERVICES)
def test_no_import_statement_needs_another_extra(service):
    blocked = blocked_modules(service)
    _, third_party = reached(service)
    missing = sorted({f"{path}:{line}: import {name}" for name, path, line in third_party
                      if name.partition(".")[0] in blocked})
    assert not missing, f"not installed by loopwise[{service}]:\n" + "\n".join(missing)


def test_the_blocked_sets_are_the_other_extras():
    """A sanity check of the derivation on the packages the extras exist for."""
    assert {"torch", "faust", "onnxruntime"} <= blocked_modules("collector")
    assert "torch" not in blocked_modules("trainer") and "faust" in blocked_modules("trainer")
    assert "faust" not in blocked_modules("miner") and "onnxruntime" in blocked_modules("miner")
    assert "onnxruntime" not in blocked_modules("inference") and "torch" in blocked_modules("inference")
