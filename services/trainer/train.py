"""The pure training API: no Kafka, no Redis, no store; a benchmark calls these in-process.

Usage (see the README)::

    data = build_window_data(InputBuilder(spec), example_records, pair_records)
    outcome = run(data, Production("v1", onnx_bytes), spec, TrainerSettings(trainer_epochs=2))
    outcome.publish, outcome.reason, outcome.figures()["candidate_auc"], outcome.onnx

- `split_holdout`: the most recent slice of examples (by time) is held out;
  pairs from that slice are left out of training too.
- `train_once`: warm start (the production model's torch weights when the
  trainer produced it, else the cold-start graph's prior when shapes match,
  else fresh), then epochs of clipped-IPS loss on examples plus the
  Bradley-Terry term on pairs; CUDA with bf16 autocast when available.
- `evaluate`: candidate (torch) and production (onnxruntime) on the holdout,
  then the gate.
- `run`: all of it plus ONNX export, parity and the serving contract.
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

from loopwise.features import FeatureSpec
from loopwise.modelstore import Manifest

from . import evaluation as ev
from .data import WindowData
from .export import ExportError, check_contract, export_onnx, parity, predict_onnx, session
from .model import Ranker, bradley_terry_loss, from_state_bytes, init_from_coldstart, ips_loss
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
class Evaluation:
    candidate: dict[str, float]
    production: dict[str, float] | None
    decision: ev.Decision
    holdout_rows: int


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
        c = self.candidate
        out.update(holdout_rows=self.evaluation.holdout_rows, train_rows=c.train_rows, train_pairs=c.train_pairs,
                   train_until_ms=c.train_until_ms, epochs=c.epochs, fit_seconds=c.seconds, examples_per_s=c.examples_per_s,
                   final_loss=c.final_loss, parity_max_abs_diff=self.parity_max_abs_diff,
                   **{f"{k}_seconds": v for k, v in self.timings.items()})
        return {k: float(v) for k, v in out.items()}


def tolerances(settings: TrainerSettings) -> ev.Tolerances:
    return ev.Tolerances(auc=settings.trainer_tolerance_auc, gauc=settings.trainer_tolerance_gauc,
                         logloss=settings.trainer_tolerance_logloss, ece=settings.trainer_tolerance_ece)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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


def layers_of(settings: TrainerSettings) -> tuple[int, ...]:
    raw: Any = getattr(settings, "trainer_layers", ())
    return tuple(int(x) for x in raw)


def initial_model(spec: FeatureSpec, production: Production | None, settings: TrainerSettings
                  ) -> tuple[Ranker, str]:
    fields, n_dense = len(spec.sparse), len(spec.dense)
    if production is not None and production.weights:
        try:
            model = from_state_bytes(production.weights)
            cfg = model.config
            if (cfg["buckets"], cfg["n_fields"], cfg["n_dense"], cfg.get("fm_dim", 0)) == (
                    spec.buckets, fields, n_dense, settings.trainer_fm_dim):
                return model, "warm"
            log.warning("production weights do not fit the spec or the architecture; starting fresh",
                        extra={"version": production.version})
        except Exception as exc:  # noqa: BLE001 - unreadable weights: start fresh, never crash
            log.warning("production weights unreadable; starting fresh",
                        extra={"version": production.version, "error": repr(exc)})
    hidden_dim = production.manifest.hidden_dim if production and production.manifest else \
        settings.trainer_hidden_dim
    model = Ranker(spec.buckets, fields, n_dense, settings.trainer_embedding_dim, hidden_dim, layers_of(settings),
                   fm_dim=settings.trainer_fm_dim)
    if production is not None and init_from_coldstart(model, production.onnx):
        return model, "prior"
    return model, "fresh"


def train_once(data: WindowData, production: Production | None, spec: FeatureSpec, settings: TrainerSettings,
               *, should_stop: Callable[[], bool] | None = None) -> Candidate:
    """Split off the holdout and train a candidate on the rest."""
    torch.manual_seed(settings.trainer_seed)
    if settings.trainer_threads > 0:
        torch.set_num_threads(settings.trainer_threads)
    seen = production.manifest.metrics.get("train_until_ms") if production and production.manifest else None
    train, holdout = split_holdout(data, settings.trainer_holdout_fraction, settings.trainer_min_holdout,
                                   int(seen) if seen is not None else None)
    model, init = initial_model(spec, production, settings)
    device = pick_device(settings.trainer_device)
    model.to(device).train()
    # Lazy (sparse) Adam on the embedding table: only the rows of a batch move,
    # ~4x faster on CPU than dense Adam over 2^18 rows; Adam on the rest.
    model.set_sparse(settings.trainer_sparse_embedding)
    tables = {id(p) for p in model.sparse_parameters()}
    rest = [p for p in model.parameters() if id(p) not in tables]
    if settings.trainer_sparse_embedding:
        optimizers: list[torch.optim.Optimizer] = [
            torch.optim.SparseAdam(model.sparse_parameters(), lr=settings.trainer_lr),
            torch.optim.Adam(rest, lr=settings.trainer_lr, weight_decay=settings.trainer_weight_decay)]
    else:
        optimizers = [torch.optim.Adam(model.parameters(), lr=settings.trainer_lr,
                                       weight_decay=settings.trainer_weight_decay)]

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    sparse, dense, label = t(train.sparse), t(train.dense), t(train.label)
    weight = t(np.minimum(train.weight, settings.trainer_max_weight).astype(np.float32))
    ps, pd, os_, od, strength = (t(train.pref_sparse), t(train.pref_dense), t(train.other_sparse),
                                 t(train.other_dense), t(train.strength))
    n, n_pairs = len(train), train.n_pairs
    batch = max(1, settings.trainer_batch_size)
    steps = max(1, math.ceil(n / batch)) if n else (1 if n_pairs else 0)
    pair_batch = math.ceil(n_pairs / steps) if n_pairs and steps else 0
    autocast = device.type == "cuda"
    gen = torch.Generator(device="cpu").manual_seed(settings.trainer_seed)
    started = time.perf_counter()
    final_loss, epochs_done, stopped = float("nan"), 0, False
    for _ in range(settings.trainer_epochs):
        perm = torch.randperm(n, generator=gen).to(device) if n else None
        pperm = torch.randperm(n_pairs, generator=gen).to(device) if n_pairs else None
        total = 0.0
        for step in range(steps):
            if should_stop is not None and should_stop():
                stopped = True
                break
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
                loss = torch.zeros((), device=device)
                if perm is not None:
                    rows = perm[step * batch:(step + 1) * batch]
                    logit, _ = model.logits(sparse[rows], dense[rows])
                    loss = loss + ips_loss(logit.float(), label[rows], weight[rows])
                if pperm is not None and settings.trainer_bt_weight > 0:
                    prow = pperm[step * pair_batch:(step + 1) * pair_batch]
                    if len(prow):
                        zp, _ = model.logits(ps[prow], pd[prow])
                        zo, _ = model.logits(os_[prow], od[prow])
                        loss = loss + settings.trainer_bt_weight * bradley_terry_loss(
                            zp.float(), zo.float(), strength[prow])
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
            total += float(loss.detach())
        if stopped:
            break
        epochs_done += 1
        final_loss = total / max(steps, 1)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    model.set_sparse(False)
    model.cpu().eval()
    return Candidate(model=model, spec=spec, init=init, parent_version=production.version if production else "",
                     holdout=holdout, train_rows=n, train_pairs=n_pairs, epochs=epochs_done, seconds=seconds,
                     device=str(device), final_loss=final_loss, stopped=stopped,
                     train_until_ms=int(train.time_ms.max()) if n else 0)


def evaluate(candidate: Candidate, production: Production | None, settings: TrainerSettings) -> Evaluation:
    """Candidate and production on the same holdout, and the gate's decision."""
    h = candidate.holdout
    bins = settings.trainer_ece_bins
    cand = ev.evaluate(h.label, candidate.predict(h.sparse, h.dense), h.user, bins)
    prod = None
    if production is not None:
        try:
            prob, _ = predict_onnx(session(production.onnx, threads=max(settings.trainer_threads, 1)),
                                   h.sparse, h.dense)
            prod = ev.evaluate(h.label, prob, h.user, bins)
        except Exception as exc:  # noqa: BLE001 - a production model that cannot score is no bar
            log.error("production model could not score the holdout",
                      extra={"version": production.version, "error": repr(exc)})
    if len(h) < settings.trainer_min_holdout and production is not None:
        decision = ev.Decision(False, f"holdout of {len(h)} rows < {settings.trainer_min_holdout}")
    else:
        decision = ev.decide(cand, prod, tolerances(settings))
    return Evaluation(cand, prod, decision, len(h))


def run(data: WindowData, production: Production | None, spec: FeatureSpec, settings: TrainerSettings,
        *, should_stop: Callable[[], bool] | None = None) -> Outcome:
    """Train, evaluate, export and check: everything but publishing."""
    t0 = time.perf_counter()
    candidate = train_once(data, production, spec, settings, should_stop=should_stop)
    t1 = time.perf_counter()
    evaluation = evaluate(candidate, production, settings)
    t2 = time.perf_counter()
    outcome = Outcome(candidate, evaluation, timings={"train": t1 - t0, "evaluate": t2 - t1})
    if candidate.stopped:
        outcome.reason = "stopped before the end of training"
        return outcome
    if not evaluation.decision.publish:
        outcome.reason = evaluation.decision.reason
        return outcome
    try:
        onnx_bytes = export_onnx(candidate.model, spec)
        sample = candidate.holdout if len(candidate.holdout) else data
        rows = slice(0, settings.trainer_parity_rows)
        outcome.parity_max_abs_diff = parity(candidate.model, onnx_bytes, sample.sparse[rows], sample.dense[rows])
        if not outcome.parity_max_abs_diff <= settings.trainer_parity_tol:
            raise ExportError(f"ONNX parity {outcome.parity_max_abs_diff:.2e} > {settings.trainer_parity_tol}")
        check_contract(onnx_bytes, spec, candidate.model.config["hidden_dim"])
    except ExportError as exc:
        outcome.reason = f"export refused: {exc}"
        return outcome
    finally:
        outcome.timings["export"] = time.perf_counter() - t2
    outcome.onnx = onnx_bytes
    outcome.publish = True
    outcome.reason = evaluation.decision.reason
    return outcome
