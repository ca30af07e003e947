"""Every Redis key Loopwise uses, built here and nowhere else."""

from __future__ import annotations

PREFIX = "loopwise"


def rewrite_table(tenant: str) -> str:
    """Hash: normalised utterance -> JSON rule {rewrite, confidence, rule_id}."""
    return f"{PREFIX}:{tenant}:rewrites"


def model_pointer(tenant: str, model: str) -> str:
    """String: the version of (tenant, model) that serves."""
    return f"{PREFIX}:{tenant}:model:{model}:current"


def dedupe(scope: str, event_id: str) -> str:
    """String with TTL: an event id already processed by ``scope``."""
    return f"{PREFIX}:dedupe:{scope}:{event_id}"
