"""Guard rails for deltas (Ekko-style rollback): deltas skip the full validation
gate, so each replica judges them online against their own base.

A `Rank` call scored with deltas (sequence > 0) is remembered (`remember`,
the newest ``remember`` calls): its candidate ids, the base version's own
probability (the graph's ``prob``, computed anyway) and the served one. When a
label for one of its candidates arrives (a `PredictionError` on
``loopwise.errors.v1``, read from its end by every replica), both scores are
judged on it: the log loss of the deltas minus the base's, per (tenant, model,
version, stream), over the newest ``window`` labels. A paired comparison on
the same impressions, so the traffic's own drift cancels out. When at least
``min_labels`` are in and the deltas' mean log loss is worse than the base's
by more than ``margin`` (nats), with both kinds of label among them (at least
a tenth of ``min_labels`` each), the replica serves the base alone again and
ignores that stream (`DeltaRegistry.rollback`), logs ``deltas rolled back``
and counts ``loopwise_inference_delta_rollbacks_total``; the next full version
or trainer stream starts afresh. ``loopwise_inference_delta_online_logloss{scorer}``
shows both figures.

Labels arrive when the miner emits them: a click at once, a negative when its
attribution window closes (or at once in the fake-negative mode); calls
older than the remembered ones are not judged.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict, deque
from dataclasses import dataclass

import numpy as np
from google.protobuf.message import DecodeError

from loopwise.v1 import learning_pb2

from .deltas import DeltaRegistry, Snapshot
from .metrics import InferenceMetrics

log = logging.getLogger(__name__)

EPS = 1e-6


@dataclass(frozen=True)
class Served:
    tenant: str
    model: str
    version: str
    stream: str
    sequence: int
    ids: tuple[str, ...]
    base: np.ndarray  # the version's own probability per candidate
    served: np.ndarray  # with the deltas


class _Window:
    """The newest ``size`` (base, deltas, label) log losses with their running sums."""

    def __init__(self, size: int) -> None:
        self.pairs: deque[tuple[float, float, float]] = deque()
        self.size, self.base, self.deltas, self.positives = size, 0.0, 0.0, 0.0

    def add(self, base: float, deltas: float, y: float) -> None:
        self.pairs.append((base, deltas, y))
        self.base += base
        self.deltas += deltas
        self.positives += y
        if len(self.pairs) > self.size:
            b, d, old = self.pairs.popleft()
            self.base -= b
            self.deltas -= d
            self.positives -= old


def _logloss(p: float, y: float) -> float:
    p = min(max(p, EPS), 1 - EPS)
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


class DeltaGuard:
    def __init__(self, registry: DeltaRegistry, metrics: InferenceMetrics, *, margin: float = 0.02,
                 min_labels: int = 200, window: int = 1_000, remember: int = 10_000) -> None:
        self.registry, self.metrics = registry, metrics
        self.margin, self.min_labels, self.window, self.capacity = margin, min_labels, window, remember
        self._served: OrderedDict[str, Served] = OrderedDict()
        self._windows: dict[tuple[str, str, str, str], _Window] = {}

    def remember(self, request_id: str, tenant: str, model: str, version: str, snap: Snapshot, ids,  # noqa: ANN001
                 base: np.ndarray, served: np.ndarray) -> None:
        """A call scored with ``snap`` (nothing to judge when its sequence is 0)."""
        if snap.sequence == 0 or not request_id:
            return
        self._served[request_id] = Served(tenant, model, version, snap.stream, snap.sequence, tuple(ids), base,
                                          served)
        while len(self._served) > self.capacity:
            self._served.popitem(last=False)

    def label(self, error: learning_pb2.PredictionError) -> bool:
        """Judge one label; True when it rolled deltas back."""
        s = self._served.get(error.request_id)
        if s is None or error.tenant != s.tenant:
            return False
        try:
            i = s.ids.index(error.candidate_id)
        except ValueError:
            return False
        y = float(error.label > 0)
        key = (s.tenant, s.model, s.version, s.stream)
        win = self._windows.get(key)
        if win is None:
            win = self._windows[key] = _Window(self.window)
            for old in [k for k in self._windows if k[:2] == key[:2] and k != key]:
                del self._windows[old]
        win.add(_logloss(float(s.base[i]), y), _logloss(float(s.served[i]), y), y)
        n = len(win.pairs)
        base_ll, delta_ll = win.base / n, win.deltas / n
        self.metrics.delta_online_logloss.labels(s.tenant, s.model, "base").set(base_ll)
        self.metrics.delta_online_logloss.labels(s.tenant, s.model, "deltas").set(delta_ll)
        # Both kinds of label must be in (a click comes at once, a negative when its window
        # closes): judged on one kind alone, a delta that moves every score one way would look
        # better or worse than it is.
        both = min(win.positives, n - win.positives) >= max(1, self.min_labels // 10)
        if n < self.min_labels or not both or delta_ll - base_ll <= self.margin:
            return False
        if not self.registry.rollback(s.tenant, s.model, s.version, s.stream):
            return False
        self.metrics.delta_rollbacks.labels(s.tenant, s.model).inc()
        log.error("deltas rolled back: online log loss worse than the base version's", extra={
            "tenant": s.tenant, "model": s.model, "version": s.version, "stream": s.stream,
            "sequence": s.sequence, "labels": n, "logloss_base": round(base_ll, 5),
            "logloss_deltas": round(delta_ll, 5), "margin": self.margin})
        del self._windows[key]
        return True

    async def handle(self, records: list) -> None:
        """A batch of the errors topic (`deltas_consumer.TopicReader`)."""
        for record in records:
            try:
                error = learning_pb2.PredictionError.FromString(record.value or b"")
            except DecodeError:
                continue
            self.label(error)
