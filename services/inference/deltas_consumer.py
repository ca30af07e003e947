"""Every replica reads the whole deltas topic into its `deltas.DeltaRegistry`, and
says which sequence it serves.

`TopicReader` follows every partition of a topic without a consumer group
(each replica its own offsets): the deltas topic from the creation of the
oldest version this replica serves (every delta of those bases came after
it, so a replica that starts or restarts rebuilds the same overlays as one
that never stopped, without reading older bases' deltas; from the
beginning where the broker cannot look offsets up by time), the errors topic
(the guard's labels) from its end. After a lost connection it resumes where
it was. The inference service starts the deltas reader once its first model
serves.

`DeltaConsumer` decodes each delta (`loopwise.modelstore.sparse.decode_delta`:
a bad one is rejected with its reason, counted, never applied) and offers it
in a single worker thread, so building the next snapshot never runs on the
event loop that answers `Rank`. Counted in
``loopwise_inference_deltas_total{result}``; an applied delta's latency from
its oldest example's production (``loopwise_inference_delta_example_to_applied_seconds``)
and from its creation (``..._delta_created_to_applied_seconds``) is observed
and logged (``delta applied``) when it was produced after the replica started.

`publish_status` writes, per served (tenant, model), this replica's
version, stream and sequence to Redis (`loopwise.redis_keys.delta_replica`,
expiring) for ``loopwise model show``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from loopwise import redis_keys, stamps
from loopwise.kafka_security import aiokafka_security
from loopwise.modelstore.sparse import DeltaError, decode_delta

from .deltas import DeltaRegistry
from .metrics import InferenceMetrics
from .models import ModelRegistry

log = logging.getLogger(__name__)


class TopicReader:
    """Every partition of ``topic``, no group; ``handle(records)`` per fetched batch (awaited)."""

    def __init__(self, bootstrap: str, topic: str, handle: Callable[[list], Any], *, from_start: bool,
                 name: str, up: Callable[[bool], None] | None = None,
                 since: Callable[[], int | None] | None = None) -> None:
        self.bootstrap, self.topic, self.handle, self.from_start, self.name = bootstrap, topic, handle, from_start, name
        self._up = up
        self._since = since  # from_start: the first record time (ms) wanted, None: all
        self._positions: dict[TopicPartition, int] = {}
        self._task: asyncio.Task | None = None
        self.ready = asyncio.Event()  # set while every partition is assigned and positioned

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=5.0)

    async def _run(self) -> None:
        delay = 0.5
        while True:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                auto_offset_reset="earliest" if self.from_start else "latest", request_timeout_ms=10_000,
                metadata_max_age_ms=10_000, retry_backoff_ms=200, fetch_max_wait_ms=100, client_id=self.name,
                **aiokafka_security())
            try:
                await consumer.start()
                await self._assign(consumer)
                self.ready.set()
                if self._up is not None:
                    self._up(True)
                delay = 0.5
                while True:
                    batches = await consumer.getmany(timeout_ms=500, max_records=1_000)
                    for tp, records in batches.items():
                        await self.handle(records)
                        self._positions[tp] = records[-1].offset + 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Rank serves on without this topic
                log.warning("topic unreadable; retrying", extra={"topic": self.topic, "error": repr(exc),
                                                                 "retry_s": delay})
            finally:
                self.ready.clear()
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
        if fresh and not self.from_start:
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


class DeltaConsumer:
    """The deltas topic into the registry (see the module doc)."""

    def __init__(self, bootstrap: str, topic: str, registry: DeltaRegistry, metrics: InferenceMetrics,
                 since: Callable[[], int | None] | None = None) -> None:
        self.registry, self.metrics = registry, metrics
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="delta-apply")
        self._started_ms = stamps.now_ms()
        self.reader = TopicReader(bootstrap, topic, self._handle, from_start=True, name="loopwise-inference-deltas",
                                  up=lambda up: metrics.delta_consumer_up.set(1 if up else 0), since=since)

    def start(self) -> None:
        self._started_ms = stamps.now_ms()
        self.reader.start()

    async def stop(self) -> None:
        await self.reader.stop()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _handle(self, records: list) -> None:
        await asyncio.get_running_loop().run_in_executor(
            self._executor, lambda: [self.apply(r.value or b"") for r in records])

    def apply(self, value: bytes) -> str:
        """Decode and offer one delta record; the result counted."""
        self.metrics.delta_bytes.inc(len(value))
        try:
            delta = decode_delta(value)
        except DeltaError as exc:
            self.metrics.deltas.labels("", "", exc.reason).inc()
            log.warning("delta rejected", extra={"reason": exc.reason, "detail": str(exc)})
            return exc.reason
        result, applied = self.registry.offer(delta)
        self.metrics.deltas.labels(delta.tenant, delta.model, result).inc()
        now = time.time()
        for d in applied:
            if d.created_ms < self._started_ms:
                continue  # caught up from the topic: not a live latency
            example_s = now - d.first_example_ms / 1000 if d.first_example_ms else float("nan")
            created_s = now - d.created_ms / 1000
            if d.first_example_ms:
                self.metrics.delta_example_to_applied.observe(max(example_s, 0.0))
            self.metrics.delta_created_to_applied.observe(max(created_s, 0.0))
            log.info("delta applied", extra={"tenant": d.tenant, "model": d.model, "base": d.base_version,
                                             "stream": d.stream, "sequence": d.sequence, "examples": d.examples,
                                             "bytes": d.size, "example_to_applied_s": round(example_s, 4),
                                             "created_to_applied_s": round(created_s, 4)})
        if result == "bad_layout":
            log.warning("delta rejected: its layout is not its stream's",
                        extra={"tenant": delta.tenant, "model": delta.model, "base": delta.base_version})
        return result


def oldest_serving_ms(models: ModelRegistry, margin_ms: int = 60_000) -> int | None:
    """When the oldest version serving here was created, less a margin (ms); None when none serves."""
    created = [m.manifest.created_at for m in models.items() if m.manifest.created_at]
    return int(min(created) * 1000) - margin_ms if created else None


async def publish_status(redis: Any, replica: str, models: ModelRegistry, registry: DeltaRegistry,
                         metrics: InferenceMetrics, ttl_s: float) -> None:
    """Once: this replica's serving version and delta sequence per (tenant, model), to Redis and the gauge."""
    pipe = redis.pipeline(transaction=False)
    for loaded in models.items():
        snap = registry.serving(loaded)
        metrics.delta_sequence.labels(loaded.tenant, loaded.model).set(snap.sequence)
        state = {"replica": replica, "version": loaded.version, "stream": snap.stream, "sequence": snap.sequence,
                 "rolled_back": registry.rolled_back(loaded.tenant, loaded.model, loaded.version),
                 "at_ms": stamps.now_ms()}
        pipe.set(redis_keys.delta_replica(loaded.tenant, loaded.model, replica), json.dumps(state),
                 px=int(ttl_s * 1000))
    await pipe.execute()
