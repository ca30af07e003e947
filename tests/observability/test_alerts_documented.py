"""Every shipped alert rule is documented: the repository README's list of alerts names each
one, and the README of every service whose metrics an alert reads (``loopwise_<service>_…``
in its expression) names it too, so a new alert cannot be left out of either."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from observability import alerts

ROOT = Path(__file__).resolve().parents[2]
SERVICES = sorted(p.name for p in (ROOT / "services").iterdir() if (p / "README.md").is_file())


def named(alert: str, doc: Path) -> bool:
    return re.search(rf"\b{alert}\b", doc.read_text()) is not None


def services_read(alert: alerts.Alert) -> list[str]:
    """The services whose metrics the alert's expression reads."""
    return [s for s in SERVICES if f"loopwise_{s}_" in alerts.expression(alert)]


def test_the_walk_sees_the_alerts_and_their_services():
    assert len(alerts.ALERTS) >= 10 and {"collector", "inference", "miner", "trainer"} <= set(SERVICES)
    assert all(services_read(a) for a in alerts.ALERTS)  # every alert reads some service's metrics


def test_the_readme_lists_every_alert():
    missing = [a.name for a in alerts.ALERTS if not named(a.name, ROOT / "README.md")]
    assert not missing, f"alerts of observability/alerts.py missing from README.md: {missing}"


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_readme_lists_the_alerts_on_its_metrics(service: str):
    doc = ROOT / "services" / service / "README.md"
    missing = [a.name for a in alerts.ALERTS if service in services_read(a) and not named(a.name, doc)]
    assert not missing, f"alerts on loopwise_{service}_* missing from services/{service}/README.md: {missing}"
