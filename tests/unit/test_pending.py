"""Pending shows (services/inference/pending.py): the trainer's next cross-table steps for
the candidates a replica showed, until a delta covers them."""

from __future__ import annotations

import numpy as np
import pytest

from loopwise.inference.pending import PendingShows
from loopwise.modelstore.sparse import Layout, cross_ids, logit

LAYOUT = Layout(buckets=1000, linear=True, cross_a=(0,), cross_b=(1,), cross_buckets=4096)


def rows(user: int, items: list[int]) -> np.ndarray:
    """Hashed inputs [n, 2]: field 0 the user, field 1 the item."""
    return np.array([[user, i] for i in items], dtype=np.int64)


def show(p: PendingShows, sparse: np.ndarray, prob: np.ndarray, at_ms: int, base: str = "v1") -> None:
    p.shown("t", "m", base, LAYOUT, cross_ids(sparse, LAYOUT), prob, at_ms)


def test_shown_pairs_take_the_trainers_adagrad_steps_and_others_do_not():
    torch = pytest.importorskip("torch")
    from loopwise.trainer.model import adagrad_step

    p = PendingShows(step=3.0)
    prob = np.full(3, 0.2, dtype=np.float32)
    show(p, rows(7, [11, 12]), prob[:2], 1_000)
    show(p, rows(7, [11]), prob[:1], 1_100)  # item 11 shown twice, 12 once, 13 never
    got, ids = p.adjust("t", "m", "v1", LAYOUT, prob, rows(7, [11, 12, 13]))
    assert ids is not None and ids.shape == (3, 1)

    def trainer(steps: int) -> float:
        """The trainer's row-wise Adagrad on one cross row, a fake negative per step (gradient p)."""
        w = torch.nn.Parameter(torch.full((1, 1), float(logit(prob[:1])[0])))
        acc = torch.zeros(1)
        for _ in range(steps):
            torch.nn.functional.binary_cross_entropy_with_logits(w[0, 0], torch.tensor(0.0)).backward()
            adagrad_step(w, acc, 3.0)
        return float(torch.sigmoid(w.detach()[0, 0]))

    assert got[0] == pytest.approx(trainer(2), rel=1e-4)
    assert got[1] == pytest.approx(trainer(1), rel=1e-4)
    assert float(logit(got[1:2])[0] - logit(prob[:1])[0]) == pytest.approx(-3.0, abs=1e-4)  # a first step: -lr
    assert got[2] == pytest.approx(prob[2])  # never shown
    other_user, _ = p.adjust("t", "m", "v1", LAYOUT, prob[:1], rows(8, [11]))
    assert other_user[0] == pytest.approx(prob[0])  # the cross row is the user's


def test_a_delta_covers_the_shows_up_to_its_impression_time_and_they_then_count_in_the_accumulator():
    p = PendingShows(step=3.0)
    prob = np.full(1, 0.2, dtype=np.float32)
    show(p, rows(7, [11]), prob, 1_000)
    show(p, rows(7, [11]), prob, 2_000)
    two, _ = p.adjust("t", "m", "v1", LAYOUT, prob, rows(7, [11]))
    p.covered("t", "m", "v1", through_ms=1_000, now_ms=2_500)
    one, _ = p.adjust("t", "m", "v1", LAYOUT, prob, rows(7, [11]))
    assert prob[0] > one[0] > two[0]
    # the covered show is in the accumulator: the pending one no longer takes a first (full) step
    assert float(logit(prob)[0] - logit(one)[0]) < 3.0 - 0.5
    p.covered("t", "m", "v1", through_ms=2_000, now_ms=2_500)
    none, _ = p.adjust("t", "m", "v1", LAYOUT, prob, rows(7, [11]))
    assert none[0] == pytest.approx(prob[0])
    assert p.books[("t", "m")].held == 0 and not p.books[("t", "m")].counts.any()


def test_another_base_an_old_show_or_too_many_shows_are_not_pending():
    p = PendingShows(step=3.0, max_age_s=1.0, max_held=3)
    prob = np.full(1, 0.2, dtype=np.float32)
    show(p, rows(7, [11]), prob, 1_000)
    other, _ = p.adjust("t", "m", "v2", LAYOUT, prob, rows(7, [11]))
    assert other[0] == pytest.approx(prob[0])  # a new base version: its own tables
    p.covered("t", "m", "v2", through_ms=5_000, now_ms=1_500)  # another base's delta covers nothing here
    assert p.books[("t", "m")].held == 1
    p.covered("t", "m", "v2", through_ms=0, now_ms=2_001)  # but any delta ages the old shows out
    assert p.books[("t", "m")].held == 0
    # A show on a new base: the old base's shows are dropped, their squared gradients stay
    show(p, rows(7, [12]), prob, 2_100)
    show(p, rows(7, [12]), prob, 2_200, base="v2")
    book = p.books[("t", "m")]
    assert book.base_version == "v2" and book.held == 1
    again, _ = p.adjust("t", "m", "v2", LAYOUT, prob, rows(7, [12]))
    assert -3.0 < float(logit(again)[0] - logit(prob)[0]) < 0  # no longer a first step
    for at in range(5):
        show(p, rows(7, [20 + at]), prob, 3_000 + at)
    assert p.books[("t", "m")].held == 3  # the oldest went first
    adjusted, _ = p.adjust("t", "m", "v1", LAYOUT, np.full(2, 0.2, dtype=np.float32), rows(7, [20, 24]))
    assert adjusted[0] == pytest.approx(0.2) and adjusted[1] < 0.2


def test_a_layout_without_a_cross_table_has_nothing_pending():
    p = PendingShows(step=3.0)
    flat = Layout(buckets=1000)
    prob = np.full(2, 0.3, dtype=np.float32)
    got, ids = p.adjust("t", "m", "v1", flat, prob, rows(7, [1, 2]))
    assert ids is None and np.array_equal(got, prob)
    p.shown("t", "m", "v1", flat, None, prob, 1)
    assert not p.books
