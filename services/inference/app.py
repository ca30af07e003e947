"""The inference process: InferenceService over gRPC, models from the store."""

from __future__ import annotations

import asyncio
import logging

import redis
import redis.asyncio as aioredis

from loopwise import kafka as lkafka
from loopwise import logs, redis_keys
from loopwise.errors import ModelError
from loopwise.grpcserver import GrpcService, add_service, run_until_signal
from loopwise.modelstore import ModelStore
from loopwise.v1 import inference_pb2

from . import models
from .impressions import ImpressionEmitter
from .metrics import InferenceMetrics
from .rewrites import RewriteTable
from .servicer import InferenceServicer
from .settings import InferenceSettings

log = logging.getLogger(__name__)


class Inference:
    """Build with settings, `await start()`, `await stop()`.

    Health stays NOT_SERVING until at least one model of a served tenant has
    loaded and passed its warm-up; a missing or corrupt artifact is logged
    with its reason and the service keeps running (and retrying), never
    crash-looping.
    """

    def __init__(self, settings: InferenceSettings) -> None:
        self.settings = settings
        self.metrics = InferenceMetrics()
        self.store = ModelStore(settings.model_store)
        self.registry = models.ModelRegistry()
        self.redis = aioredis.Redis.from_url(settings.redis_url, socket_timeout=1.0,
                                             socket_connect_timeout=1.0)
        self.emitter = (ImpressionEmitter(settings.kafka_bootstrap, settings.topics.impressions, self.metrics,
                                          buffer=settings.impression_buffer, batch=settings.impression_batch,
                                          compression=settings.compression)
                        if settings.emit_impressions else None)
        self.servicer = InferenceServicer(settings, self.registry, self.emitter, RewriteTable(self.redis),
                                          self.metrics)
        service = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"]
        self.grpc = GrpcService(host=settings.grpc_host, port=settings.grpc_port,
                                metrics_port=settings.metrics_port, registry=self.metrics.registry,
                                service_names=[service.full_name])
        add_service(self.grpc.server, self.servicer, service)
        self._loader: asyncio.Task | None = None

    @property
    def port(self) -> int:
        return self.grpc.port

    async def start(self) -> None:
        await self.grpc.start()
        if self.emitter is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(
                    None, lambda: lkafka.ensure_topics(self.settings.kafka_bootstrap,
                                                       [self.settings.topics.impressions],
                                                       self.settings.topic_partitions, timeout=5.0))
            except Exception as exc:  # noqa: BLE001 - impressions wait for the broker; Rank does not
                log.warning("could not ensure the impressions topic", extra={"error": repr(exc)})
            self.emitter.start()
        self._loader = asyncio.create_task(self._load_until_ready(), name="model-loader")
        log.info("inference started", extra={"port": self.grpc.port, "metrics_port": self.grpc.metrics_port})

    async def _load_until_ready(self) -> None:
        delay = 1.0
        while True:
            await asyncio.get_running_loop().run_in_executor(None, self.load_all)
            if len(self.registry):
                await self.grpc.set_serving(True)
                log.info("inference serving", extra={"models": [f"{m.tenant}/{m.model}@{m.version}"
                                                                for m in self.registry.items()]})
                return
            log.error("no loadable model yet; health stays NOT_SERVING",
                      extra={"store": self.settings.model_store, "retry_s": delay})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    def _pointer(self, tenant: str, model: str) -> str | None:
        try:
            client = redis.Redis.from_url(self.settings.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
            with client:
                raw = client.get(redis_keys.model_pointer(tenant, model))
            return raw.decode() if raw else None
        except redis.RedisError as exc:
            log.warning("model pointer unreadable; using the newest version",
                        extra={"tenant": tenant, "model": model, "error": repr(exc)})
            return None

    def load_all(self) -> None:
        """Load the current version of every (tenant, model) in the store (blocking)."""
        for tenant, model in self.store.models():
            if tenant not in self.settings.tenants:
                continue
            version = self._pointer(tenant, model) or self.store.latest(tenant, model)
            current = self.registry.get(tenant, model)
            if version is None or (current is not None and current.version == version):
                continue
            try:
                loaded = models.load(self.store, tenant, model, version, threads=self.settings.ort_threads)
            except ModelError as exc:
                self.metrics.model_loads.labels(tenant, model, "refused").inc()
                log.error("model refused", extra={"tenant": tenant, "model": model, "version": version,
                                                  "reason": exc.message})
                continue
            self.registry.put(loaded)
            self.metrics.model_loads.labels(tenant, model, "ok").inc()
            self.metrics.model_info.labels(tenant, model).info({"version": version})
            self.metrics.models_serving.set(len(self.registry))
            log.info("model loaded", extra={"tenant": tenant, "model": model, "version": version})

    async def stop(self) -> None:
        if self._loader is not None:
            self._loader.cancel()
        await self.grpc.stop(self.settings.grace_s, self.settings.drain_s)
        if self.emitter is not None:
            await self.emitter.stop()
        await self.redis.aclose()


def main() -> None:
    settings = InferenceSettings.from_env()
    logs.setup(settings.log_level)
    run_until_signal(lambda: Inference(settings))
