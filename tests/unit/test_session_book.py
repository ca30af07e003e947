"""The session book over a plain dict: turns in, closed sessions out, duplicates and
watermarks per partition, rebuilt from the table after a restart."""

from __future__ import annotations

import json

from loopwise.miner.reformulation.session_book import RECENT_IDS, Session, SessionBook, session_id
from loopwise.miner.reformulation.sessions import TurnRecord

GAP = 30_000
T0 = 1_800_000_000_000


def turn(ms: int, text: str = "play heet", user: str = "ann", tenant: str = "t") -> TurnRecord:
    return TurnRecord(time_ms=T0 + ms, utterance=text, user_id=user, tenant=tenant)


def key(user: str = "ann", tenant: str = "t") -> bytes:
    return f"{tenant}|u|{user}".encode()


def book(table: dict | None = None, **kw) -> SessionBook:
    return SessionBook({} if table is None else table, gap_ms=GAP, **kw)


def test_a_turn_after_the_gap_closes_the_session_with_a_deterministic_id():
    b = book()
    assert b.add(key(), "e1", turn(0, "play heet"), 0).closed is None
    assert b.add(key(), "e2", turn(1000, "play heat"), 0).closed is None
    closed = b.add(key(), "e3", turn(1000 + GAP + 1, "stop"), 0).closed
    assert [t.utterance for t in closed.turns] == ["play heet", "play heat"]
    assert closed.tenant == "t" and closed.id == session_id("t", "ann", "e1")
    again = b.add(key(), "e4", turn(3 * GAP, "stop"), 0).closed
    assert again.id == session_id("t", "ann", "e3")  # the next session starts at the turn that closed one


def test_a_redelivered_turn_is_a_duplicate_and_changes_nothing():
    table: dict = {}
    b = book(table)
    b.add(key(), "e1", turn(0), 0)
    before = dict(table)
    added = b.add(key(), "e1", turn(0), 0)
    assert added.duplicate and added.closed is None and table == before


def test_only_the_most_recent_event_ids_are_kept():
    table: dict = {}
    b = book(table)
    for i in range(RECENT_IDS + 5):
        b.add(key(), f"e{i}", turn(i), 0)
    assert len(json.loads(table[key()])["ids"]) == RECENT_IDS
    assert not b.add(key(), "e0", turn(0), 0).duplicate  # forgotten: no longer recognised


def test_users_have_their_own_sessions():
    b = book()
    b.add(key("ann"), "a1", turn(0, user="ann"), 0)
    assert b.add(key("bob"), "b1", turn(GAP + 1, user="bob"), 0).closed is None


def test_the_watermark_closes_idle_sessions_and_forgets_them():
    table: dict = {}
    b = book(table, idle_s=2.0)
    b.add(key("ann"), "a1", turn(0, user="ann"), 0, now=100.0)
    b.add(key("bob"), "b1", turn(GAP, user="bob"), 0, now=100.0)
    assert b.watermark(0, now=101.0) == T0 + GAP  # the newest event time read
    closed = b.close(now=101.0)  # ann's last turn is exactly one gap behind: not yet
    assert closed == []
    b.add(key("cat"), "c1", turn(GAP + 1, user="cat"), 0, now=101.0)
    assert [s.tenant for s in b.close(now=101.0)] == ["t"] and key("ann") not in table
    # once idle for idle_s, the wall clock moves the watermark on
    assert b.watermark(0, now=103.0 + GAP / 1000) == T0 + 2 * GAP + 1
    assert len(b.close(now=103.5 + GAP / 1000)) == 2 and table == {}


def test_a_partition_with_a_backlog_is_not_idle():
    backlog = {0: True}
    b = book(idle_s=2.0, caught_up=lambda p: not backlog[p])
    b.add(key(), "e1", turn(0), 0, now=100.0)
    assert b.close(now=200.0) == []  # silent, but not read to its end
    backlog[0] = False
    assert len(b.close(now=200.0)) == 1


def test_partitions_have_their_own_watermarks():
    b = book()
    b.add(key("ann"), "a1", turn(0, user="ann"), 0, now=100.0)
    b.add(key("bob"), "b1", turn(10 * GAP, user="bob"), 1, now=100.0)  # partition 1 runs ahead
    assert b.close(now=100.0) == []


def test_closing_in_chunks_closes_every_session_once():
    b = book()
    for u in range(10):
        b.add(key(f"u{u}"), f"e{u}", turn(u, user=f"u{u}"), u % 2, now=100.0)
    for p in (0, 1):
        b.add(key(f"late{p}"), f"l{p}", turn(5 * GAP, user=f"late{p}"), p, now=100.0)
    seen: list[Session] = []
    while chunk := b.close(limit=3, now=100.0):
        assert len(chunk) <= 3
        seen += chunk
    assert sorted(s.turns[0].user_id for s in seen) == sorted(f"u{u}" for u in range(10))


def test_a_newer_turn_keeps_the_session_open():
    b = book(idle_s=0.0)
    b.add(key(), "e1", turn(0), 0, now=100.0)
    b.add(key(), "e2", turn(GAP), 0, now=100.0)  # extends it: the first due entry is stale
    b.add(key("bob"), "b1", turn(GAP + 2, user="bob"), 0, now=100.0)
    assert b.close(now=100.0) == []


def test_rebuild_restores_the_due_sessions_from_the_table():
    table: dict = {}
    b = book(table)
    b.add(key("ann"), "a1", turn(0, user="ann"), 1, now=100.0)
    b.add(key("bob"), "b1", turn(2 * GAP, user="bob"), 1, now=100.0)
    fresh = book(table)
    assert fresh.watermark(1) == 0.0
    fresh.rebuild(now=100.0)
    assert fresh.watermark(1, now=100.0) == T0 + 2 * GAP  # resumes from the newest recovered turn
    [session] = fresh.close(now=100.0)
    assert [t.user_id for t in session.turns] == ["ann"]
    assert fresh.add(key("bob"), "b1", turn(2 * GAP, user="bob"), 1).duplicate  # the ids survive too


def test_a_session_round_trips_through_bytes():
    session = Session(id="s1", tenant="t", turns=[turn(0), turn(5, "play heat")])
    assert Session.from_bytes(session.to_bytes()) == session


def test_a_user_with_a_fast_clock_does_not_close_other_users_sessions():
    table: dict = {}
    b = book(table)
    b.add(key("ann"), "a1", turn(0, "play heet", user="ann"), 0, received_ms=T0)
    # a user whose clock is 290 s fast, on the same partition
    b.add(key("eve"), "e1", turn(290_000, "hello", user="eve"), 0, received_ms=T0 + 100)
    assert b.watermark(0, now=0.0) <= T0 + 100
    assert not b.close(now=0.0)  # ann's session is not over
    assert b.add(key("ann"), "a2", turn(1500, "play heat", user="ann"), 0, received_ms=T0 + 1500).closed is None
    b.add(key("bob"), "b1", turn(1500 + GAP + 1, user="bob"), 0, received_ms=T0 + 1500 + GAP + 1)
    closed = b.close(now=0.0)
    assert [[t.utterance for t in s.turns] for s in closed] == [["play heet", "play heat"]]
    # after a restart the watermark resumes from received times too
    fresh = book(table)
    fresh.rebuild(now=0.0)
    assert fresh.watermark(0, now=0.0) <= T0 + 1500 + GAP + 1


def sturn(ms: int, sid: str, text: str = "play heet") -> TurnRecord:
    return TurnRecord(time_ms=T0 + ms, utterance=text, user_id="ann", tenant="t", session_id=sid)


def test_the_clients_session_id_splits_sessions_the_gap_would_join():
    b = book()
    assert b.add(key(), "e1", sturn(0, "s1"), 0).closed is None
    closed = b.add(key(), "e2", sturn(1000, "s2", "play heat"), 0).closed  # 1 s later: the gap would join them
    assert [t.utterance for t in closed.turns] == ["play heet"] and closed.turns[0].session_id == "s1"


def test_the_clients_session_id_joins_turns_the_gap_would_split():
    b = book()
    b.add(key(), "e1", sturn(0, "s1"), 0)
    assert b.add(key(), "e2", sturn(GAP + 5000, "s1", "play heat"), 0).closed is None  # same client session
    closed = b.add(key(), "e3", sturn(GAP + 6000, "s2", "stop"), 0).closed
    assert [t.utterance for t in closed.turns] == ["play heet", "play heat"]


def test_a_late_turn_of_an_earlier_client_session_is_dropped():
    from loopwise.miner.reformulation.sessions import SessionState

    s = SessionState()
    s.add(sturn(0, "s1"), gap_ms=GAP)
    s.add(sturn(5000, "s2"), gap_ms=GAP)
    assert s.add(sturn(1000, "s1"), gap_ms=GAP) is None and s.dropped == 1
    assert [t.session_id for t in s.turns] == ["s2"]


def test_without_a_session_id_the_gap_decides_and_offline_matches_live():
    from loopwise.miner.reformulation.sessions import sessionize

    turns = [sturn(0, "s1"), sturn(GAP + 1, "s1", "play heat"), sturn(GAP + 2, "s2"),
             turn(10 * GAP), turn(10 * GAP + 1000)]
    assert [len(s) for s in sessionize(turns, gap_ms=GAP)] == [1, 1, 1, 2]  # idle > gap closes s1


def test_the_session_id_survives_the_event_and_the_table():
    from loopwise.v1 import events_pb2

    ev = events_pb2.Event(event_id="e", tenant="t", user_id="ann", session_id="s9", client_time_ms=T0,
                          turn=events_pb2.Turn(utterance="play heat", status=1))
    rec = TurnRecord.from_event(ev)
    assert rec.session_id == "s9"
    b = book()
    b.add(key(), "e1", rec, 0)
    b.rebuild()
    closed = b.close(now=10**9)[0]
    assert closed.turns[0].session_id == "s9"


def test_closed_sessions_carry_the_frontier_every_session_before_it_is_closed_by():
    b = book()
    b.add(key("ann"), "e1", turn(0, user="ann"), 0, now=0.0)
    b.add(key("bob"), "e2", turn(10_000, user="bob"), 0, now=0.0)
    assert b.frontier(now=0.0) == T0 + 10_000 - GAP  # the watermark less the gap
    closed = b.add(key("bob"), "e3", turn(10_000 + GAP + 1, user="bob"), 0, now=0.0).closed
    assert closed.through_ms == T0  # ann's session, open since T0, holds it back
    assert Session.from_bytes(closed.to_bytes()).through_ms == closed.through_ms
    later = b.close(now=0.0)
    assert [s.turns[0].user_id for s in later] == ["ann"] and later[0].through_ms > T0


class CountingTable(dict):
    """A dict that counts its writes (each a changelog record in the miner)."""

    writes = 0

    def __setitem__(self, k, v):
        self.writes += 1
        super().__setitem__(k, v)


def test_write_back_writes_each_user_once_per_flush_and_loses_nothing():
    table = CountingTable()
    b = book(table, write_back=True)
    for i in range(3):  # one batch: two users, three turns each
        b.add(key("ann"), f"a{i}", turn(i * 1000, "play heet", "ann"), 0)
        b.add(key("bob"), f"b{i}", turn(i * 1000, "play heat", "bob"), 0)
    assert table.writes == 0 and b.add(key("ann"), "a1", turn(1000, user="ann"), 0).duplicate  # seen unflushed
    assert b.flush() == 2 and table.writes == 2
    assert len(json.loads(table[key("ann")])["state"]["turns"]) == 3
    done = b.add(key("ann"), "a9", turn(GAP * 3, "play heet", "ann"), 0).closed
    assert done is not None and len(done.turns) == 3


def test_a_turn_record_round_trips_through_its_compact_dict():
    t = TurnRecord(time_ms=5, utterance="Play Heet", user_id="u", tenant="t", slots={"city": "seoul"})
    d = t.to_dict()
    assert TurnRecord(**d) == t and "barge_in" not in d and "rule_id" not in d
    assert d["slots"] is not t.slots  # a copy


def test_a_users_table_value_stays_small_however_many_events_they_send():
    """Written at every turn: the remembered ids are short hashes, the turns their set fields."""
    table: dict = {}
    b = book(table, max_turns=8)
    for i in range(200):
        b.add(key(), f"{i:032x}", turn(i), 0)  # 32-character event ids, as the client makes them
    assert len(table[key()]) < 1_500  # 8 turns: ~4.2 kB with the 64 full ids and every field
    assert b.add(key(), f"{199:032x}", turn(199), 0).duplicate
