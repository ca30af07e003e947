"""Abuse at the door of the real services: each case sends it, checks the server stays
within its budget and keeps (or goes back to) answering well-behaved clients.

- never-closed StreamReport streams: cut at the server's stream deadline; past the
  concurrent-call cap the rest are RESOURCE_EXHAUSTED at once;
- connections that never speak: closed after the handshake timeout; past the
  connection cap closed at once; a gRPC connection left without calls is closed idle;
- large requests held in flight: past the in-flight byte budget refused
  RESOURCE_EXHAUSTED before they are parsed, the budget's gauge never above it;
- over-long strings anywhere in a request (``session_id``/``request_id`` on Rank,
  feature names, Rewrite's context, an event's nested slots): INVALID_ARGUMENT or the
  event's ``field_too_long``.
"""

from __future__ import annotations

import asyncio
import socket
import time

import grpc
import pytest

from loopwise.client import Client
from loopwise.client.build import interpretation
from loopwise.v1 import events_pb2, feedback_pb2, feedback_pb2_grpc
from tests.integration.test_inference import wait_serving

FEEDBACK = "loopwise.v1.FeedbackService"


def refused(service, method: str, reason: str) -> float:
    return service.metrics.registry.get_sample_value(
        "loopwise_grpc_refused_total", {"service": FEEDBACK, "method": method, "reason": reason}) or 0.0


def well_behaved_report(target: str) -> int:
    with Client(target, timeout=10, retries=0) as lw:
        return lw.report([lw.events.click("r1", "m1", user_id="u1")]).accepted


async def hold_streams(target: str, n: int, first: feedback_pb2.ReportRequest, hold_s: float
                       ) -> list[grpc.StatusCode]:
    """``n`` StreamReport calls that send ``first`` and then nothing, never closing; their codes."""
    forever = asyncio.Event()

    async def one(stub) -> grpc.StatusCode:
        async def requests():
            yield first
            await forever.wait()

        try:
            await stub.StreamReport(requests(), timeout=hold_s)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    async with grpc.aio.insecure_channel(target) as channel:
        stub = feedback_pb2_grpc.FeedbackServiceStub(channel)
        return list(await asyncio.gather(*(one(stub) for _ in range(n))))


def small_batch() -> feedback_pb2.ReportRequest:
    return feedback_pb2.ReportRequest(events=[Client(tenant="default").events.click("r1", "m1", user_id="u1")])


def test_never_closed_streams_are_capped_and_cut_at_the_deadline(start_collector, loop_thread):
    collector = start_collector(max_concurrent_rpcs=10, stream_deadline_s=1.5)
    target = f"127.0.0.1:{collector.port}"
    started = time.monotonic()
    codes = loop_thread.run(hold_streams(target, 25, small_batch(), hold_s=30.0))
    assert time.monotonic() - started < 15  # the server's deadline, not the client's 30 s, ended them
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 15
    assert codes.count(grpc.StatusCode.DEADLINE_EXCEEDED) >= 1
    assert set(codes) <= {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED}
    assert refused(collector, "StreamReport", "stream_deadline") == codes.count(grpc.StatusCode.DEADLINE_EXCEEDED)
    assert well_behaved_report(target) == 1


def test_streams_under_the_cap_leave_room_for_other_clients(start_collector, loop_thread):
    collector = start_collector(max_concurrent_rpcs=20, stream_deadline_s=3.0)
    target = f"127.0.0.1:{collector.port}"
    held = asyncio.run_coroutine_threadsafe(hold_streams(target, 10, small_batch(), hold_s=30.0), loop_thread.loop)
    time.sleep(0.5)
    assert well_behaved_report(target) == 1  # answered while the streams are held
    assert set(held.result(20)) == {grpc.StatusCode.DEADLINE_EXCEEDED}


def closed_by_peer(s: socket.socket) -> bool:
    """Read (the server's HTTP/2 settings, at most) until the server closes the connection."""
    try:
        while s.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


def test_silent_connections_are_closed_and_capped(start_collector):
    collector = start_collector(handshake_timeout_s=5.0, max_connections=20)
    target = f"127.0.0.1:{collector.port}"
    silent = [socket.create_connection(("127.0.0.1", collector.port), timeout=10) for _ in range(60)]
    try:
        for s in silent:
            s.settimeout(0.02)
        at_once = sum(closed_by_peer(s) for s in silent)
        assert 35 <= at_once <= 45  # past the cap of 20 closed on arrival, the others held for now
        for s in silent:  # the rest at the handshake timeout
            s.settimeout(10)
            assert closed_by_peer(s)
    finally:
        for s in silent:
            s.close()
    assert well_behaved_report(target) == 1


def test_a_connection_without_calls_is_closed_when_idle(start_collector):
    collector = start_collector(max_connection_idle_s=1.0)
    channel = grpc.insecure_channel(f"127.0.0.1:{collector.port}")
    try:
        stub = feedback_pb2_grpc.FeedbackServiceStub(channel)
        stub.Report(small_batch(), timeout=10)
        assert channel._channel.check_connectivity_state(False) == 2  # READY
        deadline = time.monotonic() + 10
        while channel._channel.check_connectivity_state(False) == 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert channel._channel.check_connectivity_state(False) != 2  # the server sent GOAWAY
        assert stub.Report(small_batch(), timeout=10).accepted == 1  # a new connection
    finally:
        channel.close()


def big_batch(kb: int) -> feedback_pb2.ReportRequest:
    """A batch of ``kb`` KB (its turns' utterances are too long: each event is rejected, none produced)."""
    events = Client(tenant="default").events
    return feedback_pb2.ReportRequest(events=[
        events.turn("x" * 100_000, user_id="u1", status=events_pb2.RESPONSE_STATUS_OK) for _ in range(kb // 100)])


def test_requests_past_the_inflight_budget_are_refused_unparsed(start_collector, loop_thread):
    budget = 3_000_000
    collector = start_collector(inflight_bytes=budget, stream_deadline_s=2.0)
    target = f"127.0.0.1:{collector.port}"
    gauge = collector.metrics.registry
    peak = 0.0

    async def abuse() -> list[grpc.StatusCode]:
        nonlocal peak
        held = asyncio.ensure_future(hold_streams(target, 8, big_batch(800), hold_s=30.0))
        while not held.done():
            peak = max(peak, gauge.get_sample_value("loopwise_grpc_inflight_request_bytes"))
            await asyncio.sleep(0.02)
        return held.result()

    held = asyncio.run_coroutine_threadsafe(abuse(), loop_thread.loop)
    time.sleep(1.0)
    assert well_behaved_report(target) == 1  # a small call fits in what is left
    codes = held.result(20)
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 4  # 3 MB hold three 800 KB messages
    assert codes.count(grpc.StatusCode.DEADLINE_EXCEEDED) >= 1
    assert 0 < peak <= budget
    assert refused(collector, "StreamReport", "inflight_bytes") == codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert gauge.get_sample_value("loopwise_grpc_inflight_request_bytes") == 0  # all given back


@pytest.mark.parametrize("field", ["session_id", "request_id", "user_id", "model"])
def test_rank_refuses_an_over_long_id(start_inference, field):
    inference = start_inference()
    target = f"127.0.0.1:{inference.grpc.port}"
    wait_serving(target)
    with Client(inference=target, timeout=10) as lw:
        assert lw.rank(["m1", "m2"], **{field: "x" * 256} if field != "model" else {}).version == "v1"
        with pytest.raises(grpc.RpcError) as exc:
            lw.rank(["m1", "m2"], **{field: "x" * 100_000})
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in exc.value.details()


def test_every_nested_string_is_bounded(start_inference, start_collector):
    inference = start_inference()
    target = f"127.0.0.1:{inference.grpc.port}"
    wait_serving(target)
    with Client(inference=target, timeout=10) as lw:
        for call in (lambda: lw.rank(["m1"], user={"k" * 300: "v"}),
                     lambda: lw.rank(["m1"], features={"genre": ["g" * 300]}),
                     lambda: lw.rewrite("play it", context={"device": "d" * 300})):
            with pytest.raises(grpc.RpcError) as exc:
                call()
            assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert lw.rank(["m1"], user={"k": "v"}).version == "v1"
    collector = start_collector()
    with Client(f"127.0.0.1:{collector.port}", timeout=10) as lw:
        long_slot = lw.events.turn("play heat", user_id="u1", status=events_pb2.RESPONSE_STATUS_OK,
                                   interpretation=interpretation("play_movie", {"item": "i" * 300}))
        fine = lw.events.click("r1", "m1", user_id="u1")
        answer = lw.report([long_slot, fine])
        assert [r.reason for r in answer.results] == ["field_too_long", ""] and answer.accepted == 1
