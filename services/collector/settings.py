"""Collector settings (LOOPWISE_* environment variables, see loopwise.settings)."""

from __future__ import annotations

from dataclasses import dataclass, field

from loopwise.settings import GrpcSettings


@dataclass(frozen=True)
class CollectorSettings(GrpcSettings):
    grpc_port: int = 50051
    metrics_port: int = 9101
    # Events per Report call (and per StreamReport message).
    max_batch_events: int = 1000
    # Seconds to wait for the broker's acks before answering UNAVAILABLE.
    ack_timeout_s: float = 15.0
    compression: str = "zstd"
    linger_ms: int = 2
    max_future_s: int = 300
    max_age_s: int = 30 * 24 * 3600
    # LOOPWISE_PSEUDONYMISE_KEY: when set, every event's user_id is replaced by its HMAC-SHA-256
    # under this secret (loopwise.auth.pseudonym) before it reaches Kafka.
    pseudonymise_key: str = field(default="", repr=False)
