"""Every replica reads the whole deltas topic into its `deltas.DeltaRegistry`, and
says which sequence it serves.

The deltas topic is read by a `topic_reader.TopicReader` (every partition,
no consumer group: each replica its own offsets) from the creation of the
oldest version this replica serves (every delta of those bases came after
it, so a replica that starts or restarts rebuilds the same overlays as one
that never stopped, without reading older bases' deltas; from the
beginning where the broker cannot look offsets up by time). After a lost
connection it resumes where it was. The inference service starts the deltas
reader once its first model serves. (The guard's labels come with the errors
topic's one reader, `errors_reader.ErrorsReader`.)

`DeltaConsumer` decodes each delta (`loopwise.modelstore.sparse.decode_delta`:
a bad one is rejected with its reason, counted, never applied) and offers it
in a single worker thread, so building the next snapshot never runs on the
event loop that answers `Rank`. Counted in
``loopwise_inference_deltas_total{result}``; an applied delta's latency from
its oldest example's production (``loopwise_inference_delta_example_to_applied_seconds``)
and from its creation (``..._delta_created_to_applied_seconds``) is observed
and logged (``delta applied``) when it was produced after the replica started.
An applied delta covers this replica's pending shows up to its
``impressions_through_ms`` (`pending.PendingShows.covered`).

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

from loopwise import redis_keys, stamps
from loopwise.modelstore.sparse import DeltaError, decode_delta
from loopwise.settings import BaseSettings

from .deltas import DeltaRegistry
from .metrics import InferenceMetrics
from .models import ModelRegistry
from .pending import PendingShows
from .topic_reader import TopicReader

log = logging.getLogger(__name__)


class DeltaConsumer:
    """The deltas topic into the registry (see the module doc)."""

    def __init__(self, settings: BaseSettings, topic: str, registry: DeltaRegistry, metrics: InferenceMetrics,
                 since: Callable[[], int | None] | None = None, pending: PendingShows | None = None) -> None:
        self.registry, self.metrics, self.pending = registry, metrics, pending
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="delta-apply")
        self._started_ms = stamps.now_ms()
        self.reader = TopicReader(settings, topic, self._handle, from_start=True, name="loopwise-inference-deltas",
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
        if applied and self.pending is not None:
            self.pending.covered(delta.tenant, delta.model, delta.base_version,
                                 max(d.impressions_through_ms for d in applied), int(now * 1000))
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
