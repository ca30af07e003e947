"""The collector acks nothing the broker did not ack, and recovers after an outage."""

from __future__ import annotations

import os
import signal
import threading
import time

import grpc
import pytest

from loopwise.client import Client, ReportError
from loopwise.client.build import EventFactory
from loopwise.tools import procs

from .kafka_read import read_events

pytestmark = pytest.mark.slow


@pytest.fixture
def own_broker(workdir):
    """A broker of this test's own, so pausing it disturbs no other test."""
    port = procs.free_port()
    proc = procs.start_broker(port, workdir / f"kafka-{port}.log")
    yield proc, f"127.0.0.1:{port}"
    os.kill(proc.pid, signal.SIGCONT)
    proc.stop()


def test_unreachable_broker_is_unavailable_and_nothing_is_acked(start_collector):
    dead = f"127.0.0.1:{procs.free_port()}"
    collector = start_collector(kafka_bootstrap=dead, ack_timeout_s=3.0)
    with Client(f"127.0.0.1:{collector.port}", retries=0) as lw:
        with pytest.raises(ReportError) as err:
            lw.report([lw.events.click("r", "m")])
    assert err.value.cause.code() == grpc.StatusCode.UNAVAILABLE


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
