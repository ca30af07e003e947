"""`TopicReader`: every partition of one topic, without a consumer group.

Each inference replica reads the deltas, errors and models topics whole,
with its own offsets, so replicas hold the same state. A partition read for
the first time starts at its end, at its beginning (optionally from a record
time), or where ``start_at`` says; after a lost connection (any failure that
restarts the consumer) the reader resumes where it was, or, with
``resume=False`` (the models topic's wake-ups), reads every partition afresh.
The consumer takes its TLS/SASL arguments from the settings it is given
(the service's: `loopwise.kafka_security.aiokafka_security`), never from the
environment; a failure is logged (``topic unreadable``) with the topic, the
protocol used and whether the reader resumes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from loopwise.kafka_security import aiokafka_security
from loopwise.settings import BaseSettings

log = logging.getLogger(__name__)

# (consumer, partitions read for the first time) -> the offset each starts at
StartAt = Callable[[AIOKafkaConsumer, list[TopicPartition]], Awaitable[dict[TopicPartition, int]]]


class TopicReader:
    """Every partition of ``topic``, no group; ``handle(records)`` per fetched batch (awaited)."""

    def __init__(self, settings: BaseSettings, topic: str, handle: Callable[[list], Any], *, from_start: bool,
                 name: str, up: Callable[[bool], None] | None = None,
                 since: Callable[[], int | None] | None = None, start_at: StartAt | None = None,
                 batch: int = 1_000, resume: bool = True) -> None:
        self.settings, self.topic, self.handle, self.from_start, self.name = settings, topic, handle, from_start, name
        self._up = up
        self._since = since  # from_start: the first record time (ms) wanted, None: all
        self._start_at = start_at  # where a partition read for the first time starts (instead of the above)
        self.batch = batch
        self.resume = resume  # False: after a failure every partition starts again as if read for the first time
        self._positions: dict[TopicPartition, int] = {}
        self._task: asyncio.Task | None = None
        self.ready = asyncio.Event()  # set while every partition is assigned and positioned

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            _, pending = await asyncio.wait([self._task], timeout=5.0)
            if pending:  # never hold a shutdown hostage (e.g. a consumer stuck connecting)
                log.warning("topic reader did not stop", extra={"topic": self.topic, "name": self.name})

    async def _run(self) -> None:
        delay = 0.5
        while True:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.settings.kafka_bootstrap, group_id=None, enable_auto_commit=False,
                auto_offset_reset="earliest" if self.from_start else "latest", request_timeout_ms=10_000,
                metadata_max_age_ms=10_000, retry_backoff_ms=200, fetch_max_wait_ms=100, client_id=self.name,
                **aiokafka_security(self.settings))
            try:
                await consumer.start()
                await self._assign(consumer)
                self.ready.set()
                if self._up is not None:
                    self._up(True)
                delay = 0.5
                while True:
                    batches = await consumer.getmany(timeout_ms=500, max_records=self.batch)
                    for tp, records in batches.items():
                        await self.handle(records)
                        self._positions[tp] = records[-1].offset + 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Rank serves on without this topic
                log.warning("topic unreadable; retrying", extra={
                    "topic": self.topic, "error": repr(exc), "retry_s": delay, "resume": self.resume,
                    "protocol": self.settings.kafka_security_protocol})
            finally:
                self.ready.clear()
                if not self.resume:
                    self._positions.clear()
                if self._up is not None:
                    self._up(False)
                try:
                    await consumer.stop()
                except Exception:  # noqa: BLE001
                    pass
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _assign(self, consumer: AIOKafkaConsumer) -> None:
        await consumer.topics()
        partitions = consumer.partitions_for_topic(self.topic)
        if not partitions:
            raise RuntimeError(f"topic {self.topic} has no partitions yet")
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        fresh = [tp for tp in tps if tp not in self._positions]
        for tp in tps:
            if tp in self._positions:
                consumer.seek(tp, self._positions[tp])
        if fresh and self._start_at is not None:
            for tp, offset in (await self._start_at(consumer, fresh)).items():
                consumer.seek(tp, offset)
        elif fresh and not self.from_start:
            await consumer.seek_to_end(*fresh)
        elif fresh:
            await consumer.seek_to_beginning(*fresh)
            since = self._since() if self._since is not None else None
            if since is not None:
                try:
                    found = await consumer.offsets_for_times({tp: since for tp in fresh})
                except Exception as exc:  # noqa: BLE001 - no lookup by time: read it all
                    log.info("no offset lookup by time; reading from the beginning",
                             extra={"topic": self.topic, "error": repr(exc)})
                    found = {}
                end = await consumer.end_offsets(fresh)
                for tp in fresh:
                    if tp in found:
                        consumer.seek(tp, found[tp].offset if found[tp] is not None else end[tp])
        for tp in tps:
            self._positions[tp] = await consumer.position(tp)
