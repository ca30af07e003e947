"""Offline end-to-end check of reformulation mining on the assistant simulator (no Kafka).

Mine: simulated turns without rewrites -> `sessionize` -> the miner's own
`TenantMiner` (defects, chain, whole-utterance and span rules; no canary).
Evaluate: rerun the simulator on held-out seeds with those rules served as
the Rewrite RPC serves them (`loopwise.spans.RuleSet`), against the same seeds
without them and with the oracle (every recurring confusion rewritten right:
the ceiling). Figures come from the simulator's ground truth: defect rate per
turn (the user did not get what they asked for, or interrupted it), failed
requests, win/loss (rewritten turns fixed / broken, against what the NLU would
have done with the heard utterance), per rule kind, and rule precision (most
held-out turns a rule rewrites get what their user wanted).

>>> r = evaluate(users=150, minutes=60, train_seeds=(1,), test_seeds=(2,))  # doctest: +SKIP
>>> r.after.defect_rate < r.before.defect_rate  # doctest: +SKIP
True
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from loopwise.miner.reformulation.defects import label_session
from loopwise.miner.reformulation.pipeline import MiningConfig, TenantMiner
from loopwise.miner.reformulation.rollback import RuleMonitor
from loopwise.miner.reformulation.rules import Rule, rewrite_table
from loopwise.miner.reformulation.sessions import (
    DEFAULT_GAP_MS,
    TurnRecord,
    interpretation_key,
    sessionize,
)
from loopwise.spans import RuleSet, split_ids
from loopwise.text import normalize
from loopwise.tools.simulate.assistant import (
    SimTurn,
    Summary,
    World,
    movielens_catalog,
    simulate,
    summarize,
)

OFFLINE = MiningConfig(canary_share=1.0)  # the reference: every rule live at once


@dataclass
class OfflineResult:
    rules: list[Rule]
    before: Summary
    after: Summary
    correct_rules: int
    judged_rules: int
    detection: dict[str, float] = field(default_factory=dict)
    withdrawn: list[Rule] = field(default_factory=list)
    oracle: Summary | None = None
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)  # kind -> rules, wins, losses

    @property
    def precision(self) -> float:
        return self.correct_rules / self.judged_rules if self.judged_rules else 0.0

    @property
    def relative_reduction(self) -> float:
        return reduction(self.before, self.after)

    @property
    def oracle_reduction(self) -> float:
        return reduction(self.before, self.oracle) if self.oracle else float("nan")

    def lines(self) -> list[str]:
        b, a = self.before, self.after
        out = [
            f"rules {len(self.rules)}, precision {self.precision:.3f} ({self.correct_rules}/{self.judged_rules})",
            f"defect rate per turn {b.defect_rate:.4f} -> {a.defect_rate:.4f} "
            f"(-{100 * self.relative_reduction:.1f}%), turns {b.turns} -> {a.turns}",
            f"failed requests {b.request_failure_rate:.4f} -> {a.request_failure_rate:.4f}",
            f"rewritten turns {a.rewritten}, wins {a.wins}, losses {a.losses}, win/loss {a.win_loss:.2f}",
            "by kind: " + "; ".join(f"{k} {v['rules']} rules, wins {v['wins']}, losses {v['losses']}"
                                    for k, v in sorted(self.by_kind.items())),
            "defect detection vs truth: " + ", ".join(f"{k} {v:.3f}" for k, v in self.detection.items()),
            f"withdrawn by rollback before the test: {len(self.withdrawn)}",
        ]
        if self.oracle is not None:
            share = self.relative_reduction / max(self.oracle_reduction, 1e-9)
            out.append(f"oracle (every recurring confusion rewritten right): defect rate "
                       f"{self.oracle.defect_rate:.4f} (-{100 * self.oracle_reduction:.1f}%); reached {share:.2f} of it")
        return out


def reduction(before: Summary, after: Summary) -> float:
    b = before.defect_rate
    return (b - after.defect_rate) / b if b else 0.0


def record_of(turn: SimTurn, tenant: str = "default") -> TurnRecord:
    """A simulated turn as the miner sees it (what `TurnRecord.from_event` makes of its event)."""
    slots = turn.slot_values
    interp = interpretation_key(turn.intent, slots, turn.domain) if turn.item else ""
    return TurnRecord(time_ms=turn.time_ms, utterance=turn.utterance, interpretation=interp,
                      status=turn.status, barge_in=turn.barge_in, explicit_reject=turn.explicit_reject,
                      rewritten=turn.rewritten, rule_id=turn.rule_id, user_id=turn.user_id, tenant=tenant,
                      session_id=turn.session_id, slots={k: normalize(v) for k, v in slots.items()})


def mine(turns: Sequence[SimTurn], *, tenant: str = "default", gap_ms: int = DEFAULT_GAP_MS,
         config: MiningConfig = OFFLINE) -> tuple[TenantMiner, list[Rule], dict[str, float]]:
    """(miner, rules, defect-detection precision/recall against the simulator's truth): the
    miner's own `TenantMiner` on the turns' sessions, then one refresh."""
    records = [record_of(t, tenant) for t in turns]
    truth = {(r.user_id, r.time_ms): not t.success for r, t in zip(records, turns, strict=True)}
    miner = TenantMiner(tenant, config)
    tp = fp = fn = 0
    for session in sessionize(records, gap_ms=gap_ms):
        kinds = miner.observe_session(session)
        for r, k in zip(session, kinds, strict=True):
            actual = truth[(r.user_id, r.time_ms)]
            tp += bool(k) and actual
            fp += bool(k) and not actual
            fn += (not k) and actual
    miner.refresh(now_ms=max((r.time_ms for r in records), default=0) + 1)
    detection = {"precision": tp / (tp + fp) if tp + fp else 0.0, "recall": tp / (tp + fn) if tp + fn else 0.0}
    return miner, list(miner.rules.values()), detection


def rule_rewriter(rules: RuleSet) -> Any:
    """A simulator rewriter serving ``rules`` as the Rewrite RPC does (whole utterance first, then spans)."""

    def rewrite(utterance: str, ctx: Any) -> tuple[str, str] | None:
        a = rules.apply(utterance, ctx.user_id)
        return (a.utterance, a.rule_id) if a else None

    return rewrite


def judge(rules: RuleSet, turns: Sequence[SimTurn], nlu: Any) -> tuple[int, int]:
    """(correct, judged): a rule is correct when most of the held-out turns it would rewrite
    (served as heard) get what their user wanted; rules that rewrite none are not judged."""
    touched: dict[str, int] = defaultdict(int)
    right: dict[str, int] = defaultdict(int)
    for t in turns:
        a = None if t.rule_id else rules.apply(t.utterance, t.user_id)
        if a is None:
            continue
        ok = nlu.parse(a.utterance).item == t.target
        for rid in split_ids(a.rule_id):
            touched[rid] += 1
            right[rid] += ok
    return sum(1 for rid, n in touched.items() if right[rid] * 2 > n), len(touched)


def by_kind(rules: Sequence[Any], after: Sequence[SimTurn]) -> dict[str, dict[str, int]]:
    """Rules, wins and losses per kind (a turn rewritten by several span rules counts once)."""
    kind = {r.rule_id: r.kind for r in rules}
    out = {k: {"rules": n, "wins": 0, "losses": 0} for k, n in Counter(kind.values()).items()}
    for t in after:
        if not t.rule_id:
            continue
        k = kind.get(split_ids(t.rule_id)[0])
        if k is None:
            continue
        out[k]["wins"] += t.success and not t.success_without_rewrite
        out[k]["losses"] += not t.success and t.success_without_rewrite
    return out


def roll_back(rules: Sequence[Rule], turns: Sequence[SimTurn], *, tenant: str = "default",
              gap_ms: int = DEFAULT_GAP_MS, config: MiningConfig = OFFLINE,
              monitor: RuleMonitor | None = None) -> list[Rule]:
    """The rules `RuleMonitor` withdraws after watching ``turns`` (simulated with the rules live),
    with outcomes as the miner labels them (not the simulator's truth)."""
    monitor = monitor or RuleMonitor()
    for r in rules:
        monitor.deploy(r.rule_id, source=r.source, target=r.target, success_before=r.source_success,
                       turns_before=r.source_turns)
    for session in sessionize([record_of(t, tenant) for t in turns], gap_ms=gap_ms):
        kinds, _ = label_session(session, config.defects)
        for rec, k in zip(session, kinds, strict=True):
            for rid in split_ids(rec.rule_id):
                monitor.observe(rid, not k)
    gone = {rid for rid, _, _ in monitor.sweep()}
    return [r for r in rules if r.rule_id in gone]


def evaluate(world: Any = None, *, users: int = 400, minutes: float = 240.0,
             train_seeds: Sequence[int] = (1, 2), test_seeds: Sequence[int] = (101,),
             rollback_seeds: Sequence[int] = (), monitor: RuleMonitor | None = None,
             config: MiningConfig = OFFLINE, tenant: str = "default", oracle: bool = True) -> OfflineResult:
    """Mine on ``train_seeds``, test on ``test_seeds`` against the same seeds without rewrites
    (and, with ``oracle``, with every recurring confusion rewritten right)."""
    world = world or World(movielens_catalog())
    train: list[SimTurn] = []
    for i, s in enumerate(train_seeds):
        train += simulate(world, users=users, minutes=minutes, seed=s,
                          start_ms=1_700_000_000_000 + i * 86_400_000)
    _, rules, detection = mine(train, tenant=tenant, config=config)
    withdrawn: list[Rule] = []
    if rollback_seeds:  # deploy, watch, withdraw, then test with what is left
        live: list[SimTurn] = []
        served = RuleSet.from_table(rewrite_table(rules))
        for s in rollback_seeds:
            live += simulate(world, users=users, minutes=minutes, seed=s, rewrite=rule_rewriter(served))
        withdrawn = roll_back(rules, live, tenant=tenant, config=config, monitor=monitor)
        gone = {r.rule_id for r in withdrawn}
        rules = [r for r in rules if r.rule_id not in gone]
    served = RuleSet.from_table(rewrite_table(rules))
    before: list[SimTurn] = []
    after: list[SimTurn] = []
    best: list[SimTurn] = []
    for s in test_seeds:
        before += simulate(world, users=users, minutes=minutes, seed=s)
        after += simulate(world, users=users, minutes=minutes, seed=s, rewrite=rule_rewriter(served))
        if oracle:
            best += simulate(world, users=users, minutes=minutes, seed=s, oracle=True)
    correct, judged = judge(served, before, world.nlu)
    return OfflineResult(rules, summarize(before), summarize(after), correct, judged, detection, withdrawn,
                         summarize(best) if oracle else None, by_kind(rules, after))


def main() -> None:  # python -m _reformulation_offline
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--users", type=int, default=1500)
    p.add_argument("--minutes", type=float, default=480.0)
    p.add_argument("--train-seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--test-seeds", type=int, nargs="+", default=[101])
    p.add_argument("--rollback-seeds", type=int, nargs="*", default=[])
    p.add_argument("--places", action="store_true", help="the places population (phonetic confusions)")
    p.add_argument("--no-spans", action="store_true", help="whole-utterance rules only")
    a = p.parse_args()
    from dataclasses import replace

    from loopwise.tools.simulate.places import PlacesWorld

    config = replace(OFFLINE, spans=replace(OFFLINE.spans, enabled=not a.no_spans))
    r = evaluate(PlacesWorld() if a.places else None, users=a.users, minutes=a.minutes,
                 train_seeds=a.train_seeds, test_seeds=a.test_seeds, rollback_seeds=a.rollback_seeds,
                 config=config)
    print("\n".join(r.lines()))


if __name__ == "__main__":
    main()
