"""Settings from the environment (prefix ``LOOPWISE_``), one object per service.

`BaseSettings` holds what every process reads; `GrpcSettings` adds what the
gRPC services (collector, inference) read.

| variable | default | meaning |
|---|---|---|
| LOOPWISE_KAFKA_BOOTSTRAP | 127.0.0.1:9092 | Kafka bootstrap servers, comma separated |
| LOOPWISE_KAFKA_SECURITY_PROTOCOL | PLAINTEXT | PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (loopwise.kafka_security) |
| LOOPWISE_KAFKA_SASL_MECHANISM | PLAIN | PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 |
| LOOPWISE_KAFKA_SASL_USERNAME / LOOPWISE_KAFKA_SASL_PASSWORD | empty | SASL credentials |
| LOOPWISE_KAFKA_SSL_CAFILE | empty | CA bundle of the brokers (empty: the system's CAs) |
| LOOPWISE_REDIS_URL | redis://127.0.0.1:6379/0 | Redis URL |
| LOOPWISE_TENANTS | default | tenants this deployment serves, comma separated |
| LOOPWISE_MODEL_STORE | .loopwise/models | model store: a directory or an fsspec URL |
| LOOPWISE_METRICS_HOST | LOOPWISE_GRPC_HOST, else 0.0.0.0 | listen address of /metrics, /healthz, /readyz |
| LOOPWISE_METRICS_PORT | per service | their port (0 = any free port, -1 = off) |
| LOOPWISE_METRICS_TOKEN | empty | when set, ``/metrics`` wants ``Authorization: Bearer <token>`` (probes stay open) |
| LOOPWISE_TOPIC_<NAME> | loopwise.<name>.v1 | topic names (see loopwise.topics) |
| LOOPWISE_TOPIC_PARTITIONS | 4 | partitions for topics Loopwise creates |
| LOOPWISE_LOG_LEVEL | INFO | log level |

gRPC services only:

| variable | default | meaning |
|---|---|---|
| LOOPWISE_GRPC_HOST / LOOPWISE_GRPC_PORT | 0.0.0.0 / per service | gRPC listen address |
| LOOPWISE_DRAIN_S / LOOPWISE_GRACE_S | 1 / 10 | on SIGTERM: NOT_SERVING while answering, then time for in-flight calls |
| LOOPWISE_API_KEYS_FILE | empty | tenants' API key hashes (loopwise.auth); empty: no authentication |
| LOOPWISE_TLS_CERT_FILE / LOOPWISE_TLS_KEY_FILE | empty | the server's certificate chain and key (PEM): TLS only, no plaintext port |
| LOOPWISE_TLS_CLIENT_CA_FILE | empty | with TLS: clients must show a certificate signed by this CA (mutual TLS) |
| LOOPWISE_MAX_CONCURRENT_RPCS | 1000 | calls in progress at once; more are answered RESOURCE_EXHAUSTED |
| LOOPWISE_MAX_CONNECTIONS | 2000 | open client connections; more are refused |
| LOOPWISE_INFLIGHT_BYTES | 268435456 | request bytes held by calls in progress; a message past it is refused RESOURCE_EXHAUSTED unparsed |
| LOOPWISE_STREAM_DEADLINE_S | 300 | the server's deadline on a client stream (StreamReport) |
| LOOPWISE_HANDSHAKE_TIMEOUT_S | 10 | a connection that has not finished its (TLS and HTTP/2) handshake is closed |
| LOOPWISE_MAX_CONNECTION_IDLE_S / LOOPWISE_MAX_CONNECTION_AGE_S | 300 / 3600 | a connection without calls, or older, is closed (gracefully) |
| LOOPWISE_KEEPALIVE_S / LOOPWISE_KEEPALIVE_TIMEOUT_S | 60 / 20 | the server pings idle connections and closes those that do not answer |

Which service reads what. Names carry no service prefix except the trainer's
``LOOPWISE_TRAINER_*``. A name more than one service reads is either shared on
purpose (one value for the whole deployment) or the same kind of setting in
each process (each its own value); every name not listed here is read by one
service only (its README and settings module).

| shared on purpose | collector | inference | miner | trainer |
|---|---|---|---|---|
| LOOPWISE_KAFKA_BOOTSTRAP, LOOPWISE_KAFKA_SECURITY_PROTOCOL, LOOPWISE_KAFKA_SASL_*, LOOPWISE_KAFKA_SSL_CAFILE, LOOPWISE_TENANTS, LOOPWISE_TOPIC_*, LOOPWISE_TOPIC_PARTITIONS | x | x | x | x |
| LOOPWISE_REDIS_URL | | x | x | x |
| LOOPWISE_MODEL_STORE | | x | | x |
| LOOPWISE_DEFAULT_MODEL (the model of a request or record naming none) | | x | | x |
| LOOPWISE_ATTRIBUTION_WINDOW_MS (the miner's window; the trainer waits it out) | | | x | x |
| LOOPWISE_MAX_FUTURE_S, LOOPWISE_MAX_AGE_S (the miner re-checks events with the collector's limits) | x | | x | |

| per service | collector | inference | miner | trainer |
|---|---|---|---|---|
| LOOPWISE_METRICS_HOST, LOOPWISE_METRICS_PORT, LOOPWISE_METRICS_TOKEN, LOOPWISE_LOG_LEVEL | x | x | x | x |
| LOOPWISE_GRPC_HOST, LOOPWISE_GRPC_PORT, LOOPWISE_DRAIN_S, LOOPWISE_GRACE_S | x | x | | |
| LOOPWISE_API_KEYS_FILE, LOOPWISE_TLS_*, the connection and call limits above | x | x | | |
| LOOPWISE_COMPRESSION (the service's own producer) | x | x | | |
| LOOPWISE_DATA_DIR (the process's local disk: Faust's folder, the replay buffer) | | | x | x |
| LOOPWISE_KAFKA_SESSION_TIMEOUT_S (its consumer group; ``FALLBACK_ENV``: the old name) | | | x | x |

The collector reads neither Redis nor the model store, the miner not the
model store: their settings objects carry the values, unused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from loopwise.topics import Topics

T = TypeVar("T", bound="BaseSettings")

# Read when the variable itself is unset: the name it had before.
FALLBACK_ENV = {
    "LOOPWISE_METRICS_HOST": "LOOPWISE_GRPC_HOST",  # the metrics once listened on the gRPC host
    "LOOPWISE_KAFKA_SESSION_TIMEOUT_S": "LOOPWISE_SESSION_TIMEOUT_S",  # read like the miner's user sessions
}


def _convert(raw: str, default: Any) -> Any:
    if isinstance(default, bool):
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    if isinstance(default, tuple):
        return tuple(x.strip() for x in raw.split(",") if x.strip())
    return raw


@dataclass(frozen=True)
class BaseSettings:
    kafka_bootstrap: str = "127.0.0.1:9092"
    # TLS and SASL of every Kafka client (loopwise.kafka_security turns them into client arguments).
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = "PLAIN"
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = field(default="", repr=False)
    kafka_ssl_cafile: str = ""
    redis_url: str = "redis://127.0.0.1:6379/0"
    tenants: tuple[str, ...] = ("default",)
    model_store: str = ".loopwise/models"
    # Where /metrics, /healthz and /readyz listen (loopwise.runtime.MetricsServer).
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 0
    metrics_token: str = field(default="", repr=False)
    topic_partitions: int = 4
    log_level: str = "INFO"
    topics: Topics = field(default_factory=Topics)

    @classmethod
    def from_env(cls: type[T], env: dict[str, str] | None = None, **overrides: Any) -> T:
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "topics":
                continue
            key = "LOOPWISE_" + f.name.upper()
            if key not in env and FALLBACK_ENV.get(key) in env:
                key = FALLBACK_ENV[key]
            if key in env:
                default = f.default if f.default is not field else None
                try:
                    values[f.name] = _convert(env[key], default)
                except ValueError as exc:
                    raise ValueError(f"{key}={env[key]!r}: {exc}") from None
        values["topics"] = Topics.from_env(env)
        values.update(overrides)
        return cls(**values)


@dataclass(frozen=True)
class GrpcSettings(BaseSettings):
    grpc_host: str = "0.0.0.0"
    grpc_port: int = 0
    # On SIGTERM: seconds of NOT_SERVING while still answering (drain), then
    # seconds in-flight calls get to finish (grace).
    drain_s: float = 1.0
    grace_s: float = 10.0
    # Authentication (loopwise.auth) and TLS (loopwise.tls); empty: off.
    api_keys_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    # Limits against exhaustion (loopwise.guard, loopwise.grpcserver).
    max_concurrent_rpcs: int = 1000
    max_connections: int = 2000
    inflight_bytes: int = 256 * 1024 * 1024
    stream_deadline_s: float = 300.0
    handshake_timeout_s: float = 10.0
    max_connection_idle_s: float = 300.0
    max_connection_age_s: float = 3600.0
    keepalive_s: float = 60.0
    keepalive_timeout_s: float = 20.0
