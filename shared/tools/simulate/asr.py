"""Speech recognition with *recurring* errors.

Each title is confusable or not (decided by a hash, with probability
``p_confusable``), and a confusable title has one fixed misrecognition built
from a homophone / near-homophone table, spelling-by-sound edits
("ph"->"f", "ight"->"ite", ...), a split or merged word; it happens with
probability ``p_error`` per utterance (less when the user speaks carefully).
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

HOMOPHONES = {
    "two": "to", "to": "two", "four": "for", "for": "four", "night": "knight", "knight": "night",
    "eight": "ate", "sea": "see", "son": "sun", "sun": "son", "one": "won", "won": "one", "blue": "blew",
    "red": "read", "road": "rode", "whole": "hole", "hour": "our", "bear": "bare", "tail": "tale",
    "male": "mail", "right": "write", "write": "right", "hear": "here", "here": "hear", "peace": "piece",
    "rain": "reign", "new": "knew", "knows": "nose", "would": "wood", "wood": "would", "dear": "deer",
    "die": "dye", "flower": "flour", "heal": "heel", "high": "hi", "hole": "whole", "in": "inn",
    "made": "maid", "meet": "meat", "pair": "pear", "plane": "plain", "rose": "rows", "sail": "sale",
    "scene": "seen", "so": "sew", "some": "sum", "steal": "steel", "their": "there", "way": "weigh",
    "week": "weak", "wild": "wiled", "wind": "wined", "witch": "which", "lost": "loss", "days": "daze",
    "kids": "kid's", "men": "man", "women": "woman", "seven": "heaven", "nine": "mine", "ten": "then",
    "bride": "bribe", "ghost": "goats", "beauty": "booty", "city": "sitty", "story": "storey",
    "wars": "was", "man": "men", "girl": "girls", "heat": "heet", "mars": "mass", "fargo": "far go",
    "dead": "dad", "love": "of", "little": "littel", "house": "how's", "secret": "secrets",
}
EDITS = (("ph", "f"), ("ight", "ite"), ("tion", "shun"), ("ck", "k"), ("qu", "kw"), ("ee", "ea"),
         ("ea", "ee"), ("ou", "ow"), ("er", "a"), ("x", "ks"), ("ce", "se"), ("y", "ie"), ("oo", "u"))
_DOUBLE = re.compile(r"([bcdfgklmnprstz])\1")


def hash_unit(*parts: object) -> float:
    """A deterministic number in [0, 1) from ``parts``."""
    h = hashlib.blake2b("\x00".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0**64


def _edit_word(word: str, salt: float) -> str:
    if word in HOMOPHONES:
        return HOMOPHONES[word]
    options = [word.replace(a, b, 1) for a, b in EDITS if a in word]
    if _DOUBLE.search(word):
        options.append(_DOUBLE.sub(r"\1", word, count=1))
    if len(word) >= 7:
        cut = len(word) // 2
        options.append(f"{word[:cut]} {word[cut:]}")
    if len(word) > 4 and word.endswith("s"):
        options.append(word[:-1])
    options = [o for o in options if o != word]
    return options[int(salt * len(options))] if options else word


@dataclass(frozen=True)
class Asr:
    """The recognition channel; deterministic for ``seed`` (which titles are confusable, and how)."""

    seed: int = 0
    p_confusable: float = 0.3
    p_error: float = 0.6
    careful_factor: float = 0.35  # careful speech multiplies p_error by this
    p_noise: float = 0.02  # a one-off error: a word dropped
    p_collide: float = 0.5  # a confusable title with a neighbour is heard as that neighbour

    def confusion(self, spoken: str, neighbour: str | None = None) -> str | None:
        """The recurring misrecognition of ``spoken`` (a title), or None if it is heard right;
        ``neighbour`` is a similar title the recogniser may prefer (`Catalog.neighbours`)."""
        if hash_unit(self.seed, "confusable", spoken) >= self.p_confusable:
            return None
        if neighbour and hash_unit(self.seed, "collide", spoken) < self.p_collide:
            return neighbour
        words = spoken.split()
        pick = [i for i, w in enumerate(words) if len(w) > 2] or list(range(len(words)))
        i = pick[int(hash_unit(self.seed, "word", spoken) * len(pick))]
        salt = hash_unit(self.seed, "edit", spoken)
        if len(words) > 1 and salt < 0.12 and i + 1 < len(words):
            new = words[:i] + [words[i] + words[i + 1]] + words[i + 2:]  # merged words
        else:
            new = words[:i] + [_edit_word(words[i], salt)] + words[i + 1:]
        out = " ".join(new)
        return out if out != spoken else None

    def hear(self, carrier: str, title_words: str, rng: random.Random, *, careful: bool = False,
             neighbour: str | None = None) -> str:
        title = title_words
        wrong = self.confusion(title_words, neighbour)
        p = self.p_error * (self.careful_factor if careful else 1.0)
        if wrong is not None and rng.random() < p:
            title = wrong
        elif rng.random() < self.p_noise and " " in title:
            parts = title.split()
            del parts[rng.randrange(len(parts))]
            title = " ".join(parts)
        return f"{carrier} {title}"
