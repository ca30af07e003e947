"""Defects per turn, and which turn a rephrase continues.

A turn is defective when any of these holds (`DefectKind`):

* ``BARGE_IN`` - the user interrupted the response;
* ``CANCELLED`` - status CANCELLED;
* ``UNHANDLED`` / ``ERROR`` - status UNHANDLED or ERROR;
* ``REJECTED`` - the user explicitly rejected the response;
* ``REPHRASED`` - the next turn of the session, within ``rephrase_window_ms``,
  is a rephrase (or a repeat) of this one: `similarity` >= ``rephrase_threshold``;
* ``ABANDONED`` - the session ends after this turn and it is either defective
  already (the user gave up; the kind is added alongside the others) or its
  status is UNSPECIFIED (no outcome reported) right after a defective turn.

Similarity of two utterances is the largest of: token Jaccard, character
3-gram Jaccard, and phonetic 2-gram Jaccard, where the phonetic string maps
letters to Soundex consonant classes, drops vowels and collapses repeats, so
"play maj and dragons" and "play imagine dragons" sound alike (used only when
both phonetic strings have ``MIN_PHONETIC`` classes or more).

>>> phonetic("maj and dragons") == phonetic("imagine dragons")
True
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

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


MIN_PHONETIC = 4
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


def is_rephrase(prev: TurnRecord, nxt: TurnRecord, config: DefectConfig = DefectConfig()) -> bool:
    """``nxt`` repeats or rephrases ``prev`` within the window."""
    if nxt.time_ms - prev.time_ms > config.rephrase_window_ms:
        return False
    return similarity(prev.text, nxt.text, use_phonetic=config.use_phonetic,
                      n=config.ngram) >= config.rephrase_threshold


def label_session(turns: Sequence[TurnRecord], config: DefectConfig = DefectConfig()
                  ) -> tuple[list[DefectKind], list[bool]]:
    """(defect kinds per turn, whether turn i+1 rephrases turn i) for one session in time order.

    A turn whose successor rephrases it is defective (``REPHRASED``), even if it
    looked fine: the user asked again.
    """
    kinds = [own_kinds(t) for t in turns]
    rephrased = [False] * len(turns)
    for i in range(len(turns) - 1):
        if is_rephrase(turns[i], turns[i + 1], config):
            rephrased[i] = True
            kinds[i] |= DefectKind.REPHRASED
    if turns:
        last = len(turns) - 1
        if kinds[last]:
            kinds[last] |= DefectKind.ABANDONED
        elif turns[last].status == STATUS_UNSPECIFIED and last > 0 and kinds[last - 1]:
            kinds[last] |= DefectKind.ABANDONED
    return kinds, rephrased
