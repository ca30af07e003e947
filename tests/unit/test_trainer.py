"""The trainer's pure parts: inputs equal serving's, losses, gate, export, replay buffer."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from loopwise.client.build import candidates  # noqa: E402
from loopwise.features import InputBuilder  # noqa: E402
from loopwise.modelstore import coldstart  # noqa: E402
from loopwise.trainer import evaluation as ev  # noqa: E402
from loopwise.trainer.data import build_window_data  # noqa: E402
from loopwise.trainer.export import check_contract, export_onnx, parity  # noqa: E402
from loopwise.trainer.model import Ranker, bradley_terry_loss, ips_loss  # noqa: E402
from loopwise.trainer.replay_buffer import ReplayBuffer  # noqa: E402
from loopwise.trainer.settings import TrainerSettings  # noqa: E402
from loopwise.trainer.train import Production, run, split_holdout  # noqa: E402
from loopwise.v1 import features_pb2, learning_pb2  # noqa: E402

SPEC = coldstart.DEFAULT_SPEC


def make_examples(n: int, seed: int = 0, *, n_users: int = 300, n_items: int = 200, t0_ms: int = 1_700_000_000_000,
                  tenant: str = "default", model: str = "ranker", prefix: str = "ex",
                  per_request: int = 5) -> list[learning_pb2.Example]:
    """Examples with the cold-start spec's features and a learnable ground truth:
    P(click) = sigmoid(user bias + item bias + 2 * popularity - 2.5)."""
    rng = np.random.default_rng(seed)
    ub = rng.normal(0, 1.0, n_users)
    ib = rng.normal(0, 1.0, n_items)
    pop = rng.uniform(0, 1, n_items)
    out = []
    for r in range(math.ceil(n / per_request)):
        u = int(rng.integers(n_users))
        items = rng.choice(n_items, size=per_request, replace=False)
        user = features_pb2.Features(categorical={"gender": "MF"[u % 2], "age_group": str(u % 7),
                                                  "occupation": str(u % 21)},
                                     numeric={"activity": float(u % 10) / 10})
        context = features_pb2.Features(categorical={"hour": str(r % 24)})
        for pos, i in enumerate(items, 1):
            if len(out) >= n:
                break
            p = 1 / (1 + math.exp(-(ub[u] + ib[i] + 2 * pop[i] - 2.5)))
            label = float(rng.random() < p)
            out.append(learning_pb2.Example(
                example_id=f"{prefix}-{r}-{i}", tenant=tenant, user_id=f"u{u}", request_id=f"{prefix}-r{r}",
                candidate_id=f"m{i}", label=label, weight=1.0, position=pos, model=model,
                impression_time_ms=t0_ms + r * 1000, label_time_ms=t0_ms + r * 1000 + 500,
                user=user, context=context,
                candidate=features_pb2.Features(categorical={"genre": f"g{i % 12}", "decade": f"{1950 + 10 * (i % 7)}"},
                                                numeric={"popularity": float(pop[i])})))
    return out


def make_pairs(examples: list[learning_pb2.Example]) -> list[learning_pb2.PreferencePair]:
    """Clicked over skipped-above, from examples of one request."""
    by_request: dict[str, list[learning_pb2.Example]] = {}
    for e in examples:
        by_request.setdefault(e.request_id, []).append(e)
    out = []
    for rid, exs in by_request.items():
        for e in exs:
            if e.label > 0:
                for o in exs:
                    if o.position < e.position and o.label == 0:
                        out.append(learning_pb2.PreferencePair(
                            pair_id=f"{rid}-{e.candidate_id}-{o.candidate_id}", tenant=e.tenant, user_id=e.user_id,
                            request_id=rid, preferred_id=e.candidate_id, other_id=o.candidate_id,
                            strength=0.5, time_ms=e.label_time_ms, user=e.user, context=e.context,
                            preferred=e.candidate, other=o.candidate, model=e.model))
    return out


# -- hash parity: the trainer's inputs are what serving builds ------------------------------
def test_trainer_inputs_equal_serving_inputs():
    exs = make_examples(60, seed=3)
    # Edge cases: a missing candidate column, a missing user feature, an empty context.
    del exs[1].candidate.categorical["genre"]
    del exs[2].user.categorical["gender"]
    exs[7].context.Clear()
    builder = InputBuilder(SPEC)
    data = build_window_data(builder, [e.SerializeToString() for e in exs])
    assert len(data) == len(exs)
    for i, e in enumerate(exs):
        # What Rank builds for this candidate, from a request as a client sends it.
        cols = {**{k: [v] for k, v in e.candidate.categorical.items()},
                **{k: [v] for k, v in e.candidate.numeric.items()}}
        sparse, dense = builder.build(e.user_id, e.user, e.context, candidates([e.candidate_id], cols))
        np.testing.assert_array_equal(data.sparse[i], sparse[0])
        np.testing.assert_array_equal(data.dense[i], dense[0])
    # A whole request at once gives the same rows as well.
    req = [e for e in exs if e.request_id == exs[15].request_id]
    cols = {"genre": [e.candidate.categorical["genre"] for e in req],
            "decade": [e.candidate.categorical["decade"] for e in req],
            "popularity": [e.candidate.numeric["popularity"] for e in req]}
    sparse, dense = builder.build(req[0].user_id, req[0].user, req[0].context,
                                  candidates([e.candidate_id for e in req], cols))
    rows = [i for i, e in enumerate(exs) if e.request_id == exs[15].request_id]
    np.testing.assert_array_equal(data.sparse[rows], sparse)
    np.testing.assert_array_equal(data.dense[rows], dense)
    assert (data.sparse > 0).any() and data.sparse.max() < SPEC.buckets


def test_correction_replaces_the_negative():
    exs = make_examples(5, seed=1)
    neg = exs[0]
    fix = learning_pb2.Example()
    fix.CopyFrom(neg)
    fix.example_id, fix.label, fix.correction = neg.example_id + "-c", 1.0, True
    data = build_window_data(InputBuilder(SPEC), [e.SerializeToString() for e in exs + [fix]])
    assert len(data) == 5 and data.label[-1] == 1.0


# -- losses against hand-computed values ---------------------------------------------------
def test_ips_loss_matches_hand_computed_values():
    z = torch.tensor([0.0, 2.0, -1.0])
    y = torch.tensor([1.0, 0.0, 1.0])
    w = torch.tensor([4.0, 1.0, 2.0])
    p = 1 / (1 + np.exp(-np.array([0.0, 2.0, -1.0])))
    # y*w*(-log p) + (1 - y*w)*(-log(1-p))
    want = np.mean([4 * -np.log(p[0]) + (1 - 4) * -np.log(1 - p[0]),
                    -np.log(1 - p[1]),
                    2 * -np.log(p[2]) + (1 - 2) * -np.log(1 - p[2])])
    assert float(ips_loss(z, y, w)) == pytest.approx(want, rel=1e-6)
    # With unit weights it is plain BCE.
    bce = torch.nn.functional.binary_cross_entropy_with_logits(z, y)
    assert float(ips_loss(z, y, torch.ones(3))) == pytest.approx(float(bce), rel=1e-6)
    # Its gradient in the logit is (p - y*w) / n.
    zg = z.clone().requires_grad_(True)
    ips_loss(zg, y, w).backward()
    np.testing.assert_allclose(zg.grad.numpy(), (p - y.numpy() * w.numpy()) / 3, rtol=1e-5)


def test_bradley_terry_matches_hand_computed_values():
    zp = torch.tensor([1.0, 0.0])
    zo = torch.tensor([0.0, 3.0])
    s = torch.tensor([0.5, 1.0])
    want = np.mean([0.5 * -np.log(1 / (1 + np.exp(-1.0))), 1.0 * -np.log(1 / (1 + np.exp(3.0)))])
    assert float(bradley_terry_loss(zp, zo, s)) == pytest.approx(want, rel=1e-6)


# -- evaluation and the gate -----------------------------------------------------------------
def test_metrics_hand_computed():
    y = np.array([0, 1, 0, 1, 1, 0.0])
    p = np.array([0.2, 0.9, 0.6, 0.4, 0.7, 0.1])
    u = np.array([1, 1, 1, 2, 2, 2])
    # Pairs (pos, neg): 9; misordered: (0.4 vs 0.6) -> 8/9.
    assert ev.auc(y, p) == pytest.approx(8 / 9)
    # user 1: pos .9 vs negs .2 .6 -> 1; user 2: pos .4 .7 vs neg .1 -> 1.
    assert ev.gauc(y, p, u) == pytest.approx(1.0)
    assert ev.logloss(y, p) == pytest.approx(-np.mean(np.log([0.8, 0.9, 0.4, 0.4, 0.7, 0.9])))
    # Two bins: [0, .5) holds .2 .4 .1 (mean .233, labels 1/3); [.5, 1] holds .9 .6 .7 (mean .733, labels 2/3).
    assert ev.ece(y, p, bins=2) == pytest.approx(0.5 * abs(0.7 / 3 - 1 / 3) + 0.5 * abs(2.2 / 3 - 2 / 3))
    assert ev.auc(np.ones(3), np.ones(3)) != ev.auc(np.ones(3), np.ones(3))  # NaN with one class


def test_gate_decisions():
    tol = ev.Tolerances(auc=0.01, gauc=0.01, logloss=0.01, ece=0.01)
    prod = {"auc": 0.75, "gauc": 0.70, "logloss": 0.40, "ece": 0.02}
    assert ev.decide({"auc": 0.745, "gauc": 0.70, "logloss": 0.405, "ece": 0.025}, prod, tol).publish
    worse = ev.decide({"auc": 0.70, "gauc": 0.70, "logloss": 0.40, "ece": 0.02}, prod, tol)
    assert not worse.publish and "auc 0.7000 < production 0.7500" in worse.reason
    assert not ev.decide({**prod, "logloss": 0.5}, prod, tol).publish
    assert not ev.decide({**prod, "ece": 0.05}, prod, tol).publish
    assert ev.decide({**prod, "gauc": float("nan")}, prod, tol).publish  # not comparable: not held against it
    assert ev.decide(prod, None, tol).publish


def test_gate_refuses_a_candidate_whose_metrics_are_undefined():
    """Issue 13 item 11: the gate published versions whose AUC was undefined (NaN)."""
    tol = ev.Tolerances()
    prod = {"auc": 0.75, "gauc": 0.70, "logloss": 0.40, "ece": 0.02}
    one_class = ev.evaluate(np.zeros(50), np.full(50, 0.3), np.arange(50))
    assert np.isnan(one_class["auc"])
    for production in (prod, None):
        refused = ev.decide(one_class, production, tol)
        assert not refused.publish and "undefined candidate metric(s): auc" in refused.reason
    assert not ev.decide({**prod, "logloss": float("inf")}, None, tol).publish
    assert not ev.decide({"gauc": 0.7}, None, tol).publish  # a figure missing is undefined too


def test_publish_refuses_non_finite_weights(tmp_path):
    from loopwise.modelstore import ModelStore, StoreError
    from loopwise.trainer import publish as pub

    from .test_modelstore import poisoned

    out = run(window_data(3000), None, SPEC, FAST)
    assert out.publish, out.reason
    out.onnx = poisoned(coldstart.build_onnx(SPEC), nan_from=10)
    store = ModelStore(str(tmp_path / "models"))
    with pytest.raises(StoreError, match="non-finite"):
        pub.publish(store, None, "default", "ranker", out, None)
    assert store.versions("default", "ranker") == []


def window_data(n=6000, seed=0):
    exs = make_examples(n, seed=seed)
    return build_window_data(InputBuilder(SPEC), exs, make_pairs(exs))


# attribution_window_ms=0: the synthetic examples are complete (the settle filter has its own test).
FAST = TrainerSettings(trainer_epochs=2, trainer_batch_size=512, trainer_lr=0.01, trainer_min_holdout=100,
                       trainer_tolerance_ece=0.05,  # ECE on a 600-row holdout is noisy
                       attribution_window_ms=0)


def test_a_trained_model_beats_the_cold_start_and_a_worse_one_is_refused():
    data = window_data()
    cold = Production("v1", coldstart.build_onnx(SPEC))
    out = run(data, cold, SPEC, FAST)
    assert out.candidate.init == "prior" and out.publish, out.reason
    assert out.evaluation.candidate["auc"] > out.evaluation.production["auc"] + 0.05
    assert out.parity_max_abs_diff <= 1e-4
    # The trained model as production, a candidate that learned nothing (0 epochs, fresh) is refused.
    prod = Production("v2", out.onnx)
    untrained = run(data, prod, SPEC, TrainerSettings(trainer_epochs=0, trainer_min_holdout=100,
                                                      attribution_window_ms=0))
    assert not untrained.publish and untrained.candidate.init == "fresh"
    assert "worse than production" in untrained.reason and not untrained.onnx


def test_holdout_is_the_most_recent_slice():
    data = window_data(1000)
    train, hold = split_holdout(data, 0.2)
    assert len(hold) == 200 and len(train) == 800
    assert train.time_ms.max() <= hold.time_ms.min()
    assert (train.pair_time_ms < hold.time_ms.min()).all()
    # Production trained up to some time: only later examples are held out (at least min_holdout).
    cut = int(np.sort(data.time_ms)[-50])
    _, hold = split_holdout(data, 0.2, 0, unseen_after_ms=cut)
    assert len(hold) == int((data.time_ms > cut).sum()) and hold.time_ms.min() > cut
    _, hold = split_holdout(data, 0.2, 120, unseen_after_ms=cut)
    assert len(hold) == 120


# -- ONNX export ---------------------------------------------------------------------------
def test_onnx_export_parity_and_contract():
    model = Ranker(SPEC.buckets, len(SPEC.sparse), len(SPEC.dense), 8, 64, layers=(32,))
    data = window_data(300)
    onnx_bytes = export_onnx(model, SPEC)
    assert parity(model, onnx_bytes, data.sparse, data.dense) <= 1e-5
    check_contract(onnx_bytes, SPEC, 64)
    from loopwise.trainer.export import ExportError

    with pytest.raises(ExportError, match="warm-up shapes"):
        check_contract(onnx_bytes, SPEC, 32)


# -- the replay buffer -----------------------------------------------------------------------
def test_replay_buffer_is_bounded_deduped_and_reloads(tmp_path):
    w = ReplayBuffer(tmp_path, max_rows=100, segment_rows=30)
    assert all(w.add("t", "m", "examples", f"e{i}", i, f"p{i}".encode()) for i in range(50))
    assert not w.add("t", "m", "examples", "e3", 3, b"again")
    w.flush()
    assert w.rows("t", "m", "examples") == 50
    for i in range(50, 140):
        w.add("t", "m", "examples", f"e{i}", i, f"p{i}".encode())
        if i % 7 == 0:
            w.flush()  # small flushes top up the tail segment
    w.flush()
    rows = w.rows("t", "m", "examples")
    assert 100 - 30 < rows <= 100
    files = sorted((tmp_path / "t" / "m" / "examples").glob("seg-*.npz"))
    assert len(files) == -(-rows // 30)
    got = w.read("t", "m", "examples")
    assert got.ids.tolist() == [f"e{i}" for i in range(140 - rows, 140)]
    assert got.payloads[-1] == b"p139" and got.time_ms[-1] == 139
    # Restart: the same rows, the same dedupe ids; an old, dropped id is new again.
    again = ReplayBuffer(tmp_path, max_rows=100, segment_rows=30).open()
    assert again.rows("t", "m", "examples") == rows
    assert not again.add("t", "m", "examples", "e139", 0, b"")
    assert again.add("t", "m", "examples", "e0", 0, b"p0")
    assert again.keys() == [("t", "m")]
    # Unflushed records are not durable; a crashed write's temp file is ignored.
    (tmp_path / "t" / "m" / "examples" / "seg-000000000099.npz.tmp").write_bytes(b"junk")
    third = ReplayBuffer(tmp_path, max_rows=100, segment_rows=30).open()
    assert third.rows("t", "m", "examples") == rows


# -- publishing and warm starts (a local store, no Redis) ---------------------------------
def test_publish_stores_weights_and_the_next_run_warm_starts(tmp_path):
    from loopwise.modelstore import ModelStore, pointers
    from loopwise.trainer import publish as pub

    store = ModelStore(str(tmp_path / "models"))
    store.publish("default", "ranker", coldstart.build_onnx(SPEC), feature_spec=SPEC,
                  hidden_dim=coldstart.HIDDEN_DIM, source="coldstart")
    cold = pub.load_production(store, "default", "ranker", pointers.serving_version(store, None, "default", "ranker"))
    assert cold.version == "v1" and cold.weights is None
    data = window_data(3000)
    out = run(data, cold, SPEC, FAST)
    assert out.publish, out.reason
    manifest = pub.publish(store, None, "default", "ranker", out, cold)
    assert manifest.version == "v2" and manifest.parent_version == "v1" and manifest.source == "trainer"
    assert manifest.metrics["candidate_auc"] == pytest.approx(out.evaluation.candidate["auc"])
    # The published artifact loads the way inference loads it (the contract replicated in the trainer).
    onnx_bytes, _ = store.load("default", "ranker", "v2")
    check_contract(onnx_bytes, SPEC, coldstart.HIDDEN_DIM)
    prod = pub.load_production(store, "default", "ranker", "v2")
    assert prod.weights is not None
    # v2 learned its holdout after the gate (fold_recent): it has learned the whole window.
    assert out.candidate.folded_rows > 0 and manifest.metrics["train_until_ms"] == data.time_ms.max()
    warm = run(data, prod, SPEC, TrainerSettings(**{**FAST.__dict__, "trainer_epochs": 0, "trainer_incremental": False,
                                                    "trainer_tolerance_auc": 1e-9}))
    # Zero epochs from the parent's weights: the same model, so it scores exactly like production.
    assert warm.candidate.init == "warm"
    assert warm.evaluation.candidate["auc"] == pytest.approx(warm.evaluation.production["auc"], abs=1e-6)
    # Weights that do not match the manifest's sha256 are not used.
    (tmp_path / "models" / "default" / "ranker" / "v2" / "weights.pt").write_bytes(b"tampered")
    assert pub.load_production(store, "default", "ranker", "v2").weights is None


def test_runs_are_due_every_n_examples_or_every_t_seconds(tmp_path):
    from loopwise.trainer.app import Trainer

    t = Trainer(TrainerSettings(model_store=str(tmp_path / "m"), data_dir=str(tmp_path / "d"),
                                trainer_every_n=10, trainer_interval_s=60, trainer_min_examples=5))
    for i in range(4):
        t.window.add("default", "ranker", "examples", f"e{i}", i, b"")
    t._new[("default", "ranker")] = 4
    now = t._started
    assert not t.due("default", "ranker", now + 120)  # below the minimum window
    for i in range(4, 12):
        t.window.add("default", "ranker", "examples", f"e{i}", i, b"")
    t._new[("default", "ranker")] = 9
    assert not t.due("default", "ranker", now + 1)
    assert t.due("default", "ranker", now + 61)  # T passed with new examples
    t._new[("default", "ranker")] = 10
    assert t.due("default", "ranker", now + 1)  # N new examples
    t._new[("default", "ranker")] = 0
    assert not t.due("default", "ranker", now + 600)  # nothing new, no run


def test_part_cache_builds_each_segment_once_and_matches_a_full_build(tmp_path):
    from loopwise.trainer.data import PartCache

    exs = make_examples(250, seed=2)
    fix = learning_pb2.Example()
    fix.CopyFrom(exs[3])
    fix.example_id, fix.label, fix.correction = exs[3].example_id + "-c", 1.0, True
    prs = make_pairs(exs)
    exs.append(fix)  # a correction in a later segment than its negative
    w = ReplayBuffer(tmp_path, max_rows=1000, segment_rows=100)
    for e in exs[:150]:
        w.add("default", "ranker", "examples", e.example_id, e.impression_time_ms, e.SerializeToString())
    for p in prs:
        w.add("default", "ranker", "preferences", p.pair_id, p.time_ms, p.SerializeToString())
    w.flush()
    for e in exs[150:]:  # buffered, not yet flushed
        w.add("default", "ranker", "examples", e.example_id, e.impression_time_ms, e.SerializeToString())
    builder = InputBuilder(SPEC)
    cache = PartCache()
    got = cache.window_data(w, "default", "ranker", builder)
    want = build_window_data(builder, exs, prs)
    assert len(got) == len(want) == 250 and got.n_pairs == want.n_pairs == len(prs)
    for name in ("sparse", "dense", "label", "weight", "time_ms", "user", "pref_sparse", "other_dense", "strength"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
    assert len(cache) == 3  # example segments of 100 and 50 rows, one pair segment
    first = cache._parts[("default", "ranker", "examples", next(iter(cache._parts))[3], ("seg-000000000000.npz", 100))]
    w.flush()  # the 50-row tail is topped up to 100 (a new entry), 1 row goes to a third segment
    again = cache.window_data(w, "default", "ranker", builder)
    np.testing.assert_array_equal(again.sparse, want.sparse)
    np.testing.assert_array_equal(again.label, want.label)
    assert len(cache) == 4
    assert cache._parts[("default", "ranker", "examples", next(iter(cache._parts))[3],
                         ("seg-000000000000.npz", 100))] is first  # reused, not rebuilt


# -- settle filter, incremental warm starts, first-order and cross terms -------------------------
def test_settle_filter_holds_back_the_attribution_window():
    from loopwise.trainer.train import settle, train_once

    data = window_data(1000)  # 200 requests, one a second
    newest = int(data.time_ms.max())
    settled = settle(data, 30_000)
    assert len(settled) == int((data.time_ms <= newest - 30_000).sum()) < len(data)
    assert settled.time_ms.max() <= newest - 30_000 and (settled.pair_time_ms <= newest - 30_000).all()
    assert len(settle(data, 0)) == len(data)
    # run() neither trains nor holds out on unsettled examples.
    s = TrainerSettings(**{**FAST.__dict__, "attribution_window_ms": 30_000, "trainer_epochs": 1})
    cand = train_once(data, None, SPEC, s)
    assert cand.holdout.time_ms.max() <= newest - 30_000
    assert cand.train_rows + len(cand.holdout) == len(settled)


def test_incremental_warm_start_learns_only_what_production_has_not_seen():
    from loopwise.trainer.model import from_state_bytes, state_bytes

    data = window_data(3000)
    cold = Production("v1", coldstart.build_onnx(SPEC))
    first = run(data, cold, SPEC, FAST)
    assert first.candidate.init == "prior" and first.publish, first.reason
    until = first.candidate.train_until_ms
    weights = state_bytes(first.candidate.model)
    assert from_state_bytes(weights).train_until_ms == until  # saved with the weights
    more = window_data(6000)  # same first 3000 examples, then 3000 newer ones
    prod = Production("v2", first.onnx, weights=weights)  # no manifest: the weights' time counts
    second = run(more, prod, SPEC, FAST)
    assert second.candidate.init == "warm"
    new = int((more.time_ms > until).sum())
    assert second.candidate.train_rows + len(second.candidate.holdout) == new
    assert second.candidate.holdout.time_ms.min() > until
    # Not incremental: the whole window again.
    full = run(more, prod, SPEC, TrainerSettings(**{**FAST.__dict__, "trainer_incremental": False}))
    assert full.candidate.train_rows + len(full.candidate.holdout) == len(more)


def test_first_order_and_cross_terms_export_with_parity():
    from loopwise.trainer.train import crosses_of

    crosses = crosses_of(SPEC, TrainerSettings())
    assert crosses == [[list(SPEC.sparse).index("request.user_id"), list(SPEC.sparse).index("candidate.id")]]
    with pytest.raises(ValueError, match="no sparse field"):
        crosses_of(SPEC, TrainerSettings(trainer_crosses=("request.user_id*nope",)))
    model = Ranker(SPEC.buckets, len(SPEC.sparse), len(SPEC.dense), 8, 64, fm_dim=4, linear=True,
                   crosses=crosses, cross_buckets=1 << 12)
    with torch.no_grad():
        for table in (model.bias, model.cross):
            table.weight.normal_(0, 0.5)
            table.weight[0].zero_()
    data = window_data(300)
    ids = model.cross_ids(torch.from_numpy(data.sparse))
    assert ids.shape == (300, 1) and int(ids.min()) >= 1 and int(ids.max()) < 1 << 12
    zero = torch.from_numpy(data.sparse[:2].copy())
    zero[:, crosses[0][0]] = 0
    assert (model.cross_ids(zero) == 0).all()  # a missing id has no pair weight
    onnx_bytes = export_onnx(model, SPEC)
    assert parity(model, onnx_bytes, data.sparse, data.dense) <= 1e-5
    check_contract(onnx_bytes, SPEC, 64)


def test_adagrad_step_hand_computed_and_persistent():
    from loopwise.trainer.model import adagrad_step

    w = torch.nn.Parameter(torch.zeros(4, 1))
    acc = torch.zeros(4)
    w.grad = torch.sparse_coo_tensor([[1, 3, 1]], torch.tensor([[1.0], [2.0], [1.0]]), (4, 1), check_invariants=True)
    adagrad_step(w, acc, 0.5)
    # Row 1: g = 2 (duplicates summed), acc = 4, step 0.5 * 2 / 2; row 3: g = 2, acc = 4.
    assert acc.tolist() == [0, 4, 0, 4] and w.detach().reshape(-1).tolist() == [0, -0.5, 0, -0.5]
    w.grad = torch.sparse_coo_tensor([[1]], torch.tensor([[3.0]]), (4, 1), check_invariants=True)
    adagrad_step(w, acc, 0.5)  # the accumulator carries over: acc = 13
    assert acc[1] == 13 and w[1, 0].item() == pytest.approx(-0.5 - 0.5 * 3 / math.sqrt(13))


def test_warm_start_across_an_architecture_change_keeps_what_fits():
    from loopwise.trainer.model import state_bytes
    from loopwise.trainer.train import initial_model

    old = Ranker(SPEC.buckets, len(SPEC.sparse), len(SPEC.dense), 16, 64, fm_dim=16)  # before linear/crosses
    with torch.no_grad():
        old.embedding.weight.normal_(0, 1)
    prod = Production("v7", b"", weights=state_bytes(old))
    model, init = initial_model(SPEC, prod, TrainerSettings())
    assert init == "partial" and model.cross is not None and model.bias is not None
    assert torch.equal(model.embedding.weight, old.embedding.weight)
    assert torch.equal(model.fm.weight, old.fm.weight)
    same, init = initial_model(SPEC, Production("v8", b"", weights=state_bytes(model)), TrainerSettings())
    assert init == "warm" and torch.equal(same.cross_acc, model.cross_acc)


def test_gate_tolerance_grows_with_the_standard_error():
    tol = ev.Tolerances(auc=0.002, gauc=0.005, logloss=0.005, ece=0.02)
    prod = {"auc": 0.75, "gauc": 0.70, "logloss": 0.40, "ece": 0.02}
    cand = {**prod, "auc": 0.73}
    assert not ev.decide(cand, prod, tol).publish
    assert ev.decide(cand, prod, tol, {"auc": 0.015}, z=2.0).publish  # 0.02 < 2 * 0.015: chance
    assert not ev.decide(cand, prod, tol, {"auc": 0.015}, z=1.0).publish
    assert not ev.decide(cand, prod, tol, {"auc": 0.015}, z=0.0).publish
    rng = np.random.default_rng(0)
    y = (rng.random(2000) < 0.3).astype(float)
    p = np.clip(0.3 + 0.2 * (y - 0.3) + rng.normal(0, 0.1, 2000), 0.01, 0.99)
    figs = ev.evaluate(y, p, np.zeros(2000))
    se = ev.difference_se(y, figs, p, figs, p)
    assert se["logloss"] == 0 and 0 < se["auc"] < 0.05 and se["gauc"] == se["auc"]


def test_first_step_moves_first_order_and_cross_weights_by_their_rates():
    from loopwise.trainer.train import train_once

    s = TrainerSettings(trainer_batch_size=100_000, trainer_holdout_fraction=0.0, attribution_window_ms=0,
                        trainer_linear_lr=0.3, trainer_cross_lr=3.0)
    cand = train_once(window_data(300), None, SPEC, s)
    assert cand.epochs == 1 and cand.train_rows == 300
    # One Adagrad step from zero accumulators: every touched weight moves by exactly its rate.
    moved = cand.model.cross.weight.detach().abs().reshape(-1)
    assert moved.max().item() == pytest.approx(3.0) and set(moved[moved > 0].round(decimals=4).tolist()) == {3.0}
    assert cand.model.bias.weight.detach().abs().max().item() == pytest.approx(0.3)
    assert cand.model.cross_acc.max().item() > 0  # the accumulator is kept with the model


def test_a_published_candidate_learns_its_holdout_on_its_sparse_tables_after_the_gate():
    """The gate judges the candidate on its holdout first; then (trainer_fold_holdout) its
    sparse tables learn those rows, in time order, as the deltas would once it serves: the
    dense network is untouched, the holdout's loss falls, and train_until_ms moves to its
    newest row so that the deltas do not learn them again."""
    import dataclasses

    import torch

    from loopwise.trainer.gate import evaluate
    from loopwise.trainer.model import ips_loss
    from loopwise.trainer.train import after as newer_than
    from loopwise.trainer.train import fold_recent, train_once

    data = window_data(3000)
    cold = Production("v1", coldstart.build_onnx(SPEC))
    cand = train_once(data, cold, SPEC, FAST)
    evaluate(cand, cold, FAST)  # calibrates, as run does before folding
    recent = cand.recent
    assert recent is not None and len(recent) == len(cand.holdout) > 0
    before = {k: v.clone() for k, v in cand.model.state_dict().items()}
    until = cand.train_until_ms

    def loss() -> float:
        with torch.no_grad():
            logit, _ = cand.model.logits(torch.from_numpy(recent.sparse.astype(np.int64)),
                                         torch.from_numpy(recent.dense))
            return float(ips_loss(logit, torch.from_numpy(recent.label), torch.ones(len(recent))))

    first = loss()
    assert fold_recent(cand, FAST) == len(recent) == cand.folded_rows
    after = cand.model.state_dict()
    assert loss() < first
    tables = {"fm.weight", "bias.weight", "cross.weight", "fm_acc", "bias_acc", "cross_acc"}
    assert {k for k in after if not torch.equal(after[k], before[k])} <= tables
    assert any(not torch.equal(after[k], before[k]) for k in ("bias.weight", "cross.weight"))
    assert cand.train_until_ms == int(recent.time_ms.max()) > until
    assert all(p.grad is None for p in cand.model.parameters())
    # Off: run publishes the candidate as the gate judged it.
    off = run(data, cold, SPEC, dataclasses.replace(FAST, trainer_fold_holdout=False))
    assert off.publish and off.candidate.folded_rows == 0 and off.candidate.train_until_ms == until
    # The rows that came while it trained (the runner's `newer`) are learned after the holdout.
    cut = int(np.sort(data.time_ms)[2400])
    first_part = data.take(np.flatnonzero(data.time_ms <= cut))
    asked = []

    def newer(since: int):
        asked.append(since)
        return newer_than(data, since)

    out = run(first_part, cold, SPEC, FAST, newer=newer)
    assert out.publish and asked == [int(first_part.time_ms.max())]
    assert out.candidate.folded_rows == len(out.candidate.recent) + int((data.time_ms > asked[0]).sum())
    assert out.candidate.train_until_ms == int(data.time_ms.max())
