"""The Kafka clients a service builds outside its topic readers (inference's impression
producer, the miner's outbox producer and its changelog catch-up consumer, the
collector's producer and its topic admin) take their bootstrap and TLS/SASL arguments
from the service's settings, not from the environment: a service configured in code (or
two in one process) must not reach the broker in another's clear text. Each client's
constructor is replaced by a recorder that keeps its keyword arguments and fails to start."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace

import kafka.admin
import pytest
from aiokafka import TopicPartition

from loopwise.collector import producer
from loopwise.collector.app import Collector
from loopwise.collector.producer import ProduceFailed
from loopwise.collector.settings import CollectorSettings
from loopwise.inference import impressions
from loopwise.inference.impressions import ImpressionEmitter
from loopwise.inference.metrics import InferenceMetrics
from loopwise.miner import outputs, recovery
from loopwise.miner.outputs import Outbox
from loopwise.miner.recovery import ChangelogCatchUp
from loopwise.settings import BaseSettings

from ..recorders import consumer_recorder

SECURITY = dict(kafka_bootstrap="broker:9093", kafka_security_protocol="SASL_PLAINTEXT",
                kafka_sasl_mechanism="SCRAM-SHA-256", kafka_sasl_username="svc", kafka_sasl_password="pw")
SETTINGS = BaseSettings(**SECURITY)


async def impression_producer(settings: BaseSettings, built: list[dict]) -> None:
    emitter = ImpressionEmitter(settings, "imp", InferenceMetrics(), deadletter_topic="dead")
    emitter.start()  # connects in the background, retrying while the producer cannot start
    while not built:
        await asyncio.sleep(0.01)
    await emitter.stop(0.1)


async def outbox_producer(settings: BaseSettings, built: list[dict]) -> None:
    with pytest.raises(RuntimeError, match="no broker"):
        await Outbox(settings).start()


async def catch_up_consumer(settings: BaseSettings, built: list[dict]) -> None:
    app = SimpleNamespace(consumer=SimpleNamespace(assignment=lambda: {TopicPartition("in", 0)}))
    table = SimpleNamespace(changelog_topic=SimpleNamespace(get_topic_name=lambda: "table-changelog"))
    with pytest.raises(RuntimeError, match="no broker"):
        await ChangelogCatchUp(app, table, ("in",), settings, idle_s=0.1)()


CLIENTS: dict[str, tuple[object, str, Callable]] = {
    "inference impressions": (impressions, "AIOKafkaProducer", impression_producer),
    "miner outbox": (outputs, "AIOKafkaProducer", outbox_producer),
    "miner changelog catch-up": (recovery, "AIOKafkaConsumer", catch_up_consumer),
}


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_the_client_takes_its_service_settings_not_the_environment(client: str, monkeypatch) -> None:
    module, constructor, build = CLIENTS[client]
    monkeypatch.setenv("LOOPWISE_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")  # the environment says clear text
    built: list[dict] = []
    monkeypatch.setattr(module, constructor, consumer_recorder(built))  # a producer is recorded alike
    asyncio.run(build(SETTINGS, built))
    kwargs = built[0]
    assert kwargs["bootstrap_servers"] == "broker:9093"
    assert (kwargs["security_protocol"], kwargs["sasl_mechanism"]) == ("SASL_PLAINTEXT", "SCRAM-SHA-256")
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("svc", "pw")


def test_the_collector_producer_and_topic_admin_take_its_settings(monkeypatch) -> None:
    """kafka-python's clients connect while they are built: each recorder refuses at once."""
    monkeypatch.setenv("LOOPWISE_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
    built: dict[str, list[dict]] = {"admin": [], "producer": []}

    def refusing(kind: str) -> Callable:
        def build(*args, **kwargs):
            built[kind].append(kwargs)
            raise RuntimeError("no broker here")
        return build

    monkeypatch.setattr(kafka.admin, "KafkaAdminClient", refusing("admin"))
    monkeypatch.setattr(producer, "KafkaProducer", refusing("producer"))
    settings = CollectorSettings(**SECURITY, grpc_port=0, metrics_port=-1, grace_s=0.1, drain_s=0.1)

    async def run() -> None:
        collector = Collector(settings)
        await collector.start()  # ensure_topics: the admin is refused, the collector serves on
        try:
            with pytest.raises(ProduceFailed, match="no broker"):
                await collector.producer.send_batch([("events", b"k", b"v")], timeout=5)
        finally:
            await collector.stop()

    asyncio.run(run())
    for kind, kwargs in ((kind, calls[0]) for kind, calls in built.items()):
        assert kwargs["bootstrap_servers"] in ("broker:9093", ["broker:9093"]), kind
        assert (kwargs["security_protocol"], kwargs["sasl_mechanism"]) == ("SASL_PLAINTEXT", "SCRAM-SHA-256"), kind
        assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("svc", "pw"), kind
