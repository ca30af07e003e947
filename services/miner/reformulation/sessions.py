"""Sessions: the client's own sessions, else consecutive turns of one (tenant,
user) with gaps below ``gap_ms``.

A `TurnRecord` is the part of a `Turn` event the miner needs. A `SessionState`
(one per (tenant, user), a Faust table value via `to_bytes`/`from_bytes`)
collects turns; `add` returns the previous session once a turn starts a new
one, and `flush` closes a session idle for more than ``gap_ms``.

A turn starts a new session when its ``session_id`` (the event's, set by the
client) differs from the open session's. When neither carries one, the gap
decides: a turn more than ``gap_ms`` after the last one starts a new session.
Turns of one client session stay together whatever their gaps until the
session is idle for ``gap_ms`` (`flush`); a late turn of an earlier client
session is dropped.

>>> s = SessionState()
>>> s.add(TurnRecord(time_ms=0, utterance="play toy story"), gap_ms=30_000)
>>> closed = s.add(TurnRecord(time_ms=60_000, utterance="play heat"), gap_ms=30_000)
>>> [t.utterance for t in closed]
['play toy story']
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from loopwise.text import normalize

# ResponseStatus values (loopwise.v1.events_pb2), repeated so this module needs no protobuf.
STATUS_UNSPECIFIED, STATUS_OK, STATUS_UNHANDLED, STATUS_ERROR, STATUS_CANCELLED = 0, 1, 2, 3, 4

DEFAULT_GAP_MS = 45_000
DEFAULT_MAX_TURNS = 32


def interpretation_key(intent: str, slots: Mapping[str, str] | None = None, domain: str = "") -> str:
    """The chain state of an interpretation: ``intent:v1,v2`` (slot values by slot name).

    >>> interpretation_key("play_movie", {"item": "42"})
    'play_movie:42'
    """
    head = f"{domain}.{intent}" if domain else intent
    values = ",".join(str(slots[k]) for k in sorted(slots)) if slots else ""
    return f"{head}:{values}" if values else head


@dataclass(slots=True)
class TurnRecord:
    """One turn as the miner sees it. ``utterance`` is as heard (before any rewrite)."""

    time_ms: int
    utterance: str
    interpretation: str = ""  # interpretation_key(...) or "" when the client reported none
    status: int = STATUS_OK
    barge_in: bool = False
    explicit_reject: bool = False
    rewritten: str = ""
    rule_id: str = ""
    user_id: str = ""
    tenant: str = ""
    session_id: str = ""  # the client's session (Event.session_id); "" when it set none
    text: str = field(default="")  # normalize(utterance); filled in when empty
    # The interpretation's slot values (normalised), by slot name: what carrier-aware
    # rephrase detection and span rules compare.
    slots: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.text:
            self.text = normalize(self.utterance)

    @property
    def intent(self) -> str:
        """The interpretation's ``domain.intent`` ("" when none was reported)."""
        return self.interpretation.split(":", 1)[0]

    @property
    def state(self) -> str:
        """Chain state: the interpretation when reported and handled, else what NLU was given."""
        if self.interpretation and self.status == STATUS_OK:
            return self.interpretation
        return normalize(self.rewritten) if self.rewritten else self.text

    @classmethod
    def from_event(cls, event: Any) -> TurnRecord:
        """From a `loopwise.v1.events_pb2.Event` whose body is a Turn."""
        turn = event.turn
        interp, slots = "", {}
        if turn.HasField("interpretation") and (turn.interpretation.intent or turn.interpretation.slots):
            i = turn.interpretation
            interp = interpretation_key(i.intent, dict(i.slots), i.domain)
            slots = {k: normalize(v) for k, v in i.slots.items()}
        return cls(time_ms=int(event.client_time_ms or event.received_time_ms), utterance=turn.utterance,
                   interpretation=interp, status=int(turn.status), barge_in=turn.barge_in,
                   explicit_reject=turn.explicit_reject, rewritten=turn.rewritten_utterance,
                   rule_id=turn.rewrite_rule_id, user_id=event.user_id, tenant=event.tenant,
                   session_id=event.session_id, slots=slots)

    def to_dict(self) -> dict[str, Any]:
        """Its fields, those at their default left out (``TurnRecord(**d)`` restores them):
        a table value is written for every turn, a closed session is sent whole."""
        out: dict[str, Any] = {"time_ms": self.time_ms, "utterance": self.utterance}
        for name, default in _OPTIONAL:
            value = getattr(self, name)
            if value != default:
                out[name] = dict(value) if name == "slots" else value
        return out


_OPTIONAL = tuple((f.name, f.default if f.default is not MISSING else {}) for f in fields(TurnRecord)
                  if f.name not in ("time_ms", "utterance"))


@dataclass
class SessionState:
    """The open session of one (tenant, user): turns in event-time order, at most ``max_turns``."""

    turns: list[TurnRecord] = field(default_factory=list)
    dropped: int = 0  # turns dropped from the front by the bound

    @property
    def last_ms(self) -> int | None:
        return self.turns[-1].time_ms if self.turns else None

    def add(self, turn: TurnRecord, *, gap_ms: int = DEFAULT_GAP_MS,
            max_turns: int = DEFAULT_MAX_TURNS) -> list[TurnRecord] | None:
        """Add ``turn``; the closed previous session if ``turn`` starts a new one, else None.

        With a client session id on either side, a different id starts a new
        session (a late turn of an earlier client session, older than the open
        session's first turn, is dropped instead). Without, a turn more than
        ``gap_ms`` after the last one starts a new session, and one older than
        the open session's first turn by more than ``gap_ms`` (a late event
        from a closed session) is dropped.
        """
        closed = None
        if self.turns:
            last = self.turns[-1]
            if turn.session_id or last.session_id:
                late = turn.time_ms < self.turns[0].time_ms
                new = turn.session_id != last.session_id and not late
                stale = turn.session_id != last.session_id and late
            else:
                new = turn.time_ms - last.time_ms > gap_ms
                stale = self.turns[0].time_ms - turn.time_ms > gap_ms
            if new:
                closed, self.turns, self.dropped = self.turns, [], 0
            elif stale:
                self.dropped += 1
                return None
        times = [t.time_ms for t in self.turns]
        self.turns.insert(bisect.bisect_right(times, turn.time_ms), turn)
        if len(self.turns) > max_turns:
            self.dropped += len(self.turns) - max_turns
            del self.turns[:len(self.turns) - max_turns]
        return closed

    def flush(self, now_ms: int, *, gap_ms: int = DEFAULT_GAP_MS) -> list[TurnRecord] | None:
        """Close the session if idle for more than ``gap_ms`` at ``now_ms``."""
        if self.turns and now_ms - self.turns[-1].time_ms > gap_ms:
            closed, self.turns, self.dropped = self.turns, [], 0
            return closed
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"turns": [t.to_dict() for t in self.turns], "dropped": self.dropped}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SessionState:
        return cls(turns=[TurnRecord(**t) for t in data.get("turns", [])], dropped=int(data.get("dropped", 0)))

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> SessionState:
        return cls.from_dict(json.loads(raw)) if raw else cls()


def sessionize(turns: Iterable[TurnRecord], *, gap_ms: int = DEFAULT_GAP_MS,
               max_turns: int = DEFAULT_MAX_TURNS) -> list[list[TurnRecord]]:
    """Offline: all sessions of ``turns`` (any order), grouped per (tenant, user) by event time,
    as the live book makes them (a session idle for ``gap_ms`` closes, as its watermark would)."""
    by_user: dict[tuple[str, str], list[TurnRecord]] = {}
    for t in turns:
        by_user.setdefault((t.tenant, t.user_id), []).append(t)
    out: list[list[TurnRecord]] = []
    for user_turns in by_user.values():
        state = SessionState()
        for t in sorted(user_turns, key=lambda r: r.time_ms):
            for closed in (state.flush(t.time_ms, gap_ms=gap_ms), state.add(t, gap_ms=gap_ms, max_turns=max_turns)):
                if closed:
                    out.append(closed)
        if state.turns:
            out.append(state.turns)
    return out
