"""The collector process: FeedbackService over gRPC, events to Kafka."""

from __future__ import annotations

import asyncio
import logging

from loopwise import logs
from loopwise.grpcserver import GrpcService, add_service
from loopwise.runtime import run_until_signal
from loopwise.topics import ensure_topics
from loopwise.v1 import feedback_pb2

from .metrics import CollectorMetrics
from .producer import AckedProducer
from .servicer import FeedbackServicer
from .settings import CollectorSettings

log = logging.getLogger(__name__)


class Collector:
    """Build with settings, `await start()`, `await stop()`."""

    def __init__(self, settings: CollectorSettings) -> None:
        self.settings = settings
        self.metrics = CollectorMetrics()
        self.producer = AckedProducer(settings.kafka_bootstrap, compression=settings.compression,
                                      linger_ms=settings.linger_ms,
                                      on_recreate=self.metrics.producer_recreated.inc,
                                      on_health=lambda up: self.grpc.set_serving(up), settings=settings)
        self.servicer = FeedbackServicer(settings, self.producer, self.metrics)
        service = feedback_pb2.DESCRIPTOR.services_by_name["FeedbackService"]
        self.grpc = GrpcService(host=settings.grpc_host, port=settings.grpc_port,
                                metrics_host=settings.metrics_host, metrics_port=settings.metrics_port,
                                registry=self.metrics.registry, service_names=[service.full_name],
                                settings=settings)
        add_service(self.grpc.server, self.servicer, service)

    @property
    def port(self) -> int:
        return self.grpc.port

    async def start(self) -> None:
        await self.grpc.start()
        names = [self.settings.topics.events, self.settings.topics.impressions]
        try:
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: ensure_topics(self.settings.kafka_bootstrap, names,
                                            self.settings.topic_partitions, timeout=5.0,
                                            settings=self.settings))
        except Exception as exc:  # noqa: BLE001 - the broker may come later; produce will tell
            log.warning("could not ensure topics", extra={"error": repr(exc)})
        await self.grpc.set_serving(self.producer.healthy)
        log.info("collector serving", extra={"port": self.grpc.port, "metrics_port": self.grpc.metrics_port,
                                             "kafka": self.settings.kafka_bootstrap})

    async def stop(self) -> None:
        await self.grpc.stop(self.settings.grace_s, self.settings.drain_s)
        await self.producer.close()


def main() -> None:
    settings = CollectorSettings.from_env()
    logs.setup(settings.log_level)
    run_until_signal(lambda: Collector(settings))
