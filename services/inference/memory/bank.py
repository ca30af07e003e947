"""Error memories per (tenant, model, version), fed by prediction errors, read by `Rank`.

A memory belongs to one model version: when a version starts serving
(`MemoryBank.serve`, called by the watcher on a swap, and lazily by the
first `Rank` of a version) it gets a fresh sketch, warm-started from the
errors of that version already read (errors of a version this replica does
not serve yet wait in a bounded pending queue per (tenant, model): another
replica may have swapped first). The replaced version's memory is kept
until the next swap, so a rollback finds it; its errors are still written.

Beside the sketch, a memory may keep an exact (user, item) table
(`pairs.PairTable`, ``pair_lambda`` > 0), which `Rank` also writes
(`ModelMemory.shown`, ``pair_at_rank``).

Before a batch of errors is written, the memory's current compensation of
each error's served prediction is scored against its label (prequential):
squared error and counts per score bin per scorer (``base``, ``memory``),
from which online Brier score and AUC of base vs compensated follow in
every mode but ``off``.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence

import numpy as np

from loopwise.v1 import learning_pb2

from ..metrics import InferenceMetrics
from .compensate import compensate
from .config import MemoryConfig
from .fresh import Fresh
from .pairs import PairTable
from .sketch import Sketch, canonical

log = logging.getLogger(__name__)

Key = tuple[str, str]
# Score bins of the prequential metrics: [0, 0.05), ..., [0.95, 1], named by their upper edge.
SCORE_BINS = 20
BIN_EDGES = [f"{(b + 1) / SCORE_BINS:.2f}" for b in range(SCORE_BINS)]
SERVED_MAX = 100_000  # request ids remembered per memory for `ModelMemory.shown`


class ModelMemory:
    """The error memory of one (tenant, model, version)."""

    def __init__(self, tenant: str, model: str, version: str, dim: int, config: MemoryConfig) -> None:
        self.tenant, self.model, self.version, self.dim = tenant, model, version, dim
        self.config = config
        self.sketch = Sketch(dim, config.k, config.bits, seed=config.seed, half_life_s=config.half_life_s)
        # lambda 0: the sketch corrects nothing, so it is neither read nor written (it stays empty)
        self.sketch_on = config.params.lam != 0.0
        # clicks waiting for their window's negatives (`fresh`), with settle_s > 0
        self.fresh = Fresh(dim, config.seed) if config.settle_s > 0 and self.sketch_on else None
        # the exact (user, item) table, with pair_lambda > 0
        self.pairs = PairTable(config.pair_bits, config.seed) if config.pair.lam > 0 else None
        # request ids this replica answered whose pairs `shown` wrote (pair_at_rank), oldest first
        self.served: OrderedDict[str, None] = OrderedDict()
        self.clock = 0.0  # the newest error time written, seconds

    @property
    def nbytes(self) -> int:
        return self.sketch.nbytes + (self.pairs.nbytes if self.pairs is not None else 0)

    @property
    def serves(self) -> bool:
        """Whether the compensated scores are served (mode ``on``) or only computed."""
        return self.config.mode == "on"

    def compensate(self, p_base: np.ndarray, hidden: np.ndarray, user: str | Sequence[str] = "",
                   items: Sequence[str] = ()) -> np.ndarray:
        """Compensated probabilities of one call (one vectorised read): the sketch's correction of
        ``hidden``, plus the pair table's of (``user``, ``items``) when it has one (``user``: one id
        for the call or one per row; no ``items``: no pair correction)."""
        params = self.config.params
        if self.sketch_on:
            keys = canonical(hidden)
            out = compensate(p_base, self.sketch.read(keys), params)
        else:
            out = np.array(p_base, dtype=np.float32).reshape(-1)
        extra = np.zeros(len(out), dtype=np.float32)
        waiting = self.fresh.error(keys, p_base, params) if self.fresh is not None else None
        if waiting is not None and params.lam != 0.0:
            extra += np.float32(params.lam) * waiting
        if self.pairs is not None and len(items) == len(out):
            extra += np.float32(self.config.pair.lam) * self.pairs.error(self.pairs.keys(user, items), p_base,
                                                                         self.config.pair)
        if not extra.any():
            return out
        return np.clip(out + extra, 0.0, 1.0).astype(np.float32)

    def shown(self, request_id: str, user: str, items: Sequence[str], p_base: np.ndarray) -> None:
        """A `Rank` answered here (after its read): with ``pair_at_rank``, its pairs are shown and
        unclicked so far (pairs.py); the request's errors will add only their clicks."""
        if self.pairs is None or not self.config.pair_at_rank or not user or not request_id:
            return
        self.pairs.write(self.pairs.keys(user, items), np.zeros(len(p_base), dtype=np.float32), p_base)
        self.served[request_id] = None
        while len(self.served) > SERVED_MAX:
            self.served.popitem(last=False)

    def write(self, keys: np.ndarray, labels: np.ndarray, preds: np.ndarray, times_s: np.ndarray,
              users: Sequence[str] = (), items: Sequence[str] = (), requests: Sequence[str] = ()) -> None:
        """Add a batch of errors: to the pair table at once (with ``users`` and ``items``, one per
        error; of a request answered here (``requests``, `shown`) only a click, its impression is in),
        to the sketch at once or, clicks with ``settle_s``, once settled."""
        if len(times_s):
            self.clock = max(self.clock, float(np.max(times_s)))
        if self.pairs is not None and len(items) == len(labels):
            here = np.array([r in self.served for r in requests], dtype=bool) if len(requests) == len(keys) \
                else np.zeros(len(keys), dtype=bool)
            take = ~here | (labels > 0)
            if take.any():
                self.pairs.write(self.pairs.keys(np.asarray(users)[take], np.asarray(items)[take]), labels[take],
                                 preds[take], counted=here[take])
        if not self.sketch_on:
            return
        keys = canonical(keys)
        if self.fresh is None:
            self.sketch.write(keys, labels, preds, times_s)
            return
        wait = labels >= 0.5
        if wait.any():
            self.fresh.add(keys[wait], labels[wait], preds[wait], times_s[wait])
        now = ~wait
        if now.any():
            self.sketch.write(keys[now], labels[now], preds[now], times_s[now])
        settled = self.fresh.settle(self.clock - self.config.settle_s)
        if len(settled[0]):
            self.sketch.write(*settled)


class MemoryBank:
    def __init__(self, default: MemoryConfig, overrides: dict[str, MemoryConfig] | None = None,
                 metrics: InferenceMetrics | None = None, *, pending: int = 50_000,
                 tenants: Iterable[str] | None = None) -> None:
        self.default = default
        # errors of other tenants are ignored (None: every tenant's are kept)
        self.tenants = frozenset(tenants) if tenants is not None else None
        self.overrides = dict(overrides or {})
        self.metrics = metrics
        self.pending_max = pending
        self._current: dict[Key, ModelMemory] = {}
        self._previous: dict[Key, ModelMemory] = {}
        self._pending: dict[Key, deque[learning_pb2.PredictionError]] = {}

    def config(self, model: str) -> MemoryConfig:
        return self.overrides.get(model, self.default)

    def get(self, tenant: str, model: str, version: str) -> ModelMemory | None:
        """The memory of a version this replica serves or just replaced, if any."""
        for memories in (self._current, self._previous):
            memory = memories.get((tenant, model))
            if memory is not None and memory.version == version:
                return memory
        return None

    def for_rank(self, tenant: str, model: str, version: str, dim: int) -> ModelMemory | None:
        """The serving version's memory (None when its mode is ``off``): a dict lookup, or `serve` once."""
        memory = self._current.get((tenant, model))
        if memory is not None and memory.version == version:
            return memory
        return self.serve(tenant, model, version, dim)

    def serve(self, tenant: str, model: str, version: str, dim: int) -> ModelMemory | None:
        """``version`` serves now: its memory becomes current (fresh unless it was the one replaced)."""
        config = self.config(model)
        key = (tenant, model)
        current = self._current.get(key)
        if config.mode == "off" or dim <= 0:
            return None
        if current is not None and current.version == version:
            return current
        previous = self._previous.get(key)
        if previous is not None and previous.version == version:
            memory = previous
        else:
            memory = ModelMemory(tenant, model, version, dim, config)
            waiting = self._pending.get(key)
            if waiting:
                mine = [e for e in waiting if e.version == version]
                self._pending[key] = deque((e for e in waiting if e.version != version), maxlen=self.pending_max)
                self._write(memory, mine, None)
            if self.metrics is not None:
                self.metrics.memory_resets.labels(tenant, model).inc()
                self.metrics.memory_bytes.labels(tenant, model).set(memory.nbytes)
            log.info("error memory started", extra={"tenant": tenant, "model": model, "version": version,
                                                    "mode": config.mode, "k": config.k, "bits": config.bits,
                                                    "warm_errors": memory.sketch.writes,
                                                    "pair_lambda": config.pair.lam, "bytes": memory.nbytes})
        if current is not None:
            self._previous[key] = current
        self._current[key] = memory
        self._observe_fill(memory)
        return memory

    def write(self, errors: Iterable[learning_pb2.PredictionError], produced_ms: list[int] | None = None) -> int:
        """Write a batch of errors to their versions' memories; returns how many were written.

        ``produced_ms`` (aligned with ``errors``): when each record was produced, for the lag
        metric (0: not measured, e.g. a record read in the warm-up).
        """
        groups: dict[tuple[str, str, str], list[int]] = {}
        errors = list(errors)
        for i, e in enumerate(errors):
            groups.setdefault((e.tenant, e.model, e.version), []).append(i)
        written = 0
        for (tenant, model, version), rows in groups.items():
            batch = [errors[i] for i in rows]
            memory = self.get(tenant, model, version)
            if memory is None:
                self._park(tenant, model, batch)
                continue
            lag = [produced_ms[i] for i in rows] if produced_ms is not None else None
            written += self._write(memory, batch, lag)
        return written

    def _park(self, tenant: str, model: str, batch: list[learning_pb2.PredictionError]) -> None:
        if self.config(model).mode == "off" or (self.tenants is not None and tenant not in self.tenants):
            self._count(tenant, model, "ignored", len(batch))
            return
        queue = self._pending.setdefault((tenant, model), deque(maxlen=self.pending_max))
        queue.extend(batch)
        self._count(tenant, model, "pending", len(batch))

    def _write(self, memory: ModelMemory, batch: list[learning_pb2.PredictionError],
               produced_ms: list[int] | None) -> int:
        ok = [e for e in batch if len(e.key) == memory.dim]
        if len(ok) < len(batch):
            self._count(memory.tenant, memory.model, "malformed", len(batch) - len(ok))
        if not ok:
            return 0
        keys = np.array([e.key for e in ok], dtype=np.float32)
        labels = np.array([e.label for e in ok], dtype=np.float32)
        preds = np.array([e.served_score for e in ok], dtype=np.float32)
        times = np.array([e.time_ms for e in ok], dtype=np.float64) / 1000.0
        users = np.array([e.user_id for e in ok], dtype=np.str_)
        items = np.array([e.candidate_id for e in ok], dtype=np.str_)
        requests = np.array([e.request_id for e in ok], dtype=np.str_)
        finite = np.isfinite(keys).all(axis=1) & np.isfinite(labels) & np.isfinite(preds)
        if not finite.all():
            self._count(memory.tenant, memory.model, "malformed", int((~finite).sum()))
            keys, labels, preds, times = keys[finite], labels[finite], preds[finite], times[finite]
            users, items, requests = users[finite], items[finite], requests[finite]
        if len(keys) == 0:
            return 0
        preds = np.clip(preds, 0.0, 1.0)
        self._score(memory, keys, labels, preds, users, items)
        memory.write(keys, labels, preds, times, users, items, requests)
        self._count(memory.tenant, memory.model, "written", len(keys))
        if self.metrics is not None and produced_ms is not None:
            now_ms = time.time() * 1000
            for at in produced_ms:
                if at > 0:
                    self.metrics.memory_lag.observe(max(now_ms - at, 0.0) / 1000.0)
        self._observe_fill(memory)
        return len(keys)

    def _score(self, memory: ModelMemory, keys: np.ndarray, labels: np.ndarray, preds: np.ndarray,
               users: np.ndarray, items: np.ndarray) -> None:
        """Prequential: base vs compensated prediction of each error before it is written."""
        if self.metrics is None:
            return
        m = self.metrics
        compensated = memory.compensate(preds, keys, users, items)
        key = (memory.tenant, memory.model)
        m.memory_scored.labels(*key).inc(len(labels))
        positive = labels >= 0.5
        for scorer, p in (("base", preds), ("memory", compensated)):
            m.memory_squared_error.labels(*key, scorer).inc(float(((p - labels) ** 2).sum()))
            bins = np.minimum((p * SCORE_BINS).astype(np.int64), SCORE_BINS - 1)
            for label, rows in (("1", positive), ("0", ~positive)):
                counts = np.bincount(bins[rows], minlength=SCORE_BINS)
                for b in np.flatnonzero(counts):
                    m.memory_score_bins.labels(*key, scorer, label, BIN_EDGES[b]).inc(int(counts[b]))

    def _observe_fill(self, memory: ModelMemory) -> None:
        if self.metrics is not None and memory.sketch_on:
            self.metrics.memory_fill.labels(memory.tenant, memory.model).set(memory.sketch.fill())

    def _count(self, tenant: str, model: str, result: str, n: int) -> None:
        if self.metrics is not None and n:
            self.metrics.memory_writes.labels(tenant, model, result).inc(n)
