"""bench/reformulation.py's pure parts: compressed-time settings, the rules as served, the
held-out figures, injected confusions for evidence-to-served, the turn backlog.

Nothing here starts a process or opens a socket (unit-tested in
tests/unit/test_bench_reformulation.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from _reformulation_offline import judge

from loopwise.miner.reformulation.sessions import (
    STATUS_OK,
    STATUS_UNHANDLED,
    TurnRecord,
    interpretation_key,
)
from loopwise.spans import RuleSet
from loopwise.text import normalize
from loopwise.tools.simulate.assistant import (
    DOMAIN,
    EDITS,
    INTENT,
    Asr,
    Behaviour,
    Catalog,
    Movie,
    RewriteContext,
    SimTurn,
    Summary,
    summarize,
)

# The simulator adds each turn's response latency (300-1200 ms) to the user's clock unscaled:
# under a time_scale, a gap inside a session is up to this much longer than the scaled one.
MAX_LATENCY_MS = 1200


# -- compressed time ---------------------------------------------------------------------------


def compressed_gaps(behaviour: Behaviour, time_scale: float) -> tuple[int, int]:
    """(longest gap inside a session, shortest gap between sessions), ms, under ``time_scale``."""
    inside = 1000 * time_scale * max(behaviour.retry_s[1], behaviour.next_request_s[1]) + MAX_LATENCY_MS
    between = 1000 * time_scale * behaviour.session_gap_s[0]
    return int(math.ceil(inside)), int(between)


def session_gap_ms(behaviour: Behaviour, time_scale: float, default_ms: int = 45_000) -> int:
    """The miner's session gap for simulated traffic compressed by ``time_scale``: between the
    longest gap inside a simulated session and the shortest between two (the middle); at
    time_scale 1 the miner's default (45 s) already separates them."""
    inside, between = compressed_gaps(behaviour, time_scale)
    if inside < default_ms < between:
        return default_ms
    if between <= inside:  # no gap separates them: sessions merge rather than split
        return inside + 1
    return (inside + between) // 2


def rephrase_window_ms(time_scale: float, default_ms: int = 30_000) -> int:
    """The rephrase window scaled like the simulator's clock (plus its unscaled latency)."""
    return default_ms if time_scale >= 1 else int(default_ms * time_scale) + MAX_LATENCY_MS


# -- the rules as served -----------------------------------------------------------------------


def rules_from_table(table: Mapping[bytes | str, bytes | str]) -> dict[str, dict[str, Any]]:
    """The Redis rewrite table (``HGETALL``: source -> JSON value) as {source: value dict}."""
    out: dict[str, dict[str, Any]] = {}
    for k, v in table.items():
        key = k.decode() if isinstance(k, bytes) else k
        try:
            value = json.loads(v)
        except (TypeError, ValueError):
            continue
        if isinstance(value, dict) and value.get("rewrite"):
            out[key] = value
    return out


def served_rules(table: Mapping[str, Mapping[str, Any]]) -> RuleSet:
    """The table (as `rules_from_table` reads it) as the Rewrite RPC serves it."""
    return RuleSet.from_table({k: json.dumps(v) for k, v in table.items()})


def table_lookup(table: Mapping[str, Mapping[str, Any]]) -> Callable[[str, RewriteContext],
                                                                     tuple[str, str] | None]:
    """A simulator rewriter from the served table (what Rewrite should answer)."""
    rules = served_rules(table)

    def rewrite(utterance: str, ctx: RewriteContext) -> tuple[str, str] | None:
        a = rules.apply(utterance, ctx.user_id)
        return (a.utterance, a.rule_id) if a else None

    return rewrite


@dataclass
class HeldOut:
    """Held-out seeds without rewrites (``before``) and with the rules as served (``after``)."""

    before: Summary
    after: Summary
    correct_rules: int
    judged_rules: int
    rules: int

    @property
    def reduction(self) -> float:
        b = self.before.defect_rate
        return (b - self.after.defect_rate) / b if b else 0.0

    @property
    def precision(self) -> float:
        return self.correct_rules / self.judged_rules if self.judged_rules else float("nan")

    def lines(self) -> list[str]:
        b, a = self.before, self.after
        return [
            f"rules {self.rules}, precision {self.precision:.3f} ({self.correct_rules}/{self.judged_rules} judged: "
            "their source occurs in the held-out turns)",
            f"defect rate per turn {b.defect_rate:.4f} -> {a.defect_rate:.4f} ({-100 * self.reduction:+.1f}%), "
            f"turns {b.turns:,} -> {a.turns:,}",
            f"failed requests {b.request_failure_rate:.4f} -> {a.request_failure_rate:.4f}",
            f"rewritten turns {a.rewritten:,}, wins {a.wins:,}, losses {a.losses:,}, win/loss {fmt_ratio(a.win_loss)}",
        ]


def held_out(world: Any, rules: RuleSet, before: Sequence[SimTurn], after: Sequence[SimTurn]) -> HeldOut:
    """Figures from the simulator's ground truth, as `offline.evaluate` computes them."""
    correct, judged = judge(rules, before, world.nlu)
    return HeldOut(summarize(before), summarize(after), correct, judged, len(rules))


def fmt_ratio(x: float) -> str:
    return "inf" if x == float("inf") else f"{x:.2f}"


def json_num(x: float | None, digits: int = 4) -> float | str | None:
    """A JSON-safe number: None for NaN or missing, "inf" for infinity."""
    if x is None or x != x:
        return None
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return round(float(x), digits)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (linear interpolation), NaN for no values."""
    if not values:
        return float("nan")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


# -- injected recurring confusions (evidence to served) ----------------------------------------


@dataclass(frozen=True)
class Confusion:
    movie: Movie
    heard: str  # the injected misrecognition of the title
    carrier: str = "play"

    @property
    def source(self) -> str:
        """The utterance as heard: the rewrite table's key."""
        return normalize(f"{self.carrier} {self.heard}")

    @property
    def fixed(self) -> str:
        return f"{self.carrier} {self.movie.spoken}"


def _confuse(spoken: str) -> str | None:
    """A spelling-by-sound edit of the title's longest word (the ASR's kind of error), or None."""
    words = spoken.split()
    order = sorted(range(len(words)), key=lambda i: (-len(words[i]), i))
    for i in order:
        w = words[i]
        for a, b in EDITS:
            if a in w and len(w) > 3:
                new = words[:i] + [w.replace(a, b, 1)] + words[i + 1:]
                return " ".join(new)
    return None


def pick_confusions(catalog: Catalog, n: int, *, asr: Asr | None = None, taken: set[str] | None = None
                    ) -> list[Confusion]:
    """``n`` confusions the simulated population never makes: popular titles of two or more
    words that the simulator's recogniser hears right, with one spelling-by-sound edit."""
    taken = taken or set()
    asr = asr or Asr()
    out: list[Confusion] = []
    for movie in sorted(catalog.movies, key=lambda m: (-m.popularity, m.id)):
        words = movie.spoken.split()
        if len(words) < 2 or movie.spoken in taken or catalog.by_spoken.get(movie.spoken) != movie:
            continue
        if asr.confusion(movie.spoken, catalog.neighbours.get(movie.spoken)) is not None:
            continue
        heard = _confuse(movie.spoken)
        if heard is None or heard in catalog.by_spoken:
            continue
        c = Confusion(movie, heard)
        if c.source in taken:
            continue
        out.append(c)
        taken.add(movie.spoken)
        if len(out) == n:
            break
    return out


@dataclass(frozen=True)
class PlannedTurn:
    offset_ms: int  # before the session's last turn (<= 0)
    utterance: str
    status: int
    item: str  # "" when unhandled

    def record(self, user: str, end_ms: int, tenant: str = "default") -> TurnRecord:
        interp = interpretation_key(INTENT, {"item": self.item}, DOMAIN) if self.item else ""
        return TurnRecord(time_ms=end_ms + self.offset_ms, utterance=self.utterance, interpretation=interp,
                          status=self.status, user_id=user, tenant=tenant)


def evidence_session(c: Confusion, step_ms: int = 500) -> list[PlannedTurn]:
    """One user's session with the confusion: heard wrong twice (unhandled), then the title
    said carefully and played. Two source turns per user: with 3 users the source has the 6
    turns the rule selection wants (min_source_turns 5) exactly when support reaches 3."""
    return [PlannedTurn(-2 * step_ms, c.source, STATUS_UNHANDLED, ""),
            PlannedTurn(-step_ms, c.source, STATUS_UNHANDLED, ""),
            PlannedTurn(0, c.fixed, STATUS_OK, c.movie.id)]


def evidence_user(c: Confusion, run_id: str, index: int) -> str:
    return f"bench-evidence-{run_id}-{c.movie.id}-{index}"


# -- the turn backlog (throughput) -----------------------------------------------------------


def turn_records(turns: Sequence[SimTurn], factory: Any, topic: str, key_of: Callable[[Any], bytes]
                 ) -> list[tuple[int, int, str, bytes, bytes]]:
    """Simulated turns as (arrival ms, sequence, topic, key, value) records, arrival = event time."""
    out = []
    for i, t in enumerate(turns):
        ev = t.to_event(factory)
        ev.received_time_ms = t.time_ms
        out.append((t.time_ms, i, topic, key_of(ev), ev.SerializeToString()))
    out.sort()
    return out


def promotion_seconds(records: Sequence[tuple[str, str, int]]) -> list[float]:
    """Seconds from each rule's ``canary`` record to its ``promoted`` one, from the audit
    topic's (rule id, action, time_ms) in order."""
    started: dict[str, int] = {}
    out = []
    for rid, action, ms in records:
        if action == "canary":
            started.setdefault(rid, ms)
        elif action == "promoted" and rid in started:
            out.append((ms - started.pop(rid)) / 1000)
    return out
