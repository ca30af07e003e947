"""Rewrite lookup in the tenant's Redis rewrite table (filled by the miner)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import redis.asyncio as aioredis

from loopwise import redis_keys
from loopwise.text import normalize

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rule:
    rewrite: str
    confidence: float
    rule_id: str


class RewriteTable:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis

    async def lookup(self, tenant: str, utterance: str) -> Rule | None:
        raw = await self.redis.hget(redis_keys.rewrite_table(tenant), normalize(utterance))
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            return Rule(rewrite=str(data["rewrite"]), confidence=float(data["confidence"]),
                        rule_id=str(data["rule_id"]))
        except (ValueError, KeyError, TypeError):
            log.warning("malformed rewrite rule ignored", extra={"tenant": tenant, "raw": raw[:200]})
            return None
