"""The error memory on the real stack: prediction errors on the errors topic move
`Rank`'s scores on every replica, in the region of representation space they
came from and not elsewhere; shadow mode computes and does not serve."""

from __future__ import annotations

import time

import numpy as np
import pytest
from kafka import KafkaProducer

from loopwise import representation
from loopwise.client import Client
from loopwise.modelstore import coldstart
from loopwise.v1 import learning_pb2

from .kafka_read import read_events
from .test_inference import target, wait_serving

# Region A: popular candidates (the cold-start model's hidden layer points along its
# popularity unit); elsewhere: unpopular ones (hidden orthogonal to it).
POPULAR = [f"p{i}" for i in range(10)]
UNPOPULAR = [f"u{i}" for i in range(10)]
IDS = POPULAR + UNPOPULAR
FEATURES = {"popularity": [0.9] * 10 + [0.0] * 10, "genre": ["Drama", "Comedy"] * 10}


def rank(service):
    with Client(inference=target(service)) as lw:
        return lw.rank(IDS, user_id="u1", request_id=f"r{time.monotonic_ns()}", features=FEATURES)


def wait_ready(services, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    for service in services:
        wait_serving(target(service))
        while not service.errors.ready.is_set():
            assert time.monotonic() < deadline, "the errors topic was never assigned"
            time.sleep(0.05)


def produce_errors(broker: str, topic: str, version: str, keys: np.ndarray, base: np.ndarray) -> None:
    producer = KafkaProducer(bootstrap_servers=broker)
    for i, key in enumerate(keys):
        producer.send(topic, learning_pb2.PredictionError(
            error_id=f"e{version}{i}", tenant="default", model="ranker", version=version, request_id="r",
            candidate_id=IDS[i], label=1.0, served_score=float(base[i]), key=key.tolist(),
            time_ms=int(time.time() * 1000)).SerializeToString())
    producer.flush()
    producer.close()


def wait_shifted(service, base: np.ndarray, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while True:
        ranked = rank(service)
        if min(np.array(ranked.compensated_scores)[:10] - base[:10]) > 0.2:
            return ranked
        assert time.monotonic() < deadline, "the errors never reached the memory"
        time.sleep(0.05)


def test_errors_in_one_region_shift_rank_there_and_not_elsewhere_on_both_replicas(start_inference, broker,
                                                                                   topics):
    on = {"error_memory_models": "ranker:mode=on,lambda=1.0,pair_lambda=0", "error_memory_warmup_s": 0.0}
    replicas = [start_inference(**on), start_inference(**on)]
    shadow = start_inference(error_memory_mode="shadow", error_memory_lambda=1.0, error_memory_pair_lambda=0.0,
                             emit_impressions=False)
    wait_ready([*replicas, shadow])
    before = [rank(r) for r in replicas]
    assert before[0].memory_mode == "on"
    assert before[0].scores == before[0].base_scores == before[0].compensated_scores  # nothing learnt yet
    base = np.array(before[0].base_scores)

    # The keys of region A as the impression carries them (what the miner writes into errors).
    imp = read_events(broker, topics.impressions, want=1)[0].impression
    hidden = representation.decode(imp.representation, imp.representation_scale, imp.representation_dim)
    produce_errors(broker, topics.errors, imp.version, hidden[:5], base)  # clicks the model under-predicted

    for r in replicas:
        wait_shifted(r, base)
    for r in replicas:
        ranked = rank(r)
        scores = np.array(ranked.scores)
        assert (scores[:10] - base[:10] > 0.2).all()  # the whole region moved, not just the clicked five
        assert np.abs(scores[10:] - base[10:]).max() < 0.01  # elsewhere unchanged
        assert np.array(ranked.base_scores) == pytest.approx(base, abs=1e-6)
        assert set(ranked.top(10)) == set(POPULAR)
        sample = r.metrics.registry.get_sample_value
        assert sample("loopwise_inference_memory_lag_seconds_count") == 5  # produced live: lag measured
        assert sample("loopwise_inference_memory_scored_total", {"tenant": "default", "model": "ranker"}) == 5
        bins = [sample("loopwise_inference_memory_score_bin_total", {"tenant": "default", "model": "ranker",
                                                                      "scorer": "base", "label": "1",
                                                                      "bin": f"{(b + 1) / 20:.2f}"}) or 0
                for b in range(20)]
        assert sum(bins) == 5

    # Shadow: the same errors are in its memory; it computes the compensation and serves the base.
    ranked = wait_shifted(shadow, base)
    assert ranked.memory_mode == "shadow"
    assert np.array(ranked.scores) == pytest.approx(base, abs=1e-6)


def test_a_replica_started_later_warms_up_and_a_new_version_starts_empty(start_inference, broker, topics,
                                                                         model_store, coldstart_onnx):
    on = {"error_memory_mode": "on", "error_memory_lambda": 1.0, "error_memory_pair_lambda": 0.0, "store_scan_s": 0.2}
    first = start_inference(**on)
    wait_ready([first])
    base = np.array(rank(first).base_scores)
    imp = read_events(broker, topics.impressions, want=1)[0].impression
    hidden = representation.decode(imp.representation, imp.representation_scale, imp.representation_dim)
    produce_errors(broker, topics.errors, "v1", hidden[:5], base)
    wait_shifted(first, base)

    later = start_inference(**on, error_memory_warmup_s=300.0)  # the errors are already on the topic
    wait_ready([later])
    assert wait_shifted(later, base).version == "v1"
    metrics = later.metrics
    assert metrics.memory_writes.labels("default", "ranker", "written")._value.get() == 5
    assert metrics.registry.get_sample_value("loopwise_inference_memory_lag_seconds_count") == 0  # warm-up
    assert metrics.memory_fill.labels("default", "ranker")._value.get() > 0

    # v2 (the same network) starts serving: its memory is empty, v1's errors do not apply
    model_store.publish("default", "ranker", coldstart_onnx, feature_spec=coldstart.DEFAULT_SPEC,
                        hidden_dim=coldstart.HIDDEN_DIM, source="test")
    deadline = time.monotonic() + 15.0
    while (ranked := rank(later)).version != "v2":
        assert time.monotonic() < deadline, "v2 never served"
        time.sleep(0.05)
    assert ranked.scores == ranked.base_scores == ranked.compensated_scores
    assert ranked.base_scores == pytest.approx(list(base), abs=1e-6)
    assert metrics.memory_resets.labels("default", "ranker")._value.get() == 2


def test_a_pairs_own_errors_move_that_pair_on_both_replicas_and_nothing_else(start_inference, broker, topics):
    """The exact (user, item) table: a user's non-clicks on two candidates lower exactly those two
    for that user, on every replica (the sketch's lambda 0: the table alone; no pairs written at Rank)."""
    on = {"error_memory_models": "ranker:mode=on,lambda=0,pair_lambda=1,pair_prior=0,pair_at_rank=false",
          "error_memory_warmup_s": 0.0}
    replicas = [start_inference(**on), start_inference(**on)]
    wait_ready(replicas)
    base = np.array(rank(replicas[0]).base_scores)
    event = read_events(broker, topics.impressions, want=1)[0]
    imp = event.impression
    hidden = representation.decode(imp.representation, imp.representation_scale, imp.representation_dim)
    producer = KafkaProducer(bootstrap_servers=broker)
    for i in (3, 12):  # one popular, one unpopular candidate: no click
        producer.send(topics.errors, learning_pb2.PredictionError(
            error_id=f"pair{i}", tenant="default", model="ranker", version=imp.version, request_id="r",
            user_id=event.user_id, candidate_id=IDS[i], label=0.0, served_score=float(base[i]),
            key=hidden[i].tolist(), time_ms=int(time.time() * 1000)).SerializeToString())
    producer.flush()
    producer.close()
    for r in replicas:
        deadline = time.monotonic() + 15.0
        while (scores := np.array(rank(r).scores))[3] > 1e-6:
            assert time.monotonic() < deadline, "the pair's errors never reached the memory"
            time.sleep(0.05)
        assert scores[12] == pytest.approx(0.0, abs=1e-6)  # prior 0: the pair's own mean label
        others = np.delete(np.arange(len(IDS)), [3, 12])
        assert np.abs(scores[others] - base[others]).max() < 1e-6
        with Client(inference=target(r)) as lw:  # another user: untouched
            other = lw.rank(IDS, user_id="u2", request_id=f"r{time.monotonic_ns()}", features=FEATURES)
        assert np.array(other.scores) == pytest.approx(np.array(other.base_scores), abs=1e-6)


def test_pairs_shown_by_a_replica_are_corrected_there_at_once(start_inference):
    """pair_at_rank: the replica that answered counts its pairs as shown and unclicked at once (prior 1:
    halved, the call's order kept); another replica waits for the errors."""
    on = {"error_memory_models": "ranker:mode=on,lambda=0,pair_lambda=1,pair_prior=1", "error_memory_warmup_s": 0.0}
    answering, other = start_inference(**on), start_inference(**on)
    wait_ready([answering, other])
    first = rank(answering)
    base = np.array(first.base_scores)
    assert np.array(first.scores) == pytest.approx(base, abs=1e-6)  # read before its own impression
    again = rank(answering)
    assert np.array(again.scores) == pytest.approx(base / 2, abs=1e-6)
    assert list(again.ranking) == list(first.ranking)
    assert np.array(rank(other).scores) == pytest.approx(base, abs=1e-6)
