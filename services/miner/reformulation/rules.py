"""Rewrite rules from a solved `Chain`.

A source state qualifies when its turns fail often by themselves (one-step
defect rate ``1 - direct_success >= min_source_defect``). Its candidate targets
are the states reachable from it through rephrase edges in at most
``max_hops`` steps, each edge on the path backed by ``min_support`` distinct
users (so a single user's burst never makes a rule), and no path going on
from a state that mostly works by itself (its rephrases are the few users it
failed: "the godfather" then "the godfather part ii" from users misheard the
other way round). The target with the
highest absorption success probability wins if it reaches
``min_target_success`` and beats the source's one-step success (what the
rewrite replaces: the source turn itself working) by ``min_margin``; that
difference is the rule's confidence. (The source's own absorption success
counts the users who rephrased their way out, so it is close to the target's
exactly when the rephrases work: it is kept as ``source_absorption``, and
``min_source_failure`` can bound its absorption failure.) The rule's key is each frequent surface form of the source
(the normalised utterance the Redis table is keyed by), its rewrite the
target's most frequent successful surface form, and its id a hash of
(tenant, source, target), so the same evidence always yields the same id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from loopwise.spans import SPAN, UTTERANCE, span_key, table_value

from .chain import Chain


@dataclass(frozen=True)
class RuleConfig:
    min_source_defect: float = 0.5
    min_source_failure: float = 0.0  # on the absorption failure probability
    min_target_success: float = 0.6
    min_margin: float = 0.1
    min_support: float = 3.0  # distinct users on every edge of the path
    min_source_turns: int = 5
    max_hops: int = 2
    max_rules: int = 10_000


@dataclass
class Blocklist:
    """Sources (normalised utterances or chain states) and targets never to rewrite from / to."""

    sources: set[str] = field(default_factory=set)
    targets: set[str] = field(default_factory=set)

    def allows(self, source: str, target: str, *, source_state: str = "", rewrite: str = "") -> bool:
        return not ({source, source_state} & self.sources or {target, rewrite} & self.targets)

    def to_dict(self) -> dict[str, list[str]]:
        return {"sources": sorted(self.sources), "targets": sorted(self.targets)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Blocklist:
        return cls(set(data.get("sources", ())), set(data.get("targets", ())))


def rule_id(tenant: str, source: str, target: str) -> str:
    """Deterministic id of the rule ``source -> target`` of ``tenant``."""
    return hashlib.sha1(f"{tenant}\x00{source}\x00{target}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Rule:
    tenant: str
    rule_id: str
    source: str  # normalised utterance: the rewrite table key
    source_state: str
    target: str  # chain state
    rewrite: str
    support: float
    confidence: float  # target_success - source_success
    source_success: float  # one-step success of the source state (also the rollback baseline)
    target_success: float  # absorption success of the target
    source_absorption: float  # absorption success of the source
    source_turns: int
    kind: str = UTTERANCE  # or SPAN: source and rewrite are spans of words (see .spans)

    @property
    def key(self) -> str:
        """The rewrite-table key: the source utterance, or `loopwise.spans.span_key` of the span."""
        return span_key(self.source) if self.kind == SPAN else self.source

    def table_value(self, canary: float = 1.0) -> str:
        """The Redis rewrite-table value (`loopwise.spans`); ``canary``: the share of users served."""
        return table_value(self.rewrite, self.confidence, self.rule_id, self.kind, canary)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def record(self, action: str, *, time_ms: int, event_id: str = "", reason: str = "",
               success_after: float = 0.0, turns_after: int = 0, **canary: Any) -> Any:
        """A `loopwise.v1.learning_pb2.RewriteRuleRecord` for the audit topic (``canary``: its
        canary_share / canary_success / control_success / canary_turns / control_turns)."""
        from loopwise.v1 import learning_pb2

        return learning_pb2.RewriteRuleRecord(
            event_id=event_id or f"{self.rule_id}-{action}-{time_ms}", tenant=self.tenant,
            rule_id=self.rule_id, source=self.source, target=self.target, rewrite=self.rewrite,
            support=int(round(self.support)), confidence=self.confidence,
            source_success=self.source_success, target_success=self.target_success, action=action,
            reason=reason, time_ms=time_ms, success_after=success_after, turns_after=turns_after,
            kind=self.kind, **canary)


def _reachable(src: int, indptr: np.ndarray, dst: np.ndarray, users: np.ndarray, min_support: float,
               max_hops: int, works: np.ndarray | None = None) -> dict[int, float]:
    """States reachable from ``src`` over supported edges -> best path support (min over its edges).
    A path does not go on from a state that ``works`` (mostly succeeds by itself): the users
    who rephrased after it are the few it failed, not this source's."""
    best: dict[int, float] = {}
    frontier = {src: float("inf")}
    for _ in range(max_hops):
        nxt: dict[int, float] = {}
        for node, sup in frontier.items():
            if works is not None and node != src and works[node]:
                continue
            lo, hi = indptr[node], indptr[node + 1]
            ok = users[lo:hi] >= min_support
            for d, u in zip(dst[lo:hi][ok].tolist(), users[lo:hi][ok].tolist(), strict=True):
                s = min(sup, u)
                if d != src and s > best.get(d, 0.0):
                    best[d] = s
                    nxt[d] = s
        frontier = nxt
    return best


def select_rules(chain: Chain, tenant: str, config: RuleConfig = RuleConfig(),
                 blocklist: Blocklist | None = None) -> list[Rule]:
    """Rules for the current (solved) chain; call `Chain.solve` first."""
    blocklist = blocklist or Blocklist()
    n = len(chain.keys)
    if n == 0:
        return []
    live = np.zeros(n, dtype=bool)
    live[list(chain.index.values())] = True
    direct, succ, fail = chain.p_direct[:n], chain.p_success[:n], chain.p_failure[:n]
    cand = live & (1 - direct >= config.min_source_defect) & (fail >= config.min_source_failure) \
        & (chain.turns[:n] >= config.min_source_turns)
    indptr, dst, _, users = chain.successors()
    works = 1 - direct < config.min_source_defect  # would not be a source: it mostly works as it is
    rules: list[Rule] = []
    for s in np.nonzero(cand)[0].tolist():
        reach = _reachable(s, indptr, dst, users, config.min_support, config.max_hops, works)
        if not reach:
            continue
        targets = np.fromiter(reach, dtype=np.int64)
        t = int(targets[np.argmax(succ[targets])])
        margin = float(succ[t] - direct[s])
        if succ[t] < config.min_target_success or margin < config.min_margin:
            continue
        src_key, tgt_key = chain.keys[s], chain.keys[t]
        rewrite = chain.best_form(tgt_key)
        forms = chain.forms[s]
        for form, (w, ws) in forms.items():
            if form == rewrite or (w > 0 and 1 - ws / w < config.min_source_defect):
                continue
            if not blocklist.allows(form, tgt_key, source_state=src_key, rewrite=rewrite):
                continue
            rules.append(Rule(tenant=tenant, rule_id=rule_id(tenant, form, tgt_key), source=form,
                              source_state=src_key, target=tgt_key, rewrite=rewrite, support=reach[t],
                              confidence=margin, source_success=float(direct[s]),
                              target_success=float(succ[t]), source_absorption=float(succ[s]),
                              source_turns=int(chain.turns[s])))
    rules.sort(key=lambda r: (-r.confidence * r.support, r.rule_id))
    return rules[:config.max_rules]


def rewrite_table(rules: Iterable[Rule]) -> dict[str, str]:
    """{table key: table value}; the first rule per key wins."""
    out: dict[str, str] = {}
    for r in rules:
        out.setdefault(r.key, r.table_value())
    return out
