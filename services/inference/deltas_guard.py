"""Guard rails for deltas (Ekko-style rollback): deltas skip the full validation
gate, so each replica judges them online against their own base.

A `Rank` call scored with deltas (sequence > 0) is remembered (`remember`,
the newest ``remember`` calls): its candidate ids, the base version's own
probability (the graph's ``prob``, computed anyway) and the served one. When a
label for one of its candidates arrives (a `PredictionError` on
``loopwise.errors.v1``, read by every replica's `errors_reader.ErrorsReader`),
it is kept with the call; once every candidate of the call is labelled, the
call's (base, served, label) rows join its (tenant, model, version, stream)'s
window of the newest ``window`` labels. Whole calls only: a click's label comes
at once and its call's negatives when the attribution window closes, so judged
label by label the newest clicks meet only older calls' negatives, and deltas,
which move every score as they learn, were compared across time instead of
within calls (bench/learning.py's replay, 12,000 requests: the guard saw AUC
0.65 for the deltas against 0.90 for the base on its labels and rolled 3
streams back in two minutes, while on the final labels the calls it judged were served at
0.71 with the deltas against 0.66 by the base).
Every tenth of ``min_labels`` new labels the AUC of both on those labels is
compared within calls (`loopwise.ranking_metrics.judge_auc`: a (positive,
negative) pair counts when both were candidates of one call; pooled when fewer
than 10 calls hold both classes, as with calls of one candidate): a paired
comparison on the same impressions, so the traffic's own drift cancels out, and
so does the deltas' own drift as they learn (they move every score; pooled over
the window's calls, scores that rise or fall from call to call read as ranking
worse than the base, which does not move). When at least ``min_labels`` are in, with both kinds of
label among them (at least a tenth of ``min_labels`` each), and the deltas'
AUC is below the base's by more than ``margin`` plus ``z`` standard errors of
the paired difference (across calls: the judgement is
repeated every few labels, so chance alone must not trip it; with 200 labels
and no such allowance, 4 of 10 delta streams on bench/learning.py --quick were
rolled back on differences of 1-2 AUC points while deltas lifted the run's
request AUC by a point), the replica serves the base alone again and ignores that stream (`DeltaRegistry.rollback`), logs ``deltas
rolled back`` and counts ``loopwise_inference_delta_rollbacks_total``; the
next full version or trainer stream starts afresh.
``loopwise_inference_delta_online_auc{scorer}`` shows both figures.

AUC, not log loss: the trainer learns with inverse-propensity weights, so a
better ranker is not calibrated to the observed clicks (on bench/learning.py
--quick a first, log-loss guard rolled back every delta stream: observed log
loss 0.02 nats worse than the base's, while the same deltas lifted AUC from
0.744 to 0.870 in process).

Labels arrive when the miner emits them: a click (or a reject) at once, the
other candidates' negatives when the attribution window closes, in either
feedback mode; calls older than the remembered ones, and calls one of whose
labels never comes, are not judged. A label delivered again counts once.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from dataclasses import dataclass

import numpy as np

from loopwise.ranking_metrics import judge_auc
from loopwise.v1 import learning_pb2

from .deltas import DeltaRegistry, Snapshot
from .metrics import InferenceMetrics

log = logging.getLogger(__name__)

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
    labels: np.ndarray  # per candidate, its label once known (NaN until then)


class _Window:
    """The newest ``size`` labelled (base score, served score, label, call number) rows."""

    def __init__(self, size: int) -> None:
        self.rows: deque[tuple[float, float, float, int]] = deque(maxlen=size)
        self.new = 0  # labels since the last judgement
        self.calls = 0

    def add(self, base: np.ndarray, served: np.ndarray, y: np.ndarray) -> None:
        """One whole call's candidates."""
        self.calls += 1
        self.rows.extend(zip(base.tolist(), served.tolist(), y.tolist(), [self.calls] * len(y), strict=True))
        self.new += len(y)

    def compare(self) -> tuple[float, float, float, int]:
        """(AUC of the base, AUC of the deltas, both within calls, standard error of their
        difference, positives)."""
        a = np.asarray(self.rows, dtype=np.float64)
        return (*judge_auc(a[:, 2] > 0, a[:, 0], a[:, 1], a[:, 3])[:3], int(a[:, 2].sum()))


class DeltaGuard:
    def __init__(self, registry: DeltaRegistry, metrics: InferenceMetrics, *, margin: float = 0.01, z: float = 3.0,
                 min_labels: int = 200, window: int = 1_000, remember: int = 10_000) -> None:
        self.registry, self.metrics = registry, metrics
        self.margin, self.z, self.min_labels, self.window, self.capacity = margin, z, min_labels, window, remember
        self._served: OrderedDict[str, Served] = OrderedDict()
        self._windows: dict[tuple[str, str, str, str], _Window] = {}

    def remember(self, request_id: str, tenant: str, model: str, version: str, snap: Snapshot, ids,  # noqa: ANN001
                 base: np.ndarray, served: np.ndarray) -> None:
        """A call scored with ``snap`` (nothing to judge when its sequence is 0)."""
        if snap.sequence == 0 or not request_id:
            return
        self._served[request_id] = Served(tenant, model, version, snap.stream, snap.sequence, tuple(ids), base,
                                          served, np.full(len(base), np.nan))
        while len(self._served) > self.capacity:
            self._served.popitem(last=False)

    def label(self, error: learning_pb2.PredictionError) -> bool:
        """Judge one label; True when it rolled deltas back."""
        s = self._served.get(error.request_id)
        if s is None or error.tenant != s.tenant:
            return False
        cid = error.candidate_id
        try:
            i = s.ids.index(cid)
        except ValueError:
            return False
        if not np.isnan(s.labels[i]):
            return False  # delivered again (at least once): counted already
        # a candidate shown twice has one label (the miner's, per id) at every position
        at = i if s.ids.count(cid) == 1 else [j for j, other in enumerate(s.ids) if other == cid]
        s.labels[at] = float(error.label > 0)
        if np.isnan(s.labels).any():
            return False  # the call is judged whole, once its last candidate is labelled
        del self._served[error.request_id]
        key = (s.tenant, s.model, s.version, s.stream)
        win = self._windows.get(key)
        if win is None:
            win = self._windows[key] = _Window(self.window)
            for old in [k for k in self._windows if k[:2] == key[:2] and k != key]:
                del self._windows[old]
        win.add(s.base, s.served, s.labels)
        every = max(1, self.min_labels // 10)
        if win.new < every:
            return False
        win.new = 0
        n = len(win.rows)
        base_auc, delta_auc, se, positives = win.compare()
        if np.isfinite(base_auc) and np.isfinite(delta_auc):  # both kinds of label are in
            self.metrics.delta_online_auc.labels(s.tenant, s.model, "base").set(base_auc)
            self.metrics.delta_online_auc.labels(s.tenant, s.model, "deltas").set(delta_auc)
        # Both kinds of label must be in (a click comes at once, a negative when its window
        # closes): judged on one kind alone, the comparison would mislead.
        if (n < self.min_labels or min(positives, n - positives) < every
                or not base_auc - delta_auc > self.margin + self.z * se):
            return False
        if not self.registry.rollback(s.tenant, s.model, s.version, s.stream):
            return False
        self.metrics.delta_rollbacks.labels(s.tenant, s.model).inc()
        log.error("deltas rolled back: online AUC below the base version's", extra={
            "tenant": s.tenant, "model": s.model, "version": s.version, "stream": s.stream,
            "sequence": s.sequence, "labels": n, "auc_base": round(base_auc, 5), "auc_deltas": round(delta_auc, 5),
            "se": round(se, 5), "margin": self.margin, "z": self.z})
        del self._windows[key]
        return True

    def labels(self, errors: list[learning_pb2.PredictionError], produced_ms: list[int] | None = None) -> None:
        """A decoded batch of the errors topic (a sink of `errors_reader.ErrorsReader`); each judged in turn.

        Errors of calls not remembered here (another replica's, or older than this replica's
        memory, such as those the error memory warms up on) are ignored by `label`."""
        for error in errors:
            self.label(error)
