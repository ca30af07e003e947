"""Where the miner's records go: the outbox (its output records, produced a
whole record batch at a time) and the dead letters.

The attribution agent writes about ten records per record it reads
(an example and a prediction error per shown candidate, preference pairs).
Handing them to Kafka one ``send`` at a time costs more than building them;
the `Outbox` collects one agent batch's records, groups them by partition
(the Java client's murmur2 partitioner on the record key, so records keyed by
request stay together and co-partitioned with the inputs), appends them to
aiokafka record batches and awaits every acknowledgement in `Outbox.flush` —
which the agent calls before its input offsets can be committed, so a crash
re-reads and re-sends (same deterministic ids), never skips. Its producer takes
the bootstrap servers and TLS/SASL arguments from the miner's settings, never
from the environment.

`DeadLetters` sends a record the miner cannot use, with its reason and where
it was read, to ``loopwise.deadletter.v1`` through the Faust producer (flushed
with the batch too), counted by reason: never a crash loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

import faust
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

from loopwise import stamps
from loopwise.kafka_security import aiokafka_security
from loopwise.settings import BaseSettings
from loopwise.v1 import learning_pb2

from .metrics import MinerMetrics

log = logging.getLogger(__name__)


class Outbox:
    """Output records added during a batch, produced and acknowledged by `flush`."""

    def __init__(self, settings: BaseSettings, *, linger_ms: int = 0, max_batch_bytes: int = 1 << 20,
                 request_timeout_ms: int = 30_000) -> None:
        self.settings = settings
        self._config = dict(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=linger_ms,
                            max_batch_size=max_batch_bytes, request_timeout_ms=request_timeout_ms)
        self.producer: AIOKafkaProducer | None = None  # made on the running loop, at the first flush
        self._pending: dict[str, list[tuple[bytes, bytes]]] = defaultdict(list)
        self._partitions: dict[str, int] = {}
        self._started = False
        self._lock = asyncio.Lock()

    async def start(self) -> AIOKafkaProducer:
        if self.producer is None:
            self.producer = AIOKafkaProducer(**self._config, **aiokafka_security(self.settings))
        if not self._started:
            await self.producer.start()
            self._started = True
        return self.producer

    async def stop(self) -> None:
        if self.producer is not None and self._started:
            await self.producer.stop()
            self._started = False

    def add(self, topic: str, key: bytes, value: bytes) -> None:
        self._pending[topic].append((key, value))

    async def _count(self, topic: str) -> int:
        n = self._partitions.get(topic)
        if n is None:
            n = len(await (await self.start()).partitions_for(topic))
            self._partitions[topic] = n
        return n

    async def flush(self) -> int:
        """Produce everything added so far and wait for the broker's acks; the records sent."""
        async with self._lock:
            if not self._pending:
                return 0
            producer = await self.start()
            pending, self._pending = self._pending, defaultdict(list)
            futures = []
            sent = 0
            for topic, records in pending.items():
                n = await self._count(topic)
                by_partition: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
                cache: dict[bytes, int] = {}
                for key, value in records:
                    p = cache.get(key)
                    if p is None:
                        p = cache[key] = (murmur2(key) & 0x7FFFFFFF) % n
                    by_partition[p].append((key, value))
                for partition, items in by_partition.items():
                    batch = producer.create_batch()
                    for key, value in items:
                        if batch.append(key=key, value=value, timestamp=None) is None:
                            futures.append(await producer.send_batch(batch, topic, partition=partition))
                            batch = producer.create_batch()
                            if batch.append(key=key, value=value, timestamp=None) is None:
                                raise ValueError(f"a record of {len(value)} bytes does not fit a batch")
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
                    sent += len(items)
            await asyncio.gather(*futures)
            return sent


class DeadLetters:
    """Records the miner cannot use, on the dead-letter topic with their reason."""

    def __init__(self, topic: faust.TopicT, metrics: MinerMetrics) -> None:
        self.topic = topic
        self.metrics = metrics

    def send(self, key: bytes, payload: bytes, topic: str, partition: int, offset: int, reason: str,
             detail: str) -> None:
        """Dead-letter ``payload`` read at ``topic``/``partition``/``offset`` (-1: not read from one)."""
        self.metrics.dead.labels(reason).inc()
        record = learning_pb2.DeadLetter(topic=topic, partition=partition, offset=offset, reason=reason,
                                         detail=detail, payload=payload, time_ms=stamps.now_ms(),
                                         service="miner")
        self.topic.send_soon(key=key, value=record.SerializeToString())
        log.warning("dead-lettered", extra={"reason": reason, "detail": detail, "topic": topic,
                                            "partition": partition, "offset": offset})
