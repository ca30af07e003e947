"""Rewrite rules as served: whole-utterance and span rules, their table keys, canary shares.

The contract between the miner, which writes a tenant's Redis rewrite table
(`loopwise.redis_keys.rewrite_table`), and inference, which serves it:

* a whole-utterance rule is keyed by the normalised utterance
  (`loopwise.text.normalize`);
* a span rule by ``span:`` + the normalised span of words (a normalised
  utterance never contains ``:``, so the two kinds never collide);
* the value is JSON: ``rewrite``, ``confidence``, ``rule_id``, ``kind``
  (``utterance`` or ``span``) and, for a canary, ``canary``: the share of
  users it serves (`bucket` below the share; absent or 1: everyone).

`RuleSet.apply` serves an utterance: its whole-utterance rule when there is
one (it wins; a user outside its canary gets the utterance as heard), else
every span rule whose span occurs in it, longest span first from the left,
spans never overlapping. The answer names the spans it
changed (`Change`), with character offsets in the rewritten utterance.

>>> rules = RuleSet.from_table({"span:soul": '{"rewrite": "seoul", "confidence": 0.8, "rule_id": "s1"}'})
>>> a = rules.apply("What time is it in Soul?")
>>> a.utterance, a.kind, a.changes[0].original, a.utterance[a.changes[0].start:a.changes[0].end]
('what time is it in seoul', 'span', 'soul', 'seoul')
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from difflib import SequenceMatcher

from loopwise.text import normalize

UTTERANCE, SPAN = "utterance", "span"
SPAN_PREFIX = "span:"


def span_key(span: str) -> str:
    """The table key of a span rule for ``span`` (normalised)."""
    return SPAN_PREFIX + normalize(span)


def bucket(rule_id: str, user_id: str) -> float:
    """A user's place in [0, 1) for a rule: a canary serves the users below its share."""
    h = hashlib.blake2b(f"{rule_id}\x00{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0**64


def split_ids(rule_id: str) -> list[str]:
    """The rule ids a Turn's ``rewrite_rule_id`` names (several span rules: joined by ",")."""
    return [r for r in rule_id.split(",") if r]


@dataclass(frozen=True)
class ServedRule:
    rewrite: str
    confidence: float
    rule_id: str
    kind: str = UTTERANCE
    canary: float = 1.0  # the share of users served

    def serves(self, user_id: str) -> bool:
        return self.canary >= 1.0 or bucket(self.rule_id, user_id) < self.canary


def parse_value(raw: bytes | str) -> ServedRule | None:
    """A table value -> `ServedRule`, or None for a malformed one."""
    try:
        data = json.loads(raw)
        rule = ServedRule(rewrite=normalize(str(data["rewrite"])), confidence=float(data.get("confidence", 0.0)),
                          rule_id=str(data["rule_id"]), kind=str(data.get("kind", UTTERANCE)),
                          canary=float(data.get("canary", 1.0)))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return rule if rule.rewrite else None


@dataclass(frozen=True)
class Change:
    start: int  # characters [start, end) of the rewritten utterance
    end: int
    original: str  # the words they replaced
    rule_id: str


@dataclass(frozen=True)
class Applied:
    utterance: str
    confidence: float
    rule_id: str  # several span rules: joined by ","
    kind: str
    changes: tuple[Change, ...]


def diff_changes(source: str, rewrite: str, rule_id: str) -> tuple[Change, ...]:
    """The word spans ``rewrite`` changed against ``source`` (both normalised), by alignment."""
    a, b = source.split(), rewrite.split()
    starts, pos = [], 0
    for w in b:
        starts.append(pos)
        pos += len(w) + 1
    out = []
    for tag, i1, i2, j1, j2 in SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        start = starts[j1] if j1 < len(b) else pos - 1 if b else 0
        end = starts[j2 - 1] + len(b[j2 - 1]) if j2 > j1 else start
        out.append(Change(start, end, " ".join(a[i1:i2]), rule_id))
    return tuple(out)


class RuleSet:
    """One tenant's rules, ready to serve: exact utterances, and spans by their words."""

    def __init__(self, rules: Mapping[str, ServedRule]) -> None:
        self.rules = dict(rules)
        self.exact: dict[str, ServedRule] = {}
        self.spans: dict[tuple[str, ...], ServedRule] = {}
        for key, rule in self.rules.items():
            if key.startswith(SPAN_PREFIX):
                words = tuple(key[len(SPAN_PREFIX):].split())
                if words:
                    self.spans[words] = rule
            else:
                self.exact[key] = rule
        self.longest = max(map(len, self.spans), default=0)
        self._changes: dict[str, tuple[Change, ...]] = {}  # of the whole-utterance rules, when first served

    @classmethod
    def from_table(cls, table: Mapping[bytes | str, bytes | str]) -> RuleSet:
        rules = {}
        for k, v in table.items():
            rule = parse_value(v)
            if rule is not None:
                rules[k.decode() if isinstance(k, bytes) else str(k)] = rule
        return cls(rules)

    def __len__(self) -> int:
        return len(self.rules)

    def apply(self, utterance: str, user_id: str = "") -> Applied | None:
        """The rewrite of ``utterance`` for ``user_id``, or None when no rule applies."""
        text = normalize(utterance)
        rule = self.exact.get(text)
        if rule is not None:  # it wins over span rules, also for the users outside its canary
            if not rule.serves(user_id):
                return None
            changes = self._changes.get(text)
            if changes is None:
                changes = self._changes[text] = diff_changes(text, rule.rewrite, rule.rule_id)
            return Applied(rule.rewrite, rule.confidence, rule.rule_id, UTTERANCE, changes)
        if not self.spans:
            return None
        words = text.split()
        out: list[str] = []
        changes: list[Change] = []
        used: list[ServedRule] = []
        pos = i = 0
        while i < len(words):
            for n in range(min(self.longest, len(words) - i), 0, -1):
                rule = self.spans.get(tuple(words[i:i + n]))
                if rule is not None and rule.serves(user_id):
                    start = pos + (1 if out else 0)
                    changes.append(Change(start, start + len(rule.rewrite), " ".join(words[i:i + n]),
                                          rule.rule_id))
                    used.append(rule)
                    out.append(rule.rewrite)
                    i += n
                    break
            else:
                out.append(words[i])
                i += 1
            pos += len(out[-1]) + (1 if len(out) > 1 else 0)
        if not used:
            return None
        return Applied(" ".join(out), min(r.confidence for r in used),
                       ",".join(dict.fromkeys(r.rule_id for r in used)), SPAN, tuple(changes))


def table_value(rewrite: str, confidence: float, rule_id: str, kind: str = UTTERANCE,
                canary: float = 1.0) -> str:
    """The JSON value of a rule in the rewrite table."""
    value = {"rewrite": rewrite, "confidence": round(confidence, 4), "rule_id": rule_id, "kind": kind}
    if canary < 1.0:
        value["canary"] = round(canary, 4)
    return json.dumps(value)
