"""Topic names, in one place. Each can be overridden with LOOPWISE_TOPIC_<NAME>."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

DEFAULTS = {
    "events": "loopwise.events.v1",
    "impressions": "loopwise.impressions.v1",
    "examples": "loopwise.examples.v1",
    "preferences": "loopwise.preferences.v1",
    "errors": "loopwise.errors.v1",
    "rewrites": "loopwise.rewrites.v1",
    "models": "loopwise.models.v1",
    "deadletter": "loopwise.deadletter.v1",
}


@dataclass(frozen=True)
class Topics:
    events: str = DEFAULTS["events"]
    impressions: str = DEFAULTS["impressions"]
    examples: str = DEFAULTS["examples"]
    preferences: str = DEFAULTS["preferences"]
    errors: str = DEFAULTS["errors"]
    rewrites: str = DEFAULTS["rewrites"]
    models: str = DEFAULTS["models"]
    deadletter: str = DEFAULTS["deadletter"]

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Topics:
        env = os.environ if env is None else env
        return cls(**{f.name: env.get(f"LOOPWISE_TOPIC_{f.name.upper()}", DEFAULTS[f.name]) for f in fields(cls)})

    @classmethod
    def with_prefix(cls, prefix: str) -> Topics:
        """Fresh names (tests): ``prefix + default`` for every topic."""
        return cls(**{name: prefix + default for name, default in DEFAULTS.items()})

    def env(self) -> dict[str, str]:
        return {f"LOOPWISE_TOPIC_{f.name.upper()}": getattr(self, f.name) for f in fields(self)}

    def all(self) -> list[str]:
        return [getattr(self, f.name) for f in fields(self)]
