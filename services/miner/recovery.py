"""What the miner needs after a restart or a rebalance, and what its watermarks ask the consumer.

- `ReadPositions`: the next offset read per input (topic, partition);
  `ReadPositions.caught_up` compares it with the consumer's high-water mark,
  so an input with a backlog is never taken for an idle one (an idle input's
  watermark follows the wall clock, a backlogged one's must not).
- `recovered`: Faust has finished rebalancing and recovering its tables.
- `ChangelogCatchUp`: re-reads a table's changelog partitions to their real
  end. A workaround for brokers that under-report end offsets (the local
  Tansu broker does, by whole batches, and Faust's recovery stops at the end
  offsets reported): off by default (``LOOPWISE_CHANGELOG_CATCH_UP``), on in
  the local stack and in the tests that run a miner on Tansu. Its consumer
  takes the bootstrap servers and TLS/SASL arguments from the miner's
  settings, never from the environment.
- `InputRewind`: seeks the inputs back to their committed offsets once Faust's
  recovery is over. Faust (0.15) starts fetching the stream partitions while it
  completes the recovery and then clears its stream queues
  (``flow_control.resume()`` in ``on_recovery_completed``): records fetched in
  between are dropped while the consumer's position is already past them, so
  the agent never reads them (a loaded worker hits this after a restart: its
  inputs never catch up, its windows never close). Re-reading from the
  committed offsets restores them (delivery is at least once anyway).
- `RecoveryGate`: once per assignment, after Faust's recovery, the rewind, the
  catch-up (when on) and the caller's re-index, under a lock its users share.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import TP, TableT

from loopwise.kafka_security import aiokafka_security
from loopwise.settings import BaseSettings

log = logging.getLogger(__name__)


class ReadPositions:
    """The next offset to read per (topic, partition), against the consumer's high-water marks.

    >>> positions = ReadPositions(lambda topic, partition: 10)
    >>> positions.record("events", 0, 8)
    >>> positions.caught_up("events", 0), positions.caught_up("events", 1)
    (False, True)
    >>> positions.record("events", 0, 9)
    >>> positions.caught_up("events", 0), positions.lag()
    (True, {('events', 0): 0})
    """

    def __init__(self, highwater: Callable[[str, int], int | None]) -> None:
        self._highwater = highwater
        self._next: dict[tuple[str, int], int] = {}

    def record(self, topic: str, partition: int, offset: int) -> None:
        """The record at ``offset`` has been read."""
        self._next[(topic, partition)] = offset + 1

    def caught_up(self, topic: str, partition: int) -> bool:
        """Whether the consumer has read a partition up to its high-water mark (unknown: yes)."""
        try:
            high = self._highwater(topic, partition)
        except Exception:  # noqa: BLE001 - no consumer or no fetch yet: fall back to the idle timeout
            return True
        read = self._next.get((topic, partition))
        if high is None or read is None:
            # nothing read from it in this run (e.g. fully consumed before a restart):
            # its idle timeout decides, a stale high-water mark must not hold it forever
            return True
        return read >= high

    def lag(self) -> dict[tuple[str, int], int]:
        """{(topic, partition): high-water mark - next offset} of the inputs read in this run
        and still assigned (the consumer's metric ``loopwise_miner_consumer_lag_records``)."""
        out = {}
        for (topic, partition), read in list(self._next.items()):
            try:
                high = self._highwater(topic, partition)
            except Exception:  # noqa: BLE001 - no longer assigned, or no fetch yet
                continue
            if high is not None:
                out[(topic, partition)] = high - read
        return out


def consumer_highwater(app: faust.App) -> Callable[[str, int], int | None]:
    """The high-water mark the app's consumer last fetched for a (topic, partition)."""
    return lambda topic, partition: app.consumer.highwater(TP(topic, partition))


def recovered(app: faust.App) -> bool:
    """Whether the app is past its rebalance and its tables are recovered from their changelogs."""
    return not (app.rebalancing or app.in_recovery or not app.tables.recovery.completed.is_set())


class ChangelogCatchUp:
    """Re-read this worker's changelog partitions of ``table`` to their real end.

    Faust recovers a table up to the end offsets the broker reports; a broker
    that under-reports them (Tansu does, by whole batches) leaves the newest
    states out. Reading until idle (``idle_s``) and applying every record in
    order (last write wins, None deletes) restores exactly what a full
    recovery would. The partitions are those of ``inputs`` assigned to this
    worker (the table is partitioned like them).
    """

    def __init__(self, app: faust.App, table: TableT, inputs: tuple[str, ...], settings: BaseSettings,
                 idle_s: float) -> None:
        self.app = app
        self.table = table
        self.inputs = inputs
        self.settings = settings
        self.idle_s = idle_s

    async def __call__(self) -> None:
        topic = self.table.changelog_topic.get_topic_name()
        partitions = sorted({tp.partition for tp in self.app.consumer.assignment() if tp.topic in self.inputs})
        if not partitions:
            return
        consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap, enable_auto_commit=False,
                                    group_id=None, auto_offset_reset="earliest",
                                    **aiokafka_security(self.settings))
        await consumer.start()
        applied = 0
        try:
            tps = [TopicPartition(topic, p) for p in partitions]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            idle_since = time.monotonic()
            while time.monotonic() - idle_since < self.idle_s:
                batch = await consumer.getmany(timeout_ms=100, max_records=10_000)
                for records in batch.values():
                    for record in records:
                        if record.value is None:
                            self.table.data.pop(record.key, None)
                        else:
                            self.table.data[record.key] = record.value
                        applied += 1
                    idle_since = time.monotonic()
        finally:
            await consumer.stop()
        log.info("changelog caught up", extra={"records": applied, "partitions": partitions})


class InputRewind:
    """Seek this worker's partitions of ``inputs`` to their committed offsets (to the
    beginning where none is committed), so that no record Faust dropped while it
    recovered is skipped. Call it after Faust's recovery, before any record of the
    assignment is processed (`RecoveryGate` does)."""

    def __init__(self, app: faust.App, inputs: tuple[str, ...]) -> None:
        self.app = app
        self.inputs = inputs

    async def __call__(self) -> None:
        consumer = self.app.consumer
        # Faust's own record of the committed offsets, read at its seek to them just
        # before the recovery completed (None: nothing committed, read from the start).
        committed = consumer._committed_offset
        offsets = {tp: committed.get(tp) or 0 for tp in consumer.assignment() if tp.topic in self.inputs}
        if offsets:
            await consumer.seek_wait(offsets)
            log.info("inputs rewound to their committed offsets",
                     extra={"offsets": {f"{tp.topic}/{tp.partition}": o for tp, o in sorted(offsets.items())}})


class RecoveryGate:
    """After each rebalance (`reset`): once Faust's recovery is complete, ``rewind`` (if
    any), ``catch_up`` (if any), then ``rebuild``, then ``on_ready`` — once, while no
    holder of `lock` touches the table."""

    def __init__(self, app: faust.App, rebuild: Callable[[], None],
                 catch_up: Callable[[], Awaitable[None]] | None = None,
                 on_ready: Callable[[], None] | None = None,
                 rewind: Callable[[], Awaitable[None]] | None = None) -> None:
        self.app = app
        self.rebuild = rebuild
        self.catch_up = catch_up
        self.on_ready = on_ready
        self.rewind = rewind
        self.lock = asyncio.Lock()
        self.done = False

    def reset(self) -> None:
        """Partitions (and table contents) changed: rebuild after the next recovery."""
        self.done = False

    async def ensure(self) -> bool:
        """Whether the table is ready (rebuilding it now if it can be)."""
        if self.done:
            return True
        async with self.lock:
            if self.done:
                return True
            if not recovered(self.app):
                return False
            if self.rewind is not None:
                await self.rewind()
            if self.catch_up is not None:
                await self.catch_up()
            self.rebuild()
            self.done = True
            if self.on_ready is not None:
                self.on_ready()
            return True
