"""Sparse deltas between full versions (docs/methods.md §7, Monolith's split).

A `DeltaTrainer` per (tenant, model) holds a copy of the serving version's
model (its base) and takes small steps on the additive sparse tables only
(``fm``, ``bias``, ``cross``: the dense network stays frozen, it changes only
with full versions) on the examples that arrived since its last step: every
``trainer_delta_interval_s`` or ``trainer_delta_every_n`` new examples. Each
step yields one delta: the new values of the rows it touched, numbered 1, 2, ...
in a stream (a random id per base load, so a restarted trainer never reuses
a number with other contents) on top of the base version
(`loopwise.modelstore.sparse.encode_delta`).

The base is the serving pointer's version. A trainer version is used with
its published weights when its manifest names its sparse tables
(``metrics.sparse_layout``: serving then knows the base rows); a version
without weights (the cold-start model) is used when its graph is the
cold-start shape, with zero ``bias`` and ``cross`` tables and no factor
table (a zero factor table would get no gradient). Anything else gets no
deltas until the next full version (logged once). A new full version
(through the gate) replaces the base and starts a new stream: the sequence resets.
The examples it has not learned (`requeue`: those newer than its
``train_until_ms``, e.g. the ones that arrived while it trained, kept in a
history of the last ``trainer_delta_max_buffer``) wait for the next step again
(up to ``trainer_delta_catchup_rows`` of them in it),
so no example is lost to serving between a delta on the old base and the
next full version.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from loopwise.features import FeatureSpec, InputBuilder
from loopwise.limits import MAX_RECORD_BYTES
from loopwise.modelstore import sparse

from .data import build_example_part
from .fit import frozen_dense, learn_sparse
from .model import Ranker, from_state_bytes, init_from_coldstart
from .settings import TrainerSettings
from .train import Production, crosses_of

log = logging.getLogger(__name__)


# One delta record at most this big (the broker's record limit, with room for the envelope):
# a step that touched more rows publishes them as several deltas in a row.
MAX_DELTA_BYTES = MAX_RECORD_BYTES // 2


@dataclass
class Step:
    """What one step produced: its encoded deltas in sequence order (none when nothing was
    touched), the last sequence, and its figures."""

    records: list[bytes]
    sequence: int
    examples: int
    rows: int
    loss: float


def base_model(production: Production | None, spec: FeatureSpec, settings: TrainerSettings
               ) -> tuple[Ranker | None, str]:
    """The model deltas build on for ``production``, and why not when None."""
    if production is None:
        return None, "no serving version"
    metrics = production.manifest.metrics if production.manifest else {}
    if production.weights:
        if not metrics.get("sparse_layout"):
            return None, "published without its sparse tables"
        model = from_state_bytes(production.weights)
        if sparse.Layout.of_config(model.config).to_dict() != metrics["sparse_layout"]:
            return None, "weights and sparse layout disagree"
        return model, ""
    if production.manifest is not None and production.manifest.source == "trainer":
        return None, "trainer version without weights"
    crosses = crosses_of(spec, settings)
    model = Ranker(spec.buckets, len(spec.sparse), len(spec.dense), settings.trainer_embedding_dim,
                   production.manifest.hidden_dim if production.manifest else settings.trainer_hidden_dim,
                   fm_dim=0, linear=True, crosses=crosses,
                   cross_buckets=settings.trainer_cross_buckets if crosses else 0)
    if not init_from_coldstart(model, production.onnx):
        return None, "not the cold-start graph's shape"
    return model, ""


class DeltaTrainer:
    """Sparse steps and deltas for one (tenant, model); not thread-safe: one step at a time."""

    def __init__(self, tenant: str, model: str, settings: TrainerSettings) -> None:
        self.tenant, self.model_name, self.settings = tenant, model, settings
        self.base_version = ""
        self.model: Ranker | None = None
        self.layout: sparse.Layout | None = None
        self.builder: InputBuilder | None = None
        self.stream = ""
        self.sequence = 0
        self.why_not = ""
        self.until_ms: int | None = None  # the base's newest training example
        # the newest impression time the tables have learned (the deltas' impressions_through_ms)
        self.impressions_through_ms = 0
        self.stream_started = 0.0  # monotonic time of the stream's start (`restream`)
        self._base_tables: dict[str, torch.Tensor] = {}  # the base's sparse tables, as loaded
        self._examples: list[tuple[bytes, int]] = []
        self._backlog: deque[tuple[bytes, int]] = deque()  # requeued after a rebase, served after fresh ones
        self._history: deque[tuple[bytes, int, int]] = deque(maxlen=settings.trainer_delta_max_buffer)

    # -- examples ---------------------------------------------------------------------
    def add(self, value: bytes, produced_ms: int, time_ms: int = 0) -> None:
        """An example record (its Kafka timestamp: when it was produced; ``time_ms``: the example's time)."""
        self._examples.append((value, produced_ms))
        self._history.append((value, produced_ms, time_ms))
        if len(self._examples) > self.settings.trainer_delta_max_buffer:
            del self._examples[: len(self._examples) - self.settings.trainer_delta_max_buffer]

    def waiting(self) -> int:
        return len(self._examples) + len(self._backlog)

    def requeue(self) -> int:
        """After `rebase`: the examples of the history newer than the base's training wait again
        (called on the thread that calls `add`); how many."""
        if self.model is None:
            return 0
        until = self.until_ms if self.until_ms is not None else -1
        fresh = {id(v) for v, _ in self._examples}  # never stepped: they stay fresh
        # The others already reached serving through an older base: they wait in the backlog
        # (at most trainer_delta_every_n of them per step, after the fresh ones) with produced
        # time 0, so the deltas' freshness figures (first_example_ms) count only fresh ones.
        self._backlog = deque((v, 0) for v, _, t in self._history if t > until and id(v) not in fresh)
        return len(self._backlog) + len(self._examples)

    def take(self) -> list[tuple[bytes, int]]:
        """The examples for the next `step` (called on the thread that calls `add`): every fresh
        one, then up to ``trainer_delta_catchup_rows`` of the backlog.

        A new version's backlog is the seconds between its newest training example and its
        announcement (~20 s of traffic at a version every 5,000 requests on bench/learning.py,
        ~46,000 rows), and the repeated impressions they hold are most of what a delta
        teaches. Taken ``trainer_delta_every_n`` (2,000) a step it took ~6 s to relearn (each
        step's encoding and publishing, not its learning: a pass learns ~70,000 rows/s), and
        the version served that long without them; in one step, one delta carries them all."""
        taken, self._examples = self._examples, []
        for _ in range(min(len(self._backlog), self.settings.trainer_delta_catchup_rows)):
            taken.append(self._backlog.popleft())
        return taken

    # -- base -------------------------------------------------------------------------
    def rebase(self, version: str, production: Production | None, spec: FeatureSpec) -> bool:
        """Build on ``version`` (a new stream at sequence 0) unless it is the base already; True when changed."""
        if version == self.base_version:
            return False
        model, why = base_model(production, spec, self.settings)
        self.base_version, self.stream, self.sequence = version, uuid.uuid4().hex[:12], 0
        self.stream_started = time.monotonic()
        self._backlog.clear()
        self.model, self.why_not = model, why
        self._base_tables = {}
        until = production.manifest.metrics.get("train_until_ms") if production and production.manifest else None
        self.until_ms = int(until) if until is not None else (model.train_until_ms if model is not None else None)
        self.impressions_through_ms = self.until_ms or 0
        if model is None:
            self.layout = self.builder = None
            log.warning("no deltas on this version", extra={"tenant": self.tenant, "model": self.model_name,
                                                           "version": version, "reason": why})
            return True
        frozen_dense(model)
        model.train()
        self.layout = sparse.Layout.of_config(model.config)
        self._base_tables = {name: getattr(model, name).weight.detach().clone() for name in self.layout.tables()}
        self.builder = InputBuilder(spec)
        log.info("deltas on a new base", extra={"tenant": self.tenant, "model": self.model_name, "version": version,
                                                "stream": self.stream, "tables": list(self.layout.tables())})
        return True

    # -- one step ---------------------------------------------------------------------
    def step(self, taken: list[tuple[bytes, int]]) -> Step:
        """Train the sparse tables on ``taken`` (`take`); the delta of the rows touched."""
        if self.model is None or self.builder is None or self.layout is None or not taken:
            return Step([], self.sequence, 0, 0, float("nan"))
        part = build_example_part(self.builder, [v for v, _ in taken])
        n = len(part.label)
        if n == 0:
            return Step([], self.sequence, 0, 0, float("nan"))
        loss = self.learn(part.sparse, part.dense, part.label, part.weight, getattr(part, "fnw", None))
        if part.impression_ms is not None and len(part.impression_ms):
            self.impressions_through_ms = max(self.impressions_through_ms, int(part.impression_ms.max()))
        touched = self._touched(part.sparse)
        rows = sum(len(i) for i in touched.values())
        produced = [ms for _, ms in taken if ms > 0] or [0]
        records = self._encode(touched, first_ms=min(produced), last_ms=max(produced), examples=n)
        return Step(records, self.sequence, n, rows, loss)

    def learn(self, sparse_ids: np.ndarray, dense: np.ndarray, label: np.ndarray, weight: np.ndarray,
              fnw: np.ndarray | None = None) -> float:
        """One step's training of the sparse tables on these rows (hashed inputs, labels, IPS
        weights, FNW click scales or None); the mean loss. `step` encodes what it touched; an
        in-process loop (bench/learning.py) calls it directly."""
        assert self.model is not None
        return learn_sparse(self.model, self.settings, sparse_ids, dense, label, weight, fnw)

    def start_stream(self) -> list[bytes]:
        """The first delta of a stream with nothing to teach yet (no row): replicas learn at once
        that this base's stream is live (their pending shows apply on top of it), not at the
        first examples' step. Nothing once the stream has a delta."""
        if self.model is None or self.layout is None or self.sequence:
            return []
        self.sequence += 1
        return [sparse.encode_delta(self.tenant, self.model_name, self.base_version, self.stream, self.sequence,
                                    self.layout, {}, impressions_through_ms=self.impressions_through_ms)]

    def restream(self) -> list[bytes]:
        """Start a new stream on the same base, carrying on from the current tables: its first
        deltas hold every row that differs from the base, so a replica that takes the new stream
        from its sequence 1 has the same tables as one that followed the old one. A replica
        whose guard rolled the old stream back takes the new one afresh (and judges it again),
        and the newest stream alone rebuilds the tables. Nothing when no delta was
        published on this base yet (the next step starts the stream anyway)."""
        if self.model is None or self.layout is None or self.sequence == 0:
            return []
        changed = {}
        for name, base in self._base_tables.items():
            now = getattr(self.model, name).weight.detach()
            differs = (now != base).reshape(len(base), -1).any(dim=1).numpy()
            changed[name] = np.flatnonzero(differs).astype(np.int64)
        self.stream, self.sequence, self.stream_started = uuid.uuid4().hex[:12], 0, time.monotonic()
        records = self._encode(changed, first_ms=0, last_ms=0, examples=0)
        log.info("delta stream restarted", extra={"tenant": self.tenant, "model": self.model_name,
                                                  "version": self.base_version, "stream": self.stream,
                                                  "rows": int(sum(len(i) for i in changed.values())),
                                                  "deltas": len(records)})
        return records

    def _encode(self, touched: dict[str, np.ndarray], *, first_ms: int, last_ms: int, examples: int) -> list[bytes]:
        """The current values of ``touched`` rows as the stream's next deltas (numbered on)."""
        assert self.model is not None and self.layout is not None
        records = []
        for chunk in self._chunks(touched):
            self.sequence += 1
            rows_out = {name: (ids, getattr(self.model, name).weight.detach()[torch.from_numpy(ids)].numpy())
                        for name, ids in chunk.items()}
            records.append(sparse.encode_delta(
                self.tenant, self.model_name, self.base_version, self.stream, self.sequence, self.layout, rows_out,
                first_example_ms=first_ms, last_example_ms=last_ms, examples=examples,
                impressions_through_ms=self.impressions_through_ms))
        return records

    def _chunks(self, touched: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        """The touched rows in groups of at most `MAX_DELTA_BYTES` encoded (one delta each)."""
        assert self.layout is not None
        budget, out, current, size = MAX_DELTA_BYTES, [], {}, 0
        for name, ids in touched.items():
            per_row = 8 + 4 * self.layout.dim(name)
            start = 0
            while start < len(ids):
                take = max(1, min(len(ids) - start, (budget - size) // per_row))
                current[name] = ids[start:start + take]
                size += take * per_row
                start += take
                if size + per_row > budget:
                    out.append(current)
                    current, size = {}, 0
        if current:
            out.append(current)
        return out

    def _touched(self, sparse_ids: np.ndarray) -> dict[str, np.ndarray]:
        assert self.layout is not None
        ids = np.unique(sparse_ids)
        ids = ids[ids > 0]
        out = {name: ids for name in ("fm", "bias") if name in self.layout.tables()}
        if "cross" in self.layout.tables():
            c = np.unique(sparse.cross_ids(sparse_ids, self.layout))
            out["cross"] = c[c > 0]
        return out
