import pytest

from loopwise.client.build import EventFactory, candidates, event
from loopwise.v1 import events_pb2
from loopwise.validation import REASONS, Limits, check_event

NOW = 1_800_000_000_000
F = EventFactory("default")


def check(ev, **kw):
    return check_event(ev, tenants={"default"}, now_ms=NOW, **kw)


def ok_click(**kw):
    return F.click("r1", "m1", user_id="u1", at_ms=NOW, **kw)


def test_valid_events_pass():
    assert check(ok_click()) is None
    assert check(F.turn("play heat", user_id="u1", status=1, at_ms=NOW)) is None
    assert check(F.impression("r1", ["a", "b"], scores=[0.2, 0.1], propensities=[0.5, 1.0], at_ms=NOW)) is None
    assert check(F.accept("r1", "m1", at_ms=NOW)) is None
    assert check(F.reject("r1", "m1", at_ms=NOW)) is None


@pytest.mark.parametrize("mutate,reason", [
    (lambda e: e.ClearField("event_id"), "missing_event_id"),
    (lambda e: setattr(e, "event_id", "x" * 200), "invalid_event_id"),
    (lambda e: setattr(e, "event_id", "bad\nid"), "invalid_event_id"),
    (lambda e: e.ClearField("tenant"), "missing_tenant"),
    (lambda e: setattr(e, "tenant", "other"), "unknown_tenant"),
    (lambda e: e.ClearField("click"), "missing_body"),
    (lambda e: e.ClearField("client_time_ms"), "missing_timestamp"),
    (lambda e: setattr(e, "client_time_ms", NOW + 3_600_000), "timestamp_in_future"),
    (lambda e: setattr(e, "client_time_ms", NOW - 90 * 86_400_000), "timestamp_too_old"),
    (lambda e: setattr(e, "user_id", "u" * 300), "field_too_long"),
    (lambda e: e.ClearField("request_id"), "missing_request_id"),
    (lambda e: e.click.ClearField("candidate_id"), "missing_candidate_id"),
])
def test_bad_clicks(mutate, reason):
    ev = ok_click()
    mutate(ev)
    problem = check(ev)
    assert problem is not None and problem[0] == reason
    assert reason in REASONS and problem[1]


def test_bad_turns():
    assert check(F.turn("  ", user_id="u1", status=1, at_ms=NOW))[0] == "empty_utterance"
    assert check(F.turn("x" * 2000, user_id="u1", status=1, at_ms=NOW))[0] == "utterance_too_long"
    assert check(F.turn("hi", user_id="", status=1, at_ms=NOW))[0] == "missing_user_id"


def test_bad_impressions():
    assert check(F.impression("r", [], at_ms=NOW))[0] == "empty_impression"
    assert check(F.impression("r", ["a", "b"], scores=[0.1], at_ms=NOW))[0] == "misaligned_scores"
    assert check(F.impression("r", ["a"], propensities=[0.0], at_ms=NOW))[0] == "invalid_propensity"
    many = F.impression("r", [str(i) for i in range(11)], at_ms=NOW)
    assert check(many, limits=Limits(max_candidates=10))[0] == "too_many_candidates"


def test_size_limit():
    ev = event("default", request_id="r", at_ms=NOW,
               impression=events_pb2.Impression(candidate_ids=["x" * 100] * 50))
    assert check(ev, limits=Limits(max_event_bytes=1000))[0] == "event_too_large"


def impression_with_features(**columns):
    ev = F.impression("r", ["a", "b", "c"], scores=[0.3, 0.2, 0.1], at_ms=NOW)
    ev.impression.candidates.CopyFrom(candidates(["c", "a", "b"], columns or {"pop": [0.1, 0.2, 0.3]}))
    ev.impression.ranking.extend([1, 2, 0])
    return ev


def test_an_impression_with_features_and_a_ranking_passes():
    assert check(impression_with_features(genre=["x", "y", "z"], pop=[1.0, 2.0, 3.0])) is None


@pytest.mark.parametrize("mutate,reason", [
    # a feature column shorter or longer than the candidates
    (lambda i: i.candidates.numeric[0].values.pop(), "misaligned_features"),
    (lambda i: i.candidates.categorical.add(name="g", values=["x"]), "misaligned_features"),
    (lambda i: i.candidates.numeric.add(name="q", values=[1.0, 2.0, 3.0, 4.0]), "misaligned_features"),
    # columns without ids
    (lambda i: i.candidates.ClearField("ids"), "misaligned_features"),
    # the ranking: past the candidates, a position twice, not one entry per shown candidate
    (lambda i: i.ranking.__setitem__(2, 3), "invalid_ranking"),
    (lambda i: i.ranking.__setitem__(2, 1), "invalid_ranking"),
    (lambda i: i.ranking.pop(), "invalid_ranking"),
    # non-finite numbers anywhere
    (lambda i: i.candidates.numeric[0].values.__setitem__(1, float("nan")), "non_finite_number"),
    (lambda i: i.candidates.numeric[0].values.__setitem__(0, float("inf")), "non_finite_number"),
    (lambda i: i.context.numeric.__setitem__("hour", float("-inf")), "non_finite_number"),
    (lambda i: i.user.numeric.__setitem__("age", float("nan")), "non_finite_number"),
    (lambda i: i.scores.__setitem__(0, float("nan")), "non_finite_number"),
    (lambda i: i.representation_scale.extend([float("inf")] * 3), "non_finite_number"),
])
def test_structurally_inconsistent_impressions_are_refused(mutate, reason):
    ev = impression_with_features()
    mutate(ev.impression)
    problem = check(ev)
    assert problem is not None and problem[0] == reason, problem
    assert reason in REASONS and problem[1]


def test_a_ranking_without_candidate_features_indexes_the_shown_candidates():
    ev = F.impression("r", ["a", "b"], at_ms=NOW)
    ev.impression.ranking.extend([1, 0])
    assert check(ev) is None
    ev.impression.ranking[0] = 2
    assert check(ev)[0] == "invalid_ranking"
