"""FeedbackService on a real broker, through real gRPC channels."""

from __future__ import annotations

import urllib.request

import grpc
import pytest

from loopwise.client import AsyncClient, Client
from loopwise.errors import details_of
from loopwise.v1 import feedback_pb2, feedback_pb2_grpc

from .kafka_read import read_events


def target(service) -> str:
    return f"127.0.0.1:{service.port}"


def test_reported_events_are_on_the_topic(start_collector, broker, topics):
    collector = start_collector()
    with Client(target(collector)) as lw:
        sent = [lw.events.click("r1", "m1", user_id="u1", position=2),
                lw.events.turn("play heat", user_id="u1", session_id="s1"),
                lw.events.accept("r2", "m9", user_id="u2")]
        response = lw.report(sent)
    assert response.accepted == 3 and response.rejected == 0
    assert [r.event_id for r in response.results] == [e.event_id for e in sent]
    got = {e.event_id: e for e in read_events(broker, topics.events, want=3)}
    assert set(got) == {e.event_id for e in sent}
    for e in sent:
        assert got[e.event_id].received_time_ms > 0
        assert got[e.event_id].WhichOneof("body") == e.WhichOneof("body")


def test_client_impressions_go_to_the_impressions_topic(start_collector, broker, topics):
    collector = start_collector()
    with Client(target(collector)) as lw:
        imp = lw.events.impression("r5", ["a", "b"], propensities=[0.5, 0.25], user_id="u1")
        assert lw.report([imp]).accepted == 1
    [back] = read_events(broker, topics.impressions, want=1)
    assert back.event_id == imp.event_id and list(back.impression.propensities) == [0.5, 0.25]


def test_bad_events_are_rejected_with_reasons_and_good_ones_kept(start_collector, broker, topics):
    collector = start_collector()
    with Client(target(collector)) as lw:
        good = lw.events.click("r1", "m1")
        no_request = lw.events.click("", "m1")
        other_tenant = lw.events.click("r1", "m1")
        other_tenant.tenant = "someone-else"
        response = lw.report([no_request, good, other_tenant])
    reasons = [(r.accepted, r.reason) for r in response.results]
    assert reasons == [(False, "missing_request_id"), (True, ""), (False, "unknown_tenant")]
    assert response.results[0].detail
    events = read_events(broker, topics.events, want=1)
    assert [e.event_id for e in events] == [good.event_id]
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{collector.grpc.metrics_port}/metrics").read().decode()
    assert 'loopwise_collector_events_rejected_total{reason="unknown_tenant"} 1.0' in metrics
    assert 'loopwise_collector_events_accepted_total{kind="click",tenant="default"} 1.0' in metrics


def test_oversized_batch_is_invalid_argument_with_details(start_collector):
    collector = start_collector(max_batch_events=5)
    with grpc.insecure_channel(target(collector)) as ch:
        stub = feedback_pb2_grpc.FeedbackServiceStub(ch)
        from loopwise.client.build import EventFactory

        f = EventFactory("default")
        with pytest.raises(grpc.RpcError) as err:
            stub.Report(feedback_pb2.ReportRequest(events=[f.click("r", "m") for _ in range(6)]))
    d = details_of(err.value)
    assert d["code"] == "INVALID_ARGUMENT" and d["reason"] == "batch_too_large"
    assert d["violations"] and d["violations"][0][0] == "events"


def test_malformed_bytes_are_invalid_argument(start_collector):
    collector = start_collector()
    with grpc.insecure_channel(target(collector)) as ch:
        call = ch.unary_unary("/loopwise.v1.FeedbackService/Report")
        with pytest.raises(grpc.RpcError) as err:
            call(b"\xff\xff\xff garbage", timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details_of(err.value)["reason"] == "malformed_request"


async def _stream(addr, batches):
    async with AsyncClient(addr) as lw:
        return await lw.stream_report(batches)


def test_stream_report(start_collector, broker, topics, loop_thread):
    import asyncio

    collector = start_collector()
    from loopwise.client.build import EventFactory

    f = EventFactory("default")
    batches = [[f.click(f"r{i}", "m") for i in range(10)] for _ in range(3)]
    response = asyncio.run(_stream(target(collector), batches))
    assert response.accepted == 30 and len(response.results) == 30
    assert len(read_events(broker, topics.events, want=30)) == 30
