"""The assistant's world: a movie catalog and a strict NLU.

The catalog is MovieLens-100K (titles and rating counts as popularity, via
`loopwise.tools.datasets`). The NLU needs, after a carrier phrase ("play",
"put on", "watch", ...), the title exactly as spoken ("the wizard of oz" for
"Wizard of Oz, The"; parenthesised parts dropped), and gives
``play_movie:<item id>``, else the turn is UNHANDLED.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from loopwise.text import normalize

OK, UNHANDLED = 1, 2  # loopwise.v1.events_pb2.ResponseStatus
DOMAIN, INTENT = "video", "play_movie"
NLU_CARRIERS = ("i want to watch", "play the movie", "play", "put on", "watch")

_PAREN = re.compile(r"\([^)]*\)")
_ARTICLE_SUFFIX = re.compile(r"^(.*), (the|a|an|la|le|il|el|les|das|der|die)$", re.IGNORECASE)


def spoken_title(title: str) -> str:
    """How a title is said: "Wizard of Oz, The (1939)" -> "the wizard of oz"."""
    t = _PAREN.sub(" ", title).strip()
    m = _ARTICLE_SUFFIX.match(t)
    if m:
        t = f"{m.group(2)} {m.group(1)}"
    return normalize(t)


# -- catalog and NLU ---------------------------------------------------------------------


@dataclass(frozen=True)
class Movie:
    id: str
    title: str
    spoken: str
    popularity: float = 1.0


@dataclass
class Catalog:
    movies: list[Movie]
    by_spoken: dict[str, Movie] = field(default_factory=dict)
    cum_weights: list[float] = field(default_factory=list)
    # spoken title -> the most popular other title starting with the same two words (sequels, series)
    neighbours: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for m in self.movies:
            self.by_spoken.setdefault(m.spoken, m)
            self.by_spoken.setdefault(normalize(m.title), m)
        groups: dict[tuple[str, ...], list[Movie]] = {}
        for m in self.movies:
            words = tuple(m.spoken.split()[:2])
            if len(words) == 2:
                groups.setdefault(words, []).append(m)
        for group in groups.values():
            for m in group:
                others = [o for o in group if o.spoken != m.spoken]
                if others:
                    self.neighbours[m.spoken] = max(others, key=lambda o: (o.popularity, o.id)).spoken
        total = 0.0
        self.cum_weights = []
        for m in self.movies:
            total += m.popularity
            self.cum_weights.append(total)

    @classmethod
    def from_titles(cls, items: Sequence[tuple[str, str, float]]) -> Catalog:
        """From (item id, title, popularity) triples; titles that say nothing are left out."""
        return cls([Movie(i, t, spoken_title(t), p) for i, t, p in items if spoken_title(t)])

    def draw(self, rng: random.Random) -> Movie:
        return rng.choices(self.movies, cum_weights=self.cum_weights)[0]


@lru_cache(maxsize=2)
def movielens_catalog(cache_dir: str | None = None) -> Catalog:
    """MovieLens-100K titles, weighted by their rating counts (fetched on first use)."""
    from loopwise.tools import datasets

    data = datasets.movielens_100k(Path(cache_dir) if cache_dir else None)
    counts = dict(zip(data.item_ids, data.item_counts.tolist(), strict=True))
    return Catalog.from_titles([(i, data.items[i].title, float(counts.get(i, 0)) + 1.0) for i in data.item_ids])


@dataclass(frozen=True)
class Understanding:
    status: int
    item: str = ""  # what the user must get for success ("" when unhandled)
    domain: str = DOMAIN
    intent: str = INTENT
    slots: tuple[tuple[str, str], ...] = ()  # the interpretation's slots (default: item=<item>)

    @property
    def interpretation(self) -> str:
        return f"{self.intent}:{self.item}" if self.item else ""

    @property
    def slot_values(self) -> dict[str, str]:
        return dict(self.slots) if self.slots else ({"item": self.item} if self.item else {})


class Nlu:
    """Carrier phrase + exact spoken title -> ``play_movie:<id>``; anything else UNHANDLED."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def parse(self, utterance: str) -> Understanding:
        text = normalize(utterance)
        for carrier in NLU_CARRIERS:
            if text.startswith(carrier + " "):
                movie = self.catalog.by_spoken.get(text[len(carrier) + 1:])
                if movie is not None:
                    return Understanding(OK, movie.id)
        return Understanding(UNHANDLED)
