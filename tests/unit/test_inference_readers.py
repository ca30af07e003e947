"""Inference's topic readers without a broker: the errors topic decoded once for its
sinks, the deltas' guard passing over errors of calls it does not remember, and a
`TopicReader` built with its service's security settings, not the environment's."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np

from loopwise.inference import topic_reader
from loopwise.inference.deltas import DeltaRegistry, Snapshot
from loopwise.inference.deltas_guard import DeltaGuard
from loopwise.inference.errors_reader import ErrorsReader, decode
from loopwise.inference.metrics import InferenceMetrics
from loopwise.inference.topic_reader import TopicReader
from loopwise.settings import BaseSettings
from loopwise.v1 import learning_pb2

from ..recorders import consumer_recorder


def record(value: bytes, timestamp: int = 0) -> SimpleNamespace:
    return SimpleNamespace(value=value, timestamp=timestamp)


def label(request_id: str, y: float = 1.0) -> learning_pb2.PredictionError:
    return learning_pb2.PredictionError(tenant="default", model="ranker", version="v2", request_id=request_id,
                                        candidate_id="a", label=y)


def test_each_batch_is_decoded_once_for_every_sink():
    metrics = InferenceMetrics()
    got: list[tuple[list[str], list[int]]] = []
    sinks = [lambda errors, produced: got.append(([e.request_id for e in errors], produced))] * 2
    reader = ErrorsReader(BaseSettings(), "errors", sinks, metrics)
    asyncio.run(reader._on_batch([record(label("r1").SerializeToString(), 5), record(b"\xff\xff"),
                                  record(label("r2").SerializeToString(), 7)]))
    assert got == [(["r1", "r2"], [5, 7])] * 2
    assert metrics.registry.get_sample_value("loopwise_inference_errors_read_total", {"result": "decoded"}) == 2
    assert metrics.registry.get_sample_value("loopwise_inference_errors_read_total", {"result": "malformed"}) == 1


def test_decode_keeps_the_errors_and_their_times_aligned():
    metrics = InferenceMetrics()
    errors, produced = decode([record(b"\xff\xff", 1), record(label("r3").SerializeToString(), 9)], metrics)
    assert [e.request_id for e in errors] == ["r3"] and produced == [9]


def test_the_guard_passes_over_errors_of_calls_it_does_not_remember():
    """The memory's warm-up errors reach the guard too: none is a call it remembers, none is judged."""
    metrics = InferenceMetrics()
    guard = DeltaGuard(DeltaRegistry(("default",)), metrics, min_labels=10)
    guard.labels([label(f"old{i}", float(i % 2)) for i in range(50)], [0] * 50)
    assert not guard._windows  # noqa: SLF001
    assert metrics.registry.get_sample_value("loopwise_inference_delta_online_auc",
                                             {"tenant": "default", "model": "ranker", "scorer": "base"}) is None
    # a call it remembers is judged whichever way its label comes
    guard.remember("now1", "default", "ranker", "v2", Snapshot("v2", "s", 1, None), ["a"],
                   np.array([0.3]), np.array([0.4]))
    guard.labels([label("now1")], [0])
    assert list(guard._windows) == [("default", "ranker", "v2", "s")]  # noqa: SLF001


def test_a_topic_reader_uses_its_service_settings_not_the_environment(monkeypatch):
    monkeypatch.setenv("LOOPWISE_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
    built: list[dict] = []
    monkeypatch.setattr(topic_reader, "AIOKafkaConsumer", consumer_recorder(built))
    settings = BaseSettings(kafka_bootstrap="broker:9093", kafka_security_protocol="SASL_PLAINTEXT",
                            kafka_sasl_username="svc", kafka_sasl_password="pw")

    async def one_try() -> None:
        reader = TopicReader(settings, "t", lambda records: None, from_start=False, name="test")
        reader.start()
        while not built:
            await asyncio.sleep(0.01)
        await reader.stop()

    asyncio.run(one_try())
    assert built[0]["bootstrap_servers"] == "broker:9093"
    assert (built[0]["security_protocol"], built[0]["sasl_plain_username"]) == ("SASL_PLAINTEXT", "svc")
