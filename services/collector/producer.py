"""An acks=all, idempotent, compressed kafka-python producer awaited from asyncio.

`send_batch` returns once the broker acknowledged every record, or raises
`ProduceFailed`. A producer in a fatal state (its producer id fenced or lost,
as after a broker restart) is closed and replaced, so the next batch goes
through a fresh one; the failed batch is reported to the caller, who retries
with the same event ids.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kafka import KafkaProducer
from kafka import errors as kerr

log = logging.getLogger(__name__)

FATAL = (kerr.OutOfOrderSequenceNumberError, kerr.UnknownProducerIdError, kerr.InvalidProducerEpochError,
         kerr.ProducerFencedError, kerr.InvalidProducerIdMappingError, kerr.IllegalStateError,
         kerr.KafkaConnectionError)


class ProduceFailed(Exception):
    pass


class _BatchWaiter:
    """Counts acks from the producer's I/O thread; wakes the loop once."""

    __slots__ = ("loop", "future", "pending", "error", "lock")

    def __init__(self, loop: asyncio.AbstractEventLoop, n: int) -> None:
        self.loop = loop
        self.future: asyncio.Future = loop.create_future()
        self.pending = n
        self.error: BaseException | None = None
        self.lock = threading.Lock()

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
    )


class AckedProducer:
    def __init__(self, bootstrap: str, *, compression: str = "zstd", linger_ms: int = 2,
                 client_id: str = "loopwise-collector", on_recreate: Any = None) -> None:
        self._config = producer_config(bootstrap, compression=compression, linger_ms=linger_ms,
                                       client_id=client_id)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="collector-send")
        self._producer: KafkaProducer | None = None
        self._on_recreate = on_recreate

    def _get(self) -> KafkaProducer:
        if self._producer is None:
            self._producer = KafkaProducer(**self._config)
        return self._producer

    def _discard(self, why: BaseException) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        log.warning("replacing the producer after a fatal error", extra={"error": repr(why)})
        try:
            producer.close(timeout=0)
        except Exception:  # noqa: BLE001 - closing a broken producer must not fail the caller
            log.debug("close of a broken producer failed", exc_info=True)
        if self._on_recreate:
            self._on_recreate()

    def _send_all(self, records: list[tuple[str, bytes, bytes]], waiter: _BatchWaiter) -> None:
        try:
            producer = self._get()
        except kerr.KafkaError as exc:
            raise ProduceFailed(f"no producer: {exc!r}") from exc
        sent = 0
        try:
            for topic, key, value in records:
                fut = producer.send(topic, key=key, value=value)
                fut.add_callback(waiter.ok)
                fut.add_errback(waiter.fail)
                sent += 1
        except Exception as exc:
            # Records not handed to the producer count as failed.
            for _ in range(len(records) - sent):
                waiter.fail(exc)
            if isinstance(exc, FATAL) or not isinstance(exc, kerr.KafkaError):
                self._discard(exc)

    def _after_failure(self, exc: BaseException) -> None:
        if isinstance(exc, FATAL):
            self._discard(exc)

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
            raise ProduceFailed(f"no ack within {timeout:.0f}s") from None
        if error is not None:
            await loop.run_in_executor(self._executor, self._after_failure, error)
            raise ProduceFailed(repr(error)) from error

    async def close(self) -> None:
        loop = asyncio.get_running_loop()

        def _close() -> None:
            if self._producer is not None:
                self._producer.close(timeout=5)
                self._producer = None

        await loop.run_in_executor(self._executor, _close)
        self._executor.shutdown(wait=True)
