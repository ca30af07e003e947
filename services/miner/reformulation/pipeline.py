"""One tenant's reformulation miner, Kafka-free: closed sessions in, rewrite-table changes out.

The Faust agent (the lead's) sessionizes Turn events with `SessionState` in a
table keyed by (tenant, user), hands each closed session to
`TenantMiner.observe_session`, and on a timer calls `refresh`, applying the
returned `Changes` to Redis (``HSET``/``HDEL`` of `redis_keys.rewrite_table`
then ``INCR`` of `redis_keys.rewrite_version`) and emitting the records.

Deployed rules stay until rollback withdraws them; a withdrawn rule's source
is blocklisted, so the same evidence does not bring it back.

>>> from loopwise.miner.reformulation.sessions import TurnRecord
>>> m = TenantMiner("t")
>>> for u in range(5):
...     _ = m.observe_session([TurnRecord(u * 10**6, "play heet", status=2, user_id=f"u{u}"),
...                            TurnRecord(u * 10**6 + 4000, "play heat", "play_movie:7", user_id=f"u{u}")])
>>> sorted(m.refresh(now_ms=10**7).put)
['play heet']
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .chain import Chain, ChainConfig
from .defects import DefectConfig, DefectKind, label_session
from .rollback import RuleMonitor
from .rules import Rule, RuleConfig, select_rules
from .sessions import TurnRecord


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


@dataclass
class Changes:
    put: dict[str, str] = field(default_factory=dict)  # source -> table value
    delete: list[str] = field(default_factory=list)  # sources
    records: list[Any] = field(default_factory=list)  # learning_pb2.RewriteRuleRecord

    def __bool__(self) -> bool:
        return bool(self.put or self.delete)


class TenantMiner:
    def __init__(self, tenant: str, config: MiningConfig | None = None) -> None:
        self.tenant = tenant
        self.config = config or MiningConfig()
        self.chain = Chain(self.config.chain)
        self.monitor = RuleMonitor(alpha=self.config.alpha, min_turns=self.config.min_turns_after,
                                   min_gain=self.config.min_gain)
        self.rules: dict[str, Rule] = {}  # deployed, by source
        # Outcomes of turns served without a rewrite, by what was heard (normalised):
        # a source's success rate before deployment, whatever state its handled turns
        # went to (a handled turn's chain state is its interpretation, not its text).
        self.heard: dict[str, list[int]] = {}  # text -> [turns, successes]
        self.max_heard = 200_000

    def observe_session(self, turns: Sequence[TurnRecord]) -> list[DefectKind]:
        """A closed session (time order): into the chain, and rewritten turns' outcomes to rollback.
        Returns each turn's defect kinds."""
        if not turns:
            return []
        kinds, rephrased = label_session(turns, self.config.defects)
        self.chain.observe_session(turns, kinds, rephrased)
        heard = self.heard
        for turn, kind in zip(turns, kinds, strict=True):
            if turn.rule_id:
                self.monitor.observe(turn.rule_id, not kind)
            elif not turn.rewritten:
                counts = heard.get(turn.text)
                if counts is None:
                    counts = heard[turn.text] = [0, 0]
                counts[0] += 1
                counts[1] += 0 if kind else 1
        if len(heard) > self.max_heard:  # forget the least-heard half
            keep = sorted(heard.items(), key=lambda kv: kv[1][0], reverse=True)[: self.max_heard // 2]
            self.heard = dict(keep)
        return kinds

    def refresh(self, now_ms: int) -> Changes:
        """Solve what changed, withdraw failing rules, deploy new ones."""
        out = Changes()
        by_id = {r.rule_id: r for r in self.rules.values()}
        for rid, dep, decision in self.monitor.sweep():
            rule = by_id.get(rid)
            if rule is None:
                continue
            del self.rules[rule.source]
            out.delete.append(rule.source)
            out.records.append(rule.record("withdrawn", time_ms=now_ms, reason=decision.reason,
                                           success_after=dep.success_after, turns_after=dep.turns_after))
        self.chain.solve()
        for rule in select_rules(self.chain, self.tenant, self.config.rules, self.monitor.blocklist):
            live = self.rules.get(rule.source)
            if live is not None:
                if live.target == rule.target or rule.confidence < live.confidence + self.config.supersede_margin:
                    continue
                # The evidence now points elsewhere (a rule chosen early on thin evidence):
                # replaced, without blocklisting its source (it did no proven harm).
                dep = self.monitor.deployed.pop(live.rule_id, None)
                del self.rules[rule.source]
                out.records.append(live.record("withdrawn", time_ms=now_ms, reason="superseded",
                                               success_after=dep.success_after if dep else 0.0,
                                               turns_after=dep.turns_after if dep else 0))
            elif len(self.rules) >= self.config.rules.max_rules:
                continue
            self.rules[rule.source] = rule
            turns_before, successes_before = self.heard.get(rule.source, (0, 0))
            if turns_before:
                before, n_before = successes_before / turns_before, turns_before
            else:
                before, n_before = rule.source_success, rule.source_turns
            self.monitor.deploy(rule.rule_id, source=rule.source, target=rule.target,
                                success_before=before, turns_before=n_before)
            out.put[rule.source] = rule.table_value()
            out.records.append(rule.record("created", time_ms=now_ms))
        return out

    def table(self) -> dict[str, str]:
        """The whole rewrite table this miner wants (to re-sync Redis)."""
        return {s: r.table_value() for s, r in self.rules.items()}

    def to_bytes(self) -> bytes:
        data = {"tenant": self.tenant, "chain": self.chain.to_dict(), "monitor": self.monitor.to_dict(),
                "rules": [r.to_dict() for r in self.rules.values()], "heard": self.heard}
        return zlib.compress(json.dumps(data, separators=(",", ":")).encode(), 3)

    @classmethod
    def from_bytes(cls, raw: bytes, config: MiningConfig | None = None) -> TenantMiner:
        data = json.loads(zlib.decompress(raw))
        m = cls(data["tenant"], config)
        m.chain = Chain.from_dict(data["chain"])
        m.monitor = RuleMonitor.from_dict(data["monitor"])
        m.rules = {r["source"]: Rule(**r) for r in data["rules"]}
        m.heard = {k: list(v) for k, v in data.get("heard", {}).items()}
        return m
