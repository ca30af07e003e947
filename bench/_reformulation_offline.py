"""Offline end-to-end check of reformulation mining on the assistant simulator (no Kafka).

Mine: simulated turns without rewrites -> `sessionize` -> `label_session` ->
`Chain` -> `select_rules`. Evaluate: rerun the simulator on held-out seeds
with those rules as the rewrite table, against the same seeds without them.
Figures come from the simulator's ground truth: defect rate per turn (the
wanted movie did not play, or was interrupted), failed requests, win/loss
(rewritten turns fixed / broken, against what the NLU would have done with the
heard utterance), and rule precision (the rewrite plays the movie most
users who said the source wanted, on the held-out turns).

>>> r = evaluate(users=150, minutes=60, train_seeds=(1,), test_seeds=(2,))  # doctest: +SKIP
>>> r.after.defect_rate < r.before.defect_rate  # doctest: +SKIP
True
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from loopwise.miner.reformulation.chain import Chain, ChainConfig
from loopwise.miner.reformulation.defects import DefectConfig, label_session
from loopwise.miner.reformulation.rollback import RuleMonitor
from loopwise.miner.reformulation.rules import Rule, RuleConfig, select_rules
from loopwise.miner.reformulation.sessions import (
    DEFAULT_GAP_MS,
    TurnRecord,
    interpretation_key,
    sessionize,
)
from loopwise.text import normalize
from loopwise.tools.simulate.assistant import (
    DOMAIN,
    INTENT,
    Nlu,
    SimTurn,
    Summary,
    World,
    movielens_catalog,
    simulate,
    summarize,
    table_rewriter,
)


@dataclass
class OfflineResult:
    rules: list[Rule]
    before: Summary
    after: Summary
    correct_rules: int
    judged_rules: int
    detection: dict[str, float] = field(default_factory=dict)
    withdrawn: list[Rule] = field(default_factory=list)

    @property
    def precision(self) -> float:
        return self.correct_rules / self.judged_rules if self.judged_rules else 0.0

    @property
    def relative_reduction(self) -> float:
        b = self.before.defect_rate
        return (b - self.after.defect_rate) / b if b else 0.0

    def lines(self) -> list[str]:
        b, a = self.before, self.after
        return [
            f"rules {len(self.rules)}, precision {self.precision:.3f} ({self.correct_rules}/{self.judged_rules})",
            f"defect rate per turn {b.defect_rate:.4f} -> {a.defect_rate:.4f} "
            f"(-{100 * self.relative_reduction:.1f}%), turns {b.turns} -> {a.turns}",
            f"failed requests {b.request_failure_rate:.4f} -> {a.request_failure_rate:.4f}",
            f"rewritten turns {a.rewritten}, wins {a.wins}, losses {a.losses}, win/loss {a.win_loss:.2f}",
            "defect detection vs truth: " + ", ".join(f"{k} {v:.3f}" for k, v in self.detection.items()),
            f"withdrawn by rollback before the test: {len(self.withdrawn)}",
        ]


def record_of(turn: SimTurn, tenant: str = "default") -> TurnRecord:
    """A simulated turn as the miner sees it (what `TurnRecord.from_event` makes of its event)."""
    interp = interpretation_key(INTENT, {"item": turn.item}, DOMAIN) if turn.item else ""
    return TurnRecord(time_ms=turn.time_ms, utterance=turn.utterance, interpretation=interp,
                      status=turn.status, barge_in=turn.barge_in, explicit_reject=turn.explicit_reject,
                      rewritten=turn.rewritten, rule_id=turn.rule_id, user_id=turn.user_id, tenant=tenant,
                      session_id=turn.session_id)


def mine(turns: Sequence[SimTurn], *, tenant: str = "default", gap_ms: int = DEFAULT_GAP_MS,
         defect_config: DefectConfig | None = None, chain_config: ChainConfig | None = None,
         rule_config: RuleConfig | None = None) -> tuple[Chain, list[Rule], dict[str, float]]:
    """(chain, rules, defect-detection precision/recall against the simulator's truth)."""
    defect_config = defect_config or DefectConfig()
    records = [record_of(t, tenant) for t in turns]
    truth = {(r.user_id, r.time_ms): not t.success for r, t in zip(records, turns, strict=True)}
    chain = Chain(chain_config or ChainConfig())
    tp = fp = fn = 0
    for session in sessionize(records, gap_ms=gap_ms):
        kinds, rephrased = label_session(session, defect_config)
        for r, k in zip(session, kinds, strict=True):
            actual = truth[(r.user_id, r.time_ms)]
            tp += bool(k) and actual
            fp += bool(k) and not actual
            fn += (not k) and actual
        chain.observe_session(session, kinds, rephrased)
    chain.solve()
    detection = {"precision": tp / (tp + fp) if tp + fp else 0.0, "recall": tp / (tp + fn) if tp + fn else 0.0}
    return chain, select_rules(chain, tenant, rule_config or RuleConfig()), detection


def judge(rules: Sequence[Rule], turns: Sequence[SimTurn], nlu: Nlu) -> tuple[int, int]:
    """(correct, judged): a rule is correct when its rewrite plays the movie most users who
    said its source (as heard) wanted; rules whose source never occurs in ``turns`` are not judged."""
    wanted: dict[str, Counter] = defaultdict(Counter)
    for t in turns:
        if not t.rule_id:
            wanted[normalize(t.utterance)].update([t.target])
    correct = judged = 0
    for r in rules:
        c = wanted.get(r.source)
        if not c:
            continue
        judged += 1
        correct += nlu.parse(r.rewrite).item == c.most_common(1)[0][0]
    return correct, judged


def roll_back(rules: Sequence[Rule], turns: Sequence[SimTurn], *, tenant: str = "default",
              gap_ms: int = DEFAULT_GAP_MS, defect_config: DefectConfig | None = None,
              monitor: RuleMonitor | None = None) -> list[Rule]:
    """The rules `RuleMonitor` withdraws after watching ``turns`` (simulated with the rules live),
    with outcomes as the miner labels them (not the simulator's truth)."""
    monitor = monitor or RuleMonitor()
    for r in rules:
        monitor.deploy(r.rule_id, source=r.source, target=r.target, success_before=r.source_success,
                       turns_before=r.source_turns)
    for session in sessionize([record_of(t, tenant) for t in turns], gap_ms=gap_ms):
        kinds, _ = label_session(session, defect_config or DefectConfig())
        for rec, k in zip(session, kinds, strict=True):
            if rec.rule_id:
                monitor.observe(rec.rule_id, not k)
    gone = {rid for rid, _, _ in monitor.sweep()}
    return [r for r in rules if r.rule_id in gone]


def evaluate(world: World | None = None, *, users: int = 400, minutes: float = 240.0,
             train_seeds: Sequence[int] = (1, 2), test_seeds: Sequence[int] = (101,),
             rollback_seeds: Sequence[int] = (), monitor: RuleMonitor | None = None,
             defect_config: DefectConfig | None = None, chain_config: ChainConfig | None = None,
             rule_config: RuleConfig | None = None, tenant: str = "default") -> OfflineResult:
    world = world or World(movielens_catalog())
    train: list[SimTurn] = []
    for i, s in enumerate(train_seeds):
        train += simulate(world, users=users, minutes=minutes, seed=s,
                          start_ms=1_700_000_000_000 + i * 86_400_000)
    _, rules, detection = mine(train, tenant=tenant, defect_config=defect_config, chain_config=chain_config,
                               rule_config=rule_config)
    table = {r.source: (r.rewrite, r.rule_id) for r in rules}
    withdrawn: list[Rule] = []
    if rollback_seeds:  # deploy, watch, withdraw, then test with what is left
        live: list[SimTurn] = []
        for s in rollback_seeds:
            live += simulate(world, users=users, minutes=minutes, seed=s, rewrite=table_rewriter(table))
        withdrawn = roll_back(rules, live, tenant=tenant, defect_config=defect_config, monitor=monitor)
        gone = {r.rule_id for r in withdrawn}
        rules = [r for r in rules if r.rule_id not in gone]
        table = {r.source: (r.rewrite, r.rule_id) for r in rules}
    before: list[SimTurn] = []
    after: list[SimTurn] = []
    for s in test_seeds:
        before += simulate(world, users=users, minutes=minutes, seed=s)
        after += simulate(world, users=users, minutes=minutes, seed=s, rewrite=table_rewriter(table))
    correct, judged = judge(rules, before, world.nlu)
    return OfflineResult(rules, summarize(before), summarize(after), correct, judged, detection, withdrawn)


def main() -> None:  # python -m _reformulation_offline
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--users", type=int, default=1500)
    p.add_argument("--minutes", type=float, default=480.0)
    p.add_argument("--train-seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--test-seeds", type=int, nargs="+", default=[101])
    p.add_argument("--rollback-seeds", type=int, nargs="*", default=[])
    p.add_argument("--no-phonetic", action="store_true")
    a = p.parse_args()
    r = evaluate(users=a.users, minutes=a.minutes, train_seeds=a.train_seeds, test_seeds=a.test_seeds,
                 rollback_seeds=a.rollback_seeds,
                 defect_config=DefectConfig(use_phonetic=not a.no_phonetic))
    print("\n".join(r.lines()))


if __name__ == "__main__":
    main()
