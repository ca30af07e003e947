"""The collector acks nothing the broker did not ack, and recovers after an outage."""

from __future__ import annotations

import os
import signal
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from loopwise.client import Client, ReportError
from loopwise.client.build import EventFactory
from loopwise.tools import procs

from .kafka_read import read_events

pytestmark = pytest.mark.slow

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def own_broker(workdir):
    """A broker of this test's own, so pausing it disturbs no other test."""
    port = procs.free_port()
    proc = procs.start_broker(port, workdir / f"kafka-{port}.log")
    yield proc, f"127.0.0.1:{port}"
    os.kill(proc.pid, signal.SIGCONT)
    proc.stop()


def health(target: str) -> int:
    with grpc.insecure_channel(target) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def wait_until(check, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def test_unreachable_broker_is_unavailable_and_nothing_is_acked(start_collector):
    dead = f"127.0.0.1:{procs.free_port()}"
    collector = start_collector(kafka_bootstrap=dead, ack_timeout_s=3.0)
    with Client(f"127.0.0.1:{collector.port}", retries=0) as lw:
        with pytest.raises(ReportError) as err:
            lw.report([lw.events.click("r", "m")])
    assert err.value.cause.code() == grpc.StatusCode.UNAVAILABLE
    assert health(f"127.0.0.1:{collector.port}") == NOT_SERVING
    assert collector.metrics.registry.get_sample_value("loopwise_collector_producer_up") == 0.0


def test_paused_broker_then_retry_with_same_ids_delivers_everything(start_collector, own_broker, topics):
    proc, bootstrap = own_broker
    collector = start_collector(kafka_bootstrap=bootstrap, ack_timeout_s=2.0)
    f = EventFactory("default")
    before = [f.click(f"r{i}", "m") for i in range(20)]
    during = [f.click(f"s{i}", "m") for i in range(20)]
    with Client(f"127.0.0.1:{collector.port}", retries=0, timeout=10) as lw:
        assert lw.report(before).accepted == 20
        os.kill(proc.pid, signal.SIGSTOP)
        with pytest.raises(ReportError):
            lw.report(during)
    # The client retries with the same ids while the broker comes back.
    threading.Timer(1.5, os.kill, (proc.pid, signal.SIGCONT)).start()
    with Client(f"127.0.0.1:{collector.port}", retries=8, timeout=10) as lw:
        start = time.monotonic()
        assert lw.report(during).accepted == 20
        assert time.monotonic() - start > 1.0
    got = {e.event_id for e in read_events(bootstrap, topics.events, want=40, timeout=20)}
    assert {e.event_id for e in before + during} <= got


def test_broker_restart_replaces_the_producer(start_collector, workdir, topics):
    """kafka-python's idempotent producer never recovers from a restarted broker
    (its producer id is gone); the collector must replace it."""
    port = procs.free_port()
    bootstrap = f"127.0.0.1:{port}"
    broker = procs.start_broker(port, workdir / f"kafka-{port}.log")
    try:
        collector = start_collector(kafka_bootstrap=bootstrap, ack_timeout_s=3.0)
        f = EventFactory("default")
        with Client(f"127.0.0.1:{collector.port}", retries=0, timeout=10) as lw:
            assert lw.report([f.click("r0", "m")]).accepted == 1
        broker.stop()
        broker = procs.start_broker(port, workdir / f"kafka-{port}-2.log")
        after = [f.click(f"r{i}", "m") for i in range(1, 11)]
        with Client(f"127.0.0.1:{collector.port}", retries=10, timeout=10) as lw:
            assert lw.report(after).accepted == 10
        assert collector.metrics.registry.get_sample_value("loopwise_collector_producer_recreated_total") >= 1
        got = {e.event_id for e in read_events(bootstrap, topics.events, want=10, timeout=20)}
        assert {e.event_id for e in after} <= got
    finally:
        broker.stop()


def test_long_broker_stall_recovers_and_health_tells(start_collector, own_broker, topics):
    """A stall longer than the producer's delivery timeout (10 s) used to wedge
    kafka-python's idempotent producer for good: every later Report answered
    UNAVAILABLE while health said SERVING."""
    proc, bootstrap = own_broker
    collector = start_collector(kafka_bootstrap=bootstrap, ack_timeout_s=4.0)
    target = f"127.0.0.1:{collector.port}"
    f = EventFactory("default")
    acked = []
    with Client(target, retries=0, timeout=10) as lw:
        first = f.click("r0", "m")
        assert lw.report([first]).accepted == 1
        acked.append(first)
        assert health(target) == SERVING
        os.kill(proc.pid, signal.SIGSTOP)
        stalled_until = time.monotonic() + 13
        seen = set()
        i = 0
        while time.monotonic() < stalled_until:  # light load through the stall
            i += 1
            with pytest.raises(ReportError):
                lw.report([f.click(f"s{i}", "m")])
            seen.add(health(target))
        assert NOT_SERVING in seen, "health said SERVING while nothing could be delivered"
        os.kill(proc.pid, signal.SIGCONT)
        # Back by itself, before any client tries again ...
        assert wait_until(lambda: health(target) == SERVING, 10), "health stayed NOT_SERVING"
        # ... and Reports are acked at once.
        after = [f.click(f"a{i}", "m") for i in range(5)]
        for event in after:
            assert lw.report([event]).accepted == 1
            acked.append(event)
    assert collector.metrics.registry.get_sample_value("loopwise_collector_producer_recreated_total") >= 1
    assert collector.metrics.registry.get_sample_value("loopwise_collector_producer_up") == 1.0
    got = {e.event_id for e in read_events(bootstrap, topics.events, want=len(acked), timeout=20)}
    assert {e.event_id for e in acked} <= got
