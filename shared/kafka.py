"""Kafka helpers shared by the services: event codec, record keys, topics."""

from __future__ import annotations

import logging
import time
import uuid

from google.protobuf.message import DecodeError

from loopwise.v1 import events_pb2

log = logging.getLogger(__name__)


def new_event_id() -> str:
    return uuid.uuid4().hex


def now_ms() -> int:
    return int(time.time() * 1000)


def encode(event: events_pb2.Event) -> bytes:
    """Kafka records are the protobuf `Event`, binary."""
    return event.SerializeToString()


def decode(data: bytes) -> events_pb2.Event:
    """Raises `ValueError` for a record that is not an `Event`."""
    event = events_pb2.Event()
    try:
        event.ParseFromString(data)
    except DecodeError as exc:
        raise ValueError(f"not a loopwise.v1.Event: {exc}") from None
    return event


def record_key(event: events_pb2.Event) -> bytes:
    """Partition key: turns by user (sessions stay in order on one partition),
    everything else by request (impressions and their feedback co-partition)."""
    if event.WhichOneof("body") == "turn" or not event.request_id:
        return f"{event.tenant}|u|{event.user_id}".encode()
    return f"{event.tenant}|r|{event.request_id}".encode()


def ensure_topics(bootstrap: str, topics: list[str], partitions: int = 4, timeout: float = 30.0) -> None:
    """Create the topics that do not exist yet (idempotent)."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    deadline = time.monotonic() + timeout
    while True:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="loopwise-admin",
                                     request_timeout_ms=10_000,
                                     bootstrap_timeout_ms=int(max(timeout, 1.0) * 1000))
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
