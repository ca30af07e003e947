"""Reformulation mining: Turn events -> sessions -> absorbing Markov chain ->
rewrite rules in Redis, withdrawn when they do harm.

Three steps, each on its own topic so each keeps its state where its records are:

1. The attribution agent forwards every valid ``Turn`` from ``loopwise.events.v1``
   (keyed by request) to the internal topic ``{app_id}-turns``, re-keyed
   ``tenant|u|user_id``: a user's turns meet on one partition.
2. ``sessions`` feeds them to the `SessionBook` over the changelog-backed
   table ``sessions`` (duplicates by event id; a session closes when a turn
   carries another client ``session_id``, or, for turns without one, arrives
   more than ``LOOPWISE_SESSION_GAP_MS`` after the last one), and the
   timer ``close_sessions`` closes the sessions their partition's watermark
   (event time clamped to the collector's received time, so one fast client
   clock cannot close everyone's sessions; wall clock once the partition is
   idle and read to its end)
   has passed by the gap. Closed sessions go to ``{app_id}-sessions`` (one
   partition, keyed by tenant) with a deterministic session id.
3. ``mine`` owns one `TenantMiner` per tenant (chain, rules, rollback monitor):
   it observes closed sessions (deduplicated by session id) and the timer
   ``refresh_rules``, every ``LOOPWISE_RULES_INTERVAL_S``, solves what changed,
   withdraws rules that do harm and deploys new ones: ``HSET``/``HDEL`` on the
   Redis rewrite table then ``INCR`` of its version counter
   (`loopwise.redis_keys`), one ``RewriteRuleRecord`` per change on
   ``loopwise.rewrites.v1``. The miner's state is checkpointed into the table
   ``reformulation`` at most every ``LOOPWISE_REFORM_CHECKPOINT_INTERVAL_S``
   (and after every refresh that changed rules): each changed tenant's state
   in chunks (``tenant|slot.chunk``, two slots in turn, so a checkpoint cut
   short leaves the previous one whole), then its ``tenant|meta`` (slot,
   size, the session ids it has seen), then ``|positions``: per partition of
   the sessions topic, the offset before which every session is in the
   checkpointed states. After a restart or a rebalance the states are
   loaded and the sessions topic is read again from ``|positions`` (not from
   the committed offsets): the sessions mined since the last checkpoint are
   mined again (at least once; those a tenant's newer checkpoint already
   holds are recognised by their ids), so nothing acknowledged is lost
   (``loopwise_miner_reformulation_sessions_replayed_total``). A restarted
   worker keeps its counts, its rules and its rollback evidence. After a
   restart (or a failed Redis write) the whole table is re-synced from the
   miner's state.
   Redis is a cache of that state: every refresh first checks that Redis
   still holds what the miner wrote (``_check_redis``: the version counter
   missing or below the miner's last ``INCR``, or the table empty while rules
   are live, as after a Redis restarted empty or a ``FLUSHALL``) and rewrites
   the whole table at once when it does not
   (``loopwise_miner_rewrite_table_restored_total``, a warning in the log).

Recovery (`..recovery.RecoveryGate`, as the attribution agent): after each
rebalance, once Faust has recovered, each agent's inputs are rewound to their
committed offsets (``InputRewind``; the sessions topic to the checkpoint's
``|positions``), its table caught up with its changelog
(``LOOPWISE_CHANGELOG_CATCH_UP``), then the session book / the tenants' miners
rebuilt from it, before any record is processed.

Caught up: each closed session carries its book's frontier (``through_ms``:
every session that ended before it is closed). After a refresh has deployed
what the sessions mined so far produced, the least frontier mined is
published per tenant: ``loopwise_miner_rules_caught_up_seconds{tenant}`` and
`redis_keys.rules_caught_up` (``loopwise rules status``). A backfill is mined
and its rules live once that passes its last event time.

A manual blocklist (``loopwise rules block``) lives in the Redis sets
`redis_keys.rewrite_blocklist`; it is read on every refresh: a blocked
source or target is never rewritten, and a live rule it matches is withdrawn.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from typing import Any

import faust
import redis.asyncio as aioredis

from loopwise import codec, redis_keys, stamps

from ..metrics import MinerMetrics
from ..recovery import ChangelogCatchUp, InputRewind, ReadPositions, RecoveryGate
from ..reformulation.carriers import CarrierConfig
from ..reformulation.chain import ChainConfig
from ..reformulation.defects import DefectConfig, DefectKind
from ..reformulation.pipeline import MiningConfig, TenantMiner
from ..reformulation.rules import RuleConfig
from ..reformulation.session_book import Session, SessionBook
from ..reformulation.sessions import TurnRecord
from ..reformulation.spans import SpanConfig
from ..settings import MinerSettings
from ..tables import MinerTables
from ..topics import MinerTopics, turn_key

log = logging.getLogger(__name__)

CHUNK = 512 * 1024  # bytes per checkpoint record (under Kafka's 1 MB default)
SEEN_SESSIONS = 20_000  # session ids remembered per tenant for dedupe
POSITIONS = b"|positions"  # sessions partition -> the offset every checkpointed state covers


def chunk_key(tenant: str, slot: int | None, i: int) -> bytes:
    """A checkpoint chunk's key (``slot`` None: the single-slot layout of older checkpoints)."""
    return (f"{tenant}|{i}" if slot is None else f"{tenant}|{slot}.{i}").encode()


def mining_config(settings: MinerSettings) -> MiningConfig:
    return MiningConfig(
        defects=DefectConfig(rephrase_window_ms=settings.rephrase_window_ms),
        chain=ChainConfig(half_life_ms=int(settings.chain_half_life_s * 1000), max_states=settings.chain_max_states),
        rules=RuleConfig(min_support=settings.rule_min_support, min_margin=settings.rule_min_margin,
                         min_target_success=settings.rule_min_target_success,
                         min_source_turns=settings.rule_min_source_turns),
        alpha=settings.rollback_alpha, min_turns_after=settings.rollback_min_turns,
        spans=SpanConfig(enabled=settings.span_rules, min_source_defect=settings.span_min_source_defect),
        canary_share=settings.canary_share, canary_alpha=settings.canary_alpha,
        canary_min_turns=settings.canary_min_turns, carriers=CarrierConfig(enabled=settings.carrier_rules))


class ReformulationAgents:
    """``sessions``, ``close_sessions``, ``mine`` and ``refresh_rules``, and their Redis client."""

    def __init__(self, app: faust.App, settings: MinerSettings, metrics: MinerMetrics, topics: MinerTopics,
                 tables: MinerTables, positions: ReadPositions) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.positions = positions
        self.config = mining_config(settings)
        self.sessions_topic = topics.sessions
        self.rewrites_topic = topics.rewrites
        self.checkpoints = tables.checkpoints
        turns, sessions = topics.turns.get_topic_name(), topics.sessions.get_topic_name()
        self.book = SessionBook(tables.sessions, gap_ms=settings.session_gap_ms,
                                max_turns=settings.session_max_turns, idle_s=settings.idle_s,
                                caught_up=lambda partition: positions.caught_up(turns, partition),
                                write_back=True)

        def catch_up(table: Any, inputs: tuple[str, ...]) -> ChangelogCatchUp | None:
            return ChangelogCatchUp(app, table, inputs, settings, settings.catch_up_idle_s) \
                if settings.changelog_catch_up else None

        # After each rebalance, once Faust has recovered: the inputs rewound to their committed
        # offsets (what Faust dropped while recovering is read again; duplicates are recognised),
        # the tables caught up with their changelogs, then the book / the miners rebuilt from them.
        self.book_gate = RecoveryGate(app, self.book.rebuild, catch_up(tables.sessions, (turns,)),
                                      rewind=InputRewind(app, (turns,)))
        self.mine_gate = RecoveryGate(app, self._load, catch_up(tables.checkpoints, (sessions,)),
                                      rewind=self._rewind_sessions)
        self.sessions_topic_name = sessions
        self.redis = aioredis.Redis.from_url(settings.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self.miners: dict[str, TenantMiner] = {}
        self.seen: dict[str, deque[str]] = {}
        self._dirty: set[str] = set()  # tenants whose state changed since the last checkpoint
        self._slots: dict[str, int] = {}  # tenant -> the slot of its last complete checkpoint
        self._positions: dict[int, int] = {}  # sessions partition -> next offset to mine
        self._checkpointed = time.monotonic()
        self._replay_to: dict[int, int] = {}  # sessions partition -> offset reached before the rewind
        self._resync: set[str] = set()  # tenants whose Redis table must be rewritten whole
        self._written: dict[str, int] = {}  # tenant -> the version counter after the miner's last write
        self._through: dict[str, int] = {}  # tenant -> the newest frontier of the sessions mined
        self._defects: deque[int] = deque(maxlen=settings.defect_rate_turns)  # 1 per defective turn

    async def on_rebalance(self, sender: Any = None, **kwargs: Any) -> None:
        self.book_gate.reset()
        self.mine_gate.reset()

    # -- 2. sessions ---------------------------------------------------------------------
    async def sessions(self, stream: faust.StreamT) -> None:
        async for events in stream.take_events(self.settings.batch_size, within=self.settings.batch_within_s):
            while not await self.book_gate.ensure():
                await asyncio.sleep(0.05)
            for event in events:
                message = event.message
                self.positions.record(message.topic, message.partition, message.offset)
                try:
                    ev = codec.decode(event.value)
                    turn = TurnRecord.from_event(ev)
                except (ValueError, TypeError) as exc:  # forwarded after validation: should not happen
                    log.error("undecodable turn skipped", extra={"error": repr(exc)})
                    continue
                added = self.book.add(event.key or turn_key(ev), ev.event_id, turn, message.partition,
                                      received_ms=ev.received_time_ms)
                if added.duplicate:
                    self.metrics.duplicates.inc()
                elif added.closed is not None:
                    self._send_session(added.closed)
            self.book.flush()  # the batch's table writes, before its offsets can commit
            await self.app.producer.flush()

    def _send_session(self, session: Session) -> None:
        self.sessions_topic.send_soon(key=session.tenant.encode(), value=session.to_bytes())
        self.metrics.sessions.inc()

    async def close_sessions(self) -> None:
        if not await self.book_gate.ensure():
            return
        closed = self.book.close(limit=self.settings.close_chunk)
        for session in closed:
            self._send_session(session)
        if closed:
            await self.app.producer.flush()

    # -- 3. mining -----------------------------------------------------------------------
    async def _rewind_sessions(self) -> None:
        """Seek this worker's sessions partitions to the offsets the checkpoint covers (to the
        committed ones for a checkpoint without positions, to the start without any)."""
        consumer = self.app.consumer
        committed = consumer._committed_offset
        saved = {int(p): int(o) for p, o in json.loads(self.checkpoints.get(POSITIONS) or b"{}").items()}
        any_state = any(key.endswith(b"|meta") for key in list(self.checkpoints.keys()))
        offsets = {}
        for tp in consumer.assignment():
            if tp.topic == self.sessions_topic_name:
                done = committed.get(tp) or 0
                offsets[tp] = saved.get(tp.partition, done if any_state else 0)
                self._replay_to[tp.partition] = max(done, self._positions.get(tp.partition, 0))
        self._positions = {tp.partition: o for tp, o in offsets.items()}
        if offsets:
            await consumer.seek_wait(offsets)
            log.info("sessions rewound to the reformulation checkpoint",
                     extra={"offsets": {f"{tp.topic}/{tp.partition}": o for tp, o in sorted(offsets.items())}})

    def _load(self) -> None:
        """The tenants' miners from their checkpoints (after recovery)."""
        self.miners, self.seen, self._slots = {}, {}, {}
        self._dirty.clear()
        for key in [k for k in list(self.checkpoints.keys()) if k.endswith(b"|meta")]:
            tenant = key.decode().rpartition("|")[0]
            info = json.loads(self.checkpoints[key])
            slot = info.get("slot")
            parts = [self.checkpoints.get(chunk_key(tenant, slot, i)) for i in range(info["chunks"])]
            blob = b"".join(p for p in parts if p is not None)
            if None in parts or len(blob) != info.get("bytes", len(blob)):
                log.error("incomplete reformulation checkpoint; starting this tenant empty", extra={"tenant": tenant})
                continue
            try:
                self.miners[tenant] = TenantMiner.from_bytes(blob, self.config)
            except (ValueError, KeyError, TypeError) as exc:
                log.error("unreadable reformulation checkpoint; starting this tenant empty",
                          extra={"tenant": tenant, "error": repr(exc)})
                continue
            self.seen[tenant] = deque(info.get("seen", []), maxlen=SEEN_SESSIONS)
            self._through[tenant] = int(info.get("through_ms", 0))
            if slot is not None:
                self._slots[tenant] = int(slot)
            self._resync.add(tenant)
        self._checkpointed = time.monotonic()
        log.info("reformulation state loaded", extra={"tenants": sorted(self.miners)})

    def _miner(self, tenant: str) -> TenantMiner:
        miner = self.miners.get(tenant)
        if miner is None:
            miner = self.miners[tenant] = TenantMiner(tenant, self.config)
            self.seen[tenant] = deque(maxlen=SEEN_SESSIONS)
        return miner

    def _checkpoint(self, tenant: str) -> None:
        """One tenant's state into the slot its last checkpoint does not use, then its meta."""
        blob = self.miners[tenant].to_bytes()
        slot = 1 - self._slots.get(tenant, 1)
        n = max(1, -(-len(blob) // CHUNK))
        for i in range(n):
            self.checkpoints[chunk_key(tenant, slot, i)] = blob[i * CHUNK:(i + 1) * CHUNK]
        meta = {"slot": slot, "chunks": n, "bytes": len(blob), "seen": list(self.seen.get(tenant, ())),
                "time_ms": stamps.now_ms(), "through_ms": self._through.get(tenant, 0)}
        self.checkpoints[f"{tenant}|meta".encode()] = json.dumps(meta, separators=(",", ":")).encode()
        self._slots[tenant] = slot
        self.metrics.checkpoint_bytes.set(len(blob))

    def checkpoint(self, force: bool = False) -> bool:
        """Checkpoint every changed tenant, then the sessions offsets they cover, when the
        interval has passed since the last checkpoint (or ``force``); whether it did."""
        now = time.monotonic()
        if not self._dirty or (not force and now - self._checkpointed < self.settings.reform_checkpoint_interval_s):
            return False
        for tenant in sorted(self._dirty):
            if tenant in self.miners:
                self._checkpoint(tenant)
        self._dirty.clear()
        self.checkpoints[POSITIONS] = json.dumps({str(p): o for p, o in self._positions.items()}).encode()
        self._checkpointed = time.monotonic()
        self.metrics.checkpoint_seconds.observe(self._checkpointed - now)
        return True

    async def mine(self, stream: faust.StreamT) -> None:
        async for events in stream.take_events(self.settings.batch_size, within=self.settings.mine_within_s):
            while not await self.mine_gate.ensure():
                await asyncio.sleep(0.05)
            for event in events:
                message = event.message
                self._positions[message.partition] = message.offset + 1
                if message.offset < self._replay_to.get(message.partition, -1):
                    self.metrics.sessions_replayed.inc()
                try:
                    session = Session.from_bytes(event.value)
                except (ValueError, KeyError, TypeError) as exc:
                    log.error("unreadable session skipped", extra={"error": repr(exc)})
                    continue
                miner = self._miner(session.tenant)
                seen = self.seen[session.tenant]
                if session.id in seen:
                    self.metrics.duplicates.inc()
                    continue
                seen.append(session.id)
                self._through[session.tenant] = max(self._through.get(session.tenant, 0), session.through_ms)
                tally = dict(miner.rephrases)
                self._observe_defects(session.turns, miner.observe_session(session.turns))
                for by, n in miner.rephrases.items():
                    if n > tally.get(by, 0):
                        self.metrics.rephrases.labels(by).inc(n - tally.get(by, 0))
                self._dirty.add(session.tenant)
            if self.checkpoint():
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

    async def refresh_rules(self) -> None:
        if not await self.mine_gate.ensure():
            return
        await self._check_redis()
        through = dict(self._through)  # what the rules refreshed below are made of
        refreshed: dict[str, int] = {}
        any_records = False
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
                if record.action in ("created", "canary"):
                    self.metrics.rules_created.inc()
                elif record.action == "promoted":
                    self.metrics.rules_promoted.inc()
                else:
                    reason = record.reason if record.reason in ("blocklisted", "superseded") else \
                        "canary" if record.reason.startswith("canary") else "rollback"
                    self.metrics.rules_withdrawn.labels(reason).inc()
            for ms in changes.promoted_after_ms:
                self.metrics.canary_seconds.observe(ms / 1000)
            if changes.records:
                self._dirty.add(tenant)
                any_records = True
            self.metrics.rules_live.labels(tenant).set(len(miner.rules))
            for (kind, stage), n in miner.rule_counts().items():
                self.metrics.rules_by_kind.labels(tenant, kind, stage).set(n)
            self.metrics.chain_states.labels(tenant).set(len(miner.chain))
            if tenant not in self._resync and through.get(tenant):
                refreshed[tenant] = through[tenant]
        # rule changes at once (the records are out); the counts on the interval, also once
        # the sessions stop coming
        if self.checkpoint(force=any_records):
            await self.app.producer.flush()
        await self._publish_caught_up(refreshed, stamps.now_ms())

    async def _publish_caught_up(self, through: dict[str, int], now_ms: int) -> None:
        """The caught-up signal of each tenant just refreshed: the metric, and Redis for the CLI."""
        if not through:
            return
        for tenant, ms in through.items():
            self.metrics.rules_caught_up.labels(tenant).set(ms / 1000)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for tenant, ms in through.items():
                    pipe.set(redis_keys.rules_caught_up(tenant),
                             json.dumps({"through_ms": ms, "refreshed_ms": now_ms}))
                await pipe.execute()
        except Exception as exc:  # noqa: BLE001 - written again at the next refresh
            log.warning("caught-up signal not written to Redis", extra={"error": repr(exc)})

    async def _check_redis(self) -> None:
        """Mark for a whole rewrite every table Redis lost since the miner wrote it."""
        tenants = [t for t in self.miners if t in self._written and t not in self._resync]
        if not tenants:
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for tenant in tenants:
                    pipe.get(redis_keys.rewrite_version(tenant))
                    pipe.hlen(redis_keys.rewrite_table(tenant))
                answers = await pipe.execute()
        except Exception as exc:  # noqa: BLE001 - Redis away: checked again at the next refresh
            log.warning("rewrite tables not checked", extra={"error": repr(exc)})
            return
        for i, tenant in enumerate(tenants):
            version, size = answers[2 * i], answers[2 * i + 1]
            lost = version is None or int(version) < self._written[tenant] or (size == 0 and self.miners[tenant].rules)
            if lost:
                self._resync.add(tenant)
                self.metrics.rewrite_restored.inc()
                log.warning("the rewrite table is gone from Redis; rewriting it from the miner's state",
                            extra={"tenant": tenant, "version": version and int(version),
                                   "written": self._written[tenant], "rules": len(self.miners[tenant].rules)})

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
                answers = await pipe.execute()
            self._written[tenant] = int(answers[-1])
            self._resync.discard(tenant)
        except Exception as exc:  # noqa: BLE001 - rewritten whole at the next refresh
            self._resync.add(tenant)
            self.metrics.redis_errors.inc()
            log.warning("rewrite table not written; re-synced at the next refresh",
                        extra={"tenant": tenant, "error": repr(exc)})

    async def close(self) -> None:
        await self.redis.aclose()
