"""Sparse deltas in serving: the rows deltas changed, kept per base version as
immutable snapshots that `Rank` reads without locks (docs/methods.md §7).

Per (tenant, model) a `DeltaBook` keeps a `BaseState` for each of the last
``keep_bases`` base versions deltas were seen for: the current stream (one
trainer incarnation), the sequence applied, out-of-order deltas waiting for
their turn, and the `Snapshot` to serve. Rows in a delta are absolute values,
so the state of a stream is the union of its deltas' rows, the later one
winning (`Overlay.merge`).

- A delta is applied only as sequence ``applied + 1``; a later one waits in
  ``pending`` (at most ``max_pending``) until the gap is filled, an earlier
  one or a repeated one is a duplicate (ignored).
- A new stream on a base (a restarted trainer) replaces the current one from
  its sequence 1; deltas of a stream replaced before are ignored (``stale_stream``).
- Applying builds new overlays and a new `Snapshot`, then swaps the one
  reference `Rank` reads (`BaseState.snapshot`): a call sees one sequence, whole.
- `rollback` (the guard, `deltas_guard`) serves the base alone again and ignores
  the rest of that stream (``rolled_back``); a new stream or base starts afresh.

A replica reads the deltas topic from its start (`deltas_consumer`), so a
restarted one rebuilds the same overlays as one that never stopped.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from loopwise.modelstore.sparse import Delta, Layout, Rows, cross_ids, logit, sigmoid, sparse_logit

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Overlay:
    """Rows of one table that differ from the base: ascending ids, values [len(ids), dim], and
    ``member`` (bool [rows]: which ids are here), so a lookup searches only the ids that hit."""

    ids: np.ndarray
    values: np.ndarray
    member: np.ndarray

    @classmethod
    def empty(cls, rows: int, dim: int) -> Overlay:
        return cls(np.zeros(0, dtype=np.int64), np.zeros((0, dim), dtype=np.float32), np.zeros(rows, dtype=bool))

    def merge(self, rows: Rows) -> Overlay:
        """A new overlay with ``rows`` on top (theirs win); self is not changed."""
        ids = np.concatenate([self.ids, rows.ids])
        values = np.concatenate([self.values, rows.values])
        order = np.argsort(ids, kind="stable")  # equal ids: the older first
        ids, values = ids[order], values[order]
        last = np.ones(len(ids), dtype=bool)
        last[:-1] = ids[1:] != ids[:-1]
        ids, values = ids[last], values[last]
        member = self.member.copy()
        member[rows.ids] = True
        for a in (ids, values, member):
            a.setflags(write=False)
        return Overlay(ids, values, member)

    def lookup(self, base: np.ndarray | None, ids: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(base values, current values) of ``ids`` (any shape) -> [..., dim] each."""
        flat = ids.reshape(-1)
        old = base[flat] if base is not None else np.zeros((len(flat), dim), dtype=np.float32)
        new = old.copy()
        hit = np.flatnonzero(self.member[flat])
        if len(hit):
            new[hit] = self.values[np.searchsorted(self.ids, flat[hit])]
        return old.reshape(*ids.shape, dim), new.reshape(*ids.shape, dim)


@dataclass(frozen=True)
class Snapshot:
    """One consistent sparse state of a base version: what a `Rank` call scores with."""

    base_version: str
    stream: str
    sequence: int
    layout: Layout | None
    overlays: Mapping[str, Overlay] = field(default_factory=dict)

    def adjust(self, prob: np.ndarray, sparse: np.ndarray, base: Mapping[str, np.ndarray] | None
               ) -> np.ndarray:
        """``prob`` of the base version moved by what the deltas changed in the sparse terms."""
        if self.sequence == 0 or self.layout is None or not self.overlays:
            return prob
        layout, olds, news = self.layout, {}, {}
        for name in layout.tables():
            ids = sparse if name != "cross" else cross_ids(sparse, layout)
            table = base.get(name) if base is not None else None
            overlay = self.overlays.get(name)
            if overlay is None:
                olds[name] = news[name] = (table[ids] if table is not None
                                           else np.zeros((*ids.shape, layout.dim(name)), dtype=np.float32))
            else:
                olds[name], news[name] = overlay.lookup(table, ids, layout.dim(name))
        diff = (sparse_logit(sparse, layout, lambda n, _: news[n])
                - sparse_logit(sparse, layout, lambda n, _: olds[n]))
        return sigmoid(logit(prob) + diff)


EMPTY = Snapshot("", "", 0, None)


class BaseState:
    """The deltas of one base version (see the module doc)."""

    def __init__(self, base_version: str, max_pending: int) -> None:
        self.base_version = base_version
        self.max_pending = max_pending
        self.stream = ""
        self.applied = 0
        self.layout: Layout | None = None
        self.overlays: dict[str, Overlay] = {}
        self.pending: dict[int, Delta] = {}
        self.retired: set[str] = set()
        self.rolled_back = False
        self.snapshot: Snapshot = Snapshot(base_version, "", 0, None)

    def offer(self, delta: Delta) -> tuple[str, list[Delta]]:
        """Take one delta: (result, the deltas applied by it, in order). Results:
        applied, pending, duplicate, stale_stream, rolled_back, bad_layout, pending_full."""
        if delta.stream in self.retired:
            return "stale_stream", []
        if delta.stream != self.stream:
            if self.stream:
                self.retired.add(self.stream)
            self.stream, self.applied, self.layout, self.pending = delta.stream, 0, delta.layout, {}
            self.overlays, self.rolled_back = {}, False
            self.snapshot = Snapshot(self.base_version, delta.stream, 0, delta.layout)
        if self.rolled_back:
            return "rolled_back", []
        if delta.layout != self.layout:
            return "bad_layout", []
        if delta.sequence <= self.applied or delta.sequence in self.pending:
            return "duplicate", []
        if delta.sequence > self.applied + 1:
            if len(self.pending) >= self.max_pending:
                return "pending_full", []
            self.pending[delta.sequence] = delta
            return "pending", []
        done = [delta]
        while self.applied + len(done) + 1 in self.pending:
            done.append(self.pending.pop(self.applied + len(done) + 1))
        overlays = dict(self.overlays)
        for d in done:
            for name, rows in d.rows.items():
                empty = Overlay.empty(self.layout.rows(name), self.layout.dim(name))
                overlays[name] = overlays.get(name, empty).merge(rows)
        self.overlays, self.applied = overlays, done[-1].sequence
        self.snapshot = Snapshot(self.base_version, self.stream, self.applied, self.layout, overlays)
        return "applied", done

    def rollback(self) -> None:
        self.rolled_back = True
        self.pending = {}
        self.snapshot = Snapshot(self.base_version, self.stream, 0, self.layout)


class DeltaBook:
    """The base states of one (tenant, model), the newest ``keep_bases``."""

    def __init__(self, keep_bases: int = 4, max_pending: int = 10_000) -> None:
        self.keep_bases = keep_bases
        self.max_pending = max_pending
        self.bases: OrderedDict[str, BaseState] = OrderedDict()

    def state(self, base_version: str, create: bool = False) -> BaseState | None:
        state = self.bases.get(base_version)
        if state is None and create:
            state = self.bases[base_version] = BaseState(base_version, self.max_pending)
            while len(self.bases) > self.keep_bases:
                self.bases.popitem(last=False)
        return state

    def snapshot(self, version: str) -> Snapshot:
        state = self.bases.get(version)
        return state.snapshot if state is not None else EMPTY


class DeltaRegistry:
    """Every (tenant, model)'s `DeltaBook`. `offer` is called from one thread at a
    time (the consumer's); `snapshot` from any, lock-free (one reference read)."""

    def __init__(self, tenants: tuple[str, ...] | frozenset[str], *, keep_bases: int = 4,
                 max_pending: int = 10_000) -> None:
        self.tenants = frozenset(tenants)
        self.keep_bases = keep_bases
        self.max_pending = max_pending
        self.books: dict[tuple[str, str], DeltaBook] = {}
        self._lock = threading.Lock()  # offers and rollbacks, never Rank

    def snapshot(self, tenant: str, model: str, version: str) -> Snapshot:
        book = self.books.get((tenant, model))
        return book.snapshot(version) if book is not None else EMPTY

    def serving(self, loaded) -> Snapshot:  # noqa: ANN001 - a models.LoadedModel
        """What ``loaded`` scores with: its base's snapshot when the deltas fit it, else `EMPTY`."""
        snap = self.snapshot(loaded.tenant, loaded.model, loaded.version)
        return snap if snap.sequence and loaded.fits(snap.layout) else EMPTY

    def rolled_back(self, tenant: str, model: str, version: str) -> bool:
        book = self.books.get((tenant, model))
        state = book.bases.get(version) if book is not None else None
        return bool(state is not None and state.rolled_back)

    def offer(self, delta: Delta) -> tuple[str, list[Delta]]:
        if delta.tenant not in self.tenants:
            return "other_tenant", []
        with self._lock:
            key = (delta.tenant, delta.model)
            book = self.books.get(key)
            if book is None:
                book = self.books[key] = DeltaBook(self.keep_bases, self.max_pending)
            state = book.state(delta.base_version, create=True)
            assert state is not None
            return state.offer(delta)

    def rollback(self, tenant: str, model: str, version: str, stream: str) -> bool:
        """Serve ``version`` without the deltas of ``stream``; False when that is not what applies now."""
        with self._lock:
            book = self.books.get((tenant, model))
            state = book.state(version) if book is not None else None
            if state is None or state.stream != stream or state.rolled_back:
                return False
            state.rollback()
            return True

    def status(self) -> dict[tuple[str, str, str], dict]:
        """{(tenant, model, base): {stream, sequence, pending, rolled_back}}."""
        out = {}
        for (tenant, model), book in list(self.books.items()):
            for base, s in list(book.bases.items()):
                out[(tenant, model, base)] = {"stream": s.stream, "sequence": s.snapshot.sequence,
                                              "applied": s.applied, "pending": len(s.pending),
                                              "rolled_back": s.rolled_back}
        return out
