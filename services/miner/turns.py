"""Reformulation mining in the miner's Faust app: Turn events -> sessions ->
absorbing Markov chain -> rewrite rules in Redis, withdrawn when they do harm.

Three steps, each on its own topic so each keeps its state where its records are:

1. The attribution agent forwards every valid ``Turn`` from ``loopwise.events.v1``
   (keyed by request) to the internal topic ``{app_id}-turns``, re-keyed
   ``tenant|u|user_id``: a user's turns meet on one partition.
2. ``sessions`` keeps one `SessionState` per (tenant, user) in the
   changelog-backed table ``sessions`` (with the ids of the user's recent
   events: a redelivered turn is a duplicate, not a "repeat"). A session
   closes when a turn arrives more than ``LOOPWISE_SESSION_GAP_MS`` after the
   last one, or when the partition's watermark (event time; wall clock once
   the partition is idle and read to its end) passes its last turn by the gap.
   Closed sessions go to ``{app_id}-sessions`` (one partition, keyed by tenant)
   with a deterministic session id.
3. ``mine`` owns one `TenantMiner` per tenant (chain, rules, rollback monitor):
   it observes closed sessions (deduplicated by session id) and, every
   ``LOOPWISE_RULES_INTERVAL_S``, solves what changed, withdraws rules that
   do harm and deploys new ones: ``HSET``/``HDEL`` on the Redis rewrite table
   then ``INCR`` of its version counter (`loopwise.redis_keys`), one
   ``RewriteRuleRecord`` per change on ``loopwise.rewrites.v1``. The miner's
   state is checkpointed after every batch into the table ``reformulation``
   (in chunks, keyed ``tenant|chunk``), before the batch's offsets can be
   committed: a restarted worker keeps its counts, its rules and its
   rollback evidence. After a restart (or a failed Redis write) the whole
   table is re-synced from the miner's state.

A manual blocklist (``loopwise rules block``) lives in the Redis sets
`redis_keys.rewrite_blocklist`; it is read on every refresh: a blocked
source or target is never rewritten, and a live rule it matches is withdrawn.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import faust
import redis.asyncio as aioredis

from loopwise import codec, redis_keys, stamps
from loopwise.v1 import events_pb2

from .metrics import MinerMetrics
from .reformulation.chain import ChainConfig
from .reformulation.defects import DefectConfig, DefectKind
from .reformulation.pipeline import MiningConfig, TenantMiner
from .reformulation.rules import RuleConfig
from .reformulation.sessions import SessionState, TurnRecord
from .settings import MinerSettings

log = logging.getLogger(__name__)

CHUNK = 512 * 1024  # bytes per checkpoint record (under Kafka's 1 MB default)
RECENT_IDS = 64  # event ids remembered per user for dedupe
SEEN_SESSIONS = 20_000  # session ids remembered per tenant for dedupe


def turn_key(event: events_pb2.Event) -> bytes:
    return f"{event.tenant}|u|{event.user_id}".encode()


def session_id(tenant: str, user: str, first_event_id: str) -> str:
    return hashlib.blake2b(f"{tenant}\x1f{user}\x1f{first_event_id}".encode(), digest_size=12).hexdigest()


def mining_config(settings: MinerSettings) -> MiningConfig:
    return MiningConfig(
        defects=DefectConfig(rephrase_window_ms=settings.rephrase_window_ms),
        chain=ChainConfig(half_life_ms=int(settings.chain_half_life_s * 1000), max_states=settings.chain_max_states),
        rules=RuleConfig(min_support=settings.rule_min_support, min_margin=settings.rule_min_margin,
                         min_target_success=settings.rule_min_target_success,
                         min_source_turns=settings.rule_min_source_turns),
        alpha=settings.rollback_alpha, min_turns_after=settings.rollback_min_turns)


class Reformulation:
    """The reformulation agents, timers and tables, added to the miner's Faust app."""

    def __init__(self, app: faust.App, settings: MinerSettings, metrics: MinerMetrics,
                 caught_up: Callable[[str, int], bool], read: dict[tuple[str, int], int]) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.caught_up = caught_up
        self.config = mining_config(settings)
        raw = {"key_serializer": "raw", "value_serializer": "raw"}
        self.turns_topic = app.topic(f"{settings.app_id}-turns", partitions=settings.topic_partitions,
                                     internal=True, **raw)
        self.sessions_topic = app.topic(f"{settings.app_id}-sessions", partitions=1, internal=True, **raw)
        self.rewrites_topic = app.topic(settings.topics.rewrites, **raw)
        self.sessions = app.Table("sessions", default=None, partitions=settings.topic_partitions,
                                  use_partitioner=True, key_type=bytes, value_type=bytes)
        self.checkpoints = app.Table("reformulation", default=None, partitions=1, use_partitioner=True,
                                     key_type=bytes, value_type=bytes)
        app.agent(self.turns_topic, name="sessions")(self._sessions)
        app.agent(self.sessions_topic, name="mine")(self._mine)
        app.timer(settings.close_interval_s, name="close_sessions")(self._close_sessions)
        app.timer(settings.rules_interval_s, name="refresh_rules")(self._refresh)
        self.redis = aioredis.Redis.from_url(settings.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self.miners: dict[str, TenantMiner] = {}
        self.seen: dict[str, deque[str]] = {}
        self._dirty: set[str] = set()  # tenants whose state changed since the last checkpoint
        self._resync: set[str] = set()  # tenants whose Redis table must be rewritten whole
        self._loaded = False
        self._due: dict[int, list[tuple[int, bytes]]] = {}  # partition -> heap of (due event time, key)
        self._streams: dict[int, list[float]] = {}  # partition -> [newest event time, wall time of last record]
        self._read = read  # (topic, partition) -> next offset to read, shared with `caught_up`
        self._rebuilt_sessions = False
        self._defects: deque[int] = deque(maxlen=settings.defect_rate_turns)  # 1 per defective turn
        app.on_rebalance_complete.connect(self._on_rebalance)

    async def _on_rebalance(self, sender: Any = None, **kwargs: Any) -> None:
        self._rebuilt_sessions = False
        self._loaded = False

    # -- 1. forwarding (called by the attribution agent) ----------------------------------
    def forward(self, outbox_add: Callable[[str, bytes, bytes], None], event: events_pb2.Event, value: bytes) -> None:
        self.metrics.turns.inc()
        outbox_add(self.turns_topic.get_topic_name(), turn_key(event), value)

    # -- 2. sessions ---------------------------------------------------------------------
    def _recovered(self) -> bool:
        recovery = self.app.tables.recovery
        return not (self.app.rebalancing or self.app.in_recovery or not recovery.completed.is_set())

    def _rebuild_sessions(self) -> None:
        self._due = {}
        now = time.monotonic()
        for key, raw in list(self.sessions.items()):
            data = json.loads(raw)
            state = SessionState.from_dict(data["state"])
            if state.turns:
                partition = int(data.get("p", 0))
                heapq.heappush(self._due.setdefault(partition, []), (state.last_ms + self.settings.session_gap_ms, key))
                stream = self._streams.setdefault(partition, [state.last_ms, now])
                stream[0] = max(stream[0], state.last_ms)
        self._rebuilt_sessions = True

    async def _sessions(self, stream: faust.StreamT) -> None:
        async for events in stream.take_events(self.settings.batch_size, within=self.settings.batch_within_s):
            while not self._recovered():
                await asyncio.sleep(0.05)
            if not self._rebuilt_sessions:
                self._rebuild_sessions()
            for event in events:
                message = event.message
                self._read[(message.topic, message.partition)] = message.offset + 1
                try:
                    ev = codec.decode(event.value)
                    turn = TurnRecord.from_event(ev)
                except (ValueError, TypeError) as exc:  # forwarded after validation: should not happen
                    log.error("undecodable turn skipped", extra={"error": repr(exc)})
                    continue
                self._add_turn(event.key or turn_key(ev), ev, turn, message.partition)
            await self.app.producer.flush()

    def _add_turn(self, key: bytes, ev: events_pb2.Event, turn: TurnRecord, partition: int) -> None:
        raw = self.sessions.get(key)
        data = json.loads(raw) if raw is not None else {"state": {"turns": []}, "ids": [], "first": ""}
        if ev.event_id in data["ids"]:
            self.metrics.duplicates.inc()
            return
        data["ids"] = (data["ids"] + [ev.event_id])[-RECENT_IDS:]
        state = SessionState.from_dict(data["state"])
        closed = state.add(turn, gap_ms=self.settings.session_gap_ms, max_turns=self.settings.session_max_turns)
        if closed:
            self._send_session(ev.tenant, ev.user_id, data.get("first", ""), closed)
            data["first"] = ev.event_id
        elif not data.get("first"):
            data["first"] = ev.event_id
        data["state"] = state.to_dict()
        data["p"] = partition
        self.sessions[key] = json.dumps(data, separators=(",", ":")).encode()
        heapq.heappush(self._due.setdefault(partition, []), (state.last_ms + self.settings.session_gap_ms, key))
        stream = self._streams.setdefault(partition, [turn.time_ms, time.monotonic()])
        stream[0] = max(stream[0], turn.time_ms)
        stream[1] = time.monotonic()

    def _send_session(self, tenant: str, user: str, first: str, turns: list[TurnRecord]) -> None:
        sid = session_id(tenant, user, first or f"{turns[0].time_ms}")
        record = {"id": sid, "tenant": tenant, "turns": [t.to_dict() for t in turns]}
        self.sessions_topic.send_soon(key=tenant.encode(), value=json.dumps(record, separators=(",", ":")).encode())
        self.metrics.sessions.inc()

    def _watermark(self, partition: int) -> float:
        stream = self._streams.get(partition)
        if stream is None:
            return 0.0
        newest, wall = stream
        idle = time.monotonic() - wall - self.settings.idle_s
        if idle > 0 and self.caught_up(self.turns_topic.get_topic_name(), partition):
            return newest + idle * 1000
        return newest

    async def _close_sessions(self) -> None:
        if not self._recovered():
            return
        if not self._rebuilt_sessions:
            self._rebuild_sessions()
        closed = 0
        for partition, due in self._due.items():
            mark = self._watermark(partition)
            while due and due[0][0] < mark and closed < self.settings.close_chunk:
                _, key = heapq.heappop(due)
                raw = self.sessions.get(key)
                if raw is None:
                    continue
                data = json.loads(raw)
                state = SessionState.from_dict(data["state"])
                turns = state.flush(int(mark), gap_ms=self.settings.session_gap_ms)
                if not turns:
                    continue  # a newer turn extended it (a newer heap entry exists)
                tenant, _, user = key.decode().partition("|u|")
                self._send_session(tenant, user, data.get("first", ""), turns)
                self.sessions.pop(key, None)
                closed += 1
        if closed:
            await self.app.producer.flush()

    # -- 3. mining -----------------------------------------------------------------------
    def _load(self) -> None:
        """The tenants' miners from their checkpoints (after recovery)."""
        chunks: dict[str, dict[int, bytes]] = {}
        for key, raw in list(self.checkpoints.items()):
            tenant, _, part = key.decode().rpartition("|")
            if part.isdigit():
                chunks.setdefault(tenant, {})[int(part)] = raw
        self.miners, self.seen = {}, {}
        for tenant, parts in chunks.items():
            meta = self.checkpoints.get(f"{tenant}|meta".encode())
            if meta is None:
                continue
            info = json.loads(meta)
            if sorted(parts)[: info["chunks"]] != list(range(info["chunks"])):
                log.error("incomplete reformulation checkpoint; starting this tenant empty", extra={"tenant": tenant})
                continue
            blob = b"".join(parts[i] for i in range(info["chunks"]))
            try:
                self.miners[tenant] = TenantMiner.from_bytes(blob, self.config)
            except (ValueError, KeyError, TypeError) as exc:
                log.error("unreadable reformulation checkpoint; starting this tenant empty",
                          extra={"tenant": tenant, "error": repr(exc)})
                continue
            self.seen[tenant] = deque(info.get("seen", []), maxlen=SEEN_SESSIONS)
            self._resync.add(tenant)
        self._loaded = True
        log.info("reformulation state loaded", extra={"tenants": sorted(self.miners)})

    def _miner(self, tenant: str) -> TenantMiner:
        miner = self.miners.get(tenant)
        if miner is None:
            miner = self.miners[tenant] = TenantMiner(tenant, self.config)
            self.seen[tenant] = deque(maxlen=SEEN_SESSIONS)
        return miner

    def _checkpoint(self, tenant: str) -> None:
        blob = self.miners[tenant].to_bytes()
        n = max(1, -(-len(blob) // CHUNK))
        for i in range(n):
            self.checkpoints[f"{tenant}|{i}".encode()] = blob[i * CHUNK:(i + 1) * CHUNK]
        meta = {"chunks": n, "bytes": len(blob), "seen": list(self.seen.get(tenant, ())), "time_ms": stamps.now_ms()}
        self.checkpoints[f"{tenant}|meta".encode()] = json.dumps(meta, separators=(",", ":")).encode()
        self.metrics.checkpoint_bytes.set(len(blob))

    async def _mine(self, stream: faust.StreamT) -> None:
        async for events in stream.take_events(self.settings.batch_size, within=self.settings.mine_within_s):
            while not self._recovered():
                await asyncio.sleep(0.05)
            if not self._loaded:
                self._load()
            for event in events:
                try:
                    record = json.loads(event.value)
                    tenant, sid = record["tenant"], record["id"]
                    turns = [TurnRecord(**t) for t in record["turns"]]
                except (ValueError, KeyError, TypeError) as exc:
                    log.error("unreadable session skipped", extra={"error": repr(exc)})
                    continue
                miner = self._miner(tenant)
                seen = self.seen[tenant]
                if sid in seen:
                    self.metrics.duplicates.inc()
                    continue
                seen.append(sid)
                self._observe_defects(turns, miner.observe_session(turns))
                self._dirty.add(tenant)
            for tenant in sorted(self._dirty):
                self._checkpoint(tenant)
            self._dirty.clear()
            await self.app.producer.flush()

    def _observe_defects(self, turns: list[TurnRecord], kinds: list[DefectKind]) -> None:
        m = self.metrics
        for turn, kind in zip(turns, kinds, strict=True):
            if turn.rule_id:
                m.rewrite_hits.inc()
            for flag in DefectKind:
                if flag and flag in kind:
                    m.defects.labels(flag.name.lower()).inc()
            self._defects.append(1 if kind else 0)
        if self._defects:
            m.defect_rate.set(sum(self._defects) / len(self._defects))

    async def _blocklist(self, tenant: str) -> tuple[set[str], set[str]]:
        sources, targets = await self.redis.smembers(redis_keys.rewrite_blocklist(tenant, "sources")), \
            await self.redis.smembers(redis_keys.rewrite_blocklist(tenant, "targets"))
        return {s.decode() for s in sources}, {t.decode() for t in targets}

    async def _refresh(self) -> None:
        if not self._recovered():
            return
        if not self._loaded:
            self._load()
        for tenant, miner in list(self.miners.items()):
            try:
                sources, targets = await self._blocklist(tenant)
            except Exception as exc:  # noqa: BLE001 - Redis away: rules wait, nothing is lost
                log.warning("rewrite blocklist unreadable; rules not refreshed", extra={"tenant": tenant,
                                                                                       "error": repr(exc)})
                continue
            blocked = miner.monitor.blocklist
            blocked.sources |= sources
            blocked.targets |= targets
            now = stamps.now_ms()
            changes = miner.refresh(now)
            for source, rule in list(miner.rules.items()):  # live rules the operator has blocked since
                if not blocked.allows(rule.source, rule.target, rewrite=rule.rewrite):
                    del miner.rules[source]
                    changes.delete.append(source)
                    changes.records.append(rule.record("withdrawn", time_ms=now, reason="blocklisted"))
            if changes or tenant in self._resync:
                await self._apply(tenant, miner, changes)
            for record in changes.records:
                record.event_id = record.event_id or stamps.new_event_id()
                self.rewrites_topic.send_soon(key=tenant.encode(), value=record.SerializeToString())
                if record.action == "created":
                    self.metrics.rules_created.inc()
                else:
                    reason = record.reason if record.reason in ("blocklisted", "superseded") else "rollback"
                    self.metrics.rules_withdrawn.labels(reason).inc()
            if changes.records:
                self._checkpoint(tenant)
                await self.app.producer.flush()
            self.metrics.rules_live.labels(tenant).set(len(miner.rules))
            self.metrics.chain_states.labels(tenant).set(len(miner.chain))

    async def _apply(self, tenant: str, miner: TenantMiner, changes: Any) -> None:
        table, version = redis_keys.rewrite_table(tenant), redis_keys.rewrite_version(tenant)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                if tenant in self._resync:
                    pipe.delete(table)
                    rules = miner.table()
                    if rules:
                        pipe.hset(table, mapping=rules)
                else:
                    if changes.delete:
                        pipe.hdel(table, *changes.delete)
                    if changes.put:
                        pipe.hset(table, mapping=changes.put)
                pipe.incr(version)
                await pipe.execute()
            self._resync.discard(tenant)
        except Exception as exc:  # noqa: BLE001 - rewritten whole at the next refresh
            self._resync.add(tenant)
            self.metrics.redis_errors.inc()
            log.warning("rewrite table not written; re-synced at the next refresh",
                        extra={"tenant": tenant, "error": repr(exc)})

    async def close(self) -> None:
        await self.redis.aclose()
