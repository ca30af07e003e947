"""services/*/Dockerfile: multi-stage, non-root, each installing only its own
service's extra; the trainer on a CUDA base with a CPU variant."""

from __future__ import annotations

import re

import pytest

from tests.contracts.tree import ROOT, SERVICES

ENTRYPOINT = re.compile(r'^ENTRYPOINT \["python", "-m", "loopwise\.(\w+)"\]$', re.M)


def dockerfile(service: str) -> str:
    return (ROOT / "services" / service / "Dockerfile").read_text()


@pytest.mark.parametrize("service", SERVICES)
def test_image_is_multi_stage_non_root_and_installs_its_extra_only(service: str) -> None:
    text = dockerfile(service)
    stages = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(stages) >= 2, f"{service}: one stage builds, another runs"
    assert re.search(r"^FROM \S+ AS build$", text, re.M)
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1].isdigit() and int(users[-1]) >= 10000, f"{service}: runs as a numeric non-root uid"
    extras = re.findall(r"'\.\[([\w,]+)\]'", text)
    assert extras == [service], f"{service} installs {extras}"
    assert ENTRYPOINT.search(text).group(1) == service
    if service != "trainer":
        assert "torch" not in text.lower(), f"{service}: serving images carry no torch"
        assert "python:3.11-slim" in stages[-1]


def test_trainer_has_a_cuda_base_and_a_cpu_variant() -> None:
    text = dockerfile("trainer")
    assert re.search(r"^ARG VARIANT=cuda$", text, re.M)
    assert re.search(r"^ARG CUDA_BASE=nvidia/cuda:\S+$", text, re.M)
    assert re.search(r"^FROM \$\{CUDA_BASE\} AS runtime-cuda$", text, re.M)
    assert re.search(r"^FROM \$\{CPU_BASE\} AS runtime-cpu$", text, re.M)
    assert re.search(r"^FROM runtime-\$\{VARIANT\}$", text, re.M)
    assert "whl/cpu" in text and "whl/$TORCH_CUDA" in text
