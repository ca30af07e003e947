"""Platt recalibration of a candidate before the gate, folded exactly into its parameters."""

from __future__ import annotations

import numpy as np
import torch

from loopwise.ranking_metrics import auc
from loopwise.trainer import evaluation as ev
from loopwise.trainer.model import Ranker


def ranker() -> Ranker:
    torch.manual_seed(3)
    m = Ranker(buckets=257, n_fields=3, n_dense=2, embedding_dim=4, hidden_dim=8, fm_dim=4, linear=True,
               crosses=[[0, 1]], cross_buckets=97)
    with torch.no_grad():
        for table in (m.fm, m.bias, m.cross):
            table.weight.normal_(0.0, 0.3)
    return m.eval()


def test_folding_makes_the_logit_scale_times_logit_plus_shift_exactly():
    m = ranker()
    sparse = torch.randint(1, 257, (64, 3))
    dense = torch.randn(64, 2)
    with torch.no_grad():
        before, hidden_before = m.logits(sparse, dense)
        m.fold_calibration(0.37, -0.8)
        after, hidden_after = m.logits(sparse, dense)
    np.testing.assert_allclose(after.numpy(), 0.37 * before.numpy() - 0.8, rtol=1e-4, atol=1e-5)
    assert torch.equal(hidden_before, hidden_after), "the error memory's key must not move"


def test_folding_refuses_a_scale_that_would_reverse_the_ranking():
    m = ranker()
    for bad in (0.0, -1.0, float("nan")):
        try:
            m.fold_calibration(bad, 0.0)
        except ValueError:
            continue
        raise AssertionError(f"scale {bad} accepted")


def test_platt_repairs_an_overconfident_offset_model_and_keeps_its_ranking():
    rng = np.random.default_rng(5)
    true_logit = rng.normal(-1.0, 1.0, 20_000)
    y = (rng.random(20_000) < 1 / (1 + np.exp(-true_logit))).astype(np.float64)
    served = 3.0 * true_logit + 2.5  # overconfident and shifted up: what the gate refused
    a, b = ev.platt(served, y)
    fixed = 1 / (1 + np.exp(-(a * served + b)))
    raw = 1 / (1 + np.exp(-served))
    assert abs(a - 1 / 3) < 0.03 and abs(b - (-2.5 / 3)) < 0.1  # the true logit is (served - 2.5) / 3
    assert ev.logloss(y, fixed) < ev.logloss(y, raw) - 0.2
    assert ev.ece(y, fixed) < 0.02 < ev.ece(y, raw)
    assert auc(y, fixed) == auc(y, raw)


def test_platt_with_weights_minimises_the_gates_weighted_log_loss():
    rng = np.random.default_rng(6)
    z = rng.normal(0, 1, 5_000)
    y = (rng.random(5_000) < 1 / (1 + np.exp(-z))).astype(np.float64)
    w = np.where(y == 1, rng.uniform(1, 10, 5_000), 1.0)
    a, b = ev.platt(z, y, w)
    best = ev.logloss(y, 1 / (1 + np.exp(-(a * z + b))), w)
    for da, db in [(0.05, 0), (-0.05, 0), (0, 0.05), (0, -0.05)]:
        assert best <= ev.logloss(y, 1 / (1 + np.exp(-((a + da) * z + b + db))), w) + 1e-9


def test_platt_leaves_one_class_alone():
    assert ev.platt(np.array([0.1, 2.0]), np.array([1.0, 1.0])) == (1.0, 0.0)
    assert ev.platt(np.array([]), np.array([])) == (1.0, 0.0)


def test_platt_on_widely_spread_logits_converges_instead_of_diverging():
    # What a candidate trained with IPS weights (up to 20) and fake negatives brought to the
    # gate through the stack (bench/learning.py, LOOPWISE_IPS_WEIGHTS=true): logits from -8
    # to +15, ranking well (holdout AUC 0.90). The undamped Newton steps saturated every
    # probability, the Hessian vanished, and the shift ran to -6,989: every holdout row
    # scored alike (AUC 0.5): 12 of 20 weighted candidates were refused so.
    rng = np.random.default_rng(0)
    z = 3.0 * rng.normal(0, 5, 2_000)
    y = (rng.random(2_000) < 1 / (1 + np.exp(-(z / 9 - 3)))).astype(np.float64)
    for w in (np.where(y > 0, 20.0, 1.0), None):
        a, b = ev.platt(z, y, w)
        assert np.isfinite(a) and np.isfinite(b) and abs(b) < 50, (a, b)
        fixed = 1 / (1 + np.exp(-np.clip(a * z + b, -35, 35)))
        raw = 1 / (1 + np.exp(-np.clip(z, -35, 35)))
        assert ev.logloss(y, fixed, w) < ev.logloss(y, raw, w)
        assert a > 0  # monotone: the ranking is kept
        best = ev.logloss(y, fixed, w)
        for da, db in [(0.01, 0), (-0.01, 0), (0, 0.05), (0, -0.05)]:
            moved = 1 / (1 + np.exp(-np.clip((a + da) * z + b + db, -35, 35)))
            assert best <= ev.logloss(y, moved, w) + 1e-6
