"""Entity-level (span) rules: a span of words consistently replaced when users rephrase.

For each defective turn whose session later succeeds through rephrases, the
heard words of the failed turn are aligned with those of the success
(`replacements`): when the success reports slot values found among its
words, the failed turn's words aligned to each value are the misheard entity
(or, when the alignment took carrier words too, the span among them closest
to the value, `defects.closest_span`); without such slots,
each replaced block of the alignment is one, alone and with one equal word
of context on either side (so "night" -> "knight" may be too general where
"dark night" -> "dark knight" is not).

`SpanStats` counts each (source span, target span) pair with a sketch of its
distinct users, and, for spans whose pair reached ``min_support`` users,
how often the turns heard with them (not rewritten) succeeded: counted from
the miner's ``heard`` outcomes when a span is first tracked, and for every
later turn. `select_span_rules` keeps a pair when enough distinct users made
it, it is most of its source's replacements (``min_share``), turns containing
the source fail often (``min_source_defect``) and turns containing the
target succeed by ``min_margin`` more, and no utterance heard with it has
worked (``max_working``: successes, and most of its turns, of any one heard
text containing the span: "was" -> "wars", learnt from "star was", must not
break "paris was a woman"); the most specific qualifying span wins over the
longer ones containing it. The rule applies in any carrier
phrase (`loopwise.spans.RuleSet`); a whole-utterance rule wins over it.
The pair weights and the tracked spans' outcomes decay like the chain's
weights (`SpanStats.decay`: halved every half-life of event time, in steps
of at most an eighth of it), so a span's defect and success rates follow
what users say now; the user sketches do not decay.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Any

from loopwise.spans import SPAN, span_key
from loopwise.text import normalize

from .chain import sketch_add, sketch_count, user_hash
from .defects import DefectKind, closest_span
from .rules import Blocklist, Rule, rule_id
from .sessions import TurnRecord


@dataclass(frozen=True)
class SpanConfig:
    enabled: bool = True
    max_tokens: int = 4  # longest span, in words
    min_similarity: float = 0.5  # of a failed turn's span to the success's slot value
    min_support: float = 0.0  # distinct users behind the pair (0: the whole-utterance rules' own)
    min_share: float = 0.6  # of the source span's replacements that go to this target
    min_source_defect: float = 0.8  # turns heard with the source span: their defect rate
    min_source_turns: int = 5
    min_target_turns: int = 3
    min_target_success: float = 0.6
    min_margin: float = 0.2
    max_working: int = 1  # successes of a heard text containing the source that veto the rule
    max_pairs: int = 200_000
    sketch_k: int = 16


def _aligned(ops: Sequence[tuple[str, int, int, int, int]], j0: int, j1: int) -> tuple[int, int]:
    """The range of the first sequence aligned to [j0, j1) of the second (words deleted next to
    it included)."""
    lo = hi = None
    for tag, i1, i2, b1, b2 in ops:
        if not (b1 < j1 and b2 > j0 if b2 > b1 else j0 <= b1 <= j1):
            continue
        if tag == "equal":
            a_lo, a_hi = i1 + max(j0, b1) - b1, i1 + min(j1, b2) - b1
        else:
            a_lo, a_hi = i1, i2
        lo = a_lo if lo is None else min(lo, a_lo)
        hi = a_hi if hi is None else max(hi, a_hi)
    return (lo, hi) if lo is not None and hi is not None else (0, 0)


def replacements(failed: TurnRecord, success: TurnRecord, config: SpanConfig) -> list[tuple[str, str]]:
    """(source span, target span) pairs the user's rephrase shows (module docstring)."""
    a, b = failed.text.split(), (normalize(success.rewritten) if success.rewritten else success.text).split()
    ops = SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes()
    out: list[tuple[str, str]] = []
    by_slots = False
    for value in success.slots.values():
        vw = value.split()
        at = next((j for j in range(len(b) - len(vw) + 1) if b[j:j + len(vw)] == vw), None) if vw else None
        if at is None or len(vw) > config.max_tokens:
            continue
        by_slots = True  # the success names its entities: only they are replaced spans
        lo, hi = _aligned(ops, at, at + len(vw))
        if 0 < hi - lo <= len(vw) + 1:  # the words replaced by the value: the misheard entity
            src = " ".join(a[lo:hi])
        else:  # the carrier changed too: the span of the failed turn closest to the value
            sim, i, j = closest_span(a[lo:hi] if hi > lo else a, value, longer=2)
            src = " ".join((a[lo:hi] if hi > lo else a)[i:j]) if sim >= config.min_similarity else ""
        if src and src != value:
            out.append((src, value))
    if by_slots:
        return out
    for tag, i1, i2, j1, j2 in ops:
        if tag != "replace" or i2 - i1 > config.max_tokens or j2 - j1 > config.max_tokens:
            continue
        src, dst = " ".join(a[i1:i2]), " ".join(b[j1:j2])
        out.append((src, dst))
        if i1 > 0 and j1 > 0 and a[i1 - 1] == b[j1 - 1]:
            out.append((f"{a[i1 - 1]} {src}", f"{b[j1 - 1]} {dst}"))
        if i2 < len(a) and j2 < len(b) and a[i2] == b[j2]:
            out.append((f"{src} {a[i2]}", f"{dst} {b[j2]}"))
    return out


def _contains(text: str, span: str) -> bool:
    return f" {span} " in f" {text} "


class SpanStats:
    """Replacement pairs with their distinct users, and outcomes of turns heard with tracked spans."""

    def __init__(self, config: SpanConfig = SpanConfig()) -> None:
        self.config = config
        self.pairs: dict[str, dict[str, list[Any]]] = {}  # source -> target -> [weight, user sketch]
        self.counts: dict[str, list[int]] = {}  # tracked span -> [turns heard, successes]
        self._longest = 0
        self.n_pairs = 0
        self._by_word: dict[str, set[str]] = {}  # word -> heard texts with it (to track a span at once)
        self.decayed_ms: int | None = None  # event time the counts were last decayed to

    def observe_pair(self, src: str, dst: str, user: str, heard: Mapping[str, Sequence[int]]) -> None:
        """One user's replacement of ``src`` by ``dst``; spans reaching support start being tracked
        (their past outcomes from ``heard``: normalised text -> [turns, successes])."""
        targets = self.pairs.setdefault(src, {})
        entry = targets.get(dst)
        if entry is None:
            entry = targets[dst] = [0.0, []]
            self.n_pairs += 1
        entry[0] += 1.0
        sketch_add(entry[1], user_hash(user), self.config.sketch_k)
        if sketch_count(entry[1], self.config.sketch_k) >= self.config.min_support:
            for span in (src, dst):
                if span not in self.counts:
                    self._track(span, heard)
        if self.n_pairs > self.config.max_pairs:
            self._evict()

    def _track(self, span: str, heard: Mapping[str, Sequence[int]]) -> None:
        turns = successes = 0
        words = span.split()
        for text in self._by_word.get(min(words, key=lambda w: len(self._by_word.get(w, ()))), ()):
            counts = heard.get(text)
            if counts is not None and _contains(text, span):
                turns += counts[0]
                successes += counts[1]
        self.counts[span] = [turns, successes]
        self._longest = max(self._longest, len(words))

    def works_somewhere(self, span: str, heard: Mapping[str, Sequence[int]]) -> bool:
        """Whether a heard text containing ``span`` worked: more than ``max_working`` successes,
        most of its turns."""
        words = span.split()
        for text in self._by_word.get(min(words, key=lambda w: len(self._by_word.get(w, ()))), ()):
            counts = heard.get(text)
            if counts is not None and counts[1] > self.config.max_working and 2 * counts[1] > counts[0] \
                    and _contains(text, span):
                return True
        return False

    def reindex(self, heard: Mapping[str, Sequence[int]]) -> None:
        """Index the heard texts by word anew (after the miner forgot some)."""
        self._by_word = {}
        for text in heard:
            for w in text.split():
                self._by_word.setdefault(w, set()).add(text)

    def observe_heard(self, text: str, success: bool, new: bool = False) -> None:
        """A turn served as heard (no rewrite): counted for every tracked span it contains;
        ``new``: its text was not heard before (indexed)."""
        words = text.split()
        if new:
            for w in words:
                self._by_word.setdefault(w, set()).add(text)
        if not self.counts:
            return
        seen = set()
        for i in range(len(words)):
            for j in range(i + 1, min(len(words), i + self._longest) + 1):
                span = " ".join(words[i:j])
                c = self.counts.get(span)
                if c is not None and span not in seen:
                    seen.add(span)
                    c[0] += 1
                    c[1] += success

    def decay(self, time_ms: int, half_life_ms: int) -> None:
        """Decay the pair weights and the tracked outcomes to ``time_ms`` (event time)."""
        if self.decayed_ms is None or time_ms < self.decayed_ms:
            self.decayed_ms = time_ms if self.decayed_ms is None else self.decayed_ms
            return
        elapsed = time_ms - self.decayed_ms
        if elapsed * 8 < half_life_ms:
            return
        f = 0.5 ** (elapsed / half_life_ms)
        for c in self.counts.values():
            c[0] *= f
            c[1] *= f
        for targets in self.pairs.values():
            for entry in targets.values():
                entry[0] *= f
        self.decayed_ms = time_ms

    def _evict(self) -> None:
        """Forget the least-made half of the sources that no tracked span depends on."""
        weight = {s: sum(e[0] for e in t.values()) for s, t in self.pairs.items() if s not in self.counts}
        for src in sorted(weight, key=weight.__getitem__)[: len(weight) // 2]:
            self.n_pairs -= len(self.pairs.pop(src))

    def to_dict(self) -> dict[str, Any]:
        return {"pairs": self.pairs, "counts": self.counts, "decayed_ms": self.decayed_ms}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], config: SpanConfig = SpanConfig()) -> SpanStats:
        s = cls(config)
        s.pairs = {src: {d: [float(e[0]), list(e[1])] for d, e in t.items()} for src, t in data["pairs"].items()}
        s.counts = {k: list(v) for k, v in data["counts"].items()}
        s.decayed_ms = data.get("decayed_ms")
        s.n_pairs = sum(len(t) for t in s.pairs.values())
        s._longest = max((len(k.split()) for k in s.counts), default=0)
        return s


def observe_session(stats: SpanStats, turns: Sequence[TurnRecord], kinds: Sequence[DefectKind],
                    rephrased: Sequence[bool], heard: Mapping[str, Sequence[int]]) -> None:
    """The replacement pairs of one labelled session: each defective turn heard as is, with the
    first success its rephrases reach."""
    for i, turn in enumerate(turns):
        if not kinds[i] or not rephrased[i] or turn.rewritten:
            continue
        j = i + 1
        while j < len(turns) and kinds[j] and rephrased[j]:
            j += 1
        if j < len(turns) and not kinds[j]:
            for src, dst in dict.fromkeys(replacements(turn, turns[j], stats.config)):
                stats.observe_pair(src, dst, turn.user_id, heard)


def select_span_rules(stats: SpanStats, tenant: str, blocklist: Blocklist | None = None,
                      heard: Mapping[str, Sequence[int]] | None = None) -> list[Rule]:
    """Span rules for the current counts (module docstring), most specific first; ``heard``:
    normalised text -> [turns, successes] of the turns served as heard (the veto)."""
    config, blocklist = stats.config, blocklist or Blocklist()
    found: list[Rule] = []
    for src, counts in stats.counts.items():  # only tracked spans have the users a rule needs
        targets = stats.pairs.get(src)
        if not targets or counts[0] < config.min_source_turns:
            continue
        k = config.sketch_k
        dst, (w, sketch) = max(targets.items(), key=lambda kv: (sketch_count(kv[1][1], k), kv[1][0], kv[0]))
        users = sketch_count(sketch, k)
        total = sum(e[0] for e in targets.values())
        src_success = counts[1] / counts[0]
        tgt = stats.counts.get(dst, [0, 0])
        if users < config.min_support or w / total < config.min_share or tgt[0] < config.min_target_turns:
            continue
        tgt_success = tgt[1] / tgt[0]
        margin = tgt_success - src_success
        if 1 - src_success < config.min_source_defect or tgt_success < config.min_target_success \
                or margin < config.min_margin or not blocklist.allows(src, dst, rewrite=dst) \
                or (heard is not None and stats.works_somewhere(src, heard)):
            continue
        found.append(Rule(tenant=tenant, rule_id=rule_id(tenant, span_key(src), dst), source=src,
                          source_state="", target=dst, rewrite=dst, support=users, confidence=margin,
                          source_success=src_success, target_success=tgt_success, source_absorption=0.0,
                          source_turns=int(counts[0]), kind=SPAN))
    found.sort(key=lambda r: (len(r.source.split()), -r.confidence, r.rule_id))
    chosen: list[Rule] = []
    for r in found:
        if not any(_contains(r.source, c.source) for c in chosen):
            chosen.append(r)
    return chosen
