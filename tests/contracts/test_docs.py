"""The documentation points at files inside the repository, and they exist.

Read: every Markdown file of the repository, and the docstrings and comments
of every Python file (git-ignored folders and the generated ``shared/v1`` left
out). A reference is

- a span in backticks or a Markdown link target that reads as a path (no
  spaces, placeholders or URLs; it has a folder or a source/doc extension);
- in a fenced code block, a word that reads as a path with a folder;
- any word naming a Markdown file (``*.md``);
- any path that climbs out with ``..``.

It must resolve, from the repository root or from the citing file's own folder,
to an existing file or folder inside the repository; a bare file name
(``metrics.py``) must name a file somewhere in it. A path whose first folder
is neither in the repository nor beside the citing file (``.loopwise/logs/``,
``obp/dataset/...`` inside a wheel) is not a reference to the repository and is
left alone, unless it names a Markdown file.
"""

from __future__ import annotations

import ast
import fnmatch
import io
import os
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.contracts.tree import ROOT

SOURCE_SUFFIXES = (".md", ".py", ".pyi", ".proto", ".toml", ".cfg", ".ini", ".txt", ".yml", ".yaml", ".sh")
GENERATED = ("shared/v1",)
NOT_A_PATH = re.compile(r"[\s<>{}*?…|$=,()\[\]'\"@;!#%^&+\\]|://|^[~/\-]|^\.+$|^\.\w+$")
BACKTICKS = re.compile(r"(`+)([^`]+?)\1")
LINK = re.compile(r"\]\(([^)\s]+)\)")
MARKDOWN_NAME = re.compile(r"(?<![\w/.~-])([\w./~-]*[\w-]\.md)\b")
CLIMBING = re.compile(r"(?<![\w.])((?:\.\./)+[\w.-][\w./-]*)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def _ignore_patterns() -> list[str]:
    lines = (ROOT / ".gitignore").read_text().splitlines() if (ROOT / ".gitignore").is_file() else []
    return [line.strip().strip("/") for line in lines if line.strip() and not line.startswith("#")] + [".git"]


IGNORED = _ignore_patterns()


def ignored(rel: str) -> bool:
    """True for a repository-relative path that .gitignore (or .git) covers."""
    parts = rel.split("/")
    for pattern in IGNORED:
        if "/" in pattern:
            if rel == pattern or rel.startswith(pattern + "/"):
                return True
        elif any(fnmatch.fnmatch(part, pattern) for part in parts):
            return True
    return False


def repo_files(suffix: str = "") -> list[Path]:
    """The repository's files ending with ``suffix``, ignored folders not entered."""
    found = []
    for folder, dirs, files in os.walk(ROOT):
        base = Path(folder).relative_to(ROOT).as_posix()

        def rel(name: str, base: str = base) -> str:
            return name if base == "." else f"{base}/{name}"

        dirs[:] = [d for d in dirs if not ignored(rel(d))]
        found += [Path(folder) / name for name in files if name.endswith(suffix) and not ignored(rel(name))]
    return sorted(found)


NAMES = {p.name for p in repo_files()}


@dataclass(frozen=True)
class Ref:
    text: str
    kind: str  # "span", "fenced", "markdown", "climbing"


def prose_of_python(source: str) -> str:
    """The docstrings and comments of a Python file, one after another."""
    parts = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                parts.append(doc)
    parts += [tok.string for tok in tokenize.generate_tokens(io.StringIO(source).readline)
              if tok.type == tokenize.COMMENT]
    return "\n\n".join(parts)


def references(text: str, markdown: bool) -> list[Ref]:
    fenced = FENCE.findall(text) if markdown else []
    prose = FENCE.sub("", text) if markdown else text
    refs = [Ref(m.group(2).strip(), "span") for m in BACKTICKS.finditer(prose)]
    refs += [Ref(m.group(1), "span") for m in LINK.finditer(prose)]
    refs += [Ref(word, "fenced") for block in fenced for word in block.split()]
    refs += [Ref(m.group(1), "markdown") for m in MARKDOWN_NAME.finditer(text)]
    refs += [Ref(m.group(1), "climbing") for m in CLIMBING.finditer(text)]
    return refs


def _clean(path: str) -> str:
    path = path.split("#", 1)[0].split("::", 1)[0]
    return re.sub(r":\d+(-\d+)?$", "", path).rstrip(".,:;")


def problem(ref: Ref, citing: Path) -> str | None:
    """Why ``ref`` (found in ``citing``) is a broken reference, or None."""
    path = _clean(ref.text)
    here = citing.parent
    if ref.kind in ("span", "fenced") and (not path or path.startswith(("http:", "https:", "mailto:"))
                                          or NOT_A_PATH.search(path.replace("../", ""))):
        return None
    if ref.kind == "markdown" and path.startswith(("/", "~")):
        return "an absolute path"
    bases = [ROOT, here] if ref.kind != "markdown" or "/" in path else [ROOT, here, ROOT / "docs"]
    targets = [(base / path).resolve() for base in bases]
    if ref.kind == "climbing" or path.startswith("../"):
        target = (here / path).resolve()
        if not target.is_relative_to(ROOT):
            return "outside the repository"
        return None if target.exists() else "does not exist"
    if ref.kind in ("span", "fenced"):
        first = path.split("/", 1)[0]
        has_folder = "/" in path.rstrip("/")
        if ref.kind == "fenced" and not has_folder:
            return None
        if not has_folder:
            return None if not path.endswith(SOURCE_SUFFIXES) or path in NAMES else "names no file of the repository"
        anchored = [base for base in (ROOT, here) if (base / first).exists() and not ignored(
            (base / first).resolve().relative_to(ROOT).as_posix() if (base / first).resolve().is_relative_to(ROOT)
            else ".git")]
        if has_folder and not anchored:
            return None  # a path outside the repository's tree (a wheel's, the local stack's)
    return None if any(t.is_relative_to(ROOT) and t.exists() for t in targets) else "does not exist"


def _broken(files: list[Path], markdown: bool) -> list[str]:
    bad = set()
    for path in files:
        text = path.read_text()
        for ref in references(text if markdown else prose_of_python(text), markdown):
            why = problem(ref, path)
            if why:
                bad.add(f"{path.relative_to(ROOT)}: {ref.text!r} {why}")
    return sorted(bad)


def test_markdown_references_resolve_inside_the_repo() -> None:
    bad = _broken(repo_files(".md"), markdown=True)
    assert not bad, "\n".join(bad)


def test_docstring_and_comment_references_resolve_inside_the_repo() -> None:
    sources = [p for p in repo_files(".py") if not p.relative_to(ROOT).as_posix().startswith(GENERATED)]
    bad = _broken(sources, markdown=False)
    assert not bad, "\n".join(bad)


def test_the_docs_the_code_cites_are_in_the_repo() -> None:
    assert (ROOT / "docs" / "architecture.md").is_file() and (ROOT / "docs" / "methods.md").is_file()


@pytest.mark.parametrize(("text", "citing", "broken"), [
    ("Design: `../shared/design/ARCHITECTURE.md`.", "README.md", True),
    ("see TOOLBOX.md", "services/trainer/model.py", True),
    ("see docs/methods.md §2", "services/miner/propensity.py", False),
    ("[README](services/collector/README.md)", "README.md", False),
    ("`agents/attribution.py`", "services/miner/README.md", False),
    ("`agents/missing.py`", "services/miner/README.md", True),
    ("`shared/nowhere.py`", "README.md", True),
    ("```\nshared/   the core\nservices/gone/  x\n```", "README.md", True),
    ("`.loopwise/stack.json`, `obp/dataset/obd/random/all/all.csv`, `loopwise.<thing>.v1`", "README.md", False),
])
def test_the_reader_sees_broken_references(text: str, citing: str, broken: bool) -> None:
    found = [problem(ref, ROOT / citing) for ref in references(text, markdown=citing.endswith(".md"))]
    assert any(found) == broken, found
