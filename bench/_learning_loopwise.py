"""Loopwise on the replay stream: the cold-start model, and periodic retraining.

- `OnnxScorer`: an ONNX ranker scored in-process with onnxruntime on the
  hashed inputs of `_learning_stream.featurize` (the inference service's own
  `InputBuilder` output): the static cold-start model, and the shadow scores
  of every version the loop published.
- `StandinTrainer`: a stand-in for ``loopwise.trainer`` while it is being
  written. Same architecture as the cold-start model (one embedding table
  summed over fields, concatenated with the dense features, a ReLU layer, a
  sigmoid), warm-started from the serving model's ONNX weights, trained with
  SparseAdam (embeddings) + Adam (the rest) on binary cross-entropy, exported
  by writing the trained weights into the parent's ONNX graph (exact parity,
  no ``torch.onnx``). It does not apply the miner's IPS weights or the
  validation gate: the real trainer does.
- `examples_to_arrays`: the miner's `Example` records (from Kafka) to model
  inputs, hashed with `InputBuilder` exactly as serving hashes a request.
- `RealTrainer`: the real trainer's pure API in process (whole versions, and its
  `DeltaTrainer` for `_learning_inprocess.run_inprocess`'s deltas).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from _learning_stream import Stream

from loopwise.features import FeatureSpec, InputBuilder
from loopwise.modelstore.contract import DEFAULT_MODEL, PROB_OUTPUT, feeds
from loopwise.v1 import features_pb2, learning_pb2

SCORE_CHUNK = 1 << 16
REPLAY_WINDOW = 400_000  # stand-in: replay rows are drawn from this many before the new ones


class OnnxScorer:
    def __init__(self, artifact: bytes, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(artifact, options, providers=["CPUExecutionProvider"])

    def score(self, sparse: np.ndarray, dense: np.ndarray) -> np.ndarray:
        out = np.empty(len(sparse), dtype=np.float64)
        for a in range(0, len(sparse), SCORE_CHUNK):
            b = min(a + SCORE_CHUNK, len(sparse))
            (prob,) = self.session.run([PROB_OUTPUT], feeds(sparse[a:b].astype(np.int64),
                                                            dense[a:b].astype(np.float32)))
            out[a:b] = prob
        return out


@dataclass
class TrainStats:
    runs: int = 0
    examples: int = 0
    seconds: float = 0.0
    export_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def examples_per_s(self) -> float:
        return self.examples / self.seconds if self.seconds else 0.0


class StandinTrainer:
    """Warm-started trainer of the cold-start architecture (see the module docstring)."""

    name = "bench stand-in (torch; cold-start architecture, warm start, BCE, no gate)"

    def __init__(self, parent: bytes, spec: FeatureSpec, *, lr: float = 3e-3, emb_lr: float = 1e-1,
                 batch: int = 512, epochs: int = 1, threads: int = 0, seed: int = 0) -> None:
        import onnx
        import torch
        from onnx import numpy_helper

        if threads:
            torch.set_num_threads(threads)
        torch.manual_seed(seed)
        self.torch = torch
        self.graph = onnx.load_from_string(parent)
        w = {init.name: numpy_helper.to_array(init).copy() for init in self.graph.graph.initializer}
        self.emb = torch.nn.Embedding.from_pretrained(torch.from_numpy(w["embedding"]), freeze=False,
                                                      sparse=True, padding_idx=0)
        self.dense_params = {name: torch.nn.Parameter(torch.from_numpy(w[name])) for name in ("w1", "b1", "w2", "b2")}
        self.opt_sparse = torch.optim.SparseAdam([self.emb.weight], lr=emb_lr)
        self.opt_dense = torch.optim.Adam(list(self.dense_params.values()), lr=lr)
        self.batch, self.epochs = batch, epochs
        self.rng = np.random.default_rng(seed)
        self.stats = TrainStats()
        self.spec = spec
        self._s = np.zeros((0, len(spec.sparse)), dtype=np.int64)
        self._d = np.zeros((0, len(spec.dense)), dtype=np.float32)
        self._y = np.zeros(0, dtype=np.float32)

    def _logit(self, sparse: Any, dense: Any) -> Any:
        p = self.dense_params
        x = self.torch.cat([self.emb(sparse).sum(1), dense], dim=1)
        h = self.torch.relu(x @ p["w1"] + p["b1"])
        return (h @ p["w2"] + p["b2"]).squeeze(1)

    def fit(self, sparse: np.ndarray, dense: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None) -> float:
        """Train ``epochs`` passes over the rows (shuffled); the mean loss of the last pass."""
        torch = self.torch
        start = time.perf_counter()
        s_all = torch.from_numpy(sparse.astype(np.int64))
        d_all = torch.from_numpy(dense.astype(np.float32))
        y_all = torch.from_numpy(y.astype(np.float32))
        w_all = torch.from_numpy(weight.astype(np.float32)) if weight is not None else None
        loss_sum, count = 0.0, 0
        for _ in range(self.epochs):
            order = torch.from_numpy(self.rng.permutation(len(y)))
            loss_sum, count = 0.0, 0
            for a in range(0, len(y), self.batch):
                idx = order[a:a + self.batch]
                logit = self._logit(s_all[idx], d_all[idx])
                loss = torch.nn.functional.binary_cross_entropy_with_logits(
                    logit, y_all[idx], weight=None if w_all is None else w_all[idx])
                self.opt_sparse.zero_grad()
                self.opt_dense.zero_grad()
                loss.backward()
                self.opt_sparse.step()
                self.opt_dense.step()
                loss_sum += float(loss.detach()) * len(idx)
                count += len(idx)
        self.stats.runs += 1
        self.stats.examples += len(y) * self.epochs
        self.stats.seconds += time.perf_counter() - start
        return loss_sum / max(count, 1)

    # -- the interface the loops use (shared with `RealTrainer`) ----------------------------

    def train_rows(self, stream: Stream, end: int, new_from: int) -> tuple[bytes | None, dict[str, Any]]:
        """In-process loop: train on stream rows ``[new_from, end)`` plus an equal replay sample of
        older ones; the new artifact."""
        assert stream.sparse is not None and stream.dense is not None
        rows = training_rows(end, new_from, 1.0, REPLAY_WINDOW, self.rng)
        loss = self.fit(stream.sparse[rows], stream.dense[rows], stream.label.reshape(-1)[rows])
        return self.export(), {"rows": int(len(rows)), "loss": round(loss, 4)}

    def train_examples(self, new: Sequence[learning_pb2.Example], pairs: Sequence[Any]
                       ) -> tuple[bytes | None, dict[str, Any]]:
        """Stack loop: the miner's new examples (complete requests) plus an equal replay sample."""
        s_new, d_new, y_new, _ = examples_to_arrays(new, self.spec)
        old_n = min(len(self._y), len(y_new))
        old = self.rng.choice(len(self._y), size=old_n, replace=False) if old_n else np.zeros(0, np.int64)
        fit = (np.concatenate([self._s[old], s_new]), np.concatenate([self._d[old], d_new]),
               np.concatenate([self._y[old], y_new]))
        self._s, self._d = np.concatenate([self._s, s_new]), np.concatenate([self._d, d_new])
        self._y = np.concatenate([self._y, y_new])
        if not len(fit[2]):
            return None, {"rows": 0, "reason": "no examples yet"}
        loss = self.fit(*fit)
        return self.export(), {"rows": int(len(fit[2])), "positives": int(y_new.sum()), "loss": round(loss, 4)}

    def publish(self, store: Any, rdb: Any, tenant: str, model: str, artifact: bytes, parent: str) -> str:
        from loopwise import redis_keys
        from loopwise.modelstore import coldstart

        manifest = store.publish(tenant, model, artifact, feature_spec=self.spec, hidden_dim=coldstart.HIDDEN_DIM,
                                 parent_version=parent, source="bench-standin")
        rdb.set(redis_keys.model_pointer(tenant, model), manifest.version)
        return manifest.version

    def export(self) -> bytes:
        """The parent's ONNX graph with the trained weights."""
        from onnx import numpy_helper

        start = time.perf_counter()
        current = {"embedding": self.emb.weight, **self.dense_params}
        for init in self.graph.graph.initializer:
            if init.name in current:
                init.CopyFrom(numpy_helper.from_array(current[init.name].detach().numpy(), init.name))
        buf = io.BytesIO(self.graph.SerializeToString())
        self.stats.export_seconds += time.perf_counter() - start
        return buf.getvalue()


# -- the miner's examples as model inputs ----------------------------------------------------


def examples_to_arrays(examples: Sequence[learning_pb2.Example], spec: FeatureSpec
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(sparse, dense, label, weight) of `Example` records, one row per (request, candidate)
    (a correction's positive wins over the negative it corrects), hashed with `InputBuilder`
    one request at a time (user and context are the request's)."""
    builder = InputBuilder(spec)
    latest: dict[tuple[str, str], learning_pb2.Example] = {}
    for ex in examples:
        key = (ex.request_id, ex.candidate_id)
        have = latest.get(key)
        if have is None or ex.label > have.label:
            latest[key] = ex
    by_request: dict[str, list[learning_pb2.Example]] = {}
    for ex in latest.values():
        by_request.setdefault(ex.request_id, []).append(ex)
    sparse_parts, dense_parts, labels, weights = [], [], [], []
    for group in by_request.values():
        first = group[0]
        cands = features_pb2.Candidates(ids=[ex.candidate_id for ex in group])
        for name in first.candidate.categorical:
            cands.categorical.add(name=name, values=[ex.candidate.categorical.get(name, "") for ex in group])
        for name in first.candidate.numeric:
            cands.numeric.add(name=name, values=[ex.candidate.numeric.get(name, 0.0) for ex in group])
        s, d = builder.build(first.user_id, first.user, first.context, cands)
        sparse_parts.append(s)
        dense_parts.append(d)
        labels.extend(ex.label for ex in group)
        weights.extend(ex.weight or 1.0 for ex in group)
    if not labels:
        return (np.zeros((0, len(spec.sparse)), dtype=np.int64), np.zeros((0, len(spec.dense)), dtype=np.float32),
                np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.float32))
    return (np.concatenate(sparse_parts), np.concatenate(dense_parts), np.asarray(labels, dtype=np.float32),
            np.asarray(weights, dtype=np.float32))


# -- the loop without a stack ----------------------------------------------------------------


@dataclass
class LoopRun:
    scores: np.ndarray  # (n * k,) what the serving version scored
    version: np.ndarray  # (n,) version number serving each request (1 = cold start)
    trainer: str
    stats: TrainStats
    mode: str
    extra: dict[str, Any] = field(default_factory=dict)


def training_rows(end_row: int, new_from: int, replay: float, window: int, rng: np.random.Generator) -> np.ndarray:
    """Rows to train on at a trigger: every new row since ``new_from`` plus ``replay`` times as
    many older rows (uniformly, from the last ``window`` rows before them)."""
    new = np.arange(new_from, end_row)
    lo = max(0, new_from - window)
    old_n = min(new_from - lo, int(replay * len(new)))
    old = rng.choice(np.arange(lo, new_from), size=old_n, replace=False) if old_n > 0 else np.zeros(0, np.int64)
    return np.concatenate([old, new])


# -- the real trainer, in-process -------------------------------------------------------------


class RealTrainer:
    """``loopwise.trainer``'s pure API (`train.run`: holdout split, warm start, clipped-IPS +
    Bradley-Terry loss, gate, ONNX export with parity) on the replay window, as the service
    runs it; the bench only decides when to trigger."""

    name = "loopwise.trainer (train.run in-process)"

    def __init__(self, parent: bytes, spec: FeatureSpec, *, threads: int = 0, window_rows: int | None = None,
                 overrides: dict[str, Any] | None = None) -> None:
        import dataclasses
        import hashlib

        from loopwise.modelstore import Manifest
        from loopwise.trainer import train
        from loopwise.trainer.settings import TrainerSettings

        base = TrainerSettings()
        typed = {}
        for name, value in (overrides or {}).items():
            if name not in {f.name for f in dataclasses.fields(base)}:
                raise ValueError(f"TrainerSettings has no field {name!r}")
            default = getattr(base, name)
            typed[name] = type(default)(value) if not isinstance(default, bool) else str(value).lower() == "true"
        self.settings = dataclasses.replace(base, trainer_threads=threads or base.trainer_threads, **typed)
        self.window_rows = window_rows or self.settings.trainer_window_rows
        self.train = train
        self.spec = spec
        manifest = Manifest(tenant="default", model=DEFAULT_MODEL, version="v1",
                            sha256=hashlib.sha256(parent).hexdigest(), feature_spec=spec.to_dict(),
                            hidden_dim=64, source="coldstart")
        self.production: Any = train.Production(version="v1", onnx=parent, manifest=manifest)
        self.stats = TrainStats()
        self.examples: list[learning_pb2.Example] = []
        self.pairs: list[Any] = []
        self.outcome: Any = None
        self._version = 1

    def _run(self, data: Any) -> tuple[bytes | None, dict[str, Any]]:
        from loopwise.trainer.model import state_bytes

        outcome = self.train.run(data, self.production, self.spec, self.settings)
        self.outcome = outcome
        cand = outcome.candidate
        self.stats.runs += 1
        self.stats.examples += cand.train_rows * cand.epochs
        self.stats.seconds += cand.seconds
        self.stats.export_seconds += outcome.timings.get("export", 0.0)
        info = {"rows": int(len(data)), "train_rows": cand.train_rows, "pairs": cand.train_pairs, "init": cand.init,
                "loss": round(cand.final_loss, 4), "published": outcome.publish, "reason": outcome.reason,
                "holdout_auc": round(outcome.evaluation.candidate.get("auc", float("nan")), 4)}
        if not outcome.publish:
            return None, info
        import hashlib

        from loopwise.modelstore import Manifest, sparse

        self._version += 1
        version = f"v{self._version}"
        # the manifest fields the delta trainer builds on (publish.publish writes them too)
        manifest = Manifest(tenant="default", model=DEFAULT_MODEL, version=version,
                            sha256=hashlib.sha256(outcome.onnx).hexdigest(), feature_spec=self.spec.to_dict(),
                            hidden_dim=int(cand.model.config["hidden_dim"]), source="trainer",
                            metrics={"train_until_ms": cand.train_until_ms,
                                     "sparse_layout": sparse.Layout.of_config(cand.model.config).to_dict()})
        self.production = self.train.Production(version=version, onnx=outcome.onnx, manifest=manifest,
                                                weights=state_bytes(cand.model))
        return outcome.onnx, info

    def delta_trainer(self) -> Any:
        """The trainer's own `DeltaTrainer` with these settings; None when deltas are off."""
        from loopwise.trainer.deltas import DeltaTrainer

        return DeltaTrainer("default", DEFAULT_MODEL, self.settings) if self.settings.deltas else None

    def train_until_ms(self) -> int:
        """The newest training example's time of the last run's candidate."""
        assert self.outcome is not None, "no run yet"
        return int(self.outcome.candidate.train_until_ms)

    @staticmethod
    def row_times(stream: Stream, start: int = 0, end: int | None = None) -> np.ndarray:
        """Stream rows ``[start, end)``'s times as `train_rows` gives them to the trainer (ms;
        requests of one second apart by their index)."""
        req = np.arange(start, stream.n * stream.k if end is None else end) // stream.k
        return stream.timestamps()[req].astype(np.int64) * 1000 + req % 1000

    def train_rows(self, stream: Stream, end: int, new_from: int) -> tuple[bytes | None, dict[str, Any]]:
        """In-process loop: the window is the last ``window_rows`` labelled stream rows (weight 1: no
        miner, so no IPS weights and no preference pairs)."""
        from loopwise.trainer.data import WindowData, user_keys

        assert stream.sparse is not None and stream.dense is not None
        start = max(0, end - self.window_rows)
        ts = self.row_times(stream, start, end)
        users = stream.users()[np.arange(start, end) // stream.k]
        data = WindowData(stream.sparse[start:end].astype(np.int64), stream.dense[start:end],
                          stream.label.reshape(-1)[start:end].astype(np.float32),
                          np.ones(end - start, dtype=np.float32), ts, user_keys(users.tolist()))
        return self._run(data)

    def train_examples(self, new: Sequence[learning_pb2.Example], pairs: Sequence[Any]
                       ) -> tuple[bytes | None, dict[str, Any]]:
        """Stack loop: the window of every complete example and pair so far (bounded)."""
        from loopwise.features import InputBuilder
        from loopwise.trainer.data import build_window_data

        self.examples = (self.examples + list(new))[-self.window_rows:]
        self.pairs = (self.pairs + list(pairs))[-self.window_rows:]
        if len(self.examples) < self.settings.trainer_min_examples:
            return None, {"rows": len(self.examples), "reason": f"< {self.settings.trainer_min_examples} examples"}
        data = build_window_data(InputBuilder(self.spec), self.examples, self.pairs)
        return self._run(data)

    def publish(self, store: Any, rdb: Any, tenant: str, model: str, artifact: bytes, parent: str) -> str:
        """The trainer's own publishing (artifact, weights, manifest, Redis pointer)."""
        from loopwise.trainer import publish as pub

        previous = self.train.Production(version=parent, onnx=b"")
        manifest = pub.publish(store, rdb, tenant, model, self.outcome, previous)
        self.production.version = manifest.version
        return manifest.version


def make_trainer(kind: str, parent: bytes, spec: FeatureSpec, *, threads: int = 0, seed: int = 0,
                 say: Callable[[str], None] = print, overrides: dict[str, str] | None = None) -> Any:
    """``auto``: the real trainer when ``loopwise.trainer.train`` imports, else the stand-in."""
    if kind in ("auto", "loopwise"):
        try:
            return RealTrainer(parent, spec, threads=threads, overrides=overrides)
        except Exception as exc:  # noqa: BLE001 - the trainer is being written; fall back, say why
            if kind == "loopwise":
                raise
            say(f"loopwise.trainer unusable in-process ({exc!r}); using the bench stand-in")
    return StandinTrainer(parent, spec, threads=threads, seed=seed)
