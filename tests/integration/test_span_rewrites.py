"""Span rules, carrier-aware rephrases and canary rules on the real stack (issue 14 items 1, 2, 4):
Turn events in through FeedbackService, rules out of Rewrite via Redis."""

from __future__ import annotations

import time

import pytest
import redis

from loopwise import stamps
from loopwise.client import Client
from loopwise.spans import bucket
from loopwise.tools import procs
from loopwise.v1 import events_pb2, learning_pb2

from .kafka_read import read_records
from .test_reformulation import start_miner, wait_rewrite  # noqa: F401 - the fixture

pytestmark = pytest.mark.slow
OK, UNHANDLED = events_pb2.RESPONSE_STATUS_OK, events_pb2.RESPONSE_STATUS_UNHANDLED
CARRIERS = ("time in", "weather in", "forecast for", "what's the weather in", "current time in")


def city(intent: str, name: str) -> events_pb2.Interpretation:
    return events_pb2.Interpretation(domain="assistant", intent=intent, slots={"city": name})


def misheard_then_fixed(lw: Client, users: range, t0: int) -> list[events_pb2.Event]:
    """Each user is heard "soul", not understood, and asks again in another carrier phrase:
    the two texts share too few words for a text rephrase (the interpretation tells)."""
    f, events = lw.events, []
    for u in users:
        first, retry = CARRIERS[u % len(CARRIERS)], CARRIERS[(u + 2) % len(CARRIERS)]
        intent = "get_time" if "time" in retry else "get_weather"
        events.append(f.turn(f"{first} soul", user_id=f"u{u}", session_id=f"s{u}", status=UNHANDLED,
                             at_ms=t0 + u * 10))
        events.append(f.turn(f"{retry} seoul", user_id=f"u{u}", session_id=f"s{u}", status=OK,
                             interpretation=city(intent, "Seoul"), at_ms=t0 + u * 10 + 1500))
    return events


def test_a_misheard_entity_is_rewritten_in_a_carrier_phrase_never_seen(start_miner, start_collector,  # noqa: F811
                                                                       start_inference, broker, topics, redis_url):
    redis.Redis.from_url(redis_url).flushall()
    _, _, url = start_miner(LOOPWISE_SPAN_RULES="true")
    collector, inference = start_collector(), start_inference()
    with Client(f"127.0.0.1:{collector.port}", f"127.0.0.1:{inference.port}") as lw:
        assert lw.report(misheard_then_fixed(lw, range(6), stamps.now_ms())).accepted == 12
        got = wait_rewrite(lw, "how's the weather in soul", True)
        assert got.utterance == "how's the weather in seoul" and got.kind == "span"
        assert [(s.original, got.utterance[s.start:s.end], s.rule_id) for s in got.spans] == \
            [("soul", "seoul", got.rule_id)]
        assert not lw.rewrite("how's the weather in seoul").rewritten
    assert procs.metric_value(url, "loopwise_miner_rephrases_total", {"by": "interpretation"}) >= 6
    assert procs.metric_value(url, "loopwise_miner_rules_live_by_kind",
                              {"tenant": "default", "kind": "span", "stage": "live"}) >= 1
    records = [learning_pb2.RewriteRuleRecord.FromString(r.value)
               for r in read_records(broker, topics.rewrites, want=1, timeout=20)]
    assert any(r.kind == "span" and r.source == "soul" and r.rewrite == "seoul" for r in records)


def heet(lw: Client, users: range, t0: int) -> list[events_pb2.Event]:
    f, events = lw.events, []
    play = events_pb2.Interpretation(domain="video", intent="play_movie", slots={"item": "7"})
    for u in users:
        events.append(f.turn("play heet", user_id=f"u{u}", status=UNHANDLED, at_ms=t0 + u * 10))
        events.append(f.turn("play heat", user_id=f"u{u}", status=OK, interpretation=play, at_ms=t0 + u * 10 + 1500))
    return events


def arms(lw: Client, rule_id: str, *, canary_ok: bool, control_ok: bool, n: int = 80) -> list[events_pb2.Event]:
    """Turns of ``n`` users who said "play heet": those in the canary got the rewrite (and its
    outcome), the others (the control) were served it as heard."""
    f, t0, events = lw.events, stamps.now_ms(), []
    play = events_pb2.Interpretation(domain="video", intent="play_movie", slots={"item": "7"})
    for u in range(n):
        user, at = f"x{u}-{rule_id[:4]}", t0 + u
        served = lw.rewrite("play heet", user_id=user)
        assert served.rewritten == (bucket(rule_id, user) < 0.5)  # deterministic by user
        ok = canary_ok if served.rewritten else control_ok
        events.append(f.turn("play heet", user_id=user, status=OK if ok else UNHANDLED,
                             interpretation=play if ok else None, at_ms=at,
                             rewritten_utterance=served.utterance if served.rewritten else "",
                             rewrite_rule_id=served.rule_id))
    return events


def test_a_canary_is_promoted_when_it_beats_its_control(start_miner, start_collector, start_inference,  # noqa: F811
                                                         broker, topics, redis_url):
    redis.Redis.from_url(redis_url).flushall()  # no rule left by the tests before
    _, _, url = start_miner(LOOPWISE_CANARY_SHARE="0.5", LOOPWISE_CANARY_MIN_TURNS="15", LOOPWISE_SPAN_RULES="false")
    collector, inference = start_collector(), start_inference()
    with Client(f"127.0.0.1:{collector.port}", f"127.0.0.1:{inference.port}") as lw:
        assert lw.report(heet(lw, range(6), stamps.now_ms())).accepted == 12
        deadline = time.monotonic() + 40
        while not (served := [u for u in range(40) if lw.rewrite("play heet", user_id=f"p{u}").rewritten]):
            assert time.monotonic() < deadline, "the canary was never served"
            time.sleep(0.2)
        assert 5 < len(served) < 35  # a share of the users, not everyone
        rule_id = lw.rewrite("play heet", user_id=f"p{served[0]}").rule_id
        assert lw.report(arms(lw, rule_id, canary_ok=True, control_ok=False)).accepted == 80
        deadline = time.monotonic() + 30
        while not all(lw.rewrite("play heet", user_id=f"p{u}").rewritten for u in range(40)):
            assert time.monotonic() < deadline, "the canary was not promoted"
            time.sleep(0.2)
    records = [learning_pb2.RewriteRuleRecord.FromString(r.value)
               for r in read_records(broker, topics.rewrites, want=2, timeout=20)]
    mine = [r for r in records if r.rule_id == rule_id]
    assert [r.action for r in mine] == ["canary", "promoted"]
    assert mine[0].canary_share == 0.5 and mine[1].canary_success > mine[1].control_success
    # on the canary's own turns, or earlier on the rule's evidence (its 6 users) once the control has its 15
    assert mine[1].control_turns >= 15
    assert mine[1].canary_turns >= 15 or mine[1].reason.startswith("evidence strong")
    assert procs.metric_value(url, "loopwise_miner_rules_promoted_total") == 1.0


def test_a_canary_that_loses_to_its_control_is_withdrawn(start_miner, start_collector, start_inference,  # noqa: F811
                                                          broker, topics, redis_url):
    redis.Redis.from_url(redis_url).flushall()
    _, _, url = start_miner(LOOPWISE_CANARY_SHARE="0.5", LOOPWISE_CANARY_MIN_TURNS="15", LOOPWISE_SPAN_RULES="false")
    collector, inference = start_collector(), start_inference()
    with Client(f"127.0.0.1:{collector.port}", f"127.0.0.1:{inference.port}") as lw:
        assert lw.report(heet(lw, range(6), stamps.now_ms())).accepted == 12
        deadline = time.monotonic() + 40
        while not (served := [u for u in range(40) if lw.rewrite("play heet", user_id=f"p{u}").rewritten]):
            assert time.monotonic() < deadline, "the canary was never served"
            time.sleep(0.2)
        rule_id = lw.rewrite("play heet", user_id=f"p{served[0]}").rule_id
        assert lw.report(arms(lw, rule_id, canary_ok=False, control_ok=True)).accepted == 80
        wait_rewrite(lw, "play heet", False)  # for everyone: "" is in the canary or not, gone either way
        assert not any(lw.rewrite("play heet", user_id=f"p{u}").rewritten for u in served)
    assert procs.metric_value(url, "loopwise_miner_rules_withdrawn_total", {"reason": "canary"}) == 1.0
    records = [learning_pb2.RewriteRuleRecord.FromString(r.value)
               for r in read_records(broker, topics.rewrites, want=2, timeout=20)]
    gone = [r for r in records if r.rule_id == rule_id and r.action == "withdrawn"]
    assert gone and gone[0].reason.startswith("canary lost")
