"""Attribution rules, with the join's properties tested over arrival orders and duplicates."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from types import SimpleNamespace

import numpy as np
from faust.types import TP
from hypothesis import given, settings
from hypothesis import strategies as st

from loopwise.client.build import EventFactory, candidates, features
from loopwise.miner.attribution import Attribution, AttributionConfig, Outputs
from loopwise.miner.attribution_windows import Windows
from loopwise.miner.debias import ExposureCounter, FixedPositions
from loopwise.miner.recovery import InputRewind, ReadPositions, RecoveryGate
from loopwise.v1 import learning_pb2

WINDOW = 60_000
T0 = 1_800_000_000_000
F = EventFactory("t")


def engine(**kw) -> Windows:
    return Windows(Attribution(AttributionConfig(window_ms=WINDOW, **kw), FixedPositions(),
                               ExposureCounter()), {})


def impression(n: int, request_id: str = "r1", at: int = T0, logged=()):
    ids = [f"c{i}" for i in range(n)]
    ev = F.impression(request_id, ids, scores=[1.0 - i / 10 for i in range(n)], propensities=logged,
                      user_id="u1", at_ms=at, model="ranker", version="v3", source="inference")
    ev.impression.candidates.CopyFrom(candidates(ids, {"genre": [f"g{i}" for i in range(n)]}))
    ev.impression.user.CopyFrom(features({"gender": "F"}))
    return ev


def run(w: Windows, events, close_at: int | None = None):
    out = [w.process(b"k|" + e.request_id.encode(), e) for e in events]
    out.append(w.advance(close_at if close_at is not None else T0 + 10 * WINDOW))
    merged = out[0]
    for o in out[1:]:
        merged.extend(o)
    return merged


def test_click_is_positive_at_once_and_the_rest_negative_at_close():
    w = engine()
    imp = impression(3)
    click = F.click("r1", "c2", position=3, at_ms=T0 + 1000, user_id="u1")
    first = w.process(b"k", imp)
    assert not first.examples
    second = w.process(b"k", click)
    [pos] = second.examples
    assert pos.label == 1.0 and pos.candidate_id == "c2" and pos.position == 3
    assert pos.source == learning_pb2.LABEL_SOURCE_CLICK and pos.weight > 1.0
    assert pos.candidate.categorical["genre"] == "g2" and pos.user.categorical["gender"] == "F"
    assert pos.model == "ranker" and pos.version == "v3" and pos.served_score == np.float32(0.8)
    assert not w.advance(T0 + WINDOW - 1).examples
    closing = w.advance(T0 + WINDOW)
    assert sorted((e.candidate_id, e.label) for e in closing.examples) == [("c0", 0.0), ("c1", 0.0)]
    assert all(e.weight == 1.0 for e in closing.examples)
    kinds = {(p.preferred_id, p.other_id, p.kind) for p in closing.pairs}
    assert kinds == {("c2", "c0", "click_over_skip_above"), ("c2", "c1", "click_over_skip_above")}
    gap2 = next(p for p in closing.pairs if p.other_id == "c0")
    gap1 = next(p for p in closing.pairs if p.other_id == "c1")
    assert gap2.strength > gap1.strength > 0
    assert len(second.errors) == 1 and len(closing.errors) == 2


def test_without_weights_a_click_weighs_1_and_keeps_its_propensity():
    click = F.click("r1", "c2", position=3, at_ms=T0 + 1000, user_id="u1")
    for mode in ("window", "fnw"):
        weighted, plain = engine(feedback_mode=mode), engine(feedback_mode=mode, weights=False)
        for w in (weighted, plain):
            w.process(b"k", impression(3))
        [a] = [e for e in weighted.process(b"k", click).examples if e.label > 0]
        [b] = [e for e in plain.process(b"k", click).examples if e.label > 0]
        assert a.weight > 1.0 and b.weight == 1.0
        if mode == "fnw":  # the trainer's FNW weights read the click weight
            assert a.click_weight == a.weight and b.click_weight == 1.0
        assert b.propensity == a.propensity > 0 and b.position_propensity == a.position_propensity


def test_feedback_before_impression_waits_then_dead_letters():
    w = engine()
    out = w.process(b"k", F.click("r9", "c0", at_ms=T0))
    assert not out.examples and w.pending() == 1
    closing = w.advance(T0 + WINDOW)
    assert [reason for reason, _, _ in closing.dead] == ["unknown_request"]
    assert w.pending() == 0


def test_late_positive_is_a_correction():
    w = engine()
    w.process(b"k", impression(2))
    early = w.process(b"k", F.click("r1", "c1", at_ms=T0 + WINDOW + 5))
    assert not early.examples  # late by its own clock: settled when the window closes
    late = w.advance(T0 + WINDOW + 5)
    assert late.late == 1
    normal = [e for e in late.examples if not e.correction]
    [fix] = [e for e in late.examples if e.correction]
    assert sorted((e.candidate_id, e.label) for e in normal) == [("c0", 0.0), ("c1", 0.0)]
    assert fix.candidate_id == "c1" and fix.label == 1.0 and fix.example_id not in {e.example_id for e in normal}
    # after closing, late feedback corrects at once, once per candidate
    again = w.process(b"k", F.click("r1", "c0", at_ms=T0 + WINDOW + 9))
    assert [(e.candidate_id, e.correction) for e in again.examples] == [("c0", True)]
    assert not w.process(b"k", F.click("r1", "c0", at_ms=T0 + WINDOW + 10)).examples


def test_accept_over_reject_pairs_and_explicit_negative():
    w = engine()
    out = run(w, [impression(3), F.accept("r1", "c1", at_ms=T0 + 1), F.reject("r1", "c0", at_ms=T0 + 2)])
    labels = {e.candidate_id: (e.label, e.source) for e in out.examples}
    assert labels["c1"] == (1.0, learning_pb2.LABEL_SOURCE_ACCEPT)
    assert labels["c0"] == (0.0, learning_pb2.LABEL_SOURCE_REJECT)
    assert labels["c2"] == (0.0, learning_pb2.LABEL_SOURCE_NO_FEEDBACK)
    assert [(p.preferred_id, p.other_id, p.strength) for p in out.pairs] == [("c1", "c0", 1.0)]


def test_unknown_candidate_and_second_impression_are_dead_lettered():
    w = engine()
    out = run(w, [impression(2), F.click("r1", "zzz", at_ms=T0 + 1), impression(2)])
    reasons = sorted(r for r, _, _ in out.dead)
    assert reasons == ["duplicate_request_id", "unknown_candidate"]


def test_logged_propensity_is_used_and_weights_are_clipped():
    w = engine(clip=0.1)
    out = run(w, [impression(2, logged=[0.5, 0.01]), F.click("r1", "c1", at_ms=T0 + 1),
                  F.click("r1", "c0", at_ms=T0 + 2)])
    ex = {e.candidate_id: e for e in out.examples}
    assert ex["c0"].logged_propensity == np.float32(0.5)
    assert ex["c0"].weight == np.float32(1 / (0.5 * ex["c0"].position_propensity))
    assert ex["c1"].propensity < 0.1 and ex["c1"].weight == np.float32(10.0)  # clipped at M = 0.1


# -- properties of the join -------------------------------------------------------------------

@st.composite
def scenarios(draw):
    n = draw(st.integers(1, 6))
    feedback = []
    for i in range(n):
        kind = draw(st.sampled_from([None, "click", "accept", "reject"]))
        if kind is None:
            continue
        late = draw(st.booleans()) and draw(st.booleans())
        offset = WINDOW + draw(st.integers(1, WINDOW // 2)) if late else draw(st.integers(-WINDOW // 2, WINDOW))
        ev = getattr(F, kind)("r1", f"c{i}", at_ms=T0 + offset)
        feedback.append((ev, late))
    events = [impression(n)] + [ev for ev, _ in feedback]
    dupes = draw(st.lists(st.sampled_from(range(len(events))), max_size=4))
    events += [events[i] for i in dupes]
    order = draw(st.permutations(range(len(events))))
    return n, feedback, [events[i] for i in order]


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_every_shown_candidate_gets_exactly_one_example_whatever_the_order(scenario):
    n, feedback, events = scenario
    out = run(engine(), events)
    normal = [e for e in out.examples if not e.correction]
    assert sorted(e.candidate_id for e in normal) == [f"c{i}" for i in range(n)]
    ids = [e.example_id for e in out.examples]
    assert len(ids) == len(set(ids)), "an example was emitted twice"
    want = {ev.WhichOneof("body") and getattr(ev, ev.WhichOneof("body")).candidate_id:
            (ev.WhichOneof("body"), late) for ev, late in feedback}
    for e in normal:
        kind, late = want.get(e.candidate_id, (None, False))
        assert e.label == (1.0 if kind in ("click", "accept") and not late else 0.0)
    corrections = {e.candidate_id for e in out.examples if e.correction}
    assert corrections == {cid for cid, (kind, late) in want.items() if late and kind in ("click", "accept")}
    assert not out.dead


@settings(max_examples=100, deadline=None)
# Watermarks within the states' retention (closed states are kept one window past
# their deadline, T0 + 2 windows here): a copy of an event that comes after its
# request was forgotten is new traffic by design, not a duplicate.
@given(scenarios(), st.lists(st.integers(0, 2 * WINDOW - 1), max_size=5))
def test_interleaved_closing_never_duplicates_or_loses(scenario, advances):
    n, _, events = scenario
    w = engine()
    seen = []
    marks = sorted(advances)
    for i, ev in enumerate(events):
        out = w.process(b"k", ev)
        seen += out.examples
        if marks and i % 2:
            seen += w.advance(T0 + marks.pop(0)).examples
    seen += w.advance(T0 + 10 * WINDOW).examples
    normal = [e.candidate_id for e in seen if not e.correction]
    assert sorted(normal) == [f"c{i}" for i in range(n)]
    ids = [e.example_id for e in seen]
    assert len(ids) == len(set(ids))


def test_state_is_forgotten_one_window_after_closing():
    w = engine()
    run(w, [impression(2)], close_at=T0 + WINDOW)
    assert w.pending() == 1
    w.advance(T0 + 2 * WINDOW)
    assert w.pending() == 0


def test_rebuild_recovers_due_windows_from_the_table():
    table: dict = {}
    w = Windows(Attribution(AttributionConfig(window_ms=WINDOW), FixedPositions(), ExposureCounter()), table)
    w.process(b"k", impression(2))
    fresh = Windows(Attribution(AttributionConfig(window_ms=WINDOW), FixedPositions(), ExposureCounter()), table)
    fresh.rebuild()
    assert len(fresh.advance(T0 + WINDOW).examples) == 2


def test_a_partition_running_ahead_does_not_close_another_partitions_windows():
    w = engine()
    w.process(b"k0", impression(2, "r0"), "impressions", 0)
    w.process(b"k0e", F.click("rx", "c0", at_ms=T0), "events", 0)
    # partition 1 replays a day ahead on both topics
    w.process(b"k1", impression(2, "r1", at=T0 + 24 * 3600_000), "impressions", 1)
    w.process(b"k1e", F.click("ry", "c0", at_ms=T0 + 24 * 3600_000), "events", 1)
    assert w.watermark(0) < T0 + WINDOW <= w.watermark(1)
    assert not w.advance().examples  # partition 0's window is still open
    assert w.lag_ms() >= 24 * 3600_000 - 1000


def test_a_partitions_window_waits_for_its_slowest_stream():
    w = engine()
    w.process(b"k", impression(2, "r0"), "impressions", 0)
    w.process(b"k2", impression(1, "r2", at=T0 + 2 * WINDOW), "impressions", 0)  # impressions run ahead
    w.process(b"e", F.click("r9", "c0", at_ms=T0 + 10), "events", 0)  # the events stream lags behind
    assert w.watermark(0) < T0 + WINDOW
    w.process(b"k", F.click("r0", "c1", position=2, at_ms=T0 + 20), "events", 0)
    w.process(b"e", F.click("r9", "c0", at_ms=T0 + 2 * WINDOW), "events", 0)  # events catch up
    labels = sorted((e.candidate_id, e.label) for e in w.advance().examples if e.request_id == "r0")
    assert labels == [("c0", 0.0)]  # c1's positive came out at once, in-window, not as late


def test_closing_in_chunks_closes_everything_once():
    w = engine()
    for i in range(25):
        w.process(f"k{i}".encode(), impression(2, f"r{i}"), "impressions", i % 3)
    seen = []
    while w.more(T0 + WINDOW):
        seen += w.advance(T0 + WINDOW, limit=4).examples
    assert len(seen) == 50 and len({e.example_id for e in seen}) == 50


def test_a_silent_input_holds_its_partition_back_until_idle():
    w = Windows(Attribution(AttributionConfig(window_ms=WINDOW), FixedPositions(), ExposureCounter()), {},
                topics=("events", "impressions"), idle_s=2.0)
    w.observe("impressions", 0, T0, now=100.0)
    w.process(b"k", impression(2, "r0"), "impressions", 0)
    w.observe("impressions", 0, T0 + 2 * WINDOW, now=100.5)  # impressions far ahead, events not read yet
    assert w.watermark(0, now=101.0) == T0  # the silent events stream holds it
    assert w.watermark(0, now=100.0 + 2.0 + WINDOW / 1000) >= T0 + WINDOW  # idle: wall clock takes over


def test_a_stream_with_a_backlog_is_not_idle():
    backlog = {"events": True}
    w = Windows(Attribution(AttributionConfig(window_ms=WINDOW), FixedPositions(), ExposureCounter()), {},
                topics=("events", "impressions"), idle_s=2.0,
                caught_up=lambda topic, p: not backlog.get(topic, False))
    w.observe("events", 0, T0, now=100.0)
    w.observe("impressions", 0, T0 + 2 * WINDOW, now=100.0)
    assert w.watermark(0, now=100.0 + 2 * WINDOW / 1000) == T0  # events silent but behind: holds
    backlog["events"] = False
    assert w.watermark(0, now=100.0 + 2 + WINDOW / 1000) >= T0 + WINDOW


def test_read_positions_answer_caught_up_against_the_high_water_mark():
    high = {("events", 0): 10}

    def highwater(topic, partition):
        if topic == "gone":
            raise RuntimeError("no consumer yet")
        return high.get((topic, partition))

    positions = ReadPositions(highwater)
    assert positions.caught_up("events", 0)  # nothing read in this run: the idle timeout decides
    positions.record("events", 0, 5)
    assert not positions.caught_up("events", 0)
    positions.record("events", 0, 9)
    assert positions.caught_up("events", 0)
    assert positions.caught_up("events", 1) and positions.caught_up("gone", 0)  # unknown: yes
    w = Windows(Attribution(AttributionConfig(window_ms=WINDOW), FixedPositions(), ExposureCounter()), {},
                topics=("events",), idle_s=2.0, caught_up=positions.caught_up)
    w.observe("events", 0, T0, now=100.0)
    high[("events", 0)] = 20  # more arrived: the partition has a backlog, its watermark holds
    assert w.watermark(0, now=100.0 + 2 * WINDOW / 1000) == T0


class DroppingConsumer:
    """Faust's consumer after a recovery that dropped records it had fetched: its position
    is past them, its committed offsets are not."""

    def __init__(self, committed: dict, position: dict, high: dict) -> None:
        self._committed_offset = defaultdict(lambda: None, committed)
        self.position = dict(position)
        self.high = high
        self.seeks: list[dict] = []

    def assignment(self):
        return set(self.position)

    def highwater(self, tp):
        return self.high[tp]

    async def seek_wait(self, offsets) -> None:
        self.seeks.append(dict(offsets))
        self.position.update(offsets)


def test_records_faust_dropped_after_recovery_are_read_again_and_the_windows_close():
    """The stuck restart: records the consumer fetched were dropped before the agent read
    them, so its read offset stays below the high-water mark and the partition's watermark
    never moves on by the clock. The gate rewinds the inputs to their committed offsets
    (the beginning where none), the records are read again and the window closes."""
    events, imps, turns = TP("events", 0), TP("impressions", 0), TP("turns", 0)
    consumer = DroppingConsumer(committed={events: 2}, position={events: 4, imps: 3, turns: 7},
                                high={events: 4, imps: 3, turns: 7})
    completed = asyncio.Event()
    completed.set()
    app = SimpleNamespace(consumer=consumer, rebalancing=False, in_recovery=False,
                          tables=SimpleNamespace(recovery=SimpleNamespace(completed=completed)))
    positions = ReadPositions(lambda topic, partition: consumer.highwater(TP(topic, partition)))
    w = Windows(Attribution(AttributionConfig(window_ms=WINDOW), FixedPositions(), ExposureCounter()), {},
                topics=("events", "impressions"), idle_s=2.0, caught_up=positions.caught_up)
    f = EventFactory("t")
    w.process(b"r", f.impression("r", ["a", "b"], at_ms=T0), topic="impressions", partition=0)
    positions.record("impressions", 0, 2)
    positions.record("events", 0, 1)  # offsets 2 and 3 were fetched, then dropped
    later = time.monotonic() + 10 * WINDOW / 1000
    assert w.watermark(0, now=later) == T0  # stuck: a backlog that is never read

    gate = RecoveryGate(app, w.rebuild, rewind=InputRewind(app, ("events", "impressions")))
    assert asyncio.run(gate.ensure())
    assert consumer.seeks == [{events: 2, imps: 0}]  # other topics are not the agent's to rewind
    for offset in range(consumer.position[events], consumer.high[events]):  # read again
        positions.record("events", 0, offset)
    assert positions.caught_up("events", 0)
    assert w.watermark(0, now=later) > T0 + WINDOW
    assert [e.label for e in w.advance(w.watermark(0, now=later)).examples] == [0.0, 0.0]


def received(event, at_ms: int):
    """``event`` as the collector writes it: stamped with when it was received."""
    event.received_time_ms = at_ms
    return event


def test_a_client_with_a_fast_clock_does_not_close_other_clients_windows():
    w = engine()
    skew = 290_000  # inside the accepted 5 minutes
    own = Outputs()
    for p in (0, 1):  # the skewed client's own requests, on every partition and both streams
        w.process(f"s{p}".encode(), received(impression(2, f"s{p}", at=T0 + skew), T0), "impressions", p)
        own.extend(w.process(f"s{p}".encode(), received(F.click(f"s{p}", "c0", at_ms=T0 + skew + 1000), T0 + 1000),
                             "events", p))
    assert w.watermark(0) <= T0 + 1000 and w.watermark(1) <= T0 + 1000
    legit = [received(impression(3, f"r{i}", at=T0 + 2000), T0 + 2000) for i in range(8)]
    for i, imp in enumerate(legit):
        w.process(f"r{i}".encode(), imp, "impressions", i % 2)
    out = w.advance()
    assert not out.examples  # nobody's window is due yet
    for i in range(8):
        click = received(F.click(f"r{i}", "c1", position=2, at_ms=T0 + 5000), T0 + 5000)
        out.extend(w.process(f"r{i}".encode(), click, "events", i % 2))
    out.extend(w.advance(T0 + 2000 + WINDOW))
    positives = [e for e in out.examples if e.label > 0 and e.request_id.startswith("r")]
    assert len(positives) == 8 and not out.dead
    # the skewed client's own windows still close, by their own clock, with their own click positive
    own.extend(w.advance(T0 + skew + WINDOW))
    assert sorted((e.request_id, e.candidate_id, e.label) for e in own.examples) == \
        [("s0", "c0", 1.0), ("s0", "c1", 0.0), ("s1", "c0", 1.0), ("s1", "c1", 0.0)]


def test_after_recovery_the_watermark_resumes_from_received_times_not_a_fast_clock():
    table: dict = {}
    w = Windows(Attribution(AttributionConfig(window_ms=WINDOW), FixedPositions(), ExposureCounter()), table)
    w.process(b"s", received(impression(2, "s", at=T0 + 290_000), T0), "impressions", 0)
    w.process(b"r", received(impression(2, "r", at=T0), T0), "impressions", 0)
    fresh = Windows(Attribution(AttributionConfig(window_ms=WINDOW), FixedPositions(), ExposureCounter()), table)
    fresh.rebuild()
    assert fresh.watermark(0, now=time.monotonic()) < T0 + 1000


def test_a_state_that_fails_to_close_is_dead_lettered_and_the_others_still_close():
    """Poison stored before validation (a column one value short): its window's close raises;
    its events are dead-lettered, it is forgotten, the next request closes as usual."""
    w = engine()
    bad = impression(3, "r-bad")
    bad.impression.candidates.categorical[0].values.pop()
    click = F.click("r-bad", "c1", position=2, at_ms=T0 + 5, user_id="u1")
    w.table[b"k|r-bad"] = learning_pb2.AttributionState(impression=bad, feedback=[click],
                                                        deadline_ms=T0 + WINDOW).SerializeToString()
    w.rebuild()
    w.process(b"k|r-good", impression(2, "r-good"))
    out = w.advance(T0 + 10 * WINDOW)
    assert sorted((reason, ev.event_id) for reason, _, ev in out.dead) == sorted(
        [("processing_error", bad.event_id), ("processing_error", click.event_id)])
    assert "IndexError" in out.dead[0][1]
    assert sorted(e.candidate_id for e in out.examples if e.request_id == "r-good") == ["c0", "c1"]
    assert not any(e.request_id == "r-bad" for e in out.examples)
    assert b"k|r-bad" not in w.table and not w.more(T0 + 100 * WINDOW)


# -- prediction errors: a label reaches the error memory as soon as it is known ---------------

def test_a_click_makes_its_error_at_once_and_closing_never_repeats_it():
    w = engine()
    w.process(b"k", impression(3))
    click = F.click("r1", "c1", position=2, at_ms=T0 + 5, user_id="u1")
    clicked = w.process(b"k", click)
    [err] = clicked.errors
    assert (err.candidate_id, err.label, err.time_ms) == ("c1", 1.0, T0 + 5)
    assert err.served_score == np.float32(0.9) and err.model == "ranker" and err.version == "v3"
    accepted = w.process(b"k", F.accept("r1", "c2", at_ms=T0 + 6))
    assert [(e.candidate_id, e.label) for e in accepted.errors] == [("c2", 1.0)]
    assert not w.process(b"k", click).errors  # delivered again: a duplicate
    assert not w.process(b"k", F.click("r1", "c1", at_ms=T0 + 7)).errors  # a second label: the first wins
    assert not w.advance(T0 + WINDOW - 1).errors  # negatives wait for the window
    closing = w.advance(T0 + WINDOW)
    assert [(e.candidate_id, e.label) for e in closing.errors] == [("c0", 0.0)]
    assert err.error_id not in {e.error_id for e in closing.errors}


@settings(max_examples=100, deadline=None)
@given(scenarios())
def test_errors_positives_at_once_one_per_candidate_same_ids_when_replayed(scenario):
    """Every shown candidate gets exactly one error; an in-window click or accept gets it from
    the feedback's own step (before any window closes); a worker that reads the same records
    again after a crash (at-least-once) makes the same error ids, so consumers dedupe."""
    n, feedback, events = scenario
    w = engine()
    before_close = [e for ev in events for e in w.process(b"k", ev).errors]
    at_close = w.advance(T0 + 10 * WINDOW).errors
    errors = before_close + at_close
    assert sorted(e.candidate_id for e in errors) == [f"c{i}" for i in range(n)]
    assert len({e.error_id for e in errors}) == n
    positives = {getattr(ev, ev.WhichOneof("body")).candidate_id for ev, late in feedback
                 if not late and ev.WhichOneof("body") in ("click", "accept")}
    assert {e.candidate_id for e in before_close if e.label == 1.0} == positives
    assert {e.candidate_id for e in errors if e.label == 1.0} == positives
    replay = engine()
    again = [e for ev in events for e in replay.process(b"k", ev).errors] + replay.advance(T0 + 10 * WINDOW).errors
    assert sorted(e.error_id for e in again) == sorted(e.error_id for e in errors)


def test_an_error_carries_the_models_own_probability_when_the_memory_served():
    """Mode "on": the impression's scores are compensated; the error memory compensates the
    model's own probability, so that is the error's served_score (the example keeps the served one)."""
    w = engine()
    imp = impression(2)
    imp.impression.base_scores[:] = [0.3, 0.2]
    imp.impression.compensated_scores[:] = list(imp.impression.scores)
    w.process(b"k", imp)
    out = w.process(b"k", F.click("r1", "c1", at_ms=T0 + 1))
    assert out.errors[0].served_score == np.float32(0.2) and out.examples[0].served_score == np.float32(0.9)
    assert w.advance(T0 + WINDOW).errors[0].served_score == np.float32(0.3)
