"""The gate on a trained candidate: it and the models it must not fall behind, on its holdout.

- `evaluate`: the candidate (torch, recalibrated first with
  ``trainer_calibrate``) and production (onnxruntime) scored on the
  candidate's holdout, and the decision of `evaluation.decide` (tolerances
  from the settings, `tolerances`); a holdout below ``trainer_min_holdout``
  refuses a candidate that has a production model to beat.
- `against_static`: with the static cold-start model given
  (``trainer_gate_static``), a candidate whose AUC is below its AUC on the same
  holdout is refused too.

The figures and decision rules themselves are pure functions in `evaluation`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from loopwise.modelstore.coldstart import DEFAULT_SPEC
from loopwise.ranking_metrics import paired_auc

from . import evaluation as ev
from .export import predict_onnx, session
from .settings import TrainerSettings

if TYPE_CHECKING:
    from .train import Candidate, Production

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    candidate: dict[str, float]
    production: dict[str, float] | None
    decision: ev.Decision
    holdout_rows: int
    static: dict[str, float] | None = None  # the static model's figures on the holdout (`against_static`)


def tolerances(settings: TrainerSettings) -> ev.Tolerances:
    return ev.Tolerances(auc=settings.trainer_tolerance_auc, gauc=settings.trainer_tolerance_gauc,
                         logloss=settings.trainer_tolerance_logloss, ece=settings.trainer_tolerance_ece)


def evaluate(candidate: Candidate, production: Production | None, settings: TrainerSettings,
             static: Production | None = None) -> Evaluation:
    """Candidate and production on the same holdout, and the gate's decision; with ``static``
    (the cold-start model, ``trainer_gate_static``) also `against_static`."""
    h = candidate.holdout
    bins = settings.trainer_ece_bins
    # The loss the candidate minimised weighs a positive by its IPS weight: so do the gate's
    # log loss and calibration (self-normalised), else they judge it on the biased click rate.
    weight = np.minimum(h.weight, settings.trainer_max_weight)
    cand_prob = candidate.predict(h.sparse, h.dense)
    if settings.trainer_calibrate and len(h):
        # Training with IPS and FNW weights and warm starts leaves the logit's scale and
        # offset off; a monotone two-parameter fit on the holdout (in sample: 2 parameters on
        # the whole holdout) puts them right before the gate judges log loss and calibration.
        z = np.log(np.clip(cand_prob, 1e-7, 1 - 1e-7)) - np.log1p(-np.clip(cand_prob, 1e-7, 1 - 1e-7))
        scale, shift = ev.platt(z, h.label, weight)
        candidate.model.fold_calibration(scale, shift)
        candidate.calibration = (scale, shift)
        cand_prob = candidate.predict(h.sparse, h.dense)
    cand = ev.evaluate(h.label, cand_prob, h.user, bins, weight)
    prod = None
    se: dict[str, float] = {}
    if production is not None:
        try:
            prob, _ = predict_onnx(session(production.onnx, threads=max(settings.trainer_threads, 1)),
                                   h.sparse, h.dense)
            prod = ev.evaluate(h.label, prob, h.user, bins, weight)
            se = ev.difference_se(h.label, cand, cand_prob, prod, prob, weight)
        except Exception as exc:  # noqa: BLE001 - a production model that cannot score is no bar
            log.error("production model could not score the holdout",
                      extra={"version": production.version, "error": repr(exc)})
    if len(h) < settings.trainer_min_holdout and production is not None:
        decision = ev.Decision(False, f"holdout of {len(h)} rows < {settings.trainer_min_holdout}")
    else:
        decision = ev.decide(cand, prod, tolerances(settings), se, settings.trainer_tolerance_se)
    versus = None
    if static is not None and (production is None or static.version != production.version) and len(h):
        versus, refusal = against_static(candidate, cand_prob, static, settings)
        if refusal and decision.publish:
            decision = ev.Decision(False, refusal)
    return Evaluation(cand, prod, decision, len(h), versus)


def against_static(candidate: Candidate, cand_prob: np.ndarray, static: Production, settings: TrainerSettings
                   ) -> tuple[dict[str, float] | None, str]:
    """The static (cold-start) model on the candidate's holdout: its figures, and why the
    candidate is refused ("" when it is not): its AUC below the static model's by more than
    ``trainer_tolerance_auc`` or ``trainer_tolerance_se`` paired (DeLong) standard errors."""
    h = candidate.holdout
    spec = static.manifest.spec() if static.manifest else DEFAULT_SPEC
    if spec.to_dict() != candidate.spec.to_dict():
        return None, ""  # built for another spec: the holdout's inputs do not fit it
    try:
        prob, _ = predict_onnx(session(static.onnx, threads=max(settings.trainer_threads, 1)), h.sparse, h.dense)
    except Exception as exc:  # noqa: BLE001 - a static model that cannot score is no bar
        log.error("static model could not score the holdout", extra={"version": static.version, "error": repr(exc)})
        return None, ""
    auc_static, auc_cand, se = paired_auc(h.label > 0.5, prob.astype(np.float64), cand_prob.astype(np.float64))
    figures = {"auc": auc_static, "auc_se": se}
    if not (math.isfinite(auc_static) and math.isfinite(auc_cand)):
        return figures, ""
    t = max(settings.trainer_tolerance_auc, round(settings.trainer_tolerance_se * se, 4))
    if auc_cand < auc_static - t:
        return figures, f"below the static model: auc {auc_cand:.4f} < static {auc_static:.4f} - {t}"
    return figures, ""
