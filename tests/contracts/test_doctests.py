"""Every example in a docstring of the ``loopwise`` package runs, found, not listed.

The modules are those of the packages in ``[tool.setuptools] packages`` (the
core, the tools and every service: the dev install has every extra), minus the
generated ``loopwise.v1`` and the ``__main__`` entry points (importing one runs
its service). Importing any other module has no side effects. An example that
needs a running stack carries ``# doctest: +SKIP``.
"""

from __future__ import annotations

import doctest
import importlib
import io

import pytest

from tests.contracts import tree

WITH_EXAMPLES = sorted(name for name, path in tree.modules().items()
                       if not name.startswith("loopwise.v1") and path.stem != "__main__"
                       and ">>>" in path.read_text())


def test_discovery_finds_the_examples() -> None:
    assert {"loopwise.hashing", "loopwise.miner.debias", "loopwise.trainer.evaluation"} <= set(WITH_EXAMPLES)


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    found = [t for t in doctest.DocTestFinder().find(module) if t.examples]
    assert found, f"{name} has '>>>' outside any docstring doctest can find"
    report = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in found:
        runner.run(test, out=report.write)
    assert runner.failures == 0, report.getvalue()
