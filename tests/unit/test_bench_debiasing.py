"""bench/debiasing.py's test set and figures (`_debiasing_world`): the authors' evaluation of
the Rel-MF semi-synthetic protocol, by hand-computed cases."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from _debiasing_world import Judged, item_rate_dcg, judged, ranking_figures  # noqa: E402

R = np.array([[1, 1, 0, 0, 0, 1, 0, 0],
              [0, 0, 0, 0, 0, 0, 0, 1]], dtype=bool)
Y = np.array([[1, 0, 0, 0, 0, 0, 0, 0],
              [0, 0, 0, 0, 0, 0, 0, 1]], dtype=bool)


def test_the_positives_are_relevant_unclicked_pairs_among_sampled_irrelevant_items() -> None:
    for seed in range(5):
        t = judged(R, Y, np.random.default_rng(seed), negatives=3)
        assert t.positive.tolist() == (R & ~Y).tolist()  # a clicked relevant pair is not a test positive
        negative = t.candidate & ~t.positive
        assert not (negative & R).any()  # negatives are irrelevant in the same draw
        assert negative.sum(1).tolist() == [3, 3]


def test_fewer_irrelevant_items_than_asked_gives_all_of_them() -> None:
    t = judged(R, Y, np.random.default_rng(0), negatives=100)
    assert (t.candidate & ~t.positive).sum(1).tolist() == [5, 7]


def test_within_keeps_positives_and_negatives_among_those_items() -> None:
    within = np.array([0, 1, 1, 1, 0, 0, 0, 0], dtype=bool)
    t = judged(R, Y, np.random.default_rng(0), negatives=100, within=within)
    assert t.positive.tolist()[0] == [False, True, False, False, False, False, False, False]
    assert not (t.candidate & ~within[None, :]).any()
    assert t.candidate[1].tolist() == within.tolist()  # user 1: no positive, every allowed item is irrelevant


def test_dcg_and_recall_rank_only_the_candidates_and_skip_users_without_positives() -> None:
    positive = np.array([[0, 1, 0, 1, 0], [0, 0, 0, 0, 0]], dtype=bool)
    candidate = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=bool)
    scores = np.array([[3.0, 1.0, 0.0, 4.0, 9.0], [1.0, 2.0, 3.0, 4.0, 5.0]])  # item 4 is no candidate
    dcg, recall = ranking_figures(scores, Judged(positive, candidate), k=2)
    assert dcg == 1.0  # top 2: item 3 (hit, 1 / log2 2), item 0 (miss)
    assert recall == 0.5
    dcg, recall = ranking_figures(-scores, Judged(positive, candidate), k=3)  # items 2, 1, 0
    assert np.isclose(dcg, 1 / np.log2(3))
    assert recall == 0.5


def test_item_rate_ranks_by_the_weighted_click_rate_of_the_trained_pairs() -> None:
    clicks = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=bool)
    weight = np.array([[1, 1, 1], [1, 4, 1], [1, 4, 1]], dtype=np.float32)
    trained = np.ones_like(clicks)
    test = Judged(np.array([[0, 1, 0]], dtype=bool), np.array([[1, 1, 1]], dtype=bool))
    assert item_rate_dcg(clicks, np.ones_like(weight), trained, test, k=1) == 0.0  # rates tie 2/3: item 0 first
    assert item_rate_dcg(clicks, weight, trained, test, k=1) == 1.0  # item 1: 8/3 against 2/3
