"""Rollback: withdraw a deployed rule whose rewritten turns succeed less often than the
source did before deployment.

`RuleMonitor` counts, per deployed rule id, the turns carrying it and how many
succeeded (no defect). `decide` runs a one-sided two-proportion z-test of
H1: p_after < p_before, with p_before the source's one-step success rate and
its turn count at deployment; the rule is withdrawn when the p-value is below
``alpha`` and at least ``min_turns`` rewritten turns were seen. With
``min_gain`` > 0 the bar is ``p_before + min_gain`` (capped at 1): a rule must
also deliver, not only do no harm (a source that always failed cannot get
worse, so with ``min_gain`` 0 its rule is never withdrawn). Withdrawn
rules' sources go on the blocklist (when ``block_on_withdraw``), so the
miner does not recreate them.

>>> m = RuleMonitor(min_turns=20)
>>> m.deploy("r1", source="play heet", target="play_movie:7", success_before=0.6, turns_before=200)
>>> _ = [m.observe("r1", False) for _ in range(30)]
>>> m.decide("r1").withdraw
True
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from .rules import Blocklist


@dataclass
class Deployment:
    source: str
    target: str
    success_before: float
    turns_before: int
    turns_after: int = 0
    successes_after: int = 0

    @property
    def success_after(self) -> float:
        return self.successes_after / self.turns_after if self.turns_after else 0.0


@dataclass(frozen=True)
class Decision:
    withdraw: bool
    reason: str
    z: float = 0.0
    p_value: float = 1.0


def one_sided_p(successes_after: int, turns_after: int, p_before: float, turns_before: int) -> tuple[float, float]:
    """(z, p-value) of the two-proportion z-test with H1: p_after < p_before."""
    if turns_after == 0 or turns_before == 0:
        return 0.0, 1.0
    p_after = successes_after / turns_after
    pooled = (successes_after + p_before * turns_before) / (turns_after + turns_before)
    var = pooled * (1 - pooled) * (1 / turns_after + 1 / turns_before)
    if var <= 0:
        return (0.0, 1.0) if p_after >= p_before else (-math.inf, 0.0)
    z = (p_after - p_before) / math.sqrt(var)
    return z, 0.5 * math.erfc(-z / math.sqrt(2))


@dataclass
class RuleMonitor:
    alpha: float = 0.05
    min_turns: int = 30
    block_on_withdraw: bool = True
    min_gain: float = 0.0
    deployed: dict[str, Deployment] = field(default_factory=dict)
    blocklist: Blocklist = field(default_factory=Blocklist)

    def deploy(self, rule_id: str, *, source: str, target: str, success_before: float, turns_before: int) -> None:
        if rule_id not in self.deployed:
            self.deployed[rule_id] = Deployment(source, target, success_before, turns_before)

    def observe(self, rule_id: str, success: bool) -> bool:
        """Count one outcome of a turn that carried ``rule_id``; False for an unknown rule."""
        dep = self.deployed.get(rule_id)
        if dep is None:
            return False
        dep.turns_after += 1
        dep.successes_after += bool(success)
        return True

    def decide(self, rule_id: str) -> Decision:
        dep = self.deployed[rule_id]
        if dep.turns_after < self.min_turns:
            return Decision(False, f"{dep.turns_after} < {self.min_turns} turns")
        bar = min(1.0, dep.success_before + self.min_gain)
        z, p = one_sided_p(dep.successes_after, dep.turns_after, bar, dep.turns_before)
        if p < self.alpha:
            return Decision(True, f"success {dep.success_after:.3f} after < {bar:.3f} "
                                  f"(before {dep.success_before:.3f} + gain {self.min_gain:g}; "
                                  f"z={z:.2f}, p={p:.3g})", z, p)
        return Decision(False, f"not worse (z={z:.2f}, p={p:.3g})", z, p)

    def withdraw(self, rule_id: str) -> Deployment:
        dep = self.deployed.pop(rule_id)
        if self.block_on_withdraw:
            self.blocklist.sources.add(dep.source)
        return dep

    def sweep(self) -> list[tuple[str, Deployment, Decision]]:
        """Decide every deployed rule; withdraw and return the failing ones."""
        out = []
        for rid in list(self.deployed):
            d = self.decide(rid)
            if d.withdraw:
                out.append((rid, self.withdraw(rid), d))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "min_turns": self.min_turns, "block_on_withdraw": self.block_on_withdraw,
                "min_gain": self.min_gain,
                "deployed": {k: asdict(v) for k, v in self.deployed.items()},
                "blocklist": self.blocklist.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RuleMonitor:
        return cls(alpha=data["alpha"], min_turns=data["min_turns"], block_on_withdraw=data["block_on_withdraw"],
                   min_gain=data.get("min_gain", 0.0),
                   deployed={k: Deployment(**v) for k, v in data["deployed"].items()},
                   blocklist=Blocklist.from_dict(data["blocklist"]))
