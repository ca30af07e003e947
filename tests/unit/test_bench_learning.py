"""bench/learning.py's pure parts: the replay stream and the AUC per time bucket
(the AUC itself: tests/unit/test_ranking_metrics.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from _learning_eval import bucket_auc, bucket_ids  # noqa: E402
from _learning_stream import (  # noqa: E402
    build_stream,
    draw_without_replacement,
    featurize,
    progressive_scale,
    river_dicts,
    vw_lines,
)

from loopwise.tools import datasets  # noqa: E402

# -- AUC per bucket ------------------------------------------------------------------------


def test_bucket_auc_and_ids() -> None:
    b = bucket_ids(10, 2, 5)
    assert b.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4]
    y = np.array([0, 1] * 10)
    s = np.where(np.arange(20) < 8, y, 1 - y).astype(float)  # right in buckets 0-1, wrong after
    curve = bucket_auc(y, s, b, 5)
    assert curve.tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]


# -- the stream ----------------------------------------------------------------------------


def test_draw_without_replacement_distinct_positive_weight_only() -> None:
    rng = np.random.default_rng(3)
    w = np.array([0.0, 1.0, 5.0, 0.0, 2.0, 1.0])
    for _ in range(50):
        got = draw_without_replacement(rng, w, 4)
        assert len(set(got.tolist())) == 4 and all(w[got] > 0)
    with pytest.raises(ValueError):
        draw_without_replacement(rng, w, 5)


def test_draw_follows_the_weights() -> None:
    rng = np.random.default_rng(4)
    w = np.array([1.0, 9.0, 0.0, 0.0])
    firsts = np.array([draw_without_replacement(rng, w, 1)[0] for _ in range(4000)])
    assert (firsts == 1).mean() == pytest.approx(0.9, abs=0.03)


def test_progressive_scale() -> None:
    assert progressive_scale(np.array([0, 3]), 0.0).tolist() == [0.0, 0.0]
    assert progressive_scale(np.array([0, 3, 7]), 7.0)[2] == pytest.approx(1.0)


def _tiny_movielens() -> datasets.MovieLens:
    users = {u: datasets.User(u, "25-34", g, "engineer") for u, g in (("u1", "M"), ("u2", "F"))}
    items = {f"m{j}": datasets.Item(f"m{j}", f"movie {j}", "Drama" if j % 2 else "Comedy", "1990s")
             for j in range(30)}
    user = np.array(["u1", "u2", "u1", "u2", "u1", "u1"])
    item = np.array(["m0", "m0", "m1", "m2", "m3", "m4"])
    rating = np.array([5, 3, 4, 1, 5, 2], dtype=np.float32)
    ts = np.arange(6, dtype=np.int64) * 3600 + 880_000_000
    ids = list(items)
    counts = np.array([int((item == i).sum()) for i in ids])
    return datasets.MovieLens(user=user, item=item, rating=rating, timestamp=ts, users=users, items=items,
                              item_ids=ids, item_counts=counts)


def test_stream_labels_candidates_and_no_future_leakage() -> None:
    data = _tiny_movielens()
    stream = build_stream(data, None, k=5, seed=1)
    rated = data.rated_by()
    for i in range(stream.n):
        ids = stream.item_ids(i)
        rated_item = str(data.item[i])
        assert len(set(ids)) == 5 and rated_item in ids
        others = [x for x in ids if x != rated_item]
        assert not set(others) & rated[str(data.user[i])]  # negatives: never rated by the user
        labels = dict(zip(ids, stream.label[i].tolist(), strict=True))
        assert labels[rated_item] == (1.0 if data.rating[i] >= 4 else 0.0)
        assert sum(labels.values()) == labels[rated_item]
    # popularity and activity only count earlier ratings
    assert stream.popularity[0].max() == 0.0 and stream.activity[0] == 0.0
    for i in range(stream.n):
        before = data.item[:i].tolist()
        top = max((before.count(x) for x in set(before)), default=0)
        want = [progressive_scale(np.array([before.count(x)]), float(top))[0] for x in stream.item_ids(i)]
        assert stream.popularity[i].tolist() == pytest.approx(want)
    assert stream.activity[2] == pytest.approx(1.0)  # u1 and u2 rated once each before request 2


def test_stream_is_deterministic_in_its_seed() -> None:
    data = _tiny_movielens()
    a, b = build_stream(data, None, k=5, seed=9), build_stream(data, None, k=5, seed=9)
    c = build_stream(data, None, k=5, seed=10)
    assert (a.cand == b.cand).all() and (a.label == b.label).all()
    assert not (a.cand == c.cand).all()


def test_featurize_matches_the_serving_builder_and_peer_formats() -> None:
    from loopwise.features import InputBuilder

    data = _tiny_movielens()
    stream = featurize(build_stream(data, 3, k=5, seed=2))
    req = stream.request(1)
    sparse, dense = InputBuilder(stream.spec).build(req.user_id, req.user, req.context, req.candidates)
    assert (stream.sparse[5:10] == sparse).all() and np.allclose(stream.dense[5:10], dense)
    assert req.user.categorical["gender"] == "F" and len(req.candidates.ids) == 5
    lines = vw_lines(stream, slice(0, 5))
    label_row = int(np.argmax(stream.label[0])) if stream.label[0].any() else None
    assert all(line.split(" ", 1)[0] in ("1", "-1") for line in lines)
    if label_row is not None:
        assert lines[label_row].startswith("1 ")
    ids = {str(int(x)) for x in sparse[0] if x}
    assert ids <= set(vw_lines(stream, slice(5, 6))[0].replace("|", " ").split())
    x = river_dicts(stream, slice(5, 6))[0]
    assert {f"h{i}" for i in ids} <= set(x) and "candidate_popularity" in x


def test_complete_requests_hold_examples_until_every_candidate_has_one() -> None:
    from _learning_stack import CompleteRequests

    from loopwise.v1 import learning_pb2

    def ex(rid: str, cid: str, label: float, correction: bool = False) -> learning_pb2.Example:
        return learning_pb2.Example(request_id=rid, candidate_id=cid, label=label, correction=correction)

    held = CompleteRequests(k=3)
    assert held.add([ex("r1", "a", 1.0), ex("r2", "a", 0.0)]) == []  # positives come first
    out = held.add([ex("r1", "b", 0.0), ex("r1", "c", 0.0), ex("r1", "b", 0.0)])
    assert sorted((e.candidate_id, e.label) for e in out) == [("a", 1.0), ("b", 0.0), ("c", 0.0)]
    out = held.add([ex("r2", "b", 0.0), ex("r2", "a", 1.0, correction=True), ex("r2", "c", 0.0)])
    assert dict((e.candidate_id, e.label) for e in out) == {"a": 1.0, "b": 0.0, "c": 0.0}
    assert held.open == {}


# -- the configurations (issue 11) ----------------------------------------------------------------


def test_configurations_one_run_per_feedback_mode_and_the_default_is_loopwise() -> None:
    from _learning_configs import configurations, default_feedback_mode, deltas_setting

    runs, main = configurations("both", whole_versions=False)
    assert [r.name for r in runs] == ["loopwise_window", "loopwise_fnw"]
    assert [r.env["LOOPWISE_FEEDBACK_MODE"] for r in runs] == ["window", "fnw"]
    assert main == f"loopwise_{default_feedback_mode()}"
    runs, main = configurations("fnw", whole_versions=True)
    assert runs[0].name == main == "loopwise_fnw"
    assert ("loopwise_whole_versions" in [r.name for r in runs]) == bool(deltas_setting())


def test_freshness_keys_name_every_issue_key() -> None:
    from types import SimpleNamespace

    from _learning_configs import freshness_keys

    def run(mode: str) -> SimpleNamespace:
        return SimpleNamespace(version=np.array([1, 2, 3]), extra={"published_versions": ["v2", "v3"],
                                                                   "feedback_mode": mode})

    figures = {("loopwise", "auc"): 0.7, ("loopwise_fnw", "auc"): 0.72, ("inprocess", "auc"): 0.8}
    reasons: dict[str, str] = {}
    out = freshness_keys("stack", {"loopwise": run("window"), "loopwise_fnw": run("fnw"), "inprocess": run("")},
                         lambda name, key: figures.get((name, key)), reasons)
    for key in ("auc_whole_versions", "auc_inprocess", "delta_to_serving_p50_s", "delta_to_serving_p99_s",
                "delta_bytes_per_s", "auc_loopwise_window", "auc_loopwise_fnw"):
        assert key in out
    assert out["auc_inprocess"] == 0.8
    assert out["auc_loopwise_window"] == 0.7 and out["auc_loopwise_fnw"] == 0.72  # by the run's own mode
    only = freshness_keys("stack", {"loopwise": run("fnw")}, lambda name, key: figures.get((name, key)), {})
    assert only["auc_loopwise_fnw"] == 0.7 and only["auc_loopwise_window"] is None
    assert out["delta_to_serving_p50_s"] is None and "delta_to_serving_p50_s" in reasons


def test_inprocess_baselines_take_the_stacks_cadence_as_served_and_as_configured(monkeypatch) -> None:
    import learning

    monkeypatch.setattr(learning, "delta_interval_s", lambda: 0.1)
    # 6,000 requests answered from 300 (version, sequence) states; 190 requests/s while traffic flowed
    stack = {"served_states": 300, "replay_active_rank_per_s": 190.0, "replay_rank_per_s": 100.0}
    assert learning.inprocess_cadences(6000, stack) == [("inprocess", 20), ("inprocess_interval", 19)]
    # an older run without the active rate: the whole replay's rate
    assert learning.inprocess_cadences(6000, {"replay_rank_per_s": 100.0}) == [("inprocess", None),
                                                                              ("inprocess_interval", 10)]


def test_histogram_quantile_like_prometheus() -> None:
    from _learning_deltas import histogram_quantile

    inf = float("inf")
    buckets = [(0.5, 0.0), (1.0, 50.0), (2.0, 90.0), (5.0, 100.0), (inf, 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(1.0)
    assert histogram_quantile(0.7, buckets) == pytest.approx(1.5)
    assert histogram_quantile(0.99, buckets) == pytest.approx(2.0 + 3.0 * 9 / 10)
    assert histogram_quantile(0.5, [(1.0, 0.0), (inf, 0.0)]) is None
    assert histogram_quantile(0.99, [(1.0, 1.0), (inf, 10.0)]) == 1.0  # in +Inf: the last finite bound


def test_the_inprocess_loop_learns_with_the_trainers_deltas_between_versions() -> None:
    """`run_inprocess` with ``delta_block``: the first block is scored by the cold-start model
    (as serving's ONNX scores it), the next by it plus the trainer's own `DeltaTrainer` steps on
    the labels before: a request shown again has its negatives lower and its click higher."""
    from _learning_inprocess import run_inprocess
    from _learning_loopwise import OnnxScorer, RealTrainer

    from loopwise.modelstore import coldstart

    stream = featurize(build_stream(_tiny_movielens(), None, k=5, seed=1))
    for name in ("sparse", "dense"):  # request 1 is request 0 again
        getattr(stream, name)[5:10] = getattr(stream, name)[0:5]
    stream.label[1] = stream.label[0]
    assert stream.label[0].sum() == 1
    parent = coldstart.build_onnx(stream.spec)
    trainer = RealTrainer(parent, stream.spec, overrides={"attribution_window_ms": "0"})
    run = run_inprocess(stream, parent, 1_000, trainer, say=lambda _: None, delta_block=1)
    assert run.extra["delta_steps"] == stream.n and "deltas every 1" in run.mode
    cold = OnnxScorer(parent).score(stream.sparse[:5], stream.dense[:5])
    assert np.allclose(run.scores[:5], cold, atol=1e-4)
    y = stream.label[0] > 0
    moved = run.scores[5:10] - run.scores[:5]
    assert (moved[y] > 0).all() and (moved[~y] < 0).all()
    whole = run_inprocess(stream, parent, 1_000, RealTrainer(parent, stream.spec), say=lambda _: None)
    assert whole.mode == "inprocess" and np.allclose(whole.scores[5:10], whole.scores[:5])
