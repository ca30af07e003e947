"""`loopwise.modelstore.pointers` without a network: a local store and an
in-memory stand-in for the part of a Redis client the pointers use (the same
functions against a real Redis run in tests/integration/test_hotswap.py and
tests/integration/test_trainer.py). The pointer is persisted in the store
with every move; promote refuses and rollback skips what would not serve."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis

from loopwise import redis_keys
from loopwise.modelstore import ModelStore, coldstart, pointers

T, M = "acme", "ranker"
POINTER, HISTORY = redis_keys.model_pointer(T, M), redis_keys.model_history(T, M)


class FakeRedis:
    """Strings and lists in a dict; ``pipeline()`` buffers after ``multi()`` and applies on
    ``execute()``, which raises ``WatchError`` while ``conflicts`` is above zero."""

    def __init__(self, data: dict[str, object] | None = None, conflicts: int = 0) -> None:
        self.data: dict[str, object] = dict(data or {})
        self.conflicts = conflicts

    def get(self, key: str):
        value = self.data.get(key)
        return value.encode() if isinstance(value, str) else None

    def lrange(self, key: str, start: int, stop: int):
        return [e.encode() for e in self.data.get(key, [])]

    def pipeline(self) -> FakePipeline:
        return FakePipeline(self)

    def entries(self) -> list[dict]:
        return [json.loads(e) for e in self.data.get(HISTORY, [])]


class FakePipeline:
    def __init__(self, client: FakeRedis) -> None:
        self.client = client
        self.queued: list[tuple] = []

    def __enter__(self) -> FakePipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.queued.clear()

    def watch(self, *keys: str) -> None:
        self.queued.clear()

    def get(self, key: str):
        return self.client.get(key)

    def multi(self) -> None:
        self.queued.clear()

    def set(self, key: str, value: str) -> None:
        self.queued.append(("set", key, value))

    def lpush(self, key: str, value: str) -> None:
        self.queued.append(("lpush", key, value))

    def ltrim(self, key: str, start: int, stop: int) -> None:
        self.queued.append(("ltrim", key, start, stop))

    def lpop(self, key: str) -> None:
        self.queued.append(("lpop", key))

    def execute(self) -> None:
        if self.client.conflicts > 0:
            self.client.conflicts -= 1
            raise redis.WatchError("watched key changed")
        data = self.client.data
        for op, key, *args in self.queued:
            if op == "set":
                data[key] = args[0]
            elif op == "lpush":
                data[key] = [args[0], *data.get(key, [])]
            elif op == "ltrim":
                start, stop = args
                data[key] = data.get(key, [])[start:None if stop == -1 else stop + 1]
            else:
                data[key] = data.get(key, [])[1:]
        self.queued.clear()


class Unreachable:
    def get(self, key: str):
        raise redis.ConnectionError("connection refused")


@pytest.fixture(scope="module")
def artifact() -> bytes:
    return coldstart.build_onnx()


@pytest.fixture
def store(tmp_path, artifact) -> ModelStore:
    """v1 (cold start) <- v2 <- v3, v3 the newest."""
    s = ModelStore(str(tmp_path / "models"))
    for parent in ("", "v1", "v2"):
        s.publish(T, M, artifact, feature_spec=coldstart.DEFAULT_SPEC, hidden_dim=coldstart.HIDDEN_DIM,
                  parent_version=parent, source="trainer" if parent else "coldstart")
    return s


def test_serving_version_is_the_pointer_else_the_newest(store):
    assert pointers.resolve("v2", "v3") == "v2" and pointers.resolve("", "v3") == "v3"
    assert pointers.resolve(None, None) is None and pointers.resolve(None, "v1", "v3") == "v1"
    assert pointers.serving_version(store, None, T, M) == "v3"
    assert pointers.serving_version(store, FakeRedis(), T, M) == "v3"
    assert pointers.serving_version(store, FakeRedis({POINTER: "v2"}), T, M) == "v2"
    assert pointers.serving_version(store, FakeRedis(), T, "other") is None


def test_an_unreadable_pointer_raises_unless_tolerated(store):
    with pytest.raises(redis.ConnectionError):
        pointers.serving_version(store, Unreachable(), T, M)
    assert pointers.serving_version(store, Unreachable(), T, M, tolerant=True) == "v3"


def test_read_many_async_reads_every_pointer_at_once():
    class AsyncReads:
        async def mget(self, keys):
            return [b"v2", None, ""][:len(keys)]

    keys = [(T, M), (T, "b"), ("other", M)]
    assert asyncio.run(pointers.read_many_async(AsyncReads(), keys)) == {
        (T, M): "v2", (T, "b"): None, ("other", M): None}
    assert asyncio.run(pointers.read_many_async(AsyncReads(), [])) == {}


def test_move_sets_the_pointer_and_records_the_move(store):
    r = FakeRedis(conflicts=1)  # a concurrent writer once: the move is retried
    assert pointers.move(store, r, T, M, "v1", "promoted", serving="v3") == "v3"
    assert pointers.read(r, T, M) == "v1"
    assert pointers.move(store, r, T, M, "v2", "published") == "v1"
    moves = [("v1", "v2", "published"), ("v3", "v1", "promoted")]
    assert [(e["from"], e["to"], e["action"]) for e in pointers.history(store, r, T, M)] == moves
    # The store holds the same pointer and history.
    pointer, entries = store.read_pointer(T, M)
    assert pointer == "v2" and [(e["from"], e["to"], e["action"]) for e in entries] == moves
    assert pointers.move(store, r, T, M, "v2", "promoted") == "v2"  # no "v2 -> v2" entry
    assert len(pointers.history(store, r, T, M)) == 2
    for i in range(pointers.HISTORY_KEEP + 5):
        pointers.move(store, r, T, M, ("v3", "v1")[i % 2], "promoted")
    assert len(pointers.history(store, r, T, M)) == pointers.HISTORY_KEEP
    assert len(store.read_pointer(T, M)[1]) == pointers.HISTORY_KEEP


def test_an_empty_redis_serves_the_pointer_persisted_in_the_store(store):
    """Issue 13 item 5: a Redis restarted empty served the newest version, not the last promoted."""
    r = FakeRedis()
    pointers.promote(store, r, T, M, "v2")
    pointers.promote(store, r, T, M, "v3")
    assert pointers.rollback(store, r, T, M) == ("v3", "v2", [])
    empty = FakeRedis()
    assert pointers.serving_version(store, empty, T, M) == "v2"
    assert pointers.serving_version(store, Unreachable(), T, M, tolerant=True) == "v2"
    assert pointers.serving_version(store, None, T, M) == "v2"
    assert [(e["from"], e["to"]) for e in pointers.history(store, empty, T, M)] == [("v3", "v2")]
    # Moving with an empty Redis starts from the store's pointer.
    assert pointers.promote(store, empty, T, M, "v1") == "v2"
    assert pointers.read(empty, T, M) == "v1" and store.read_pointer(T, M)[0] == "v1"


def test_promote_refuses_a_version_that_would_not_serve(store):
    """Issue 13 item 11: promote accepted a file that is not a model."""
    bad = store.publish(T, M, b"\x08\x01not an onnx model", feature_spec=coldstart.DEFAULT_SPEC,
                        hidden_dim=coldstart.HIDDEN_DIM, parent_version="v3").version
    r = FakeRedis()
    with pytest.raises(pointers.PointerError, match="would not serve"):
        pointers.promote(store, r, T, M, bad)
    assert pointers.read(r, T, M) is None and store.read_pointer(T, M) == (None, [])
    assert pointers.problem(store, T, M, bad).startswith("not_onnx")
    assert pointers.problem(store, T, M, "v3") == ""


def test_rollback_skips_unloadable_versions_and_never_stays(store):
    """Issue 13 item 11: rollback went "v2 -> v2", then found nothing to roll back to."""
    r = FakeRedis()
    pointers.promote(store, r, T, M, "v3")  # pointer v3, serving v3 before: no entry
    assert pointers.history(store, r, T, M) == []
    # v2 breaks: rollback from v3 skips it (parent chain v3 -> v2 -> v1).
    (store.fs.open(f"{store.root}/{T}/{M}/v2/model.onnx", "wb")).close()
    current, target, skipped = pointers.rollback(store, r, T, M)
    assert (current, target) == ("v3", "v1") and skipped[0].startswith("v2 (")
    assert pointers.read(r, T, M) == "v1" and store.read_pointer(T, M)[0] == "v1"
    with pytest.raises(pointers.PointerError, match="nothing to roll back to"):
        pointers.rollback(store, r, T, M)


def test_rollback_walks_the_history_chain_past_a_bad_version(store):
    r = FakeRedis()
    for v in ("v1", "v2", "v3"):
        pointers.promote(store, r, T, M, v)
    (store.fs.open(f"{store.root}/{T}/{M}/v2/model.onnx", "wb")).close()
    assert pointers.rollback(store, r, T, M)[:2] == ("v3", "v1")
    left = [("v3", "v1")]  # the two entries walked are popped, in Redis and in the store
    assert [(e["from"], e["to"]) for e in pointers.history(store, r, T, M)] == left
    pointer, entries = store.read_pointer(T, M)
    assert pointer == "v1" and [(e["from"], e["to"]) for e in entries] == left


def test_fallback_order_tries_the_history_then_newest_first():
    entries = [{"from": "v2", "to": "v5"}, {"from": "v9", "to": "v2"}, {"from": None, "to": "v1"}]
    assert pointers.fallback_order("v5", entries, ["v1", "v2", "v3", "v4", "v5"]) == ["v2", "v4", "v3", "v1"]
    assert pointers.fallback_order("v1", [], ["v1"]) == []


def test_rollback_walks_the_history_back_then_follows_the_parent(store):
    r = FakeRedis()
    assert pointers.promote(store, r, T, M, "v1") == "v3"
    assert pointers.rollback(store, r, T, M) == ("v1", "v3", [])
    assert pointers.read(r, T, M) == "v3" and r.entries() == []  # the head entry is consumed
    assert store.read_pointer(T, M) == ("v3", [])
    assert pointers.rollback(store, r, T, M) == ("v3", "v2", [])  # no history left: the parent
    assert pointers.read(r, T, M) == "v2"


def test_rollback_follows_a_matching_history_head(store):
    r = FakeRedis({POINTER: "v1", HISTORY: [json.dumps({"from": "v3", "to": "v1", "action": "promoted"})]})
    assert pointers.rollback_target(store, r, T, M) == ("v1", "v3", 1, [])


def test_rollback_uses_the_parent_when_the_history_is_stale(store):
    r = FakeRedis({POINTER: "v3", HISTORY: [json.dumps({"from": "v1", "to": "v2", "action": "promoted"})]})
    assert pointers.rollback_target(store, r, T, M) == ("v3", "v2", 0, [])


def test_rollback_with_nothing_before_is_an_error(store):
    with pytest.raises(pointers.PointerError, match="nothing to roll back to"):
        pointers.rollback_target(store, FakeRedis({POINTER: "v1"}), T, M)


def test_rollback_refuses_when_the_pointer_moves_meanwhile(store):
    r = FakeRedis({POINTER: "v3"}, conflicts=1)
    with pytest.raises(pointers.PointerError, match="moved meanwhile"):
        pointers.rollback(store, r, T, M)
    assert pointers.read(r, T, M) == "v3"


def test_verify_checks_existence_and_sha(store, tmp_path):
    assert pointers.verify(store, T, M, "v2").version == "v2"
    with pytest.raises(pointers.PointerError, match="no version 'v7'"):
        pointers.verify(store, T, M, "v7")
    (tmp_path / "models" / T / M / "v2" / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(pointers.PointerError, match="sha256"):
        pointers.verify(store, T, M, "v2")
    r = FakeRedis()
    with pytest.raises(pointers.PointerError, match="sha256"):
        pointers.promote(store, r, T, M, "v2")
    assert pointers.read(r, T, M) is None and r.entries() == []


def test_pointers_import_without_redis():
    import subprocess
    import sys

    code = ("import sys; sys.modules['redis'] = None; "
            "from loopwise.modelstore import ModelStore, pointers; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
