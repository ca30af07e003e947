"""Every replica reads the whole ``loopwise.errors.v1`` stream into its memories.

A `topic_reader.TopicReader` (every partition, no consumer group), so replicas
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

from loopwise.v1 import learning_pb2

from ..metrics import InferenceMetrics
from ..topic_reader import TopicReader
from .bank import MemoryBank

log = logging.getLogger(__name__)


class ErrorConsumer:
    def __init__(self, bootstrap: str, topic: str, bank: MemoryBank, metrics: InferenceMetrics, *,
                 warmup_s: float = 900.0, warmup_records: int = 100_000, batch: int = 1_000) -> None:
        self.topic, self.bank, self.metrics = topic, bank, metrics
        self.warmup_s, self.warmup_records = warmup_s, warmup_records
        self._started_ms = 0
        self.reader = TopicReader(bootstrap, topic, self._on_batch, from_start=False,
                                  name="loopwise-inference-errors", start_at=self._warmup_offsets, batch=batch,
                                  up=lambda up: metrics.memory_consumer_up.set(1 if up else 0))

    @property
    def ready(self) -> asyncio.Event:
        """Set while every partition is assigned and positioned (tests wait on it)."""
        return self.reader.ready

    def start(self) -> None:
        self._started_ms = int(time.time() * 1000)
        self.reader.start()

    async def stop(self) -> None:
        await self.reader.stop()

    async def _on_batch(self, records: list) -> None:
        self._handle(records)

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
