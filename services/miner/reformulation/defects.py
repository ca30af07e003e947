"""Defects per turn, and which turn a rephrase continues.

A turn is defective when any of these holds (`DefectKind`):

* ``BARGE_IN`` - the user interrupted the response;
* ``CANCELLED`` - status CANCELLED;
* ``UNHANDLED`` / ``ERROR`` - status UNHANDLED or ERROR;
* ``REJECTED`` - the user explicitly rejected the response;
* ``REPHRASED`` - the next turn of the session, within ``rephrase_window_ms``,
  is a rephrase (or a repeat) of this one: `similarity` >= ``rephrase_threshold``,
  or, whatever the carrier phrases, by their interpretations (`same_request`);
* ``ABANDONED`` - the session ends after this turn and it is either defective
  already (the user gave up; the kind is added alongside the others) or its
  status is UNSPECIFIED (no outcome reported) right after a defective turn.

Similarity of two utterances is the largest of: token Jaccard, character
3-gram Jaccard, and phonetic 2-gram Jaccard, where the phonetic string maps
letters to Soundex consonant classes, drops vowels and collapses repeats, so
"play maj and dragons" and "play imagine dragons" sound alike (used only when
both phonetic strings have ``MIN_PHONETIC`` classes or more).

Carrier-aware: "time in soul" (not understood) then "what time is it in seoul"
share few words, but the retry's slot value ("seoul") is close to a span of
the first ("soul"). Two turns are the same request when the next one's
interpretation has slot values and either both interpretations have the same
domain and intent and the same slots with close values, or the first has no
interpretation and each of the next one's slot values (words it said) is
close to a span of the first's words. The interpretations also veto a
rephrase the texts suggest when the first turn was not understood or worked
by itself: "time in pairs" (not understood) then "time in london", or "time
in paris" (answered) then "time in london", share their carrier, not their
request (after a barge-in, other values may be the user's correction: the
texts decide). Values are close when `value_similarity` (the larger of
the character alignment ratio and phonetic equality) reaches
``slot_threshold``.

Carriers without slots in the words (the interpretations cannot tell: they
name ids, or there are none): after a turn that failed by itself, the retry is a rephrase when a word suffix of
the failed turn (its carrier dropped, ``MIN_TAIL_CHARS`` or more) is close
to a span of the retry (`tail_similarity` >= ``tail_threshold``): "i want to
watch braveheert" then "play the movie braveheart", "put on capefear" then
"play cape fear", "play raiders of" then "play the movie raiders of the lost
ark" (their texts share too few words and letters for `similarity`). A tail
shorter than that counts when the retry completes it: said again exactly
right after the retry's carrier (its first ``MAX_CARRIER_WORDS`` words at
most), with more words after it, and not only function words ("play back"
then "play back to the future"; not "play to" then "play to kill a
mockingbird": "to" starts too many titles).

>>> phonetic("maj and dragons") == phonetic("imagine dragons")
True
>>> round(value_similarity("soul", "seoul"), 2)
0.89
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher

from .sessions import (
    STATUS_CANCELLED,
    STATUS_ERROR,
    STATUS_UNHANDLED,
    STATUS_UNSPECIFIED,
    TurnRecord,
)


class DefectKind(enum.IntFlag):
    NONE = 0
    BARGE_IN = 1
    CANCELLED = 2
    UNHANDLED = 4
    ERROR = 8
    REJECTED = 16
    REPHRASED = 32
    ABANDONED = 64


@dataclass(frozen=True)
class DefectConfig:
    rephrase_window_ms: int = 30_000
    rephrase_threshold: float = 0.5
    use_phonetic: bool = True
    ngram: int = 3
    slot_threshold: float = 0.6  # value_similarity of slot values that makes a rephrase
    by_slots: bool = True  # carrier-aware (False: the texts alone decide)
    tail_threshold: float = 0.8  # tail_similarity that makes a retry after a failure a rephrase (>1: off)


MIN_PHONETIC = 4
MIN_TAIL_CHARS = 5
MAX_CARRIER_WORDS = 5
FUNCTION_WORDS = frozenset("a an and at by for from in into of on or the to with".split())
_SOUNDEX = {c: d for letters, d in (("bfpv", "1"), ("cgjkqsxz", "2"), ("dt", "3"), ("l", "4"),
                                     ("mn", "5"), ("r", "6")) for c in letters}


def phonetic(text: str) -> str:
    """Soundex classes of the consonants of ``text`` (spaces ignored), repeats collapsed."""
    out: list[str] = []
    for ch in text.replace(" ", ""):
        code = _SOUNDEX.get(ch)
        if code and (not out or out[-1] != code):
            out.append(code)
    return "".join(out)


def _grams(text: str, n: int) -> set[str]:
    padded = f" {text} "
    return {padded[i:i + n] for i in range(max(1, len(padded) - n + 1))}


def _jaccard(a: set[str], b: set[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def similarity(a: str, b: str, *, use_phonetic: bool = True, n: int = 3) -> float:
    """Similarity in [0, 1] of two normalised utterances (see module docstring)."""
    if a == b:
        return 1.0
    best = max(_jaccard(set(a.split()), set(b.split())), _jaccard(_grams(a, n), _grams(b, n)))
    if use_phonetic:
        pa, pb = phonetic(a), phonetic(b)
        if len(pa) >= MIN_PHONETIC and len(pb) >= MIN_PHONETIC:  # short keys collide by chance
            best = max(best, _jaccard(_grams(pa, 2), _grams(pb, 2)))
    return best


def value_similarity(a: str, b: str) -> float:
    """Similarity in [0, 1] of two short values (an entity, a slot value): the character
    alignment ratio, or 1 when they sound alike (equal phonetic strings of 3 classes or more).
    Values without letters (ids, numbers) are close only when equal."""
    if a == b:
        return 1.0
    if not any(ch.isalpha() for ch in a + b):
        return 0.0
    pa = phonetic(a)
    if len(pa) >= 3 and pa == phonetic(b):
        return 1.0
    return SequenceMatcher(None, a, b, autojunk=False).ratio()


def closest_span(words: Sequence[str], value: str, longer: int = 1) -> tuple[float, int, int]:
    """(similarity, i, j): the span ``words[i:j]`` closest to ``value``, of its number of words
    give or take one (up to ``longer`` more); the longer span on ties."""
    n = len(value.split())
    best = (0.0, 0, 0)
    for size in range(max(1, n - 1), n + longer + 1):
        for i in range(len(words) - size + 1):
            sim = value_similarity(" ".join(words[i:i + size]), value)
            if sim >= best[0] and sim > 0:
                best = (sim, i, i + size)
    return best


def tail_similarity(prev: str, nxt: str) -> float:
    """The largest `value_similarity` of a word suffix of ``prev`` without its first word (the
    carrier dropped; ``MIN_TAIL_CHARS`` or more) to a span of ``nxt`` (`closest_span`).

    >>> tail_similarity("i want to watch braveheert", "play the movie braveheart")  # they sound alike
    1.0
    >>> round(tail_similarity("play raiders of", "play the movie raiders of the lost ark"), 2)
    1.0
    >>> tail_similarity("play the", "play the movie heat")
    0.0
    """
    words, other = prev.split(), nxt.split()
    best = 0.0
    for i in range(1, len(words)):
        tail = " ".join(words[i:])
        if len(tail) < MIN_TAIL_CHARS:
            return max(best, 1.0 if _completed(words[i:], other) else 0.0)
        best = max(best, closest_span(other, tail)[0])
    return best


def _completed(tail: Sequence[str], other: Sequence[str]) -> bool:
    """A short request completed: ``tail`` (with a word that is not a function word) is said
    again exactly after the retry's first 1 to ``MAX_CARRIER_WORDS`` words (its carrier) and
    the retry goes on ("play back" then "play back to the future", "watch army" then "put on
    army of darkness")."""
    if all(w in FUNCTION_WORDS for w in tail):
        return False
    k = len(tail)
    return any(list(other[j:j + k]) == list(tail) for j in range(1, min(len(other) - k, MAX_CARRIER_WORDS + 1)))


def same_request(prev: TurnRecord, nxt: TurnRecord, threshold: float = 0.6) -> bool | None:
    """Carrier-aware: whether ``nxt`` asks what ``prev`` asked, by their interpretations
    (module docstring); None when they cannot tell."""
    if not nxt.slots:
        return None
    if prev.interpretation:
        if prev.intent != nxt.intent or set(prev.slots) != set(nxt.slots):
            return False
        return all(value_similarity(prev.slots[k], v) >= threshold for k, v in nxt.slots.items())
    said = f" {nxt.text} "
    if not all(f" {v} " in said for v in nxt.slots.values()):
        return None  # values that are not words of the turn (ids): the texts decide
    words = prev.text.split()
    return all(closest_span(words, v)[0] >= threshold for v in nxt.slots.values() if v)


def own_kinds(turn: TurnRecord) -> DefectKind:
    """The defects a turn shows by itself (status and flags)."""
    kinds = DefectKind.NONE
    if turn.barge_in:
        kinds |= DefectKind.BARGE_IN
    if turn.explicit_reject:
        kinds |= DefectKind.REJECTED
    if turn.status == STATUS_CANCELLED:
        kinds |= DefectKind.CANCELLED
    elif turn.status == STATUS_UNHANDLED:
        kinds |= DefectKind.UNHANDLED
    elif turn.status == STATUS_ERROR:
        kinds |= DefectKind.ERROR
    return kinds


def rephrase_by(prev: TurnRecord, nxt: TurnRecord, config: DefectConfig = DefectConfig()) -> str:
    """What makes ``nxt`` a repeat or rephrase of ``prev`` within the window: "interpretation"
    (`same_request`), "text" (`similarity`), "tail" (`tail_similarity`, after a failed turn), or
    "" when it is not one."""
    if nxt.time_ms - prev.time_ms > config.rephrase_window_ms:
        return ""
    same = same_request(prev, nxt, config.slot_threshold) if config.by_slots else None
    if same:
        return "interpretation"
    if same is False and (not prev.interpretation or not own_kinds(prev)):
        return ""  # other entities after a turn not understood, or one that worked: a new request
    close = similarity(prev.text, nxt.text, use_phonetic=config.use_phonetic, n=config.ngram)
    if close >= config.rephrase_threshold:
        return "text"
    if same is None and own_kinds(prev) and config.tail_threshold <= 1 and \
            tail_similarity(prev.text, nxt.text) >= config.tail_threshold:
        return "tail"
    return ""


def is_rephrase(prev: TurnRecord, nxt: TurnRecord, config: DefectConfig = DefectConfig()) -> bool:
    """``nxt`` repeats or rephrases ``prev`` within the window."""
    return bool(rephrase_by(prev, nxt, config))


def label_session(turns: Sequence[TurnRecord], config: DefectConfig = DefectConfig(),
                  tally: dict[str, int] | None = None) -> tuple[list[DefectKind], list[bool]]:
    """(defect kinds per turn, whether turn i+1 rephrases turn i) for one session in time order;
    ``tally`` counts the rephrase links by what found them (`rephrase_by`).

    A turn whose successor rephrases it is defective (``REPHRASED``), even if it
    looked fine: the user asked again.
    """
    kinds = [own_kinds(t) for t in turns]
    rephrased = [False] * len(turns)
    for i in range(len(turns) - 1):
        by = rephrase_by(turns[i], turns[i + 1], config)
        if by:
            rephrased[i] = True
            kinds[i] |= DefectKind.REPHRASED
            if tally is not None:
                tally[by] = tally.get(by, 0) + 1
    if turns:
        last = len(turns) - 1
        if kinds[last]:
            kinds[last] |= DefectKind.ABANDONED
        elif turns[last].status == STATUS_UNSPECIFIED and last > 0 and kinds[last - 1]:
            kinds[last] |= DefectKind.ABANDONED
    return kinds, rephrased
