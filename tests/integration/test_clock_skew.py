"""One client's clock cannot move everyone's windows (issue 13, item 9): a client
whose clock is 290 s fast (inside the collector's 5 minutes) reports through the
real collector; the real miner's watermarks follow the collector's received
time, so other clients' clicks still land in their windows."""

from __future__ import annotations

import time
import uuid

import pytest

from loopwise import stamps
from loopwise.client import Client
from loopwise.client.build import EventFactory
from loopwise.tools import procs
from loopwise.topics import ensure_topics
from loopwise.v1 import learning_pb2

from .kafka_read import read_records

pytestmark = pytest.mark.slow
WINDOW_MS = 4000
SKEW_MS = 290_000


@pytest.fixture
def miner(broker, topics, workdir):
    ensure_topics(broker, topics.all(), 2)
    app_id = f"miner-{uuid.uuid4().hex[:8]}"
    mport = procs.free_port()
    env = {"LOOPWISE_KAFKA_BOOTSTRAP": broker, "LOOPWISE_APP_ID": app_id, "LOOPWISE_TOPIC_PARTITIONS": "2",
           "LOOPWISE_METRICS_PORT": str(mport), "LOOPWISE_GRPC_HOST": "127.0.0.1",
           "LOOPWISE_ATTRIBUTION_WINDOW_MS": str(WINDOW_MS), "LOOPWISE_CLOSE_INTERVAL_S": "0.2",
           "LOOPWISE_FEEDBACK_MODE": "window",  # closing windows early is what a fast clock could break
           "LOOPWISE_CHANGELOG_CATCH_UP": "true", **topics.env()}  # Tansu under-reports end offsets
    proc = procs.start_service("loopwise.miner", env, workdir / f"{app_id}.log")
    url = f"http://127.0.0.1:{mport}/metrics"
    procs.wait_ready(url, 60, proc)
    yield url
    proc.stop()


def test_a_client_with_a_fast_clock_does_not_close_other_clients_windows(miner, start_collector, broker, topics):
    collector = start_collector()
    skewed, legit = EventFactory("default"), EventFactory("default")
    ids = ["m0", "m1", "m2"]
    with Client(f"127.0.0.1:{collector.port}") as lw:
        ahead = stamps.now_ms() + SKEW_MS
        # the skewed client's requests, spread over both partitions and both topics
        noisy = []
        for i in range(8):
            rid = f"skew-{i}-{uuid.uuid4().hex[:6]}"
            noisy += [skewed.impression(rid, ids, user_id="eve", at_ms=ahead),
                      skewed.click(rid, "m0", user_id="eve", position=1, at_ms=ahead + 10)]
        assert lw.report(noisy).accepted == 16
        now = stamps.now_ms()
        requests = [f"legit-{i}-{uuid.uuid4().hex[:6]}" for i in range(8)]
        assert lw.report([legit.impression(r, ids, user_id=f"u{i}", at_ms=now)
                          for i, r in enumerate(requests)]).accepted == 8
        time.sleep(1.5)  # several close ticks of the miner, well inside the window
        clicks = [legit.click(r, "m1", user_id=f"u{i}", position=2, at_ms=now + 1500)
                  for i, r in enumerate(requests)]
        assert lw.report(clicks).accepted == 8
    examples = [learning_pb2.Example.FromString(r.value)
                for r in read_records(broker, topics.examples, want=8 * 3, timeout=30, idle=1.0)]
    mine = [e for e in examples if e.request_id in set(requests) and not e.correction]
    assert sum(e.label > 0 for e in mine) == 8, sorted((e.request_id, e.candidate_id, e.label) for e in mine)
    assert len({(e.request_id, e.candidate_id) for e in mine}) == 8 * 3
    assert not procs.metric_value(miner, "loopwise_miner_deadlettered_total", {"reason": "unknown_request"})
    assert procs.metric_value(miner, "loopwise_miner_clock_ahead_total") >= 16  # detected, and counted
