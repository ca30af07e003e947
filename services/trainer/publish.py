"""Publishing: artifact, torch weights and manifest to the model store, the Redis
pointer, and the `ModelAnnouncement` on ``loopwise.models.v1``.

The torch state dict is published with the ONNX artifact as the store's
extra file ``weights.pt`` (written before the manifest, so a complete version
always has it); the manifest records its sha256 (``metrics.weights_sha256``),
so a warm start only uses weights that match. The additive sparse tables go
with it as ``sparse.npz`` (`loopwise.modelstore.sparse`; ``metrics.sparse_sha256``
and ``metrics.sparse_layout``): the base that serving's deltas apply to. A refused candidate is never
written to the store, nor one with a non-finite weight
(`contract.check_finite_weights`, checked again here whatever the gate said):
the store holds only versions fit to serve. The pointer moves with
`pointers.move`, in Redis and in the store.
"""

from __future__ import annotations

import hashlib
import logging
import math
from typing import Any

from loopwise import stamps
from loopwise.modelstore import Manifest, ModelStore, StoreError, contract, pointers, sparse
from loopwise.v1 import learning_pb2

from .model import state_bytes
from .train import Outcome, Production

log = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.pt"


def load_production(store: ModelStore, tenant: str, model: str, version: str | None) -> Production | None:
    if not version:
        return None
    onnx_bytes, manifest = store.load(tenant, model, version)
    weights = None
    sha = manifest.metrics.get("weights_sha256") if manifest.source == "trainer" else None
    if sha:
        try:
            weights = store.extra(tenant, model, version, WEIGHTS_FILE, sha256=sha)
        except StoreError as exc:
            log.warning("weights missing or not matching their manifest; no warm start",
                        extra={"tenant": tenant, "model": model, "version": version, "error": str(exc)})
    return Production(version=version, onnx=onnx_bytes, manifest=manifest, weights=weights)


def _clean(figures: dict[str, float]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in figures.items()}


def publish(store: ModelStore, redis_client: Any, tenant: str, model: str, outcome: Outcome,
            production: Production | None) -> Manifest:
    """Store artifact, weights and manifest (in this order), then move the Redis pointer."""
    if not outcome.publish or not outcome.onnx:
        raise StoreError("only a candidate that passed the gate and the export checks is published")
    try:
        contract.check_finite_weights(outcome.onnx)
    except contract.ContractError as exc:
        raise StoreError(f"not published: {exc}") from None
    weights = state_bytes(outcome.candidate.model)
    c = outcome.candidate
    tables = sparse.tables_bytes(c.model.sparse_tables())
    metrics: dict[str, Any] = _clean(outcome.figures())
    metrics.update(decision="published", reason=outcome.reason, init=c.init, device=c.device,
                   weights_file=WEIGHTS_FILE, weights_sha256=hashlib.sha256(weights).hexdigest(),
                   model_config=c.model.config, sparse_file=sparse.SPARSE_FILE,
                   sparse_sha256=hashlib.sha256(tables).hexdigest(),
                   sparse_layout=sparse.Layout.of_config(c.model.config).to_dict())
    manifest = store.publish(tenant, model, outcome.onnx, feature_spec=c.spec, hidden_dim=c.model.config["hidden_dim"],
                             parent_version=production.version if production else "", metrics=metrics,
                             source="trainer", extras={WEIGHTS_FILE: weights, sparse.SPARSE_FILE: tables})
    # Pointer and history move together (Redis and the store), so `loopwise model rollback` can undo this.
    pointers.move(store, redis_client, tenant, model, manifest.version, "published",
                  serving=production.version if production else None)
    return manifest


def announcement(tenant: str, model: str, action: str, version: str, previous_version: str, reason: str,
                 figures: dict[str, float]) -> learning_pb2.ModelAnnouncement:
    return learning_pb2.ModelAnnouncement(
        event_id=stamps.new_event_id(), tenant=tenant, model=model, version=version,
        previous_version=previous_version, action=action, reason=reason,
        metrics={k: float(v) for k, v in figures.items()}, time_ms=stamps.now_ms())
