"""The miner (a real Faust worker process) on the real broker: impressions and
feedback in, examples, preference pairs, errors and dead letters out."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import Counter

import pytest
from kafka import KafkaProducer

from loopwise import codec, stamps
from loopwise.client import Client
from loopwise.client.build import EventFactory, candidates
from loopwise.tools import procs
from loopwise.topics import ensure_topics
from loopwise.v1 import learning_pb2

from .kafka_read import read_records

pytestmark = pytest.mark.slow
WINDOW_MS = 2000


@pytest.fixture
def start_miner(broker, topics, workdir):
    """``start_miner(app_id=None, window_ms=WINDOW_MS, env=None)`` -> a miner process on fresh
    topics (restartable by app id; ``env``: more settings)."""
    started = []
    ensure_topics(broker, topics.all(), 2)

    def _start(app_id: str | None = None, window_ms: int = WINDOW_MS, env: dict[str, str] | None = None):
        app_id = app_id or f"miner-{uuid.uuid4().hex[:8]}"
        mport = procs.free_port()
        env = {"LOOPWISE_KAFKA_BOOTSTRAP": broker, "LOOPWISE_APP_ID": app_id, "LOOPWISE_TOPIC_PARTITIONS": "2",
               "LOOPWISE_METRICS_PORT": str(mport), "LOOPWISE_GRPC_HOST": "127.0.0.1",
               "LOOPWISE_ATTRIBUTION_WINDOW_MS": str(window_ms), "LOOPWISE_CLOSE_INTERVAL_S": "0.2",
               "LOOPWISE_FEEDBACK_MODE": "window",  # these tests: the window mode (fnw: test_feedback_fnw.py)
               "LOOPWISE_CHANGELOG_CATCH_UP": "true", **topics.env(),  # Tansu under-reports end offsets
               **(env or {})}
        proc = procs.start_service("loopwise.miner", env, workdir / f"{app_id}-{len(started)}.log")
        started.append(proc)
        url = f"http://127.0.0.1:{mport}/metrics"
        procs.wait_ready(url, 60, proc)
        return proc, app_id, url

    yield _start
    for proc in started:
        proc.stop()


def decode(records, cls):
    return [cls.FromString(r.value) for r in records]


def test_rank_and_feedback_become_examples_pairs_and_errors(start_miner, start_collector, start_inference,
                                                           broker, topics):
    start_miner()
    collector, inference = start_collector(), start_inference()
    ids = [f"m{i}" for i in range(5)]
    with Client(f"127.0.0.1:{collector.port}", f"127.0.0.1:{inference.port}") as lw:
        from tests.integration.test_inference import wait_serving

        wait_serving(f"127.0.0.1:{inference.port}")
        ranked = lw.rank(ids, user_id="u1", features={"popularity": [0.1, 0.9, 0.5, 0.3, 0.7],
                                                      "genre": ["a", "b", "c", "d", "e"]})
        served = ranked.top(5)
        third = served[2]
        response = lw.report([lw.events.click(ranked.request_id, third, user_id="u1", position=3, dwell_ms=40_000),
                              lw.events.click("no-such-request", "m1", user_id="u1")])
        assert response.accepted == 2
    examples = decode(read_records(broker, topics.examples, want=5, timeout=30), learning_pb2.Example)
    by_id = {e.candidate_id: e for e in examples}
    assert sorted(by_id) == sorted(ids) and len(examples) == 5
    pos = by_id[third]
    assert pos.label == 1.0 and pos.position == 3 and pos.weight >= 1.0 and pos.version == "v1"
    assert pos.candidate.categorical["genre"] and "popularity" in pos.candidate.numeric
    assert all(by_id[c].label == 0.0 and by_id[c].position == served.index(c) + 1 for c in ids if c != third)
    pairs = decode(read_records(broker, topics.preferences, want=2, timeout=10), learning_pb2.PreferencePair)
    assert {(p.preferred_id, p.other_id) for p in pairs} == {(third, served[0]), (third, served[1])}
    errors = decode(read_records(broker, topics.errors, want=5, timeout=10), learning_pb2.PredictionError)
    assert len(errors) == 5 and all(len(e.key) == 64 for e in errors)
    dead = decode(read_records(broker, topics.deadletter, want=1, timeout=10), learning_pb2.DeadLetter)
    assert [d.reason for d in dead] == ["unknown_request"]


def test_a_click_reaches_the_errors_topic_before_its_window_closes(start_miner, broker, topics):
    """The error memory learns from a click at once: its positive PredictionError is on the
    errors topic while the window (a minute) is still open; the negatives are not yet."""
    start_miner(window_ms=60_000)
    f = EventFactory("default")
    producer = KafkaProducer(bootstrap_servers=broker)
    imp = f.impression("r-now", ["a", "b", "c"], scores=[0.2, 0.7, 0.1])
    imp.impression.candidates.CopyFrom(candidates(["a", "b", "c"]))
    send(producer, topics.impressions, imp)
    send(producer, topics.events, f.click("r-now", "b", position=2))
    producer.flush()
    started = time.monotonic()
    errors = decode(read_records(broker, topics.errors, want=1, timeout=20, idle=1.0), learning_pb2.PredictionError)
    assert time.monotonic() - started < 30  # well inside the 60 s window
    assert [(e.candidate_id, e.label, e.request_id) for e in errors] == [("b", 1.0, "r-now")]
    assert errors[0].served_score == pytest.approx(0.7)


def test_malformed_and_invalid_records_are_dead_lettered_not_fatal(start_miner, broker, topics):
    _, _, url = start_miner()
    f = EventFactory("default")
    producer = KafkaProducer(bootstrap_servers=broker)
    bad_tenant = f.click("r", "c")
    bad_tenant.tenant = "mallory"
    producer.send(topics.events, key=b"k1", value=b"\x00\xff not protobuf")
    producer.send(topics.events, key=b"k2", value=codec.encode(bad_tenant))
    good = f.impression("r-ok", ["a"])
    producer.send(topics.impressions, key=codec.record_key(good), value=codec.encode(good))
    producer.flush()
    dead = decode(read_records(broker, topics.deadletter, want=2, timeout=20), learning_pb2.DeadLetter)
    assert sorted(d.reason for d in dead) == ["undecodable", "unknown_tenant"]
    assert all(d.payload and d.topic == topics.events for d in dead)
    # still alive and still attributing
    assert [e.candidate_id for e in decode(read_records(broker, topics.examples, want=1, timeout=20),
                                           learning_pb2.Example)] == ["a"]
    assert procs.metric_value(url, "loopwise_miner_ready") == 1.0


def test_a_killed_worker_recovers_its_windows_without_losing_examples(start_miner, broker, topics):
    proc, app_id, _ = start_miner()
    f = EventFactory("default")
    producer = KafkaProducer(bootstrap_servers=broker)
    n = 40
    now = stamps.now_ms()
    for i in range(n):
        imp = f.impression(f"r{i}", ["a", "b", "c"], at_ms=now)
        imp.impression.candidates.CopyFrom(candidates(["a", "b", "c"]))
        click = f.click(f"r{i}", "b", position=2, at_ms=now + 10)
        producer.send(topics.impressions, key=codec.record_key(imp), value=codec.encode(imp))
        producer.send(topics.events, key=codec.record_key(click), value=codec.encode(click))
    producer.flush()
    positives = read_records(broker, topics.examples, want=n, timeout=30, idle=0.2)
    assert len(positives) >= n
    os.kill(proc.pid, signal.SIGKILL)  # before any window closed: the negatives are still owed
    proc.popen.wait(5)
    time.sleep(WINDOW_MS / 1000)
    start_miner(app_id)  # same group, same changelog: recovers the open windows
    examples = decode(read_records(broker, topics.examples, want=3 * n, timeout=60, idle=2.0), learning_pb2.Example)
    ids = Counter(e.example_id for e in examples)
    assert len(ids) == 3 * n, "an example was lost"
    by_label = Counter((e.candidate_id, e.label) for e in {e.example_id: e for e in examples}.values())
    assert by_label == {("a", 0.0): n, ("b", 1.0): n, ("c", 0.0): n}
    duplicates = sum(c - 1 for c in ids.values())
    assert duplicates <= n  # at-least-once: only re-sent records, all with the ids consumers dedupe on


def poison_impression(f: EventFactory, request_id: str):
    """A client's impression whose feature column is one value short of its candidates: it
    passed every check once, and crashed the attribution of any feedback on it."""
    imp = f.impression(request_id, ["a", "b", "c"])
    imp.impression.candidates.CopyFrom(candidates(["a", "b", "c"], {"pop": [0.1, 0.2, 0.3]}))
    imp.impression.candidates.numeric[0].values.pop()
    return imp


def send(producer, topic, event):
    producer.send(topic, key=codec.record_key(event), value=codec.encode(event))


def good_request(producer, topics, f, request_id):
    imp = f.impression(request_id, ["a", "b"])
    imp.impression.candidates.CopyFrom(candidates(["a", "b"], {"pop": [0.1, 0.2]}))
    send(producer, topics.impressions, imp)
    send(producer, topics.events, f.click(request_id, "b", position=2))


def test_a_poison_impression_is_dead_lettered_and_never_crash_loops_the_miner(start_miner, broker, topics):
    """Produced straight to the topic (no collector in front): dead-lettered with its reason,
    later requests are attributed, and a killed and restarted miner does not die on it."""
    proc, app_id, url = start_miner()
    f = EventFactory("default")
    producer = KafkaProducer(bootstrap_servers=broker)
    send(producer, topics.impressions, poison_impression(f, "r-poison"))
    send(producer, topics.events, f.click("r-poison", "c", position=3))
    good_request(producer, topics, f, "r-good")
    producer.flush()
    dead = decode(read_records(broker, topics.deadletter, want=1, timeout=20), learning_pb2.DeadLetter)
    assert [d.reason for d in dead][:1] == ["misaligned_features"]
    examples = decode(read_records(broker, topics.examples, want=2, timeout=30), learning_pb2.Example)
    assert {(e.request_id, e.candidate_id, e.label) for e in examples} >= {("r-good", "b", 1.0),
                                                                          ("r-good", "a", 0.0)}
    assert proc.alive() and procs.metric_value(url, "loopwise_miner_deadlettered_total",
                                               {"reason": "misaligned_features"}) == 1.0
    os.kill(proc.pid, signal.SIGKILL)
    proc.popen.wait(5)
    proc, _, url = start_miner(app_id)
    good_request(producer, topics, f, "r-after")
    producer.flush()
    examples = decode(read_records(broker, topics.examples, want=4, timeout=30), learning_pb2.Example)
    assert ("r-after", "b", 1.0) in {(e.request_id, e.candidate_id, e.label) for e in examples}
    assert proc.alive() and procs.readyz(url)


def test_a_poison_state_recovered_from_the_changelog_is_dead_lettered_not_fatal(start_miner, broker, topics):
    """A state a former version stored (its impression never checked) fails when its window
    closes: dead-lettered and dropped, the restarted miner lives on and attributes."""
    proc, app_id, _ = start_miner()
    os.kill(proc.pid, signal.SIGKILL)
    proc.popen.wait(5)
    f = EventFactory("default")
    state = learning_pb2.AttributionState(partition=0, deadline_ms=stamps.now_ms())
    state.impression.CopyFrom(poison_impression(f, "r-old"))
    producer = KafkaProducer(bootstrap_servers=broker)
    key = codec.record_key(state.impression)
    producer.send(f"{app_id}-attribution-changelog", key=key, value=state.SerializeToString(), partition=0)
    producer.flush()
    proc, _, url = start_miner(app_id)
    dead = decode(read_records(broker, topics.deadletter, want=1, timeout=30), learning_pb2.DeadLetter)
    assert [(d.reason, codec.decode(d.payload).request_id) for d in dead] == [("processing_error", "r-old")]
    assert "IndexError" in dead[0].detail
    good_request(producer, topics, f, "r-good")
    producer.flush()
    examples = decode(read_records(broker, topics.examples, want=2, timeout=30), learning_pb2.Example)
    assert {(e.request_id, e.candidate_id) for e in examples} == {("r-good", "a"), ("r-good", "b")}
    assert proc.alive() and procs.metric_value(url, "loopwise_miner_deadlettered_total",
                                               {"reason": "processing_error"}) == 1.0


def test_a_tombstone_is_dead_lettered_and_the_rest_of_its_batch_attributed(start_miner, broker, topics):
    proc, _, url = start_miner()
    f = EventFactory("default")
    imp = f.impression("r-next", ["a"])
    producer = KafkaProducer(bootstrap_servers=broker)
    key = codec.record_key(imp)  # same key, same partition: one batch for the agent
    producer.send(topics.events, key=key, value=None)
    producer.send(topics.impressions, key=key, value=codec.encode(imp))
    producer.flush()
    dead = decode(read_records(broker, topics.deadletter, want=1, timeout=20), learning_pb2.DeadLetter)
    assert [(d.reason, d.topic, d.payload) for d in dead] == [("empty_record", topics.events, b"")]
    examples = decode(read_records(broker, topics.examples, want=1, timeout=30), learning_pb2.Example)
    assert [(e.request_id, e.candidate_id) for e in examples] == [("r-next", "a")]
    assert proc.alive() and procs.metric_value(url, "loopwise_miner_deadlettered_total",
                                               {"reason": "empty_record"}) == 1.0


@pytest.mark.parametrize("model", ["popularity", "impressions"])
def test_a_killed_worker_keeps_its_item_exposure_counts(start_miner, broker, topics, model):
    """Item exposure propensities survive a kill -9: 16 requests click "pop", one clicks
    "rare"; after the restart a click on "rare" is still weighed as a rare item's. With the
    counts lost its propensity would be 1 (the first item seen after the restart)."""
    env = {"LOOPWISE_EXPOSURE_MODEL": model}
    proc, app_id, _ = start_miner(env=env)
    f = EventFactory("default")
    producer = KafkaProducer(bootstrap_servers=broker)

    def request(request_id: str, shown: list[str], clicked: str) -> None:
        imp = f.impression(request_id, shown)
        imp.impression.candidates.CopyFrom(candidates(shown))
        send(producer, topics.impressions, imp)
        send(producer, topics.events, f.click(request_id, clicked, position=shown.index(clicked) + 1))

    for i in range(16):
        request(f"r{i}", ["pop", f"x{i}"], "pop")
    request("r-rare", ["pop", "rare"], "rare")
    producer.flush()
    before = decode(read_records(broker, topics.examples, want=34, timeout=40, idle=1.0), learning_pb2.Example)
    assert len({e.example_id for e in before}) == 34  # every window closed: the counts were flushed with them
    rare = [e.exposure_propensity for e in before if (e.request_id, e.label) == ("r-rare", 1.0)]
    assert rare and rare[0] < 0.5
    time.sleep(1.0)  # a close tick after the last window: the table's changelog is written
    os.kill(proc.pid, signal.SIGKILL)
    proc.popen.wait(5)
    start_miner(app_id, env=env)
    request("r-after", ["pop", "rare"], "rare")
    producer.flush()
    deadline = time.monotonic() + 60
    after: list[float] = []
    while not after and time.monotonic() < deadline:
        examples = decode(read_records(broker, topics.examples, want=35, timeout=10, idle=1.0), learning_pb2.Example)
        after = [e.exposure_propensity for e in examples if (e.request_id, e.label) == ("r-after", 1.0)]
    assert after, "the click after the restart was not attributed"
    assert after[0] < 0.5, f"exposure counts lost in the restart: propensity {after[0]}"
