"""Sparse deltas (issue 11 items 2-4): the trainer's steps, serving's snapshots, ordering,
restarts, torn reads and the online guard, without Kafka."""

from __future__ import annotations

import threading
import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from loopwise.features import InputBuilder  # noqa: E402
from loopwise.inference.deltas import DeltaRegistry  # noqa: E402
from loopwise.inference.deltas_guard import DeltaGuard  # noqa: E402
from loopwise.inference.impressions import build_impression  # noqa: E402
from loopwise.inference.metrics import InferenceMetrics  # noqa: E402
from loopwise.modelstore import Manifest, coldstart, sparse  # noqa: E402
from loopwise.trainer.data import build_window_data  # noqa: E402
from loopwise.trainer.deltas import DeltaTrainer  # noqa: E402
from loopwise.trainer.export import export_onnx, session  # noqa: E402
from loopwise.trainer.model import Ranker, state_bytes  # noqa: E402
from loopwise.trainer.settings import TrainerSettings  # noqa: E402
from loopwise.trainer.train import Production, crosses_of  # noqa: E402
from loopwise.v1 import inference_pb2, learning_pb2  # noqa: E402
from tests.unit.test_trainer import make_examples  # noqa: E402

SPEC = coldstart.DEFAULT_SPEC
SETTINGS = TrainerSettings(trainer_cross_buckets=1 << 12)


def trained_production() -> tuple[Production, Ranker]:
    """A trainer version with every sparse table, its tables made non-zero."""
    crosses = crosses_of(SPEC, SETTINGS)
    model = Ranker(SPEC.buckets, len(SPEC.sparse), len(SPEC.dense), 8, 64, fm_dim=4, linear=True,
                   crosses=crosses, cross_buckets=1 << 12)
    with torch.no_grad():
        for t in (model.bias, model.cross):
            t.weight.normal_(0, 0.3)
            t.weight[0].zero_()
    layout = sparse.Layout.of_config(model.config)
    manifest = Manifest("default", "ranker", "v2", "", SPEC.to_dict(), 64, source="trainer",
                        metrics={"sparse_layout": layout.to_dict()})
    return Production("v2", export_onnx(model, SPEC), manifest, state_bytes(model)), model


def onnx_prob(onnx: bytes, data) -> np.ndarray:
    prob, _ = session(onnx).run(["prob", "hidden"], {"sparse_ids": data.sparse, "dense": data.dense})
    return prob


def torch_prob(model: Ranker, data) -> np.ndarray:
    with torch.no_grad():
        prob, _ = model(torch.from_numpy(data.sparse), torch.from_numpy(data.dense))
    return prob.numpy()


def records(examples) -> list[tuple[bytes, int]]:
    return [(e.SerializeToString(), 1_000 + i) for i, e in enumerate(examples)]


def loaded_like(version: str, layout: sparse.Layout | None, base=None):
    """The parts of a LoadedModel that `DeltaRegistry.serving` and `Snapshot.adjust` read."""
    def fits(lay):
        return lay is not None and (lay == layout if layout is not None else lay.fm_dim == 0)
    return types.SimpleNamespace(tenant="default", model="ranker", version=version, fits=fits, sparse_base=base)


# -- the trainer's deltas served: same scores as the trainer's model ---------------------------

def test_a_delta_step_served_on_the_version_scores_like_the_trainers_model():
    production, model = trained_production()
    base_tables = model.sparse_tables()
    trainer = DeltaTrainer("default", "ranker", SETTINGS)
    assert trainer.rebase("v2", production, SPEC) and trainer.sequence == 0
    step = trainer.step(records(make_examples(400, seed=1)))
    assert len(step.records) == 1 and step.sequence == 1 and step.rows > 0
    delta = sparse.decode_delta(step.records[0])
    assert (delta.base_version, delta.sequence, delta.first_example_ms) == ("v2", 1, 1_000)
    assert set(delta.rows) == {"fm", "bias", "cross"}
    # Only the dense part stays frozen: the trainer's embedding and MLP did not move.
    assert torch.equal(trainer.model.embedding.weight, model.embedding.weight)
    registry = DeltaRegistry(("default",))
    assert registry.offer(delta)[0] == "applied"
    loaded = loaded_like("v2", sparse.Layout.of_config(model.config), base_tables)
    snap = registry.serving(loaded)
    assert snap.sequence == 1
    data = build_window_data(InputBuilder(SPEC), make_examples(300, seed=2))
    served = snap.adjust(onnx_prob(production.onnx, data), data.sparse, base_tables)
    assert np.abs(served - torch_prob(trainer.model, data)).max() < 2e-4
    assert np.abs(served - onnx_prob(production.onnx, data)).max() > 1e-3  # the deltas did change scores


def test_deltas_on_the_cold_start_model_raise_a_clicked_new_item():
    onnx = coldstart.build_onnx(SPEC)
    manifest = Manifest("default", "ranker", "v1", "", SPEC.to_dict(), coldstart.HIDDEN_DIM, source="coldstart")
    trainer = DeltaTrainer("default", "ranker", SETTINGS)
    trainer.rebase("v1", Production("v1", onnx, manifest, None), SPEC)
    assert trainer.layout.tables() == ("bias", "cross")
    clicks = make_examples(50, seed=3, n_items=1, per_request=1)  # one item, clicked every time
    for e in clicks:
        e.candidate_id, e.label = "brand-new", 1.0
    [record] = trainer.step(records(clicks)).records
    delta = sparse.decode_delta(record)
    registry = DeltaRegistry(("default",))
    registry.offer(delta)
    snap = registry.serving(loaded_like("v1", None))
    data = build_window_data(InputBuilder(SPEC), clicks[:5])
    before = onnx_prob(onnx, data)
    after = snap.adjust(before, data.sparse, None)
    assert (after > before + 0.05).all()
    assert np.abs(after - torch_prob(trainer.model, data)).max() < 2e-4


def test_a_trainer_version_without_its_tables_gets_no_deltas():
    production, _ = trained_production()
    production.manifest.metrics = {}
    trainer = DeltaTrainer("default", "ranker", SETTINGS)
    trainer.rebase("v2", production, SPEC)
    assert trainer.model is None and "sparse tables" in trainer.why_not
    assert trainer.step(records(make_examples(20))).records == []


# -- ordering, duplicates, other bases, restarts -----------------------------------------------

LAYOUT = sparse.Layout(buckets=64, fm_dim=2, linear=True, cross_a=(0,), cross_b=(1,), cross_buckets=32)


def random_delta(rng, seq: int, base: str = "v2", stream: str = "s1") -> bytes:
    rows = {}
    for name in LAYOUT.tables():
        ids = np.unique(rng.integers(1, LAYOUT.rows(name), size=int(rng.integers(1, 8))))
        rows[name] = (ids, rng.normal(0, 1, (len(ids), LAYOUT.dim(name))).astype(np.float32))
    return sparse.encode_delta("default", "ranker", base, stream, seq, LAYOUT, rows, first_example_ms=1)


def reference(deltas: list[bytes]) -> dict[str, np.ndarray]:
    """Dense tables after applying ``deltas`` in order on zero tables."""
    tables = {n: np.zeros((LAYOUT.rows(n), LAYOUT.dim(n)), dtype=np.float32) for n in LAYOUT.tables()}
    for raw in deltas:
        for name, rows in sparse.decode_delta(raw).rows.items():
            tables[name][rows.ids] = rows.values
    return tables


def materialise(snap) -> dict[str, np.ndarray]:
    out = {}
    for name in LAYOUT.tables():
        ov = snap.overlays.get(name)
        t = np.zeros((LAYOUT.rows(name), LAYOUT.dim(name)), dtype=np.float32)
        if ov is not None:
            t[ov.ids] = ov.values
        out[name] = t
    return out


def same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return all(np.array_equal(a[k], b[k]) for k in LAYOUT.tables())


@settings(max_examples=40, deadline=None)
@given(st.permutations(list(range(8))), st.lists(st.integers(0, 7), max_size=6), st.integers(0, 2**32 - 1))
def test_out_of_order_duplicated_and_foreign_deltas_never_corrupt_a_table(order, dups, seed):
    rng = np.random.default_rng(seed)
    stream = [random_delta(rng, i + 1) for i in range(8)]
    foreign = [random_delta(rng, 1, base="v9"), random_delta(rng, 3, base="v1")]
    registry = DeltaRegistry(("default",))
    arrivals = [stream[i] for i in order] + [stream[i] for i in dups] + foreign
    rng.shuffle(arrivals)
    for raw in arrivals:
        registry.offer(sparse.decode_delta(raw))
        snap = registry.snapshot("default", "ranker", "v2")
        # Whatever came when, the served state is exactly the first `sequence` deltas.
        assert same(materialise(snap), reference(stream[:snap.sequence]))
    assert registry.snapshot("default", "ranker", "v2").sequence == 8
    assert same(materialise(registry.snapshot("default", "ranker", "v2")), reference(stream))
    assert registry.snapshot("default", "ranker", "v9").sequence == 1  # its own base, not v2's


def test_a_replica_restarted_mid_stream_converges_to_the_one_that_never_stopped():
    rng = np.random.default_rng(0)
    first = [random_delta(rng, i + 1, stream="a") for i in range(5)]
    second = [random_delta(rng, i + 1, stream="b") for i in range(4)]  # a restarted trainer
    topic = first + second
    steady = DeltaRegistry(("default",))
    for raw in topic:
        steady.offer(sparse.decode_delta(raw))
    stopped = DeltaRegistry(("default",))
    for raw in topic[:3]:
        stopped.offer(sparse.decode_delta(raw))
    restarted = DeltaRegistry(("default",))  # reads the topic from its start again
    for raw in topic:
        restarted.offer(sparse.decode_delta(raw))
    s, r = steady.snapshot("default", "ranker", "v2"), restarted.snapshot("default", "ranker", "v2")
    assert (s.stream, s.sequence) == (r.stream, r.sequence) == ("b", 4)
    assert same(materialise(s), materialise(r)) and same(materialise(s), reference(second))
    # A late delta of the replaced stream is ignored.
    assert steady.offer(sparse.decode_delta(random_delta(rng, 6, stream="a")))[0] == "stale_stream"


def test_bad_deltas_are_rejected_with_a_reason():
    good = sparse.decode_delta(random_delta(np.random.default_rng(1), 1))
    assert good.sequence == 1
    cases = {
        "malformed": b"\xff\xff\xff",
        "bad_ids": sparse.encode_delta("default", "ranker", "v2", "s", 1, LAYOUT,
                                       {"bias": (np.array([0]), np.ones((1, 1)))}),
        "non_finite": sparse.encode_delta("default", "ranker", "v2", "s", 1, LAYOUT,
                                          {"bias": (np.array([3]), np.array([[np.nan]]))}),
        "bad_layout": sparse.encode_delta("default", "ranker", "v2", "s", 1,
                                          sparse.Layout(buckets=64, fm_dim=0), {"fm": (np.array([3]), np.ones((1, 2)))}),
    }
    for reason, raw in cases.items():
        with pytest.raises(sparse.DeltaError) as err:
            sparse.decode_delta(raw)
        assert err.value.reason == reason
    too_far = learning_pb2.SparseDelta.FromString(random_delta(np.random.default_rng(2), 1))
    too_far.tables[0].ids = np.array([LAYOUT.rows(too_far.tables[0].table)], dtype="<i8").tobytes()
    too_far.tables[0].values = np.zeros(LAYOUT.dim(too_far.tables[0].table), dtype="<f4").tobytes()
    with pytest.raises(sparse.DeltaError, match="ascending"):
        sparse.decode_delta(too_far.SerializeToString())


# -- no torn reads ----------------------------------------------------------------------------

def scores_of(snap, ids: np.ndarray) -> np.ndarray:
    prob = np.full(len(ids), 0.3, dtype=np.float32)
    return snap.adjust(prob, ids, None)


def expected_scores(deltas: list[bytes], ids: np.ndarray) -> np.ndarray:
    ref = reference(deltas)
    z = sparse.sparse_logit(ids, LAYOUT, lambda n, i: ref[n][i])
    return sparse.sigmoid(sparse.logit(np.full(len(ids), 0.3, dtype=np.float32)) + z)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from(["apply", "read"]), min_size=1, max_size=30), st.integers(0, 2**32 - 1))
def test_rank_during_delta_application_sees_one_whole_sequence(schedule, seed):
    rng = np.random.default_rng(seed)
    stream = [random_delta(rng, i + 1) for i in range(schedule.count("apply"))]
    ids = rng.integers(0, 64, size=(20, 3))
    registry, pending = DeltaRegistry(("default",)), iter(stream)
    held = []  # snapshots taken by calls still "running"
    for op in schedule:
        if op == "apply":
            registry.offer(sparse.decode_delta(next(pending)))
        else:
            held.append(registry.snapshot("default", "ranker", "v2"))
        for snap in held:  # a call's snapshot keeps scoring its own sequence, whatever was applied since
            np.testing.assert_allclose(scores_of(snap, ids) if snap.sequence else np.full(20, 0.3),
                                       expected_scores(stream[:snap.sequence], ids), rtol=1e-5)


def test_concurrent_rank_threads_never_see_a_torn_state():
    rng = np.random.default_rng(5)
    stream = [random_delta(rng, i + 1) for i in range(60)]
    ids = rng.integers(0, 64, size=(50, 3))
    expected = [expected_scores(stream[:k], ids) for k in range(61)]
    registry, errors, done = DeltaRegistry(("default",)), [], threading.Event()

    def reader():
        while not done.is_set():
            snap = registry.snapshot("default", "ranker", "v2")
            got = scores_of(snap, ids) if snap.sequence else expected[0]
            if not np.allclose(got, expected[snap.sequence], rtol=1e-5):
                errors.append(snap.sequence)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for raw in stream:
        registry.offer(sparse.decode_delta(raw))
    done.set()
    for t in threads:
        t.join()
    assert not errors and registry.snapshot("default", "ranker", "v2").sequence == 60


# -- guard rails -------------------------------------------------------------------------------

def guarded(margin=0.01):
    registry = DeltaRegistry(("default",))
    rng = np.random.default_rng(3)
    for i in range(3):
        registry.offer(sparse.decode_delta(random_delta(rng, i + 1)))
    return registry, DeltaGuard(registry, InferenceMetrics(), margin=margin, min_labels=50, window=200)


def feed(guard, registry, served_good: bool, n=120) -> int:
    rng = np.random.default_rng(4)
    rollbacks = 0
    for r in range(n):
        snap = registry.snapshot("default", "ranker", "v2")
        y = float(rng.random() < 0.3)
        base = np.array([0.3], dtype=np.float32)
        served = np.array([0.9 if y else 0.1] if served_good else [0.1 if y else 0.9], dtype=np.float32)
        guard.remember(f"r{r}", "default", "ranker", "v2", snap, ["item"], base, served)
        rollbacks += guard.label(learning_pb2.PredictionError(tenant="default", request_id=f"r{r}",
                                                              candidate_id="item", label=y))
    return rollbacks


def test_deltas_that_score_worse_online_than_their_base_are_rolled_back():
    registry, guard = guarded()
    assert feed(guard, registry, served_good=False) == 1
    snap = registry.snapshot("default", "ranker", "v2")
    assert snap.sequence == 0 and registry.rolled_back("default", "ranker", "v2")
    assert guard.metrics.delta_rollbacks.labels("default", "ranker")._value.get() == 1
    later = sparse.decode_delta(random_delta(np.random.default_rng(9), 4))
    assert registry.offer(later)[0] == "rolled_back"  # the rest of that stream is ignored
    # A new stream (a restarted trainer) or a new base starts afresh.
    assert registry.offer(sparse.decode_delta(random_delta(np.random.default_rng(9), 1, stream="s2")))[0] == "applied"


def test_deltas_that_score_better_are_kept():
    registry, guard = guarded()
    assert feed(guard, registry, served_good=True) == 0
    assert registry.snapshot("default", "ranker", "v2").sequence == 3


# -- the answer and the impression name the sequence -------------------------------------------

def test_the_impression_names_the_delta_sequence():
    request = inference_pb2.RankRequest(tenant="default", user_id="u")
    request.candidates.ids.extend(["a", "b"])
    event = build_impression("default", request, "r1", "ranker", "v2", np.array([0.2, 0.1]), np.array([0, 1]),
                             None, 1, delta_sequence=7)
    assert (event.impression.version, event.impression.delta_sequence) == ("v2", 7)


def test_a_new_full_version_resets_the_sequence_and_requeues_what_it_has_not_learned():
    production, model = trained_production()
    trainer = DeltaTrainer("default", "ranker", SETTINGS)
    trainer.rebase("v2", production, SPEC)
    examples = make_examples(40, seed=7)
    for i, e in enumerate(examples):
        trainer.add(e.SerializeToString(), 1_000 + i, 10_000 + i)
    assert trainer.step(trainer.take()).sequence == 1
    # v3 was trained on the examples up to time 10_019: the other 20 wait for the next step again.
    production.manifest.metrics["train_until_ms"] = 10_019
    stream = trainer.stream
    assert trainer.rebase("v3", production, SPEC) and not trainer.rebase("v3", production, SPEC)
    assert trainer.stream != stream and trainer.sequence == 0
    assert trainer.requeue() == 20
    trainer.settings = TrainerSettings(**{**SETTINGS.__dict__, "trainer_delta_catchup_rows": 8})
    fresh = make_examples(1, seed=8)[0]
    trainer.add(fresh.SerializeToString(), 5_000, 20_000)
    # Fresh examples first, then the backlog, a bounded share per step.
    step = trainer.step(trainer.take())
    assert step.sequence == 1 and step.examples == 1 + 8
    delta = sparse.decode_delta(step.records[0])
    assert delta.base_version == "v3" and delta.first_example_ms == 5_000  # requeued ones do not count
    assert trainer.waiting() == 12
    assert trainer.step(trainer.take()).examples == 8
    last = trainer.step(trainer.take())
    assert last.examples == 4 and sparse.decode_delta(last.records[0]).first_example_ms == 0


def test_a_new_base_relearns_its_whole_backlog_in_one_step_by_default():
    """The seconds between a new version's newest training example and its announcement come
    back in its first delta, not ``trainer_delta_every_n`` a step."""
    production, _ = trained_production()
    trainer = DeltaTrainer("default", "ranker", TrainerSettings(**{**SETTINGS.__dict__, "trainer_delta_every_n": 8}))
    trainer.rebase("v2", production, SPEC)
    for i, e in enumerate(make_examples(40, seed=7)):
        trainer.add(e.SerializeToString(), 1_000 + i, 10_000 + i)
    trainer.step(trainer.take())
    production.manifest.metrics["train_until_ms"] = 10_009
    trainer.rebase("v3", production, SPEC)
    assert trainer.requeue() == 30
    first = trainer.step(trainer.take())
    assert first.sequence == 1 and first.examples == 30 and trainer.waiting() == 0


def test_a_step_touching_many_rows_publishes_several_deltas_under_the_record_limit(monkeypatch):
    from loopwise.trainer import deltas as trainer_deltas

    monkeypatch.setattr(trainer_deltas, "MAX_DELTA_BYTES", 4_000)
    production, model = trained_production()
    base_tables = model.sparse_tables()
    trainer = DeltaTrainer("default", "ranker", SETTINGS)
    trainer.rebase("v2", production, SPEC)
    step = trainer.step(records(make_examples(300, seed=8)))
    assert len(step.records) > 3 and step.sequence == len(step.records)
    assert all(len(r) < 4_000 + 500 for r in step.records)
    registry = DeltaRegistry(("default",))
    for r in step.records:
        registry.offer(sparse.decode_delta(r))
    snap = registry.serving(loaded_like("v2", sparse.Layout.of_config(model.config), base_tables))
    assert snap.sequence == step.sequence
    data = build_window_data(InputBuilder(SPEC), make_examples(100, seed=9))
    served = snap.adjust(onnx_prob(production.onnx, data), data.sparse, base_tables)
    assert np.abs(served - torch_prob(trainer.model, data)).max() < 2e-4


def test_the_guard_does_not_judge_on_one_kind_of_label_alone():
    registry, guard = guarded()
    snap = registry.snapshot("default", "ranker", "v2")
    for r in range(150):  # clicks only (their negatives have not come yet), scored lower by the deltas
        guard.remember(f"c{r}", "default", "ranker", "v2", snap, ["item"], np.array([0.5], dtype=np.float32),
                       np.array([0.2], dtype=np.float32))
        assert not guard.label(learning_pb2.PredictionError(tenant="default", request_id=f"c{r}",
                                                            candidate_id="item", label=1.0))
    assert registry.snapshot("default", "ranker", "v2").sequence == 3


class Recorder:
    """A producer that acks every delta and keeps it, decoded, in ``sent``."""

    def __init__(self):
        self.sent = []

    async def send_and_wait(self, topic, value, key):
        self.sent.append(sparse.decode_delta(value))


def loop_on_coldstart(tmp_path, producer, settings=SETTINGS):
    """A `DeltaLoop` over a stand-in trainer whose store serves the cold-start model and whose
    producer is ``producer``; (loop, stand-in)."""
    from loopwise.modelstore import ModelStore, pointers
    from loopwise.trainer import publish as pub
    from loopwise.trainer.deltas_loop import DeltaLoop
    from loopwise.trainer.metrics import TrainerMetrics

    store = ModelStore(str(tmp_path / "models"))
    store.publish("default", "ranker", coldstart.build_onnx(SPEC), feature_spec=SPEC,
                  hidden_dim=coldstart.HIDDEN_DIM, source="coldstart")
    trainer = types.SimpleNamespace(
        settings=settings, metrics=TrainerMetrics(), store=store, redis=None, producer=producer,
        runner=types.SimpleNamespace(  # `runner.Runner.production`: the serving version's model
            production=lambda t, m: pub.load_production(store, t, m, pointers.serving_version(store, None, t, m))))
    return DeltaLoop(trainer), trainer


def stepped_loop(tmp_path, producer, seed):
    """`loop_on_coldstart` restreaming every 30 s, after one pass that stepped on 30 examples;
    (loop, stand-in, its delta trainer)."""
    import asyncio
    import dataclasses

    loop, trainer = loop_on_coldstart(tmp_path, producer, dataclasses.replace(SETTINGS, trainer_delta_restream_s=30.0))
    for i, e in enumerate(make_examples(30, seed=seed)):
        loop.add("default", "ranker", e.SerializeToString(), i, i)
    asyncio.run(loop.tick(1_000.0))
    return loop, trainer, loop.trainers[("default", "ranker")]


def test_the_default_models_base_is_built_before_its_first_example(tmp_path):
    import asyncio

    loop, trainer = loop_on_coldstart(tmp_path, Recorder())
    dt = loop.trainers[("default", "ranker")]  # known from the start: each tenant's default model
    assert dt.base_version == "" and dt.waiting() == 0
    asyncio.run(loop.tick(1_000.0))  # a pass with no example: the pointer is read, the base built
    assert dt.base_version == "v1" and dt.model is not None
    # and with nothing to teach, the stream starts at once: a delta without rows
    [start] = trainer.producer.sent
    assert (start.base_version, start.stream, start.sequence, start.rows) == ("v1", dt.stream, 1, {})
    for i, e in enumerate(make_examples(30, seed=14)):
        loop.add("default", "ranker", e.SerializeToString(), i, i)
    asyncio.run(loop.step("default", "ranker"))
    assert [d.sequence for d in trainer.producer.sent] == [1, 2] and trainer.producer.sent[1].rows

    fresh, _ = loop_on_coldstart(tmp_path / "fresh", producer=None)
    asyncio.run(fresh.prepare())  # what the trainer awaits before it reads examples
    assert fresh.trainers[("default", "ranker")].base_version == "v1"
    assert fresh._outbox[("default", "ranker")]  # its stream's start, sent by the first pass


def test_a_failed_send_leaves_no_gap_in_the_sequence(tmp_path):
    import asyncio

    class Producer:
        def __init__(self):
            self.sent, self.fail = [], 1

        async def send_and_wait(self, topic, value, key):
            if self.fail:
                self.fail -= 1
                raise ConnectionError("broker away")
            self.sent.append(sparse.decode_delta(value).sequence)

    loop, trainer = loop_on_coldstart(tmp_path, Producer())
    for i, e in enumerate(make_examples(30, seed=12)):
        loop.add("default", "ranker", e.SerializeToString(), i, i)
    with pytest.raises(ConnectionError):
        asyncio.run(loop.step("default", "ranker"))
    for i, e in enumerate(make_examples(30, seed=13)):
        loop.add("default", "ranker", e.SerializeToString(), i, i)
    assert asyncio.run(loop.step("default", "ranker")) == 1  # the unsent delta first, no new step meanwhile
    assert asyncio.run(loop.step("default", "ranker")) == 2
    assert trainer.producer.sent == [1, 2]


def test_paired_auc_and_its_standard_error_match_a_bootstrap():
    from loopwise.ranking_metrics import auc, paired_auc

    rng = np.random.default_rng(0)
    y = rng.random(400) < 0.25
    a = rng.normal(size=400) + y
    b = a + rng.normal(scale=0.5, size=400)
    auc_a, auc_b, se = paired_auc(y, a, b)
    assert auc_a == pytest.approx(auc(y.astype(float), a)) and auc_b == pytest.approx(auc(y.astype(float), b))
    boot = []
    for _ in range(200):
        i = rng.integers(0, 400, 400)
        boot.append(auc(y[i].astype(float), b[i]) - auc(y[i].astype(float), a[i]))
    assert se == pytest.approx(np.std(boot), rel=0.25)


def test_the_guard_does_not_roll_back_on_a_difference_chance_explains():
    registry, guard = guarded()
    rng = np.random.default_rng(6)
    snap = registry.snapshot("default", "ranker", "v2")
    for r in range(200):  # the deltas are the base plus noise: a little worse on this sample, by chance
        y = float(rng.random() < 0.3)
        base = np.array([0.3 + 0.2 * y + rng.normal(0, 0.2)], dtype=np.float32)
        guard.remember(f"n{r}", "default", "ranker", "v2", snap, ["item"], base,
                       base + rng.normal(0, 0.1, 1).astype(np.float32))
        assert not guard.label(learning_pb2.PredictionError(tenant="default", request_id=f"n{r}",
                                                            candidate_id="item", label=y))
    assert registry.snapshot("default", "ranker", "v2").sequence == 3


def test_a_new_version_gets_its_first_deltas_without_waiting_for_a_new_example(monkeypatch):
    """The examples a new full version has not learned (its holdout, the ones that came while
    it trained) go out as its first deltas as soon as the pointer moves, not with the next
    example: on bench/learning.py's replay the new base's first delta came 2-6 s after the
    version (the replay waits for the swap), so a third of each version's requests were served
    by a base that had not learned the newest examples."""
    import asyncio

    from loopwise.trainer import deltas_loop
    from loopwise.trainer.deltas_loop import DeltaLoop
    from loopwise.trainer.metrics import TrainerMetrics

    v2, _ = trained_production()
    v2.manifest.metrics["train_until_ms"] = 9
    v1 = Production("v1", coldstart.build_onnx(SPEC),
                    Manifest("default", "ranker", "v1", "", SPEC.to_dict(), coldstart.HIDDEN_DIM, source="coldstart"))
    serving = {"version": "v1"}
    monkeypatch.setattr(deltas_loop.pointers, "serving_version", lambda *a, **kw: serving["version"])

    class Producer:
        def __init__(self):
            self.sent = []

        async def send_and_wait(self, topic, value, key):
            delta = sparse.decode_delta(value)
            self.sent.append((delta.base_version, delta.sequence, delta.examples))

    trainer = types.SimpleNamespace(settings=SETTINGS, metrics=TrainerMetrics(), store=None, redis=None,
                                    producer=Producer(),
                                    runner=types.SimpleNamespace(
                                        production=lambda t, m: v1 if serving["version"] == "v1" else v2))
    loop = DeltaLoop(trainer)
    for i, e in enumerate(make_examples(30, seed=14)):
        loop.add("default", "ranker", e.SerializeToString(), 1_000 + i, i)
    asyncio.run(loop.tick(100.0))
    assert trainer.producer.sent == [("v1", 1, 30)]
    asyncio.run(loop.tick(100.05))  # nothing waits, the pointer has not moved: nothing
    serving["version"] = "v2"
    asyncio.run(loop.tick(100.1))  # within the interval of the last look: not yet
    assert len(trainer.producer.sent) == 1
    asyncio.run(loop.tick(101.0))  # no new example, but a new version: its first delta at once
    assert trainer.producer.sent[1:] == [("v2", 1, 20)]
    asyncio.run(loop.tick(102.0))
    assert len(trainer.producer.sent) == 2


# -- a new stream on the same tables ------------------------------------------------------------

def test_a_restreamed_base_serves_the_same_tables_and_a_rolled_back_replica_takes_it_again():
    production, model = trained_production()
    base_tables = model.sparse_tables()
    trainer = DeltaTrainer("default", "ranker", SETTINGS)
    trainer.rebase("v2", production, SPEC)
    assert trainer.restream() == []  # nothing published on this base yet
    steps = [trainer.step(records(make_examples(200, seed=s))) for s in (1, 2, 3)]
    old_stream = trainer.stream
    follower, dropped = DeltaRegistry(("default",)), DeltaRegistry(("default",))
    for raw in (r for st_ in steps for r in st_.records):
        follower.offer(sparse.decode_delta(raw))
        dropped.offer(sparse.decode_delta(raw))
    assert dropped.rollback("default", "ranker", "v2", old_stream)
    restream = trainer.restream()
    assert restream and trainer.stream != old_stream and trainer.sequence == len(restream)
    fresh = DeltaRegistry(("default",))  # a replica that reads only the new stream
    for raw in restream:
        for registry in (follower, dropped, fresh):
            assert registry.offer(sparse.decode_delta(raw))[0] == "applied"
    loaded = loaded_like("v2", sparse.Layout.of_config(model.config), base_tables)
    data = build_window_data(InputBuilder(SPEC), make_examples(300, seed=9))
    expected = torch_prob(trainer.model, data)
    for registry in (follower, dropped, fresh):
        snap = registry.serving(loaded)
        assert snap.stream == trainer.stream
        served = snap.adjust(onnx_prob(production.onnx, data), data.sparse, base_tables)
        assert np.abs(served - expected).max() < 2e-4
    # The stream goes on from there.
    nxt = trainer.step(records(make_examples(100, seed=4)))
    assert sparse.decode_delta(nxt.records[0]).sequence == len(restream) + 1


def test_the_loop_restreams_a_base_after_its_interval(tmp_path):
    import asyncio

    loop, trainer, dt = stepped_loop(tmp_path, Recorder(), seed=12)
    first = [d.stream for d in trainer.producer.sent]
    assert first and set(first) == {dt.stream}
    asyncio.run(loop.tick(dt.stream_started + 10))  # too early, nothing waits: nothing sent
    assert len(trainer.producer.sent) == len(first)
    asyncio.run(loop.tick(dt.stream_started + 31))
    again = trainer.producer.sent[len(first):]
    assert again and {d.stream for d in again} == {dt.stream} != {first[0]}
    assert [d.sequence for d in again] == list(range(1, len(again) + 1))
    assert trainer.metrics.deltas.labels("default", "ranker", "restreamed")._value.get() == 1


def test_the_guard_judges_whole_calls_not_clicks_ahead_of_their_negatives():
    """A click's label comes at once, its call's negatives when the attribution window closes:
    judged label by label, the newest clicks meet only older calls' negatives. Deltas that move
    every score over time (here: each call a little lower than the one before, as deltas that
    learn "shown, not clicked" do) then look worse than their base on that mix although they rank
    each call better (measured on bench/learning.py's replay: guard 0.65 for the deltas against
    0.90 for the base on its labels, while on the final labels the deltas served 0.71 against
    the base's 0.66). Only calls whose every candidate is labelled are judged."""
    registry, guard = guarded()
    snap = registry.snapshot("default", "ranker", "v2")
    ids = [f"i{j}" for j in range(5)]
    rng = np.random.default_rng(8)
    lag, calls = 20, 200  # a call's negatives come 20 calls after its click
    clicked = rng.integers(0, 5, calls)
    rollbacks = 0
    for r in range(calls + lag):
        if r < calls:
            base = rng.uniform(0.2, 0.6, 5).astype(np.float32)
            served = (base - 0.01 * r).astype(np.float32)  # the deltas drift every score down...
            served[clicked[r]] += 0.05  # ...and rank the clicked one higher than the base does
            guard.remember(f"w{r}", "default", "ranker", "v2", snap, ids, base, served)
            rollbacks += guard.label(learning_pb2.PredictionError(
                tenant="default", request_id=f"w{r}", candidate_id=ids[clicked[r]], label=1.0))
        old = r - lag
        if old >= 0:
            for j in range(5):
                if j != clicked[old]:
                    rollbacks += guard.label(learning_pb2.PredictionError(
                        tenant="default", request_id=f"w{old}", candidate_id=ids[j], label=0.0))
    assert rollbacks == 0
    assert registry.snapshot("default", "ranker", "v2").sequence == 3
    auc_base = guard.metrics.delta_online_auc.labels("default", "ranker", "base")._value.get()
    auc_deltas = guard.metrics.delta_online_auc.labels("default", "ranker", "deltas")._value.get()
    assert auc_deltas > auc_base


def test_the_guard_compares_within_calls_so_the_deltas_drift_is_no_deficit():
    """Whole calls, labels in order, and deltas that rank each call a little better than their
    base while every score rises from call to call as they learn (on bench/learning.py the
    first deltas on a new base lifted its mean score from 0.02 to 0.08 within 350 requests):
    pooled over the window's calls the rising scores read as ranking worse than the base
    (the base does not move); within calls they are better, and are kept."""
    from loopwise.ranking_metrics import paired_auc

    registry, guard = guarded()
    snap = registry.snapshot("default", "ranker", "v2")
    ids = [f"i{j}" for j in range(10)]
    rng = np.random.default_rng(11)
    calls, rows = 60, []
    rollbacks = 0
    for r in range(calls):
        y = (rng.random(10) < 0.15).astype(np.float32)
        base = (0.05 + 0.03 * y + rng.uniform(0, 0.06, 10)).astype(np.float32)
        served = (base + 0.02 * y + 0.02 * r).astype(np.float32)  # better within the call, drifting up
        rows.append((base, served, y))
        guard.remember(f"u{r}", "default", "ranker", "v2", snap, ids, base, served)
        for j in range(10):
            rollbacks += guard.label(learning_pb2.PredictionError(
                tenant="default", request_id=f"u{r}", candidate_id=ids[j], label=float(y[j])))
    base, served, y = (np.concatenate([row[i] for row in rows[-20:]]) for i in range(3))
    pooled_base, pooled_deltas, pooled_se = paired_auc(y > 0, base, served)
    assert pooled_base - pooled_deltas > 0.01 + 3 * pooled_se  # pooled, they would be rolled back
    assert rollbacks == 0 and registry.snapshot("default", "ranker", "v2").sequence == 3
    auc_base = guard.metrics.delta_online_auc.labels("default", "ranker", "base")._value.get()
    auc_deltas = guard.metrics.delta_online_auc.labels("default", "ranker", "deltas")._value.get()
    assert auc_deltas > auc_base


def test_the_guard_judges_a_call_once_each_candidate_is_labelled_once():
    """A label delivered again counts once; a candidate shown twice in a call gets one label
    (the miner emits one per candidate id), and the call still completes."""
    registry, guard = guarded()
    snap = registry.snapshot("default", "ranker", "v2")
    ids = ["a", "b", "a"]
    guard.remember("d1", "default", "ranker", "v2", snap, ids, np.array([0.3, 0.2, 0.3], dtype=np.float32),
                   np.array([0.4, 0.1, 0.4], dtype=np.float32))

    def label(cid, y):
        return guard.label(learning_pb2.PredictionError(tenant="default", request_id="d1", candidate_id=cid,
                                                        label=y))

    label("a", 1.0)
    label("a", 1.0)  # delivered again
    assert "d1" in guard._served and not guard._windows
    label("b", 0.0)
    assert "d1" not in guard._served
    (window,) = guard._windows.values()
    assert sorted(y for _, _, y, _ in window.rows) == [0.0, 1.0, 1.0] and window.new == 3
