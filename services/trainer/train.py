"""The pure training API: no Kafka, no Redis, no store; a benchmark calls these in-process.

Usage (see the README)::

    data = build_window_data(InputBuilder(spec), example_records, pair_records)
    outcome = run(data, Production("v1", onnx_bytes), spec, TrainerSettings(trainer_epochs=2))
    outcome.publish, outcome.reason, outcome.figures()["candidate_auc"], outcome.onnx

- `split_holdout`: the most recent slice of examples (by time) is held out;
  pairs from that slice are left out of training too.
- `train_once`: warm start (the production model's torch weights when the
  trainer produced it, else the cold-start graph's prior when shapes match,
  else fresh), then the epochs of `fit.fit`: clipped-IPS loss on examples plus the
  Bradley-Terry term on pairs; CUDA with bf16 autocast when available.
  Rows of the miner's fake-negative mode (``WindowData.fnw``) train at once (the
  settle filter waits out the window for the others only) with FNW weights
  (`model.fnw_weights`); the gate sees their final labels (`final_labels`).
- `gate.evaluate`: candidate (torch) and production (onnxruntime) on the holdout,
  then the gate; with the static cold-start model given, a candidate whose AUC is
  below its AUC on the same holdout is refused too (`gate.against_static`).
- `fold_recent`: a candidate that passed the gate learns its holdout, and the rows
  that came while it trained, on its sparse tables, in time order, as the deltas
  would (``trainer_fold_holdout``).
- `run`: all of it plus ONNX export, parity and the serving contract (every weight finite).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from loopwise import runtime
from loopwise.features import FeatureSpec
from loopwise.modelstore import Manifest
from loopwise.modelstore.contract import ContractError, check_finite_weights

from .data import WindowData, final_labels
from .export import ExportError, check_contract, export_onnx, parity
from .fit import fit, frozen_dense, learn_sparse
from .gate import Evaluation, evaluate
from .model import Ranker, copy_matching, from_state_bytes, init_from_coldstart
from .settings import TrainerSettings

log = logging.getLogger(__name__)


@dataclass
class Production:
    """The model serving now: its ONNX artifact, and its torch weights if the trainer made it."""

    version: str
    onnx: bytes
    manifest: Manifest | None = None
    weights: bytes | None = None


@dataclass
class Candidate:
    model: Ranker
    spec: FeatureSpec
    init: str  # "warm", "prior" (cold-start graph) or "fresh"
    parent_version: str
    holdout: WindowData
    train_rows: int
    train_pairs: int
    epochs: int
    seconds: float
    device: str
    final_loss: float
    stopped: bool = False
    train_until_ms: int = 0  # time of the newest training example (the next gate's holdout starts after it)
    calibration: tuple[float, float] = (1.0, 0.0)  # (scale, shift) folded in before the gate
    recent: WindowData | None = None  # the holdout's rows as trained on (before `final_labels`)
    folded_rows: int = 0  # rows learned after the gate: ``recent`` and newer ones (`fold_recent`)

    @property
    def examples_per_s(self) -> float:
        return self.train_rows * self.epochs / self.seconds if self.seconds > 0 else float("nan")

    def predict(self, sparse: np.ndarray, dense: np.ndarray, batch: int = 65_536) -> np.ndarray:
        model = self.model.eval().cpu()
        out = []
        with torch.no_grad():
            for start in range(0, len(sparse), batch):
                p, _ = model(torch.from_numpy(sparse[start:start + batch].astype(np.int64)),
                             torch.from_numpy(dense[start:start + batch].astype(np.float32)))
                out.append(p.numpy())
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


@dataclass
class Outcome:
    candidate: Candidate
    evaluation: Evaluation
    onnx: bytes = b""
    parity_max_abs_diff: float = float("nan")
    publish: bool = False
    reason: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    def figures(self) -> dict[str, float]:
        """Flat figures for the manifest and the announcement."""
        out: dict[str, float] = {}
        for k, v in self.evaluation.candidate.items():
            out[f"candidate_{k}"] = v
        for k, v in (self.evaluation.production or {}).items():
            out[f"production_{k}"] = v
        for k, v in (self.evaluation.static or {}).items():
            out[f"static_{k}"] = v
        c = self.candidate
        out.update(holdout_rows=self.evaluation.holdout_rows, train_rows=c.train_rows, train_pairs=c.train_pairs,
                   train_until_ms=c.train_until_ms, folded_rows=c.folded_rows, epochs=c.epochs,
                   fit_seconds=c.seconds, examples_per_s=c.examples_per_s,
                   final_loss=c.final_loss, parity_max_abs_diff=self.parity_max_abs_diff,
                   **{f"{k}_seconds": v for k, v in self.timings.items()})
        return {k: float(v) for k, v in out.items()}


def split_holdout(data: WindowData, fraction: float, min_holdout: int = 0, unseen_after_ms: int | None = None
                  ) -> tuple[WindowData, WindowData]:
    """(train, holdout): the most recent ``fraction`` of examples by time (at least
    ``min_holdout``, at most half) is held out; pairs at or after its start are not trained on.

    ``unseen_after_ms``: the production model's last training example time. The
    holdout shrinks to the examples after it (down to ``min_holdout``), so that
    production is not scored on examples it was trained on.
    """
    n = len(data)
    k = int(math.ceil(n * fraction)) if fraction > 0 else 0
    if k and unseen_after_ms is not None:
        k = min(k, int((data.time_ms > unseen_after_ms).sum()))
    k = min(max(k, min(min_holdout, n // 2)), n // 2) if fraction > 0 else 0
    order = np.argsort(data.time_ms, kind="stable")
    train_rows, hold_rows = order[: n - k], order[n - k:]
    if k:
        cutoff = data.time_ms[hold_rows].min()
        pair_rows = np.flatnonzero(data.pair_time_ms < cutoff)
    else:
        pair_rows = np.arange(data.n_pairs)
    return data.take(train_rows, pair_rows), data.take(hold_rows)


def settle(data: WindowData, window_ms: int) -> WindowData:
    """The examples (and pairs) whose impression time is at least ``window_ms`` before the
    newest impression in the window: positives arrive at once but no-feedback negatives
    only when the attribution window closes, so the newest requests are incomplete (they
    would look all-positive). They stay in the window for a later run. Fake-negative-mode
    rows do not wait: every shown candidate is in as a negative from its impression on."""
    if window_ms <= 0 or not len(data):
        return data
    cutoff = int(data.time_ms.max()) - int(window_ms)
    return data.take(np.flatnonzero((data.time_ms <= cutoff) | data.fnw_rows()),
                     np.flatnonzero(data.pair_time_ms <= cutoff))


def after(data: WindowData, time_ms: int) -> WindowData:
    """The examples and pairs newer than ``time_ms``."""
    return data.take(np.flatnonzero(data.time_ms > time_ms), np.flatnonzero(data.pair_time_ms > time_ms))


def crosses_of(spec: FeatureSpec, settings: TrainerSettings) -> list[list[int]]:
    """``trainer_crosses`` ("a*b" spec field names) as field positions; unknown names are an error."""
    names = list(spec.sparse)
    out = []
    for item in getattr(settings, "trainer_crosses", ()):
        parts = [x.strip() for x in str(item).split("*")]
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"trainer_crosses entry {item!r} is not 'field*field'")
        missing = [x for x in parts if x not in names]
        if missing:
            raise ValueError(f"trainer_crosses {item!r}: no sparse field {missing} in the spec {names}")
        out.append([names.index(parts[0]), names.index(parts[1])])
    return out


def layers_of(settings: TrainerSettings) -> tuple[int, ...]:
    raw: Any = getattr(settings, "trainer_layers", ())
    return tuple(int(x) for x in raw)


def initial_model(spec: FeatureSpec, production: Production | None, settings: TrainerSettings
                  ) -> tuple[Ranker, str]:
    """The model a run starts from, and how: "warm" (production's weights, same
    architecture), "partial" (production's weights where names and shapes match, e.g.
    after turning on a term; the rest new), "prior" (the cold-start graph) or "fresh"."""
    fields, n_dense = len(spec.sparse), len(spec.dense)
    crosses = crosses_of(spec, settings)
    options = {"fm_dim": settings.trainer_fm_dim, "linear": bool(settings.trainer_linear), "crosses": crosses,
               "cross_buckets": settings.trainer_cross_buckets if crosses else 0}
    if production is not None and production.weights:
        try:
            model = from_state_bytes(production.weights)
            cfg = model.config
            if (cfg["buckets"], cfg["n_fields"], cfg["n_dense"]) == (spec.buckets, fields, n_dense):
                if all(cfg.get(k) == v for k, v in options.items()):
                    return model, "warm"
                grown = Ranker(spec.buckets, fields, n_dense, cfg["embedding_dim"], cfg["hidden_dim"],
                               cfg["layers"], **options)
                copy_matching(grown, model)
                return grown, "partial"
            log.warning("production weights do not fit the spec; starting fresh",
                        extra={"version": production.version})
        except Exception as exc:  # noqa: BLE001 - unreadable weights: start fresh, never crash
            log.warning("production weights unreadable; starting fresh",
                        extra={"version": production.version, "error": repr(exc)})
    hidden_dim = production.manifest.hidden_dim if production and production.manifest else \
        settings.trainer_hidden_dim
    model = Ranker(spec.buckets, fields, n_dense, settings.trainer_embedding_dim, hidden_dim, layers_of(settings),
                   **options)
    if production is not None and init_from_coldstart(model, production.onnx):
        return model, "prior"
    return model, "fresh"


def use_threads(settings: TrainerSettings) -> int:
    """Set torch's threads to ``trainer_threads`` (0: `runtime.cpu_budget`); the count."""
    threads = settings.trainer_threads if settings.trainer_threads > 0 else runtime.cpu_budget()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def train_once(data: WindowData, production: Production | None, spec: FeatureSpec, settings: TrainerSettings,
               *, should_stop: Callable[[], bool] | None = None) -> Candidate:
    """Split off the holdout and train a candidate on the rest."""
    torch.manual_seed(settings.trainer_seed)
    use_threads(settings)
    data = settle(data, settings.attribution_window_ms)
    model, init = initial_model(spec, production, settings)
    seen: Any = production.manifest.metrics.get("train_until_ms") if production and production.manifest else None
    if seen is None and init == "warm":
        seen = model.train_until_ms
    lr = settings.trainer_lr
    if settings.trainer_incremental and init == "warm" and seen is not None:
        # Production has learned everything up to ``seen``: learn what came after it, once.
        data = after(data, int(seen))
        lr = settings.trainer_warm_lr or lr
    train, recent = split_holdout(data, settings.trainer_holdout_fraction, settings.trainer_min_holdout,
                                  int(seen) if seen is not None else None)
    holdout = final_labels(recent, data)
    fitted = fit(model, train, settings, lr, should_stop)
    n = len(train)
    until = int(train.time_ms.max()) if n else (int(seen) if seen is not None and init == "warm" else 0)
    model.train_until_ms = until or None
    return Candidate(model=model, spec=spec, init=init, parent_version=production.version if production else "",
                     holdout=holdout, train_rows=n, train_pairs=train.n_pairs, epochs=fitted.epochs,
                     seconds=fitted.seconds, device=fitted.device, final_loss=fitted.final_loss,
                     stopped=fitted.stopped, train_until_ms=until, recent=recent)


def fold_recent(candidate: Candidate, settings: TrainerSettings,
                newer: Callable[[int], WindowData | None] | None = None) -> int:
    """The candidate, once the gate has judged it on its holdout, learns the holdout's rows
    (its newest examples), then ``newer(train_until_ms)``'s (the window's rows that came while
    it trained, when given), on its sparse tables, in time order, ``trainer_delta_every_n``
    rows a step, with the dense network frozen: as the deltas would learn them on it once it
    serves (`deltas.DeltaTrainer.requeue`), but before it serves. Its ``train_until_ms`` moves
    to the newest row learned, so the deltas do not learn them again. Rows learned.

    Measured on a bench/learning.py capture (16,500 requests, a version every 5,000): v3's
    newest training example was 27 s older than its announcement (the holdout, the training,
    the trainer's read lag), and the repeated (user, item) impressions those seconds hold are
    most of what a delta teaches; on v3's first 500 requests it ranked calls at 0.631 (static
    0.687) and served, with the deltas still relearning that backlog, 0.617, while v2 with its
    deltas would have ranked them at 0.716. The same v3 having learned its holdout: 0.721.
    With the holdout learned, the training's own ~10-20 s still came back only through the
    deltas, and the first ~300 requests of a version served without them."""
    model = candidate.model
    if all(t is None for t in (model.fm, model.bias, model.cross)):
        return 0
    learned = _fold(candidate, candidate.recent, settings)
    if newer is not None:
        learned += _fold(candidate, newer(candidate.train_until_ms), settings)
    candidate.folded_rows = learned
    return learned


def _fold(candidate: Candidate, rows: WindowData | None, settings: TrainerSettings) -> int:
    if rows is None or not len(rows):
        return 0
    model = candidate.model
    rows = rows.take(np.argsort(rows.time_ms, kind="stable"))
    fnw = rows.fnw if rows.fnw is not None and rows.fnw_rows().any() else None
    grads = [p.requires_grad for p in model.parameters()]
    sparse_mode = [t.sparse for t in model._tables()]
    frozen_dense(model)
    model.train()
    step = max(1, settings.trainer_delta_every_n)
    for start in range(0, len(rows), step):
        part = slice(start, start + step)
        learn_sparse(model, settings, rows.sparse[part], rows.dense[part], rows.label[part], rows.weight[part],
                     None if fnw is None else fnw[part])
    for p, g in zip(model.parameters(), grads, strict=True):
        p.requires_grad_(g)
        p.grad = None
    for t, mode in zip(model._tables(), sparse_mode, strict=True):
        t.sparse = mode
    model.eval()
    candidate.train_until_ms = max(candidate.train_until_ms, int(rows.time_ms.max()))
    model.train_until_ms = candidate.train_until_ms
    return len(rows)


def run(data: WindowData, production: Production | None, spec: FeatureSpec, settings: TrainerSettings,
        *, should_stop: Callable[[], bool] | None = None, static: Production | None = None,
        newer: Callable[[int], WindowData | None] | None = None) -> Outcome:
    """Train, evaluate, export and check: everything but publishing (``static``: the
    cold-start model the gate also compares with; ``newer``: the rows that came after a time,
    learned with the holdout by `fold_recent`)."""
    t0 = time.perf_counter()
    candidate = train_once(data, production, spec, settings, should_stop=should_stop)
    t1 = time.perf_counter()
    evaluation = evaluate(candidate, production, settings, static)
    t2 = time.perf_counter()
    outcome = Outcome(candidate, evaluation, timings={"train": t1 - t0, "evaluate": t2 - t1})
    if candidate.stopped:
        outcome.reason = "stopped before the end of training"
        return outcome
    if not evaluation.decision.publish:
        outcome.reason = evaluation.decision.reason
        return outcome
    if settings.trainer_fold_holdout:
        fold_recent(candidate, settings, newer)
        outcome.timings["fold"] = time.perf_counter() - t2
        t2 = time.perf_counter()
    try:
        onnx_bytes = export_onnx(candidate.model, spec)
        sample = candidate.holdout if len(candidate.holdout) else data
        rows = slice(0, settings.trainer_parity_rows)
        outcome.parity_max_abs_diff = parity(candidate.model, onnx_bytes, sample.sparse[rows], sample.dense[rows])
        if not outcome.parity_max_abs_diff <= settings.trainer_parity_tol:
            raise ExportError(f"ONNX parity {outcome.parity_max_abs_diff:.2e} > {settings.trainer_parity_tol}")
        check_contract(onnx_bytes, spec, candidate.model.config["hidden_dim"])
        check_finite_weights(onnx_bytes)
    except (ExportError, ContractError) as exc:
        outcome.reason = f"export refused: {exc}"
        return outcome
    finally:
        outcome.timings["export"] = time.perf_counter() - t2
    outcome.onnx = onnx_bytes
    outcome.publish = True
    outcome.reason = evaluation.decision.reason
    return outcome
