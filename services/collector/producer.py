"""An acks=all, idempotent, compressed kafka-python producer awaited from asyncio.

`send_batch` returns once the broker acknowledged every record, or raises
`ProduceFailed`; the failed batch is reported to the caller, who retries with
the same event ids.

A batch that could not be delivered (no ack in time, a lost connection, a
producer in a fatal state) puts the producer *down*: the kafka-python
producer that failed is closed, to be replaced by a fresh one, and
``on_health(False)`` is awaited. While down, a background task probes the
broker with a fresh producer (metadata of every topic written so far) every
`probe_backoff_s`, doubling up to `probe_backoff_max_s`; the first probe that
succeeds, or the first batch acknowledged, awaits ``on_health(True)``. A batch
refused for its own records (too large, invalid) says nothing about the
broker and changes nothing.

Why replace rather than wait: kafka-python's idempotent producer does not
always recover by itself. When a batch expires after it was sent (a broker
stall longer than ``delivery_timeout_ms``), kafka-python 3.0 resets its
producer id but leaves its state READY, so it never asks for a new one and
every later record waits forever; a restarted broker forgets the producer id
altogether. A fresh producer starts clean; the events a dropped producer still
held were answered UNAVAILABLE and are retried by their clients.

Every producer object is touched on one thread (the ``collector-send``
executor), so replacing it needs no lock. Its TLS and SASL arguments come from
the settings it is given (the collector's); benchmarks and tests that give
none read them from the environment.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from kafka import KafkaProducer
from kafka import errors as kerr

from loopwise.kafka_security import kafka_python_security
from loopwise.limits import MAX_RECORD_BYTES

if TYPE_CHECKING:
    from loopwise.settings import BaseSettings

log = logging.getLogger(__name__)

# Refusals of a batch's own records: the broker is fine, retrying will not help.
RECORD_ERRORS = (kerr.MessageSizeTooLargeError, kerr.RecordListTooLargeError, kerr.InvalidRecordError,
                 kerr.CorruptRecordError, kerr.InvalidTopicError, kerr.TopicAuthorizationFailedError)


class ProduceFailed(Exception):
    pass


class AckTimeout(kerr.KafkaTimeoutError):
    """No acknowledgement within the caller's timeout."""


class _BatchWaiter:
    """Counts acks from the producer's I/O thread; wakes the loop once.
    ``generation`` is the producer the records were handed to (None: none);
    ``abandoned`` is set when the caller stopped waiting before they were."""

    __slots__ = ("loop", "future", "pending", "error", "lock", "generation", "abandoned")

    def __init__(self, loop: asyncio.AbstractEventLoop, n: int) -> None:
        self.loop = loop
        self.future: asyncio.Future = loop.create_future()
        self.pending = n
        self.error: BaseException | None = None
        self.lock = threading.Lock()
        self.generation: int | None = None
        self.abandoned = False

    def ok(self, _meta: Any) -> None:
        self._done(None)

    def fail(self, exc: BaseException) -> None:
        self._done(exc)

    def _done(self, exc: BaseException | None) -> None:
        with self.lock:
            if exc is not None and self.error is None:
                self.error = exc
            self.pending -= 1
            finished = self.pending == 0
        if finished:
            self.loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if not self.future.done():
            self.future.set_result(self.error)


def producer_config(bootstrap: str, *, compression: str = "zstd", linger_ms: int = 2,
                    client_id: str = "loopwise-collector") -> dict[str, Any]:
    """The kafka-python settings of the collector's producer (benchmarks reuse them)."""
    return dict(
        bootstrap_servers=bootstrap.split(","), client_id=client_id, acks="all",
        enable_idempotence=True, compression_type=None if compression == "none" else compression,
        linger_ms=linger_ms, batch_size=256 * 1024, max_in_flight_requests_per_connection=5,
        request_timeout_ms=5_000, delivery_timeout_ms=10_000, max_block_ms=5_000,
        retry_backoff_ms=100, reconnect_backoff_max_ms=1_000, bootstrap_timeout_ms=5_000,
        max_request_size=MAX_RECORD_BYTES,
    )


def close_now(producer: KafkaProducer) -> None:
    """Close without waiting: the records it still holds fail at once.

    kafka-python flushes before closing even with ``timeout=0`` and raises if
    records are pending, leaving its I/O thread running; stop that thread
    then (its pending records fail with the error it gives them).
    """
    try:
        producer.close(timeout=0)
    except kerr.KafkaTimeoutError:
        sender = getattr(producer, "_sender", None)
        if sender is not None:
            sender.force_close()
    except Exception:  # noqa: BLE001 - closing a broken producer must not fail the caller
        log.debug("close of a broken producer failed", exc_info=True)


class AckedProducer:
    def __init__(self, bootstrap: str, *, compression: str = "zstd", linger_ms: int = 2,
                 client_id: str = "loopwise-collector", on_recreate: Callable[[], Any] | None = None,
                 on_health: Callable[[bool], Awaitable[Any]] | None = None,
                 probe_backoff_s: float = 0.5, probe_backoff_max_s: float = 5.0,
                 settings: BaseSettings | None = None) -> None:
        self._config = producer_config(bootstrap, compression=compression, linger_ms=linger_ms,
                                       client_id=client_id)
        self._settings = settings
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="collector-send")
        self._producer: KafkaProducer | None = None
        self._generation = 0
        self._topics: set[str] = set()
        self._on_recreate = on_recreate
        self._on_health = on_health
        self._probe_backoff = (probe_backoff_s, probe_backoff_max_s)
        self._recovery: asyncio.Task | None = None
        self._closed = False
        self.healthy = True

    # -- executor thread ----------------------------------------------------------
    def _get(self) -> KafkaProducer:
        if self._producer is None:
            self._producer = KafkaProducer(**self._config, **kafka_python_security(self._settings))
            self._generation += 1
        return self._producer

    def _discard(self, why: BaseException, generation: int | None) -> None:
        """Close the producer of ``generation`` if it is still the current one."""
        if self._producer is None or generation != self._generation:
            return
        producer, self._producer = self._producer, None
        log.warning("replacing the producer: it could not deliver", extra={"error": repr(why)})
        close_now(producer)
        if self._on_recreate:
            self._on_recreate()

    def _send_all(self, records: list[tuple[str, bytes, bytes]], waiter: _BatchWaiter) -> None:
        if waiter.abandoned:  # its caller was answered UNAVAILABLE while this waited its turn
            return
        self._topics.update(topic for topic, _, _ in records)
        try:
            producer = self._get()
        except Exception as exc:  # noqa: BLE001 - no producer: every record fails
            for _ in records:
                waiter.fail(exc)
            return
        waiter.generation = self._generation
        sent = 0
        try:
            for topic, key, value in records:
                fut = producer.send(topic, key=key, value=value)
                fut.add_callback(waiter.ok)
                fut.add_errback(waiter.fail)
                sent += 1
        except Exception as exc:  # noqa: BLE001 - records not handed to the producer count as failed
            for _ in range(len(records) - sent):
                waiter.fail(exc)

    def _probe(self) -> None:
        """Raise unless a producer reaches the broker and reads the metadata
        of every topic written so far (a failed one is dropped)."""
        producer = self._get()
        generation = self._generation
        try:
            for topic in sorted(self._topics):
                producer.partitions_for(topic)
        except Exception as exc:
            self._discard(exc, generation)
            raise

    # -- event loop ---------------------------------------------------------------
    async def send_batch(self, records: list[tuple[str, bytes, bytes]], timeout: float) -> None:
        """Await the broker's ack for every (topic, key, value)."""
        if not records:
            return
        loop = asyncio.get_running_loop()
        waiter = _BatchWaiter(loop, len(records))
        deadline = loop.time() + timeout
        try:
            await asyncio.wait_for(loop.run_in_executor(self._executor, self._send_all, records, waiter), timeout)
            error = await asyncio.wait_for(asyncio.shield(waiter.future), max(deadline - loop.time(), 0.001))
        except TimeoutError:
            waiter.abandoned = True
            error = AckTimeout(f"no ack within {timeout:.0f}s")
        if error is None:
            await self._set_health(True)
            return
        if not isinstance(error, RECORD_ERRORS):
            await self._down(error, waiter.generation)
        raise ProduceFailed(str(error) if isinstance(error, AckTimeout) else repr(error)) from error

    async def _down(self, error: BaseException, generation: int | None) -> None:
        if self._closed:
            return
        # Queued, not awaited: the caller answers now; the next batch runs after it.
        asyncio.get_running_loop().run_in_executor(self._executor, self._discard, error, generation)
        await self._set_health(False, error)
        if self._recovery is None or self._recovery.done():
            self._recovery = asyncio.create_task(self._recover(), name="collector-producer-recovery")

    async def _recover(self) -> None:
        """Probe the broker with growing pauses until it answers or a batch got through."""
        loop = asyncio.get_running_loop()
        pause, most = self._probe_backoff
        while not self.healthy and not self._closed:
            await asyncio.sleep(pause)
            if self.healthy or self._closed:
                return
            try:
                await loop.run_in_executor(self._executor, self._probe)
            except Exception as exc:  # noqa: BLE001 - still down: probe again later
                pause = min(pause * 2, most)
                log.info("broker still unreachable", extra={"error": repr(exc), "next_probe_s": pause})
            else:
                await self._set_health(True)

    async def _set_health(self, healthy: bool, error: BaseException | None = None) -> None:
        if healthy == self.healthy:
            return
        self.healthy = healthy
        if healthy:
            log.info("producer delivers again")
        else:
            log.warning("producer cannot deliver", extra={"error": repr(error)})
        if self._on_health is not None:
            await self._on_health(healthy)

    async def close(self) -> None:
        self._closed = True
        if self._recovery is not None:
            self._recovery.cancel()
        loop = asyncio.get_running_loop()

        def _close() -> None:
            producer, self._producer = self._producer, None
            if producer is None:
                return
            try:
                producer.close(timeout=5)
            except kerr.KafkaTimeoutError:
                log.warning("closing the producer with records not acked (their callers got UNAVAILABLE)")
                close_now(producer)

        await loop.run_in_executor(self._executor, _close)
        self._executor.shutdown(wait=True)
