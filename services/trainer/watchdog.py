"""Production watchdog: the serving version is rolled back when its online AUC falls
below the static cold-start model's on the same traffic.

The gate judges a candidate once, on a holdout, against the version it replaces;
deltas are judged by inference's guard against their own base. Neither notices a
production that drifts below the model a fresh stack starts from (on the full
MovieLens replay production sat below it for most of the stream). The watchdog
compares the two on the examples the trainer reads anyway:

- Every example (`add`, from the trainer's consumer) carries the score `Rank`
  served (``served_score``: the version, its deltas and the error memory) and
  the version that served it. It waits, one row per (request, candidate),
  until its label is final: its impression is ``attribution_window_ms`` older
  than the newest impression seen (stream time, so a replay behaves like live
  traffic). In the fake-negative mode a positive duplicate turns its row's
  label to 1; in the window mode the rows come final. Positives and negatives
  are judged at the same age, so a drift of the scores over time cannot pass
  for ranking skill.
- Each ``LOOPWISE_TRAINER_WATCHDOG_CHECK_S`` the final rows are scored in process by the static
  model (the store's cold-start version, `coldstart.ensure`'s v1; built in
  process when the store has none) through the serving input builder and
  onnxruntime, and kept, the newest ``LOOPWISE_TRAINER_WATCHDOG_WINDOW`` per (tenant, model), for
  the version serving now (rows of other versions are not about it).
- `judge`: with at least ``LOOPWISE_TRAINER_WATCHDOG_MIN_LABELS`` rows, a tenth of them of each
  class at least, production is below static when its AUC is lower by more than
  ``LOOPWISE_TRAINER_WATCHDOG_MARGIN`` plus ``LOOPWISE_TRAINER_WATCHDOG_Z`` standard errors of the paired
  difference, both within calls (`loopwise.ranking_metrics.judge_auc`: a (positive,
  negative) pair counts when both were candidates of one `Rank` call; pooled when fewer
  than 10 calls hold both classes, as with calls of one candidate), so the traffic's own
  drift cancels, and so does a drift of production's scores over time: deltas and a new
  version's calibration move every score, and pooled over the window such a drift read as
  ranking worse. Measured on bench/learning.py, 30,000 requests: v2 was rolled back 850
  requests after it went live on a pooled AUC of 0.68 against static's 0.76, while within
  its calls it ranked 0.770 against 0.776; the cold-start version then served 4,000
  requests at 0.656 against static's 0.670. The judgement repeats each check, so chance
  alone must not trip it).
- Then the pointer goes back (`choose_target`) to the newest earlier version,
  among the ``LOOPWISE_TRAINER_WATCHDOG_CANDIDATES`` newest, whose within-call AUC on the same rows (scored
  in process: a base version serves as exported until deltas start on it) is
  not below the static model's, else to the cold-start version, which is the
  static model itself (a version rolled back before is never a target again). Keeping the newest fit version keeps what the loop
  learnt; the static model is the floor the goal names. The move is recorded
  in the pointer history (action ``watchdog_rollback``), announced as
  ``rolled_back`` on ``loopwise.models.v1`` (inference's watcher swaps at once),
  logged (``production rolled back``) and counted in
  ``loopwise_trainer_production_rollbacks_total{reason="below_static"}``.
  For ``LOOPWISE_TRAINER_WATCHDOG_COOLDOWN_S`` afterwards nothing is rolled back again for that
  model; new candidates still go through the gate (which also refuses one below
  the static model on its holdout, ``LOOPWISE_TRAINER_GATE_STATIC``).

``loopwise_trainer_production_online_auc{scorer}`` (production, static) and
``loopwise_trainer_production_online_labels`` show what is judged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from loopwise.features import FeatureSpec, InputBuilder
from loopwise.modelstore import ModelStore, StoreError, coldstart, pointers, version_number
from loopwise.ranking_metrics import judge_auc
from loopwise.v1 import learning_pb2

from .data import build_rows
from .export import predict_onnx, session
from .publish import announcement
from .train import Production

log = logging.getLogger(__name__)
FAKE = learning_pb2.FEEDBACK_MODE_FAKE_NEGATIVE
REASON = "below_static"
HISTORY_ACTION = "watchdog_rollback"
RESCAN_S = 60.0


@dataclass(frozen=True)
class Verdict:
    labels: int
    positives: int
    auc_production: float
    auc_static: float
    se: float  # standard error of auc_production - auc_static
    below: bool


def judge(label: np.ndarray, production: np.ndarray, static: np.ndarray, call: np.ndarray, *, margin: float,
          z: float, min_labels: int) -> Verdict:
    """Whether ``production``'s scores rank ``label`` worse than ``static``'s within the same
    calls (``call``: each row's call) beyond chance.

    >>> y = np.arange(400) % 4 == 0
    >>> judge(y, -y.astype(float), y.astype(float), np.arange(400) // 20, margin=0.01, z=3, min_labels=200).below
    True
    """
    y = np.asarray(label) > 0.5
    n, positives = len(y), int(y.sum())
    auc_static, auc_production, se, _ = judge_auc(y, np.asarray(static, np.float64),
                                                  np.asarray(production, np.float64), np.asarray(call))
    both = min(positives, n - positives) >= max(2, min_labels // 10)
    below = bool(n >= min_labels and both and np.isfinite(se)
                 and auc_static - auc_production > margin + z * se)
    return Verdict(n, positives, auc_production, auc_static, se, below)


@dataclass
class _Pending:
    call: str  # the Rank call's request id
    impression_ms: int
    version: str
    served: float
    label: float
    record: bytes


class _Stream:
    """One (tenant, model): rows waiting for their final label, and the judged rows."""

    def __init__(self, window: int) -> None:
        self.pending: OrderedDict[tuple[str, str], _Pending] = OrderedDict()
        self.newest_ms = 0
        self.version = ""  # the version the judged rows were served by
        self.rows: deque[tuple[float, float, float, bytes, str]] = deque(maxlen=window)  # label, served, static, record, call
        self.cooldown_until = 0.0


@dataclass
class _Static:
    version: str  # "" when built in process (nothing to roll back to)
    spec: FeatureSpec
    session: Any
    model: Production
    since: float = field(default_factory=time.monotonic)


def _score(onnx_session: Any, spec: FeatureSpec, records: list[bytes]) -> np.ndarray:
    """The model's probability for each example (NaN where the builder refuses its features)."""
    exs = [learning_pb2.Example.FromString(r) for r in records]
    sparse, dense, ok = build_rows(InputBuilder(spec), [(e.user_id, e.user, e.context, e.candidate_id, e.candidate)
                                                         for e in exs])
    out = np.full(len(exs), np.nan)
    if ok.any():
        out[ok] = predict_onnx(onnx_session, sparse[ok], dense[ok])[0].reshape(-1)
    return out


def choose_target(current: str, versions: list[str], static_version: str, static_auc: float,
                  auc_of: Callable[[str], float], candidates: int, exclude: frozenset[str] = frozenset()
                  ) -> tuple[str, dict[str, float]]:
    """The newest version before ``current`` (among ``candidates`` checked, the static one
    and ``exclude``, the versions rolled back before, aside) whose AUC (``auc_of``) is not
    below ``static_auc``, else ``static_version``; and the AUC of each version checked.

    >>> choose_target("v5", ["v1", "v2", "v3", "v4", "v5"], "v1", 0.7, {"v4": 0.6, "v3": 0.72}.get, 3)
    ('v3', {'v4': 0.6, 'v3': 0.72})
    """
    checked: dict[str, float] = {}
    for version in sorted((v for v in versions if version_number(v) < version_number(current)
                           and v != static_version and v not in exclude),
                          key=version_number, reverse=True)[:candidates]:
        value = auc_of(version)
        checked[version] = value
        if np.isfinite(value) and value >= static_auc:
            return version, checked
    return static_version, checked


class Watchdog:
    """Built by the trainer (`app.Trainer`); `add` from its consumer, `run` as a task."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.settings = trainer.settings
        self.store: ModelStore = trainer.store
        self.metrics = trainer.metrics
        self._streams: dict[tuple[str, str], _Stream] = {}
        self._static: dict[tuple[str, str], _Static] = {}
        if self.settings.trainer_watchdog:  # the rollbacks' series exist at 0 from the start (alert rules)
            for tenant in self.settings.tenants:
                self.metrics.rollbacks.labels(tenant, self.settings.default_model, REASON)

    # -- intake (event loop) ------------------------------------------------------------
    def add(self, tenant: str, model: str, ex: learning_pb2.Example, record: bytes) -> None:
        """An example the trainer accepted: its row waits for its final label. A positive
        duplicate (fake-negative mode) or a correction (window mode) only turns a waiting
        row's label to 1; rows past ``LOOPWISE_TRAINER_WATCHDOG_MAX_PENDING`` are not taken."""
        if not ex.version:
            return  # not served by a version (nothing to judge)
        s = self._streams.get((tenant, model))
        if s is None:
            s = self._streams[(tenant, model)] = _Stream(self.settings.trainer_watchdog_window)
            self.metrics.rollbacks.labels(tenant, model, REASON)  # at 0, before any rollback
        at = ex.impression_time_ms or ex.label_time_ms
        s.newest_ms = max(s.newest_ms, at)
        key = (ex.request_id, ex.candidate_id)
        row = s.pending.get(key)
        if row is not None:
            row.label = max(row.label, float(ex.label > 0))
        elif not ex.correction and not (ex.feedback_mode == FAKE and ex.label > 0) \
                and len(s.pending) < self.settings.trainer_watchdog_max_pending:
            s.pending[key] = _Pending(ex.request_id, at, ex.version, float(ex.served_score), float(ex.label > 0), record)

    def _final(self, s: _Stream) -> list[_Pending]:
        """Pop the rows whose label is final (impression a window older than the newest), in
        arrival order up to the first that is not (arrival follows impression time closely;
        a row behind a newer one waits for it, at most a window)."""
        cutoff = s.newest_ms - self.settings.attribution_window_ms
        out = []
        while s.pending:
            key, row = next(iter(s.pending.items()))
            if row.impression_ms > cutoff:
                break
            del s.pending[key]
            out.append(row)
        return out[-self.settings.trainer_watchdog_window:]

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.trainer_watchdog_check_s)
            for (tenant, model), s in list(self._streams.items()):
                rows = self._final(s)
                self.metrics.watchdog_pending.labels(tenant, model).set(len(s.pending))
                if not rows:
                    continue
                try:
                    moved = await asyncio.to_thread(self.check, tenant, model, rows)
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - logged; the next check tries again
                    log.exception("production watchdog check failed", extra={"tenant": tenant, "model": model})
                    continue
                if moved is not None:
                    await self._announce(tenant, model, *moved)

    # -- judging (worker thread) ----------------------------------------------------------
    def static(self, tenant: str, model: str) -> _Static:
        """The static model: the store's cold-start version (the oldest), else built in process
        (and the store looked at again after `RESCAN_S`: the cold-start version may come later)."""
        key = (tenant, model)
        cached = self._static.get(key)
        if cached is None or not cached.version and time.monotonic() - cached.since > RESCAN_S:
            found = None
            for version in self.store.versions(tenant, model):
                try:
                    onnx_bytes, manifest = self.store.load(tenant, model, version)
                except StoreError:
                    continue
                if manifest.source == "coldstart":
                    found = _Static(version, manifest.spec(), session(onnx_bytes),
                                    Production(version, onnx_bytes, manifest))
                    break
            if found is None:
                onnx_bytes = coldstart.build_onnx()
                found = _Static("", coldstart.DEFAULT_SPEC, session(onnx_bytes), Production("", onnx_bytes))
            self._static[key] = found
        return self._static[key]

    def static_model(self, tenant: str, model: str) -> Production:
        """The static model for the gate (`gate.against_static`)."""
        return self.static(tenant, model).model

    def check(self, tenant: str, model: str, rows: list[_Pending]) -> tuple[str, str, str] | None:
        """Score ``rows`` with the static model, judge the serving version; (from, to, reason)
        when the pointer was moved back."""
        st = self.settings
        s = self._streams[(tenant, model)]
        serving = pointers.serving_version(self.store, self.trainer.redis, tenant, model, tolerant=True) or ""
        if s.version != serving:
            s.version = serving
            s.rows.clear()
        rows = [r for r in rows if r.version == serving]
        if not rows:
            return None
        static = self.static(tenant, model)
        scores = _score(static.session, static.spec, [r.record for r in rows])
        s.rows.extend((r.label, r.served, float(p), r.record, r.call) for r, p in zip(rows, scores, strict=True)
                      if np.isfinite(p))
        label, served, stat = (np.array([row[i] for row in s.rows]) for i in range(3))
        call = np.array([row[4] for row in s.rows])
        v = judge(label, served, stat, call, margin=st.trainer_watchdog_margin, z=st.trainer_watchdog_z, min_labels=st.trainer_watchdog_min_labels)
        self.metrics.watchdog_labels.labels(tenant, model).set(v.labels)
        if np.isfinite(v.auc_production):
            self.metrics.online_auc.labels(tenant, model, "production").set(v.auc_production)
            self.metrics.online_auc.labels(tenant, model, "static").set(v.auc_static)
        if not v.below or serving == static.version or time.monotonic() < s.cooldown_until:
            return None
        return self._roll_back(tenant, model, serving, static, v, s)

    def _roll_back(self, tenant: str, model: str, serving: str, static: _Static, v: Verdict,
                   s: _Stream) -> tuple[str, str, str] | None:
        st = self.settings
        label = np.array([row[0] for row in s.rows]) > 0.5
        stat = np.array([row[2] for row in s.rows])
        records = [row[3] for row in s.rows]
        call = np.array([row[4] for row in s.rows])

        def auc_of(version: str) -> float:
            if pointers.problem(self.store, tenant, model, version):
                return float("nan")
            onnx_bytes, manifest = self.store.load(tenant, model, version)
            p = _score(session(onnx_bytes), manifest.spec(), records)
            ok = np.isfinite(p)
            return judge_auc(label[ok], stat[ok], p[ok], call[ok])[1] if ok.any() else float("nan")

        # A version rolled back before fell below the static model online once (with its
        # deltas): its offline AUC on other rows does not clear it (measured: v10 rolled back,
        # then chosen again as the target of v11's rollback, and below again).
        before = frozenset(str(e.get("from")) for e in pointers.history(self.store, self.trainer.redis, tenant, model)
                           if e.get("action") == HISTORY_ACTION)
        target, checked = choose_target(serving, self.store.versions(tenant, model), static.version,
                                        v.auc_static, auc_of, st.trainer_watchdog_candidates, before)
        facts = {"tenant": tenant, "model": model, "from": serving, "to": target, "labels": v.labels,
                 "positives": v.positives, "auc_production": round(v.auc_production, 5),
                 "auc_static": round(v.auc_static, 5), "se": round(v.se, 5), "margin": st.trainer_watchdog_margin,
                 "z": st.trainer_watchdog_z, "checked": {k: round(x, 5) for k, x in checked.items()}}
        if not target:
            log.error("production below the static model and nothing to roll back to", extra=facts)
            s.cooldown_until = time.monotonic() + st.trainer_watchdog_cooldown_s
            return None
        if pointers.serving_version(self.store, self.trainer.redis, tenant, model, tolerant=True) != serving:
            return None  # a new version was published meanwhile: it passed the gate, judge it afresh
        pointers.move(self.store, self.trainer.redis, tenant, model, target, HISTORY_ACTION, serving=serving)
        self.metrics.rollbacks.labels(tenant, model, REASON).inc()
        log.error("production rolled back: online AUC below the static model's", extra=facts)
        s.cooldown_until = time.monotonic() + st.trainer_watchdog_cooldown_s
        s.rows.clear()
        reason = (f"watchdog: online AUC {v.auc_production:.4f} below the static model's {v.auc_static:.4f} "
                  f"(se {v.se:.4f}, {v.labels} labels)")
        return serving, target, reason

    async def _announce(self, tenant: str, model: str, old: str, new: str, reason: str) -> None:
        producer = self.trainer.producer
        if producer is None:
            return
        ann = announcement(tenant, model, "rolled_back", new, old, reason, {})
        try:
            await producer.send_and_wait(self.settings.topics.models, ann.SerializeToString(),
                                         key=f"{tenant}|{model}".encode())
        except Exception as exc:  # noqa: BLE001 - the pointer is the truth; the watcher polls it
            log.error("rollback announcement failed", extra={"tenant": tenant, "model": model, "error": repr(exc)})
