"""The ``loopwise`` CLI as the READMEs show it: every ``loopwise ...`` form in README.md and
the service READMEs parses (``--root`` before or after the subcommand), each subcommand's
``--help`` works, and the commands that are cheap run against an empty root."""

from __future__ import annotations

import itertools
import re
import shlex
from pathlib import Path

import pytest

from loopwise.tools import cli, stack

REPO = Path(__file__).resolve().parents[2]
READMES = [REPO / "README.md", *sorted((REPO / "services").glob("*/README.md"))]
INLINE = re.compile(r"`(?:\S*/)?(loopwise [^`]+)`")
PLACEHOLDER = re.compile(r"^[A-Z][A-Z_]*(\.\w+)?$|^\.\.\.$|^…$")  # T, N, FILE.jsonl, "..."


def readme_forms() -> list[tuple[str, str]]:
    """(README, command form): inline ``loopwise ...`` and code-block lines starting with it."""
    out = []
    for path in READMES:
        text = path.read_text()
        found = INLINE.findall(text)
        for block in re.findall(r"```(?:bash|sh|shell|console)?\n(.*?)```", text, re.S):
            found += [m.group(1) for m in re.finditer(r"^(?:\$ )?(?:\S*/)?(loopwise [^\n#]+)", block, re.M)]
        out += [(path.relative_to(REPO).as_posix(), form.strip()) for form in found]
    return out


def _argv(text: str) -> list[list[str]]:
    """Every ``a|b`` alternative of ``text``, placeholders given a value."""
    tokens = [t for t in shlex.split(text) if t != "|"]
    choices = [t.split("|") if "|" in t else [t] for t in tokens]
    return [["1" if PLACEHOLDER.match(t) else t for t in combo] for combo in itertools.product(*choices)]


def _parses(argv: list[str]) -> bool:
    try:
        cli.build_parser().parse_args(argv)
    except SystemExit:
        return False
    return True


FORMS = readme_forms()


def test_the_readmes_show_loopwise_commands():
    shown = {form.split()[1] for _, form in FORMS}
    assert {"up", "status", "down", "rules", "model"} <= shown


@pytest.mark.parametrize(("readme", "form"), FORMS, ids=[f"{r}:{f}" for r, f in FORMS])
def test_every_readme_form_parses(readme, form, capsys):
    """Each alternative parses, with some of the ``[optional]`` parts, and each optional part
    parses with at least one alternative; a bare command group (``loopwise model``) has --help."""
    parts = re.split(r"(\[[^\]]*\])", form[len("loopwise "):])
    required = " ".join(p for p in parts if not p.startswith("["))
    optional = [p[1:-1] for p in parts if p.startswith("[")]
    if len(shlex.split(required)) == 1 and not _parses(shlex.split(required)):
        with pytest.raises(SystemExit) as exit_:
            cli.main([*shlex.split(required), "--help"])
        assert exit_.value.code == 0, form
        return
    subsets = [[], *([o] for o in optional), optional]
    for argv in _argv(required):  # (``promote`` needs its ``[--version V]``)
        assert any(_parses(argv + more) for sub in subsets for more in _argv(" ".join(sub))), \
            f"{readme}: {form!r} as {argv}: {capsys.readouterr().err}"
    for extra in optional:
        tried = [argv + more for argv in _argv(required) for more in _argv(extra)]
        assert any(_parses(argv) for argv in tried), f"{readme}: {form!r}: [{extra}] is refused"


def test_root_goes_before_or_after_the_subcommand(tmp_path):
    p = cli.build_parser()
    assert p.parse_args(["up", "--root", str(tmp_path)]).root == tmp_path
    assert p.parse_args(["--root", str(tmp_path), "up"]).root == tmp_path
    assert p.parse_args(["model", "list", "--root", str(tmp_path)]).root == tmp_path
    assert p.parse_args(["simulate", "assistant", "--root", str(tmp_path)]).root == tmp_path
    assert p.parse_args(["status"]).root == cli.DEFAULT_ROOT


def test_only_starts_a_subset_and_refuses_unknown_services(capsys):
    p = cli.build_parser()
    assert p.parse_args(["up", "--only", "collector,inference,miner"]).only == ("collector", "inference", "miner")
    assert p.parse_args(["up"]).only == stack.SERVICES
    with pytest.raises(SystemExit):
        p.parse_args(["up", "--only", "collector,ranker"])
    assert "expected some of" in capsys.readouterr().err
    with pytest.raises(stack.StackError, match="unknown services"):
        stack.up(Path("/nonexistent"), only=("ranker",))


@pytest.mark.parametrize("argv", [[], ["up"], ["status"], ["down"], ["demo"], ["model", "list"], ["rules"],
                                  ["replay", "obd"], ["simulate", "assistant"]])
def test_help_of_every_subcommand(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([*argv, "--help"])
    assert exit_.value.code == 0
    assert "usage: loopwise" in capsys.readouterr().out


def test_the_cheap_readme_commands_run_against_an_empty_root(tmp_path, capsys):
    assert cli.main(["status", "--root", str(tmp_path)]) == 1  # no stack: says so
    assert "no stack" in capsys.readouterr().out
    assert cli.main(["down", "--root", str(tmp_path)]) == 0
    assert "nothing was running" in capsys.readouterr().out
