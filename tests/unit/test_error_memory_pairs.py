"""The error memory's exact (user, item) table (services/inference/memory/pairs.py) and its place
beside the sketch in `ModelMemory`, `MemoryBank` and the settings."""

from __future__ import annotations

import numpy as np
import pytest

from loopwise.inference.memory import MemoryBank, MemoryConfig, Params, per_model
from loopwise.inference.memory.pairs import PairTable
from loopwise.inference.metrics import InferenceMetrics
from loopwise.inference.settings import InferenceSettings
from loopwise.v1 import learning_pb2

DIM = 16
PAIR = Params(lam=1.0, gamma=1.0, prior=0.0)


def test_a_pair_reads_back_exactly_its_own_errors():
    table = PairTable(bits=12)
    users = np.array(["u1", "u1", "u2", "u1"])
    items = np.array(["a", "b", "a", "a"])
    table.write(table.keys(users, items), np.array([0.0, 1.0, 1.0, 0.0]), np.array([0.2, 0.3, 0.4, 0.6]))
    rows = table.read(table.keys("u1", ["a", "b", "c"]))
    assert np.allclose(rows, [[2.0, 0.0, 0.8], [1.0, 1.0, 0.3], [0.0, 0.0, 0.0]])
    assert table.read(table.keys("u2", ["a", "b"]))[:, 0].tolist() == [1.0, 0.0]
    # one user for the call or one per row: the same keys
    assert np.array_equal(table.keys("u1", ["a", "b"]), table.keys(np.array(["u1", "u1"]), ["a", "b"]))


def test_a_pair_on_a_slot_held_by_another_takes_it_and_the_other_reads_nothing():
    table = PairTable(bits=1)  # two slots: pairs collide
    keys = table.keys("u", [f"item{i}" for i in range(40)])
    slot = keys & np.uint64(1)
    first, second = (int(i) for i in np.flatnonzero(slot == slot[0])[:2])
    table.write(keys[[first]], np.array([1.0]), np.array([0.5]))
    table.write(keys[[second]], np.array([0.0]), np.array([0.5]))
    assert table.read(keys[[first]])[0].tolist() == [0.0, 0.0, 0.0]  # evicted: never another pair's sums
    assert table.read(keys[[second]])[0].tolist() == [1.0, 0.0, 0.5]


def test_no_user_id_no_pair():
    table = PairTable(bits=8)
    assert (table.keys("", ["a", "b"]) == 0).all()
    table.write(table.keys(np.array(["", ""]), ["a", "b"]), np.ones(2), np.zeros(2))
    assert table.writes == 0 and table.fill() == 0.0


def test_the_pair_error_edge_cases():
    table = PairTable(bits=8)
    keys = table.keys("u", ["a", "b"])
    p = np.array([0.3, 0.3], dtype=np.float32)
    assert np.array_equal(table.error(keys, p, PAIR), np.zeros(2, dtype=np.float32))  # empty: no error
    table.write(keys[:1], np.array([0.3]), np.array([0.3]))  # a label equal to the prediction
    assert np.abs(table.error(keys, p, PAIR)).max() < 1e-6
    table.write(keys[1:], np.array([0.0]), np.array([0.3]))
    assert table.error(keys, p, PAIR)[1] == pytest.approx(-0.3)  # prior 0: to the pair's own mean label
    assert table.error(keys, p, Params(lam=1.0, gamma=1.0, prior=1.0))[1] == pytest.approx(-0.15)


def error(user: str, item: str, label: float, key=None) -> learning_pb2.PredictionError:
    return learning_pb2.PredictionError(tenant="default", model="ranker", version="v1", user_id=user,
                                        candidate_id=item, key=list(np.ones(DIM) if key is None else key),
                                        label=label, served_score=0.4, time_ms=1_000)


def test_the_memory_corrects_the_pair_seen_and_leaves_the_users_other_items_and_other_users():
    """Same hidden key for every candidate (what the diagnosis found: keys that do not tell pairs
    apart): the sketch alone (lambda 0 here) cannot move one pair; the table does, only that one."""
    config = MemoryConfig(mode="on", params=Params(lam=0.0), settle_s=2.0, pair=PAIR)
    bank = MemoryBank(config, metrics=InferenceMetrics())
    memory = bank.serve("default", "ranker", "v1", DIM)
    assert bank.write([error("u1", "a", 0.0), error("u1", "b", 1.0)]) == 2  # the click too: at once
    hidden = np.ones((3, DIM), dtype=np.float32)
    base = np.full(3, 0.4, dtype=np.float32)
    out = memory.compensate(base, hidden, "u1", ["a", "b", "c"])
    assert out.tolist() == pytest.approx([0.0, 1.0, 0.4])
    assert np.array_equal(memory.compensate(base, hidden, "u2", ["a", "b", "c"]), base)
    assert np.array_equal(memory.compensate(base, hidden), base)  # no candidate ids: no pair correction


def test_sketch_lambda_zero_leaves_the_sketch_unread_and_unwritten():
    """lambda 0: the sketch corrects nothing, so Rank does not read it and errors do not go in
    (the pair table still learns and corrects); the same answers as a sketch kept for nothing."""
    config = MemoryConfig(mode="on", params=Params(lam=0.0), settle_s=2.0, pair=PAIR)
    memory = MemoryBank(config, metrics=InferenceMetrics()).serve("default", "ranker", "v1", DIM)
    assert not memory.sketch_on and memory.fresh is None
    bank = MemoryBank(config)
    memory = bank.serve("default", "ranker", "v1", DIM)
    keys = np.random.default_rng(0).normal(size=(3, DIM)).astype(np.float32)
    bank.write([error("u1", "a", 0.0, keys[0]), error("u1", "b", 1.0, keys[1])])
    assert memory.sketch.writes == 0 and memory.pairs is not None and memory.pairs.writes == 2
    base = np.full(3, 0.4, dtype=np.float32)
    assert memory.compensate(base, keys, "u1", ["a", "b", "c"]).tolist() == pytest.approx([0.0, 1.0, 0.4])
    on = MemoryBank(MemoryConfig(mode="on", params=Params(lam=0.5), pair=PAIR)).serve("default", "ranker", "v1", DIM)
    assert on.sketch_on


def test_pair_lambda_zero_has_no_table_and_the_bytes_count_the_table():
    plain = MemoryBank(MemoryConfig(mode="on", pair=Params(lam=0.0))).serve("default", "ranker", "v1", DIM)
    assert plain.pairs is None and plain.nbytes == plain.sketch.nbytes
    paired = MemoryBank(MemoryConfig(mode="on", pair=PAIR, pair_bits=10)).serve("default", "ranker", "v1", DIM)
    assert paired.pairs is not None and paired.nbytes == paired.sketch.nbytes + (1 << 10) * 20


def test_a_swap_starts_an_empty_pair_table():
    bank = MemoryBank(MemoryConfig(mode="on", pair=PAIR))
    bank.serve("default", "ranker", "v1", DIM)
    bank.write([error("u1", "a", 0.0)])
    v2 = bank.serve("default", "ranker", "v2", DIM)
    base = np.full(1, 0.4, dtype=np.float32)
    assert np.array_equal(v2.compensate(base, np.ones((1, DIM)), "u1", ["a"]), base)


def test_pair_settings_and_overrides():
    configs = per_model(MemoryConfig(), "ranker:pair_lambda=0.5,pair_prior=0,pair_bits=12")
    assert configs["ranker"].pair == Params(lam=0.5, gamma=1.0, prior=0.0) and configs["ranker"].pair_bits == 12
    for spec in ("ranker:pair_lambda=-1", "ranker:pair_bits=40"):
        with pytest.raises(ValueError):
            per_model(MemoryConfig(), spec)
    default, _ = InferenceSettings(error_memory_pair_lambda=0.7, error_memory_pair_prior=0.25).memory_configs()
    assert default.pair == Params(lam=0.7, gamma=1.0, prior=0.25)


def error_of(request: str, user: str, item: str, label: float) -> learning_pb2.PredictionError:
    e = error(user, item, label)
    e.request_id = request
    return e


def test_pairs_shown_here_count_once_with_their_errors_and_once_elsewhere():
    """pair_at_rank: the answering replica counts a shown pair at Rank; its request's errors then add
    only the click. A replica that did not answer counts the errors. Both end with the same sums."""
    config = MemoryConfig(mode="on", params=Params(lam=0.0), pair=Params(lam=1.0, gamma=1.0, prior=1.0))
    here, elsewhere = (MemoryBank(config).serve("default", "ranker", "v1", DIM) for _ in range(2))
    hidden = np.ones((2, DIM), dtype=np.float32)
    base = np.full(2, 0.4, dtype=np.float32)
    assert np.array_equal(here.compensate(base, hidden, "u1", ["a", "b"]), base)
    here.shown("r1", "u1", ["a", "b"], base)
    assert here.compensate(base, hidden, "u1", ["a", "b"]).tolist() == pytest.approx([0.2, 0.2])  # at once
    assert np.array_equal(elsewhere.compensate(base, hidden, "u1", ["a", "b"]), base)
    errors = [error_of("r1", "u1", "a", 1.0), error_of("r1", "u1", "b", 0.0)]  # a's click, b's window close
    for memory in (here, elsewhere):
        MemoryBank(config)._write(memory, errors, None)
    for memory in (here, elsewhere):
        assert np.allclose(memory.pairs.read(memory.pairs.keys("u1", ["a", "b"])), [[1.0, 1.0, 0.4], [1.0, 0.0, 0.4]])


def test_a_shown_pair_that_lost_its_slot_comes_back_whole_with_its_click():
    config = MemoryConfig(mode="on", pair=Params(lam=1.0, gamma=1.0, prior=1.0), pair_bits=1)
    memory = MemoryBank(config).serve("default", "ranker", "v1", DIM)
    items = [f"item{i}" for i in range(40)]
    keys = memory.pairs.keys("u1", items)
    rival = next(i for i in range(1, 40) if keys[i] & np.uint64(1) == keys[0] & np.uint64(1))
    memory.shown("r1", "u1", [items[0]], np.full(1, 0.4, dtype=np.float32))
    memory.shown("r2", "u1", [items[rival]], np.full(1, 0.4, dtype=np.float32))  # takes item0's slot
    MemoryBank(config)._write(memory, [error_of("r1", "u1", items[0], 1.0)], None)
    assert np.allclose(memory.pairs.read(keys[:1]), [[1.0, 1.0, 0.4]])  # not a count of 0
