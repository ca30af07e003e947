"""loopwise.ranking_metrics: the one AUC and gAUC of the trainer's gate, the demo and the benchmarks."""

from __future__ import annotations

import doctest
import itertools

import numpy as np
import pytest

from loopwise import ranking_metrics
from loopwise.ranking_metrics import auc, gauc, grouped_auc


def pairwise_auc(y: np.ndarray, s: np.ndarray) -> float:
    """The definition: the share of (positive, negative) pairs ordered right, a tie counting half."""
    pairs = [(p, n) for p, n in itertools.product(s[y > 0.5], s[y <= 0.5])]
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)


def test_doctests() -> None:
    assert doctest.testmod(ranking_metrics).failed == 0


def test_auc_closed_form_cases() -> None:
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert auc(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.3, 0.4])) == 0.0
    # 2 positives x 2 negatives, 3 of 4 pairs ordered right
    assert auc(np.array([0, 1, 0, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == pytest.approx(0.75)
    # 3 positives x 3 negatives; misordered: (0.4 vs 0.6) -> 8/9
    assert auc(np.array([0, 1, 0, 1, 1, 0.0]), np.array([0.2, 0.9, 0.6, 0.4, 0.7, 0.1])) == pytest.approx(8 / 9)


def test_ties_count_one_half() -> None:
    assert auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
    assert auc(np.array([0, 0, 1, 1]), np.ones(4)) == 0.5
    # positive 0.5 ties one negative and beats the other: (1 + 0.5) / 2
    assert auc(np.array([1, 0, 0]), np.array([0.5, 0.5, 0.1])) == 0.75


def test_auc_is_the_pairwise_definition() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(2, 12))
        y = rng.integers(0, 2, n)
        if y.min() == y.max():
            continue
        s = rng.integers(0, 4, n) / 4.0  # few distinct values: many ties
        assert auc(y, s) == pytest.approx(pairwise_auc(y, s), abs=1e-12)


def test_auc_matches_sklearn_with_ties() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000)
    s = np.round(rng.random(2000) + 0.3 * y, 1)
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_a_label_above_one_half_is_a_positive() -> None:
    y = np.array([0.0, 0.3, 0.7, 1.0])
    s = np.array([0.1, 0.2, 0.3, 0.4])
    assert auc(y, s) == auc(np.array([0, 0, 1, 1]), s) == 1.0


def test_undefined_auc_is_nan() -> None:
    assert np.isnan(auc(np.array([1, 1]), np.array([0.1, 0.2])))  # one class
    assert np.isnan(auc(np.zeros(3), np.array([0.1, 0.2, 0.3])))
    assert np.isnan(auc(np.ones(3), np.ones(3)))
    assert np.isnan(auc(np.zeros(0), np.zeros(0)))  # nothing
    assert np.isnan(auc(np.array([0, 1, 1]), np.array([0.1, np.nan, 0.3])))  # a NaN score


def test_grouped_auc_is_each_groups_auc() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    g = rng.integers(0, 30, 3000)
    y = rng.integers(0, 2, 3000)
    s = np.round(rng.random(3000) + 0.2 * y, 2)
    per, rows, both = grouped_auc(y, s, g)
    for j, group in enumerate(np.unique(g)):
        m = g == group
        assert rows[j] == m.sum()
        assert both[j] == (0 < y[m].sum() < m.sum())
        if both[j]:
            assert per[j] == pytest.approx(roc_auc_score(y[m], s[m]), abs=1e-12)
        else:
            assert np.isnan(per[j])


def test_gauc_weights_groups_by_rows_and_skips_one_class_groups() -> None:
    y = np.array([1, 0, 0, 0, 1, 0, 1, 1])
    s = np.array([0.9, 0.1, 0.2, 0.3, 0.1, 0.5, 0.4, 0.6])
    u = np.array(["a", "a", "b", "b", "b", "b", "c", "c"])  # a: AUC 1 (2 rows), b: AUC 0 (4 rows), c: one class
    assert gauc(y, s, u) == pytest.approx((1.0 * 2 + 0.0 * 4) / 6)
    # integer user keys, unsorted: user 1 (pos .9 vs negs .2 .6) -> 1; user 2 (pos .4 .7 vs neg .1) -> 1
    assert gauc(np.array([0, 1, 0, 1, 1, 0.0]), np.array([0.2, 0.9, 0.6, 0.4, 0.7, 0.1]),
                np.array([1, 1, 1, 2, 2, 2])) == pytest.approx(1.0)


def test_gauc_skips_a_group_with_a_nan_score() -> None:
    y = np.array([1, 0, 1, 0])
    s = np.array([0.9, 0.1, np.nan, 0.5])
    assert gauc(y, s, np.array([1, 1, 2, 2])) == 1.0


def test_gauc_without_a_defined_group_is_nan() -> None:
    assert np.isnan(gauc(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.3, 0.4]), np.array([1, 1, 2, 2])))
    assert np.isnan(gauc(np.zeros(0), np.zeros(0), np.zeros(0)))
