"""The miner's fake-negative mode on the real broker: a shown candidate is a training example
at once, long before its attribution window closes, and a click a positive duplicate."""

from __future__ import annotations

import time
import uuid

import pytest
from kafka import KafkaProducer

from loopwise import codec
from loopwise.client.build import EventFactory, candidates
from loopwise.tools import procs
from loopwise.topics import ensure_topics
from loopwise.v1 import learning_pb2

from .kafka_read import read_records

pytestmark = pytest.mark.slow
FAKE = learning_pb2.FEEDBACK_MODE_FAKE_NEGATIVE


def send(producer: KafkaProducer, topic: str, event) -> None:
    producer.send(topic, key=codec.record_key(event), value=codec.encode(event))


def test_impression_and_click_train_before_the_window_closes(broker, topics, workdir):
    ensure_topics(broker, topics.all(), 2)
    app_id = f"miner-fnw-{uuid.uuid4().hex[:8]}"
    mport = procs.free_port()
    env = {"LOOPWISE_KAFKA_BOOTSTRAP": broker, "LOOPWISE_APP_ID": app_id, "LOOPWISE_TOPIC_PARTITIONS": "2",
           "LOOPWISE_METRICS_PORT": str(mport), "LOOPWISE_ATTRIBUTION_WINDOW_MS": "600000",
           "LOOPWISE_FEEDBACK_MODE": "fnw", "LOOPWISE_CLOSE_INTERVAL_S": "0.2",
           "LOOPWISE_CHANGELOG_CATCH_UP": "true", **topics.env()}
    proc = procs.start_service("loopwise.miner", env, workdir / f"{app_id}.log")
    try:
        procs.wait_ready(f"http://127.0.0.1:{mport}/metrics", 60, proc)
        f = EventFactory("default")
        producer = KafkaProducer(bootstrap_servers=broker)
        imp = f.impression("r-fnw", ["a", "b", "c"], scores=[0.2, 0.7, 0.1])
        imp.impression.candidates.CopyFrom(candidates(["a", "b", "c"]))
        click = f.click("r-fnw", "b", position=2)
        send(producer, topics.impressions, imp)
        send(producer, topics.events, click)
        send(producer, topics.events, click)  # redelivered: no second positive
        producer.flush()
        started = time.monotonic()
        examples = [learning_pb2.Example.FromString(r.value)
                    for r in read_records(broker, topics.examples, want=4, timeout=30, idle=1.5)]
        assert time.monotonic() - started < 40  # the window is ten minutes
        assert sorted((e.candidate_id, e.label) for e in examples) == [
            ("a", 0.0), ("b", 0.0), ("b", 1.0), ("c", 0.0)]
        assert all(e.feedback_mode == FAKE for e in examples)
        assert procs.metric_value(f"http://127.0.0.1:{mport}/metrics", "loopwise_miner_fake_negatives_total") == 3
    finally:
        proc.stop()
