"""Pending shows: the trainer's next cross-table steps, taken at once by the replica
that showed the candidates (docs/methods.md §6-§7).

In the fake-negative feedback mode every shown candidate trains at once as a
negative. Its way to serving is impression → miner → example → trainer step →
delta → replica: ~0.3-1 s, in which a busy user's next requests show many of
the same items again, scored as if they had not been shown. The hashed
user × item cross table is where the model remembers a pair it showed, and
its first step on a pair is the largest: row-wise Adagrad from a zero
accumulator moves a row by ``trainer_cross_lr`` whatever the gradient.

So the replica that answers `Rank` keeps, per (tenant, model), the cross ids
of what it showed that its deltas do not cover yet, and scores a candidate
as the trainer will once they do: for each pending show of one of its cross
rows, the fake negative's Adagrad step on that row (gradient the current
probability; the accumulator: the squared gradients of this replica's shows
of the row that deltas covered, on this base and the ones before it, as the
trainer's accumulators go on from version to version; then the pending
ones'), applied to the logit in order. A show is covered, and dropped, when
an applied delta's ``impressions_through_ms`` (the newest impression its
stream's tables learned, the base version's training included) reaches the
show's time; at the latest after ``pending_max_age_s`` (a trainer that stopped
sending deltas). Only on top of live deltas (a `Snapshot` with a sequence):
a version without deltas, or whose deltas the guard rolled back, serves as it
is.

What it does not know: other replicas' shows (their deltas bring them), the
trainer's accumulator for rows trained before this replica started or on
other replicas' shows (its own sum starts at 0, so such a row steps as if new),
clicks (a clicked pair is a fake negative first, as in the trainer, until the
click's positive duplicate arrives in a delta), and the factor and
first-order tables (their steps go through the deltas only).

Writes (`shown`, on the event loop) and prunes (`covered`, on the delta
thread) take a lock; `adjust` reads counts without it (a count one show off
for one call at worst). Counted: pending shows held, shows dropped by reason,
candidates adjusted.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from loopwise.modelstore.sparse import Layout, cross_ids, logit, sigmoid

MAX_STEPS = 8  # at most this many pending shows of one row are stepped through


@dataclass
class _Book:
    """The pending shows of one (tenant, model) on one base version and layout."""

    base_version: str
    layout: Layout
    counts: np.ndarray  # int32 [cross rows]: pending shows per cross id
    acc: np.ndarray  # float32 [cross rows]: the squared gradients of this replica's covered shows
    shows: deque = field(default_factory=deque)  # (ms, ids int64 [n * pairs], g^2 [n * pairs]) in show order
    held: int = 0  # cross ids in ``shows``


class PendingShows:
    """Per (tenant, model): the cross ids this replica showed that its deltas do not cover yet."""

    def __init__(self, step: float, max_age_s: float = 10.0, max_held: int = 1_000_000, metrics=None) -> None:  # noqa: ANN001
        self.step, self.max_age_ms, self.max_held = step, int(max_age_s * 1000), max_held
        self.metrics = metrics
        self.books: dict[tuple[str, str], _Book] = {}
        self._lock = threading.Lock()

    def _book(self, tenant: str, model: str, base_version: str, layout: Layout) -> _Book:
        book = self.books.get((tenant, model))
        if book is None or book.layout != layout:
            rows = layout.rows("cross")
            book = _Book(base_version, layout, np.zeros(rows, dtype=np.int32), np.zeros(rows, dtype=np.float32))
            self.books[(tenant, model)] = book
        elif book.base_version != base_version:
            # A new base: its deltas cover what it has not learned, so the old base's shows
            # are no longer pending; the accumulator goes on, as the trainer's does from one
            # version to the next (a warm start keeps each row's Adagrad state).
            self._drop(tenant, model, book, lambda ms, b: True, "new_base")
            book.base_version = base_version
        return book

    def adjust(self, tenant: str, model: str, base_version: str, layout: Layout | None, prob: np.ndarray,
               sparse: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(``prob`` with the pending shows' steps, the candidates' cross ids [n, pairs] or None
        when the layout has no cross table)."""
        if layout is None or "cross" not in layout.tables():
            return prob, None
        ids = cross_ids(sparse, layout)
        book = self.books.get((tenant, model))
        if book is None or book.base_version != base_version or book.layout != layout or not book.held:
            return prob, ids
        counts = book.counts[ids]  # [n, pairs]
        if not counts.any():
            return prob, ids
        acc = book.acc[ids].astype(np.float64)
        z = logit(prob)
        for t in range(1, min(int(counts.max()), MAX_STEPS) + 1):
            on = counts >= t
            g = np.where(on, sigmoid(z).astype(np.float64)[:, None], 0.0)
            acc += g * g
            z = z - (self.step * g / np.sqrt(np.where(on, acc, 1.0))).sum(axis=1)
        if self.metrics is not None:
            self.metrics.pending_adjusted.inc(int(counts.any(axis=1).sum()))
        return sigmoid(z), ids

    def shown(self, tenant: str, model: str, base_version: str, layout: Layout | None, ids: np.ndarray | None,
              prob: np.ndarray, at_ms: int) -> None:
        """The candidates of one answered call (their cross ids and served probabilities), shown at ``at_ms``."""
        if layout is None or ids is None or not ids.size:
            return
        flat = ids.reshape(-1).astype(np.int64)
        g = np.repeat(prob.astype(np.float32), ids.shape[1])
        with self._lock:
            book = self._book(tenant, model, base_version, layout)
            np.add.at(book.counts, flat, 1)
            book.shows.append((at_ms, flat, g * g))
            book.held += len(flat)
            self._drop(tenant, model, book, lambda ms, b: b.held > self.max_held, "overflow")
        self._gauge()

    def covered(self, tenant: str, model: str, base_version: str, through_ms: int, now_ms: int | None = None) -> None:
        """A delta on ``base_version`` applied: shows up to ``through_ms`` are in the tables now;
        shows older than the max age are dropped too."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        with self._lock:
            book = self.books.get((tenant, model))
            if book is None:
                return
            if book.base_version == base_version and through_ms > 0:
                self._drop(tenant, model, book, lambda ms, b: ms <= through_ms, "covered")
            self._drop(tenant, model, book, lambda ms, b: ms < now_ms - self.max_age_ms, "aged")
        self._gauge()

    def _drop(self, tenant: str, model: str, book: _Book, drop, reason: str) -> None:  # noqa: ANN001
        dropped = 0
        while book.shows and drop(book.shows[0][0], book):
            _, flat, g2 = book.shows.popleft()
            np.subtract.at(book.counts, flat, 1)
            np.add.at(book.acc, flat, g2)  # in the trainer's accumulator from now on
            book.held -= len(flat)
            dropped += 1
        if dropped and self.metrics is not None:
            self.metrics.pending_dropped.labels(tenant, model, reason).inc(dropped)

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.pending_shows.set(sum(len(b.shows) for b in self.books.values()))
