"""The injected preference shift of bench/error_memory.py, and how fast AUC recovers from it.

`inject_shift` takes the replay stream of bench/learning.py and, from request
``at`` on, changes what one segment of users likes, as `loopwise demo` does
(`loopwise.tools.demo.shift`): users of one occupation (``student``, a fifth
of the users) now click a movie of other genres (horror, thriller, sci-fi,
crime) instead of the one they rated. A segment request that had a click
keeps one click, moved to its first candidate of those genres (none when no
such candidate was drawn); its originally liked movie becomes a negative. Everything else, and every request
before ``at``, is unchanged: the base model was right about the segment
until the shift and is wrong about it after, in one region of its feature
space, which is what an error memory is for.

`recovery_s` is the seconds after the shift until the AUC of the segment's
rows, over a sliding run of its requests, is back at its level just before
the shift.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from _learning_stream import Stream

from loopwise.ranking_metrics import auc
from loopwise.tools.demo.shift import SEGMENT_OCCUPATION, TARGET_GENRES, in_segment, shifted_choice


@dataclass(frozen=True)
class Shift:
    at: int  # first shifted request
    segment: np.ndarray  # (n,) bool: the request's user is in the segment
    moved: int  # clicks moved to a target-genre candidate
    dropped: int  # clicks lost (no target-genre candidate in the request)

    def rows(self, k: int) -> np.ndarray:
        """(n * k,) bool: the row belongs to a segment request."""
        return np.repeat(self.segment, k)

    def describe(self) -> str:
        return (f"from request {self.at}: users with occupation {SEGMENT_OCCUPATION!r} "
                f"({int(self.segment.sum())} requests) click {'/'.join(TARGET_GENRES)} instead "
                f"({self.moved} clicks moved, {self.dropped} dropped)")


def inject_shift(stream: Stream, at: int) -> tuple[Stream, Shift]:
    """A copy of ``stream`` whose segment prefers the target genres from request ``at`` on."""
    data = stream.data
    segment = np.array([in_segment(data.users[str(u)].occupation) for u in stream.users().tolist()])
    label = stream.label.copy()
    moved = dropped = 0
    for i in np.flatnonzero(segment[at:]) + at:
        if not label[i].any():
            continue
        label[i] = 0.0
        choice = shifted_choice([data.items[item].genre for item in stream.item_ids(i)])
        if choice is not None:
            label[i, choice] = 1.0
            moved += 1
        else:
            dropped += 1
    return dataclasses.replace(stream, label=label), Shift(at=at, segment=segment, moved=moved, dropped=dropped)


def rolling_auc(y: np.ndarray, score: np.ndarray, request_of_row: np.ndarray, requests: np.ndarray,
                width: int) -> tuple[np.ndarray, np.ndarray]:
    """AUC over runs of ``width`` consecutive requests of ``requests`` (sorted request ids), one
    run every ``width // 2`` requests: (AUC of each run, last request of each run)."""
    aucs, ends = [], []
    step = max(width // 2, 1)
    for a in range(0, max(len(requests) - width + 1, 1), step):
        run = requests[a:a + width]
        rows = np.isin(request_of_row, run)
        ok = rows & np.isfinite(score)
        aucs.append(auc(y[ok], score[ok]))
        ends.append(int(run[-1]))
    return np.asarray(aucs, dtype=np.float64), np.asarray(ends, dtype=np.int64)


def recovery_s(y: np.ndarray, score: np.ndarray, k: int, shift: Shift, sent_at: np.ndarray, width: int = 100
               ) -> dict[str, float | None]:
    """Seconds from the shift's first request until the segment's sliding AUC (runs of ``width``
    segment requests) is back at its level over the ``width`` segment requests before the shift.

    ``sent_at``: (n,) wall-clock seconds each request was sent. None when it never recovers
    in the replay (``horizon_s``: how long was watched)."""
    request_of_row = np.repeat(np.arange(len(shift.segment)), k)
    seg = np.flatnonzero(shift.segment)
    before, after = seg[seg < shift.at], seg[seg >= shift.at]
    if len(before) < width or len(after) < width:
        return {"recovery_s": None, "pre_shift_auc": None, "post_shift_min_auc": None, "horizon_s": None}
    rows = np.isin(request_of_row, before[-width:])
    ok = rows & np.isfinite(score)
    level = auc(y[ok], score[ok])
    aucs, ends = rolling_auc(y, score, request_of_row, after, width)
    t0 = float(sent_at[shift.at])
    horizon = float(sent_at[after[-1]]) - t0
    back = np.flatnonzero(aucs >= level)
    return {"recovery_s": round(float(sent_at[ends[back[0]]]) - t0, 2) if len(back) else None,
            "pre_shift_auc": round(float(level), 4), "post_shift_min_auc": round(float(np.nanmin(aucs)), 4),
            "horizon_s": round(horizon, 2)}
