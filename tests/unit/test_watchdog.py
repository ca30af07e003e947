"""The production watchdog (services/trainer/watchdog.py) and the gate against the static
model: the decision on hand-made scores, final labels, the rollback target, the whole
check on a real model store."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from loopwise.features import InputBuilder  # noqa: E402
from loopwise.modelstore import ModelStore, coldstart, contract, pointers  # noqa: E402
from loopwise.trainer.data import build_window_data  # noqa: E402
from loopwise.trainer.metrics import TrainerMetrics  # noqa: E402
from loopwise.trainer.settings import TrainerSettings  # noqa: E402
from loopwise.trainer.train import Production, run  # noqa: E402
from loopwise.trainer.watchdog import Watchdog, choose_target, judge  # noqa: E402
from loopwise.v1 import learning_pb2  # noqa: E402
from tests.unit.test_trainer import make_examples  # noqa: E402

SPEC = coldstart.DEFAULT_SPEC
FAKE = learning_pb2.FEEDBACK_MODE_FAKE_NEGATIVE


def inverted(onnx_bytes: bytes) -> bytes:
    """The cold-start graph with its output layer negated: it ranks backwards."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load_from_string(onnx_bytes)
    w2 = contract.COLDSTART_PARAMS[3]
    for init in m.graph.initializer:
        if init.name == w2:
            init.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(init), w2))
    return m.SerializeToString()


def served_examples(n: int, version: str, *, seed: int = 3, bad: bool = True, prefix: str = "w"
                    ) -> list[learning_pb2.Example]:
    """Fake-negative-mode examples as the miner emits them for ``version``: every shown
    candidate a negative at once, a click's positive duplicate later. Served scores rank by
    popularity backwards (``bad``) or forwards; the truth favours popular items."""
    out = []
    for e in make_examples(n, seed=seed, prefix=prefix):
        pop = e.candidate.numeric["popularity"]
        e.version, e.served_score = version, (1.0 - pop) if bad else pop
        e.feedback_mode, e.click_weight = FAKE, 1.0
        clicked = e.label > 0
        neg = learning_pb2.Example()
        neg.CopyFrom(e)
        neg.example_id, neg.label, neg.label_time_ms = e.example_id + "-fn", 0.0, e.impression_time_ms
        out.append(neg)
        if clicked:
            e.example_id += "-pos"
            out.append(e)
    return out


# -- the decision -------------------------------------------------------------------------
def test_judge_trips_on_a_clear_deficit_only():
    rng = np.random.default_rng(0)
    y = rng.random(4000) < 0.2
    static = y + rng.normal(0, 1.0, 4000)
    call = np.arange(4000) // 20  # 200 calls of 20 candidates
    kw = {"margin": 0.005, "z": 3.0, "min_labels": 2000}
    bad = judge(y, rng.normal(0, 1.0, 4000), static, call, **kw)  # production ranks at chance
    assert bad.below and bad.auc_static > 0.7 and abs(bad.auc_production - 0.5) < 0.05 and bad.se > 0
    # Production = static plus a little noise: a chance difference is no deficit.
    assert not judge(y, static + rng.normal(0, 0.05, 4000), static, call, **kw).below
    # Better than static: never.
    assert not judge(y, y + rng.normal(0, 0.5, 4000), static, call, **kw).below
    # Too few labels, or too few of one class.
    assert not judge(y[:1000], -static[:1000], static[:1000], call[:1000], **kw).below
    few = np.zeros(4000, dtype=bool)
    few[:150] = True
    assert not judge(few, -few.astype(float), few.astype(float), call, **kw).below
    # The margin: a deficit of two points on a precise comparison trips only a margin below it.
    y2 = np.arange(20000) % 5 == 0
    s = np.where(y2, 1.0, 0.0) + rng.normal(0, 1.2, 20000)
    worse = s + rng.normal(0, 0.25, 20000)
    call2 = np.arange(20000) // 20
    v = judge(y2, worse, s, call2, margin=0.0, z=3.0, min_labels=2000)
    assert 0.0 < v.auc_static - v.auc_production
    assert not judge(y2, worse, s, call2, margin=0.5, z=3.0, min_labels=2000).below


def test_judge_compares_within_calls_so_a_drift_of_the_scores_is_no_deficit():
    """Production ranks every call as the static model does plus a little, while its scores
    rise over the window (deltas learning, a new version's calibration): pooled over the
    window that drift alone put it far below static (bench/learning.py, 30,000 requests:
    0.68 against 0.76 on the rows of a version that ranked its calls 0.770 against 0.776)."""
    from loopwise.ranking_metrics import paired_auc

    rng = np.random.default_rng(4)
    n, k = 8000, 20
    call = np.arange(n) // k
    y = rng.random(n) < 0.05
    static = y * 0.8 + rng.normal(0, 1.0, n)
    production = static + rng.normal(0, 0.3, n) + call / call.max() * 6.0  # the same ranking, drifting up
    pooled_static, pooled_production, pooled_se = paired_auc(y, static, production)
    assert pooled_static - pooled_production > 0.005 + 3 * pooled_se  # pooled, it would be rolled back
    v = judge(y, production, static, call, margin=0.005, z=3.0, min_labels=2000)
    assert not v.below and abs(v.auc_production - v.auc_static) < 0.03
    # A real deficit within calls still trips it, drift or not.
    worse = rng.normal(0, 1.0, n) + call / call.max() * 6.0
    assert judge(y, worse, static, call, margin=0.005, z=3.0, min_labels=2000).below


def test_rollback_target_is_the_newest_earlier_version_not_below_static():
    versions = ["v1", "v2", "v3", "v4", "v5", "v6"]
    aucs = {"v5": 0.60, "v4": 0.69, "v3": 0.71, "v2": 0.75}
    assert choose_target("v6", versions, "v1", 0.70, aucs.get, 3) == ("v3", {"v5": 0.6, "v4": 0.69, "v3": 0.71})
    # Only `candidates` are checked (v2 is not), then the static version.
    assert choose_target("v6", versions, "v1", 0.70, aucs.get, 2)[0] == "v1"
    # An unreadable version (NaN) is skipped; later versions than the current one never count.
    assert choose_target("v4", versions, "v1", 0.70, {"v3": float("nan"), "v2": 0.8}.get, 3)[0] == "v2"
    # A version rolled back before is no target, whatever its AUC here.
    assert choose_target("v6", versions, "v1", 0.70, aucs.get, 3, frozenset({"v3"}))[0] == "v2"
    # No cold-start version in the store and nothing fit: nothing to roll back to.
    assert choose_target("v3", ["v2", "v3"], "", 0.7, {"v2": 0.5}.get, 3)[0] == ""


# -- the watchdog on a real store --------------------------------------------------------------
class FakeTrainer:
    def __init__(self, store: ModelStore, **overrides) -> None:
        self.settings = TrainerSettings(**{"attribution_window_ms": 2000, "trainer_watchdog_min_labels": 500,
                                           "trainer_watchdog_window": 5000, **overrides})
        self.store, self.redis, self.producer = store, None, None
        self.metrics = TrainerMetrics()


def store_with(tmp_path, *versions: tuple[bytes, str]) -> ModelStore:
    store = ModelStore(str(tmp_path / "models"))
    for artifact, source in [(coldstart.build_onnx(SPEC), "coldstart"), *versions]:
        store.publish("default", "ranker", artifact, feature_spec=SPEC, hidden_dim=coldstart.HIDDEN_DIM,
                      source=source)
    return store


def feed(dog: Watchdog, examples) -> list:
    for e in examples:
        dog.add("default", "ranker", e, e.SerializeToString())
    return dog._final(dog._streams[("default", "ranker")])


def sample(metrics: TrainerMetrics, name: str, **labels) -> float:
    return metrics.registry.get_sample_value(name, {"tenant": "default", "model": "ranker", **labels}) or 0.0


def test_rows_wait_for_their_final_label(tmp_path):
    dog = Watchdog(FakeTrainer(store_with(tmp_path)))
    exs = served_examples(100, "v1", bad=False)  # 20 requests, one a second
    rows = feed(dog, exs)
    newest = max(e.impression_time_ms for e in exs)
    assert rows and all(r.impression_ms <= newest - 2000 for r in rows)
    assert len(rows) == 100 - 5 * 2  # the last two requests' labels are not final yet
    clicks = {(e.request_id, e.candidate_id) for e in exs if e.label > 0}
    # One row per shown candidate; a positive duplicate turned its row's label to 1.
    assert sum(r.label for r in rows) == sum(1 for e in exs if e.label > 0 and
                                             e.impression_time_ms <= newest - 2000) and clicks
    # A positive duplicate with no waiting row (its window closed) makes none.
    late = learning_pb2.Example()
    late.CopyFrom(exs[0])
    late.label, late.version = 1.0, "v1"
    assert feed(dog, [late]) == []


def test_a_production_below_static_is_rolled_back_to_an_earlier_fit_version(tmp_path):
    cold = coldstart.build_onnx(SPEC)
    # v2: as good as static (the cold-start graph again); v3: backwards, serving.
    store = store_with(tmp_path, (cold, "trainer"), (inverted(cold), "trainer"))
    trainer = FakeTrainer(store)
    dog = Watchdog(trainer)
    assert pointers.serving_version(store, None, "default", "ranker") == "v3"
    rows = feed(dog, served_examples(3000, "v3"))
    moved = dog.check("default", "ranker", rows)
    assert moved is not None and moved[:2] == ("v3", "v2")
    assert pointers.serving_version(store, None, "default", "ranker") == "v2"
    assert sample(trainer.metrics, "loopwise_trainer_production_rollbacks_total", reason="below_static") == 1
    assert sample(trainer.metrics, "loopwise_trainer_production_online_auc", scorer="static") > \
        sample(trainer.metrics, "loopwise_trainer_production_online_auc", scorer="production") + 0.05
    assert pointers.history(store, None, "default", "ranker")[0]["action"] == "watchdog_rollback"


def test_rolled_back_to_the_cold_start_version_then_cooldown(tmp_path):
    bad = inverted(coldstart.build_onnx(SPEC))
    store = store_with(tmp_path, (bad, "trainer"), (bad, "trainer"))
    trainer = FakeTrainer(store)
    dog = Watchdog(trainer)
    moved = dog.check("default", "ranker", feed(dog, served_examples(3000, "v3")))
    assert moved is not None and moved[:2] == ("v3", "v1") and "below the static model" in moved[2]
    # Someone promotes v3 again at once: the cooldown holds the next rollback back ...
    pointers.promote(store, None, "default", "ranker", "v3")
    assert dog.check("default", "ranker", feed(dog, served_examples(3000, "v3", seed=4, prefix="x"))) is None
    assert pointers.serving_version(store, None, "default", "ranker") == "v3"
    assert sample(trainer.metrics, "loopwise_trainer_production_rollbacks_total", reason="below_static") == 1


def test_a_production_as_good_as_static_stays(tmp_path):
    store = store_with(tmp_path, (coldstart.build_onnx(SPEC), "trainer"))
    trainer = FakeTrainer(store)
    dog = Watchdog(trainer)
    assert dog.check("default", "ranker", feed(dog, served_examples(3000, "v2", bad=False))) is None
    assert pointers.serving_version(store, None, "default", "ranker") == "v2"
    assert sample(trainer.metrics, "loopwise_trainer_production_online_labels") > 2000


# -- the gate against the static model --------------------------------------------------------
def test_the_gate_refuses_a_candidate_below_the_static_model():
    exs = make_examples(4000, seed=0)
    data = build_window_data(InputBuilder(SPEC), exs)
    static = Production("v1", coldstart.build_onnx(SPEC))
    untrained = run(data, None, SPEC, TrainerSettings(trainer_epochs=0, trainer_min_holdout=100,
                                                      attribution_window_ms=0), static=static)
    assert not untrained.publish and "below the static model" in untrained.reason
    trained = run(data, None, SPEC, TrainerSettings(trainer_epochs=2, trainer_batch_size=512, trainer_lr=0.01,
                                                    trainer_min_holdout=100, attribution_window_ms=0),
                  static=static)
    assert trained.publish, trained.reason
    assert trained.figures()["candidate_auc"] > trained.figures()["static_auc"]


def test_a_version_rolled_back_before_is_no_target_again(tmp_path):
    cold = coldstart.build_onnx(SPEC)
    # v2 and v3 rank like the static model offline; v3 was rolled back before; v4 serves, backwards.
    store = store_with(tmp_path, (cold, "trainer"), (cold, "trainer"), (inverted(cold), "trainer"))
    pointers.move(store, None, "default", "ranker", "v3", "published", serving="v4")
    pointers.move(store, None, "default", "ranker", "v1", "watchdog_rollback")
    pointers.move(store, None, "default", "ranker", "v4", "published")
    dog = Watchdog(FakeTrainer(store))
    moved = dog.check("default", "ranker", feed(dog, served_examples(3000, "v4")))
    assert moved is not None and moved[:2] == ("v4", "v2")
