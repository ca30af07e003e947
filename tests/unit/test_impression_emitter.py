"""The impression emitter's bounds, with a stand-in producer: retries end,
a refused record is isolated and dead-lettered, an oversized impression is
trimmed or dead-lettered, the degraded state follows delivery; and the
servicer offers only the impressions of calls that were delivered."""

from __future__ import annotations

import asyncio

import numpy as np
from aiokafka import errors as kerr

from loopwise import codec, limits, stamps
from loopwise.inference.impressions import ImpressionEmitter
from loopwise.inference.metrics import InferenceMetrics
from loopwise.inference.servicer import InferenceServicer
from loopwise.inference.settings import InferenceSettings
from loopwise.settings import BaseSettings
from loopwise.v1 import events_pb2, inference_pb2, learning_pb2


class FakeProducer:
    """Acks every record, except as told: ``refuse`` (values refused for
    themselves, and with them every record sent in the same call while
    ``taint`` is set) and ``down`` (calls failing with a timeout)."""

    def __init__(self, refuse: set[bytes] = frozenset(), down: int = 0, taint: bool = True) -> None:
        self.refuse, self.down, self.taint = set(refuse), down, taint
        self.sent: dict[str, list[bytes]] = {}
        self._group: list[tuple[asyncio.Future, bytes]] = []

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self._group.append((future, value))
        asyncio.get_running_loop().call_soon(self._settle, topic)
        return future

    def _settle(self, topic: str) -> None:
        group, self._group = self._group, []
        if not group:
            return
        if self.down:
            self.down -= 1
            for future, _ in group:
                future.set_exception(kerr.KafkaTimeoutError())
            return
        tainted = self.taint and any(v in self.refuse for _, v in group)
        for future, value in group:
            if value in self.refuse or tainted:
                future.set_exception(kerr.MessageSizeTooLargeError())
            else:
                self.sent.setdefault(topic, []).append(value)
                future.set_result(None)

    async def send_and_wait(self, topic: str, value: bytes, key: bytes) -> None:
        self.sent.setdefault(topic, []).append(value)

    async def stop(self) -> None:
        pass


def record(request_id: str, blob: int = 0) -> tuple[bytes, bytes]:
    event = events_pb2.Event(event_id=stamps.new_event_id(), tenant="default", request_id=request_id,
                             client_time_ms=1)
    event.impression.candidate_ids.append("a")
    if blob:
        event.impression.context.categorical["blob"] = "x" * blob
    return codec.record_key(event), event.SerializeToString()


def emitter(producer: FakeProducer, **kwargs) -> tuple[ImpressionEmitter, list[bool]]:
    changes: list[bool] = []
    e = ImpressionEmitter(BaseSettings(kafka_bootstrap="unused:1"), "imp", InferenceMetrics(), deadletter_topic="dead", retry_s=0.5,
                          on_degraded=changes.append, **kwargs)
    e._producer = producer  # as `_run` would after connecting
    e._set_degraded(False)
    return e, changes


def sample(e: ImpressionEmitter, name: str, **labels: str) -> float:
    return e.metrics.registry.get_sample_value(name, labels or None) or 0.0


def test_a_refused_record_is_isolated_dead_lettered_and_the_rest_delivered():
    bad = record("bad")
    producer = FakeProducer(refuse={bad[1]})
    e, changes = emitter(producer)
    asyncio.run(e._produce([record("a"), bad, record("b")]))
    assert sorted(codec.decode(v).request_id for v in producer.sent["imp"]) == ["a", "b"]
    [letter] = [learning_pb2.DeadLetter.FromString(v) for v in producer.sent["dead"]]
    assert letter.reason == "rejected_by_broker" and letter.service == "inference"
    assert codec.decode(letter.payload).request_id == "bad"
    assert sample(e, "loopwise_inference_impressions_emitted_total") == 2
    assert changes == [False] and not e.degraded


def test_retries_are_bounded_then_the_queue_moves_on():
    producer = FakeProducer(down=10_000)
    e, changes = emitter(producer)
    asyncio.run(e._produce([record("a"), record("b")]))  # returns: not a loop forever
    assert sample(e, "loopwise_inference_impressions_dropped_total", reason="undeliverable") == 2
    assert e.degraded and changes == [False, True]
    assert sample(e, "loopwise_inference_impressions_degraded") == 1
    producer.down = 0
    asyncio.run(e._produce([record("c")]))
    assert not e.degraded and changes == [False, True, False]


def test_a_blip_is_retried_not_dropped():
    producer = FakeProducer(down=1)
    e, _ = emitter(producer)
    asyncio.run(e._produce([record("a")]))
    assert [codec.decode(v).request_id for v in producer.sent["imp"]] == ["a"]
    assert sample(e, "loopwise_inference_impression_errors_total") == 1
    assert sample(e, "loopwise_inference_impressions_dropped_total", reason="undeliverable") == 0


def _impression(n: int, context_blob: int = 0):
    request = inference_pb2.RankRequest(request_id="r", candidates={"ids": [f"m{i:07d}" for i in range(n)]})
    if context_blob:
        request.context.categorical["blob"] = "x" * context_blob
    scores = np.linspace(0, 1, n, dtype=np.float32)
    hidden = np.ones((n, 64), dtype=np.float32)
    return ("default", request, "r", "ranker", "v1", scores, np.arange(n), hidden, 1)


def test_an_impression_over_the_limit_loses_its_representation_first():
    from loopwise.inference.impressions import build_impression

    e, _ = emitter(FakeProducer())
    event = build_impression(*_impression(limits.MAX_CANDIDATES))
    assert event.ByteSize() > limits.MAX_EVENT_BYTES
    key, value = asyncio.run(e._encode(event))
    decoded = codec.decode(value)
    assert len(value) <= limits.MAX_EVENT_BYTES and not decoded.impression.representation
    assert len(decoded.impression.candidate_ids) == limits.MAX_CANDIDATES
    assert sample(e, "loopwise_inference_impressions_trimmed_total", part="representation") == 1


def test_an_impression_that_cannot_fit_is_dead_lettered_with_a_small_payload():
    from loopwise.inference.impressions import build_impression

    producer = FakeProducer()
    e, _ = emitter(producer)
    assert asyncio.run(e._encode(build_impression(*_impression(3, context_blob=limits.MAX_EVENT_BYTES)))) is None
    [letter] = [learning_pb2.DeadLetter.FromString(v) for v in producer.sent["dead"]]
    assert letter.reason == "event_too_large" and len(letter.payload) < 1_000
    assert codec.decode(letter.payload).request_id == "r"


class FakeContext:
    def __init__(self, remaining: float | None, cancelled: bool = False) -> None:
        self.remaining, self._cancelled, self.callbacks = remaining, cancelled, []

    def time_remaining(self) -> float | None:
        return self.remaining

    def cancelled(self) -> bool:
        return self._cancelled

    def add_done_callback(self, fn) -> None:
        self.callbacks.append(fn)

    def finish(self, *, remaining: float | None = None, cancelled: bool = False) -> None:
        self.remaining, self._cancelled = remaining, cancelled
        for fn in self.callbacks:
            fn(self)


class Offers:
    def __init__(self) -> None:
        self.items: list[tuple] = []

    def offer(self, item: tuple) -> None:
        self.items.append(item)


def test_only_delivered_calls_offer_their_impression():
    metrics = InferenceMetrics()
    offers = Offers()
    servicer = InferenceServicer.__new__(InferenceServicer)
    servicer.emitter, servicer.metrics = offers, metrics
    servicer.settings = InferenceSettings(impression_deadline_margin_ms=5.0)

    cases = [(FakeContext(None), {}, True), (FakeContext(5.0), {"remaining": 4.0}, True),
             (FakeContext(-0.001), {}, False),  # past its deadline when the answer was ready
             (FakeContext(0.01), {"remaining": -0.002}, False),  # past it once handed to the transport
             (FakeContext(0.01), {"remaining": 0.003}, False),  # within a round trip of it: maybe too late
             (FakeContext(5.0), {"remaining": 4.0, "cancelled": True}, False)]
    for i, (context, finish, offered) in enumerate(cases):
        servicer._offer_when_delivered(context, (i,))
        context.finish(**finish)
        assert ((i,) in offers.items) == offered, i
    assert metrics.registry.get_sample_value("loopwise_inference_impressions_dropped_total",
                                             {"reason": "abandoned"}) == 4
