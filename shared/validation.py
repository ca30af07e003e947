"""Event validation: the collector rejects with these reasons, the miner
dead-letters with the same ones, so a reason means one thing everywhere.

`check_event` returns None for a valid event, else ``(reason, detail)``.
Reasons are stable, machine-readable strings (listed in `REASONS`).

An impression is checked for structure as well as size, so that no consumer
trips on it later: every candidate feature column has one value per
candidate (``misaligned_features``), ``ranking`` has one distinct index per
shown candidate, each inside the candidates (``invalid_ranking``), and no
number a consumer computes with is NaN or infinite (``non_finite_number``:
scores, numeric features, the representation's scales). The finiteness and
column checks are those of `loopwise.features`, which `Rank` applies.

`long_string` bounds every string of any message, however deep (ids, names,
feature keys and values, utterances): the gRPC services refuse a request
holding one too long before it reaches a handler (`loopwise.guard`), and
`check_event` rejects such an event (``field_too_long``).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from loopwise.features import all_finite, misaligned_column, non_finite
from loopwise.limits import (
    MAX_CANDIDATES,
    MAX_EVENT_BYTES,
    MAX_FIELD_CHARS,
    MAX_ID_CHARS,
    MAX_UTTERANCE_CHARS,
    MAX_VALUE_CHARS,
)
from loopwise.v1 import events_pb2

# The limit of a string field by its name; every other string field: MAX_FIELD_CHARS.
STRING_LIMITS = {"event_id": MAX_ID_CHARS, "utterance": MAX_UTTERANCE_CHARS,
                 "rewritten_utterance": MAX_UTTERANCE_CHARS, "values": MAX_VALUE_CHARS}
MAP_VALUE_CHARS = MAX_VALUE_CHARS  # a string map's values (categorical features, Rewrite's context)

REASONS = (
    "missing_event_id", "invalid_event_id", "missing_tenant", "unknown_tenant", "missing_body",
    "missing_timestamp", "timestamp_in_future", "timestamp_too_old", "field_too_long",
    "missing_request_id", "missing_candidate_id", "missing_user_id", "empty_utterance",
    "utterance_too_long", "empty_impression", "too_many_candidates", "misaligned_scores",
    "invalid_propensity", "event_too_large", "misaligned_features", "invalid_ranking", "non_finite_number",
)


@dataclass(frozen=True)
class Limits:
    """The limits one check applies: by default those of `loopwise.limits` (every service's)."""

    max_event_bytes: int = MAX_EVENT_BYTES
    max_id_chars: int = MAX_ID_CHARS
    max_field_chars: int = MAX_FIELD_CHARS
    max_utterance_chars: int = MAX_UTTERANCE_CHARS
    max_candidates: int = MAX_CANDIDATES
    # Clock sanity: events from further ahead than this are refused ...
    max_future_ms: int = 5 * 60 * 1000
    # ... and so are events older than this (a replay tool sets it wide).
    max_age_ms: int = 30 * 24 * 3600 * 1000


def _too_long(values: Any, limit: int) -> bool:
    return bool(values) and max(map(len, values)) > limit


def long_string(message: Message, path: str = "") -> tuple[str, int] | None:
    """The first string field of ``message`` longer than its limit, as (path, limit), else None."""
    for fd, value in message.ListFields():
        name = f"{path}{fd.name}"
        if fd.type == FieldDescriptor.TYPE_STRING:
            limit = STRING_LIMITS.get(fd.name, MAX_FIELD_CHARS)
            if _too_long(value if fd.is_repeated else (value,), limit):
                return name, limit
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            if fd.message_type.GetOptions().map_entry:
                if _too_long(value.keys(), MAX_FIELD_CHARS):
                    return f"{name} (key)", MAX_FIELD_CHARS
                value_field = fd.message_type.fields_by_name["value"]
                if value_field.type == FieldDescriptor.TYPE_STRING and _too_long(value.values(), MAP_VALUE_CHARS):
                    return f"{name} (value)", MAP_VALUE_CHARS
                continue
            for i, sub in enumerate(value if fd.is_repeated else (value,)):
                found = long_string(sub, f"{name}[{i}]." if fd.is_repeated else f"{name}.")
                if found is not None:
                    return found
    return None


def check_event(event: events_pb2.Event, *, tenants: Collection[str], now_ms: int,
                limits: Limits = Limits(), size: int | None = None) -> tuple[str, str] | None:
    problem = _check_event(event, tenants, now_ms, limits, size)
    if problem is None and (long := long_string(event)) is not None:
        return "field_too_long", f"{long[0]} longer than {long[1]} characters"
    return problem


def _check_event(event: events_pb2.Event, tenants: Collection[str], now_ms: int, limits: Limits,
                 size: int | None) -> tuple[str, str] | None:
    if not event.event_id:
        return "missing_event_id", "event_id is required (the idempotency key)"
    if len(event.event_id) > limits.max_id_chars or not event.event_id.isprintable():
        return "invalid_event_id", f"event_id must be printable and at most {limits.max_id_chars} characters"
    if not event.tenant:
        return "missing_tenant", "tenant is required"
    if event.tenant not in tenants:
        return "unknown_tenant", f"tenant {event.tenant[:64]!r} is not served here"
    size = event.ByteSize() if size is None else size
    if size > limits.max_event_bytes:
        return "event_too_large", f"{size} bytes, at most {limits.max_event_bytes}"
    for name in ("user_id", "session_id", "request_id"):
        if len(getattr(event, name)) > limits.max_field_chars:
            return "field_too_long", f"{name} longer than {limits.max_field_chars} characters"
    kind = event.WhichOneof("body")
    if kind is None:
        return "missing_body", "one of impression, click, accept, reject, turn is required"
    if event.client_time_ms <= 0:
        return "missing_timestamp", "client_time_ms is required"
    if event.client_time_ms > now_ms + limits.max_future_ms:
        return "timestamp_in_future", f"client_time_ms is {(event.client_time_ms - now_ms) // 1000}s ahead of the server"
    if event.client_time_ms < now_ms - limits.max_age_ms:
        return "timestamp_too_old", f"client_time_ms is older than {limits.max_age_ms // 86_400_000} days"

    if kind == "turn":
        turn = event.turn
        if not event.user_id:
            return "missing_user_id", "a turn needs user_id (sessions are per user)"
        if not turn.utterance.strip():
            return "empty_utterance", "turn.utterance is empty"
        if len(turn.utterance) > limits.max_utterance_chars or len(turn.rewritten_utterance) > limits.max_utterance_chars:
            return "utterance_too_long", f"utterance longer than {limits.max_utterance_chars} characters"
        return None
    if not event.request_id:
        return "missing_request_id", f"a {kind} needs the request_id it refers to"
    if kind == "impression":
        imp = event.impression
        n = len(imp.candidate_ids)
        if n == 0:
            return "empty_impression", "impression.candidate_ids is empty"
        if n > limits.max_candidates:
            return "too_many_candidates", f"{n} candidates, at most {limits.max_candidates}"
        if len(imp.scores) not in (0, n):
            return "misaligned_scores", f"{len(imp.scores)} scores for {n} candidates"
        if len(imp.propensities) not in (0, n):
            return "misaligned_scores", f"{len(imp.propensities)} propensities for {n} candidates"
        if any(not 0.0 < p <= 1.0 for p in imp.propensities):
            return "invalid_propensity", "propensities must be in (0, 1]"
        return _check_structure(imp)
    body = getattr(event, kind)
    if not body.candidate_id:
        return "missing_candidate_id", f"{kind}.candidate_id is required"
    if len(body.candidate_id) > limits.max_field_chars:
        return "field_too_long", f"candidate_id longer than {limits.max_field_chars} characters"
    return None


def _check_structure(imp: events_pb2.Impression) -> tuple[str, str] | None:
    """Columns aligned with the candidates, a ranking inside them, finite numbers."""
    n, cands = len(imp.candidate_ids), imp.candidates
    misaligned = misaligned_column(cands)
    if misaligned is not None:
        name, length = misaligned
        return "misaligned_features", f"candidates.{name[:64]} has {length} values for {len(cands.ids)} candidates"
    if imp.ranking:
        # indices into the candidates (or into candidate_ids when no candidates are given)
        bound = len(cands.ids) or n
        if len(imp.ranking) != n:
            return "invalid_ranking", f"{len(imp.ranking)} ranking entries for {n} shown candidates"
        if max(imp.ranking) >= bound:
            return "invalid_ranking", f"ranking index {max(imp.ranking)} past the {bound} candidates"
        if len(set(imp.ranking)) != n:
            return "invalid_ranking", "ranking names a candidate twice"
    bad = non_finite(imp.user, imp.context, cands)
    if bad is not None:
        return "non_finite_number", f"{bad[:80]} holds NaN or an infinity"
    for name in ("scores", "representation_scale"):
        if not all_finite(getattr(imp, name)):
            return "non_finite_number", f"{name} holds NaN or an infinity"
    return None
