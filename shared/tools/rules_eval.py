"""``loopwise rules evaluate FILE.jsonl``: the offline miner on a file of logged Turn events.

Each line of the file is one ``loopwise.v1.Event`` with a Turn body in
protobuf's JSON form (``google.protobuf.json_format.MessageToJson``: the
fields as ``event_id``/``eventId``, ``user_id``, ``session_id``,
``client_time_ms``, ``turn: {utterance, interpretation, status, ...}``).

The turns are cut into sessions as the miner does (the client's
``session_id``, else time gaps), split by time: the sessions that start in
the first ``train_share`` of the period mine the rules (the miner's own
`TenantMiner` and defaults: whole-utterance and span rules, every rule live
at once), the rest test them. A log has no ground truth, so the test figures
are the miner's own judgement of what the rules, served as `Rewrite` serves
them (`loopwise.spans.RuleSet`), would have done to the test turns (those not
rewritten already):

* a **win**: the turn was defective and a later turn of its session succeeded
  where the rule leads (a whole-utterance rule: at its target state; span
  rules: with words containing their rewrites): the user got there by
  rephrasing, the rule gets there at once;
* a **loss**: the turn worked as heard, and the rule would have changed it
  (a whole-utterance rule: to another state than the one it worked at);
* the defect rate per turn after: the test's defective turns, less those a
  win spares (the source turn and the defective rephrases after it up to the
  success), plus the losses;
* rule precision: of the rules that apply to test turns that later
  succeeded, the share that lead where those turns' users succeeded (most
  of the time).

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import json_format

from loopwise.miner.reformulation.defects import DefectKind, label_session
from loopwise.miner.reformulation.pipeline import MiningConfig, TenantMiner
from loopwise.miner.reformulation.rules import Rule, rewrite_table
from loopwise.miner.reformulation.sessions import DEFAULT_GAP_MS, TurnRecord, sessionize
from loopwise.spans import SPAN, RuleSet, split_ids
from loopwise.v1 import events_pb2

OFFLINE = MiningConfig(canary_share=1.0)


def read_turns(lines: Iterable[str]) -> tuple[list[TurnRecord], int]:
    """(turn records, lines skipped: blank, not an Event, or not a Turn)."""
    out: list[TurnRecord] = []
    skipped = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            event = json_format.Parse(line, events_pb2.Event(), ignore_unknown_fields=True)
        except json_format.ParseError:
            skipped += 1
            continue
        if event.WhichOneof("body") != "turn":
            skipped += 1
            continue
        out.append(TurnRecord.from_event(event))
    return out, skipped


@dataclass
class Evaluation:
    rules: list[Rule]
    train_sessions: int
    test_turns: int
    defects_before: int
    spared: int  # defective turns the wins make unnecessary
    wins: int
    losses: int
    correct_rules: int
    judged_rules: int

    @property
    def defect_rate_before(self) -> float:
        return self.defects_before / self.test_turns if self.test_turns else 0.0

    @property
    def defect_rate_after(self) -> float:
        after = self.defects_before - self.spared + self.losses
        return after / self.test_turns if self.test_turns else 0.0

    @property
    def defect_reduction(self) -> float:
        b = self.defect_rate_before
        return (b - self.defect_rate_after) / b if b else 0.0

    @property
    def win_loss(self) -> float:
        return self.wins / self.losses if self.losses else float("inf") if self.wins else 0.0

    @property
    def precision(self) -> float:
        return self.correct_rules / self.judged_rules if self.judged_rules else 0.0

    def figures(self) -> dict[str, float | int]:
        wl = self.win_loss
        spans = sum(1 for r in self.rules if r.kind == SPAN)
        return {"rules": len(self.rules), "span_rules": spans, "utterance_rules": len(self.rules) - spans,
                "rule_precision": round(self.precision, 4),
                "defect_rate_before": round(self.defect_rate_before, 4),
                "defect_rate_after": round(self.defect_rate_after, 4),
                "defect_reduction": round(self.defect_reduction, 4), "wins": self.wins, "losses": self.losses,
                "win_loss": round(wl, 3) if wl != float("inf") else "inf",
                "train_sessions": self.train_sessions, "test_turns": self.test_turns}

    def lines(self) -> list[str]:
        return [
            f"rules {len(self.rules)} (mined on {self.train_sessions} sessions), precision {self.precision:.3f} "
            f"({self.correct_rules}/{self.judged_rules})",
            f"defect rate per turn {self.defect_rate_before:.4f} -> {self.defect_rate_after:.4f} "
            f"(-{100 * self.defect_reduction:.1f}%) on {self.test_turns} test turns",
            f"turns the rules would rewrite: wins {self.wins}, losses {self.losses}, win/loss {self.win_loss:.2f}",
            json.dumps(self.figures()),
        ]


def _outcomes(session: Sequence[TurnRecord], kinds: Sequence[DefectKind]) -> list[TurnRecord | None]:
    """Per turn: the turn the user succeeded with from there on in the session (None if none)."""
    out: list[TurnRecord | None] = [None] * len(session)
    reached = None
    for i in range(len(session) - 1, -1, -1):
        if not kinds[i]:
            reached = session[i]
        out[i] = reached
    return out


def _leads_there(rules: Sequence[Rule], end: TurnRecord) -> bool:
    """Whether the rules applied to a turn lead where ``end`` succeeded."""
    words = f" {end.text} "
    return all(r.target == end.state if r.kind != SPAN else f" {r.rewrite} " in words for r in rules)


def evaluate(turns: Sequence[TurnRecord], *, train_share: float = 0.7, gap_ms: int = DEFAULT_GAP_MS,
             config: MiningConfig = OFFLINE, tenant: str = "default") -> Evaluation:
    sessions = sorted(sessionize(turns, gap_ms=gap_ms), key=lambda s: s[0].time_ms)
    if not sessions:
        return Evaluation([], 0, 0, 0, 0, 0, 0, 0, 0)
    first, last = sessions[0][0].time_ms, max(s[-1].time_ms for s in sessions)
    split = first + train_share * (last - first)
    train = [s for s in sessions if s[0].time_ms < split]
    test = [s for s in sessions if s[0].time_ms >= split]
    miner = TenantMiner(tenant, config)
    for session in train:
        miner.observe_session(session)
    miner.refresh(now_ms=int(split))
    rules = list(miner.rules.values())
    served = RuleSet.from_table(rewrite_table(rules))
    by_id = {r.rule_id: r for r in rules}
    test_turns = defects = spared = wins = losses = 0
    led: dict[str, Counter] = defaultdict(Counter)  # rule id -> did it lead where its turns' users succeeded
    for session in test:
        kinds, _ = label_session(session, config.defects)
        reached = _outcomes(session, kinds)
        test_turns += len(session)
        defects += sum(bool(k) for k in kinds)
        i = 0
        while i < len(session):
            turn, kind, end = session[i], kinds[i], reached[i]
            applied = None if turn.rule_id else served.apply(turn.text, turn.user_id)
            i += 1
            if applied is None:
                continue
            used = [by_id[rid] for rid in split_ids(applied.rule_id) if rid in by_id]
            there = end is not None and _leads_there(used, end)
            if end is not None:
                for r in used:
                    led[r.rule_id].update([there])
            if kind and there:
                wins += 1
                spared += 1
                while i < len(session) and kinds[i]:  # the rephrases up to the success: not needed
                    spared += 1
                    i += 1
            elif not kind and (applied.kind == SPAN or turn.state != used[0].target):
                losses += 1
    correct = sum(1 for c in led.values() if c[True] > c[False])
    return Evaluation(rules, len(train), test_turns, defects, spared, wins, losses, correct, len(led))


def run(path: Path, *, train_share: float = 0.7, gap_ms: int = DEFAULT_GAP_MS, tenant: str = "") -> int:
    """Print the evaluation of the Turn events in ``path`` (only ``tenant``'s, when given)."""
    with path.open() as f:
        turns, skipped = read_turns(f)
    if tenant:
        turns = [t for t in turns if t.tenant == tenant]
    if not turns:
        print(f"loopwise rules evaluate: no Turn events in {path} ({skipped} lines skipped)", file=sys.stderr)
        return 1
    result = evaluate(turns, train_share=train_share, gap_ms=gap_ms, tenant=tenant or turns[0].tenant)
    if skipped:
        print(f"{skipped} lines skipped (not a Turn event)")
    print("\n".join(result.lines()))
    return 0
