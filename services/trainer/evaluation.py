"""Holdout figures and the validation gate, as pure functions.

- ``auc``, ``gauc``: `loopwise.ranking_metrics` (ROC AUC with ties counted half;
  per-user AUC weighted by each user's example count, users with one class
  skipped; NaN when undefined: a candidate whose ``auc`` or ``logloss`` is
  undefined is refused (`REQUIRED`); an undefined ``gauc`` or ``ece``, or any
  undefined production figure, is not compared);
- ``logloss``: mean binary cross-entropy, probabilities clipped to [1e-7, 1 - 1e-7];
- ``ece``: expected calibration error over equal-width probability bins;
- ``platt``: the two-parameter recalibration the trainer folds into a candidate
  before the gate (`model.Ranker.fold_calibration`, ``LOOPWISE_TRAINER_CALIBRATE``).

``logloss`` and ``ece`` are self-normalised by the examples' IPS weights when
given (``sum(w * loss) / sum(w)``; all weights 1: the plain figures): the
trainer weighs a positive ``w`` times, so its probabilities estimate the
weighted click rate, and the gate judges them against that, not against the
observed (exposure-biased) rate.

>>> y = np.array([0, 0, 1, 1.]); p = np.array([0.1, 0.4, 0.35, 0.8])
>>> auc(y, p)
0.75
>>> evaluate(y, p, np.array([1, 2, 1, 2]))["gauc"]
1.0
>>> decide({"auc": 0.70, "gauc": 0.6, "logloss": 0.5, "ece": 0.01},
...        {"auc": 0.72, "gauc": 0.6, "logloss": 0.5, "ece": 0.01}, Tolerances(auc=0.01)).publish
False
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from loopwise.ranking_metrics import auc, gauc

METRICS = ("auc", "gauc", "logloss", "ece")
# Figures a candidate must have (finite) to publish: without them nothing says it ranks at all.
REQUIRED = ("auc", "logloss")


def _weights(label: np.ndarray, weight: np.ndarray | None) -> np.ndarray:
    return np.ones(len(label)) if weight is None else np.asarray(weight, dtype=np.float64)


def logloss(label: np.ndarray, prob: np.ndarray, weight: np.ndarray | None = None) -> float:
    p = np.clip(np.asarray(prob, dtype=np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(label, dtype=np.float64)
    w = _weights(y, weight)
    return float(-(w * (y * np.log(p) + (1 - y) * np.log(1 - p))).sum() / w.sum()) if len(y) else float("nan")


def platt(logit: np.ndarray, label: np.ndarray, weight: np.ndarray | None = None, iters: int = 50,
          scale_bounds: tuple[float, float] = (0.05, 20.0)) -> tuple[float, float]:
    """Platt scaling: ``(a, b)`` minimising the (weighted, self-normalised) log loss of
    ``sigmoid(a * logit + b)`` on ``label`` (a small ridge on ``a - 1`` and ``b``); ``a``
    bounded to ``scale_bounds`` (monotone: the ranking, hence AUC and gAUC, is unchanged).
    ``(1, 0)`` when the labels are of one class.

    Newton's method with a backtracking line search: a step is taken only where it lowers
    the (convex) objective, so the result is never worse than ``(1, 0)`` on the fitted rows.
    Undamped steps diverged on widely spread logits (a candidate trained with IPS weights
    and fake negatives, logits -8 to +15): saturated probabilities leave the Hessian about
    the ridge alone, and the shift ran to -6,989, every row scoring alike.

    >>> z = np.array([-2., -1., 0., 1., 2., 3.]); y = np.array([0, 0, 0, 1, 1, 1.])
    >>> a, b = platt(4 * z + 1, y)
    >>> logloss(y, 1 / (1 + np.exp(-(a * (4 * z + 1) + b)))) < logloss(y, 1 / (1 + np.exp(-(4 * z + 1))))
    True
    """
    z = np.asarray(logit, dtype=np.float64)
    y = np.asarray(label, dtype=np.float64)
    w = _weights(y, weight)
    if not len(y) or y.min() == y.max() or w.sum() <= 0:
        return 1.0, 0.0
    w = w / w.sum()
    ridge = 1e-4

    def objective(a: float, b: float) -> float:
        s = a * z + b
        return float((w * (np.logaddexp(0.0, s) - y * s)).sum() + 0.5 * ridge * ((a - 1) ** 2 + b * b))

    a, b = 1.0, 0.0
    f = objective(a, b)
    for _ in range(iters):
        p = 0.5 * (1.0 + np.tanh(0.5 * (a * z + b)))
        r = w * (p - y)
        h = w * p * (1 - p)
        g = np.array([(r * z).sum() + ridge * (a - 1), r.sum() + ridge * b])
        hess = np.array([[(h * z * z).sum() + ridge, (h * z).sum()], [(h * z).sum(), h.sum() + ridge]])
        try:
            step = np.linalg.solve(hess, g)
        except np.linalg.LinAlgError:
            step = g
        t = 1.0
        while t > 1e-8:
            na, nb = float(np.clip(a - t * step[0], *scale_bounds)), float(b - t * step[1])
            nf = objective(na, nb)
            if nf < f:
                break
            t *= 0.5
        else:
            break  # no step lowers the objective: at the optimum (or the bound)
        converged = f - nf < 1e-12 or max(abs(na - a), abs(nb - b)) < 1e-8
        a, b, f = na, nb, nf
        if converged:
            break
    return a, b


def ece(label: np.ndarray, prob: np.ndarray, bins: int = 15, weight: np.ndarray | None = None) -> float:
    p = np.asarray(prob, dtype=np.float64)
    y = np.asarray(label, dtype=np.float64)
    if not len(y):
        return float("nan")
    w = _weights(y, weight)
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    gap = np.abs(np.bincount(which, w * p, bins) - np.bincount(which, w * y, bins))
    return float(gap.sum() / w.sum())


def auc_se(label: np.ndarray, value: float) -> float:
    """Hanley & McNeil (1982) standard error of an AUC ``value`` on these labels."""
    y = np.asarray(label) > 0.5
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not n_pos or not n_neg or math.isnan(value):
        return float("nan")
    a = value
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    return float(math.sqrt(max(var, 0.0)))


def difference_se(label: np.ndarray, cand: dict[str, float], cand_prob: np.ndarray,
                  prod: dict[str, float], prod_prob: np.ndarray, weight: np.ndarray | None = None
                  ) -> dict[str, float]:
    """Standard errors of candidate - production on the same holdout: logloss from the
    paired per-row differences; auc (and gauc, by the same figure) from Hanley-McNeil on
    each side combined as if independent (the two models' errors correlate, so this errs
    towards publishing)."""
    y = np.asarray(label, dtype=np.float64)
    out: dict[str, float] = {}
    if len(y) > 1:
        def rows(prob: np.ndarray) -> np.ndarray:
            p = np.clip(np.asarray(prob, dtype=np.float64), 1e-7, 1 - 1e-7)
            return -(y * np.log(p) + (1 - y) * np.log(1 - p))

        w = _weights(y, weight)
        diff = w * (rows(cand_prob) - rows(prod_prob)) / w.mean()
        out["logloss"] = float(np.std(diff, ddof=1) / math.sqrt(len(y)))
    se = math.hypot(auc_se(y, cand.get("auc", float("nan"))), auc_se(y, prod.get("auc", float("nan"))))
    if not math.isnan(se):
        out["auc"] = out["gauc"] = se
    return out


def evaluate(label: np.ndarray, prob: np.ndarray, user: np.ndarray, bins: int = 15,
             weight: np.ndarray | None = None) -> dict[str, float]:
    """The holdout figures (``weight``: the examples' IPS weights, for logloss and ece)."""
    return {"auc": auc(label, prob), "gauc": gauc(label, prob, user), "logloss": logloss(label, prob, weight),
            "ece": ece(label, prob, bins, weight)}


@dataclass(frozen=True)
class Tolerances:
    """How much worse than production a candidate may be and still publish."""

    auc: float = 0.002
    gauc: float = 0.005
    logloss: float = 0.005
    ece: float = 0.02


@dataclass(frozen=True)
class Decision:
    publish: bool
    reason: str


def decide(candidate: dict[str, float], production: dict[str, float] | None, tol: Tolerances,
           se: dict[str, float] | None = None, z: float = 0.0) -> Decision:
    """Refuse a candidate whose `REQUIRED` figures are undefined (NaN, e.g. a
    holdout with one class); else publish unless a figure is worse than
    production's beyond its tolerance (higher is better for auc/gauc, lower
    for logloss/ece; another NaN figure on either side is not compared). With ``se`` (standard errors of the
    differences, `difference_se`) a figure's tolerance is
    ``max(tolerance, z * se)``: a small holdout does not refuse a candidate
    for a difference it cannot tell from chance."""
    undefined = [name for name in REQUIRED if not math.isfinite(candidate.get(name, float("nan")))]
    if undefined:
        return Decision(False, f"undefined candidate metric(s): {', '.join(undefined)} "
                               "(is the holdout empty or of one class?)")
    if production is None:
        return Decision(True, "no production model to compare with")
    failed = []
    for name in METRICS:
        c, p = candidate.get(name, float("nan")), production.get(name, float("nan"))
        if math.isnan(c) or math.isnan(p):
            continue
        t = getattr(tol, name)
        if se and z > 0 and not math.isnan(se.get(name, float("nan"))):
            t = max(t, round(z * se[name], 4))
        if name in ("auc", "gauc") and c < p - t:
            failed.append(f"{name} {c:.4f} < production {p:.4f} - {t}")
        elif name in ("logloss", "ece") and c > p + t:
            failed.append(f"{name} {c:.4f} > production {p:.4f} + {t}")
    if failed:
        return Decision(False, "worse than production: " + "; ".join(failed))
    return Decision(True, "not worse than production within tolerance")
