"""The demo's injected preference shift (and bench/error_memory.py's): one segment of users
suddenly prefers other items.

From the shift on, users of one occupation (``student``: a fifth of the
MovieLens users) click a movie of other genres (horror, thriller, sci-fi,
crime) instead of the one they rated: the first such candidate of their
request; with none among the candidates, they reject the rated movie. The
served model was right about them before and is wrong after, in one region
of its feature space: what the error memory corrects before the next
version is trained.
"""

from __future__ import annotations

from collections.abc import Sequence

SEGMENT_OCCUPATION = "student"
TARGET_GENRES = ("Horror", "Thriller", "Sci-Fi", "Crime")


def in_segment(occupation: str) -> bool:
    return occupation == SEGMENT_OCCUPATION


def shifted_choice(genres: Sequence[str]) -> int | None:
    """Index of the candidate a shifted user clicks (the first of a target genre), None if none."""
    return next((i for i, genre in enumerate(genres) if genre in TARGET_GENRES), None)
