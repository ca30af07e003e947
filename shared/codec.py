"""The event codec: Kafka records are the protobuf `Event`, binary, keyed so
that what must stay together lands on one partition."""

from __future__ import annotations

from google.protobuf.message import DecodeError

from loopwise.v1 import events_pb2


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
