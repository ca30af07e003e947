"""Event-time windows over a key -> state table (a Faust table in the miner,
a dict in tests and benchmarks).

The watermark is the largest event time seen, advanced by wall-clock time
while the stream is idle (so windows close in quiet periods too, while a
fast replay of old events still closes them by the events' own clock).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import MutableMapping

from loopwise.v1 import events_pb2, learning_pb2

from .attribution import Attribution, Outputs


class Windows:
    def __init__(self, attribution: Attribution, table: MutableMapping[bytes, bytes]) -> None:
        self.attribution = attribution
        self.table = table
        self._due: list[tuple[int, bytes]] = []
        self.max_event_ms = 0
        self._wall_at_max = time.monotonic()

    def rebuild(self) -> None:
        """Re-index the table's states (after recovery from the changelog); the
        watermark resumes from the newest event time they hold."""
        self._due = []
        newest = self.max_event_ms
        for key, raw in list(self.table.items()):
            state = learning_pb2.AttributionState.FromString(raw)
            self._push(key, state)
            newest = max(newest, state.impression.client_time_ms,
                         max((fb.client_time_ms for fb in state.feedback), default=0))
        if newest > self.max_event_ms:
            self.max_event_ms = newest
            self._wall_at_max = time.monotonic()

    def watermark(self, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        if self.max_event_ms == 0:
            return 0
        return self.max_event_ms + int((now - self._wall_at_max) * 1000)

    def process(self, key: bytes, event: events_pb2.Event) -> Outputs:
        raw = self.table.get(key)
        state = learning_pb2.AttributionState.FromString(raw) if raw is not None else None
        new, out = self.attribution.on_event(state, event)
        self._store(key, new)
        if event.client_time_ms > self.max_event_ms:
            self.max_event_ms = event.client_time_ms
            self._wall_at_max = time.monotonic()
        return out

    def advance(self, watermark: int | None = None) -> Outputs:
        """Close every window (and forget every closed state) due by ``watermark``."""
        watermark = self.watermark() if watermark is None else watermark
        out = Outputs()
        while self._due and self._due[0][0] <= watermark:
            _, key = heapq.heappop(self._due)
            raw = self.table.get(key)
            if raw is None:
                continue
            state = learning_pb2.AttributionState.FromString(raw)
            if self._due_ms(state) > watermark:  # superseded entry; a newer one is queued
                continue
            new, closing = self.attribution.close(state)
            out.extend(closing)
            self._store(key, new)
        return out

    def pending(self) -> int:
        return len(self.table)

    @staticmethod
    def _due_ms(state: learning_pb2.AttributionState) -> int:
        return state.expires_ms if state.closed else state.deadline_ms

    def _push(self, key: bytes, state: learning_pb2.AttributionState) -> None:
        heapq.heappush(self._due, (self._due_ms(state), key))

    def _store(self, key: bytes, state: learning_pb2.AttributionState | None) -> None:
        if state is None:
            self.table.pop(key, None)
            return
        self.table[key] = state.SerializeToString()
        self._push(key, state)
