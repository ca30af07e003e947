"""Sparse deltas on the real stack (issue 11 items 2-4): a click on a new item raises its
score in `Rank` within seconds without a new full version; the answer, the impression
and ``loopwise model show`` name the delta sequence; a replica started later catches up
from the deltas topic to the same tables."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest

pytest.importorskip("torch")

import redis  # noqa: E402

from loopwise.client import Client  # noqa: E402
from loopwise.client.sync import rank_request  # noqa: E402
from loopwise.tools import models_cmd  # noqa: E402
from loopwise.topics import ensure_topics  # noqa: E402
from loopwise.trainer.app import Trainer  # noqa: E402
from loopwise.trainer.settings import TrainerSettings  # noqa: E402
from loopwise.v1 import features_pb2, learning_pb2  # noqa: E402

from .kafka_read import read_events  # noqa: E402
from .test_inference import target, wait_serving  # noqa: E402
from .test_trainer import produce, wait_for  # noqa: E402

NEW = "brand-new-item"
OTHERS = [f"m{i}" for i in range(9)]
USER = {"gender": "F", "age_group": "3", "occupation": "7", "activity": 0.4}


def rank(inference):
    """The RankResponse for the new item (first) and nine others."""
    with Client(inference=target(inference)) as lw:
        return lw.rank_raw(rank_request("default", [NEW, *OTHERS], user_id="u1", user=USER, context={"hour": "20"},
                                        features={"genre": ["Drama"] * 10, "popularity": [0.1] * 10}))


def clicks(n: int) -> list[learning_pb2.Example]:
    now = int(time.time() * 1000)
    return [learning_pb2.Example(
        example_id=f"click-{uuid.uuid4().hex[:8]}", tenant="default", model="ranker", user_id=f"u{i % 5}",
        request_id=f"req-{i}", candidate_id=NEW, label=1.0, weight=1.0, position=1,
        impression_time_ms=now, label_time_ms=now,
        user=features_pb2.Features(categorical={k: v for k, v in USER.items() if isinstance(v, str)},
                                   numeric={"activity": 0.4}),
        context=features_pb2.Features(categorical={"hour": "20"}),
        candidate=features_pb2.Features(categorical={"genre": "Drama"}, numeric={"popularity": 0.1}))
        for i in range(n)]


def start_delta_trainer(loop_thread, broker, redis_url, topics, model_store, tmp_path) -> Trainer:
    """A running trainer that never trains a full version here: deltas only, a step every 0.2 s."""
    return loop_thread.start(lambda: Trainer(TrainerSettings(
        kafka_bootstrap=broker, redis_url=redis_url, model_store=model_store.url, topics=topics,
        metrics_host="127.0.0.1", metrics_port=0, topic_partitions=2, group_id=f"trainer-{uuid.uuid4().hex[:8]}",
        data_dir=str(tmp_path / "trainer"), commit_interval_s=0.3, trainer_check_s=0.2,
        trainer_min_examples=10**9, trainer_delta_interval_s=0.2)))


def overlays(inference) -> dict:
    snap = inference.deltas.snapshot("default", "ranker", "v1")
    return {"sequence": snap.sequence, "stream": snap.stream,
            "tables": {k: (v.ids.copy(), v.values.copy()) for k, v in snap.overlays.items()}}


def test_a_click_on_a_new_item_raises_its_score_within_seconds(broker, redis_url, topics, model_store, loop_thread,
                                                               start_inference, tmp_path):
    ensure_topics(broker, topics.all(), 2)
    # no pending shows: no miner makes these calls' impressions fake negatives here, and the
    # late replica below must score as this one (tests/integration/test_pending.py has them)
    inference = start_inference(delta_status_s=0.5, pending_step=0)
    wait_serving(target(inference))
    before = rank(inference)
    assert before.version == "v1" and before.delta_sequence == 0
    trainer = start_delta_trainer(loop_thread, broker, redis_url, topics, model_store, tmp_path)
    try:
        produce(broker, topics.examples, clicks(20))
        started = time.monotonic()

        def raised():
            r = rank(inference)
            return r.delta_sequence > 0 and r.scores[0] > before.scores[0] + 0.05

        wait_for(raised, 30, "the clicked item's score to rise through a delta")
        took = time.monotonic() - started
        after = rank(inference)
        assert after.version == "v1"  # no new full version: the delta did it
        assert after.ranking[0] == 0 and after.delta_sequence >= 1
        with Client(inference=target(inference)) as lw:  # the client names the sequence too
            assert lw.rank([NEW], user_id="u1", user=USER).delta_sequence >= after.delta_sequence
        assert trainer.metrics.registry.get_sample_value(
            "loopwise_trainer_deltas_total", {"tenant": "default", "model": "ranker", "outcome": "published"}) >= 1
        latency = inference.metrics.registry.get_sample_value("loopwise_inference_delta_example_to_applied_seconds_sum")
        assert latency is not None and latency > 0
        count = inference.metrics.registry.get_sample_value("loopwise_inference_delta_example_to_applied_seconds_count")
        print(f"click produced -> score raised in Rank: {took:.2f} s; example produced -> delta applied: "
              f"mean {latency / count:.3f} s over {count:.0f} deltas")

        # The impression names the sequence that scored it.
        events = read_events(broker, topics.impressions, want=3, timeout=15)
        assert any(e.impression.delta_sequence == after.delta_sequence for e in events)

        # `loopwise model show` lists this replica's applied sequence.
        client = redis.Redis.from_url(redis_url)
        wait_for(lambda: any(r["sequence"] >= 1 for r in models_cmd.replicas(client, "default", "ranker")), 10,
                 "the replica's status in Redis")
        [state] = [r for r in models_cmd.replicas(client, "default", "ranker") if r["sequence"] >= 1][:1]
        assert state["version"] == "v1" and not state["rolled_back"]

        # A replica started now catches up from the topic to the same tables.
        late = start_inference(pending_step=0)
        wait_serving(target(late))
        want = overlays(inference)
        wait_for(lambda: overlays(late)["sequence"] == want["sequence"], 20, "the late replica to catch up")
        got = overlays(late)
        assert got["stream"] == want["stream"] and set(got["tables"]) == set(want["tables"])
        for name, (ids, values) in want["tables"].items():
            assert np.array_equal(got["tables"][name][0], ids) and np.array_equal(got["tables"][name][1], values)
        assert list(rank(late).scores) == pytest.approx(list(rank(inference).scores), abs=1e-6)
    finally:
        loop_thread.run(trainer.stop())


def test_deltas_that_do_worse_online_than_their_version_are_rolled_back(broker, topics, start_inference):
    """A delta that pushes the new item up, labels that say it was wrong: the replica's guard
    drops back to the version alone."""
    from kafka import KafkaProducer

    from loopwise.features import InputBuilder
    from loopwise.modelstore import coldstart, sparse

    ensure_topics(broker, topics.all(), 2)
    inference = start_inference(delta_guard_min_labels=40, delta_guard_margin=0.01)
    wait_serving(target(inference))
    base = rank(inference)
    request = rank_request("default", [NEW, *OTHERS], user_id="u1", user=USER, context={"hour": "20"},
                           features={"genre": ["Drama"] * 10, "popularity": [0.1] * 10})
    ids, _ = InputBuilder(coldstart.DEFAULT_SPEC).build(request.user_id, request.user, request.context,
                                                        request.candidates)
    layout = sparse.Layout(buckets=coldstart.DEFAULT_SPEC.buckets, linear=True)
    rows = np.unique(ids[0][ids[0] > 0])
    delta = sparse.encode_delta("default", "ranker", "v1", "bad-stream", 1, layout,
                                {"bias": (rows, np.full((len(rows), 1), 0.8, dtype=np.float32))})
    producer = KafkaProducer(bootstrap_servers=broker, acks="all")
    try:
        producer.send(topics.deltas, key=b"default|ranker", value=delta).get(30)
        wait_for(lambda: rank(inference).delta_sequence == 1, 20, "the delta applied")
        assert rank(inference).scores[0] > base.scores[0] + 0.1
        wait_for(lambda: inference.errors.ready.is_set(), 20, "the guard reading the errors topic")
        rng = np.random.default_rng(0)
        with Client(inference=target(inference)) as lw:
            for r in range(60):  # nobody wants the new item; the others get some clicks
                lw.rank_raw(inference_request(request, f"guard-{r}"))
                for cid in (NEW, *OTHERS):  # every candidate labelled, as the miner does: calls are judged whole
                    label = 0.0 if cid == NEW else float(rng.random() < 0.5)
                    error = learning_pb2.PredictionError(tenant="default", request_id=f"guard-{r}", candidate_id=cid,
                                                         label=label, model="ranker", version="v1")
                    producer.send(topics.errors, key=f"default|{r}".encode(), value=error.SerializeToString())
        producer.flush(30)
    finally:
        producer.close()
    wait_for(lambda: rank(inference).delta_sequence == 0, 30, "the guard to roll the delta back")
    assert rank(inference).scores[0] == pytest.approx(base.scores[0], abs=1e-6)
    assert inference.metrics.registry.get_sample_value(
        "loopwise_inference_delta_rollbacks_total", {"tenant": "default", "model": "ranker"}) == 1


def inference_request(request, request_id: str):
    out = type(request)()
    out.CopyFrom(request)
    out.request_id = request_id
    return out
