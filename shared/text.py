"""Utterance normalisation: the one form rewrite rules are keyed by.

>>> normalize("  Play   Maj and Dragons!! ")
'play maj and dragons'
>>> normalize("What's the weather?")
"what's the weather"
"""

from __future__ import annotations

import re
import unicodedata

_NON_WORD = re.compile(r"[^\w']+")


def normalize(utterance: str) -> str:
    text = unicodedata.normalize("NFKC", utterance).casefold()
    return " ".join(_NON_WORD.sub(" ", text).split())
