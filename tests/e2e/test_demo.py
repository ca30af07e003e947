"""`loopwise demo` end to end: MovieLens-100K from the recbole wheel through a fresh stack."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_and_stops_its_stack(tmp_path):
    run = subprocess.run([sys.executable, "-m", "loopwise.tools.cli", "--root", str(tmp_path), "demo",
                          "--requests", "200", "--assistant-rounds", "1", "--assistant-users", "300"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ok: ranked, impressions logged, feedback collected and attributed" in run.stdout
    assert "200 from this run" in run.stdout
    assert "round 1:" in run.stdout and "online AUC" in run.stdout
    assert (tmp_path / "demo.png").exists()
    assert not (tmp_path / "stack.json").exists()
