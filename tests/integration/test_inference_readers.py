"""Inference's Kafka readers on the real broker: one reader of the errors topic per
replica (the error memory and the deltas' guard share its decoded batches),
every reader built with the service's own security settings, and the
announcements reader skipping to the end after a failure."""

from __future__ import annotations

import asyncio
import time

import pytest
from kafka import KafkaProducer

from loopwise.inference import topic_reader
from loopwise.inference.topic_reader import TopicReader
from loopwise.settings import BaseSettings
from loopwise.topics import ensure_topics
from loopwise.v1 import learning_pb2

from ..recorders import consumer_recorder
from .test_inference import target, wait_serving

LIGHT = {"emit_impressions": False, "pointer_poll_s": 30.0, "store_scan_s": 30.0}


def wait_until(predicate, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def sample(service, name: str, **labels: str) -> float:
    return service.metrics.registry.get_sample_value(name, labels) or 0.0


def error(i: int, request_id: str = "r") -> bytes:
    return learning_pb2.PredictionError(
        error_id=f"e{i}", tenant="default", model="ranker", version="v1", request_id=f"{request_id}{i}",
        candidate_id=f"c{i}", label=float(i % 2), served_score=0.3, key=[0.1] * 64,
        time_ms=int(time.time() * 1000)).SerializeToString()


@pytest.mark.parametrize("memory, deltas, readers", [
    ("shadow", True, 1), ("off", True, 1), ("shadow", False, 1), ("off", False, 0)])
def test_one_errors_topic_reader_per_replica(start_inference, topics, monkeypatch, memory, deltas, readers):
    """The errors topic is read once when the memory or the guard needs it, never when neither does."""
    started: list[str] = []
    original = TopicReader.start
    monkeypatch.setattr(TopicReader, "start", lambda self: (started.append(self.topic), original(self))[1])
    service = start_inference(error_memory_mode=memory, deltas=deltas, **LIGHT)
    wait_serving(target(service))
    assert started.count(topics.errors) == readers


def test_the_memory_and_the_guard_share_each_decoded_error(start_inference, broker, topics):
    """Every error decoded once; both the memory (warm-up included) and the guard see it; the guard
    judges none of them (no call of its own)."""
    ensure_topics(broker, topics.all(), 2)
    producer = KafkaProducer(bootstrap_servers=broker)
    for i in range(10):  # before the replica starts: read in the memory's warm-up
        producer.send(topics.errors, error(i, "old")).get(10)
    service = start_inference(error_memory_warmup_s=300.0, **LIGHT)
    wait_serving(target(service))
    labelled: list[str] = []
    label = service.delta_guard.label
    service.delta_guard.label = lambda e: (labelled.append(e.request_id), label(e))[1]
    wait_until(service.errors.ready.is_set, what="the errors topic assigned")
    for i in range(10, 20):
        producer.send(topics.errors, error(i, "new")).get(10)
    producer.send(topics.errors, b"\xff\xff not a PredictionError").get(10)
    producer.close()
    wait_until(lambda: sample(service, "loopwise_inference_errors_read_total", result="decoded") >= 20,
               what="the errors decoded")
    wait_until(lambda: sample(service, "loopwise_inference_errors_read_total", result="malformed") >= 1,
               what="the malformed record counted")
    # A batch is counted as decoded before its sinks run: wait for both sinks, then check exact counts.
    wait_until(lambda: sample(service, "loopwise_inference_memory_writes_total", tenant="default", model="ranker",
                              result="written") >= 20 and len(labelled) >= 20, what="both sinks fed")
    assert sample(service, "loopwise_inference_errors_read_total", result="decoded") == 20
    assert sample(service, "loopwise_inference_memory_writes_total", tenant="default", model="ranker",
                  result="written") == 20
    assert sorted(labelled) == sorted([f"old{i}" for i in range(10)] + [f"new{i}" for i in range(10, 20)])
    assert not service.delta_guard._windows  # noqa: SLF001 - nothing judged: none of them was its call


def test_every_reader_uses_the_service_settings(start_inference, monkeypatch):
    """TLS/SASL come from the service's settings, not from the environment."""
    monkeypatch.setenv("LOOPWISE_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
    built: list[dict] = []
    monkeypatch.setattr(topic_reader, "AIOKafkaConsumer", consumer_recorder(built))
    service = start_inference(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="svc",
                              kafka_sasl_password="pw", emit_impressions=False)
    wait_serving(target(service))
    clients = {"loopwise-inference-errors", "loopwise-inference-deltas", "loopwise-inference-models"}
    wait_until(lambda: clients <= {kw["client_id"] for kw in built}, what="every reader built")
    assert all(kw.get("security_protocol") == "SASL_PLAINTEXT" and kw.get("sasl_plain_username") == "svc"
               for kw in built), built


def run_reader(loop_thread, broker: str, topic: str, *, resume: bool) -> list[bytes]:
    """Records A, B (produced while the reader is down after failing on A), C: what it handled."""
    ensure_topics(broker, [topic], 1)
    producer = KafkaProducer(bootstrap_servers=broker)
    seen: list[bytes] = []
    failed = asyncio.Event()

    async def handle(records: list) -> None:
        for record in records:
            seen.append(record.value)
            if record.value == b"A" and not failed.is_set():
                failed.set()
                producer.send(topic, b"B").get(10)  # while the reader is down
                raise RuntimeError("connection lost")

    async def build() -> TopicReader:
        reader = TopicReader(BaseSettings(kafka_bootstrap=broker), topic, handle, from_start=False,
                             name="test-reader", resume=resume)
        reader.start()
        return reader

    reader = loop_thread.run(build())
    try:
        wait_until(reader.ready.is_set, what="the reader assigned")
        producer.send(topic, b"A").get(10)
        wait_until(failed.is_set, what="the failure")
        wait_until(lambda: not reader.ready.is_set(), what="the reader down")
        wait_until(reader.ready.is_set, what="the reader back")
        producer.send(topic, b"C").get(10)
        wait_until(lambda: b"C" in seen, what="C read")
    finally:
        producer.close()
        loop_thread.run(reader.stop())
    return seen


def test_a_reader_resumes_after_a_failure(loop_thread, broker, topics):
    assert run_reader(loop_thread, broker, topics.errors, resume=True) == [b"A", b"A", b"B", b"C"]


def test_a_reader_without_resume_skips_to_the_end_after_a_failure(loop_thread, broker, topics):
    assert run_reader(loop_thread, broker, topics.errors, resume=False) == [b"A", b"C"]


def test_the_watcher_skips_announcements_made_while_it_was_down(start_inference, broker, topics):
    """After a failure the announcements reader starts at the end again (a wake-up is only worth it live)."""
    service = start_inference(**LIGHT)
    wait_serving(target(service))
    ready = service.watcher.announcements_ready
    wait_until(ready.is_set, what="the models topic followed")
    producer = KafkaProducer(bootstrap_servers=broker)
    seen: list[str] = []
    handle = service.watcher.handle_announcement

    def announcement(version: str) -> bytes:
        return learning_pb2.ModelAnnouncement(tenant="default", model="ranker", version=version,
                                              action="published").SerializeToString()

    def failing(data: bytes) -> None:
        version = learning_pb2.ModelAnnouncement.FromString(data).version
        seen.append(version)
        if version == "v90":
            producer.send(topics.models, announcement("v91")).get(10)  # while the reader is down
            raise RuntimeError("connection lost")
        handle(data)

    service.watcher.handle_announcement = failing
    try:
        producer.send(topics.models, announcement("v90")).get(10)
        wait_until(lambda: seen, what="the first announcement")
        wait_until(lambda: not ready.is_set(), what="the reader down")
        wait_until(ready.is_set, what="the reader back")
        producer.send(topics.models, announcement("v92")).get(10)
        wait_until(lambda: "v92" in seen, what="the next announcement")
    finally:
        producer.close()
    assert seen == ["v90", "v92"]
