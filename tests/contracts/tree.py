"""The source tree as pyproject.toml declares it: the packages installed, their
folders and their modules (read from the files, nothing imported)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE_ROOTS = ("shared", "services")
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
PACKAGE_DIR: dict[str, str] = SETUPTOOLS["package-dir"]
PACKAGES: list[str] = SETUPTOOLS["packages"]
# One package per service folder: ``loopwise.<name>`` lives in ``services/<name>``.
SERVICES = sorted(name.split(".")[1] for name, folder in PACKAGE_DIR.items() if folder.startswith("services/"))


def folder_of(package: str) -> Path:
    """The folder a package is installed from (the longest ``package-dir`` prefix)."""
    parts = package.split(".")
    for cut in range(len(parts), 0, -1):
        base = PACKAGE_DIR.get(".".join(parts[:cut]))
        if base is not None:
            return ROOT / base / Path(*parts[cut:])
    raise KeyError(f"{package}: no package-dir entry covers it")


def package_of(folder: Path) -> str:
    """The package name a folder is installed as (inverse of `folder_of`)."""
    rel = folder.resolve().relative_to(ROOT).as_posix()
    best = max((base for base in PACKAGE_DIR.values() if rel == base or rel.startswith(base + "/")),
               key=len, default=None)
    if best is None:
        raise KeyError(f"{rel}: outside every package-dir entry")
    name = next(n for n, base in PACKAGE_DIR.items() if base == best)
    rest = rel[len(best):].strip("/")
    return ".".join([name, *rest.split("/")]) if rest else name


def package_folders() -> list[Path]:
    """Every folder with an ``__init__.py`` under the source roots."""
    return sorted(init.parent for top in SOURCE_ROOTS for init in (ROOT / top).rglob("__init__.py")
                  if "__pycache__" not in init.parts)


def modules() -> dict[str, Path]:
    """Module name -> file for every ``.py`` of every listed package."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted(folder_of(package).glob("*.py")):
            found[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return found
