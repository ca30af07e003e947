"""``loopwise rules evaluate FILE.jsonl``: the offline miner on a file of logged Turn events.

Each line of the file is one ``loopwise.v1.Event`` with a Turn body in
protobuf's JSON form (``google.protobuf.json_format.MessageToJson``: the
fields as ``event_id``/``eventId``, ``user_id``, ``session_id``,
``client_time_ms``, ``turn: {utterance, interpretation, status, ...}``).

The turns are cut into sessions as the miner does (the client's
``session_id``, else time gaps), split by time: the sessions that start in
the first ``train_share`` of the period mine the rules (defect labels ->
chain -> `select_rules`, the miner's own code and defaults), the rest test
them. A log has no ground truth, so the test figures are the miner's own
judgement of what each rule would have done to the test turns whose heard
utterance is its source (and that were not rewritten already):

* a **win**: the turn was defective and a later turn of its session succeeded
  at the rule's target (the user got there by rephrasing; the rule gets there
  at once);
* a **loss**: the turn worked as heard, at another state than the rule's
  target (the rule would have broken a working request);
* the defect rate per turn after: the test's defective turns, less those a
  win spares (the source turn and the defective rephrases after it up to the
  success), plus the losses;
* rule precision: of the rules whose source occurs in the test, the share
  whose target is where the users who said the source most often succeeded.

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

from loopwise.miner.reformulation.chain import Chain, ChainConfig
from loopwise.miner.reformulation.defects import DefectConfig, DefectKind, label_session
from loopwise.miner.reformulation.rules import Rule, RuleConfig, select_rules
from loopwise.miner.reformulation.sessions import DEFAULT_GAP_MS, TurnRecord, sessionize
from loopwise.v1 import events_pb2


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
        return {"rules": len(self.rules), "rule_precision": round(self.precision, 4),
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


def _outcomes(session: Sequence[TurnRecord], kinds: Sequence[DefectKind]) -> list[str]:
    """Per turn: the state the user succeeded at from there on in the session ("" if none)."""
    out = [""] * len(session)
    reached = ""
    for i in range(len(session) - 1, -1, -1):
        if not kinds[i]:
            reached = session[i].state
        out[i] = reached
    return out


def evaluate(turns: Sequence[TurnRecord], *, train_share: float = 0.7, gap_ms: int = DEFAULT_GAP_MS,
             defect_config: DefectConfig | None = None, chain_config: ChainConfig | None = None,
             rule_config: RuleConfig | None = None, tenant: str = "default") -> Evaluation:
    defect_config = defect_config or DefectConfig()
    sessions = sorted(sessionize(turns, gap_ms=gap_ms), key=lambda s: s[0].time_ms)
    if not sessions:
        return Evaluation([], 0, 0, 0, 0, 0, 0, 0, 0)
    first, last = sessions[0][0].time_ms, max(s[-1].time_ms for s in sessions)
    split = first + train_share * (last - first)
    train = [s for s in sessions if s[0].time_ms < split]
    test = [s for s in sessions if s[0].time_ms >= split]
    chain = Chain(chain_config or ChainConfig())
    for session in train:
        kinds, rephrased = label_session(session, defect_config)
        chain.observe_session(session, kinds, rephrased)
    chain.solve()
    rules = select_rules(chain, tenant, rule_config or RuleConfig())
    by_source: dict[str, Rule] = {}
    for r in rules:
        by_source.setdefault(r.source, r)
    test_turns = defects = spared = wins = losses = 0
    ends: dict[str, Counter] = defaultdict(Counter)  # source -> where its speakers succeeded
    for session in test:
        kinds, _ = label_session(session, defect_config)
        reached = _outcomes(session, kinds)
        test_turns += len(session)
        defects += sum(bool(k) for k in kinds)
        i = 0
        while i < len(session):
            turn, kind, end = session[i], kinds[i], reached[i]
            rule = by_source.get(turn.text)
            i += 1
            if rule is None or turn.rule_id:
                continue
            if end:
                ends[turn.text].update([end])
            if kind and end == rule.target:
                wins += 1
                spared += 1
                while i < len(session) and kinds[i]:  # the rephrases up to the success: not needed
                    spared += 1
                    i += 1
            elif not kind and turn.state != rule.target:
                losses += 1
    judged = [r for r in by_source.values() if ends.get(r.source)]
    correct = sum(ends[r.source].most_common(1)[0][0] == r.target for r in judged)
    return Evaluation(rules, len(train), test_turns, defects, spared, wins, losses, correct, len(judged))


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
