"""Every replica reads the whole ``loopwise.errors.v1`` stream into its memories.

aiokafka without a consumer group: every partition is assigned, so replicas
hold the same memories. On start the consumer warms up from the recent
errors: each partition is positioned at the first record of the last
``warmup_s`` seconds (`offsets_for_times`), or, where the broker cannot say,
at most ``warmup_records`` records before its end. Errors of versions not
serving yet wait in the bank (`MemoryBank`). After a lost connection it
resumes where it was. The records are parsed and written in batches of at
most ``batch`` on the event loop: a batch write is a few vectorised numpy
operations (1,000 errors ≈ 30 ms on 2 busy cores, most of it decoding and
scoring them), so a `Rank` call waits at most that long behind one and never
on I/O for the memory.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from google.protobuf.message import DecodeError

from loopwise.kafka_security import aiokafka_security
from loopwise.v1 import learning_pb2

from ..metrics import InferenceMetrics
from .bank import MemoryBank

log = logging.getLogger(__name__)


class ErrorConsumer:
    def __init__(self, bootstrap: str, topic: str, bank: MemoryBank, metrics: InferenceMetrics, *,
                 warmup_s: float = 900.0, warmup_records: int = 100_000, batch: int = 1_000) -> None:
        self.bootstrap, self.topic, self.bank, self.metrics = bootstrap, topic, bank, metrics
        self.warmup_s, self.warmup_records, self.batch = warmup_s, warmup_records, batch
        self._positions: dict[TopicPartition, int] = {}
        self._started_ms = 0
        self._task: asyncio.Task | None = None
        # Set while every partition is assigned and positioned (tests wait on it).
        self.ready = asyncio.Event()

    def start(self) -> None:
        self._started_ms = int(time.time() * 1000)
        self._task = asyncio.create_task(self._run(), name="error-memory-consumer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=5.0)

    async def _run(self) -> None:
        delay = 0.5
        while True:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                auto_offset_reset="latest", request_timeout_ms=10_000, metadata_max_age_ms=10_000,
                retry_backoff_ms=200, fetch_max_wait_ms=100, client_id="loopwise-inference-errors",
                **aiokafka_security())
            try:
                await consumer.start()
                await self._assign(consumer)
                self.ready.set()
                self.metrics.memory_consumer_up.set(1)
                delay = 0.5
                while True:
                    batches = await consumer.getmany(timeout_ms=500, max_records=self.batch)
                    for tp, records in batches.items():
                        self._handle(records)
                        self._positions[tp] = records[-1].offset + 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Rank serves on; the memory waits for the stream
                log.warning("errors topic unreadable; the error memory is not fed",
                            extra={"error": repr(exc), "retry_s": delay})
            finally:
                self.ready.clear()
                self.metrics.memory_consumer_up.set(0)
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
        if fresh:
            for tp, offset in (await self._warmup_offsets(consumer, fresh)).items():
                consumer.seek(tp, offset)
        for tp in tps:
            self._positions[tp] = await consumer.position(tp)

    async def _warmup_offsets(self, consumer: AIOKafkaConsumer, tps: list[TopicPartition]
                              ) -> dict[TopicPartition, int]:
        """First offset of the last ``warmup_s`` per partition (bounded by ``warmup_records``)."""
        begin = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        bounded = {tp: max(begin[tp], end[tp] - self.warmup_records) for tp in tps}
        if self.warmup_s <= 0:
            return dict(end)
        since = int((time.time() - self.warmup_s) * 1000)
        try:
            found = await consumer.offsets_for_times({tp: since for tp in tps})
        except Exception as exc:  # noqa: BLE001 - a broker without timestamp lookups: count-bounded
            log.info("errors topic: no offset lookup by time; warming up by count",
                     extra={"error": repr(exc), "records": self.warmup_records})
            return bounded
        return {tp: end[tp] if found.get(tp) is None else max(found[tp].offset, bounded[tp]) for tp in tps}

    def _handle(self, records: list) -> None:
        errors, produced = [], []
        for record in records:
            error = learning_pb2.PredictionError()
            try:
                error.ParseFromString(record.value or b"")
            except DecodeError:
                self.metrics.memory_writes.labels("", "", "malformed").inc()
                continue
            errors.append(error)
            # the lag of live records only: the warm-up's are as old as the warm-up reaches
            produced.append(record.timestamp if (record.timestamp or 0) >= self._started_ms else 0)
        if errors:
            self.bank.write(errors, produced)
