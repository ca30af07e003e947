"""Hot swap, refusals, rollback across replicas, the rewrite table copy and
the `loopwise model` CLI, on real gRPC, a real Redis, broker and model store.

Issue 13 (items 4, 5 and 11): a model with non-finite weights or outputs
never answers NaN; a Redis restarted empty serves the last promoted version;
a replica starting on a pointer that cannot serve serves a good version;
promote refuses a non-model, rollback walks past what would not serve, and
the listing marks it."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import redis

from loopwise import redis_keys
from loopwise.client import Client
from loopwise.client.sync import rank_request
from loopwise.features import InputBuilder
from loopwise.modelstore import ModelStore, coldstart, contract, pointers
from loopwise.tools import cli, procs

from ..unit.test_modelstore import poisoned
from .test_inference import target, wait_serving

TENANT, MODEL = "default", "ranker"
IDS = [f"m{i}" for i in range(20)]
FEATURES = {"popularity": [i / 20 for i in range(20)]}


@pytest.fixture(scope="module")
def variants() -> list[bytes]:
    """Valid models that score differently (cold-start priors with other base rates)."""
    return [coldstart.build_onnx(base_rate=rate, seed=i) for i, rate in enumerate((0.3, 0.6))]


@pytest.fixture
def r(redis_url):
    """The session Redis, with this model's pointer and history cleared before and after."""
    client = redis.Redis.from_url(redis_url)
    keys = [redis_keys.model_pointer(TENANT, MODEL), redis_keys.model_history(TENANT, MODEL)]
    client.delete(*keys)
    yield client
    client.delete(*keys)
    client.close()


def publish(store: ModelStore, artifact: bytes, parent: str = "") -> str:
    return store.publish(TENANT, MODEL, artifact, feature_spec=coldstart.DEFAULT_SPEC,
                         hidden_dim=coldstart.HIDDEN_DIM, parent_version=parent, source="test").version


def rank_version(addr: str) -> str:
    with Client(inference=addr) as lw:
        return lw.rank(IDS, features=FEATURES).version


def wait_version(addrs: list[str], version: str, timeout: float = 10.0) -> float:
    """Seconds until every replica answers Rank with ``version``."""
    start = time.monotonic()
    for addr in addrs:
        while rank_version(addr) != version:
            assert time.monotonic() - start < timeout, f"{addr} never served {version}"
            time.sleep(0.02)
    return time.monotonic() - start


def sample(service, name: str, **labels: str) -> float:
    return service.metrics.registry.get_sample_value(name, labels) or 0.0


def wait_until(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def renamed_inputs(artifact: bytes) -> bytes:
    import onnx

    m = onnx.load_from_string(artifact)
    for value in m.graph.input:
        if value.name == "sparse_ids":
            value.name = "ids"
    for node in m.graph.node:
        node.input[:] = ["ids" if x == "sparse_ids" else x for x in node.input]
    return m.SerializeToString()


class Hammer(threading.Thread):
    """Ranks in a loop over one real channel; records versions and failures."""

    def __init__(self, addr: str) -> None:
        super().__init__(daemon=True)
        self.addr = addr
        self.versions: dict[str, int] = {}
        self.failures: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        with Client(inference=self.addr) as lw:
            while not self.done.is_set():
                try:
                    v = lw.rank(IDS, features=FEATURES).version
                    self.versions[v] = self.versions.get(v, 0) + 1
                except Exception as exc:  # noqa: BLE001 - counted, the test asserts none
                    self.failures.append(repr(exc))


def test_hot_swap_under_load_fails_no_request(start_inference, model_store, r, variants):
    r.set(redis_keys.model_pointer(TENANT, MODEL), "v1")
    inference = start_inference()
    addr = target(inference)
    wait_serving(addr)
    hammer = Hammer(addr)
    hammer.start()
    published = ["v1"]
    latencies = []
    try:
        time.sleep(0.3)
        for i in range(4):
            version = publish(model_store, variants[i % 2], parent=published[-1])
            published.append(version)
            r.set(redis_keys.model_pointer(TENANT, MODEL), version)
            latencies.append(wait_version([addr], version))
            time.sleep(0.3)
    finally:
        hammer.done.set()
        hammer.join(10)
    assert hammer.failures == []
    assert set(hammer.versions) <= set(published)
    assert set(published) <= set(hammer.versions)  # every version served some of the load
    assert sum(hammer.versions.values()) > 100
    assert sample(inference, "loopwise_inference_model_swaps_total", tenant=TENANT, model=MODEL) == 4
    assert sample(inference, "loopwise_inference_model_swap_seconds_count", tenant=TENANT, model=MODEL) == 4
    assert max(latencies) < 3.0
    swap_s = sample(inference, "loopwise_inference_model_swap_seconds_sum", tenant=TENANT, model=MODEL) / 4
    print(f"\nswap latency pointer set -> served (client side): {[round(x, 3) for x in latencies]} s; "
          f"pointer seen -> serving (server, mean): {swap_s:.3f} s; "
          f"requests {sum(hammer.versions.values())} by version {hammer.versions}")


@pytest.mark.parametrize("breakage, reason", [("sha", "sha256_mismatch"), ("bytes", "not_onnx"),
                                              ("inputs", "wrong_io")])
def test_bad_version_is_refused_and_the_old_one_keeps_serving(start_inference, model_store, r, coldstart_onnx,
                                                              breakage, reason):
    inference = start_inference(refused_retry_s=60.0)
    addr = target(inference)
    wait_serving(addr)
    assert rank_version(addr) == "v1"
    if breakage == "sha":
        version = publish(model_store, coldstart_onnx)
        Path(model_store.root, TENANT, MODEL, version, "model.onnx").write_bytes(b"\x08\x01garbage")
    elif breakage == "bytes":
        version = publish(model_store, b"\x08\x01not an onnx model")
    else:
        version = publish(model_store, renamed_inputs(coldstart_onnx))
    r.set(redis_keys.model_pointer(TENANT, MODEL), version)
    wait_until(lambda: sample(inference, "loopwise_inference_model_refusals_total", tenant=TENANT, model=MODEL,
                              reason=reason) == 1, what=f"refusal {reason}")
    assert inference.watcher.refused() == {((TENANT, MODEL), version): reason}
    time.sleep(1.5)  # several polls: no retry in a loop
    assert sample(inference, "loopwise_inference_model_refusals_total", tenant=TENANT, model=MODEL,
                  reason=reason) == 1
    assert rank_version(addr) == "v1"
    assert sample(inference, "loopwise_inference_model_swaps_total", tenant=TENANT, model=MODEL) == 0


def test_cli_promote_and_rollback_move_two_replicas_by_announcement(start_inference, model_store, r, broker,
                                                                    topics, redis_url, variants, capsys):
    r.set(redis_keys.model_pointer(TENANT, MODEL), "v1")
    # Pointer polls every 30 s here: a switch within seconds can only come from the announcement.
    replicas = [start_inference(pointer_poll_s=30.0, store_scan_s=30.0) for _ in range(2)]
    addrs = [target(s) for s in replicas]
    for addr in addrs:
        wait_serving(addr)
    for s in replicas:
        wait_until(s.watcher.announcements_ready.is_set, timeout=20, what="models topic followed")
    v2 = publish(model_store, variants[0], parent="v1")
    common = ["--store", model_store.url, "--redis", redis_url, "--kafka", broker, "--topic", topics.models,
              "--tenant", TENANT, "--model", MODEL]

    def model_cli(*args: str) -> str:
        capsys.readouterr()
        assert cli.main(["model", *args, *common]) == 0
        return capsys.readouterr().out

    listed = json.loads(model_cli("list", "--json"))
    assert [(x["version"], x["current"]) for x in listed] == [("v1", True), ("v2", False)]
    assert listed[1]["parent"] == "v1" and listed[1]["created"]
    promoted = json.loads(model_cli("promote", "--version", v2, "--json"))
    assert promoted == {"tenant": TENANT, "model": MODEL, "action": "promoted", "from": "v1", "to": v2,
                        "announced": True}
    took_promote = wait_version(addrs, v2, timeout=8)
    rolled = json.loads(model_cli("rollback", "--json"))
    assert (rolled["from"], rolled["to"], rolled["announced"]) == (v2, "v1", True)
    took_rollback = wait_version(addrs, "v1", timeout=8)
    assert r.get(redis_keys.model_pointer(TENANT, MODEL)) == b"v1"
    assert r.llen(redis_keys.model_history(TENANT, MODEL)) == 0
    for s in replicas:
        assert sample(s, "loopwise_inference_model_announcements_total", result="accepted") >= 2
    text = model_cli("list")
    assert "* v1" in text and "  v2" in text
    print(f"\nannouncement -> both replicas serving: promote {took_promote:.3f} s, rollback {took_rollback:.3f} s")


def test_cli_refuses_a_corrupt_version_and_rollback_without_history(model_store, r, redis_url, capsys,
                                                                     coldstart_onnx):
    v2 = publish(model_store, coldstart_onnx, parent="v1")
    Path(model_store.root, TENANT, MODEL, v2, "model.onnx").write_bytes(b"corrupt")
    common = ["--store", model_store.url, "--redis", redis_url, "--tenant", TENANT, "--model", MODEL]
    assert cli.main(["model", "promote", "--version", v2, *common]) == 1
    assert "sha256" in capsys.readouterr().err
    assert cli.main(["model", "promote", "--version", "v9", *common]) == 1
    assert r.get(redis_keys.model_pointer(TENANT, MODEL)) is None
    v3 = publish(model_store, coldstart_onnx, parent="v1")
    r.set(redis_keys.model_pointer(TENANT, MODEL), v3)  # moved without history: rollback uses the parent
    assert cli.main(["model", "rollback", "--no-announce", *common]) == 0
    assert r.get(redis_keys.model_pointer(TENANT, MODEL)) == b"v1"
    assert cli.main(["model", "show", *common]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["version"] == "v1"
    assert cli.main(["model", "rollback", "--no-announce", *common]) == 1  # v1 has no parent


def test_rewrite_serves_from_memory_and_sees_updates_within_a_second(start_inference, workdir):
    port = procs.free_port()
    proc = procs.start_redis(port, workdir / f"redis-rw-{port}", workdir / f"redis-rw-{port}.log")
    url = f"redis://127.0.0.1:{port}/0"
    own = redis.Redis.from_url(url)
    try:
        inference = start_inference(redis_url=url)
        addr = target(inference)
        with Client(inference=addr) as lw:
            assert not lw.rewrite("play maj and dragons").rewritten
            rule = {"rewrite": "play imagine dragons", "confidence": 0.9, "rule_id": "r-7"}
            with own.pipeline() as pipe:  # the writer contract: change the table, then bump the counter
                pipe.hset(redis_keys.rewrite_table(TENANT), "play maj and dragons", json.dumps(rule))
                pipe.incr(redis_keys.rewrite_version(TENANT))
                pipe.execute()
            start = time.monotonic()
            while not (hit := lw.rewrite("play maj and dragons")).rewritten:
                assert time.monotonic() - start < 1.5, "rewrite not visible within the refresh interval"
                time.sleep(0.02)
            visible = time.monotonic() - start
            assert (hit.utterance, hit.rule_id) == ("play imagine dragons", "r-7")
            assert hit.confidence == pytest.approx(0.9)
            time.sleep(0.7)  # a poll that read the table before the INCR re-reads it once
            reads = sample(inference, "loopwise_inference_rewrite_refreshes_total", result="read")
            time.sleep(1.2)  # counter unchanged: polls do not re-read the table
            assert sample(inference, "loopwise_inference_rewrite_refreshes_total", result="read") == reads
            assert sample(inference, "loopwise_inference_rewrite_rules", tenant=TENANT) == 1
            proc.stop()  # Redis gone: Rewrite answers from memory, no error
            for _ in range(50):
                assert lw.rewrite("Play Maj and Dragons").rule_id == "r-7"
            wait_until(lambda: sample(inference, "loopwise_inference_rewrite_refreshes_total",
                                      result="error") >= 1, what="a failed poll")
            assert sample(inference, "loopwise_inference_rewrites_total", outcome="hit") >= 51
            assert sample(inference, "loopwise_inference_rewrite_table_age_seconds", tenant=TENANT) > 0
        print(f"\nrewrite HSET+INCR -> visible: {visible:.3f} s")
    finally:
        own.close()
        proc.stop()


# -- issue 13: the model lifecycle always has a way back --------------------------

NOT_A_MODEL = b"\x08\x01not an onnx model"


def unseen_candidate() -> tuple[str, int]:
    """A candidate id whose bucket neither the sampled warm-up ids nor the `IDS` requests touch, and that bucket."""
    spec = coldstart.DEFAULT_SPEC
    builder = InputBuilder(spec)
    request = rank_request(TENANT, IDS, features=FEATURES)
    seen = set(contract.warmup_inputs(spec)[0].ravel().tolist())
    seen |= set(builder.build(request.user_id, request.user, request.context, request.candidates)[0].ravel().tolist())
    column = spec.sparse.index("candidate.id")
    for i in range(1000):
        one = rank_request(TENANT, [f"poison{i}"], features={"popularity": [0.5]})
        row = int(builder.build(one.user_id, one.user, one.context, one.candidates)[0][0, column])
        if row not in seen:
            return f"poison{i}", row
    raise AssertionError("no unseen bucket")


def test_a_model_with_non_finite_weights_or_scores_never_answers_nan(start_inference, model_store, r,
                                                                     coldstart_onnx):
    """Issue 13 item 4: NaN embedding rows beyond the warm-up ids were promoted and Rank answered NaN."""
    pointer = redis_keys.model_pointer(TENANT, MODEL)
    r.set(pointer, "v1")
    inference = start_inference(refused_retry_s=60.0)
    addr = target(inference)
    wait_serving(addr)
    assert rank_version(addr) == "v1"
    # NaN weights: refused before serving (the finite-weights check), v1 keeps answering.
    v2 = publish(model_store, poisoned(coldstart_onnx, nan_from=100), parent="v1")
    r.set(pointer, v2)
    wait_until(lambda: sample(inference, "loopwise_inference_model_refusals_total", tenant=TENANT, model=MODEL,
                              reason="non_finite_weights") == 1, what="refusal non_finite_weights")
    # Finite weights whose scores are NaN for one bucket no warm-up input touches: it serves ...
    fresh, row = unseen_candidate()
    v3 = publish(model_store, poisoned(coldstart_onnx, overflow_row=row), parent="v1")
    r.set(pointer, v3)
    wait_version([addr], v3)
    with Client(inference=addr) as lw:
        ranked = lw.rank([*IDS, fresh], features={"popularity": [*FEATURES["popularity"], 0.5]})
        assert ranked.version == v3 and len(ranked.scores) == len(IDS) + 1
        assert np.isfinite(ranked.scores).all()  # ... and the call that hits it is answered by v1
        assert all(np.isfinite(lw.rank(IDS, features=FEATURES).scores))
    assert sample(inference, "loopwise_inference_nonfinite_scores_total", tenant=TENANT, model=MODEL,
                  version=v3, result="fallback") == 1
    # The next version with the same flaw fails the warm-up: it replays that real call.
    v4 = publish(model_store, poisoned(coldstart_onnx, overflow_row=row), parent=v3)
    r.set(pointer, v4)
    wait_until(lambda: sample(inference, "loopwise_inference_model_refusals_total", tenant=TENANT, model=MODEL,
                              reason="warmup_nonfinite") == 1, what="refusal warmup_nonfinite")
    assert rank_version(addr) == v3


def test_a_redis_restarted_empty_serves_the_last_promoted_version(start_inference, model_store, r, variants):
    """Issue 13 item 5: with Redis empty, replicas served the newest version (one rolled back)."""
    v2 = publish(model_store, variants[0], parent="v1")
    pointers.promote(model_store, r, TENANT, MODEL, v2)
    v3 = publish(model_store, variants[1], parent=v2)
    pointers.promote(model_store, r, TENANT, MODEL, v3)
    assert pointers.rollback(model_store, r, TENANT, MODEL)[:2] == (v3, v2)
    first = start_inference(pointer_poll_s=0.1, store_scan_s=0.2)
    wait_serving(target(first))
    assert rank_version(target(first)) == v2
    r.flushall()  # a Redis pod lost and restarted empty
    replica = start_inference()
    wait_serving(target(replica))
    assert rank_version(target(replica)) == v2
    time.sleep(1.0)  # several pointer polls and store scans of the replica already running
    assert rank_version(target(first)) == v2
    assert pointers.serving_version(model_store, r, TENANT, MODEL) == v2


def test_a_replica_starting_on_a_pointer_that_cannot_serve_serves_a_good_version(start_inference, model_store,
                                                                                 r, variants):
    """Issue 13 item 11: a restarted replica whose pointer named a bad version stayed NOT_SERVING."""
    v2 = publish(model_store, NOT_A_MODEL, parent="v1")
    pointers.move(model_store, r, TENANT, MODEL, v2, "promoted", serving="v1")  # as an unchecked writer could
    publish(model_store, variants[0], parent=v2)  # newer and good: the history's v1 still comes first
    inference = start_inference(refused_retry_s=60.0)
    addr = target(inference)
    wait_serving(addr)
    assert rank_version(addr) == "v1"
    assert sample(inference, "loopwise_inference_model_fallbacks_total", tenant=TENANT, model=MODEL,
                  reason="not_onnx") == 1
    assert inference.watcher.refused() == {((TENANT, MODEL), v2): "not_onnx"}


def test_cli_refuses_a_non_model_rolls_back_past_it_and_lists_it(model_store, r, redis_url, variants, capsys):
    """Issue 13 item 11: promote accepted a non-model, rollback went "v2 -> v2", the listing showed it serving."""
    v2 = publish(model_store, variants[0], parent="v1")
    v3 = publish(model_store, NOT_A_MODEL, parent=v2)
    common = ["--store", model_store.url, "--redis", redis_url, "--tenant", TENANT, "--model", MODEL]

    def model_cli(*args: str, rc: int = 0) -> tuple[str, str]:
        capsys.readouterr()
        assert cli.main(["model", *args, *common]) == rc
        out = capsys.readouterr()
        return out.out, out.err

    _, err = model_cli("promote", "--version", v3, rc=1)
    assert "would not serve" in err and "not_onnx" in err
    assert r.get(redis_keys.model_pointer(TENANT, MODEL)) is None
    model_cli("promote", "--version", v2)
    v4 = publish(model_store, variants[1], parent=v3)
    model_cli("promote", "--version", v4)
    model_cli("promote", "--version", v4)  # again: no "v4 -> v4" to roll back to
    Path(model_store.root, TENANT, MODEL, v2, "model.onnx").write_bytes(NOT_A_MODEL)  # v2 breaks meanwhile
    out, err = model_cli("rollback", "--json")
    assert (json.loads(out)["from"], json.loads(out)["to"]) == (v4, "v1") and f"skipped {v2}" in err
    listed = {x["version"]: x for x in json.loads(model_cli("list", "--json")[0])}
    assert [v for v, x in listed.items() if not x["loadable"]] == [v2, v3]
    assert listed["v1"]["current"] and listed["v1"]["loadable"]
    r.set(redis_keys.model_pointer(TENANT, MODEL), v3)  # a pointer set by hand at a non-model
    text = model_cli("list")[0]
    assert f"! {v3}" in text and "WOULD NOT SERVE" in text and "* " not in text
