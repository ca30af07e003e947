"""Message builders used by both clients: features and events."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from loopwise import stamps
from loopwise.v1 import events_pb2, features_pb2

FeatureValues = Mapping[str, str | float | int | bool]


def features(values: FeatureValues | None) -> features_pb2.Features:
    """Strings become categorical features, numbers numeric ones."""
    out = features_pb2.Features()
    for key, value in (values or {}).items():
        if isinstance(value, str):
            out.categorical[key] = value
        elif isinstance(value, bool | int | float):
            out.numeric[key] = float(value)
        else:
            raise TypeError(f"feature {key!r}: expected str or number, got {type(value).__name__}")
    return out


def candidates(ids: Sequence[str], columns: Mapping[str, Sequence[Any]] | None = None) -> features_pb2.Candidates:
    """Column-wise candidates; a column of strings is categorical, of numbers numeric."""
    out = features_pb2.Candidates(ids=list(ids))
    for name, values in (columns or {}).items():
        values = list(values)
        if len(values) != len(out.ids):
            raise ValueError(f"column {name!r}: {len(values)} values for {len(out.ids)} candidates")
        if values and all(isinstance(v, str) for v in values):
            out.categorical.add(name=name, values=values)
        else:
            out.numeric.add(name=name, values=[float(v) for v in values])
    return out


def event(tenant: str, *, user_id: str = "", session_id: str = "", request_id: str = "",
          event_id: str | None = None, at_ms: int | None = None, **body: Any) -> events_pb2.Event:
    """An envelope with one body (``click=events_pb2.Click(...)`` etc.); ``event_id`` defaults to a
    new unique id, ``at_ms`` (the client time, ms since the epoch) to now."""
    return events_pb2.Event(event_id=event_id or stamps.new_event_id(), tenant=tenant, user_id=user_id,
                            session_id=session_id, request_id=request_id,
                            client_time_ms=at_ms if at_ms is not None else stamps.now_ms(), **body)


def chunks(items: Sequence[events_pb2.Event], size: int) -> Iterable[Sequence[events_pb2.Event]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def interpretation(intent: str, slots: Mapping[str, str] | None = None, *, domain: str = ""
                   ) -> events_pb2.Interpretation:
    """How the assistant's NLU understood a turn: ``interpretation("play_movie", {"item": "42"})``.

    The miner keys its chain on domain, intent and the slot values (see
    ``loopwise.miner.reformulation.sessions.interpretation_key``).
    """
    if not intent:
        raise ValueError("interpretation: intent is empty")
    return events_pb2.Interpretation(domain=domain, intent=intent,
                                     slots={str(k): str(v) for k, v in (slots or {}).items()})


class EventFactory:
    """Builders for each event kind, with the tenant filled in.

    Every builder takes the envelope's ``user_id``, ``session_id``,
    ``event_id`` (default: a new unique id; pass the same one again to retry)
    and ``at_ms`` (when it happened on the client, milliseconds since the epoch;
    default: now).
    """

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant

    def click(self, request_id: str, candidate_id: str, *, user_id: str = "", position: int = 0,
              dwell_ms: int = 0, session_id: str = "", event_id: str | None = None,
              at_ms: int | None = None) -> events_pb2.Event:
        return event(self.tenant, request_id=request_id, user_id=user_id, session_id=session_id,
                     event_id=event_id, at_ms=at_ms,
                     click=events_pb2.Click(candidate_id=candidate_id, position=position, dwell_ms=dwell_ms))

    def accept(self, request_id: str, candidate_id: str, *, user_id: str = "", position: int = 0,
               session_id: str = "", event_id: str | None = None, at_ms: int | None = None) -> events_pb2.Event:
        return event(self.tenant, request_id=request_id, user_id=user_id, session_id=session_id,
                     event_id=event_id, at_ms=at_ms,
                     accept=events_pb2.Accept(candidate_id=candidate_id, position=position))

    def reject(self, request_id: str, candidate_id: str, *, user_id: str = "", position: int = 0,
               reason: str = "", session_id: str = "", event_id: str | None = None,
               at_ms: int | None = None) -> events_pb2.Event:
        return event(self.tenant, request_id=request_id, user_id=user_id, session_id=session_id,
                     event_id=event_id, at_ms=at_ms,
                     reject=events_pb2.Reject(candidate_id=candidate_id, position=position, reason=reason))

    def turn(self, utterance: str, *, user_id: str, status: int | None = None, session_id: str = "",
             barge_in: bool = False, latency_ms: int = 0, interpretation: events_pb2.Interpretation | None = None,
             rewritten_utterance: str = "", rewrite_rule_id: str = "", explicit_reject: bool = False,
             request_id: str = "", event_id: str | None = None, at_ms: int | None = None) -> events_pb2.Event:
        """One assistant turn. ``status`` (a ``events_pb2.ResponseStatus``: OK, UNHANDLED, ERROR,
        CANCELLED, or UNSPECIFIED for no outcome known) is required: a turn without one would count
        as a success. ``session_id``: the client's session; the miner groups turns by it (by time
        gaps only when it is empty)."""
        if status is None:
            raise ValueError("turn: status is required (events_pb2.RESPONSE_STATUS_OK, _UNHANDLED, _ERROR, "
                             "_CANCELLED, or _UNSPECIFIED when the outcome is unknown)")
        if status not in events_pb2.ResponseStatus.values():
            raise ValueError(f"turn: status {status!r} is not a ResponseStatus "
                             f"({sorted(events_pb2.ResponseStatus.values())})")
        return event(self.tenant, user_id=user_id, session_id=session_id, request_id=request_id,
                     event_id=event_id, at_ms=at_ms,
                     turn=events_pb2.Turn(utterance=utterance, interpretation=interpretation, status=status,
                                          barge_in=barge_in, latency_ms=latency_ms,
                                          rewritten_utterance=rewritten_utterance,
                                          rewrite_rule_id=rewrite_rule_id, explicit_reject=explicit_reject))

    def impression(self, request_id: str, candidate_ids: Sequence[str], *, user_id: str = "", model: str = "",
                   version: str = "", scores: Sequence[float] = (), propensities: Sequence[float] = (),
                   source: str = "client", session_id: str = "", event_id: str | None = None,
                   at_ms: int | None = None) -> events_pb2.Event:
        return event(self.tenant, request_id=request_id, user_id=user_id, session_id=session_id,
                     event_id=event_id, at_ms=at_ms,
                     impression=events_pb2.Impression(model=model, version=version,
                                                       candidate_ids=list(candidate_ids), scores=list(scores),
                                                       propensities=list(propensities), source=source))
