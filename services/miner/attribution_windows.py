"""Event-time windows over a key -> state table (a Faust table in the miner,
a dict in tests and benchmarks).

Watermarks are kept per input partition, not one for the whole app: the
impressions and events topics are co-partitioned by request, so a request's
window may close once *both* streams of its partition are past the deadline
(the minimum of their watermarks). A partition that lags (a consumer
backlog, a slow producer) then holds back only its own windows; one that
runs ahead (a fast replay) cannot close another's windows before their
feedback has been read.

A stream's watermark is the largest *arrival time* it has delivered
(`arrival_ms`): an event's own time, but never later than when the collector
received it. A client whose clock runs minutes fast (inside what the
collector accepts) then cannot push a partition's watermark past its other
users' windows and close them before their feedback arrives, while a replay
or a backlog of old events still moves it by the events' own clock.
Deadlines stay on each request's own clock (its impression's time plus the
window): a fast client's windows close that much later, with its own
feedback in them. Each record whose client time is more than
``AHEAD_MS`` past its received time is reported to ``on_ahead`` (the miner
counts them: ``loopwise_miner_clock_ahead_total``).

The watermark is advanced by wall-clock time once the stream has delivered
nothing for ``idle_s`` and has no backlog (``caught_up``: the consumer read
up to the partition's high-water mark; a starved process is not an idle
stream), so windows close in quiet periods too, while a backlog or a fast
replay of old events closes them by the events' own clock only. A stream of
the partition that has not delivered anything yet counts as one that
delivered the partition's first arrival time when the partition was first
seen: it holds the partition's windows back until it speaks or has been idle
for ``idle_s``. After recovery, before a partition has delivered anything,
its watermark resumes from the newest arrival time its recovered states hold.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, MutableMapping

from loopwise.v1 import events_pb2, learning_pb2

from .attribution import Attribution, Outputs

AHEAD_MS = 1000  # a client clock this far ahead of the collector's is counted


def arrival_ms(event: events_pb2.Event) -> int:
    """The time ``event`` may move a watermark to: its client time, clamped to its
    ``received_time_ms`` when the collector (or inference) stamped one."""
    received = event.received_time_ms
    return min(event.client_time_ms, received) if received > 0 else event.client_time_ms


class Windows:
    def __init__(self, attribution: Attribution, table: MutableMapping[bytes, bytes],
                 topics: tuple[str, ...] = (), idle_s: float = 0.0,
                 caught_up: Callable[[str, int], bool] | None = None,
                 on_ahead: Callable[[int], None] | None = None) -> None:
        self.attribution = attribution
        self.on_ahead = on_ahead
        self.caught_up = caught_up
        self.table = table
        self.topics = topics
        self.idle_s = idle_s
        self._due: dict[int, list[tuple[int, bytes]]] = {}
        # (topic, partition) -> [newest event time, monotonic time of its last record]
        self._streams: dict[tuple[str, int], list[float]] = {}
        # partition -> [newest event time in recovered states, monotonic time of the rebuild]
        self._recovered: dict[int, list[float]] = {}

    def rebuild(self) -> None:
        """Re-index the table's states (after recovery from the changelog)."""
        self._due = {}
        now = time.monotonic()
        for key, raw in list(self.table.items()):
            state = learning_pb2.AttributionState.FromString(raw)
            self._push(key, state)
            newest = max(arrival_ms(state.impression), max((arrival_ms(fb) for fb in state.feedback), default=0))
            seed = self._recovered.setdefault(state.partition, [0, now])
            if newest > seed[0]:
                seed[0], seed[1] = newest, now

    # -- watermarks -----------------------------------------------------------------------
    def observe(self, topic: str, partition: int, event_ms: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        stream = self._streams.get((topic, partition))
        if stream is None:
            for other in self.topics:  # the partition's other inputs: silent so far
                self._streams.setdefault((other, partition), [event_ms, now])
            self._streams[(topic, partition)] = [event_ms, now]
            return
        stream[1] = now
        if event_ms > stream[0]:
            stream[0] = event_ms

    def watermark(self, partition: int | None = None, now: float | None = None) -> int:
        """The watermark of one partition (``None``: the most advanced partition, for metrics)."""
        now = time.monotonic() if now is None else now
        if partition is None:
            parts = {p for _, p in self._streams} | set(self._recovered)
            return max((self.watermark(p, now) for p in parts), default=0)
        idle, caught_up = self.idle_s, self.caught_up
        marks = [t + max(now - wall - idle, 0.0) * 1000 if caught_up is None or caught_up(topic, p) else t
                 for (topic, p), (t, wall) in self._streams.items() if p == partition and t]
        if not marks:
            seed = self._recovered.get(partition)
            marks = [seed[0] + (now - seed[1]) * 1000] if seed and seed[0] else [0]
        return int(min(marks))

    def lag_ms(self, now: float | None = None) -> int:
        """How far the slowest partition's watermark trails the most advanced one."""
        now = time.monotonic() if now is None else now
        parts = {p for _, p in self._streams} | set(self._recovered)
        marks = [self.watermark(p, now) for p in parts]
        return int(max(marks) - min(marks)) if marks else 0

    # -- the stream -----------------------------------------------------------------------
    def process(self, key: bytes, event: events_pb2.Event, topic: str = "", partition: int = 0) -> Outputs:
        raw = self.table.get(key)
        state = learning_pb2.AttributionState.FromString(raw) if raw is not None else None
        new, out = self.attribution.on_event(state, event)
        if new is not None:
            new.partition = partition
        self._store(key, new)
        arrival = arrival_ms(event)
        if event.client_time_ms - arrival > AHEAD_MS and self.on_ahead is not None:
            self.on_ahead(event.client_time_ms - arrival)
        self.observe(topic, partition, arrival)
        return out

    def advance(self, watermark: int | None = None, limit: int | None = None) -> Outputs:
        """Close every window (and forget every closed state) due by its partition's watermark
        (or by ``watermark`` for all partitions); at most ``limit`` states per call, so a
        caller can yield between chunks (`more` says whether any are left due)."""
        out = Outputs()
        budget = limit if limit is not None else -1
        for partition, due in self._due.items():
            mark = self.watermark(partition) if watermark is None else watermark
            while due and due[0][0] <= mark and budget != 0:
                _, key = heapq.heappop(due)
                raw = self.table.get(key)
                if raw is None:
                    continue
                state = learning_pb2.AttributionState.FromString(raw)
                if self._due_ms(state) > mark:  # superseded entry; a newer one is queued
                    continue
                budget -= 1
                new, closing = self.attribution.close(state)
                out.extend(closing)
                self._store(key, new)
        return out

    def more(self, watermark: int | None = None) -> bool:
        """Whether some window is due (possibly a superseded heap entry)."""
        return any(due and due[0][0] <= (self.watermark(p) if watermark is None else watermark)
                   for p, due in self._due.items())

    def pending(self) -> int:
        return len(self.table)

    @staticmethod
    def _due_ms(state: learning_pb2.AttributionState) -> int:
        return state.expires_ms if state.closed else state.deadline_ms

    def _push(self, key: bytes, state: learning_pb2.AttributionState) -> None:
        heapq.heappush(self._due.setdefault(state.partition, []), (self._due_ms(state), key))

    def _store(self, key: bytes, state: learning_pb2.AttributionState | None) -> None:
        if state is None:
            self.table.pop(key, None)
            return
        self.table[key] = state.SerializeToString()
        self._push(key, state)
