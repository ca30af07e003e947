"""API keys per tenant on the real services (real broker, real Redis, real gRPC).

A key acts for the tenants the keys file grants it: the right key is served,
none, an unknown or an expired one is UNAUTHENTICATED, another tenant's
PERMISSION_DENIED (Report, StreamReport, Rank, Rewrite), counted by reason and
logged without the key; a key added to or removed from the file takes effect
without a restart; the health service stays open for probes, reflection does
not. With a pseudonymisation key the collector writes user ids to Kafka as
their keyed hash.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from loopwise import auth
from loopwise.client import AsyncClient, Client
from loopwise.client.build import EventFactory
from tests.integration.kafka_read import read_events
from tests.integration.test_inference import wait_serving

TENANTS = ("default", "other")
KEY_A, KEY_B, KEY_OLD, KEY_NEW = "lw_key-of-default", "lw_key-of-other", "lw_expired-key", "lw_rotated-in"


def write_keys(path: Path, *, extra: list[dict] | None = None, with_a: bool = True) -> None:
    entries = [auth.hash_key(KEY_A)] if with_a else []
    entries.append({"hash": auth.hash_key(KEY_OLD), "expires": "2020-01-01T00:00:00Z", "name": "old"})
    entries += extra or []
    path.write_text(json.dumps({"tenants": {"default": entries, "other": [auth.hash_key(KEY_B)]}}))


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.json"
    write_keys(path)
    return path


def refused(service, method: str, reason: str, name: str) -> float:
    return service.metrics.registry.get_sample_value(
        "loopwise_grpc_refused_total", {"service": name, "method": method, "reason": reason}) or 0.0


def code_of(call) -> grpc.StatusCode | None:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return None


def test_report_wants_a_valid_key_for_its_tenant(start_collector, keys_file, caplog):
    collector = start_collector(api_keys_file=str(keys_file), tenants=TENANTS)
    target = f"127.0.0.1:{collector.port}"
    name = "loopwise.v1.FeedbackService"
    with caplog.at_level(logging.WARNING, logger="loopwise.guard"):
        with Client(target, tenant="default", api_key=KEY_A, timeout=10) as ok:
            answer = ok.report([ok.events.click("r1", "m1", user_id="u1")])
            assert answer.accepted == 1  # acked by the real broker
        for key, code in ((None, grpc.StatusCode.UNAUTHENTICATED), ("lw_not-a-key", grpc.StatusCode.UNAUTHENTICATED),
                          (KEY_OLD, grpc.StatusCode.UNAUTHENTICATED), (KEY_B, grpc.StatusCode.PERMISSION_DENIED)):
            with Client(target, tenant="default", api_key=key or "", timeout=5, retries=0) as lw:
                assert code_of(lambda lw=lw: lw.report([lw.events.click("r1", "m1")])) == code, key
    assert refused(collector, "Report", auth.MISSING, name) == 1
    assert refused(collector, "Report", auth.UNKNOWN, name) == 1
    assert refused(collector, "Report", auth.EXPIRED, name) == 1
    assert refused(collector, "Report", auth.WRONG_TENANT, name) == 1
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "wrong_tenant" in logged and "lw_not-a-key" not in logged and KEY_B not in logged


def test_a_report_mixing_tenants_is_refused_whole(start_collector, keys_file):
    collector = start_collector(api_keys_file=str(keys_file), tenants=TENANTS)
    with Client(f"127.0.0.1:{collector.port}", tenant="other", api_key=KEY_B, timeout=5, retries=0) as lw:
        mine = lw.events.click("r1", "m1")
        theirs = EventFactory("default").click("r2", "m2")
        assert code_of(lambda: lw.report([mine, theirs])) == grpc.StatusCode.PERMISSION_DENIED
        assert lw.report([mine]).accepted == 1


def test_stream_report_checks_every_message(start_collector, keys_file, loop_thread):
    collector = start_collector(api_keys_file=str(keys_file), tenants=TENANTS)
    target = f"127.0.0.1:{collector.port}"

    async def stream(key: str, tenant_of_second: str):
        async with AsyncClient(target, tenant="other", api_key=key, timeout=10) as lw:
            second = EventFactory(tenant_of_second).click("r2", "m2")
            return await lw.stream_report([[lw.events.click("r1", "m1")], [second]])

    assert loop_thread.run(stream(KEY_B, "other")).accepted == 2
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        loop_thread.run(stream(KEY_B, "default"))
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert refused(collector, "StreamReport", auth.WRONG_TENANT, "loopwise.v1.FeedbackService") == 1


def test_rank_and_rewrite_want_the_tenants_key(start_inference, keys_file):
    inference = start_inference(api_keys_file=str(keys_file), tenants=TENANTS)
    target = f"127.0.0.1:{inference.grpc.port}"
    wait_serving(target)  # the health service wants no key
    with Client(inference=target, tenant="default", api_key=KEY_A, timeout=10) as ok:
        assert ok.rank(["m1", "m2"], user_id="u1").version == "v1"
        assert not ok.rewrite("play something").rewritten
    for key, code in (("", grpc.StatusCode.UNAUTHENTICATED), (KEY_OLD, grpc.StatusCode.UNAUTHENTICATED),
                      (KEY_B, grpc.StatusCode.PERMISSION_DENIED)):
        with Client(inference=target, tenant="default", api_key=key, timeout=5) as lw:
            assert code_of(lambda lw=lw: lw.rank(["m1"])) == code
            assert code_of(lambda lw=lw: lw.rewrite("play something")) == code
    name = "loopwise.v1.InferenceService"
    assert refused(inference, "Rank", auth.WRONG_TENANT, name) == 1
    assert refused(inference, "Rewrite", auth.EXPIRED, name) == 1
    with grpc.insecure_channel(target) as channel:  # nor reflection
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                            timeout=5)
        assert code_of(lambda: list(answers)) == grpc.StatusCode.UNAUTHENTICATED


def test_keys_rotate_without_a_restart(start_collector, keys_file):
    collector = start_collector(api_keys_file=str(keys_file), tenants=TENANTS)
    target = f"127.0.0.1:{collector.port}"

    def code(key: str) -> grpc.StatusCode | None:
        with Client(target, tenant="default", api_key=key, timeout=5, retries=0) as lw:
            return code_of(lambda: lw.report([lw.events.click("r1", "m1")]))

    assert code(KEY_NEW) == grpc.StatusCode.UNAUTHENTICATED
    write_keys(keys_file, extra=[{"hash": auth.hash_key(KEY_NEW), "name": "rotated-in"}])  # both valid
    deadline = time.monotonic() + 10
    while code(KEY_NEW) is not None and time.monotonic() < deadline:
        time.sleep(0.3)
    assert code(KEY_NEW) is None and code(KEY_A) is None
    write_keys(keys_file, extra=[{"hash": auth.hash_key(KEY_NEW)}], with_a=False)  # the old key withdrawn
    while code(KEY_A) is None and time.monotonic() < deadline:
        time.sleep(0.3)
    assert code(KEY_A) == grpc.StatusCode.UNAUTHENTICATED and code(KEY_NEW) is None


def test_user_ids_reach_kafka_pseudonymised(start_collector, broker, topics):
    collector = start_collector(pseudonymise_key="a-secret")
    with Client(f"127.0.0.1:{collector.port}", timeout=10) as lw:
        lw.report([lw.events.click("r1", "m1", user_id="alice"), lw.events.click("r2", "m1", user_id="alice"),
                   lw.events.click("r3", "m1", user_id="bob")])
    users = {e.request_id: e.user_id for e in read_events(broker, topics.events, want=3)}
    assert users["r1"] == users["r2"] == auth.pseudonym(b"a-secret", "alice")  # stable: sessions still join
    assert users["r3"] == auth.pseudonym(b"a-secret", "bob") and "alice" not in users.values()


def test_rank_and_rewrite_use_the_same_pseudonym_as_the_collector(start_inference, broker, topics):
    """Impressions are the other way user ids reach Kafka; serving must key the user's features
    (and a canary rule's user share) by the same pseudonym training sees."""
    inference = start_inference(pseudonymise_key="a-secret")
    wait_serving(f"127.0.0.1:{inference.port}")
    with Client(inference=f"127.0.0.1:{inference.port}", timeout=10) as lw:
        lw.rank(["m1", "m2"], user_id="alice", request_id="r1")
        lw.rewrite("play jazz", user_id="alice")
    [impression] = read_events(broker, topics.impressions, want=1)
    assert impression.user_id == auth.pseudonym(b"a-secret", "alice")
