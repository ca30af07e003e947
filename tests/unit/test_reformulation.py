"""Reformulation mining: sessions, defects, the absorbing chain, rules, rollback."""

from __future__ import annotations

import json

import numpy as np
import pytest

from loopwise.miner.reformulation.chain import FAILURE, SUCCESS, Chain, ChainConfig, build_chain
from loopwise.miner.reformulation.defects import (
    DefectConfig,
    DefectKind,
    label_session,
    phonetic,
    similarity,
)
from loopwise.miner.reformulation.rollback import RuleMonitor, one_sided_p
from loopwise.miner.reformulation.rules import (
    Blocklist,
    RuleConfig,
    rewrite_table,
    rule_id,
    select_rules,
)
from loopwise.miner.reformulation.sessions import (
    STATUS_CANCELLED,
    STATUS_ERROR,
    STATUS_OK,
    STATUS_UNHANDLED,
    STATUS_UNSPECIFIED,
    SessionState,
    TurnRecord,
    interpretation_key,
    sessionize,
)
from loopwise.miner.reformulation.spans import SpanConfig

H = 3_600_000  # one hour, ms


def turn(t: int, text: str, *, user: str = "u1", status: int = STATUS_OK, interp: str = "", **kw) -> TurnRecord:
    return TurnRecord(time_ms=t, utterance=text, interpretation=interp, status=status, user_id=user,
                      tenant="t", **kw)


# -- sessions ------------------------------------------------------------------------------


def test_sessions_split_on_the_gap_and_keep_event_time_order() -> None:
    s = SessionState()
    assert s.add(turn(10_000, "b"), gap_ms=30_000) is None
    assert s.add(turn(5_000, "a"), gap_ms=30_000) is None  # late, but within the session
    closed = s.add(turn(50_000, "c"), gap_ms=30_000)
    assert [t.utterance for t in closed] == ["a", "b"]
    assert [t.utterance for t in s.turns] == ["c"]
    assert s.flush(70_000, gap_ms=30_000) is None
    assert [t.utterance for t in s.flush(90_000, gap_ms=30_000)] == ["c"]


def test_sessions_are_bounded_and_serialisable() -> None:
    s = SessionState()
    for i in range(10):
        s.add(turn(i * 1000, f"u{i}", rewritten="x" if i == 9 else ""), max_turns=4)
    assert [t.utterance for t in s.turns] == ["u6", "u7", "u8", "u9"] and s.dropped == 6
    back = SessionState.from_bytes(s.to_bytes())
    assert back == s and back.turns[-1].state == "x"
    assert SessionState.from_bytes(None) == SessionState()


def test_sessionize_groups_per_user() -> None:
    turns = [turn(0, "a"), turn(1000, "b", user="u2"), turn(2000, "c"), turn(200_000, "d")]
    got = sorted([[t.utterance for t in s] for s in sessionize(turns, gap_ms=30_000)])
    assert got == [["a", "c"], ["b"], ["d"]]


def test_turn_record_from_an_event() -> None:
    from loopwise.client.build import EventFactory
    from loopwise.v1 import events_pb2

    ev = EventFactory("t").turn("Play Heat!", user_id="u", status=STATUS_OK, at_ms=123,
                                interpretation=events_pb2.Interpretation(intent="play_movie", slots={"item": "7"}),
                                rewrite_rule_id="r")
    rec = TurnRecord.from_event(ev)
    assert (rec.text, rec.state, rec.time_ms, rec.rule_id, rec.tenant) == ("play heat", "play_movie:7", 123, "r", "t")
    assert interpretation_key("play", {"b": "2", "a": "1"}, "video") == "video.play:1,2"


# -- defects -------------------------------------------------------------------------------


def test_own_defect_kinds() -> None:
    session = [turn(0, "a", barge_in=True), turn(60_000, "b", status=STATUS_CANCELLED),
               turn(120_000, "c", status=STATUS_UNHANDLED), turn(180_000, "d", status=STATUS_ERROR),
               turn(240_000, "e", explicit_reject=True), turn(300_000, "f")]
    kinds, rephrased = label_session(session)
    assert kinds == [DefectKind.BARGE_IN, DefectKind.CANCELLED, DefectKind.UNHANDLED, DefectKind.ERROR,
                     DefectKind.REJECTED, DefectKind.NONE]
    assert not any(rephrased)


def test_rephrase_within_the_window_marks_the_previous_turn() -> None:
    session = [turn(0, "play maj and dragons", status=STATUS_OK, interp="play_music:x"),
               turn(5_000, "play imagine dragons", interp="play_music:y"),
               turn(20_000, "what's the weather")]
    kinds, rephrased = label_session(session)
    assert rephrased == [True, False, False]
    assert kinds[0] == DefectKind.REPHRASED and not kinds[1] and not kinds[2]
    # outside the window it is a new request
    late = [session[0], turn(60_000, "play imagine dragons")]
    assert label_session(late)[1] == [False, False]


def test_phonetic_similarity_finds_sound_alike_rephrases() -> None:
    assert phonetic("maj and dragons") == phonetic("imagine dragons")
    a, b = "play taksi driva", "play taxi driver"
    assert similarity(a, b) > similarity(a, b, use_phonetic=False)
    assert similarity("play toy story", "play heat") < DefectConfig().rephrase_threshold


def test_a_retry_in_another_carrier_after_a_failure_is_a_rephrase_by_its_tail() -> None:
    """Interpretations naming ids cannot tell, the texts share too little: the failed turn's words
    without its carrier are close to a span of the retry (a misheard or a partial title)."""
    done = "play_movie:42"
    for failed, retry in (("i want to watch braveheert", "play the movie braveheart"),
                          ("play raiders of", "play the movie raiders of the lost ark")):
        assert similarity(failed, retry) < DefectConfig().rephrase_threshold
        session = [turn(0, failed, status=STATUS_UNHANDLED), turn(4000, retry, interp=done)]
        session[1].slots = {"item": "42"}
        kinds, rephrased = label_session(session)
        assert rephrased == [True, False] and DefectKind.REPHRASED in kinds[0]
        assert label_session(session, DefectConfig(tail_threshold=2.0))[1] == [False, False]  # off
    # not after a turn that worked, nor with a short tail ("the")
    worked = [turn(0, "watch braveheart", interp="play_movie:7"), turn(4000, "play the movie braveheart", interp=done)]
    assert label_session(worked)[1] == [False, False]
    short = [turn(0, "play the", status=STATUS_UNHANDLED), turn(4000, "i want to watch the thing", interp=done)]
    assert label_session(short)[1] == [False, False]


def test_a_short_request_completed_in_the_retry_is_a_rephrase() -> None:
    """A partial title shorter than the tail bound ("back", "army") is a rephrase when the retry
    says it again right after its carrier and goes on; not when it is only function words, not
    when the retry ends with it, not when it is said elsewhere in the retry."""
    done = "play_movie:42"

    def rephrased(failed: str, retry: str) -> bool:
        session = [turn(0, failed, status=STATUS_UNHANDLED), turn(4000, retry, interp=done)]
        session[1].slots = {"item": "42"}
        return label_session(session)[1][0]

    assert rephrased("play back", "play back to the future")
    assert rephrased("i want to watch army", "put on army of darkness")
    assert rephrased("watch kiss", "i want to watch kiss the girls")
    assert not rephrased("play to", "play to kill a mockingbird")  # function words only
    assert not rephrased("play back", "watch back")  # nothing completed
    assert not rephrased("play back", "play a movie with the way back home")  # too far in to be the request
    assert not rephrased("play back", "play heat")


def test_abandonment() -> None:
    kinds, _ = label_session([turn(0, "play heet", status=STATUS_UNHANDLED)])
    assert kinds[0] == DefectKind.UNHANDLED | DefectKind.ABANDONED
    kinds, _ = label_session([turn(0, "x", status=STATUS_UNHANDLED), turn(3000, "good night", status=STATUS_UNSPECIFIED)])
    assert kinds[1] == DefectKind.ABANDONED
    kinds, _ = label_session([turn(0, "x"), turn(3000, "good night", status=STATUS_UNSPECIFIED)])
    assert kinds == [DefectKind.NONE, DefectKind.NONE]


# -- chain ---------------------------------------------------------------------------------


def gamblers_ruin(p_num: int, p_den: int, n: int) -> Chain:
    """States 1..n-1 step up with probability p_num/p_den; 0 is FAILURE and n SUCCESS."""
    c = Chain()
    for i in range(1, n):
        up = str(i + 1) if i + 1 < n else SUCCESS
        down = str(i - 1) if i > 1 else FAILURE
        for k in range(p_den):
            c.add(str(i), up if k < p_num else down, user=f"u{k}", time_ms=0)
    return c


@pytest.mark.parametrize(("p_num", "p_den", "n"), [(1, 2, 5), (3, 10, 6), (7, 10, 4)])
def test_absorption_matches_gamblers_ruin(p_num: int, p_den: int, n: int) -> None:
    c = gamblers_ruin(p_num, p_den, n)
    assert c.solve() == n - 1
    p = p_num / p_den
    r = (1 - p) / p
    for i in range(1, n):
        want = i / n if p == 0.5 else (1 - r**i) / (1 - r**n)
        assert c.success(str(i)) == pytest.approx(want, abs=1e-9)
        assert c.failure(str(i)) == pytest.approx(1 - want, abs=1e-9)


def test_two_step_closed_form_and_direct_success() -> None:
    c = Chain()
    for k in range(4):  # a: 1/4 success, 1/2 -> b, 1/4 failure; b: 3/4 success
        c.add("a", [SUCCESS, "b", "b", FAILURE][k], user=f"u{k}", time_ms=0)
        c.add("b", [SUCCESS, SUCCESS, SUCCESS, FAILURE][k], user=f"u{k}", time_ms=0)
    c.solve()
    assert c.success("a") == pytest.approx(0.25 + 0.5 * 0.75)
    assert c.direct_success("a") == pytest.approx(0.25)
    assert c.success("b") == pytest.approx(0.75)


def test_only_touched_components_are_resolved() -> None:
    c = gamblers_ruin(1, 2, 5)
    for k in range(3):
        c.add("x", "y", user=f"u{k}", time_ms=0)
        c.add("y", SUCCESS, user=f"u{k}", time_ms=0)
    assert c.solve() == 6
    before = c.p_success.copy()
    assert c.solve() == 0
    c.add("x", FAILURE, user="u9", time_ms=0)
    assert c.solve() == 2  # x and y only
    assert c.success("x") == pytest.approx(0.75)
    np.testing.assert_array_equal(c.p_success[[c.index[k] for k in "1234"]], before[[c.index[k] for k in "1234"]])
    full = Chain.from_bytes(c.to_bytes())
    full.solve(everything=True)
    n = len(c.keys)
    np.testing.assert_allclose(full.p_success[:n], c.p_success[:n], atol=1e-12)


def test_decay_by_event_time_and_rebase() -> None:
    c = Chain(ChainConfig(half_life_ms=H))
    c.add("a", SUCCESS, user="u1", time_ms=0)
    c.add("a", FAILURE, user="u2", time_ms=H)  # one half-life later: weighs twice as much
    c.solve()
    assert c.success("a") == pytest.approx(1 / 3)
    c.add("a", SUCCESS, user="u3", time_ms=200 * H)  # far later: rebased, no overflow
    c.solve()
    assert c.t0_ms == 200 * H and np.isfinite(c.e_w).all()
    assert c.success("a") == pytest.approx(1.0)


def test_state_bound_evicts_the_least_weighted() -> None:
    c = Chain(ChainConfig(max_states=10, evict_to=0.5))
    for k in range(20):
        c.add("popular", SUCCESS, user=f"u{k}", time_ms=0)
    for i in range(30):
        c.add(f"s{i}", "popular", user="u", time_ms=i)
    assert len(c) <= 10 and "popular" in c.index
    c.solve()
    assert c.success("popular") == pytest.approx(1.0)
    back = Chain.from_bytes(c.to_bytes())
    assert back.index == c.index and back.n_edges == c.n_edges
    back.add("new", SUCCESS, user="u", time_ms=99)
    assert back.solve() >= 1


def test_distinct_users_per_edge() -> None:
    c = Chain(ChainConfig(sketch_k=8))
    for _ in range(50):
        c.add("a", "b", user="same", time_ms=0)
    assert c.users("a", "b") == 1
    for k in range(400):
        c.add("a", "c", user=f"u{k}", time_ms=0)
    assert 100 < c.users("a", "c") < 1600  # a KMV estimate above k
    assert c.users("a", "zzz") == 0


# -- rules -----------------------------------------------------------------------------------


def heet_sessions(users: int, repeats: int = 1, t0: int = 0) -> list[list[TurnRecord]]:
    out = []
    for u in range(users):
        for r in range(repeats):
            t = t0 + (u * repeats + r) * 600_000
            out.append([turn(t, "play heet", user=f"u{u}", status=STATUS_UNHANDLED),
                        turn(t + 4000, "play heat", user=f"u{u}", interp="play_movie:7")])
            out.append([turn(t + 100_000, "play heat", user=f"v{u}", interp="play_movie:7")])
    return out


def test_a_rule_from_rephrases_of_several_users() -> None:
    chain = build_chain(heet_sessions(5))
    chain.solve()
    rules = select_rules(chain, "t")
    assert len(rules) == 1
    r = rules[0]
    assert (r.source, r.target, r.rewrite) == ("play heet", "play_movie:7", "play heat")
    assert r.rule_id == rule_id("t", "play heet", "play_movie:7") and r.support == 5
    assert r.target_success == pytest.approx(1.0) and r.source_success == 0.0
    assert r.confidence == pytest.approx(1.0) and r.source_absorption == pytest.approx(1.0)
    assert json.loads(rewrite_table(rules)["play heet"]) == {"rewrite": "play heat", "confidence": round(r.confidence, 4),
                                                            "rule_id": r.rule_id, "kind": "utterance"}
    rec = r.record("created", time_ms=5)
    assert (rec.rule_id, rec.action, rec.support, rec.source) == (r.rule_id, "created", 5, "play heet")


def test_a_single_user_burst_makes_no_rule() -> None:
    chain = build_chain(heet_sessions(1, repeats=100))
    chain.solve()
    assert select_rules(chain, "t") == []
    assert select_rules(chain, "t", RuleConfig(min_support=1))  # only the support held it back


def test_margin_threshold_and_blocklist() -> None:
    sessions = heet_sessions(5)
    for u in range(20):  # "play heat" mostly fails too
        sessions.append([turn(10**9 + u * 600_000, "play heat", user=f"w{u}", interp="play_movie:7",
                              barge_in=True)])
    chain = build_chain(sessions)
    chain.solve()
    assert select_rules(chain, "t") == []
    chain = build_chain(heet_sessions(5))
    chain.solve()
    assert select_rules(chain, "t", blocklist=Blocklist(sources={"play heet"})) == []
    assert select_rules(chain, "t", blocklist=Blocklist(targets={"play_movie:7"})) == []


# -- rollback --------------------------------------------------------------------------------


def test_one_sided_two_proportion_test() -> None:
    z, p = one_sided_p(30, 100, 0.5, 100)  # pooled 0.4: z = -0.2 / sqrt(0.24 * 0.02)
    assert z == pytest.approx(-0.2 / np.sqrt(0.24 * 0.02))
    assert p == pytest.approx(0.001946, rel=1e-2)
    assert one_sided_p(60, 100, 0.5, 100)[1] > 0.5


def test_rollback_needs_significance_and_a_minimum_sample() -> None:
    m = RuleMonitor(alpha=0.05, min_turns=30)
    m.deploy("r", source="play heet", target="play_movie:7", success_before=0.4, turns_before=200)
    for k in range(20):
        m.observe("r", k % 10 == 0)
    assert not m.decide("r").withdraw  # 20 < 30 turns
    for _ in range(10):
        m.observe("r", False)
    d = m.decide("r")
    assert d.withdraw and d.p_value < 0.05
    back = RuleMonitor.from_dict(m.to_dict())
    assert [rid for rid, _, _ in back.sweep()] == ["r"]
    assert back.blocklist.sources == {"play heet"} and not back.deployed
    assert not back.observe("r", True)


def test_a_rule_slightly_worse_on_little_data_is_kept() -> None:
    m = RuleMonitor(min_turns=30)
    m.deploy("r", source="s", target="t", success_before=0.5, turns_before=40)
    for k in range(40):
        m.observe("r", k % 20 < 9)  # 0.45 after vs 0.5 before
    assert not m.decide("r").withdraw
    m.deploy("good", source="s2", target="t", success_before=0.3, turns_before=100)
    for _ in range(50):
        m.observe("good", True)
    assert m.sweep() == []
    strict = RuleMonitor(min_turns=30, min_gain=0.3)
    strict.deploy("r", source="s", target="t", success_before=0.0, turns_before=100)
    for _ in range(40):
        strict.observe("r", False)
        m.deploy("r0", source="s0", target="t", success_before=0.0, turns_before=100)
        m.observe("r0", False)
    assert strict.decide("r").withdraw and not m.decide("r0").withdraw  # nothing is below 0


def test_states_just_added_survive_eviction() -> None:
    c = Chain(ChainConfig(max_states=4, evict_to=0.5))
    for k in range(5):
        c.add(f"old{k}", SUCCESS, user="u", time_ms=0)
    c.add("src", "dst", user="u", time_ms=1)  # dst has no weight of its own yet
    assert {"src", "dst"} <= set(c.index) and c.users("src", "dst") == 1


def test_tenant_miner_deploys_then_rolls_back() -> None:
    from loopwise.miner.reformulation.pipeline import MiningConfig, TenantMiner

    # The source never worked: a rule must deliver. Live at once (no canary), whole utterances only.
    config = MiningConfig(min_turns_after=10, min_gain=0.3, canary_share=1.0, spans=SpanConfig(enabled=False))
    m = TenantMiner("t", config)
    for session in heet_sessions(5):
        m.observe_session(session)
    changes = m.refresh(now_ms=10**9)
    rid = rule_id("t", "play heet", "play_movie:7")
    assert json.loads(changes.put["play heet"])["rule_id"] == rid
    assert [r.action for r in changes.records] == ["created"]
    assert not m.refresh(now_ms=10**9 + 1)  # nothing new: no churn
    m = TenantMiner.from_bytes(m.to_bytes(), config)
    assert m.table() == {"play heet": changes.put["play heet"]}
    for k in range(12):  # the rewrite makes things worse: barge-ins on every rewritten turn
        m.observe_session([turn(2 * 10**9 + k * 10**6, "play heet", user=f"x{k}", interp="play_movie:7",
                                rewritten="play heat", rule_id=rid, barge_in=True)])
    changes = m.refresh(now_ms=3 * 10**9)
    assert changes.delete == ["play heet"] and changes.records[0].action == "withdrawn"
    assert changes.records[0].turns_after == 12 and not changes.put  # blocklisted: not recreated
    assert m.table() == {}


def test_a_rule_does_not_go_on_from_a_target_that_works_to_where_its_few_failures_went():
    """Users who said "the godfather part ii" and were heard as "the godfather" corrected
    themselves: a supported edge from the godfather's interpretation, which works for most of
    its turns. A source whose users got the godfather by rephrasing gets the godfather, not
    the sequel the second hop reaches (with a higher success)."""
    from loopwise.miner.reformulation.pipeline import MiningConfig, TenantMiner

    m = TenantMiner("t", MiningConfig(canary_share=1.0, spans=SpanConfig(enabled=False)))
    t = 10**12
    for u in range(30):  # the godfather mostly works
        t += H
        m.observe_session([turn(t, "play the godfather", user=f"ok{u}", interp="video.play_movie:127")])
    for u in range(4):  # misheard the other way round: the sequel's users correct it
        t += H
        m.observe_session([turn(t, "play the godfather", user=f"seq{u}", interp="video.play_movie:127",
                                barge_in=True),
                           turn(t + 2000, "play the godfather part ii", user=f"seq{u}",
                                interp="video.play_movie:187")])
    for u in range(5):  # the source: "godfatha" fails, said again right it plays the godfather
        t += H
        m.observe_session([turn(t, "play the godfatha", user=f"u{u}", status=STATUS_UNHANDLED),
                           turn(t + 2000, "play the godfather", user=f"u{u}", interp="video.play_movie:127")])
    m.refresh(now_ms=t + H)
    got = {r.source: r.target for r in m.rules.values()}
    assert got.get("play the godfatha") == "video.play_movie:127"


def test_a_rule_chosen_on_thin_evidence_is_superseded_when_the_evidence_points_elsewhere():
    from loopwise.miner.reformulation.pipeline import MiningConfig, TenantMiner
    from loopwise.miner.reformulation.sessions import TurnRecord

    m = TenantMiner("t", MiningConfig(canary_share=1.0, spans=SpanConfig(enabled=False)))
    t0 = 10**12

    def sessions(users, target, item, rejected=()):
        for u in users:
            m.observe_session([TurnRecord(t0 + u, "play heet", status=2, user_id=f"u{u}"),
                               TurnRecord(t0 + u + 2000, target, f"video.play_movie:{item}",
                                          explicit_reject=u in rejected, user_id=f"u{u}")])

    # thin evidence for "play heat" (movie 7), which one of five users then rejected
    sessions(range(5), "play heat", "7", rejected=(4,))
    first = m.refresh(t0 + 10_000)
    assert list(first.put) == ["play heet"] and "play heat" in first.put["play heet"]
    # many more users: what they meant by it was movie 8, and it worked every time
    sessions(range(100, 140), "play heat", "8")
    second = m.refresh(t0 + 20_000)
    assert "play heat" in second.put["play heet"] and second.records[1].target == "video.play_movie:8"
    assert [(r.action, r.reason) for r in second.records] == [("withdrawn", "superseded"), ("created", "")]
    assert "play heet" not in m.monitor.blocklist.sources


# -- carrier-pooled rules ----------------------------------------------------------------------


def wizard_misheard_under_carriers(miner) -> int:
    """Four titles asked in each of three carriers (the carriers are learnt), then five users
    heard as "<carrier> wizard of oz" (3 watch, 2 play), each fixing it by saying "play the
    wizard of oz"; the last turn's time."""
    t = 0
    for i, title in enumerate(("heat", "toy story", "fargo", "the wizard of oz")):
        for carrier in ("play", "watch", "put on"):
            t += H
            miner.observe_session([turn(t, f"{carrier} {title}", user=f"ok{i}{carrier}", interp=f"play_movie:{i}")])
    for u, carrier in enumerate(("watch", "play", "watch", "play", "watch")):
        t += H
        miner.observe_session([turn(t, f"{carrier} wizard of oz", user=f"u{u}", status=STATUS_UNHANDLED),
                               turn(t + 3000, "play the wizard of oz", user=f"u{u}", interp="play_movie:3")])
    return t


def test_a_request_misheard_under_several_carriers_is_learnt_once_and_served_in_each():
    """No utterance has the support of a whole-utterance rule; pooled by their tail they do, and
    the rule keeps each utterance's own carrier (also one not heard with it yet)."""
    from loopwise.miner.reformulation.carriers import learn_carriers
    from loopwise.miner.reformulation.pipeline import MiningConfig, TenantMiner

    m = TenantMiner("t", MiningConfig(canary_share=1.0))
    t = wizard_misheard_under_carriers(m)
    assert set(learn_carriers(m.chain)) == {"play", "watch", "put on"}
    m.refresh(now_ms=t + H)
    got = {r.source: r.rewrite for r in m.rules.values() if r.kind == "utterance"}
    assert got == {"watch wizard of oz": "watch the wizard of oz", "play wizard of oz": "play the wizard of oz",
                   "put on wizard of oz": "put on the wizard of oz"}
    # without pooling none of them has a rule
    from dataclasses import replace

    from loopwise.miner.reformulation.carriers import CarrierConfig

    alone = TenantMiner.from_bytes(m.to_bytes(), replace(m.config, carriers=CarrierConfig(enabled=False)))
    alone.rules = {}
    alone.refresh(now_ms=t + H)
    assert not [r for r in alone.rules.values() if r.kind == "utterance"]


def test_carrier_pooled_canaries_are_judged_against_their_tails_history():
    """Each utterance of the pooled tail was heard fewer times than the canary needs ("watch ..."
    3, "play ..." 2, "put on ..." never): the control starts from the tail's pooled history (5
    turns, all failed), so their strong evidence (5 users fixed it) promotes every one of them
    at the next refresh instead of leaving them canaries until a text users seldom say comes
    back five times."""
    from loopwise.miner.reformulation.pipeline import MiningConfig, TenantMiner

    m = TenantMiner("t", MiningConfig(canary_share=0.5, canary_min_turns=5))
    t = wizard_misheard_under_carriers(m)
    first = m.refresh(now_ms=t + H)
    pooled = {r.source for r in m.rules.values() if r.kind == "utterance"}
    assert pooled == {"watch wizard of oz", "play wizard of oz", "put on wizard of oz"}
    assert {r.source for r in first.records if r.action == "canary"} >= pooled
    for rule in m.rules.values():
        if rule.source in pooled:
            trial = m.canary.trials[rule.rule_id]
            assert (trial.control_turns, trial.control_successes) == (5, 0)
    second = m.refresh(now_ms=t + 2 * H)
    promoted = {r.source: r.reason for r in second.records if r.action == "promoted"}
    assert set(promoted) >= pooled and all(promoted[s].startswith("evidence strong") for s in pooled)


def test_carrier_rules_are_rederived_on_their_interval_only(monkeypatch) -> None:
    """A pass over every heard utterance: at most every ``every_ms``, not on every refresh."""
    from loopwise.miner.reformulation import pipeline

    calls = []
    monkeypatch.setattr(pipeline, "select_carrier_rules", lambda *a, **k: calls.append(1) or [])
    m = pipeline.TenantMiner("t", pipeline.MiningConfig(canary_share=1.0))
    m.observe_session([turn(0, "play heat", interp="play_movie:1")])
    every = m.config.carriers.every_ms
    for now in (0, 1_000, every - 1, every, every + 1):
        m.refresh(now_ms=now)
    assert len(calls) == 2  # at 0 and at every_ms
