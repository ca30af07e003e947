"""FeedbackService on a real broker, through real gRPC channels."""

from __future__ import annotations

import asyncio
import urllib.request

import grpc
import pytest

from loopwise.client import AsyncClient, Client
from loopwise.client.build import EventFactory, candidates
from loopwise.collector.servicer import MAX_LISTED_REJECTIONS, Answer
from loopwise.errors import details_of
from loopwise.grpcserver import MAX_MESSAGE_BYTES
from loopwise.v1 import events_pb2, feedback_pb2, feedback_pb2_grpc

from .kafka_read import read_events


def target(service) -> str:
    return f"127.0.0.1:{service.port}"


def test_reported_events_are_on_the_topic(start_collector, broker, topics):
    collector = start_collector()
    with Client(target(collector)) as lw:
        sent = [lw.events.click("r1", "m1", user_id="u1", position=2),
                lw.events.turn("play heat", user_id="u1", session_id="s1", status=1),
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


def test_structurally_inconsistent_impressions_are_rejected_with_reasons(start_collector, broker, topics):
    """What crashed the miner or reached training examples never gets onto the topic."""
    collector = start_collector()
    with Client(target(collector)) as lw:
        def impression(columns, ranking=()):
            imp = lw.events.impression(f"r{len(ranking)}", ["a", "b"], user_id="u1")
            imp.impression.candidates.CopyFrom(candidates(["a", "b"], columns))
            imp.impression.ranking.extend(ranking)
            return imp

        short = impression({"pop": [0.1, 0.2]})
        short.impression.candidates.numeric[0].values.pop()
        past = impression({"pop": [0.1, 0.2]}, ranking=[1, 2])
        nan = impression({"pop": [0.1, float("nan")]})
        inf_context = impression({"pop": [0.1, 0.2]})
        inf_context.impression.context.numeric["hour"] = float("inf")
        good = impression({"pop": [0.1, 0.2]}, ranking=[1, 0])
        response = lw.report([short, past, nan, inf_context, good])
    assert [(r.accepted, r.reason) for r in response.results] == [
        (False, "misaligned_features"), (False, "invalid_ranking"), (False, "non_finite_number"),
        (False, "non_finite_number"), (True, "")]
    assert all(r.detail for r in response.results[:4])
    assert [e.event_id for e in read_events(broker, topics.impressions, want=1)] == [good.event_id]
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{collector.grpc.metrics_port}/metrics").read().decode()
    assert 'loopwise_collector_events_rejected_total{reason="non_finite_number"} 2.0' in metrics


def test_oversized_batch_is_invalid_argument_with_details(start_collector):
    collector = start_collector(max_batch_events=5)
    with grpc.insecure_channel(target(collector)) as ch:
        stub = feedback_pb2_grpc.FeedbackServiceStub(ch)
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


def test_stream_report_answers_counts_and_the_rejected_events(start_collector, broker, topics):
    collector = start_collector()
    f = EventFactory("default")
    batches = [[f.click(f"r{i}", "m") for i in range(10)] for _ in range(3)]
    bad = f.click("", "m")
    batches[1].append(bad)
    response = asyncio.run(_stream(target(collector), batches))
    assert (response.accepted, response.rejected, response.duplicates) == (30, 1, 0)
    assert dict(response.rejected_by_reason) == {"missing_request_id": 1}
    assert [(r.event_id, r.reason) for r in response.results] == [(bad.event_id, "missing_request_id")]
    assert len(read_events(broker, topics.events, want=30)) == 30


def long_id_clicks(f: EventFactory, batch: int, n: int) -> list:
    """Small events with the longest event ids allowed (128 characters)."""
    events = []
    for i in range(n):
        event = f.click("r", "m")
        event.event_id = f"{batch:06d}-{i:06d}-".ljust(128, "x")
        events.append(event)
    return events


def test_stream_report_of_130k_events_gets_a_small_answer(start_collector):
    """One result per accepted event made this answer ~17.5 MB: past the 16 MiB
    message limit, the client got RESOURCE_EXHAUSTED after every event was written."""
    collector = start_collector(max_batch_events=5000)
    f = EventFactory("default")
    batches = (long_id_clicks(f, b, 5000) for b in range(26))
    response = asyncio.run(_stream(target(collector), batches))
    assert response.accepted == 130_000 and response.rejected == 0
    assert len(response.results) == 0 and response.ByteSize() < 100


def test_stream_answer_stays_under_the_message_limit_whatever_the_stream():
    """The worst case: every rejection listed at its longest id and detail."""
    answer = Answer(every=False)
    accepted = feedback_pb2.EventResult(event_id="e" * 128, accepted=True)
    worst = feedback_pb2.EventResult(event_id="e" * 128, reason="x" * 32, detail="d" * 256)
    for _ in range(200):
        answer.add([accepted] * 5000)
        answer.add([worst] * 1000)
    r = answer.response
    assert (r.accepted, r.rejected) == (1_000_000, 200_000)
    assert len(r.results) == MAX_LISTED_REJECTIONS and r.unlisted_rejected == 200_000 - MAX_LISTED_REJECTIONS
    assert r.rejected_by_reason["x" * 32] == 200_000
    assert r.ByteSize() < MAX_MESSAGE_BYTES // 3


def test_copies_of_an_event_in_one_batch_are_written_once(start_collector, broker, topics):
    collector = start_collector()
    f = EventFactory("default")
    one, two = f.click("r1", "m1"), f.click("r2", "m2")
    copy = events_pb2.Event()
    copy.CopyFrom(one)
    later = f.click("r3", "m3")
    with Client(target(collector)) as lw:
        response = lw.report([one, copy, two])
        streamed = asyncio.run(_stream(target(collector), [[later, later, later]]))
    got = [e.event_id for e in read_events(broker, topics.events, want=3)]
    assert sorted(got) == sorted([one.event_id, two.event_id, later.event_id])
    assert (response.accepted, response.duplicates, response.rejected) == (3, 1, 0)
    assert [(r.event_id, r.accepted, r.duplicate) for r in response.results] == [
        (one.event_id, True, False), (one.event_id, True, True), (two.event_id, True, False)]
    assert (streamed.accepted, streamed.duplicates) == (3, 2)
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{collector.grpc.metrics_port}/metrics").read().decode()
    assert "loopwise_collector_events_duplicate_total 3.0" in metrics
