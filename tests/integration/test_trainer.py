"""The trainer on the real broker and Redis: examples in, a validated model
published (store, weights, pointer, announcement); a restarted trainer
resumes from its committed offsets and its on-disk window."""

from __future__ import annotations

import time
import uuid

import pytest

pytest.importorskip("torch")

import redis  # noqa: E402
from kafka import KafkaProducer  # noqa: E402

from loopwise import redis_keys  # noqa: E402
from loopwise.topics import ensure_topics  # noqa: E402
from loopwise.trainer.app import Trainer  # noqa: E402
from loopwise.trainer.settings import TrainerSettings  # noqa: E402
from loopwise.v1 import learning_pb2  # noqa: E402
from tests.unit.test_trainer import make_examples  # noqa: E402

from .kafka_read import read_records  # noqa: E402

pytestmark = pytest.mark.slow


def produce(broker, topic, messages):
    producer = KafkaProducer(bootstrap_servers=broker, acks="all", linger_ms=5)
    try:
        for m in messages:
            producer.send(topic, key=f"{m.tenant}|r|{m.request_id}".encode(), value=m.SerializeToString())
        producer.flush(30)
    finally:
        producer.close()


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def sample(trainer, name, **labels):
    return trainer.metrics.registry.get_sample_value(name, labels) or 0.0


def test_trainer_publishes_and_resumes(broker, redis_url, topics, model_store, loop_thread, tmp_path):
    ensure_topics(broker, topics.all(), 2)
    first = make_examples(3000, seed=5, prefix="a")
    produce(broker, topics.examples, first)
    produce(broker, topics.examples, [learning_pb2.Example()])  # no tenant: skipped, not a crash
    settings = TrainerSettings(
        kafka_bootstrap=broker, redis_url=redis_url, model_store=model_store.url, topics=topics,
        metrics_host="127.0.0.1", metrics_port=0, topic_partitions=2, group_id=f"trainer-{uuid.uuid4().hex[:8]}",
        data_dir=str(tmp_path / "trainer"), commit_interval_s=0.3, trainer_check_s=0.2, trainer_every_n=2500,
        trainer_min_examples=1000, trainer_epochs=2, trainer_batch_size=512, trainer_min_holdout=100,
        trainer_tolerance_ece=0.05, trainer_interval_s=3600, attribution_window_ms=0)
    trainer = loop_thread.start(lambda: Trainer(settings))
    try:
        wait_for(lambda: trainer.results, 90, "a training run")
        result = trainer.results[0]
        assert result.action == "published", result.reason
        assert result.version == "v2" and result.previous_version == "v1"
        assert result.figures["candidate_auc"] > result.figures["production_auc"]
        assert sample(trainer, "loopwise_trainer_runs_total", tenant="default", model="ranker",
                      outcome="published") == 1
        assert sample(trainer, "loopwise_trainer_records_total", kind="examples", outcome="added") == 3000
    finally:
        loop_thread.run(trainer.stop())

    # The store, the weights, the pointer, the announcement.
    manifest = model_store.manifest("default", "ranker", "v2")
    assert manifest.source == "trainer" and manifest.parent_version == "v1"
    assert manifest.metrics["init"] == "prior" and manifest.metrics["decision"] == "published"
    assert (tmp_path / "models" / "default" / "ranker" / "v2" / "weights.pt").exists()
    client = redis.Redis.from_url(redis_url)
    assert client.get(redis_keys.model_pointer("default", "ranker")) == b"v2"
    anns = [learning_pb2.ModelAnnouncement.FromString(r.value)
            for r in read_records(broker, topics.models, want=1, timeout=15)]
    assert [(a.action, a.version, a.previous_version) for a in anns] == [("published", "v2", "v1")]
    assert anns[0].metrics["candidate_auc"] == pytest.approx(result.figures["candidate_auc"])

    # Restart: 500 new examples and 200 redelivered ones; nothing old is re-read.
    produce(broker, topics.examples, make_examples(500, seed=6, prefix="b", t0_ms=1_800_000_000_000))
    produce(broker, topics.examples, first[:200])
    again = loop_thread.start(lambda: Trainer(TrainerSettings(**{
        **settings.__dict__, "trainer_tolerance_auc": 1.0, "trainer_tolerance_gauc": 1.0,
        "trainer_tolerance_logloss": 1.0, "trainer_tolerance_ece": 1.0})))
    try:
        # from disk (the 500 new ones may be in already: the consumer starts with the trainer)
        assert again.window.rows("default", "ranker", "examples") in (3000, 3500)
        wait_for(lambda: sample(again, "loopwise_trainer_records_total", kind="examples", outcome="added")
                 + sample(again, "loopwise_trainer_records_total", kind="examples", outcome="duplicate") >= 700,
                 60, "the new records")
        time.sleep(0.5)
        assert sample(again, "loopwise_trainer_records_total", kind="examples", outcome="added") == 500
        assert sample(again, "loopwise_trainer_records_total", kind="examples", outcome="duplicate") == 200
        assert again.window.rows("default", "ranker", "examples") == 3500
        second = loop_thread.run(again.run_now("default", "ranker"), timeout=120)
        assert second.action == "published" and second.version == "v3" and second.previous_version == "v2"
        assert model_store.manifest("default", "ranker", "v3").metrics["init"] == "warm"
        assert client.get(redis_keys.model_pointer("default", "ranker")) == b"v3"
    finally:
        loop_thread.run(again.stop())
