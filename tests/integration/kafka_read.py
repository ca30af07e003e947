"""Read a topic back with a real consumer (consume until idle: Tansu's end
offsets under-report, so they are not trusted)."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer

from loopwise import codec
from loopwise.v1 import events_pb2


async def _read(bootstrap: str, topic: str, want: int, timeout: float, idle: float) -> list:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    records = []
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    try:
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            got = [m for msgs in batch.values() for m in msgs]
            if got:
                records.extend(got)
                last = time.monotonic()
            if len(records) >= want and time.monotonic() - last > idle:
                break
    finally:
        await consumer.stop()
    return records


def read_records(bootstrap: str, topic: str, want: int = 1, timeout: float = 15.0, idle: float = 0.5) -> list:
    """Raw records: at least ``want`` unless ``timeout`` passes first."""
    return asyncio.run(_read(bootstrap, topic, want, timeout, idle))


def read_events(bootstrap: str, topic: str, want: int = 1, timeout: float = 15.0) -> list[events_pb2.Event]:
    return [codec.decode(r.value) for r in read_records(bootstrap, topic, want, timeout)]
