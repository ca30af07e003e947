"""`loopwise model` without a network: the listing and the endpoints, with a
local store and a dict standing in for the Redis reads (the pointer logic is
tests/unit/test_pointers.py; the commands against a real Redis and broker are
in tests/integration/test_hotswap.py)."""

from __future__ import annotations

import argparse

import pytest

from loopwise import redis_keys
from loopwise.modelstore import ModelStore, coldstart
from loopwise.tools import models_cmd

T, M = "acme", "ranker"


class Reads:
    """The read-only part of a Redis client the listing uses."""

    def __init__(self, data: dict[str, object]) -> None:
        self.data = data

    def get(self, key: str):
        value = self.data.get(key)
        return value.encode() if isinstance(value, str) else None


@pytest.fixture(scope="module")
def artifact() -> bytes:
    return coldstart.build_onnx()


@pytest.fixture
def store(tmp_path, artifact) -> ModelStore:
    s = ModelStore(str(tmp_path / "models"))
    s.publish(T, M, artifact, feature_spec=coldstart.DEFAULT_SPEC, hidden_dim=coldstart.HIDDEN_DIM,
              source="coldstart")
    s.publish(T, M, artifact, feature_spec=coldstart.DEFAULT_SPEC, hidden_dim=coldstart.HIDDEN_DIM,
              parent_version="v1", metrics={"decision": "published", "auc": 0.71, "ece": 0.02}, source="trainer")
    s.publish(T, M, artifact, feature_spec=coldstart.DEFAULT_SPEC, hidden_dim=coldstart.HIDDEN_DIM,
              parent_version="v2", source="trainer")
    return s


def test_rows_mark_the_pointer_else_the_newest(store):
    rows = models_cmd.rows(store, Reads({}), T, M)
    assert [(r["version"], r["current"]) for r in rows] == [("v1", False), ("v2", False), ("v3", True)]
    assert rows[1]["decision"] == "published" and rows[1]["metrics"] == {"auc": 0.71, "ece": 0.02}
    assert rows[1]["parent"] == "v1" and len(rows[1]["created"]) == 19
    pointed = models_cmd.rows(store, Reads({redis_keys.model_pointer(T, M): "v2"}), T, M)
    assert [r["current"] for r in pointed] == [False, True, False]


def test_endpoints_need_a_stack_or_flags(tmp_path):
    args = argparse.Namespace(root=tmp_path, store=None, redis=None, kafka=None, topic=None)
    with pytest.raises(models_cmd.ModelCliError, match="--store / --redis"):
        models_cmd._endpoints(args)
    args = argparse.Namespace(root=tmp_path, store="/s", redis="redis://x", kafka=None, topic=None)
    assert models_cmd._endpoints(args) == {"store": "/s", "redis": "redis://x", "kafka": None,
                                           "topic": "loopwise.models.v1"}


def test_endpoints_come_from_the_stack_file(tmp_path):
    from loopwise.tools.stack import StackInfo

    info = StackInfo(root=str(tmp_path), kafka="127.0.0.1:1", redis="redis://127.0.0.1:2/0", collector="",
                     inference="", metrics={}, pids={}, logs={}, model_store=str(tmp_path / "models"),
                     tenants=["default"], topics={"models": "x.models.v1"})
    (tmp_path / "stack.json").write_text(info.to_json())
    args = argparse.Namespace(root=tmp_path, store=None, redis=None, kafka=None, topic=None)
    assert models_cmd._endpoints(args) == {"store": str(tmp_path / "models"), "redis": "redis://127.0.0.1:2/0",
                                           "kafka": "127.0.0.1:1", "topic": "x.models.v1"}
    args.redis = "redis://elsewhere:6379/0"
    assert models_cmd._endpoints(args)["redis"] == "redis://elsewhere:6379/0"
