import pytest

from loopwise import codec, stamps
from loopwise.client.build import EventFactory
from loopwise.topics import Topics

F = EventFactory("t1")


def test_round_trip():
    ev = F.click("r1", "m1", user_id="u1", position=3, dwell_ms=1200)
    back = codec.decode(codec.encode(ev))
    assert back == ev
    assert back.click.position == 3


def test_garbage_is_a_value_error():
    with pytest.raises(ValueError):
        codec.decode(b"\xff\xff\xff\xff garbage")


def test_keys_copartition_requests_and_sessions():
    click = F.click("r1", "m1", user_id="u1")
    imp = F.impression("r1", ["m1"], user_id="u2")
    assert codec.record_key(click) == codec.record_key(imp) == b"t1|r|r1"
    turn = F.turn("hello", user_id="u1", request_id="r9", status=1)
    assert codec.record_key(turn) == b"t1|u|u1"


def test_event_ids_are_unique():
    assert len({stamps.new_event_id() for _ in range(1000)}) == 1000


def test_topics_from_env_and_prefix():
    t = Topics.from_env({"LOOPWISE_TOPIC_EVENTS": "custom.events"})
    assert t.events == "custom.events" and t.impressions == "loopwise.impressions.v1"
    p = Topics.with_prefix("x.")
    assert p.events == "x.loopwise.events.v1" and len(set(p.all())) == 9
    assert Topics.from_env(p.env()) == p
