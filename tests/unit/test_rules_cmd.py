"""`loopwise rules status` (the miner's caught-up signal, read from Redis) and `loopwise rules
evaluate FILE.jsonl` (the offline miner on logged Turn events), without a stack."""

from __future__ import annotations

import json

from google.protobuf import json_format

from loopwise import redis_keys
from loopwise.client.build import EventFactory, interpretation
from loopwise.tools import cli, rules_cmd, rules_eval

T0 = 1_700_000_000_000
OK, UNHANDLED = 1, 2


class FakeRedis:
    def __init__(self, data: dict) -> None:
        self.data = data

    def get(self, key):
        value = self.data.get(key)
        return value.encode() if isinstance(value, str) else None

    def hlen(self, key):
        return len(self.data.get(key, {}))


def status_of(monkeypatch, capsys, data, *extra):
    monkeypatch.setattr(rules_cmd, "_client", lambda args: FakeRedis(data))
    assert cli.main(["rules", "status", "--tenant", "acme", *extra]) == 0
    return capsys.readouterr().out


def test_status_says_how_far_mining_has_caught_up(monkeypatch, capsys):
    assert "caught up: not yet" in status_of(monkeypatch, capsys, {})
    data = {redis_keys.rules_caught_up("acme"): json.dumps({"through_ms": T0, "refreshed_ms": T0 + 2500}),
            redis_keys.rewrite_table("acme"): {"play heet": "{}"}}
    out = status_of(monkeypatch, capsys, data)
    assert "1 live rules" in out and "caught up through 2023-11-14 22:13:20.000 UTC" in out and "2.5 s behind" in out
    assert json.loads(status_of(monkeypatch, capsys, data, "--json"))["caught_up"]["through_ms"] == T0


def log_lines(users: int = 30, days: int = 2) -> list[str]:
    """Every user, every day: "play heet" (unhandled), then "play heat" (plays item 7), in one
    client session."""
    f = EventFactory("acme")
    heat = interpretation("play_movie", {"item": "7"}, domain="media")
    lines = []
    for d in range(days):
        for u in range(users):
            t = T0 + d * 86_400_000 + u * 600_000
            sid = f"u{u}-d{d}"
            lines += [json_format.MessageToJson(e, indent=None) for e in (
                f.turn("play heet", user_id=f"u{u}", session_id=sid, status=UNHANDLED, at_ms=t),
                f.turn("play heat", user_id=f"u{u}", session_id=sid, status=OK, interpretation=heat, at_ms=t + 4000))]
    return lines


def test_evaluate_mines_the_first_part_and_tests_the_rest(tmp_path, capsys):
    path = tmp_path / "turns.jsonl"
    path.write_text("\n".join(log_lines() + ["not json", json_format.MessageToJson(
        EventFactory("acme").click("r1", "m1"), indent=None)]) + "\n")
    assert cli.main(["rules", "evaluate", str(path)]) == 0
    out = capsys.readouterr().out
    figures = json.loads(out.strip().splitlines()[-1])
    assert "2 lines skipped" in out
    assert figures["rules"] == 2 and figures["rule_precision"] == 1.0
    assert (figures["utterance_rules"], figures["span_rules"]) == (1, 1)  # "play heet", and "heet" anywhere
    assert figures["wins"] == 30 and figures["losses"] == 0
    assert figures["defect_rate_before"] == 0.5 and figures["defect_rate_after"] == 0.0


def test_evaluate_without_turns_fails_clearly(tmp_path, capsys):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    assert cli.main(["rules", "evaluate", str(path)]) == 1
    assert "no Turn events" in capsys.readouterr().err
    assert cli.main(["rules", "evaluate"]) == 2


def test_read_turns_keeps_the_session_id():
    turns, skipped = rules_eval.read_turns(log_lines(users=1, days=1))
    assert skipped == 0 and [t.session_id for t in turns] == ["u0-d0", "u0-d0"]


def test_evaluate_judges_span_rules_in_carriers_the_training_never_saw():
    """Trained on "weather in soul" -> "weather in seoul"; tested on "time in soul" -> "time in seoul"."""
    from loopwise.miner.reformulation.sessions import STATUS_OK, STATUS_UNHANDLED, TurnRecord
    from loopwise.tools.rules_eval import evaluate

    turns = []
    for d, carrier, intent in ((0, "weather in", "get_weather"), (1, "time in", "get_time")):
        for u in range(20):
            t = T0 + d * 86_400_000 + u * 600_000
            turns += [TurnRecord(t, f"{carrier} soul", status=STATUS_UNHANDLED, user_id=f"u{u}", tenant="a"),
                      TurnRecord(t + 4000, f"{carrier} seoul", f"assistant.{intent}:seoul", status=STATUS_OK,
                                 user_id=f"u{u}", tenant="a", slots={"city": "seoul"})]
    r = evaluate(turns, train_share=0.5)
    f = r.figures()
    assert f["span_rules"] == 1 and f["wins"] == 20 and f["losses"] == 0 and f["rule_precision"] == 1.0
    assert f["defect_rate_after"] == 0.0
