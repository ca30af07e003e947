"""Impressions to Kafka without ever blocking or failing a Rank call.

`offer` is all a request does: a non-blocking put into a bounded queue (a
full queue drops the impression and counts it). A background task builds the
`Impression` events off the request path and produces them with aiokafka
(acks=all) in batches. No record can hold up the ones behind it:

- Size (`loopwise.limits`): an impression over ``MAX_EVENT_BYTES`` is
  emitted without its hidden representation (the documented trim rule,
  counted); one still over it — `Rank` refuses those at the door, so only a
  bug gets here — is dead-lettered with reason ``event_too_large``.
- A record the broker refuses for itself (too large, corrupt: `RECORD_ERRORS`)
  is sent again alone, to tell it from the records batched with it, then
  dead-lettered (``rejected_by_broker``) while the others are delivered.
- Any other failure (no ack, no connection) is retried with backoff for at
  most ``retry_s`` seconds; then the records are dropped and counted
  (``undeliverable``) and the queue moves on.

The producer takes its bootstrap servers and TLS/SASL arguments from the
settings it is given (the service's: `loopwise.kafka_security.aiokafka_security`),
never from the environment.

Dead letters go to the dead-letter topic as `learning_pb2.DeadLetter`
(``service="inference"``), like the miner's; one whose record is too large to
travel carries the event without its impression's bulky fields.

While impressions cannot be delivered (no producer yet, a batch failing) the
emitter is *degraded*: the ``loopwise_inference_impressions_degraded`` gauge
is 1 and ``on_degraded(True)`` is called (the service turns it into its
``impressions`` health status); the first batch delivered whole clears it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from aiokafka import AIOKafkaProducer
from aiokafka import errors as kerr

from loopwise import codec, representation, stamps
from loopwise.kafka_security import aiokafka_security
from loopwise.limits import MAX_EVENT_BYTES, MAX_RECORD_BYTES
from loopwise.settings import BaseSettings
from loopwise.v1 import events_pb2, learning_pb2

from .metrics import InferenceMetrics

log = logging.getLogger(__name__)

# Refusals of a record for itself: the broker is fine, sending it again will not help.
RECORD_ERRORS = (kerr.MessageSizeTooLargeError, kerr.RecordListTooLargeError, kerr.RecordTooLargeError,
                 kerr.CorruptRecordException, kerr.UnsupportedForMessageFormatError)
# A dead letter carries its record whole up to this size, else the event without its bulk.
DEADLETTER_PAYLOAD_BYTES = 64 * 1024

Record = tuple[bytes, bytes]


def build_impression(tenant: str, request: Any, request_id: str, model: str, version: str,
                     scores: np.ndarray, ranking: np.ndarray, hidden: np.ndarray | None,
                     at_ms: int, base: np.ndarray | None = None,
                     compensated: np.ndarray | None = None, delta_sequence: int = 0) -> events_pb2.Event:
    """The Impression of one Rank call: ids and served scores in served order
    (the model's own and the error memory's too, when given) and the delta sequence that scored them; the request's
    features copied as they came (C-level copies), with `ranking`."""
    event = events_pb2.Event(event_id=stamps.new_event_id(), tenant=tenant, user_id=request.user_id,
                             session_id=request.session_id, request_id=request_id, client_time_ms=at_ms,
                             received_time_ms=at_ms)
    imp = event.impression
    imp.model = model
    imp.version = version
    imp.delta_sequence = delta_sequence
    imp.source = "inference"
    imp.candidate_ids.extend(np.asarray(request.candidates.ids, dtype=object)[ranking].tolist())
    imp.scores.extend(scores[ranking].tolist())
    if base is not None:
        imp.base_scores.extend(base[ranking].tolist())
    if compensated is not None:
        imp.compensated_scores.extend(compensated[ranking].tolist())
    imp.ranking.extend(ranking.tolist())
    imp.user.CopyFrom(request.user)
    imp.context.CopyFrom(request.context)
    imp.candidates.CopyFrom(request.candidates)
    if hidden is not None and hidden.ndim == 2:
        imp.representation, scale = representation.encode(hidden)
        imp.representation_dim = hidden.shape[1]
        imp.representation_scale.extend(scale.tolist())
    return event


def skeleton(event: events_pb2.Event) -> events_pb2.Event:
    """The event without its impression's per-candidate data and features (who, when, which model)."""
    out = events_pb2.Event()
    out.CopyFrom(event)
    imp = out.impression
    for name in ("candidate_ids", "scores", "base_scores", "compensated_scores", "ranking", "user", "context", "candidates", "representation",
                 "representation_dim", "representation_scale", "propensities"):
        imp.ClearField(name)
    return out


class ImpressionEmitter:
    def __init__(self, settings: BaseSettings, topic: str, metrics: InferenceMetrics, *, deadletter_topic: str,
                 buffer: int = 10_000, batch: int = 500, compression: str = "zstd", retry_s: float = 30.0,
                 on_degraded: Callable[[bool], Any] | None = None) -> None:
        self.settings = settings
        self.topic = topic
        self.deadletter_topic = deadletter_topic
        self.metrics = metrics
        self.batch = batch
        self.retry_s = retry_s
        self.compression = None if compression == "none" else compression
        self.queue: asyncio.Queue[tuple] = asyncio.Queue(maxsize=buffer)
        self.degraded = True  # until the producer is up
        self._on_degraded = on_degraded
        self._task: asyncio.Task | None = None
        self._producer: AIOKafkaProducer | None = None
        self._closing = False
        self._busy = False
        metrics.impressions_degraded.set(1)

    def offer(self, item: tuple) -> None:
        """Never blocks: (tenant, request, request_id, model, version, scores, ranking, hidden, at_ms[,
        base, compensated, delta_sequence]) — the arguments of `build_impression`."""
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

    def _died(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("impression emitter stopped", exc_info=task.exception())
            self._set_degraded(True, "emitter stopped")

    def _set_degraded(self, degraded: bool, why: str = "") -> None:
        if degraded == self.degraded:
            return
        self.degraded = degraded
        self.metrics.impressions_degraded.set(1 if degraded else 0)
        if degraded:
            log.error("impressions degraded: cannot deliver", extra={"why": why})
        else:
            log.info("impressions delivered again")
        if self._on_degraded is not None:
            result = self._on_degraded(degraded)
            if inspect.isawaitable(result):
                asyncio.ensure_future(result)

    async def _connect(self) -> AIOKafkaProducer:
        """A started producer; keeps trying (the bounded queue holds, then drops, the impressions)."""
        delay = 0.2
        while True:
            producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap, acks="all",
                                        compression_type=self.compression, linger_ms=5,
                                        enable_idempotence=False, request_timeout_ms=10_000,
                                        max_request_size=MAX_RECORD_BYTES, client_id="loopwise-inference",
                                        **aiokafka_security(self.settings))
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
        self._set_degraded(False)
        while True:
            first = await self.queue.get()
            self._busy = True
            items = [first]
            while len(items) < self.batch and not self.queue.empty():
                items.append(self.queue.get_nowait())
            self.metrics.impression_buffer.set(self.queue.qsize())
            records = []
            for item in items:
                record = await self._encode(build_impression(*item))
                if record is not None:
                    records.append(record)
            if records:
                await self._produce(records)
            self._busy = False

    async def _encode(self, event: events_pb2.Event) -> Record | None:
        """(key, value) of an impression within ``MAX_EVENT_BYTES`` (trimmed by the rule), else None
        (dead-lettered)."""
        value = event.SerializeToString()
        if len(value) > MAX_EVENT_BYTES and event.impression.representation:
            for name in ("representation", "representation_dim", "representation_scale"):
                event.impression.ClearField(name)
            self.metrics.impressions_trimmed.labels("representation").inc()
            value = event.SerializeToString()
        key = codec.record_key(event)
        if len(value) > MAX_EVENT_BYTES:
            await self._dead_letter((key, value), "event_too_large", f"{len(value)} bytes, at most {MAX_EVENT_BYTES}")
            return None
        return key, value

    async def _produce(self, records: list[Record]) -> None:
        """Deliver, isolate and dead-letter, or (after ``retry_s``) drop ``records``; never longer."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_s
        delay = 0.2
        attempts = 0
        while True:
            attempts += 1
            failed: list[Record] = []
            last: BaseException | None = None
            results = await self._send(records)
            for record, exc in zip(records, results, strict=True):
                if exc is not None and isinstance(exc, RECORD_ERRORS):
                    # refused for itself, or for a record batched with it: alone, it tells which
                    exc = exc if len(records) == 1 else (await self._send([record]))[0]
                    if exc is not None and isinstance(exc, RECORD_ERRORS):
                        await self._dead_letter(record, "rejected_by_broker", repr(exc))
                        continue
                if exc is None:
                    self.metrics.impressions_emitted.inc()
                else:
                    failed.append(record)
                    last = exc
            if not failed:
                self._set_degraded(False)
                return
            self.metrics.impression_errors.inc()
            self._set_degraded(True, repr(last))
            if loop.time() + delay > deadline:
                self.metrics.impressions_dropped.labels("undeliverable").inc(len(failed))
                log.error("impressions dropped: not acked in time",
                          extra={"records": len(failed), "attempts": attempts, "retry_s": self.retry_s,
                                 "error": repr(last)})
                return
            log.warning("impression batch not acked, retrying",
                        extra={"records": len(failed), "attempt": attempts, "error": repr(last)})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            records = failed

    async def _send(self, records: list[Record]) -> list[BaseException | None]:
        """Send ``records`` and wait for each one's ack: its error, or None."""
        assert self._producer is not None
        pending: list[asyncio.Future | BaseException] = []
        for key, value in records:
            try:
                pending.append(await self._producer.send(self.topic, value=value, key=key))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the record's own outcome
                pending.append(exc)
        futures = [p for p in pending if not isinstance(p, BaseException)]
        outcomes = iter(await asyncio.gather(*futures, return_exceptions=True))
        results: list[BaseException | None] = []
        for p in pending:
            if isinstance(p, BaseException):
                results.append(p)
            else:
                outcome = next(outcomes)
                results.append(outcome if isinstance(outcome, BaseException) else None)
        return results

    async def _dead_letter(self, record: Record, reason: str, detail: str) -> None:
        """The record on the dead-letter topic with its reason (one attempt: never a retry loop)."""
        key, value = record
        payload = value
        if len(value) > DEADLETTER_PAYLOAD_BYTES:
            payload = skeleton(codec.decode(value)).SerializeToString()
            detail = f"{detail}; payload without the impression's candidates and features"
        letter = learning_pb2.DeadLetter(topic=self.topic, partition=-1, offset=-1, reason=reason,
                                         detail=detail, payload=payload, time_ms=stamps.now_ms(),
                                         service="inference")
        self.metrics.impressions_dead_lettered.labels(reason).inc()
        log.warning("impression dead-lettered", extra={"reason": reason, "detail": detail,
                                                       "record_bytes": len(value)})
        try:
            assert self._producer is not None
            await self._producer.send_and_wait(self.deadletter_topic, value=letter.SerializeToString(), key=key)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - counted and logged; the queue moves on
            self.metrics.impressions_dropped.labels("deadletter_failed").inc()
            log.error("dead letter not delivered", extra={"reason": reason, "error": repr(exc)})

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
