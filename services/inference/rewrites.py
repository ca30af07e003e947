"""Rewrite rules served from a local copy of each tenant's Redis rewrite table.

`Rewrite` never waits on Redis: `lookup` serves from the copy, a
`loopwise.spans.RuleSet` (the whole-utterance rule of the utterance when
there is one, else its span rules; a canary rule only for the users in its
share), and `response` answers with the spans it changed. A
background task keeps the copy current: every ``poll_s`` (0.5 s) one ``MGET``
of the tenants' version counters (`redis_keys.rewrite_version`); a table whose
counter moved is re-read with ``HGETALL`` and swapped in whole (one attribute
assignment, so a lookup sees either the old or the new table). A tenant
without a counter is re-read on every poll (writers that do not bump it still
show up within a poll), and every table is re-read every ``full_refresh_s``
regardless. While Redis is unreachable the last copy keeps serving; its age is
exported (`loopwise_inference_rewrite_table_age_seconds`).

Redis is a cache of the miner's rules: a table whose counter vanished and
whose hash reads empty while the copy holds rules was lost by Redis (restarted
empty, flushed), not cleared by a writer (who bumps the counter). The last
copy then keeps serving, unconfirmed (its age grows; counted as
``loopwise_inference_rewrite_refreshes_total{result="lost"}``, a warning
logged), until a writer restores the table (the miner does within a refresh)
or for at most ``full_refresh_s``, after which the empty table is taken.
"""

from __future__ import annotations

import asyncio
import logging
import time

import redis.asyncio as aioredis

from loopwise import redis_keys
from loopwise.spans import Applied, RuleSet, ServedRule, parse_value
from loopwise.v1 import inference_pb2

from .metrics import InferenceMetrics

log = logging.getLogger(__name__)


def response(applied: Applied) -> inference_pb2.RewriteResponse:
    """The RewriteResponse of a rewrite: the utterance, its rule(s), its kind and changed spans."""
    return inference_pb2.RewriteResponse(
        rewritten=True, utterance=applied.utterance, confidence=applied.confidence, rule_id=applied.rule_id,
        kind=applied.kind, spans=[inference_pb2.RewrittenSpan(start=c.start, end=c.end, original=c.original,
                                                              rule_id=c.rule_id) for c in applied.changes])


def parse_table(raw: dict, previous: dict | None = None, parsed: dict[str, ServedRule] | None = None
                ) -> tuple[dict[str, ServedRule], int]:
    """HGETALL result -> ({table key: ServedRule}, malformed count).

    ``previous``/``parsed``: the last raw table and its rules; an entry whose
    raw value did not change is reused instead of parsed again (a re-read of
    an unchanged 10,000-rule table then costs the HGETALL, not the JSON).
    """
    previous = previous or {}
    parsed = parsed or {}
    rules: dict[str, ServedRule] = {}
    bad = 0
    for key, value in raw.items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        rule = parsed.get(name) if previous.get(key) == value else None
        if rule is None:
            rule = parse_value(value)
        if rule is None:
            bad += 1
            continue
        rules[name] = rule
    return rules, bad


class RewriteTable:
    """Local copies of the rewrite tables of ``tenants``; `start` begins the refresh."""

    def __init__(self, redis: aioredis.Redis, tenants: tuple[str, ...] | list[str], metrics: InferenceMetrics,
                 *, poll_s: float = 0.5, full_refresh_s: float = 30.0) -> None:
        self.redis = redis
        self.tenants = list(tenants)
        self.metrics = metrics
        self.poll_s = poll_s
        self.full_refresh_s = full_refresh_s
        self._tables: dict[str, RuleSet] = {t: RuleSet({}) for t in self.tenants}
        self._versions: dict[str, bytes | None] = {}
        self._raw: dict[str, dict] = {}
        self._read_at: dict[str, float] = {}
        self._confirmed_at: dict[str, float] = {t: time.monotonic() for t in self.tenants}
        self._lost_at: dict[str, float] = {}  # tenant -> when Redis was first seen without its table
        self._task: asyncio.Task | None = None
        self._stopping = False
        self.loaded = asyncio.Event()
        for tenant in self.tenants:
            self.metrics.rewrite_age.labels(tenant).set_function(
                lambda t=tenant: time.monotonic() - self._confirmed_at[t])

    def lookup(self, tenant: str, utterance: str, user_id: str = "") -> Applied | None:
        """The rewrite of ``utterance`` for ``user_id``, from memory: no I/O."""
        table = self._tables.get(tenant)
        if not table:
            return None
        return table.apply(utterance, user_id)

    def size(self, tenant: str) -> int:
        return len(self._tables.get(tenant, {}))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="rewrite-refresh")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            done, _ = await asyncio.wait([self._task], timeout=5.0)
            if not done:
                log.warning("rewrite refresh task did not stop")

    async def _run(self) -> None:
        failing = False
        task = asyncio.current_task()
        while not self._stopping:
            try:
                await self.refresh()
                if failing:
                    log.info("rewrite table refresh recovered")
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep serving the last copy
                self.metrics.rewrite_refreshes.labels("error").inc()
                if not failing:
                    log.warning("rewrite tables not refreshed; serving the last copy", extra={"error": repr(exc)})
                failing = True
            if task is not None and task.cancelling():
                # redis.asyncio can swallow a cancellation inside a command: honour it here.
                raise asyncio.CancelledError
            await asyncio.sleep(self.poll_s)

    async def refresh(self) -> None:
        """One poll: MGET the counters, HGETALL the tables that need it."""
        if not self.tenants:
            return
        counters = await self.redis.mget([redis_keys.rewrite_version(t) for t in self.tenants])
        now = time.monotonic()
        for tenant, counter in zip(self.tenants, counters, strict=True):
            stale = (counter is None or tenant not in self._versions or counter != self._versions[tenant]
                     or now - self._read_at.get(tenant, 0.0) > self.full_refresh_s)
            if stale:
                raw = await self.redis.hgetall(redis_keys.rewrite_table(tenant))
                if self._lost(tenant, counter, raw, now):
                    continue
                last = self._tables.get(tenant)
                rules, bad = parse_table(raw, self._raw.get(tenant), last.rules if last else None)
                self._raw[tenant] = raw
                if bad:
                    log.warning("malformed rewrite rules ignored", extra={"tenant": tenant, "count": bad})
                self._tables[tenant] = RuleSet(rules)
                self._versions[tenant] = counter
                self._read_at[tenant] = now
                self.metrics.rewrite_rules.labels(tenant).set(len(rules))
                self.metrics.rewrite_refreshes.labels("read").inc()
            self._confirmed_at[tenant] = now
        self.loaded.set()

    def _lost(self, tenant: str, counter: bytes | None, raw: dict, now: float) -> bool:
        """Whether to keep the last copy of ``tenant`` because Redis lost its table."""
        if counter is not None or raw or self._versions.get(tenant) is None or not self._tables.get(tenant):
            self._lost_at.pop(tenant, None)
            return False
        since = self._lost_at.get(tenant)
        if since is None:
            since = self._lost_at[tenant] = now
            self.metrics.rewrite_refreshes.labels("lost").inc()
            log.warning("the rewrite table is gone from Redis; serving the last copy until it is restored",
                        extra={"tenant": tenant, "rules": len(self._tables[tenant])})
        if now - since < self.full_refresh_s:
            return True
        self._lost_at.pop(tenant, None)
        log.warning("the rewrite table was not restored; serving it empty", extra={"tenant": tenant})
        return False
