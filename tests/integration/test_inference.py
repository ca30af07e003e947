"""InferenceService on real gRPC, a real model store, Redis and broker."""

from __future__ import annotations

import json
import time
import urllib.request

import grpc
import numpy as np
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from loopwise import redis_keys, representation
from loopwise.client import Client
from loopwise.errors import details_of
from loopwise.modelstore import ModelStore, coldstart
from loopwise.v1 import inference_pb2, inference_pb2_grpc

from .kafka_read import read_events


def target(service) -> str:
    return f"127.0.0.1:{service.port}"


def health(addr: str) -> int:
    with grpc.insecure_channel(addr) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2).status


def wait_serving(addr: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while health(addr) != health_pb2.HealthCheckResponse.SERVING:
        assert time.monotonic() < deadline, "never became SERVING"
        time.sleep(0.05)


def features(n: int) -> dict:
    return {"genre": ["Drama", "Comedy"] * (n // 2) + ["Drama"] * (n % 2),
            "popularity": [i / max(n, 1) for i in range(n)]}


@pytest.mark.parametrize("n", [1, 1000])
def test_rank_answers_for_1_and_1000_candidates(start_inference, n):
    inference = start_inference()
    wait_serving(target(inference))
    ids = [f"m{i}" for i in range(n)]
    with Client(inference=target(inference)) as lw:
        ranked = lw.rank(ids, user_id="u1", user={"gender": "F", "activity": 0.4}, context={"hour": "20"},
                         features=features(n))
    assert ranked.version == "v1" and ranked.model == "ranker"
    assert len(ranked.scores) == n and all(0.0 <= s <= 1.0 for s in ranked.scores)
    assert sorted(ranked.ranking) == list(range(n))
    scores = ranked.scores
    assert all(scores[a] >= scores[b] for a, b in zip(ranked.ranking, ranked.ranking[1:], strict=False))
    assert ranked.request_id


def test_impression_appears_on_the_topic_in_served_order(start_inference, broker, topics):
    inference = start_inference()
    wait_serving(target(inference))
    ids = [f"m{i}" for i in range(20)]
    with Client(inference=target(inference)) as lw:
        ranked = lw.rank(ids, user_id="u9", session_id="s9", request_id="req-42", features=features(20))
    [event] = read_events(broker, topics.impressions, want=1)
    imp = event.impression
    assert event.request_id == "req-42" and event.user_id == "u9" and event.tenant == "default"
    assert event.event_id and imp.source == "inference"
    assert imp.version == ranked.version and imp.model == "ranker"
    assert list(imp.candidate_ids) == ranked.top(20)
    assert list(imp.scores) == pytest.approx(sorted(ranked.scores, reverse=True))
    assert list(imp.ranking) == ranked.ranking
    hidden = representation.decode(imp.representation, imp.representation_scale, imp.representation_dim)
    assert hidden.shape == (20, coldstart.HIDDEN_DIM)
    assert imp.representation_dim == coldstart.HIDDEN_DIM and np.isfinite(hidden).all()
    assert list(imp.candidates.ids) == ids
    assert [imp.candidates.ids[i] for i in imp.ranking] == list(imp.candidate_ids)
    popularity = {c.name: list(c.values) for c in imp.candidates.numeric}["popularity"]
    assert popularity == pytest.approx(features(20)["popularity"])


def test_errors_have_the_documented_codes(start_inference):
    inference = start_inference()
    wait_serving(target(inference))
    with grpc.insecure_channel(target(inference)) as ch:
        stub = inference_pb2_grpc.InferenceServiceStub(ch)
        cases = [
            (inference_pb2.RankRequest(tenant="nobody", candidates={"ids": ["a"]}), "PERMISSION_DENIED"),
            (inference_pb2.RankRequest(tenant="default", model="nope", candidates={"ids": ["a"]}), "NOT_FOUND"),
            (inference_pb2.RankRequest(tenant="default"), "INVALID_ARGUMENT"),
            (inference_pb2.RankRequest(tenant="default", candidates={
                "ids": ["a", "b"], "categorical": [{"name": "genre", "values": ["x"]}]}), "INVALID_ARGUMENT"),
        ]
        for request, code in cases:
            with pytest.raises(grpc.RpcError) as err:
                stub.Rank(request, timeout=5)
            assert details_of(err.value)["code"] == code
        with pytest.raises(grpc.RpcError) as err:
            stub.Rank(inference_pb2.RankRequest(tenant="default", candidates={
                "ids": ["a", "b"], "categorical": [{"name": "genre", "values": ["x"]}]}), timeout=5)
        assert details_of(err.value)["violations"][0][0] == "candidates.genre"


def test_health_flips_to_serving_once_a_model_loads(start_inference, tmp_path, coldstart_onnx):
    empty = ModelStore(str(tmp_path / "empty-store"))
    inference = start_inference(model_store=empty.url)
    time.sleep(0.5)
    assert health(target(inference)) == health_pb2.HealthCheckResponse.NOT_SERVING
    with Client(inference=target(inference)) as lw, pytest.raises(grpc.RpcError) as err:
        lw.rank(["a"])
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    empty.publish("default", "ranker", coldstart_onnx, feature_spec=coldstart.DEFAULT_SPEC,
                  hidden_dim=coldstart.HIDDEN_DIM)
    wait_serving(target(inference), timeout=20)


def test_corrupt_model_keeps_not_serving(start_inference, tmp_path, coldstart_onnx):
    store = ModelStore(str(tmp_path / "bad-store"))
    store.publish("default", "ranker", coldstart_onnx, feature_spec=coldstart.DEFAULT_SPEC,
                  hidden_dim=coldstart.HIDDEN_DIM)
    (tmp_path / "bad-store" / "default" / "ranker" / "v1" / "model.onnx").write_bytes(b"\x00corrupt")
    inference = start_inference(model_store=store.url)
    time.sleep(1.5)
    assert health(target(inference)) == health_pb2.HealthCheckResponse.NOT_SERVING
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{inference.grpc.metrics_port}/metrics").read().decode()
    assert 'loopwise_inference_model_loads_total{model="ranker",result="refused",tenant="default"}' in metrics


def test_redis_pointer_selects_the_version(start_inference, model_store, redis_url, coldstart_onnx):
    model_store.publish("default", "ranker", coldstart_onnx, feature_spec=coldstart.DEFAULT_SPEC,
                        hidden_dim=coldstart.HIDDEN_DIM)
    r = redis.Redis.from_url(redis_url)
    key = redis_keys.model_pointer("default", "ranker")
    r.set(key, "v1")
    try:
        inference = start_inference()
        wait_serving(target(inference))
        with Client(inference=target(inference)) as lw:
            assert lw.rank(["a"]).version == "v1"
    finally:
        r.delete(key)


def test_rewrite_none_then_rule(start_inference, redis_url):
    inference = start_inference()
    tenant = "default"
    r = redis.Redis.from_url(redis_url)
    table = redis_keys.rewrite_table(tenant)
    r.delete(table)
    with Client(inference=target(inference)) as lw:
        none = lw.rewrite("play maj and dragons")
        assert not none.rewritten and none.utterance == "play maj and dragons" and not none.rule_id
        r.hset(table, "play maj and dragons",
               json.dumps({"rewrite": "play imagine dragons", "confidence": 0.93, "rule_id": "rule-1"}))
        deadline = time.monotonic() + 2.0  # the local copy refreshes every 0.5 s
        while not (hit := lw.rewrite("Play  Maj and Dragons!")).rewritten and time.monotonic() < deadline:
            time.sleep(0.05)
        assert hit.rewritten and hit.utterance == "play imagine dragons"
        assert hit.rule_id == "rule-1" and hit.confidence == pytest.approx(0.93)
        with pytest.raises(grpc.RpcError) as err:
            lw.rewrite("   ")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    r.delete(table)


def test_metrics_endpoint_reports_requests_and_version(start_inference):
    inference = start_inference()
    wait_serving(target(inference))
    with Client(inference=target(inference)) as lw:
        for _ in range(3):
            lw.rank(["a", "b"])
    text = urllib.request.urlopen(f"http://127.0.0.1:{inference.grpc.metrics_port}/metrics").read().decode()
    assert 'loopwise_inference_rpc_requests_total{code="OK",method="Rank"} 3.0' in text
    assert 'loopwise_inference_model_info{model="ranker",tenant="default",version="v1"} 1.0' in text
    assert "loopwise_inference_rpc_seconds_bucket" in text


def test_reflection_lists_the_services(start_inference):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    inference = start_inference()
    with grpc.insecure_channel(target(inference)) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        [response] = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
            list_services="")]), timeout=5))
    names = {s.name for s in response.list_services_response.service}
    assert {"loopwise.v1.InferenceService", "grpc.health.v1.Health"} <= names


def test_async_client_ranks_rewrites_and_reports(start_inference, start_collector, broker, topics):
    import asyncio

    from loopwise.client import AsyncClient

    inference = start_inference()
    collector = start_collector()
    wait_serving(target(inference))

    async def main():
        async with AsyncClient(target(collector), target(inference)) as lw:
            ranked = await lw.rank(["a", "b"], user_id="u1", features={"popularity": [0.1, 0.9]})
            rewrite = await lw.rewrite("hello there")
            response = await lw.report([lw.events.click(ranked.request_id, ranked.top(1)[0], user_id="u1")])
            return ranked, rewrite, response

    ranked, rewrite, response = asyncio.run(main())
    assert ranked.top(1) == ["b"] and not rewrite.rewritten and response.accepted == 1
    [click] = read_events(broker, topics.events, want=1)
    assert click.request_id == ranked.request_id and click.click.candidate_id == "b"


def test_non_finite_features_are_invalid_argument_even_those_the_model_does_not_read(start_inference):
    """They would travel on in the impression to the training examples (issue 13, item 4)."""
    inference = start_inference()
    wait_serving(target(inference))
    nan, inf = float("nan"), float("inf")
    with grpc.insecure_channel(target(inference)) as ch:
        stub = inference_pb2_grpc.InferenceServiceStub(ch)
        for request, field in [
            (inference_pb2.RankRequest(tenant="default", candidates={
                "ids": ["a", "b"], "numeric": [{"name": "unread", "values": [0.5, nan]}]}), "candidates.unread"),
            (inference_pb2.RankRequest(tenant="default", context={"numeric": {"unread": inf}},
                                       candidates={"ids": ["a"]}), "context.unread"),
            (inference_pb2.RankRequest(tenant="default", user={"numeric": {"unread": -inf}},
                                       candidates={"ids": ["a"]}), "user.unread"),
        ]:
            with pytest.raises(grpc.RpcError) as err:
                stub.Rank(request, timeout=5)
            details = details_of(err.value)
            assert details["code"] == "INVALID_ARGUMENT" and details["violations"][0][0] == field
