"""Training on the semi-synthetic clicks through the trainer's pure API, with the miner's weights.

- `pair_inputs`: every (user, item) pair's hashed ids through the serving path's
  own `InputBuilder` (one request per user with the whole catalogue as candidates);
- `propensity`: a method's exposure propensity from the training log: ``naive``
  (none), ``miner`` (the miner's default exposure model), ``impressions``
  (`ImpressionExposure` fed each user's exposed items), ``popularity``
  (`ExposureCounter`, Rel-MF's proxy, fed the clicks) or ``oracle`` (the true ``theta``);
- `weights`: the IPS weight of each clicked pair by the miner's own function
  (`loopwise.miner.debias.clipped_weight`, clip ``ips_clip``);
- `fit`: `loopwise.trainer.train.train_once` (fresh start, no holdout) on a
  uniform subsample of the pairs; the scores of every pair of the evaluated users.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from _debiasing_world import Truth

from loopwise.features import FeatureSpec, InputBuilder
from loopwise.miner.debias import ExposureCounter, ExposureModel, ImpressionExposure, clipped_weight
from loopwise.miner.settings import MinerSettings
from loopwise.trainer import train
from loopwise.trainer.data import WindowData
from loopwise.trainer.settings import TrainerSettings
from loopwise.v1 import features_pb2

SPEC = FeatureSpec(sparse=("request.user_id", "candidate.id"), dense=("context.constant",), buckets=1 << 18)
METHODS = ("naive", "miner", "oracle")


def pair_inputs(truth: Truth, spec: FeatureSpec = SPEC) -> np.ndarray:
    """int64 [users, items, fields] hashed ids, as `Rank` builds them."""
    builder = InputBuilder(spec)
    out = np.zeros((len(truth.user_ids), len(truth.item_ids), len(spec.sparse)), dtype=np.int64)
    candidates = features_pb2.Candidates(ids=truth.item_ids)
    empty = features_pb2.Features()
    for a, uid in enumerate(truth.user_ids):
        out[a], _ = builder.build(uid, empty, empty, candidates)
    return out


def exposure_propensity(truth: Truth, clicks: np.ndarray, exposed: np.ndarray, model: str, eta: float
                        ) -> np.ndarray:
    """[items] the miner's item exposure propensity (`loopwise.miner.debias`) after the
    whole log: ``impressions`` sees one impression per user listing the items exposed to
    them (exposure is observed for served items); ``popularity`` counts the clicks."""
    tenant = "bench"
    if model == "impressions":
        estimator: ExposureModel = ImpressionExposure({})
        for row in exposed:
            estimator.shown(tenant, [truth.item_ids[i] for i in np.flatnonzero(row).tolist()])
    elif model == "popularity":
        estimator = ExposureCounter(eta=eta)
        for i in np.nonzero(clicks)[1].tolist():
            estimator.clicked(tenant, truth.item_ids[i])
    else:
        raise ValueError(f"unknown exposure model {model!r}")
    return np.asarray([estimator.propensity(tenant, x) for x in truth.item_ids])


def propensity(method: str, truth: Truth, clicks: np.ndarray, exposed: np.ndarray, theta: np.ndarray,
               miner: MinerSettings) -> np.ndarray | None:
    """The exposure propensity ``method`` estimates from the training log: None for
    ``naive``, the true ``theta`` [users, items] for ``oracle``, else [items] from the miner's
    default exposure model (``miner``) or the one named (``popularity``, ``impressions``)."""
    if method == "naive":
        return None
    if method == "oracle":
        return theta
    model = miner.exposure_model if method == "miner" else method
    return exposure_propensity(truth, clicks, exposed, model, miner.exposure_eta)


def weights(prop: np.ndarray | None, clicks: np.ndarray, clip: float) -> np.ndarray:
    """float32 [users, items]: each clicked pair's IPS weight by the miner's own function
    (`clipped_weight` of ``prop``, [users, items] or [items]; None: 1), 1 elsewhere."""
    w = np.ones(clicks.shape, dtype=np.float32)
    if prop is None:
        return w
    users, items = np.nonzero(clicks)
    at = prop[users, items] if prop.ndim == 2 else prop[items]
    w[users, items] = [clipped_weight(float(x), clip) for x in at]
    return w


def settings(overrides: dict[str, Any], seed: int) -> TrainerSettings:
    base = TrainerSettings()
    return dataclasses.replace(base, trainer_holdout_fraction=0.0, trainer_min_holdout=0, attribution_window_ms=0,
                               trainer_seed=seed, trainer_device="cpu", **overrides)


def fit(ids: np.ndarray, clicks: np.ndarray, w: np.ndarray, rows: np.ndarray, eval_users: np.ndarray,
        config: TrainerSettings) -> np.ndarray:
    """Train on the flat pair indices ``rows``; scores [eval users, items]."""
    n_u, n_i, f = ids.shape
    flat = ids.reshape(-1, f)
    rng = np.random.default_rng(config.trainer_seed)
    data = WindowData(flat[rows], np.zeros((len(rows), 1), dtype=np.float32),
                      clicks.reshape(-1)[rows].astype(np.float32), w.reshape(-1)[rows],
                      rng.permutation(len(rows)).astype(np.int64), (rows // n_i).astype(np.int64))
    candidate = train.train_once(data, None, SPEC, config)
    sel = ids[eval_users].reshape(-1, f)
    return candidate.predict(sel, np.zeros((len(sel), 1), dtype=np.float32)).reshape(len(eval_users), n_i)
