"""Kafka TLS and SASL settings as the constructor arguments of each client family.

Every Kafka client the project builds takes its security arguments from one of
these functions (tests/contracts/test_kafka_clients.py fails on a constructor
call without one):

| client | function | arguments |
|---|---|---|
| kafka-python (`KafkaProducer`, `KafkaAdminClient`) | `kafka_python_security` | ``security_protocol``, ``sasl_*``, ``ssl_cafile`` |
| aiokafka (`AIOKafkaProducer`, `AIOKafkaConsumer`) | `aiokafka_security` | ``security_protocol``, ``sasl_*``, ``ssl_context`` |
| Faust (`faust.App`) | `faust_credentials` | ``broker_credentials`` |

The settings (`loopwise.settings.BaseSettings`, one value for the whole deployment):

| variable | default | meaning |
|---|---|---|
| LOOPWISE_KAFKA_SECURITY_PROTOCOL | PLAINTEXT | PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL |
| LOOPWISE_KAFKA_SASL_MECHANISM | PLAIN | PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (SASL_* only) |
| LOOPWISE_KAFKA_SASL_USERNAME / LOOPWISE_KAFKA_SASL_PASSWORD | empty | the SASL credentials |
| LOOPWISE_KAFKA_SSL_CAFILE | empty | CA bundle of the brokers' certificates (SSL, SASL_SSL); empty: the system's CAs |

PLAINTEXT gives no arguments at all: the clients keep their defaults, as on the
local stack. Code that holds a settings object passes it; code that holds only
a bootstrap address passes nothing and the settings are read from the
environment, as the service's own settings were.

TLS verifies the brokers' certificates and host names with a context from
`ssl.create_default_context` (the system's CAs unless a CA file is named;
aiokafka's ``create_ssl_context`` would trust no CA without one).
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loopwise.settings import BaseSettings

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def _checked(settings: BaseSettings | None) -> tuple[BaseSettings, str]:
    """The settings (from the environment when None) and their protocol, validated."""
    if settings is None:
        from loopwise.settings import BaseSettings

        settings = BaseSettings.from_env()
    protocol = settings.kafka_security_protocol.strip().upper()
    if protocol not in PROTOCOLS:
        raise ValueError(f"LOOPWISE_KAFKA_SECURITY_PROTOCOL={settings.kafka_security_protocol!r}: "
                         f"one of {', '.join(PROTOCOLS)}")
    if protocol.startswith("SASL_") and settings.kafka_sasl_mechanism.upper() not in MECHANISMS:
        raise ValueError(f"LOOPWISE_KAFKA_SASL_MECHANISM={settings.kafka_sasl_mechanism!r}: "
                         f"one of {', '.join(MECHANISMS)}")
    return settings, protocol


def _sasl(settings: BaseSettings) -> dict[str, Any]:
    return {"sasl_mechanism": settings.kafka_sasl_mechanism.upper(),
            "sasl_plain_username": settings.kafka_sasl_username,
            "sasl_plain_password": settings.kafka_sasl_password}


def ssl_context(settings: BaseSettings) -> ssl.SSLContext:
    """A client context verifying the brokers against the CA file (else the system's CAs)."""
    return ssl.create_default_context(cafile=settings.kafka_ssl_cafile or None)


def kafka_python_security(settings: BaseSettings | None = None) -> dict[str, Any]:
    """Keyword arguments of kafka-python's `KafkaProducer`, `KafkaConsumer`, `KafkaAdminClient`."""
    settings, protocol = _checked(settings)
    if protocol == "PLAINTEXT":
        return {}
    out: dict[str, Any] = {"security_protocol": protocol}
    if protocol.startswith("SASL_"):
        out |= _sasl(settings)
    if protocol.endswith("SSL") and settings.kafka_ssl_cafile:
        out["ssl_cafile"] = settings.kafka_ssl_cafile  # kafka-python checks host names by default
    return out


def aiokafka_security(settings: BaseSettings | None = None) -> dict[str, Any]:
    """Keyword arguments of aiokafka's `AIOKafkaProducer` and `AIOKafkaConsumer`."""
    settings, protocol = _checked(settings)
    if protocol == "PLAINTEXT":
        return {}
    out: dict[str, Any] = {"security_protocol": protocol}
    if protocol.startswith("SASL_"):
        out |= _sasl(settings)
    if protocol.endswith("SSL"):
        out["ssl_context"] = ssl_context(settings)
    return out


def faust_credentials(settings: BaseSettings | None = None) -> Any:
    """Faust's ``broker_credentials``: None (plaintext), `faust.SSLCredentials` or
    `faust.SASLCredentials` (with a TLS context for SASL_SSL)."""
    settings, protocol = _checked(settings)
    if protocol == "PLAINTEXT":
        return None
    import faust

    context = ssl_context(settings) if protocol.endswith("SSL") else None
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(username=settings.kafka_sasl_username, password=settings.kafka_sasl_password,
                                 mechanism=settings.kafka_sasl_mechanism.upper(), ssl_context=context)
