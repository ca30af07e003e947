"""EventFactory: a turn without a status is refused, envelope fields are typed parameters,
and `interpretation` builds what the miner keys its chain on."""

from __future__ import annotations

import inspect

import pytest

from loopwise.client.build import EventFactory, interpretation
from loopwise.miner.reformulation.sessions import TurnRecord
from loopwise.v1 import events_pb2

F = EventFactory("t")


def test_a_turn_without_a_status_is_an_error_not_a_success():
    with pytest.raises(ValueError, match="status is required"):
        F.turn("play heat", user_id="u1")
    with pytest.raises(ValueError, match="not a ResponseStatus"):
        F.turn("play heat", user_id="u1", status=42)
    unknown = F.turn("play heat", user_id="u1", status=events_pb2.RESPONSE_STATUS_UNSPECIFIED)
    assert unknown.turn.status == events_pb2.RESPONSE_STATUS_UNSPECIFIED  # said explicitly: allowed


def test_event_id_and_time_are_typed_parameters_of_every_builder():
    for name in ("click", "accept", "reject", "turn", "impression"):
        params = inspect.signature(getattr(F, name)).parameters
        assert {"event_id", "at_ms", "session_id"} <= set(params), name
        assert not any(p.kind is p.VAR_KEYWORD for p in params.values()), name
    ev = F.turn("play heat", user_id="u1", status=1, event_id="e7", at_ms=1234, session_id="s1", request_id="r1")
    assert (ev.event_id, ev.client_time_ms, ev.session_id, ev.request_id) == ("e7", 1234, "s1", "r1")
    with pytest.raises(TypeError):
        F.click("r1", "m1", timestamp=5)  # a misspelt envelope field is refused, not dropped


def test_interpretation_helper_feeds_the_miners_chain_state():
    i = interpretation("play_movie", {"item": 42}, domain="media")
    ev = F.turn("play heat", user_id="u1", status=1, interpretation=i)
    assert TurnRecord.from_event(ev).state == "media.play_movie:42"
    with pytest.raises(ValueError, match="intent"):
        interpretation("")
