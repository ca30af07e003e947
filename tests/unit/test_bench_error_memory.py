"""bench/error_memory.py's pure parts: the injected preference shift, the recovery time after it,
the prefix tuning's progressive replay; and the demo's shifted feedback."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from _error_memory_shift import Shift, inject_shift, recovery_s  # noqa: E402
from _error_memory_tune import replay  # noqa: E402
from _learning_stream import build_stream  # noqa: E402

from loopwise.tools.demo.recommender import feedback  # noqa: E402
from loopwise.tools.demo.shift import TARGET_GENRES, in_segment  # noqa: E402


def test_the_shift_moves_only_the_segments_clicks_after_it_to_the_target_genres(movielens) -> None:
    stream = build_stream(movielens, 600, seed=7)
    shifted, shift = inject_shift(stream, 300)
    assert np.array_equal(shifted.label[:300], stream.label[:300])
    assert np.array_equal(shifted.label[~shift.segment], stream.label[~shift.segment])
    assert shift.moved > 0 and shift.moved + shift.dropped == int(stream.label[300:][shift.segment[300:]].sum())
    for i in np.flatnonzero(shift.segment[300:]) + 300:
        assert in_segment(movielens.users[stream.user(i)].occupation)
        for j in np.flatnonzero(shifted.label[i]):
            assert movielens.items[stream.item_ids(i)[j]].genre in TARGET_GENRES
        assert shifted.label[i].sum() <= 1


def test_recovery_is_the_first_sliding_run_back_at_the_pre_shift_level() -> None:
    n, k, at, width = 400, 2, 200, 20
    y = np.tile([1.0, 0.0], n)
    right = np.tile([0.9, 0.1], n)
    score = right.copy()  # right before the shift ...
    score[at * k:(at + 60) * k] = np.tile([0.1, 0.9], 60)  # ... wrong for 60 requests after it
    shift = Shift(at=at, segment=np.ones(n, dtype=bool), moved=0, dropped=0)
    sent = np.arange(n, dtype=np.float64) * 0.5
    out = recovery_s(y, score, k, shift, sent, width=width)
    assert out["pre_shift_auc"] == 1.0 and out["post_shift_min_auc"] == 0.0
    assert out["recovery_s"] == (at + 60 + width - 1 - at) * 0.5  # the first run wholly after the bad span
    never = recovery_s(y, np.where(np.arange(n * k) >= at * k, 1 - right, right), k, shift, sent, width=width)
    assert never["recovery_s"] is None and never["horizon_s"] == (n - 1 - at) * 0.5


def test_the_tuning_replay_with_lambda_zero_is_the_base_and_learns_a_region_otherwise() -> None:
    rng = np.random.default_rng(0)
    keys = rng.standard_normal((2000, 16)).astype(np.float32)
    y = (keys[:, 0] > 1.0).astype(np.float64)  # clicks live in one region of key space
    prob = np.full(2000, 0.2)
    assert np.allclose(replay(prob, keys, y, 20, k=8, bits=6, lam=0.0, tau=0.5, lag=5), prob)
    out = replay(prob, keys, y, 20, k=8, bits=6, lam=1.0, tau=0.5, lag=5)
    late = slice(1000, 2000)
    assert out[late][y[late] > 0].mean() > out[late][y[late] == 0].mean() + 0.05


def test_the_demos_shifted_user_clicks_a_target_genre_or_rejects(movielens) -> None:
    row = 0
    rated = str(movielens.item[row])
    others = [i for i in movielens.item_ids if movielens.items[i].genre == "Drama" and i != rated][:3]
    assert feedback(movielens, row, [*others, rated], shifted=True) == (3, False)
    horror = next(i for i in movielens.item_ids if movielens.items[i].genre == "Horror" and i != rated)
    assert feedback(movielens, row, [*others, horror, rated], shifted=True) == (3, True)
    liked = bool(movielens.rating[row] >= 4)
    assert feedback(movielens, row, [*others, horror, rated], shifted=False) == (4, liked)


def test_the_tuning_replay_lowers_a_pair_shown_again_at_once_only_with_pair_at_rank() -> None:
    k, n = 2, 40  # one user, the same two items every request, never clicked
    prob = np.full(n * k, 0.3)
    y = np.zeros(n * k)
    keys = np.ones((n * k, 4), dtype=np.float32)
    pairs = (np.full(n * k, "u"), np.tile(["a", "b"], n))
    args = {"k": 1, "bits": 1, "lam": 0.0, "tau": 1.0, "lag": 100, "pairs": pairs, "pair_lam": 1.0, "pair_prior": 0.0}
    assert np.allclose(replay(prob, keys, y, k, **args), prob)  # the window never closes within the replay
    at_rank = replay(prob, keys, y, k, **args, pair_at_rank=True)
    assert np.allclose(at_rank[:10 * k], 0.3) and np.allclose(at_rank[10 * k:], 0.0)  # after the first block
