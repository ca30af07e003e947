"""The trainer process: Kafka in, model store + Redis + Kafka out.

- A consumer (group ``LOOPWISE_GROUP_ID``, auto-commit off) reads
  ``loopwise.examples.v1`` and ``loopwise.preferences.v1`` into the replay
  buffer (`replay_buffer.ReplayBuffer`), one stream per (tenant, model, kind). Every
  ``commit_interval_s`` (and when partitions are revoked, and on stop) the
  window is flushed to disk and only then are the offsets committed: a crash
  re-reads records, never skips them, and the window drops the redelivered
  ids. An undecodable record is dead-lettered with its reason.
- A trigger checks every ``trainer_check_s`` each (tenant, model): a run is
  due after ``trainer_every_n`` new examples or ``trainer_interval_s`` seconds
  with new ones, whichever first, once the window holds
  ``trainer_min_examples``.
- A run (`runner.Runner`, in a worker thread, one at a time) builds the
  inputs with the production model's feature spec, trains, evaluates against
  production, exports and checks the ONNX model (`train.run`) and publishes it
  when it passes (`publish.publish`: store, weights, Redis pointer); the
  trainer then announces ``published`` or ``refused`` on ``loopwise.models.v1``.
- Between full runs (``LOOPWISE_DELTAS``), every new example also goes to
  `deltas_loop.DeltaLoop`: small steps on the serving version's sparse tables,
  published as deltas on ``loopwise.deltas.v1``.
- `watchdog.Watchdog` (``LOOPWISE_TRAINER_WATCHDOG``) moves the pointer back when
  production's online AUC falls below the static cold-start model's.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any

import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from google.protobuf.message import DecodeError

from loopwise import logs, runtime, stamps
from loopwise.kafka_security import aiokafka_security
from loopwise.modelstore import ModelStore
from loopwise.topics import ensure_topics
from loopwise.v1 import learning_pb2

from . import publish as pub
from . import records
from .data import example_time
from .deltas_loop import DeltaLoop
from .metrics import TrainerMetrics
from .replay_buffer import ReplayBuffer
from .runner import Runner, RunResult
from .settings import TrainerSettings
from .train import use_threads
from .watchdog import Watchdog

log = logging.getLogger(__name__)
FETCH_WAIT_MS = 100  # examples feed the deltas within a second: not aiokafka's 500 ms default


class _Revoked(ConsumerRebalanceListener):
    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    async def on_partitions_revoked(self, revoked: Any) -> None:
        if not revoked:
            return
        try:
            await self.trainer.commit()
        except Exception as exc:  # noqa: BLE001 - the window is flushed; the next owner re-reads at worst
            log.warning("commit on revocation failed", extra={"error": repr(exc)})
        for tp in revoked:
            self.trainer._consumed.pop(tp, None)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        pass


class Trainer:
    """Build with settings, ``await start()``, ``await stop()``."""

    def __init__(self, settings: TrainerSettings) -> None:
        self.settings = settings
        self.metrics = TrainerMetrics()
        self.store = ModelStore(settings.model_store)
        self.window = ReplayBuffer(Path(settings.data_dir) / "window", settings.trainer_window_rows,
                                   settings.trainer_segment_rows)
        self.redis = redis.Redis.from_url(settings.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self.tenants = frozenset(settings.tenants)
        self.kinds = {settings.topics.examples: "examples", settings.topics.preferences: "preferences"}
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.results: list[RunResult] = []
        # /metrics, /healthz and /readyz (ready: loopwise_trainer_ready, until the drain).
        self.http = runtime.MetricsServer(
            self.metrics.registry, ready=runtime.ready_metric(self.metrics.registry, "loopwise_trainer_ready"))
        self._new: dict[tuple[str, str], int] = {}
        self._last_run: dict[tuple[str, str], float] = {}
        self._uncommitted = 0
        # Next offset per partition of the records handed to the window (what a commit may cover).
        self._consumed: dict[TopicPartition, int] = {}
        self._last_commit = time.monotonic()
        self._commit_lock = asyncio.Lock()
        self._stopping = threading.Event()
        self._tasks: list[asyncio.Task] = []
        self._started = time.monotonic()
        self.metrics.consumer_lag.source = self.lag
        self.deltas = DeltaLoop(self)
        self.watchdog = Watchdog(self)
        self.runner = Runner(settings, self.metrics, self.store, self.redis, self.window, self.watchdog.static_model,
                             self._stopping.is_set)

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        log.info("torch threads", extra={"threads": use_threads(s)})  # delta steps and full runs alike
        await loop.run_in_executor(None, self.window.open)
        for tenant, model in self.window.keys():
            self._update_window_gauges(tenant, model)
        self.http.start(s.metrics_host, s.metrics_port)
        try:
            await loop.run_in_executor(None, lambda: ensure_topics(
                s.kafka_bootstrap, [s.topics.examples, s.topics.preferences, s.topics.models, s.topics.deadletter,
                                    s.topics.deltas], s.topic_partitions, settings=s))
        except Exception as exc:  # noqa: BLE001 - topics may be auto-created or made by an operator
            log.warning("could not ensure the trainer's topics", extra={"error": repr(exc)})
        if s.deltas:  # before the consumer: ready (an assignment seen) only once the delta bases are built
            await self.deltas.prepare()
        session_ms = int(s.kafka_session_timeout_s * 1000)
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap, group_id=s.group_id, enable_auto_commit=False,
            auto_offset_reset="earliest", session_timeout_ms=session_ms, heartbeat_interval_ms=max(session_ms // 3, 100),
            max_poll_records=s.poll_records, client_id="loopwise-trainer",
            fetch_max_wait_ms=FETCH_WAIT_MS, **aiokafka_security(s))
        self.consumer.subscribe([s.topics.examples, s.topics.preferences], listener=_Revoked(self))
        await self.consumer.start()
        self.producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap, acks="all",
                                         client_id="loopwise-trainer", **aiokafka_security(s))
        await self.producer.start()
        self._started = time.monotonic()
        self._tasks = [asyncio.create_task(self._consume(), name="trainer-consume"),
                       asyncio.create_task(self._trigger(), name="trainer-trigger")]
        if s.deltas:
            self._tasks.append(asyncio.create_task(self.deltas.run(), name="trainer-deltas"))
        if s.trainer_watchdog:
            self._tasks.append(asyncio.create_task(self.watchdog.run(), name="trainer-watchdog"))
        log.info("trainer started", extra={"group": s.group_id, "metrics_port": self.http.port,
                                           "window_rows": {f"{t}/{m}": self.window.rows(t, m, "examples")
                                                           for t, m in self.window.keys()}})

    async def stop(self) -> None:
        self.http.drain()  # /readyz: 503 from now on
        self._stopping.set()  # a run in progress stops at its next batch
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        if self.consumer is not None:
            try:
                await self.commit()
            except Exception as exc:  # noqa: BLE001 - the window is flushed; offsets are re-read at worst
                log.warning("final commit failed", extra={"error": repr(exc)})
            await self.consumer.stop()
        if self.producer is not None:
            await self.producer.stop()
        self.http.close()
        self.redis.close()
        log.info("trainer stopped")

    # -- consuming ------------------------------------------------------------------------
    async def commit(self) -> None:
        """Flush the window to disk, then commit the offsets of what was flushed.

        The offsets are taken before the flush: records the consumer hands over
        while the flush runs are not covered by this commit (they may or may not
        be in this flush; the next commit covers them)."""
        async with self._commit_lock:
            offsets = dict(self._consumed)
            uncommitted, self._uncommitted = self._uncommitted, 0
            try:
                await asyncio.get_running_loop().run_in_executor(None, self.window.flush)
                if uncommitted and self.consumer is not None:
                    assigned = self.consumer.assignment()
                    offsets = {tp: off for tp, off in offsets.items() if tp in assigned}
                    if offsets:
                        await self.consumer.commit(offsets)
                        self.metrics.commits.inc()
            except BaseException:
                self._uncommitted += uncommitted  # the next commit tries again
                raise
            self._last_commit = time.monotonic()
            self.metrics.window_dropped.set(self.window.dropped_rows)
            for tenant, model in self.window.keys():
                self._update_window_gauges(tenant, model)

    def lag(self) -> dict[tuple[str, int], int]:
        """{(topic, partition): high-water mark - next offset} of the partitions read from and still
        assigned (called from the metrics thread; reads only what the consumer last fetched)."""
        consumer, out = self.consumer, {}
        for tp, read in list(self._consumed.items()):
            try:
                high = consumer.highwater(tp) if consumer is not None else None
            except Exception:  # noqa: BLE001 - revoked meanwhile
                continue
            if high is not None:
                out[(tp.topic, tp.partition)] = high - read
        return out

    async def _consume(self) -> None:
        assert self.consumer is not None
        while not self._stopping.is_set():
            try:
                batch = await self.consumer.getmany(timeout_ms=200, max_records=self.settings.poll_records)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the broker comes back; keep polling
                log.warning("poll failed", extra={"error": repr(exc)})
                await asyncio.sleep(1.0)
                continue
            if self.consumer.assignment():
                self.metrics.ready.set(1)
            for tp, fetched in batch.items():
                for record in fetched:
                    self._ingest(record)
                if fetched:
                    self._consumed[tp] = fetched[-1].offset + 1
                    self._uncommitted += len(fetched)
            if self._uncommitted and (time.monotonic() - self._last_commit >= self.settings.commit_interval_s
                                      or self.window.pending() >= self.settings.trainer_segment_rows):
                try:
                    await self.commit()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - e.g. a rebalance in flight: retried next time
                    log.warning("flush or commit failed", extra={"error": repr(exc)})
                    self._last_commit = time.monotonic()

    def _ingest(self, record: Any) -> None:
        kind = self.kinds.get(record.topic)
        if kind is None:
            return
        try:
            if kind == "examples":
                msg: Any = learning_pb2.Example.FromString(record.value or b"")
                record_id, at_ms = msg.example_id, example_time(msg)
            else:
                msg = learning_pb2.PreferencePair.FromString(record.value or b"")
                record_id, at_ms = msg.pair_id, msg.time_ms
        except DecodeError as exc:
            self._dead(record, "undecodable", str(exc))
            self.metrics.records.labels(kind, "dead").inc()
            return
        if not msg.tenant or msg.tenant not in self.tenants:
            self.metrics.records.labels(kind, "other_tenant").inc()
            return
        bad = records.problem(kind, msg)
        if bad is not None:
            self._dead(record, *bad)
            self.metrics.records.labels(kind, "dead").inc()
            return
        model = msg.model or self.settings.default_model
        record_id = record_id or f"{record.topic}:{record.partition}:{record.offset}"
        added = self.window.add(msg.tenant, model, kind, record_id, at_ms, record.value)
        self.metrics.records.labels(kind, "added" if added else "duplicate").inc()
        if added and kind == "examples":
            key = (msg.tenant, model)
            self._new[key] = self._new.get(key, 0) + 1
            if self.settings.deltas:
                self.deltas.add(msg.tenant, model, record.value, record.timestamp or stamps.now_ms(), at_ms)
            if self.settings.trainer_watchdog:
                self.watchdog.add(msg.tenant, model, msg, record.value)

    def _dead(self, record: Any, reason: str, detail: str) -> None:
        log.warning("dead-lettered", extra={"reason": reason, "detail": detail, "topic": record.topic,
                                            "partition": record.partition, "offset": record.offset})
        if self.producer is None:
            return
        letter = learning_pb2.DeadLetter(topic=record.topic, partition=record.partition, offset=record.offset,
                                         reason=reason, detail=detail, payload=record.value or b"",
                                         time_ms=stamps.now_ms(), service="trainer")
        asyncio.ensure_future(self.producer.send(self.settings.topics.deadletter, letter.SerializeToString(),
                                                 key=record.key))

    def _update_window_gauges(self, tenant: str, model: str) -> None:
        for kind in ("examples", "preferences"):
            self.metrics.window_rows.labels(tenant, model, kind).set(self.window.rows(tenant, model, kind))

    # -- triggering -----------------------------------------------------------------------
    def due(self, tenant: str, model: str, now: float | None = None) -> bool:
        s = self.settings
        now = time.monotonic() if now is None else now
        key = (tenant, model)
        new = self._new.get(key, 0)
        if self.window.rows(tenant, model, "examples") < s.trainer_min_examples or new == 0:
            return False
        since = now - self._last_run.get(key, self._started)
        return new >= s.trainer_every_n or since >= s.trainer_interval_s

    async def _trigger(self) -> None:
        while not self._stopping.is_set():
            await asyncio.sleep(self.settings.trainer_check_s)
            for tenant, model in self.window.keys():
                if tenant in self.tenants and self.due(tenant, model):
                    try:
                        await self.run_now(tenant, model)
                    except asyncio.CancelledError:
                        raise
                    except Exception:  # noqa: BLE001 - logged; the next trigger tries again
                        log.exception("training run could not start", extra={"tenant": tenant, "model": model})

    async def run_now(self, tenant: str, model: str) -> RunResult:
        """One run for (tenant, model): flush, train in a thread, announce."""
        key = (tenant, model)
        self._new[key] = 0  # what arrives during the run counts toward the next one
        self._last_run[key] = time.monotonic()
        try:
            await self.commit()  # not required (a run reads buffered records too), but cheap and durable
        except Exception as exc:  # noqa: BLE001
            log.warning("flush or commit before the run failed", extra={"error": repr(exc)})
        result = await asyncio.to_thread(self.runner.train_and_publish, tenant, model)
        self._last_run[key] = time.monotonic()
        self.results.append(result)
        if result.action in ("published", "refused") and self.producer is not None:
            ann = pub.announcement(tenant, model, result.action, result.version, result.previous_version,
                                   result.reason, result.figures)
            try:
                await self.producer.send_and_wait(self.settings.topics.models, ann.SerializeToString(),
                                                  key=f"{tenant}|{model}".encode())
            except Exception as exc:  # noqa: BLE001 - the store and the pointer are the truth
                log.error("announcement failed", extra={"tenant": tenant, "model": model, "error": repr(exc)})
        return result


def main() -> None:
    settings = TrainerSettings.from_env()
    logs.setup(settings.log_level)
    runtime.run_until_signal(lambda: Trainer(settings))
