"""Impressions to Kafka without ever blocking or failing a Rank call.

`offer` is all a request does: a non-blocking put into a bounded queue (a
full queue drops the impression and counts it). A background task builds the
`Impression` events off the request path and produces them with aiokafka
(acks=all) in batches; a batch the broker refuses is retried, not dropped,
while new offers keep being bounded by the queue.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np
from aiokafka import AIOKafkaProducer

from loopwise import codec, representation, stamps
from loopwise.v1 import events_pb2

from .metrics import InferenceMetrics

log = logging.getLogger(__name__)


def build_impression(tenant: str, request: Any, request_id: str, model: str, version: str,
                     scores: np.ndarray, ranking: np.ndarray, hidden: np.ndarray | None,
                     at_ms: int) -> events_pb2.Event:
    """The Impression of one Rank call: ids and scores in served order; the
    request's features copied as they came (C-level copies), with `ranking`."""
    event = events_pb2.Event(event_id=stamps.new_event_id(), tenant=tenant, user_id=request.user_id,
                             session_id=request.session_id, request_id=request_id, client_time_ms=at_ms,
                             received_time_ms=at_ms)
    imp = event.impression
    imp.model = model
    imp.version = version
    imp.source = "inference"
    imp.candidate_ids.extend(np.asarray(request.candidates.ids, dtype=object)[ranking].tolist())
    imp.scores.extend(scores[ranking].tolist())
    imp.ranking.extend(ranking.tolist())
    imp.user.CopyFrom(request.user)
    imp.context.CopyFrom(request.context)
    imp.candidates.CopyFrom(request.candidates)
    if hidden is not None and hidden.ndim == 2:
        imp.representation, scale = representation.encode(hidden)
        imp.representation_dim = hidden.shape[1]
        imp.representation_scale.extend(scale.tolist())
    return event


class ImpressionEmitter:
    def __init__(self, bootstrap: str, topic: str, metrics: InferenceMetrics, *, buffer: int = 10_000,
                 batch: int = 500, compression: str = "zstd") -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.metrics = metrics
        self.batch = batch
        self.compression = None if compression == "none" else compression
        self.queue: asyncio.Queue[tuple] = asyncio.Queue(maxsize=buffer)
        self._task: asyncio.Task | None = None
        self._producer: AIOKafkaProducer | None = None
        self._closing = False
        self._busy = False

    def offer(self, item: tuple) -> None:
        """Never blocks: (tenant, request, request_id, model, version, scores, ranking, hidden, at_ms)."""
        if self._closing:
            self.metrics.impressions_dropped.labels("shutdown").inc()
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.metrics.impressions_dropped.labels("buffer_full").inc()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="impression-emitter")
        self._task.add_done_callback(self._died)

    @staticmethod
    def _died(task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("impression emitter stopped", exc_info=task.exception())

    async def _connect(self) -> AIOKafkaProducer:
        delay = 0.2
        while True:
            producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all",
                                        compression_type=self.compression, linger_ms=5,
                                        enable_idempotence=False, request_timeout_ms=10_000,
                                        client_id="loopwise-inference")
            try:
                await producer.start()
                return producer
            except Exception as exc:  # noqa: BLE001 - keep trying; Rank does not depend on Kafka
                await producer.stop()
                log.warning("impression producer cannot connect yet", extra={"error": repr(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _run(self) -> None:
        self._producer = await self._connect()
        while True:
            first = await self.queue.get()
            self._busy = True
            items = [first]
            while len(items) < self.batch and not self.queue.empty():
                items.append(self.queue.get_nowait())
            self.metrics.impression_buffer.set(self.queue.qsize())
            records = []
            for item in items:
                event = build_impression(*item)
                records.append((codec.record_key(event), event.SerializeToString()))
            await self._produce(records)
            self._busy = False

    async def _produce(self, records: list[tuple[bytes, bytes]]) -> None:
        delay = 0.2
        while True:
            try:
                assert self._producer is not None
                futures = [await self._producer.send(self.topic, value=v, key=k) for k, v in records]
                await asyncio.gather(*futures)
                self.metrics.impressions_emitted.inc(len(records))
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - retried: an impression is not lost to a blip
                self.metrics.impression_errors.inc()
                log.warning("impression batch not acked, retrying",
                            extra={"records": len(records), "error": repr(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def stop(self, timeout: float = 5.0) -> None:
        """Flush what is buffered (within ``timeout``), then stop."""
        self._closing = True
        if self._task is not None:
            deadline = asyncio.get_running_loop().time() + timeout
            while (self._busy or not self.queue.empty()) and self._producer is not None and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        left = self.queue.qsize()
        if left:
            self.metrics.impressions_dropped.labels("shutdown").inc(left)
            log.warning("impressions dropped at shutdown", extra={"count": left})
        if self._producer is not None:
            await self._producer.stop()
