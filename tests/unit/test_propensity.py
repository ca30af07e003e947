"""loopwise.miner.propensity: PBM EM and randomised-traffic estimators on synthetic clicks."""

from __future__ import annotations

import numpy as np
import pytest

from loopwise.miner.propensity import PositionBiasEM, RandomizedEstimator

THETA = np.array([1.0, 0.6, 0.3])
TOL = 0.03


def relevance(rng: np.random.Generator, n_items: int, spread: float = 3.0) -> np.ndarray:
    """Item click probabilities when examined: log-uniform over ``spread`` e-folds, at most 0.5."""
    return 0.5 * np.exp(rng.uniform(-spread, 0.0, n_items))


def clicks_of(rng: np.random.Generator, shown: np.ndarray, gamma: np.ndarray, theta: np.ndarray = THETA
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PBM clicks on lists ``shown`` (rounds x positions): flat (positions, items, clicks)."""
    positions = np.broadcast_to(np.arange(1, shown.shape[1] + 1), shown.shape)
    clicks = (rng.random(shown.shape) < theta[positions - 1] * gamma[shown]).astype(np.float64)
    return positions.ravel(), shown.ravel(), clicks.ravel()


def random_lists(rng: np.random.Generator, rounds: int, n_items: int, k: int = 3) -> np.ndarray:
    """k items per round placed uniformly at random (distinct unless the catalogue is large)."""
    if n_items > 1_000:  # a repeat within a list is rare then, and harmless to the PBM
        return rng.integers(0, n_items, (rounds, k))
    return np.argsort(rng.random((rounds, n_items)), axis=1)[:, :k]


def biased_lists(rng: np.random.Generator, rounds: int, gamma: np.ndarray, candidates: int = 4,
                 noise: float = 0.5) -> np.ndarray:
    """A ranker's lists: random candidates, ordered by noisy log-relevance (better items higher)."""
    cand = random_lists(rng, rounds, len(gamma), candidates)
    score = np.log(gamma[cand]) + rng.normal(0.0, noise, cand.shape)
    return np.take_along_axis(cand, np.argsort(-score, axis=1)[:, :3], axis=1)


def fitted_em(positions: np.ndarray, items: np.ndarray, clicks: np.ndarray, **kwargs: float) -> PositionBiasEM:
    em = PositionBiasEM(3, iterations=0, **kwargs)  # type: ignore[arg-type]
    em.update(positions, items, clicks)
    em.fit(2000, tol=1e-7)
    return em


def test_both_recover_theta_from_randomised_traffic() -> None:
    rng = np.random.default_rng(1)
    gamma = relevance(rng, 40)
    positions, items, clicks = clicks_of(rng, random_lists(rng, 60_000, 40), gamma)
    em = fitted_em(positions, items, clicks)
    randomized = RandomizedEstimator(3)
    randomized.update(positions, clicks)
    np.testing.assert_allclose(em.propensities(), THETA, atol=TOL)
    np.testing.assert_allclose(randomized.propensities(), THETA, atol=TOL)
    assert em.propensities()[0] == 1.0 and randomized.propensities()[0] == 1.0


def test_em_undoes_biased_logging_where_naive_ctr_ratios_do_not() -> None:
    rng = np.random.default_rng(2)
    gamma = relevance(rng, 30)
    positions, items, clicks = clicks_of(rng, biased_lists(rng, 60_000, gamma), gamma)
    em = fitted_em(positions, items, clicks)
    naive = RandomizedEstimator(3)
    naive.update(positions, clicks)
    np.testing.assert_allclose(em.propensities(), THETA, atol=TOL)
    assert np.max(np.abs(naive.propensities() - THETA)) > 0.1  # better items shown higher: too steep
    assert (naive.propensities()[1:] < THETA[1:]).all()


def test_streaming_batches_converge_like_one_fit() -> None:
    rng = np.random.default_rng(3)
    gamma = relevance(rng, 30)
    positions, items, clicks = clicks_of(rng, biased_lists(rng, 60_000, gamma), gamma)
    streamed = PositionBiasEM(3, iterations=5)
    for start in range(0, positions.size, 1_500):
        end = start + 1_500
        streamed.update(positions[start:end], items[start:end], clicks[start:end])
    whole = fitted_em(positions, items, clicks)
    np.testing.assert_allclose(streamed.propensities(), whole.propensities(), atol=0.01)
    assert streamed.steps == 5 * 120


def test_low_click_rates_converge_with_enough_steps() -> None:
    rng = np.random.default_rng(4)
    gamma = relevance(rng, 30) / 25  # click rate ~0.5 %, like OBD
    positions, items, clicks = clicks_of(rng, biased_lists(rng, 400_000, gamma), gamma)
    em = fitted_em(positions, items, clicks)
    np.testing.assert_allclose(em.propensities(), THETA, atol=0.05)


def test_em_never_lowers_the_likelihood() -> None:
    rng = np.random.default_rng(5)
    gamma = relevance(rng, 20)
    positions, items, clicks = clicks_of(rng, biased_lists(rng, 5_000, gamma), gamma)
    em = PositionBiasEM(3, iterations=0)
    em.update(positions, items, clicks)
    history = []
    for _ in range(50):
        em.fit(1)
        history.append(em.log_likelihood())
    assert all(b >= a - 1e-6 for a, b in zip(history, history[1:], strict=False))


def test_memory_stays_bounded_with_many_items() -> None:
    rng = np.random.default_rng(6)
    n_items = 50_000
    gamma = relevance(rng, n_items, spread=2.0)
    em = PositionBiasEM(3, max_items=200, iterations=3)
    for _ in range(40):
        positions, items, clicks = clicks_of(rng, random_lists(rng, 2_500, n_items), gamma)
        em.update(positions, items, clicks)
        assert em.items_tracked <= 200 and em.columns_allocated <= 201
    assert em.views.shape == em.clicks.shape == (3, em.columns_allocated)
    assert em.views.sum() == pytest.approx(40 * 7_500)  # nothing dropped: rare items are pooled
    em.fit(2000, tol=1e-7)
    # pooled items are placed at random here, so pooling costs no accuracy
    np.testing.assert_allclose(em.propensities(), THETA, atol=0.05)


def test_a_full_table_pools_its_less_viewed_half() -> None:
    em = PositionBiasEM(2, max_items=4, iterations=0)
    em.update([1, 2] * 50, ["hot", "warm"] * 50, [0.0] * 100)
    em.update([1, 2, 1, 2, 1, 2], ["a", "b", "c", "d", "e", "f"], [0.0] * 6)
    assert set(em.column) == {"hot", "warm", "a", "b"}  # two free columns; c..f pooled
    assert em.views[:, 0].sum() == 4
    em.update([1, 2, 1], ["g", "hot", "a"], [1.0, 0.0, 0.0])
    assert set(em.column) == {"hot", "warm", "g"}  # full: a and b (1 view each) went to the pool
    assert em.views[:, 0].sum() == 4 + 2 + 1  # ... with their counts, and a's new view
    assert em.clicks[:, em.column["g"]].tolist() == [1.0, 0.0]
    assert em.views.sum() == 109 and em.columns_allocated == 5


def test_positions_past_the_last_share_it() -> None:
    em = PositionBiasEM(2, iterations=0)
    em.update([1, 2, 3, 7], ["a", "a", "a", "a"], [1, 0, 0, 1])
    assert em.views[:, em.column["a"]].tolist() == [1.0, 3.0]
    assert em.clicks[:, em.column["a"]].tolist() == [1.0, 1.0]


def test_decay_forgets_an_old_curve() -> None:
    rng = np.random.default_rng(7)
    gamma = relevance(rng, 30, spread=1.0)
    forgetful = PositionBiasEM(3, iterations=20, decay=0.9)
    stubborn = PositionBiasEM(3, iterations=20)
    for theta in (np.array([1.0, 0.9, 0.8]), THETA):
        for _ in range(60):
            positions, items, clicks = clicks_of(rng, random_lists(rng, 2_000, 30), gamma, theta)
            forgetful.update(positions, items, clicks)
            stubborn.update(positions, items, clicks)
    np.testing.assert_allclose(forgetful.propensities(), THETA, atol=0.06)
    assert stubborn.propensities()[2] > THETA[2] + 0.15  # still averaging both curves


def test_same_seed_same_estimates() -> None:
    def run(seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        gamma = relevance(rng, 500)
        em = PositionBiasEM(3, max_items=100, iterations=4)
        randomized = RandomizedEstimator(3, decay=0.99)
        for _ in range(10):
            positions, items, clicks = clicks_of(rng, biased_lists(rng, 1_000, gamma), gamma)
            em.update(positions, items.astype(str), clicks)
            randomized.update(positions, clicks)
        return em.propensities(), randomized.propensities()

    first, again, other = run(8), run(8), run(9)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])


def test_randomized_smoothing_and_empty_positions() -> None:
    est = RandomizedEstimator(3, prior_views=10.0)
    est.update([1] * 100 + [2] * 100, [1] * 10 + [0] * 90 + [1] * 5 + [0] * 95)
    ctr = est.ctr()
    pooled = 15 / 200
    assert ctr[0] == pytest.approx((10 + 10 * pooled) / 110)
    assert ctr[2] == pytest.approx(pooled)  # no data: the pooled rate, not 0
    assert est.propensities()[0] == 1.0


@pytest.mark.parametrize("bad", [
    lambda: PositionBiasEM(3).update([0, 1], ["a", "b"], [0, 1]),
    lambda: PositionBiasEM(3).update([1, 2], ["a"], [0, 1]),
    lambda: PositionBiasEM(3).update([1, 2], ["a", "b"], [0]),
    lambda: PositionBiasEM(3).update([1, 2], ["a", "b"], [0, 2]),
    lambda: RandomizedEstimator(3).update([1, 0], [0, 1]),
    lambda: PositionBiasEM(3, decay=0.0),
    lambda: RandomizedEstimator(0),
])
def test_bad_input_is_an_error(bad: object) -> None:
    with pytest.raises(ValueError):
        bad()  # type: ignore[operator]
