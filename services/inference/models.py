"""Loaded models: onnxruntime sessions per (tenant, model), checked before they
serve and on every answer against the serving contract (`loopwise.modelstore.contract`).

Before a version serves, `load` runs `contract.check_artifact`: every weight
finite, an onnxruntime session, the contract's inputs and outputs, and a
warm-up on the recent real inputs of that (tenant, model) (`Guard.recent`, a
ring of rows sampled from the last `RECENT_REQUESTS` Rank calls) plus ids
sampled across the whole hash space, every output finite and in range.

Every answer is checked too (`LoadedModel.score`): non-finite scores are
never served. They are replaced by the answer of the previous good version
(`Guard.fallback`, set by `ModelRegistry.put`), counted in
``loopwise_inference_nonfinite_scores_total{result="fallback"}`` and logged
once per version; without a good answer the call fails
(``result="failed"``, FAILED_PRECONDITION ``nonfinite_scores``).

A trainer version's additive sparse tables (``sparse.npz``, the base that
deltas apply to: `loopwise.modelstore.sparse`) are loaded with it
(`LoadedModel.sparse_base`); a version without them that is not a trainer's
(the cold-start model) has zero first-order and cross tables. A trainer version
published without its tables, or whose tables do not load, serves without
deltas (`LoadedModel.takes_deltas` False, logged).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from loopwise.errors import ModelError
from loopwise.features import InputBuilder
from loopwise.modelstore import Manifest, ModelStore, StoreError, contract, sparse
from loopwise.modelstore.contract import OUTPUTS, feeds

log = logging.getLogger(__name__)

RECENT_REQUESTS = 32  # Rank calls whose inputs the next warm-up replays
RECENT_ROWS = 64  # rows kept per call (evenly spaced over its candidates)

Counter = Callable[[str, str, str, str], None]


class Guard:
    """Per (tenant, model): the recent real inputs, the version to fall back to,
    and the versions seen answering non-finite scores."""

    def __init__(self, tenant: str, model: str, count: Counter | None = None) -> None:
        self.tenant = tenant
        self.model = model
        self.recent: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=RECENT_REQUESTS)
        self.fallback: LoadedModel | None = None
        self.bad: set[str] = set()
        self._count = count

    def remember(self, sparse: np.ndarray, dense: np.ndarray) -> None:
        n = len(sparse)
        if n > RECENT_ROWS:
            rows = np.linspace(0, n - 1, RECENT_ROWS).astype(np.int64)
            self.recent.append((sparse[rows], dense[rows]))
        elif n:
            self.recent.append((sparse.copy(), dense.copy()))

    def inputs(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return list(self.recent)

    def nonfinite(self, loaded: LoadedModel, sparse: np.ndarray,
                  dense: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The fallback's answer for a call ``loaded`` answered with non-finite scores."""
        first = loaded.version not in self.bad
        self.bad.add(loaded.version)
        fallback = self.fallback
        if fallback is not None and fallback.version != loaded.version:
            prob, hidden = fallback.run(sparse, dense)
            if _finite(prob, hidden):
                self._counted(loaded.version, "fallback")
                if first:
                    log.error("model answered non-finite scores; answering with the previous good version",
                              extra={"tenant": self.tenant, "model": self.model, "version": loaded.version,
                                     "fallback": fallback.version})
                return prob, hidden
        self._counted(loaded.version, "failed")
        log.error("model answered non-finite scores and no good version can answer",
                  extra={"tenant": self.tenant, "model": self.model, "version": loaded.version,
                         "fallback": fallback.version if fallback else None})
        raise ModelError(f"{self.tenant}/{self.model}/{loaded.version} produced non-finite scores",
                         reason="nonfinite_scores")

    def _counted(self, version: str, result: str) -> None:
        if self._count is not None:
            self._count(self.tenant, self.model, version, result)


def _finite(prob: np.ndarray, hidden: np.ndarray) -> bool:
    return bool(np.isfinite(prob).all() and np.isfinite(hidden).all())


@dataclass(frozen=True)
class LoadedModel:
    tenant: str
    model: str
    version: str
    manifest: Manifest
    session: ort.InferenceSession
    builder: InputBuilder
    guard: Guard | None = field(default=None, compare=False, repr=False)
    # The version's own sparse tables and their layout (None: none, zero tables).
    sparse_base: Mapping[str, np.ndarray] | None = field(default=None, compare=False, repr=False)
    sparse_layout: sparse.Layout | None = None
    takes_deltas: bool = True

    def fits(self, layout: sparse.Layout | None) -> bool:
        """Whether deltas of ``layout`` apply to this version."""
        if not self.takes_deltas or layout is None:
            return False
        if self.sparse_layout is not None:
            return layout == self.sparse_layout
        return layout.fm_dim == 0 and layout.buckets == self.builder.spec.buckets

    def run(self, sparse: np.ndarray, dense: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The raw outputs of this version (no checks)."""
        prob, hidden = self.session.run(OUTPUTS, feeds(sparse, dense))
        return prob, hidden

    def score(self, sparse: np.ndarray, dense: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``prob``, ``hidden`` for one call: remembered for the next warm-up, and never non-finite."""
        if self.guard is not None:
            self.guard.remember(sparse, dense)
        prob, hidden = self.run(sparse, dense)
        if _finite(prob, hidden):
            return prob, hidden
        if self.guard is None:
            raise ModelError(f"{self.tenant}/{self.model}/{self.version} produced non-finite scores",
                             reason="nonfinite_scores")
        return self.guard.nonfinite(self, sparse, dense)


# Why a version was refused (the `reason` label of the refusal metric).
REASONS = ("missing", "sha256_mismatch", "bad_manifest", "not_onnx", "bad_weights", "non_finite_weights",
           "wrong_io", "warmup_failed", "warmup_shapes", "warmup_nonfinite", "warmup_range")


def store_reason(exc: Exception) -> str:
    text = str(exc)
    if text.startswith(("no manifest", "no artifact")):
        return "missing"
    if "sha256" in text:
        return "sha256_mismatch"
    return "bad_manifest"


def load(store: ModelStore, tenant: str, model: str, version: str, *, threads: int = 1,
         guard: Guard | None = None) -> LoadedModel:
    """Load, check and warm up a version (on ``guard``'s recent inputs too); `ModelError` says why it cannot serve."""
    try:
        artifact, manifest = store.load(tenant, model, version)
        spec = manifest.spec()
    except (StoreError, ValueError, KeyError) as exc:
        raise ModelError(f"{tenant}/{model}/{version}: {exc}", reason=store_reason(exc)) from None
    try:
        session = contract.check_artifact(artifact, spec, manifest.hidden_dim, threads=threads,
                                          recent=guard.inputs() if guard is not None else ())
    except contract.ContractError as exc:
        what = "warm-up: " if exc.reason.startswith("warmup") else ""
        raise ModelError(f"{tenant}/{model}/{version}: {what}{exc}", reason=exc.reason) from None
    base, layout, takes = _sparse_base(store, tenant, model, version, manifest)
    return LoadedModel(tenant, model, version, manifest, session, InputBuilder(spec), guard, base, layout, takes)


def _sparse_base(store: ModelStore, tenant: str, model: str, version: str, manifest: Manifest
                 ) -> tuple[Mapping[str, np.ndarray] | None, sparse.Layout | None, bool]:
    """(tables, layout, takes deltas) of a version (see the module doc)."""
    m = manifest.metrics or {}
    if not m.get("sparse_layout"):
        if manifest.source == "trainer":
            log.info("version published without its sparse tables: no deltas on it",
                     extra={"tenant": tenant, "model": model, "version": version})
            return None, None, False
        return None, None, True
    try:
        layout = sparse.Layout.from_dict(m["sparse_layout"])
        data = store.extra(tenant, model, version, m.get("sparse_file") or sparse.SPARSE_FILE,
                           sha256=m.get("sparse_sha256", ""))
        return sparse.tables_from_bytes(data, layout), layout, True
    except (StoreError, sparse.DeltaError, ValueError, KeyError, OSError) as exc:
        log.error("sparse tables unreadable: the version serves without deltas",
                  extra={"tenant": tenant, "model": model, "version": version, "error": str(exc)})
        return None, None, False


class ModelRegistry:
    """The version serving for each (tenant, model); swapping is one dict assignment.

    ``count(tenant, model, version, result)`` counts answers with non-finite scores.
    """

    def __init__(self, count: Counter | None = None) -> None:
        self._models: dict[tuple[str, str], LoadedModel] = {}
        self._guards: dict[tuple[str, str], Guard] = {}
        self._count = count

    def get(self, tenant: str, model: str) -> LoadedModel | None:
        return self._models.get((tenant, model))

    def guard(self, tenant: str, model: str) -> Guard:
        """The (tenant, model)'s recent inputs and fallback, created on first use."""
        key = (tenant, model)
        if key not in self._guards:
            self._guards[key] = Guard(tenant, model, self._count)
        return self._guards[key]

    def put(self, loaded: LoadedModel) -> LoadedModel | None:
        """Serve ``loaded``; the version it replaces becomes the fallback unless it answered non-finite scores."""
        key = (loaded.tenant, loaded.model)
        previous = self._models.get(key)
        guard = self.guard(*key)
        if previous is not None and previous.version != loaded.version and previous.version not in guard.bad:
            guard.fallback = previous
        self._models[key] = loaded
        return previous

    def versions(self) -> dict[tuple[str, str], str]:
        return {key: loaded.version for key, loaded in self._models.items()}

    def __len__(self) -> int:
        return len(self._models)

    def items(self) -> list[LoadedModel]:
        return list(self._models.values())
