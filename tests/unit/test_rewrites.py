"""Inference's rewrite table copy against a fake Redis: a table Redis lost (its
version counter gone and the hash empty) is not swapped in for the last copy
until a writer restores it or ``full_refresh_s`` passes."""

from __future__ import annotations

import asyncio
import json

from loopwise import redis_keys
from loopwise.inference.metrics import InferenceMetrics
from loopwise.inference.rewrites import RewriteTable


class FakeRedis:
    def __init__(self) -> None:
        self.data: dict[str, object] = {}

    async def mget(self, keys):
        return [self.data.get(k) for k in keys]

    async def hgetall(self, key):
        return dict(self.data.get(key, {}))


RULE = json.dumps({"rewrite": "play heat", "confidence": 0.9, "rule_id": "r1"}).encode()


def test_a_table_lost_in_redis_keeps_the_last_copy_until_restored_or_expired():
    redis, metrics = FakeRedis(), InferenceMetrics()
    table = RewriteTable(redis, ["t"], metrics, full_refresh_s=30.0)
    redis.data = {redis_keys.rewrite_table("t"): {b"play heet": RULE}, redis_keys.rewrite_version("t"): b"5"}
    asyncio.run(table.refresh())
    assert table.lookup("t", "play heet").utterance == "play heat"
    redis.data = {}  # FLUSHALL
    asyncio.run(table.refresh())
    assert table.lookup("t", "play heet") is not None  # the last copy keeps serving
    assert metrics.registry.get_sample_value("loopwise_inference_rewrite_refreshes_total", {"result": "lost"}) == 1
    redis.data = {redis_keys.rewrite_table("t"): {b"play heet": RULE, b"stop": RULE},
                  redis_keys.rewrite_version("t"): b"1"}  # the miner restored it
    asyncio.run(table.refresh())
    assert table.size("t") == 2
    # lost for longer than full_refresh_s (nobody restores it): the empty table is taken
    table.full_refresh_s = 0.0
    redis.data = {}
    asyncio.run(table.refresh())
    asyncio.run(table.refresh())
    assert table.size("t") == 0


def test_a_table_cleared_by_a_writer_that_bumps_the_counter_is_taken_at_once():
    redis, metrics = FakeRedis(), InferenceMetrics()
    table = RewriteTable(redis, ["t"], metrics)
    redis.data = {redis_keys.rewrite_table("t"): {b"play heet": RULE}, redis_keys.rewrite_version("t"): b"5"}
    asyncio.run(table.refresh())
    redis.data = {redis_keys.rewrite_version("t"): b"6"}
    asyncio.run(table.refresh())
    assert table.size("t") == 0
