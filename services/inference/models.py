"""Loaded models: onnxruntime sessions per (tenant, model), checked before they serve
against the serving contract (`loopwise.modelstore.contract`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from loopwise.errors import ModelError
from loopwise.features import InputBuilder
from loopwise.modelstore import Manifest, ModelStore, StoreError
from loopwise.modelstore.contract import INPUTS, OUTPUTS, feeds

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    tenant: str
    model: str
    version: str
    manifest: Manifest
    session: ort.InferenceSession
    builder: InputBuilder

    def score(self, sparse: np.ndarray, dense: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        prob, hidden = self.session.run(OUTPUTS, feeds(sparse, dense))
        return prob, hidden


# Why a version was refused (the `reason` label of the refusal metric).
REASONS = ("missing", "sha256_mismatch", "bad_manifest", "not_onnx", "wrong_io", "warmup_failed",
           "warmup_shapes", "warmup_range")


def store_reason(exc: Exception) -> str:
    text = str(exc)
    if text.startswith(("no manifest", "no artifact")):
        return "missing"
    if "sha256" in text:
        return "sha256_mismatch"
    return "bad_manifest"


def load(store: ModelStore, tenant: str, model: str, version: str, *, threads: int = 1) -> LoadedModel:
    """Load, check and warm up a version; `ModelError` says why it cannot serve."""
    try:
        artifact, manifest = store.load(tenant, model, version)
        spec = manifest.spec()
    except (StoreError, ValueError, KeyError) as exc:
        raise ModelError(f"{tenant}/{model}/{version}: {exc}", reason=store_reason(exc)) from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        session = ort.InferenceSession(artifact, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types for a bad artifact
        raise ModelError(f"{tenant}/{model}/{version}: not a loadable ONNX model: {exc}",
                         reason="not_onnx") from None
    inputs = {i.name for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    if not set(INPUTS) <= inputs or not set(OUTPUTS) <= outputs:
        raise ModelError(f"{tenant}/{model}/{version}: inputs {sorted(inputs)} / outputs {sorted(outputs)}, "
                         f"expected {list(INPUTS)} / {list(OUTPUTS)}", reason="wrong_io")
    loaded = LoadedModel(tenant, model, version, manifest, session, InputBuilder(spec))
    # Warm-up: run a small batch and check the shapes the serving contract relies on.
    n = 4
    sparse = np.zeros((n, len(spec.sparse)), dtype=np.int64)
    sparse[:, :] = np.arange(1, n + 1)[:, None] % max(spec.buckets - 1, 1)
    dense = np.zeros((n, len(spec.dense)), dtype=np.float32)
    try:
        prob, hidden = loaded.score(sparse, dense)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"{tenant}/{model}/{version}: warm-up run failed: {exc}", reason="warmup_failed") from None
    if prob.shape != (n,) or hidden.shape != (n, manifest.hidden_dim):
        raise ModelError(f"{tenant}/{model}/{version}: warm-up shapes prob {prob.shape} hidden {hidden.shape}, "
                         f"expected ({n},) and ({n}, {manifest.hidden_dim})", reason="warmup_shapes")
    if not np.all((prob >= 0) & (prob <= 1)):
        raise ModelError(f"{tenant}/{model}/{version}: warm-up probabilities outside [0, 1]",
                         reason="warmup_range")
    return loaded


class ModelRegistry:
    """The version serving for each (tenant, model); swapping is one dict assignment."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, str], LoadedModel] = {}

    def get(self, tenant: str, model: str) -> LoadedModel | None:
        return self._models.get((tenant, model))

    def put(self, loaded: LoadedModel) -> LoadedModel | None:
        key = (loaded.tenant, loaded.model)
        previous = self._models.get(key)
        self._models[key] = loaded
        return previous

    def versions(self) -> dict[tuple[str, str], str]:
        return {key: loaded.version for key, loaded in self._models.items()}

    def __len__(self) -> int:
        return len(self._models)

    def items(self) -> list[LoadedModel]:
        return list(self._models.values())
