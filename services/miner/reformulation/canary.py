"""Canary rules: a new rule serves a share of users first, the rest are its control.

Inference serves a canary rule to the users whose `loopwise.spans.bucket`
(a hash of rule and user) is below its ``share``. `CanaryMonitor` counts the
outcomes of both arms: the canary's turns are those that carried the rule
id; the control's are the turns served as heard whose words the rule would
have rewritten (the source utterance, or one containing the source span)
from users outside the share, after the source's outcomes as heard before
the rule started (``history``: what every user got then, so a rule on a
rarely said source is judged on its first canary turns instead of waiting
for as many control turns). `decide` runs a two-proportion z-test on
them once each arm has ``min_turns``: the canary is **promoted** (served to
everyone) when its success rate beats the control's with a one-sided p-value
below ``alpha``, **withdrawn** when it loses at that level, and left running
otherwise. Until the canary has its turns, the rule's own evidence stands in
for it (``evidence``: the distinct users who, having said the source, got
the target by rephrasing, and how many of them succeeded; the rule had
``min_support`` of them): once the control has ``min_turns``, a rule whose
evidence already beats it at that level is promoted at once (strong
evidence; rollback still watches it), never withdrawn on it.

>>> m = CanaryMonitor(share=0.5, min_turns=20)
>>> m.start("r1", source="play heet", kind="utterance", time_ms=0)
>>> for _ in range(30): _ = m.observe_canary("r1", True)
>>> m.trials["r1"].control_turns, m.trials["r1"].control_successes = 30, 3
>>> m.decide("r1").action
'promote'
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from loopwise.spans import SPAN, bucket


@dataclass
class Trial:
    source: str  # the normalised utterance, or the span (kind SPAN)
    kind: str
    started_ms: int
    canary_turns: int = 0
    canary_successes: int = 0
    control_turns: int = 0
    control_successes: int = 0
    evidence_turns: int = 0  # the rule's mined evidence (see the module docstring)
    evidence_successes: int = 0

    @property
    def canary_success(self) -> float:
        return self.canary_successes / self.canary_turns if self.canary_turns else 0.0

    @property
    def control_success(self) -> float:
        return self.control_successes / self.control_turns if self.control_turns else 0.0

    def figures(self, share: float) -> dict[str, Any]:
        """The canary fields of a `RewriteRuleRecord`."""
        return {"canary_share": share, "canary_success": self.canary_success,
                "control_success": self.control_success, "canary_turns": self.canary_turns,
                "control_turns": self.control_turns}


@dataclass(frozen=True)
class Verdict:
    action: str  # "promote", "withdraw" or "wait"
    reason: str
    z: float = 0.0


def two_proportion_z(s1: int, n1: int, s2: int, n2: int) -> float:
    """z of p1 - p2 (pooled variance); 0 when either sample is empty or both are all one outcome."""
    if not n1 or not n2:
        return 0.0
    pooled = (s1 + s2) / (n1 + n2)
    var = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    return 0.0 if var <= 0 else (s1 / n1 - s2 / n2) / math.sqrt(var)


@dataclass
class CanaryMonitor:
    share: float = 0.5
    alpha: float = 0.05
    min_turns: int = 20
    trials: dict[str, Trial] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._index: tuple[dict[str, list[str]], dict[tuple[str, ...], list[str]], int] | None = None

    @property
    def enabled(self) -> bool:
        return self.share < 1.0

    def start(self, rule_id: str, *, source: str, kind: str, time_ms: int,
              history: tuple[int, int] = (0, 0), evidence: tuple[int, int] = (0, 0)) -> None:
        """A new trial; ``history``: (turns, successes) of the source heard before, the control's
        start; ``evidence``: (users, successes) behind the rule."""
        if rule_id not in self.trials:
            self.trials[rule_id] = Trial(source, kind, time_ms, control_turns=int(history[0]),
                                         control_successes=int(history[1]), evidence_turns=int(evidence[0]),
                                         evidence_successes=int(evidence[1]))
            self._index = None

    def stop(self, rule_id: str) -> Trial | None:
        self._index = None
        return self.trials.pop(rule_id, None)

    def observe_canary(self, rule_id: str, success: bool) -> bool:
        """A turn that carried the rule; False when it is not a running canary."""
        trial = self.trials.get(rule_id)
        if trial is None:
            return False
        trial.canary_turns += 1
        trial.canary_successes += bool(success)
        return True

    def observe_control(self, text: str, user_id: str, success: bool) -> None:
        """A turn served as heard (normalised ``text``): control of each running canary that
        would have rewritten it, when the user is outside that canary's share."""
        if not self.trials:
            return
        exact, spans, longest = self._lookup()
        ids = list(exact.get(text, ()))
        words = text.split()
        for i in range(len(words)):
            for j in range(i + 1, min(len(words), i + longest) + 1):
                ids += spans.get(tuple(words[i:j]), ())
        for rid in dict.fromkeys(ids):
            if bucket(rid, user_id) >= self.share:
                trial = self.trials[rid]
                trial.control_turns += 1
                trial.control_successes += bool(success)

    def _lookup(self) -> tuple[dict[str, list[str]], dict[tuple[str, ...], list[str]], int]:
        if self._index is None:
            exact: dict[str, list[str]] = {}
            spans: dict[tuple[str, ...], list[str]] = {}
            for rid, t in self.trials.items():
                if t.kind == SPAN:
                    spans.setdefault(tuple(t.source.split()), []).append(rid)
                else:
                    exact.setdefault(t.source, []).append(rid)
            self._index = (exact, spans, max(map(len, spans), default=0))
        return self._index

    def decide(self, rule_id: str) -> Verdict:
        t = self.trials[rule_id]
        if t.canary_turns < self.min_turns and t.evidence_turns and self.min_turns <= t.control_turns:
            z = two_proportion_z(t.evidence_successes, t.evidence_turns, t.control_successes, t.control_turns)
            p = 0.5 * math.erfc(z / math.sqrt(2))
            if z > 0 and p < self.alpha:
                return Verdict("promote", f"evidence strong: {t.evidence_successes} of {t.evidence_turns} users "
                                          f"got the target, control {t.control_success:.3f} of "
                                          f"{t.control_turns}; z={z:.2f}, p={p:.3g}", z)
        if t.canary_turns < self.min_turns or t.control_turns < self.min_turns:
            return Verdict("wait", f"{t.canary_turns} canary / {t.control_turns} control turns "
                                   f"< {self.min_turns}")
        z = two_proportion_z(t.canary_successes, t.canary_turns, t.control_successes, t.control_turns)
        p_better = 0.5 * math.erfc(z / math.sqrt(2))  # one-sided: canary > control
        p_worse = 0.5 * math.erfc(-z / math.sqrt(2))
        figures = (f"canary {t.canary_success:.3f} of {t.canary_turns}, control {t.control_success:.3f} "
                   f"of {t.control_turns}; z={z:.2f}")
        if z > 0 and p_better < self.alpha:
            return Verdict("promote", f"canary won: {figures}, p={p_better:.3g}", z)
        if z < 0 and p_worse < self.alpha:
            return Verdict("withdraw", f"canary lost: {figures}, p={p_worse:.3g}", z)
        return Verdict("wait", f"no difference yet: {figures}", z)

    def to_dict(self) -> dict[str, Any]:
        return {"share": self.share, "alpha": self.alpha, "min_turns": self.min_turns,
                "trials": {k: asdict(v) for k, v in self.trials.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CanaryMonitor:
        return cls(share=data["share"], alpha=data["alpha"], min_turns=data["min_turns"],
                   trials={k: Trial(**v) for k, v in data["trials"].items()})
