"""One tenant's reformulation miner, Kafka-free: closed sessions in, rewrite-table changes out.

The Faust agent (the lead's) sessionizes Turn events with `SessionState` in a
table keyed by (tenant, user), hands each closed session to
`TenantMiner.observe_session`, and on a timer calls `refresh`, applying the
returned `Changes` to Redis (``HSET``/``HDEL`` of `redis_keys.rewrite_table`
then ``INCR`` of `redis_keys.rewrite_version`) and emitting the records.

Rules are of two kinds (`loopwise.spans`): whole-utterance rules from the
chain (`rules.select_rules`) and span rules from the replacements users make
when they rephrase (`spans.select_span_rules`). A new rule starts as a canary
(`canary.CanaryMonitor`) on ``canary_share`` of the users, the others its
control, and is promoted or withdrawn on their outcomes (with
``canary_share`` 1 it is live for everyone at once). Deployed rules stay
until the canary or rollback withdraws them; a withdrawn rule's source is
blocklisted, so the same evidence does not bring it back.

>>> from loopwise.miner.reformulation.sessions import TurnRecord
>>> m = TenantMiner("t")
>>> for u in range(5):
...     _ = m.observe_session([TurnRecord(u * 10**6, "play heet", status=2, user_id=f"u{u}"),
...                            TurnRecord(u * 10**6 + 4000, "play heat", "play_movie:7", user_id=f"u{u}")])
>>> changes = m.refresh(now_ms=10**7)
>>> sorted(changes.put), [(r.action, r.kind) for r in changes.records]
(['play heet', 'span:heet'], [('canary', 'utterance'), ('canary', 'span')])
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from loopwise.spans import SPAN, UTTERANCE, split_ids

from .canary import CanaryMonitor
from .carriers import CarrierConfig, learn_carriers, select_carrier_rules
from .chain import Chain, ChainConfig
from .defects import DefectConfig, DefectKind, label_session
from .rollback import RuleMonitor
from .rules import Rule, RuleConfig, select_rules
from .sessions import TurnRecord
from .spans import SpanConfig, SpanStats, select_span_rules
from .spans import observe_session as observe_spans


@dataclass(frozen=True)
class MiningConfig:
    defects: DefectConfig = DefectConfig()
    chain: ChainConfig = ChainConfig()
    rules: RuleConfig = RuleConfig()
    alpha: float = 0.05
    min_turns_after: int = 30
    min_gain: float = 0.0  # see RuleMonitor
    # A live rule is replaced by one to another target only with this much more confidence.
    supersede_margin: float = 0.1
    spans: SpanConfig = SpanConfig()
    # A new rule serves this share of users first (1: everyone at once); promoted or withdrawn
    # at this one-sided level once canary and control have this many turns each.
    canary_share: float = 0.5
    canary_alpha: float = 0.05
    canary_min_turns: int = 5
    carriers: CarrierConfig = CarrierConfig()


@dataclass
class Changes:
    put: dict[str, str] = field(default_factory=dict)  # table key (Rule.key) -> table value
    delete: list[str] = field(default_factory=list)  # table keys
    records: list[Any] = field(default_factory=list)  # learning_pb2.RewriteRuleRecord
    promoted_after_ms: list[int] = field(default_factory=list)  # canary to promotion, per promoted rule

    def __bool__(self) -> bool:
        return bool(self.put or self.delete)


class TenantMiner:
    def __init__(self, tenant: str, config: MiningConfig | None = None) -> None:
        self.tenant = tenant
        self.config = config or MiningConfig()
        self.chain = Chain(self.config.chain)
        self.monitor = RuleMonitor(alpha=self.config.alpha, min_turns=self.config.min_turns_after,
                                   min_gain=self.config.min_gain)
        self.rules: dict[str, Rule] = {}  # deployed, by table key
        if self.config.spans.min_support <= 0:  # as many users as a whole-utterance rule needs
            self.config = replace(self.config, spans=replace(self.config.spans,
                                                             min_support=self.config.rules.min_support))
        self.spans = SpanStats(self.config.spans)
        self.canary = CanaryMonitor(share=self.config.canary_share, alpha=self.config.canary_alpha,
                                    min_turns=self.config.canary_min_turns)
        # Outcomes of turns served without a rewrite, by what was heard (normalised):
        # a source's success rate before deployment, whatever state its handled turns
        # went to (a handled turn's chain state is its interpretation, not its text).
        self.heard: dict[str, list[int]] = {}  # text -> [turns, successes]
        self.rephrases: dict[str, int] = {}  # rephrase links by what found them (since start)
        self.max_heard = 200_000
        self._carriers: tuple[int, dict[str, set[str]]] | None = None  # (chain states then, carriers)
        self._carrier_ms: int | None = None  # when the pooled rules were last derived

    def observe_session(self, turns: Sequence[TurnRecord]) -> list[DefectKind]:
        """A closed session (time order): into the chain, and rewritten turns' outcomes to rollback.
        Returns each turn's defect kinds."""
        if not turns:
            return []
        kinds, rephrased = label_session(turns, self.config.defects, self.rephrases)
        self.chain.observe_session(turns, kinds, rephrased)
        heard = self.heard
        if self.config.spans.enabled:
            self.spans.decay(turns[-1].time_ms, self.config.chain.half_life_ms)
            observe_spans(self.spans, turns, kinds, rephrased, heard)
        for turn, kind in zip(turns, kinds, strict=True):
            ok = not kind
            if turn.rule_id:
                for rid in split_ids(turn.rule_id):
                    self.monitor.observe(rid, ok)
                    self.canary.observe_canary(rid, ok)
            elif not turn.rewritten:
                counts = heard.get(turn.text)
                new = counts is None
                if new:
                    counts = heard[turn.text] = [0, 0]
                counts[0] += 1
                counts[1] += ok
                self.spans.observe_heard(turn.text, ok, new)
                self.canary.observe_control(turn.text, turn.user_id, ok)
        if len(heard) > self.max_heard:  # forget the least-heard half
            keep = sorted(heard.items(), key=lambda kv: kv[1][0], reverse=True)[: self.max_heard // 2]
            self.heard = dict(keep)
            self.spans.reindex(self.heard)
        return kinds

    def refresh(self, now_ms: int) -> Changes:
        """Solve what changed, decide canaries, withdraw failing rules, deploy new ones."""
        out = Changes()
        by_id = {r.rule_id: r for r in self.rules.values()}
        for rid, dep, decision in self.monitor.sweep():
            rule = by_id.get(rid)
            if rule is None:
                continue
            del self.rules[rule.key]
            self.canary.stop(rid)
            out.delete.append(rule.key)
            out.records.append(rule.record("withdrawn", time_ms=now_ms, reason=decision.reason,
                                           success_after=dep.success_after, turns_after=dep.turns_after))
        self._decide_canaries(now_ms, out)
        self.chain.solve()
        found = select_rules(self.chain, self.tenant, self.config.rules, self.monitor.blocklist)
        cc = self.config.carriers
        if cc.enabled and (self._carrier_ms is None or not 0 <= now_ms - self._carrier_ms < cc.every_ms):
            self._carrier_ms = now_ms
            n = len(self.chain)
            if self._carriers is None or abs(n - self._carriers[0]) > cc.relearn * self._carriers[0]:
                self._carriers = (n, learn_carriers(self.chain, cc))
            rc = self.config.rules
            found += select_carrier_rules(
                self.chain, self.heard, self.tenant, min_support=rc.min_support,
                min_target_success=rc.min_target_success, min_margin=rc.min_margin,
                min_source_turns=rc.min_source_turns, config=cc, blocklist=self.monitor.blocklist,
                skip={r.key for r in found} | set(self.rules), carriers=self._carriers[1])
        if self.config.spans.enabled:
            found += select_span_rules(self.spans, self.tenant, self.monitor.blocklist, self.heard)
        for rule in found:
            live = self.rules.get(rule.key)
            if live is not None:
                if live.target == rule.target or rule.confidence < live.confidence + self.config.supersede_margin:
                    continue
                # The evidence now points elsewhere (a rule chosen early on thin evidence):
                # replaced, without blocklisting its source (it did no proven harm).
                dep = self.monitor.deployed.pop(live.rule_id, None)
                self.canary.stop(live.rule_id)
                del self.rules[rule.key]
                out.records.append(live.record("withdrawn", time_ms=now_ms, reason="superseded",
                                               success_after=dep.success_after if dep else 0.0,
                                               turns_after=dep.turns_after if dep else 0))
            elif len(self.rules) >= self.config.rules.max_rules:
                continue
            self.rules[rule.key] = rule
            turns_before, successes_before = self.heard.get(rule.source, (0, 0)) if rule.kind != SPAN else (0, 0)
            if turns_before:
                before, n_before = successes_before / turns_before, turns_before
            else:
                before, n_before = rule.source_success, rule.source_turns
            self.monitor.deploy(rule.rule_id, source=rule.source, target=rule.target,
                                success_before=before, turns_before=n_before)
            if self.canary.enabled:
                self.canary.start(rule.rule_id, source=rule.source, kind=rule.kind, time_ms=now_ms,
                                  history=self._history(rule),
                                  evidence=(int(rule.support), int(round(rule.support * rule.target_success))))
                out.put[rule.key] = rule.table_value(self.canary.share)
                out.records.append(rule.record("canary", time_ms=now_ms, canary_share=self.canary.share))
            else:
                out.put[rule.key] = rule.table_value()
                out.records.append(rule.record("created", time_ms=now_ms, canary_share=1.0))
        return out

    def _history(self, rule: Rule) -> tuple[int, int]:
        """(turns, successes) of the rule's source heard before it: its own counts, a span's
        tracked counts, or the evidence's it was selected on when that has more turns and the
        own counts are fewer than the canary needs (a carrier-pooled rule: its source heard
        once or never, its tail's turns in the other carriers pooled; without them the
        control would wait for turns of a text users seldom say)."""
        counts = self.spans.counts.get(rule.source) if rule.kind == SPAN else self.heard.get(rule.source)
        own = (int(counts[0]), int(counts[1])) if counts and counts[0] else (0, 0)
        evidence = (int(rule.source_turns), int(round(rule.source_success * rule.source_turns)))
        if own[0] >= self.canary.min_turns or own[0] >= evidence[0]:
            return own
        return evidence

    def _decide_canaries(self, now_ms: int, out: Changes) -> None:
        """Promote the canaries that beat their control, withdraw those that lose to it."""
        by_id = {r.rule_id: r for r in self.rules.values()}
        for rid in list(self.canary.trials):
            rule = by_id.get(rid)
            if rule is None:  # withdrawn meanwhile (blocklisted by the operator)
                self.canary.stop(rid)
                continue
            verdict = self.canary.decide(rid)
            if verdict.action == "wait":
                continue
            trial = self.canary.stop(rid)
            figures = trial.figures(self.canary.share)
            if verdict.action == "promote":
                out.put[rule.key] = rule.table_value()
                out.records.append(rule.record("promoted", time_ms=now_ms, reason=verdict.reason,
                                               **{**figures, "canary_share": 1.0}))
                out.promoted_after_ms.append(now_ms - trial.started_ms)
                dep = self.monitor.deployed.get(rid)
                if dep is not None:  # rollback from now on judges against the control
                    dep.success_before, dep.turns_before = trial.control_success, trial.control_turns
                continue
            del self.rules[rule.key]
            self.monitor.deployed.pop(rid, None)
            if self.monitor.block_on_withdraw:
                self.monitor.blocklist.sources.add(rule.source)
            out.delete.append(rule.key)
            out.records.append(rule.record("withdrawn", time_ms=now_ms, reason=verdict.reason,
                                           success_after=trial.canary_success, turns_after=trial.canary_turns,
                                           **figures))

    def rule_counts(self) -> dict[tuple[str, str], int]:
        """Live rules by (kind, stage): every kind and stage, 0 included."""
        out = {(kind, stage): 0 for kind in (UTTERANCE, SPAN) for stage in ("canary", "live")}
        for r in self.rules.values():
            out[(r.kind, "canary" if r.rule_id in self.canary.trials else "live")] += 1
        return out

    def table(self) -> dict[str, str]:
        """The whole rewrite table this miner wants (to re-sync Redis)."""
        return {key: r.table_value(self.canary.share if r.rule_id in self.canary.trials else 1.0)
                for key, r in self.rules.items()}

    def to_bytes(self) -> bytes:
        data = {"tenant": self.tenant, "chain": self.chain.to_dict(), "monitor": self.monitor.to_dict(),
                "rules": [r.to_dict() for r in self.rules.values()], "heard": self.heard,
                "spans": self.spans.to_dict(), "canary": self.canary.to_dict()}
        return zlib.compress(json.dumps(data, separators=(",", ":")).encode(), 3)

    @classmethod
    def from_bytes(cls, raw: bytes, config: MiningConfig | None = None) -> TenantMiner:
        data = json.loads(zlib.decompress(raw))
        m = cls(data["tenant"], config)
        m.chain = Chain.from_dict(data["chain"])
        m.monitor = RuleMonitor.from_dict(data["monitor"])
        m.rules = {rule.key: rule for rule in (Rule(**r) for r in data["rules"])}
        m.heard = {k: list(v) for k, v in data.get("heard", {}).items()}
        if "spans" in data:
            m.spans = SpanStats.from_dict(data["spans"], m.config.spans)
        m.spans.reindex(m.heard)
        if "canary" in data:  # the trials; share, level and sample size from the configuration
            m.canary.trials = CanaryMonitor.from_dict(data["canary"]).trials
        return m
