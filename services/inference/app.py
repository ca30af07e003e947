"""The inference process: InferenceService over gRPC, models from the store."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2
from threadpoolctl import threadpool_limits

from loopwise import logs
from loopwise.grpcserver import GrpcService, add_service
from loopwise.modelstore import ModelStore
from loopwise.runtime import run_until_signal
from loopwise.topics import ensure_topics
from loopwise.v1 import inference_pb2

from . import models
from .deltas import DeltaRegistry
from .deltas_consumer import DeltaConsumer, oldest_serving_ms, publish_status
from .deltas_guard import DeltaGuard
from .errors_reader import ErrorsReader
from .impressions import ImpressionEmitter
from .memory import ErrorConsumer, MemoryBank
from .metrics import InferenceMetrics
from .pending import PendingShows
from .rewrites import RewriteTable
from .servicer import InferenceServicer
from .settings import InferenceSettings
from .watcher import ModelWatcher

log = logging.getLogger(__name__)

# gRPC health service name of the impression pipeline (degraded: NOT_SERVING).
IMPRESSIONS_HEALTH = "loopwise.v1.InferenceService/impressions"


class Inference:
    """Build with settings, `await start()`, `await stop()`.

    Health stays NOT_SERVING until at least one model of a served tenant has
    loaded and passed its warm-up; a missing or corrupt artifact is logged
    with its reason and the service keeps running, never crash-looping.
    Impressions have their own gRPC health status, `IMPRESSIONS_HEALTH`:
    NOT_SERVING while the emitter is degraded (Rank, and the service's
    health and ``/readyz``, stay SERVING: serving works, learning is at risk).
    `ModelWatcher` loads the first versions and hot-swaps later ones;
    `RewriteTable` keeps the rewrite tables in memory; `MemoryBank` holds the
    error memories, fed by `ErrorConsumer` (every replica reads every error)
    and reset by the watcher when a version starts serving. With ``LOOPWISE_DELTAS``,
    `DeltaConsumer` reads the deltas topic, once a model serves, from the creation of the
    oldest version serving, into `DeltaRegistry` (Rank applies the
    serving version's snapshot), `DeltaGuard` judges them on the errors topic's labels,
    and the replica's applied sequence goes to Redis every ``delta_status_s``.
    The errors topic has one reader, `ErrorsReader`, when the memory or the guard
    is on: each error decoded once, for both.
    """

    def __init__(self, settings: InferenceSettings) -> None:
        self.settings = settings
        self.metrics = InferenceMetrics()
        self.store = ModelStore(settings.model_store)
        self.model_registry = models.ModelRegistry(
            lambda tenant, model, version, result: self.metrics.nonfinite_scores.labels(
                tenant, model, version, result).inc())
        self.redis = aioredis.Redis.from_url(settings.redis_url, socket_timeout=1.0,
                                             socket_connect_timeout=1.0)
        self.emitter = (ImpressionEmitter(settings, settings.topics.impressions, self.metrics,
                                          deadletter_topic=settings.topics.deadletter,
                                          buffer=settings.impression_buffer, batch=settings.impression_batch,
                                          compression=settings.compression, retry_s=settings.impression_retry_s,
                                          on_degraded=self._impressions_degraded)
                        if settings.emit_impressions else None)
        self.rewrites = RewriteTable(self.redis, settings.tenants, self.metrics, poll_s=settings.rewrite_poll_s,
                                     full_refresh_s=settings.rewrite_full_refresh_s)
        default, per_model = settings.memory_configs()
        self.memory = MemoryBank(default, per_model, self.metrics, pending=settings.error_memory_pending,
                                 tenants=settings.tenants)
        self.memory_errors = (ErrorConsumer(self.memory, self.metrics, warmup_s=settings.error_memory_warmup_s,
                                            warmup_records=settings.error_memory_warmup_records)
                              if default.mode != "off" or any(c.mode != "off" for c in per_model.values()) else None)
        self.watcher = ModelWatcher(settings, self.store, self.model_registry, self.redis, self.metrics,
                                    on_loaded=self._model_loaded, on_swap=self._serving_version,
                                    deltas_ready=self._deltas_ready)
        self.deltas = self.delta_consumer = self.delta_guard = self.pending = None
        if settings.deltas:
            if settings.pending_step > 0 and settings.feedback_mode == "fnw":
                self.pending = PendingShows(settings.pending_step, settings.pending_max_age_s,
                                            settings.pending_max_held, self.metrics)
            self.deltas = DeltaRegistry(settings.tenants, keep_bases=settings.delta_keep_bases,
                                        max_pending=settings.delta_max_pending)
            self.delta_consumer = DeltaConsumer(settings, settings.topics.deltas, self.deltas,
                                                self.metrics, since=lambda: oldest_serving_ms(self.model_registry),
                                                pending=self.pending)
            self.delta_guard = DeltaGuard(self.deltas, self.metrics, margin=settings.delta_guard_margin,
                                          z=settings.delta_guard_z,
                                          min_labels=settings.delta_guard_min_labels,
                                          window=settings.delta_guard_window, remember=settings.delta_guard_remember)
        self.errors = self._errors_reader()
        self._status_task: asyncio.Task | None = None
        self.servicer = InferenceServicer(settings, self.model_registry, self.emitter, self.rewrites, self.metrics,
                                          self.memory, self.deltas, self.delta_guard, self.pending)
        service = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"]
        self.grpc = GrpcService(host=settings.grpc_host, port=settings.grpc_port,
                                metrics_host=settings.metrics_host, metrics_port=settings.metrics_port,
                                registry=self.metrics.registry, service_names=[service.full_name],
                                settings=settings)
        add_service(self.grpc.server, self.servicer, service)
        self._serving = False

    def _deltas_ready(self, serving: models.LoadedModel, new: models.LoadedModel) -> bool:
        """Whether ``new`` may replace ``serving`` now: its delta stream is live here, or it has
        nothing to wait for (no deltas here, none on the serving version, or it takes none)."""
        if self.deltas is None or not new.takes_deltas or not self.deltas.serving(serving).sequence:
            return True
        return bool(self.deltas.serving(new).sequence) or self.deltas.rolled_back(new.tenant, new.model, new.version)

    @property
    def port(self) -> int:
        return self.grpc.port

    async def start(self) -> None:
        # numpy's BLAS serves only the error memory's per-call products (100 x 64 by 64 x K*L):
        # one thread; a thread pool handing off such small products costs more than it saves
        # (measured on 2 busy cores: 1.5 ms instead of 0.08 ms for 100 candidates).
        threadpool_limits(limits=1, user_api="blas")
        await self.grpc.start()
        names = ([self.settings.topics.impressions, self.settings.topics.deadletter]
                 if self.emitter is not None else []) + (
            [self.settings.topics.models] if self.settings.watch_announcements else []) + (
            [self.settings.topics.errors] if self.errors is not None else []) + (
            [self.settings.topics.deltas] if self.deltas is not None else [])
        if names:
            try:
                await asyncio.get_running_loop().run_in_executor(
                    None, lambda: ensure_topics(self.settings.kafka_bootstrap, names,
                                                self.settings.topic_partitions, timeout=5.0,
                                                settings=self.settings))
            except Exception as exc:  # noqa: BLE001 - impressions and announcements wait for the broker; Rank does not
                log.warning("could not ensure the topics", extra={"topics": names, "error": repr(exc)})
        if self.emitter is not None:
            await self._impressions_degraded(self.emitter.degraded)
            self.emitter.start()
        self.rewrites.start()
        if self.errors is not None:
            self.errors.start()
        self.watcher.start()
        if self.deltas is not None:
            self._status_task = asyncio.create_task(self._delta_status(), name="delta-status")
        log.info("inference started", extra={"port": self.grpc.port, "metrics_port": self.grpc.metrics_port})

    def _errors_reader(self) -> ErrorsReader | None:
        """The errors topic's one reader, for the memory and the guard (None when neither is on).

        With the memory on it starts at the memory's warm-up; the guard judges only the labels of
        calls it remembers, so those older errors pass it by. Without the memory it starts at the
        topic's end.
        """
        memory, guard = self.memory_errors, self.delta_guard
        sinks = ([memory.write] if memory is not None else []) + ([guard.labels] if guard is not None else [])
        if not sinks:
            return None
        return ErrorsReader(self.settings, self.settings.topics.errors, sinks, self.metrics,
                            start_at=memory.warmup_offsets if memory is not None else None,
                            up=(lambda up: self.metrics.memory_consumer_up.set(1 if up else 0))
                            if memory is not None else None)

    async def _delta_status(self) -> None:
        """This replica's applied delta sequence per served model, to Redis (for ``loopwise model show``)."""
        assert self.deltas is not None
        replica = f"{socket.gethostname()}:{os.getpid()}:{self.grpc.port}"
        while True:
            try:
                await publish_status(self.redis, replica, self.model_registry, self.deltas, self.metrics,
                                     ttl_s=3 * self.settings.delta_status_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - only the status is late
                log.warning("delta status not written", extra={"error": repr(exc)})
            await asyncio.sleep(self.settings.delta_status_s)

    async def _impressions_degraded(self, degraded: bool) -> None:
        await self.grpc.health.set(IMPRESSIONS_HEALTH, health_pb2.HealthCheckResponse.NOT_SERVING if degraded
                                   else health_pb2.HealthCheckResponse.SERVING)

    def _serving_version(self, loaded: models.LoadedModel) -> None:
        """A version serves now: its error memory starts (fresh, or the one it had if it was just replaced).
        Its deltas' applied and rolled-back counters exist at 0 from now on, so the alert rules
        (observability/alerts.py) see a replica that applies none and a first rollback."""
        self.memory.serve(loaded.tenant, loaded.model, loaded.version, loaded.manifest.hidden_dim)
        if self.deltas is not None:
            self.metrics.deltas.labels(loaded.tenant, loaded.model, "applied")
            self.metrics.delta_rollbacks.labels(loaded.tenant, loaded.model)

    async def _model_loaded(self) -> None:
        if not self._serving and len(self.model_registry):
            self._serving = True
            if self.delta_consumer is not None:
                self.delta_consumer.start()  # from the oldest serving version's creation
            await self.grpc.set_serving(True)
            log.info("inference serving", extra={"models": [f"{m.tenant}/{m.model}@{m.version}"
                                                            for m in self.model_registry.items()]})

    async def stop(self) -> None:
        await self.watcher.stop()
        if self._status_task is not None:
            self._status_task.cancel()
            await asyncio.wait([self._status_task], timeout=5.0)
        for reader in (self.delta_consumer, self.errors):
            if reader is not None:
                await reader.stop()
        await self.rewrites.stop()
        await self.grpc.stop(self.settings.grace_s, self.settings.drain_s)
        if self.emitter is not None:
            await self.emitter.stop()
        await self.redis.aclose()


def main() -> None:
    settings = InferenceSettings.from_env()
    logs.setup(settings.log_level)
    run_until_signal(lambda: Inference(settings))
