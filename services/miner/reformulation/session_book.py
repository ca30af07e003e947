"""The session book: every user's open session over a key -> bytes table (the
Faust table ``sessions`` in the miner, a dict in tests), closed by turn gaps
and by per-partition watermarks.

Keys are ``tenant|u|user_id`` (the key of the turns topic). A value holds the
user's open `SessionState`, the (hashed) ids of their most recent events (a
redelivered turn is a duplicate, not a repeat), the id of the session's first event (the
closed session's deterministic id derives from it) and the partition it was
read from.

A session closes when a turn starts a new one (`SessionBook.add`: another
client ``session_id``, or, for turns without one, more than ``gap_ms`` after
the previous turn; see `sessions`), or when its partition's watermark passes its last
turn by the gap (`SessionBook.close`). A partition's watermark is the newest
arrival time read from it (a turn's own time, clamped to when the collector
received it: a user whose clock runs minutes fast cannot close the other
users' sessions), advanced by wall-clock time once the partition has
delivered nothing for ``idle_s`` and has no backlog (``caught_up``). After
recovery, `SessionBook.rebuild` re-indexes the table and resumes each
partition's watermark from the arrival times its values hold (``r``).

With ``write_back``, `SessionBook.add` keeps the values it changes in memory
until `SessionBook.flush` writes each once (the miner flushes after every
batch of turns, before their offsets can commit): a user's turns that arrive
in one batch cost one table write (one changelog record), not one each.

`SessionBook.frontier` is the event time before which every session of the
book's partitions has been closed: each closed `Session` carries it
(``through_ms``), so the mining side knows how far it has caught up.

>>> book = SessionBook({}, gap_ms=30_000)
>>> def turn(ms, text):
...     return TurnRecord(time_ms=ms, utterance=text, user_id="ann", tenant="t")
>>> book.add(b"t|u|ann", "e1", turn(0, "play heet"), partition=0)
Added(duplicate=False, closed=None)
>>> book.add(b"t|u|ann", "e1", turn(0, "play heet"), partition=0).duplicate
True
>>> session = book.add(b"t|u|ann", "e2", turn(60_000, "play heat"), partition=0).closed
>>> session.tenant, [t.utterance for t in session.turns]
('t', ['play heet'])
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import json
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass

from .sessions import DEFAULT_GAP_MS, DEFAULT_MAX_TURNS, SessionState, TurnRecord

RECENT_IDS = 32  # event ids remembered per user for dedupe (a redelivery is within a commit or two)


def id_key(event_id: str) -> str:
    """What the book remembers of an event id: 48 bits of its hash (12 characters, not 32 or
    more: the value is written to the table, and its changelog, at every turn)."""
    return hashlib.blake2b(event_id.encode(), digest_size=6).hexdigest()


def session_id(tenant: str, user: str, first_event_id: str) -> str:
    """The deterministic id of a session, from its first event's id."""
    return hashlib.blake2b(f"{tenant}\x1f{user}\x1f{first_event_id}".encode(), digest_size=12).hexdigest()


@dataclass(frozen=True, slots=True)
class Session:
    """A closed session, as the ``sessions`` agent sends it to the ``mine`` agent."""

    id: str
    tenant: str
    turns: list[TurnRecord]
    through_ms: int = 0  # `SessionBook.frontier` when it was closed (0: unknown)

    def to_bytes(self) -> bytes:
        record = {"id": self.id, "tenant": self.tenant, "turns": [t.to_dict() for t in self.turns],
                  "through_ms": self.through_ms}
        return json.dumps(record, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Session:
        """Raises ValueError, KeyError or TypeError on a record that is not a session."""
        record = json.loads(raw)
        return cls(id=record["id"], tenant=record["tenant"], turns=[TurnRecord(**t) for t in record["turns"]],
                   through_ms=int(record.get("through_ms", 0)))


@dataclass(slots=True)
class Added:
    """What one turn did: nothing new (``duplicate``), and the session it closed, if any."""

    duplicate: bool = False
    closed: Session | None = None


class SessionBook:
    def __init__(self, table: MutableMapping[bytes, bytes], *, gap_ms: int = DEFAULT_GAP_MS,
                 max_turns: int = DEFAULT_MAX_TURNS, idle_s: float = 0.0,
                 caught_up: Callable[[int], bool] | None = None, write_back: bool = False) -> None:
        self.table = table
        self.write_back = write_back
        self._pending: dict[bytes, dict] = {}  # key -> value not written to the table yet
        self.gap_ms = gap_ms
        self.max_turns = max_turns
        self.idle_s = idle_s
        self.caught_up = caught_up
        self._due: dict[int, list[tuple[int, bytes]]] = {}  # partition -> heap of (due event time, key)
        self._streams: dict[int, list[float]] = {}  # partition -> [newest event time, monotonic time of last turn]

    def rebuild(self, now: float | None = None) -> None:
        """Re-index the table's open sessions (after recovery from the changelog)."""
        self._due = {}
        self._pending = {}
        now = time.monotonic() if now is None else now
        for key, raw in list(self.table.items()):
            data = json.loads(raw)
            state = SessionState.from_dict(data["state"])
            if state.turns:
                partition = int(data.get("p", 0))
                heapq.heappush(self._due.setdefault(partition, []), (state.last_ms + self.gap_ms, key))
                arrived = int(data.get("r", state.last_ms))
                stream = self._streams.setdefault(partition, [arrived, now])
                stream[0] = max(stream[0], arrived)

    def add(self, key: bytes, event_id: str, turn: TurnRecord, partition: int, now: float | None = None,
            received_ms: int = 0) -> Added:
        """Add the turn ``event_id`` of the user ``key``, read from ``partition``; ``received_ms``:
        when the collector received it (0: unknown, the turn's own time moves the watermark)."""
        data = self._read(key) or {"state": {"turns": []}, "ids": [], "first": ""}
        seen = id_key(event_id)
        if seen in data["ids"]:
            return Added(duplicate=True)
        data["ids"] = (data["ids"] + [seen])[-RECENT_IDS:]
        state = SessionState.from_dict(data["state"])
        turns = state.add(turn, gap_ms=self.gap_ms, max_turns=self.max_turns)
        closed = None
        if turns:
            closed = [turn.tenant, turn.user_id, data.get("first", ""), turns]
            data["first"] = event_id
        elif not data.get("first"):
            data["first"] = event_id
        data["state"] = state.to_dict()
        arrived = min(turn.time_ms, received_ms) if received_ms > 0 else turn.time_ms
        data["p"] = partition
        data["r"] = max(int(data.get("r", 0)), arrived)
        if self.write_back:
            self._pending[key] = data
        else:
            self.table[key] = json.dumps(data, separators=(",", ":")).encode()
        heapq.heappush(self._due.setdefault(partition, []), (state.last_ms + self.gap_ms, key))
        now = time.monotonic() if now is None else now
        stream = self._streams.setdefault(partition, [arrived, now])
        stream[0] = max(stream[0], arrived)
        stream[1] = now
        if closed is None:
            return Added()
        return Added(closed=self._session(*closed, through_ms=self.frontier(now)))

    def _read(self, key: bytes) -> dict | None:
        data = self._pending.get(key)
        if data is None:
            raw = self.table.get(key)
            data = json.loads(raw) if raw is not None else None
        return data

    def flush(self) -> int:
        """Write the values changed since the last flush (with ``write_back``); how many."""
        n = len(self._pending)
        for key, data in self._pending.items():
            self.table[key] = json.dumps(data, separators=(",", ":")).encode()
        self._pending.clear()
        return n

    def watermark(self, partition: int, now: float | None = None) -> float:
        """The partition's watermark, on arrival times (0 before it has delivered anything)."""
        stream = self._streams.get(partition)
        if stream is None:
            return 0.0
        newest, wall = stream
        idle = (time.monotonic() if now is None else now) - wall - self.idle_s
        if idle > 0 and (self.caught_up is None or self.caught_up(partition)):
            return newest + idle * 1000
        return newest

    def frontier(self, now: float | None = None) -> int:
        """The event time before which every session of this book's partitions is closed: per
        partition the watermark, or the last turn of its oldest open session if earlier, less
        the gap; the least over partitions (0 before any turn)."""
        marks = []
        for partition in self._streams:
            due = self._due.get(partition)
            mark = self.watermark(partition, now)
            marks.append(min(mark, due[0][0]) if due else mark)
        return max(0, int(min(marks)) - self.gap_ms) if marks else 0

    def close(self, limit: int | None = None, now: float | None = None) -> list[Session]:
        """Close (and forget) the sessions their partition's watermark has passed by the gap;
        at most ``limit`` per call."""
        out: list[Session] = []
        for partition, due in self._due.items():
            mark = self.watermark(partition, now)
            while due and due[0][0] < mark and (limit is None or len(out) < limit):
                _, key = heapq.heappop(due)
                data = self._read(key)
                if data is None:
                    continue
                state = SessionState.from_dict(data["state"])
                turns = state.flush(int(mark), gap_ms=self.gap_ms)
                if not turns:
                    continue  # a newer turn extended it (a newer heap entry exists)
                tenant, _, user = key.decode().partition("|u|")
                out.append(self._session(tenant, user, data.get("first", ""), turns))
                self._pending.pop(key, None)
                self.table.pop(key, None)
        if out:
            through = self.frontier(now)
            out = [dataclasses.replace(s, through_ms=through) for s in out]
        return out

    @staticmethod
    def _session(tenant: str, user: str, first: str, turns: list[TurnRecord], through_ms: int = 0) -> Session:
        return Session(id=session_id(tenant, user, first or f"{turns[0].time_ms}"), tenant=tenant, turns=turns,
                       through_ms=through_ms)
