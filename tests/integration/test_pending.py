"""Pending shows on the real stack (services/inference/pending.py): on top of live deltas,
the candidates a replica showed are scored at once as the trainer will score them once
their fake negatives reach it, and a delta that learned them covers them."""

from __future__ import annotations

import time
import uuid

import pytest

pytest.importorskip("torch")

from loopwise.client import Client  # noqa: E402
from loopwise.client.sync import rank_request  # noqa: E402
from loopwise.topics import ensure_topics  # noqa: E402
from loopwise.v1 import features_pb2, learning_pb2  # noqa: E402

from .test_deltas import USER, clicks, start_delta_trainer  # noqa: E402
from .test_inference import target, wait_serving  # noqa: E402
from .test_trainer import produce, wait_for  # noqa: E402

SHOWN = ["p1", "p2", "p3"]


def rank(inference, user_id: str = "u9"):
    with Client(inference=target(inference)) as lw:
        return lw.rank_raw(rank_request("default", SHOWN, user_id=user_id, user=USER, context={"hour": "20"},
                                        features={"genre": ["Drama"] * 3, "popularity": [0.1] * 3}))


def fake_negatives(user_id: str, at_ms: int) -> list[learning_pb2.Example]:
    """What the miner emits for a call's candidates in the fake-negative mode."""
    return [learning_pb2.Example(
        example_id=f"fn-{uuid.uuid4().hex[:8]}", tenant="default", model="ranker", user_id=user_id,
        request_id=f"req-{uuid.uuid4().hex[:8]}", candidate_id=c, label=0.0, weight=1.0, position=i + 1,
        impression_time_ms=at_ms, label_time_ms=at_ms, feedback_mode=learning_pb2.FEEDBACK_MODE_FAKE_NEGATIVE,
        user=features_pb2.Features(categorical={k: v for k, v in USER.items() if isinstance(v, str)},
                                   numeric={"activity": 0.4}),
        context=features_pb2.Features(categorical={"hour": "20"}),
        candidate=features_pb2.Features(categorical={"genre": "Drama"}, numeric={"popularity": 0.1}))
        for i, c in enumerate(SHOWN)]


def sample(inference, name: str, labels: dict | None = None) -> float:
    return inference.metrics.registry.get_sample_value(name, labels or {}) or 0.0


def test_shown_candidates_are_scored_as_the_trainer_will_until_a_delta_covers_them(
        broker, redis_url, topics, model_store, loop_thread, start_inference, tmp_path):
    ensure_topics(broker, topics.all(), 2)
    inference = start_inference()
    wait_serving(target(inference))
    trainer = start_delta_trainer(loop_thread, broker, redis_url, topics, model_store, tmp_path)
    try:
        produce(broker, topics.examples, clicks(5))  # another item: the stream starts
        wait_for(lambda: rank(inference, "someone-else").delta_sequence > 0, 30, "live deltas")

        first = rank(inference)  # scored with the deltas; its candidates are pending now
        second = rank(inference)
        assert first.delta_sequence > 0
        assert all(b < a for a, b in zip(first.scores, second.scores, strict=True)), (first.scores, second.scores)
        assert sample(inference, "loopwise_inference_pending_shows") >= 2
        assert sample(inference, "loopwise_inference_pending_adjusted_total") >= 3
        # another user's cross rows are not this user's: nothing pending (its own id moves the base a little)
        assert list(rank(inference, "u10").scores) == pytest.approx(list(first.scores), abs=0.01)

        # The miner's fake negatives for the calls reach the trainer; its delta covers the shows.
        produce(broker, topics.examples, fake_negatives("u9", int(time.time() * 1000)))
        labels = {"tenant": "default", "model": "ranker", "reason": "covered"}
        wait_for(lambda: sample(inference, "loopwise_inference_pending_dropped_total", labels) >= 2, 30,
                 "a delta that learned the shows to cover them")
        after = rank(inference)
        for a, b, c in zip(first.scores, second.scores, after.scores, strict=True):
            assert c < a  # the trainer learned the negatives
            assert abs(b - c) < abs(a - c)  # and the pending steps had moved toward what it learned
    finally:
        loop_thread.run(trainer.stop())


def test_with_the_window_feedback_mode_or_a_zero_step_no_shows_are_pending(broker, topics, start_inference):
    ensure_topics(broker, topics.all(), 2)
    assert start_inference().pending is not None  # the default: fnw
    assert start_inference(feedback_mode="window").pending is None  # impressions train when their window closes
    assert start_inference(pending_step=0).pending is None


def test_a_new_version_replaces_one_with_live_deltas_only_once_its_own_deltas_are_live(
        broker, redis_url, topics, model_store, coldstart_onnx, loop_thread, start_inference, tmp_path):
    """Make before break: no answer names the new version without a delta sequence."""
    import threading

    import redis

    from loopwise import redis_keys
    from loopwise.modelstore import coldstart, pointers

    client = redis.Redis.from_url(redis_url)
    client.delete(redis_keys.model_pointer("default", "ranker"), redis_keys.model_history("default", "ranker"))
    ensure_topics(broker, topics.all(), 2)
    inference = start_inference(delta_swap_wait_s=10.0)
    wait_serving(target(inference))
    trainer = start_delta_trainer(loop_thread, broker, redis_url, topics, model_store, tmp_path)
    answers: list[tuple[str, int]] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            r = rank(inference, "u11")
            answers.append((r.version, r.delta_sequence))

    thread = threading.Thread(target=hammer, daemon=True)
    try:
        produce(broker, topics.examples, clicks(5))
        wait_for(lambda: rank(inference, "someone-else").delta_sequence > 0, 30, "live deltas on v1")
        thread.start()
        v2 = model_store.publish("default", "ranker", coldstart_onnx, feature_spec=coldstart.DEFAULT_SPEC,
                                 hidden_dim=coldstart.HIDDEN_DIM, parent_version="v1", source="test").version
        pointers.move(model_store, client, "default", "ranker", v2, "promoted", serving="v1")
        wait_for(lambda: any(v == v2 for v, _ in answers[-5:]), 30, "the new version to serve")
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join(10)
        loop_thread.run(trainer.stop())
        client.delete(redis_keys.model_pointer("default", "ranker"), redis_keys.model_history("default", "ranker"))
    on_v2 = [seq for v, seq in answers if v == v2]
    assert on_v2 and min(on_v2) >= 1, on_v2[:10]  # its own stream was live before its first answer
    # it waited for them (ready), or they were live before v2 had loaded (no wait): never a timeout
    assert sample(inference, "loopwise_inference_swap_delta_waits_total",
                  {"tenant": "default", "model": "ranker", "outcome": "timeout"}) == 0
