"""The trainer respects importance weights (issue 16): a weighted example moves the model
in proportion to its weight, however adaptive the optimiser."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from loopwise.features import FeatureSpec  # noqa: E402
from loopwise.trainer.data import WindowData  # noqa: E402
from loopwise.trainer.model import adagrad_step, ips_loss, sampled_ips_loss  # noqa: E402
from loopwise.trainer.settings import TrainerSettings  # noqa: E402
from loopwise.trainer.train import train_once  # noqa: E402

SPEC = FeatureSpec(sparse=("request.user_id", "candidate.id"), dense=("context.x",), buckets=1 << 12)
RARE = 4000  # the hashed id of the one clicked item (no other row has it)


def one_click(weight: float, n: int = 2000) -> WindowData:
    """``n - 1`` negatives on common items and one positive, of weight ``weight``, on item RARE."""
    rng = np.random.default_rng(0)
    sparse = np.stack([rng.integers(1, 500, n), rng.integers(500, 600, n)], axis=1).astype(np.int64)
    sparse[0] = [7, RARE]
    label = np.zeros(n, dtype=np.float32)
    label[0] = 1.0
    w = np.ones(n, dtype=np.float32)
    w[0] = weight
    return WindowData(sparse, np.zeros((n, 1), dtype=np.float32), label, w, np.arange(n, dtype=np.int64),
                      sparse[:, 0].copy())


def rare_bias(weight: float, **overrides: object) -> float:
    settings = dataclasses.replace(TrainerSettings(), trainer_holdout_fraction=0.0, trainer_min_holdout=0,
                                   attribution_window_ms=0, trainer_device="cpu", trainer_crosses=(), **overrides)
    model = train_once(one_click(weight), None, SPEC, settings).model
    assert model.bias is not None
    return float(model.bias.weight[RARE, 0])


def test_adagrad_first_step_scales_with_the_gradient_once_the_accumulator_starts_positive():
    def first_step(g: float, initial: float) -> float:
        w = torch.nn.Parameter(torch.zeros(2, 1))
        w.grad = torch.tensor([[0.0], [g]])
        adagrad_step(w, torch.zeros(2), 0.1, initial=initial)
        return -float(w.detach()[1, 0])

    assert first_step(0.01, 0.0) == pytest.approx(first_step(0.2, 0.0))  # scale-free: the weight is lost
    assert first_step(0.2, 1.0) / first_step(0.01, 1.0) == pytest.approx(20, rel=0.05)


def test_sampled_ips_loss_is_the_ips_loss_in_expectation():
    logit = torch.tensor([0.3, -1.2, 2.0])
    label = torch.tensor([1.0, 0.0, 1.0])
    weight = torch.tensor([4.0, 1.0, 2.5])
    # Drawing rows in proportion to w: E[sampled] = sum_i w_i * sampled_i / sum(w).
    per_row = torch.stack([sampled_ips_loss(logit[i:i + 1], label[i:i + 1], weight[i:i + 1]) for i in range(3)])
    expected = float((weight * per_row).sum() / weight.sum())
    assert expected == pytest.approx(float(ips_loss(logit, label, weight)) * 3 / float(weight.sum()), rel=1e-5)
    assert float(sampled_ips_loss(logit, label, torch.ones(3))) == pytest.approx(
        float(ips_loss(logit, label, torch.ones(3))))


def test_weight_ignored_when_it_only_scales_the_loss_of_an_adagrad_row():
    """The default (weights scale the loss, accumulators start at 0): the clicked item's
    first-order weight moves by the same amount for weight 1 and 8."""
    plain, weighted = rare_bias(1.0, trainer_weighting="loss"), rare_bias(8.0, trainer_weighting="loss")
    assert weighted == pytest.approx(plain, rel=0.05)


def test_weighted_example_moves_its_row_in_proportion_to_its_weight():
    plain, weighted = rare_bias(1.0, trainer_weighting="sample"), rare_bias(8.0, trainer_weighting="sample")
    assert plain >= 0 and weighted > 2.0 * max(plain, 1e-3)
    ratio = rare_bias(8.0, trainer_weighting="loss", trainer_adagrad_initial=1.0) / \
        rare_bias(1.0, trainer_weighting="loss", trainer_adagrad_initial=1.0)
    assert ratio > 4.0  # a positive starting accumulator: the first step scales with the weight


def test_gate_figures_self_normalised_by_the_ips_weights():
    from loopwise.trainer import evaluation as ev

    y = np.array([1.0, 0.0, 0.0, 0.0])
    p = np.array([0.5, 0.1, 0.1, 0.1])
    assert ev.logloss(y, p, np.ones(4)) == pytest.approx(ev.logloss(y, p))
    assert ev.ece(y, p, 10, np.ones(4)) == pytest.approx(ev.ece(y, p, 10))
    w = np.array([3.0, 1.0, 1.0, 1.0])  # the positive stands for three
    expected = -(3 * np.log(0.5) + 3 * np.log(0.9)) / 6
    assert ev.logloss(y, p, w) == pytest.approx(expected)
    # Bins: 0.1 holds the negatives (gap 0.3), 0.5 the positive (3 * |0.5 - 1| = 1.5); over sum(w) = 6.
    assert ev.ece(y, p, 10, w) == pytest.approx((0.3 + 1.5) / 6)


def test_ips_loss_is_rel_mf_pointwise_loss_by_hand():
    """``y*w*(-log p) + (1 - y*w)*(-log(1 - p))`` per row: a positive of weight w keeps the
    negative term with factor 1 - w (Rel-MF's unbiased loss), an unclicked row is plain BCE."""
    logit = torch.tensor([0.0, 2.0, -1.0])
    label = torch.tensor([1.0, 1.0, 0.0])
    weight = torch.tensor([4.0, 1.0, 1.0])
    p = 1 / (1 + np.exp(-np.array([0.0, 2.0, -1.0])))
    rows = [4 * -np.log(p[0]) + (1 - 4) * -np.log(1 - p[0]), -np.log(p[1]), -np.log(1 - p[2])]
    assert float(ips_loss(logit, label, weight)) == pytest.approx(np.mean(rows), rel=1e-6)


def test_ips_loss_in_expectation_over_exposure_is_the_loss_on_relevance():
    """Clicks Y = O * R with O ~ Bernoulli(theta), R ~ Bernoulli(gamma), weight 1/theta: the
    expected loss is BCE against gamma (unbiased), the unweighted one BCE against theta*gamma."""
    theta, gamma = 0.2, 0.6
    logit = torch.tensor([0.4])
    q = theta * gamma  # P(click)
    expected = q * float(ips_loss(logit, torch.tensor([1.0]), torch.tensor([1 / theta]))) + \
        (1 - q) * float(ips_loss(logit, torch.tensor([0.0]), torch.tensor([1.0])))
    bce = float(torch.nn.functional.binary_cross_entropy_with_logits(logit, torch.tensor([gamma])))
    assert expected == pytest.approx(bce, rel=1e-6)


def test_gate_recalibration_keeps_a_widely_spread_weighted_candidates_ranking():
    """The gate's Platt fit on a candidate trained with IPS weights whose logits spread
    wide: it must lower the weighted log loss and keep the ranking. Undamped Newton steps
    once sent the shift to about -7,000 and every holdout row scored alike (AUC 0.5): 12 of
    20 weighted candidates through the stack were refused so (bench/learning.py with
    LOOPWISE_IPS_WEIGHTS=true)."""
    from loopwise.ranking_metrics import auc
    from loopwise.trainer import evaluation as ev
    from loopwise.trainer.gate import evaluate

    rng = np.random.default_rng(1)
    n = 6000
    sparse = np.stack([rng.integers(1, 300, n), rng.integers(500, 800, n)], axis=1).astype(np.int64)
    appeal = rng.normal(-3.0, 1.5, 4096)
    label = (rng.random(n) < 1 / (1 + np.exp(-appeal[sparse[:, 1]]))).astype(np.float32)
    weight = np.where(label > 0, 20.0, 1.0).astype(np.float32)
    data = WindowData(sparse, np.zeros((n, 1), dtype=np.float32), label, weight, np.arange(n, dtype=np.int64),
                      sparse[:, 0].copy())
    settings = dataclasses.replace(TrainerSettings(), trainer_holdout_fraction=0.3, attribution_window_ms=0,
                                   trainer_device="cpu", trainer_crosses=())
    candidate = train_once(data, None, SPEC, settings)
    candidate.model.fold_calibration(8.0, 6.0)  # logits spread and shifted as the stack's were
    h = candidate.holdout
    raw = candidate.predict(h.sparse, h.dense)
    w = np.minimum(h.weight, settings.trainer_max_weight)
    figures = evaluate(candidate, None, settings).candidate
    scale, shift = candidate.calibration
    assert 0 < scale and abs(shift) < 50, candidate.calibration
    assert figures["auc"] >= auc(h.label, raw) - 1e-9 and figures["auc"] > 0.6
    assert figures["logloss"] < ev.logloss(h.label, raw, w)
