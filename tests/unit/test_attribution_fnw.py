"""The miner's fake-negative feedback mode (LOOPWISE_FEEDBACK_MODE=fnw): every shown candidate
at once as a negative, a click as a positive duplicate at once, nothing more at close."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopwise.client.build import EventFactory, candidates, features
from loopwise.miner.attribution import Attribution, AttributionConfig
from loopwise.miner.attribution_windows import Windows
from loopwise.miner.debias import ExposureCounter, FixedPositions
from loopwise.v1 import learning_pb2

WINDOW = 60_000
T0 = 1_800_000_000_000
F = EventFactory("t")
FAKE = learning_pb2.FEEDBACK_MODE_FAKE_NEGATIVE


def engine(mode: str = "fnw", table: dict | None = None) -> Windows:
    return Windows(Attribution(AttributionConfig(window_ms=WINDOW, feedback_mode=mode), FixedPositions(),
                               ExposureCounter()), {} if table is None else table)


def impression(n: int, request_id: str = "r1", at: int = T0):
    ids = [f"c{i}" for i in range(n)]
    ev = F.impression(request_id, ids, scores=[1.0 - i / 10 for i in range(n)], user_id="u1", at_ms=at,
                      model="ranker", version="v3", source="inference")
    ev.impression.candidates.CopyFrom(candidates(ids, {"genre": [f"g{i}" for i in range(n)]}))
    ev.impression.user.CopyFrom(features({"gender": "F"}))
    return ev


def test_impression_emits_every_candidate_at_once_as_a_fake_negative():
    w = engine()
    out = w.process(b"k", impression(3))
    assert [(e.candidate_id, e.label, e.position) for e in out.examples] == [
        ("c0", 0.0, 1), ("c1", 0.0, 2), ("c2", 0.0, 3)]
    for e in out.examples:
        assert e.feedback_mode == FAKE and e.source == learning_pb2.LABEL_SOURCE_NO_FEEDBACK
        assert e.weight == 1.0 and not e.correction and e.label_time_ms == T0
        assert e.candidate.categorical["genre"] == f"g{e.position - 1}" and e.user.categorical["gender"] == "F"
    assert len({e.example_id for e in out.examples}) == 3
    assert not out.errors  # the error memory still learns a negative when it is final


def test_click_emits_a_positive_duplicate_at_once_with_its_ips_weight():
    w = engine()
    [neg] = [e for e in w.process(b"k", impression(3)).examples if e.candidate_id == "c2"]
    out = w.process(b"k", F.click("r1", "c2", position=3, at_ms=T0 + 1000, user_id="u1"))
    [pos] = out.examples
    assert pos.label == 1.0 and pos.candidate_id == "c2" and pos.feedback_mode == FAKE
    assert pos.source == learning_pb2.LABEL_SOURCE_CLICK and pos.weight > 1.0 and not pos.correction
    assert pos.label_time_ms == T0 + 1000 and pos.impression_time_ms == T0
    assert pos.example_id != neg.example_id  # both are kept (the trainer dedupes on the id)
    assert neg.click_weight == pos.click_weight == pos.weight and neg.weight == 1.0  # for FNW's click probability
    assert out.attributed == 1 and len(out.errors) == 1


def test_duplicate_or_second_click_emits_no_second_positive():
    w = engine()
    w.process(b"k", impression(3))
    click = F.click("r1", "c1", at_ms=T0 + 1000)
    assert len(w.process(b"k", click).examples) == 1
    again = w.process(b"k", click)  # the same event id (at-least-once delivery)
    assert not again.examples and again.duplicates == 1
    other = w.process(b"k", F.click("r1", "c1", at_ms=T0 + 2000))  # a second click, its own id
    assert not other.examples and other.conflicts == 1
    accept = w.process(b"k", F.accept("r1", "c1", at_ms=T0 + 3000))
    assert not accept.examples


def test_replayed_impression_emits_no_second_fake_negatives():
    w = engine()
    imp = impression(4)
    assert len(w.process(b"k", imp).examples) == 4
    again = w.process(b"k", imp)
    assert not again.examples and again.duplicates == 1


def test_window_close_emits_no_extra_negatives_only_errors_and_pairs():
    w = engine()
    w.process(b"k", impression(3))
    w.process(b"k", F.click("r1", "c2", position=3, at_ms=T0 + 1000))
    w.process(b"k", F.reject("r1", "c0", at_ms=T0 + 1500))
    assert not w.advance(T0 + WINDOW - 1).examples
    closing = w.advance(T0 + WINDOW)
    assert not closing.examples
    assert sorted(e.candidate_id for e in closing.errors) == ["c1"]  # c0, c2: at their feedback
    assert {(p.preferred_id, p.other_id) for p in closing.pairs} == {("c2", "c1"), ("c2", "c0")}
    assert not w.advance(T0 + 10 * WINDOW).examples  # retention over: forgotten


def test_reject_adds_no_example():
    w = engine()
    w.process(b"k", impression(2))
    out = w.process(b"k", F.reject("r1", "c0", at_ms=T0 + 1000))
    assert not out.examples and len(out.errors) == 1 and out.errors[0].label == 0.0


def test_late_click_is_a_positive_duplicate_once_not_a_correction():
    w = engine()
    w.process(b"k", impression(2))
    w.advance(T0 + WINDOW)
    late = w.process(b"k", F.click("r1", "c1", at_ms=T0 + WINDOW + 5))
    [pos] = late.examples
    assert late.late == 1 and pos.label == 1.0 and pos.feedback_mode == FAKE and not pos.correction
    assert not w.process(b"k", F.click("r1", "c1", at_ms=T0 + WINDOW + 9)).examples


def test_feedback_before_its_impression_comes_out_after_the_fake_negatives():
    w = engine()
    assert not w.process(b"k", F.click("r1", "c0", at_ms=T0 + 10)).examples
    out = w.process(b"k", impression(2))
    assert [(e.candidate_id, e.label) for e in out.examples] == [("c0", 0.0), ("c1", 0.0), ("c0", 1.0)]


def test_the_mode_is_the_requests_own():
    """A request opened in window mode closes as it began after the setting changed."""
    table: dict = {}
    old = engine("window", table)
    assert not old.process(b"k", impression(2)).examples
    new = engine("fnw", table)
    new.rebuild()
    closing = new.advance(T0 + WINDOW)
    assert sorted((e.candidate_id, e.label, e.feedback_mode) for e in closing.examples) == [
        ("c0", 0.0, learning_pb2.FEEDBACK_MODE_WINDOW), ("c1", 0.0, learning_pb2.FEEDBACK_MODE_WINDOW)]


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="feedback mode"):
        engine("eager")


@settings(max_examples=60, deadline=None)
@given(st.permutations(range(5)), st.lists(st.integers(0, 4), max_size=5))
def test_every_candidate_one_fake_negative_and_each_clicked_one_positive(order, dup):
    """Over arrival orders and redeliveries: exactly one fake negative per shown candidate and
    one positive per clicked one, nothing at close."""
    imp = impression(4)
    events = [imp, F.click("r1", "c1", at_ms=T0 + 10), F.click("r1", "c3", at_ms=T0 + 20),
              F.accept("r1", "c3", at_ms=T0 + 30), F.reject("r1", "c0", at_ms=T0 + 40)]
    stream = [events[i] for i in order] + [events[i] for i in dup]
    w = engine()
    got = [e for ev in stream for e in w.process(b"k", ev).examples]
    got += w.advance(T0 + 10 * WINDOW).examples
    assert sorted((e.candidate_id, e.label) for e in got) == [
        ("c0", 0.0), ("c1", 0.0), ("c1", 1.0), ("c2", 0.0), ("c3", 0.0), ("c3", 1.0)]
    assert len({e.example_id for e in got}) == len(got)
