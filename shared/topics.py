"""Topic names, in one place. Each can be overridden with LOOPWISE_TOPIC_<NAME>."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loopwise.settings import BaseSettings

log = logging.getLogger(__name__)

DEFAULTS = {
    "events": "loopwise.events.v1",
    "impressions": "loopwise.impressions.v1",
    "examples": "loopwise.examples.v1",
    "preferences": "loopwise.preferences.v1",
    "errors": "loopwise.errors.v1",
    "rewrites": "loopwise.rewrites.v1",
    "models": "loopwise.models.v1",
    "deadletter": "loopwise.deadletter.v1",
    "deltas": "loopwise.deltas.v1",
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
    deltas: str = DEFAULTS["deltas"]

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


def ensure_topics(bootstrap: str, topics: list[str], partitions: int = 4, timeout: float = 30.0,
                  settings: BaseSettings | None = None) -> None:
    """Create the topics that do not exist yet (idempotent).

    The admin client's TLS and SASL arguments come from ``settings`` (a service
    passes its own); tools and tests that give none read them from the environment.
    """
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    from loopwise.kafka_security import kafka_python_security

    deadline = time.monotonic() + timeout
    while True:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="loopwise-admin",
                                     request_timeout_ms=10_000,
                                     bootstrap_timeout_ms=int(max(timeout, 1.0) * 1000), **kafka_python_security(settings))
            break
        except KafkaError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    try:
        existing = set(admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if missing:
            try:
                admin.create_topics([NewTopic(t, partitions, 1) for t in missing])
            except TopicAlreadyExistsError:
                pass
            log.info("created topics", extra={"topics": missing, "partitions": partitions})
    finally:
        admin.close()
