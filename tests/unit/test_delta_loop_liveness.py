"""The trainer's delta loop says it is alive: `DeltaLoop.run` stamps
``loopwise_trainer_delta_loop_heartbeat_timestamp_seconds`` after every pass, whether or
not it stepped, so a pass that never returns (a send or a step that hangs) shows as a
heartbeat that stops advancing (alert LoopwiseTrainerDeltaLoopStalled), even though no
delta outcome is counted; and a pass whose restream fails is counted, the loop goes on and
tries that (tenant, model) again after a growing pause."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time

import pytest

pytest.importorskip("torch")  # the trainer's extra

from tests.unit.test_deltas import SETTINGS, Recorder, loop_on_coldstart, stepped_loop  # noqa: E402
from tests.unit.test_trainer import make_examples  # noqa: E402

HEARTBEAT = "loopwise_trainer_delta_loop_heartbeat_timestamp_seconds"
DEADLINE_S = 30.0


class HangingProducer:
    """Its first send (a new base's stream start, a delta without rows) is acked; every later
    one never returns (a broker that takes the request and never answers)."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.acked = 0

    async def send_and_wait(self, topic, value, key):
        if not self.acked:
            self.acked += 1
            return
        self.entered.set()
        await asyncio.Event().wait()


def heartbeat(trainer) -> float:
    return trainer.metrics.registry.get_sample_value(HEARTBEAT) or 0.0


async def advanced_past(trainer, than: float) -> float:
    deadline = time.monotonic() + DEADLINE_S
    while heartbeat(trainer) <= than:
        assert time.monotonic() < deadline, f"the heartbeat stayed at {heartbeat(trainer)}"
        await asyncio.sleep(0.01)
    return heartbeat(trainer)


def test_the_heartbeat_advances_while_the_loop_passes_and_stops_when_a_pass_hangs(tmp_path):
    async def scenario() -> None:
        loop, trainer = loop_on_coldstart(tmp_path, HangingProducer(),
                                          dataclasses.replace(SETTINGS, trainer_delta_interval_s=0.02))
        trainer._stopping = threading.Event()
        task = asyncio.create_task(loop.run())
        try:
            # Alive with nothing to learn: no delta outcome counted, the heartbeat advances.
            first = await advanced_past(trainer, 0.0)
            await advanced_past(trainer, first)
            for i, e in enumerate(make_examples(30, seed=21)):
                loop.add("default", "ranker", e.SerializeToString(), i, i)
            await asyncio.wait_for(trainer.producer.entered.wait(), DEADLINE_S)
            hung = heartbeat(trainer)
            await asyncio.sleep(0.3)  # fifteen intervals
            assert heartbeat(trainer) == hung
            assert not task.done()
            # only the stream's start was published; the hung send counts nothing
            assert trainer.metrics.deltas.labels("default", "ranker", "published")._value.get() == 1
            assert trainer.metrics.deltas.labels("default", "ranker", "failed")._value.get() == 0
        finally:
            trainer._stopping.set()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())


@pytest.mark.parametrize("interval_s", [0.1, 0.0])
def test_a_failed_restream_is_counted_the_loop_goes_on_and_tries_again_after_a_pause(tmp_path, caplog, interval_s):
    """A restream that keeps failing is tried a few times over 10 s of passes (every 0.1 s),
    each try counted as failed and logged once, the first with its traceback, not once a
    pass (a delta interval of 0 too); once it works again the loop restreams."""
    class Producer:
        def __init__(self) -> None:
            self.sent = 0

        async def send_and_wait(self, topic, value, key):
            self.sent += 1

    loop, trainer, dt = stepped_loop(tmp_path, Producer(), seed=22)
    assert trainer.producer.sent and dt.sequence > 0
    loop.settings = dataclasses.replace(loop.settings, trainer_delta_interval_s=interval_s)
    tries, works = [], dt.restream

    def restream():
        tries.append(1)
        raise RuntimeError("restream failed")

    def count(outcome: str) -> float:
        return trainer.metrics.deltas.labels("default", "ranker", outcome)._value.get()

    async def passes(start: float, n: int, until=lambda: False) -> None:
        for i in range(n):
            await loop.tick(start + i * 0.1)
            if until():
                return

    dt.restream = restream
    start = dt.stream_started + 31
    with caplog.at_level(logging.INFO, logger="loopwise.trainer.deltas_loop"):
        asyncio.run(loop.tick(start))  # does not raise out of the pass
        assert count("failed") == 1 and count("restreamed") == 0
        asyncio.run(passes(start + 0.1, 100))
        assert 2 <= len(tries) <= 10 and count("failed") == len(tries)
        failed = [r for r in caplog.records if r.message.startswith("delta step failed")]
        assert len(failed) == len(tries) and [r.exc_info is not None for r in failed] == [True] + [False] * (
            len(tries) - 1)
        dt.restream, sent = works, trainer.producer.sent
        asyncio.run(passes(start + 10.1, 400, until=lambda: count("restreamed")))  # 40 s: past the longest pause
    assert count("restreamed") == 1 and trainer.producer.sent > sent and count("failed") == len(tries)
    assert any(r.message == "delta steps work again" for r in caplog.records)


def test_passes_a_little_under_an_interval_apart_each_step(tmp_path):
    """Passes come on a fixed clock, one interval apart give or take scheduling jitter: a pass
    that comes a little early (0.098 s after the last step at a 0.1 s interval) still steps,
    rather than leaving the examples to wait a whole extra pass; one well under an interval
    (at half of it) does not."""
    loop, _ = loop_on_coldstart(tmp_path, Recorder(), dataclasses.replace(
        SETTINGS, trainer_delta_interval_s=0.1, trainer_delta_every_n=1 << 30))
    steps: list[float] = []

    async def step(tenant, model):
        steps.append(now)

    class Waiting:  # a delta trainer with examples waiting (no stream yet: nothing to restream)
        sequence, stream_started = 0, 0.0

        def waiting(self):
            return 5

    loop.step = step
    key = ("default", "ranker")
    times = [100.0, 100.098, 100.196, 100.245, 100.296, 100.394]
    for now in times:
        asyncio.run(loop._pass(key, Waiting(), now))
    assert steps == [100.0, 100.098, 100.196, 100.296, 100.394]
    assert loop.period() == 0.1
