"""The error memory (services/inference/memory): sketch, kNN reference, compensation, bank."""

from __future__ import annotations

import numpy as np
import pytest

from loopwise.inference.memory import (
    ExactKnn,
    MemoryBank,
    MemoryConfig,
    Neighbours,
    Params,
    Sketch,
    canonical,
    compensate,
    per_model,
)
from loopwise.inference.metrics import InferenceMetrics
from loopwise.v1 import learning_pb2

DIM = 16


def clusters(rng: np.random.Generator, n: int, spread: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Two well-separated clusters of keys: (keys A, keys B)."""
    a, b = rng.standard_normal(DIM), rng.standard_normal(DIM)
    b -= (b @ a) / (a @ a) * a  # orthogonal centres
    return (a + spread * rng.standard_normal((n, DIM)) * np.linalg.norm(a),
            b + spread * rng.standard_normal((n, DIM)) * np.linalg.norm(b))


def test_sketch_buckets_hold_exactly_what_brute_force_counts():
    """Every bucket's (count, sum_y, sum_pred) equals the brute-force sums over the
    keys sharing its L sign bits in that array."""
    rng = np.random.default_rng(1)
    sketch = Sketch(DIM, k=8, bits=4, seed=3)
    keys = rng.standard_normal((300, DIM)).astype(np.float32)
    labels = rng.integers(0, 2, 300).astype(np.float32)
    preds = rng.random(300).astype(np.float32)
    sketch.write(keys[:150], labels[:150], preds[:150])
    sketch.write(keys[150:], labels[150:], preds[150:])
    queries = rng.standard_normal((20, DIM)).astype(np.float32)
    nb = sketch.read(queries)
    sk, sq = sketch.signs(keys), sketch.signs(queries)
    for q in range(len(queries)):
        for k in range(8):
            same = (sk[:, k] == sq[q, k]).all(axis=1)
            assert nb.count[q, k] == same.sum()
            assert nb.sum_y[q, k] == pytest.approx(labels[same].sum(), abs=1e-4)
            assert nb.sum_pred[q, k] == pytest.approx(preds[same].sum(), abs=1e-4)


def test_sketch_compensation_agrees_with_exact_knn_on_clusters():
    """Errors in cluster A (under-predicted positives) and B (over-predicted negatives):
    the sketch and the exact kNN move new keys of each cluster alike."""
    rng = np.random.default_rng(2)
    a, b = clusters(rng, 200)
    keys = np.vstack([a, b]).astype(np.float32)
    labels = np.r_[np.ones(200), np.zeros(200)].astype(np.float32)
    preds = np.r_[np.full(200, 0.2), np.full(200, 0.6)].astype(np.float32)
    sketch, knn = Sketch(DIM, k=32, bits=8, seed=0), ExactKnn(DIM, capacity=1000, top=16)
    for memory in (sketch, knn):
        memory.write(keys, labels, preds)
    qa, qb = clusters(np.random.default_rng(2), 30)  # same centres, new points
    queries = np.vstack([qa[:, :], qb[:, :]]).astype(np.float32)
    p_base = np.r_[np.full(30, 0.2), np.full(30, 0.6)]
    params = Params(lam=1.0, tau=1.0, gamma=1.0, prior=0.0)
    from_sketch = compensate(p_base, sketch.read(queries), params)
    from_knn = compensate(p_base, knn.read(queries), params)
    assert np.abs(from_knn[:30] - 1.0).max() < 1e-6 and np.abs(from_knn[30:]).max() < 1e-6
    assert np.abs(from_sketch - from_knn).max() < 0.15
    assert (from_sketch[:30] > 0.85).all() and (from_sketch[30:] < 0.15).all()


def test_a_key_far_from_every_error_keeps_its_base_score():
    rng = np.random.default_rng(3)
    a, b = clusters(rng, 100)
    sketch = Sketch(DIM, k=32, bits=12, seed=0)
    sketch.write(a, np.ones(100), np.full(100, 0.1))
    p = compensate(np.full(100, 0.1), sketch.read(b), Params(lam=1.0))
    shift = np.abs(p - 0.1)
    # most share no bucket at all; a chance collision in one of the 32 arrays moves a key a little
    assert np.mean(shift < 1e-6) > 0.9 and shift.max() < 0.05
    assert compensate(np.full(100, 0.1), sketch.read(a), Params(lam=1.0)).min() > 0.8


def test_lambda_zero_is_the_base():
    rng = np.random.default_rng(4)
    sketch = Sketch(DIM, k=4, bits=3)
    keys = rng.standard_normal((50, DIM))
    sketch.write(keys, np.ones(50), np.zeros(50))
    p_base = rng.random(50).astype(np.float32)
    assert np.array_equal(compensate(p_base, sketch.read(keys), Params(lam=0.0)), p_base)


def test_an_empty_memory_is_the_base():
    p_base = np.array([0.0, 0.3, 1.0], dtype=np.float32)
    keys = np.eye(3, DIM)
    for memory in (Sketch(DIM), ExactKnn(DIM)):
        for gamma in (0.0, 0.5, 1.0):
            assert np.array_equal(compensate(p_base, memory.read(keys), Params(lam=1.0, gamma=gamma)), p_base)


@pytest.mark.parametrize("gamma", [0.0, 0.3, 1.0])
def test_labels_equal_to_predictions_change_nothing(gamma):
    """Errors whose labels equal their served predictions (soft labels) correct nothing,
    for any gamma, where the base scores what the memory saw."""
    rng = np.random.default_rng(5)
    keys = rng.standard_normal((100, DIM))
    sketch = Sketch(DIM, k=16, bits=2)  # coarse: every query shares buckets with many entries
    sketch.write(keys, np.full(100, 0.3), np.full(100, 0.3))
    p = compensate(np.full(100, 0.3, dtype=np.float32), sketch.read(keys), Params(lam=1.0, gamma=gamma, prior=0.0))
    assert np.abs(p - 0.3).max() < 1e-6
    if gamma == 0.0:  # only the memory's own residual: any base is left alone
        p = compensate(np.full(100, 0.8, dtype=np.float32), sketch.read(keys), Params(lam=1.0, gamma=0.0))
        assert np.abs(p - 0.8).max() < 1e-6


def test_compensation_is_clamped_and_the_gamma_form_holds():
    nb = Neighbours(sim=np.array([[1.0]]), count=np.array([[2.0]]), sum_y=np.array([[2.0]]),
                    sum_pred=np.array([[0.4]]))
    # y_bar = 1, y_bar_base = 0.2, p_base = 0.5: y_err = g (1 - 0.5) + (1 - g)(1 - 0.2)
    for gamma in (0.0, 0.5, 1.0):
        expected = 0.5 + 0.5 * (gamma * 0.5 + (1 - gamma) * 0.8)
        got = compensate(np.array([0.5]), nb, Params(lam=0.5, gamma=gamma, prior=0.0))
        assert got[0] == pytest.approx(expected, abs=1e-6)
    assert compensate(np.array([0.9]), nb, Params(lam=1.0, gamma=0.0, prior=0.0))[0] == 1.0


def test_decay_halves_old_errors_in_stream_time():
    sketch = Sketch(DIM, k=2, bits=2, half_life_s=10.0)
    key = np.ones((1, DIM))
    sketch.write(key, [1.0], [0.0], times_s=np.array([100.0]))
    sketch.write(np.array([[1.0] * (DIM - 1) + [-50.0]]), [0.0], [0.0], times_s=np.array([110.0]))
    assert sketch.read(key).count.max() == pytest.approx(0.5)


def test_canonical_keys_hash_alike_at_rank_and_from_an_error():
    """A key read at Rank (float32) and the same key decoded from an impression (int8)
    fall in the same buckets."""
    from loopwise import representation

    rng = np.random.default_rng(6)
    hidden = np.maximum(rng.standard_normal((200, 64)), 0).astype(np.float32)
    data, scale = representation.encode(hidden)
    decoded = representation.decode(data, scale, 64)
    sketch = Sketch(64, k=32, bits=12)
    assert np.array_equal(sketch.buckets(canonical(hidden)), sketch.buckets(canonical(decoded)))


def error(version: str, key, label: float = 1.0, served: float = 0.1, model: str = "ranker"
          ) -> learning_pb2.PredictionError:
    return learning_pb2.PredictionError(tenant="default", model=model, version=version, key=list(key),
                                        label=label, served_score=served, time_ms=1_000)


def test_bank_resets_on_a_version_swap_and_keeps_the_replaced_one():
    rng = np.random.default_rng(7)
    keys = np.abs(rng.standard_normal((20, DIM))).astype(np.float32)
    metrics = InferenceMetrics()
    bank = MemoryBank(MemoryConfig(mode="on", params=Params(lam=1.0)), metrics=metrics)
    v1 = bank.serve("default", "ranker", "v1", DIM)
    assert bank.write([error("v1", k) for k in keys]) == 20
    base = np.full(20, 0.1, dtype=np.float32)
    assert v1.compensate(base, keys).min() > 0.5
    v2 = bank.for_rank("default", "ranker", "v2", DIM)  # swap: a fresh memory
    assert v2 is not v1 and np.array_equal(v2.compensate(base, keys), base)
    assert bank.write([error("v1", k) for k in keys[:5]]) == 5  # the replaced version still learns
    assert bank.for_rank("default", "ranker", "v1", DIM) is v1  # a rollback finds it
    assert metrics.memory_resets.labels("default", "ranker")._value.get() == 2


def test_errors_of_a_version_not_serving_yet_wait_for_it():
    rng = np.random.default_rng(8)
    keys = np.abs(rng.standard_normal((10, DIM))).astype(np.float32)
    bank = MemoryBank(MemoryConfig(mode="shadow", params=Params(lam=1.0)), pending=100)
    bank.serve("default", "ranker", "v1", DIM)
    assert bank.write([error("v2", k) for k in keys]) == 0
    v2 = bank.serve("default", "ranker", "v2", DIM)
    assert v2.sketch.writes == 10
    assert v2.compensate(np.full(10, 0.1, dtype=np.float32), keys).min() > 0.5


def test_errors_of_tenants_not_served_here_are_ignored():
    metrics = InferenceMetrics()
    bank = MemoryBank(MemoryConfig(mode="on"), metrics=metrics, tenants=["default"])
    other = error("v1", np.ones(DIM))
    other.tenant = "acme"
    assert bank.write([other]) == 0
    assert metrics.memory_writes.labels("acme", "ranker", "ignored")._value.get() == 1
    assert bank.serve("acme", "ranker", "v1", DIM).sketch.writes == 0


def test_mode_off_has_no_memory_and_shadow_does_not_serve():
    bank = MemoryBank(MemoryConfig(mode="shadow"), per_model(MemoryConfig(mode="shadow"), "cold:mode=off"))
    assert bank.for_rank("default", "cold", "v1", DIM) is None
    memory = bank.for_rank("default", "ranker", "v1", DIM)
    assert memory is not None and not memory.serves
    assert bank.write([error("v1", np.ones(DIM), model="cold")]) == 0


def test_bad_errors_are_counted_not_written():
    metrics = InferenceMetrics()
    bank = MemoryBank(MemoryConfig(mode="on"), metrics=metrics)
    bank.serve("default", "ranker", "v1", DIM)
    bad = [error("v1", np.ones(DIM - 1)), error("v1", [float("nan")] * DIM)]
    assert bank.write(bad + [error("v1", np.ones(DIM))]) == 1
    assert metrics.memory_writes.labels("default", "ranker", "malformed")._value.get() == 2


def test_per_model_overrides_parse_and_refuse_nonsense():
    default = MemoryConfig()
    configs = per_model(default, "ranker:mode=on,k=64,bits=10,lambda=0.4,tau=0.2,gamma=0.5;cold:mode=off")
    assert configs["ranker"].mode == "on" and configs["ranker"].k == 64 and configs["ranker"].bits == 10
    assert configs["ranker"].params == Params(lam=0.4, tau=0.2, gamma=0.5, prior=default.params.prior)
    assert configs["cold"].mode == "off"
    for spec in ("ranker:mode=maybe", "ranker:colour=red", "ranker", "ranker:gamma=2"):
        with pytest.raises(ValueError):
            per_model(default, spec)


def test_sketch_memory_is_constant():
    sketch = Sketch(64, k=32, bits=12)
    size = sketch.nbytes
    sketch.write(np.random.default_rng(0).standard_normal((5000, 64)), np.ones(5000), np.zeros(5000))
    assert sketch.nbytes == size


def test_a_click_waits_for_its_window_before_its_buckets_take_it():
    """settle_s > 0: a click moves its own exact key at once and nothing else; once the stream's
    clock (a later error's time) has passed it by settle_s it is in the sketch like any error."""
    rng = np.random.default_rng(9)
    a, b = clusters(rng, 20)
    clicked, near = a[:1].astype(np.float32), a[1:].astype(np.float32)
    bank = MemoryBank(MemoryConfig(mode="on", params=Params(lam=1.0), settle_s=2.0))
    memory = bank.serve("default", "ranker", "v1", DIM)
    click = error("v1", clicked[0])  # time 1 s
    assert bank.write([click]) == 1
    assert memory.sketch.writes == 0 and memory.fresh.size == 1
    base = np.full(len(near), 0.1, dtype=np.float32)
    assert memory.compensate(np.full(1, 0.1, dtype=np.float32), clicked)[0] > 0.3  # its own key: at once
    assert np.array_equal(memory.compensate(base, near), base)  # its neighbours: not yet
    later = error("v1", b[0], label=0.0)
    later.time_ms = 3_000  # the window's close has passed the click by settle_s
    bank.write([later])
    assert memory.fresh.size == 0 and memory.sketch.writes == 2
    assert (memory.compensate(base, near) > 0.1).mean() > 0.8


def test_without_settle_a_click_is_in_the_sketch_at_once():
    bank = MemoryBank(MemoryConfig(mode="on", params=Params(lam=1.0)))
    memory = bank.serve("default", "ranker", "v1", DIM)
    bank.write([error("v1", np.ones(DIM))])
    assert memory.fresh is None and memory.sketch.writes == 1
