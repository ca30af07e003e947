"""bench/reformulation.py's pure parts: compressed-time settings, the served table, held-out
figures, injected confusions."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from _reformulation_eval import (  # noqa: E402
    Confusion,
    compressed_gaps,
    evidence_session,
    evidence_user,
    held_out,
    json_num,
    percentile,
    pick_confusions,
    rephrase_window_ms,
    rules_from_table,
    served_rules,
    session_gap_ms,
    table_lookup,
    turn_records,
)

from loopwise.miner.reformulation.pipeline import TenantMiner  # noqa: E402
from loopwise.tools.simulate.assistant import (  # noqa: E402
    Behaviour,
    Catalog,
    RewriteContext,
    World,
    simulate,
    table_rewriter,
)

TITLES = [
    ("1", "Toy Story (1995)", 50.0), ("2", "Pulp Fiction (1994)", 40.0), ("3", "Godfather, The (1972)", 30.0),
    ("4", "Twelve Monkeys (1995)", 20.0), ("5", "Heat (1995)", 10.0), ("6", "Jerry Maguire (1996)", 9.0),
    ("7", "Back to the Future (1985)", 8.0), ("8", "Fargo (1996)", 7.0), ("9", "Star Wars (1977)", 6.0),
]


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.from_titles(TITLES)


def test_session_gap_separates_compressed_sessions() -> None:
    b = Behaviour()
    assert session_gap_ms(b, 1.0) == 45_000  # the miner's default already fits real time
    for scale in (0.1, 0.02, 0.01, 0.006):
        inside, between = compressed_gaps(b, scale)
        gap = session_gap_ms(b, scale)
        assert inside < gap < between, (scale, inside, gap, between)
    inside, between = compressed_gaps(b, 0.001)  # too compressed: the unscaled latency dominates
    assert between <= inside and session_gap_ms(b, 0.001) == inside + 1


def test_rephrase_window_scales_with_the_clock() -> None:
    assert rephrase_window_ms(1.0) == 30_000
    assert rephrase_window_ms(0.01) == 300 + 1200


def test_rules_from_table_and_lookup() -> None:
    raw = {b"play heet": json.dumps({"rewrite": "play heat", "confidence": 0.5, "rule_id": "r1"}).encode(),
           b"broken": b"not json", "empty": json.dumps({"rewrite": ""})}
    table = rules_from_table(raw)
    assert set(table) == {"play heet"}
    rules = served_rules(table)
    assert len(rules) == 1 and rules.apply("play heet").rule_id == "r1"
    look = table_lookup(table)
    ctx = RewriteContext("u", "s", 0)
    assert look("Play  HEET", ctx) == ("play heat", "r1")
    assert look("play heat", ctx) is None


def test_held_out_matches_the_simulators_truth(catalog: Catalog) -> None:
    world = World(catalog)
    before = simulate(world, users=40, minutes=60, seed=3)
    # a rule for each recurring confusion of the (tiny) catalog: the right title
    table = {}
    for m in catalog.movies:
        wrong = world.asr.confusion(m.spoken, catalog.neighbours.get(m.spoken))
        if wrong is not None:
            table[f"play {wrong}"] = {"rewrite": f"play {m.spoken}", "rule_id": f"r{m.id}"}
    after = simulate(world, users=40, minutes=60, seed=3,
                     rewrite=table_rewriter({k: (v["rewrite"], v["rule_id"]) for k, v in table.items()}))
    h = held_out(world, served_rules(table), before, after)
    assert h.before.turns == len(before) and h.after.turns == len(after)
    assert h.after.losses == 0 and h.judged_rules <= h.rules == len(table)
    if h.judged_rules:
        assert h.precision == 1.0
    if h.after.rewritten:
        assert h.after.defect_rate <= h.before.defect_rate and h.reduction >= 0
    same = held_out(world, served_rules({}), before, before)
    assert same.reduction == 0.0 and math.isnan(same.precision)


def test_picked_confusions_are_new_and_fixable(catalog: Catalog) -> None:
    world = World(catalog)
    cs = pick_confusions(catalog, 3, asr=world.asr)
    assert cs and len({c.source for c in cs}) == len(cs)
    for c in cs:
        assert world.nlu.parse(c.source).status == 2  # unhandled as heard
        assert world.nlu.parse(c.fixed).item == c.movie.id
        assert world.asr.confusion(c.movie.spoken, catalog.neighbours.get(c.movie.spoken)) is None


@pytest.mark.parametrize("k", [3, 4])
def test_evidence_makes_a_rule_exactly_at_min_support(catalog: Catalog, k: int) -> None:
    from loopwise.miner.reformulation.pipeline import MiningConfig
    from loopwise.miner.reformulation.rules import RuleConfig

    c = Confusion(catalog.by_spoken["pulp fiction"], "pulp ficshun")
    config = MiningConfig(rules=RuleConfig(min_support=float(k), min_source_turns=5))
    m = TenantMiner("default", config)
    deployed_at = None
    for i in range(k + 1):
        end = (i + 1) * 10**6
        m.observe_session([p.record(evidence_user(c, "t", i), end) for p in evidence_session(c)])
        if m.refresh(now_ms=end + 1).put and deployed_at is None:
            deployed_at = i + 1
    assert deployed_at == k
    assert m.rules[c.source].rewrite == c.fixed


def test_turn_records_are_keyed_by_user_in_time_order(catalog: Catalog) -> None:
    from loopwise import codec
    from loopwise.client.build import EventFactory
    from loopwise.v1 import events_pb2

    turns = simulate(World(catalog), users=5, minutes=30, seed=1)
    recs = turn_records(turns, EventFactory("default"), "events", codec.record_key)
    assert len(recs) == len(turns) and [r[0] for r in recs] == sorted(r[0] for r in recs)
    ev = events_pb2.Event.FromString(recs[0][4])
    assert recs[0][3] == f"default|u|{ev.user_id}".encode() and ev.turn.utterance


def test_numbers() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0], 50) == 1.5
    assert math.isnan(percentile([], 50))
    assert json_num(float("nan")) is None and json_num(float("inf")) == "inf" and json_num(1.23456, 2) == 1.23
