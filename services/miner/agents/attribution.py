"""The attribution agent and its window timer.

- ``attribute`` reads ``loopwise.events.v1`` and ``loopwise.impressions.v1``
  (co-partitioned by request), keeps one ``AttributionState`` per request in
  the table ``attribution`` (`attribution_windows.Windows`) and produces
  examples, preference pairs and prediction errors; records it cannot use are
  dead-lettered with a reason (a tombstone: ``empty_record``; an invalid event:
  its `loopwise.validation` reason; a record that raised while processed:
  ``processing_error``) and the batch goes on; valid turns are forwarded to the
  turns topic for reformulation mining.
- ``close_windows`` closes the windows the watermarks have passed, in chunks,
  and refreshes the gauges.

Delivery is at least once: after a crash, records between the last committed
offset and the crash are processed again; the table (recovered from its
changelog) makes them duplicates, and every output carries a deterministic
id for consumers that see one twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import faust

from loopwise import codec, stamps
from loopwise.v1 import events_pb2
from loopwise.validation import Limits, check_event

from ..attribution import FAKE, Attribution, AttributionConfig, Outputs
from ..attribution_windows import Windows
from ..debias import (
    ExposureCounter,
    ExposureModel,
    FixedPositions,
    ImpressionExposure,
    StoredCounts,
)
from ..metrics import MinerMetrics
from ..outputs import DeadLetters, Outbox
from ..recovery import ChangelogCatchUp, InputRewind, ReadPositions, RecoveryGate
from ..settings import MinerSettings
from ..tables import MinerTables
from ..topics import MinerTopics, turn_key

log = logging.getLogger(__name__)
ATTRIBUTED = ("impression", "click", "accept", "reject")


def position_model(settings: MinerSettings) -> Any:
    if settings.position_model == "em":
        from ..propensity import PositionBiasEM

        # Statistics only per closed request; the EM steps run on the close timer.
        return PositionBiasEM(n_positions=settings.em_positions, max_items=settings.em_items, iterations=0)
    if settings.position_model == "fixed":
        return FixedPositions()
    raise ValueError(f"LOOPWISE_POSITION_MODEL={settings.position_model!r}: expected em or fixed")


def exposure_model(settings: MinerSettings, tables: MinerTables) -> ExposureModel:
    if settings.exposure_model == "impressions":
        return ImpressionExposure(tables.exposure)
    if settings.exposure_model == "popularity":
        return ExposureCounter(eta=settings.exposure_eta, store=tables.exposure)
    raise ValueError(f"LOOPWISE_EXPOSURE_MODEL={settings.exposure_model!r}: expected impressions or popularity")


class AttributionAgents:
    """``attribute`` and ``close_windows`` over the table ``attribution``."""

    def __init__(self, app: faust.App, settings: MinerSettings, metrics: MinerMetrics, topics: MinerTopics,
                 tables: MinerTables, positions: ReadPositions, outbox: Outbox, dead: DeadLetters) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.topics = topics
        self.positions = positions
        self.outbox = outbox
        self.dead = dead
        self.attribution = Attribution(
            AttributionConfig(window_ms=settings.attribution_window_ms, clip=settings.ips_clip,
                              weights=settings.ips_weights, feedback_mode=settings.feedback_mode),
            position_model(settings), exposure_model(settings, tables))
        self.windows = Windows(self.attribution, tables.attribution, topics=topics.inputs,
                               idle_s=settings.idle_s, caught_up=positions.caught_up,
                               on_ahead=lambda _ms: metrics.clock_ahead.inc())
        catch_up = ChangelogCatchUp(app, tables.attribution, topics.inputs, settings,
                                    settings.catch_up_idle_s) if settings.changelog_catch_up else None
        self.recovery = RecoveryGate(app, self._rebuild, catch_up, on_ready=lambda: metrics.ready.set(1),
                                     rewind=InputRewind(app, topics.inputs))
        self.limits = Limits(max_future_ms=settings.max_future_s * 1000, max_age_ms=settings.max_age_s * 1000)
        self.tenants = frozenset(settings.tenants)
        self.turns = topics.turns.get_topic_name()

    def _rebuild(self) -> None:
        """The states and the exposure counts from their tables (after recovery)."""
        self.windows.rebuild()
        exposure = self.attribution.exposure
        if isinstance(exposure, StoredCounts):
            exposure.rebuild()
            log.info("exposure counts recovered", extra={"tenants": len(exposure.counts),
                                                         "items": sum(map(len, exposure.counts.values()))})

    async def on_rebalance(self, sender: Any = None, **kwargs: Any) -> None:
        self.recovery.reset()

    async def attribute(self, stream: faust.StreamT) -> None:
        async for events in stream.take_events(self.settings.batch_size, within=self.settings.batch_within_s):
            # Nothing is applied to the table while it is being rebuilt from its changelog.
            while not await self.recovery.ensure():
                await asyncio.sleep(0.05)
            for event in events:
                message = event.message
                key = event.key or b""
                try:
                    outputs = self._handle(key, event.value, message.topic, message.partition, message.offset)
                    if outputs is not None:
                        self._emit(key, outputs)
                except Exception as exc:  # noqa: BLE001 - one poison record must not stop the worker
                    self._failed(key, event.value, message.topic, message.partition, message.offset, exc)
            # The table's changelog and the outputs are on the broker before
            # these offsets can be committed: a crash re-reads, never skips.
            await self.outbox.flush()
            await self.app.producer.flush()

    def _handle(self, key: bytes, value: bytes | None, topic: str, partition: int, offset: int) -> Outputs | None:
        self.positions.record(topic, partition, offset)
        if not value:  # a tombstone (or an empty record): nothing to decode, nothing to attribute
            self.dead.send(key, b"", topic, partition, offset, "empty_record", "a record without a value")
            return None
        try:
            ev = codec.decode(value)
        except ValueError as exc:
            self.dead.send(key, value, topic, partition, offset, "undecodable", str(exc))
            return None
        problem = check_event(ev, tenants=self.tenants, now_ms=stamps.now_ms(), limits=self.limits)
        kind = ev.WhichOneof("body") or "none"
        self.metrics.records.labels(kind).inc()
        if problem is not None:
            self.dead.send(key, value, topic, partition, offset, *problem)
            return None
        if kind == "turn":
            self._forward_turn(ev, value)
            return None
        if kind not in ATTRIBUTED:
            return None
        if kind != "impression":
            self.metrics.feedback_received.inc()
        out = self.windows.process(key, ev, topic, partition)
        for reason, detail, bad in out.dead:
            self.dead.send(key, bad.SerializeToString(), topic, partition, offset, reason, detail)
        out.dead = []
        return out

    def _failed(self, key: bytes, value: bytes | None, topic: str, partition: int, offset: int,
                exc: Exception) -> None:
        """A record that raised while being processed: dead-lettered, the batch goes on.
        The table keeps the request's state as it was before the record (`Windows.process`
        stores only after the transition succeeded); its offset is committed with the batch,
        so a restarted worker does not read it again."""
        log.warning("record failed, dead-lettered", exc_info=exc,
                    extra={"topic": topic, "partition": partition, "offset": offset})
        self.dead.send(key, value or b"", topic, partition, offset, "processing_error",
                       f"{type(exc).__name__}: {exc}"[:500])

    def _forward_turn(self, event: events_pb2.Event, value: bytes) -> None:
        """To the turns topic, re-keyed by user (sent with the batch's outputs)."""
        self.metrics.turns.inc()
        self.outbox.add(self.turns, turn_key(event), value)

    async def close_windows(self) -> None:
        if self.app.rebalancing or self.app.in_recovery or not await self.recovery.ensure():
            return
        while True:  # in chunks: the agent and the consumer's heartbeats get the loop in between
            async with self.recovery.lock:
                out = self.windows.advance(limit=self.settings.close_chunk)
                for reason, detail, bad in out.dead:
                    self.dead.send(codec.record_key(bad), bad.SerializeToString(), "", -1, -1, reason, detail)
                out.dead = []
                self._emit(None, out)
                flush = getattr(self.attribution.exposure, "flush", None)
                if flush is not None:
                    flush()
            await self.outbox.flush()
            await self.app.producer.flush()
            if not self.windows.more() or not self.recovery.done:
                break
            await asyncio.sleep(0)
        fit = getattr(self.attribution.positions, "fit", None)
        if fit is not None and self.settings.em_steps:
            fit(self.settings.em_steps)
        self._gauges()

    def _gauges(self) -> None:
        m = self.metrics
        m.partition_skew.set(self.windows.lag_ms() / 1000)
        m.backlog.set(self.windows.pending())
        m.join_ratio_gauge.set(m.join_ratio())
        mark = self.windows.watermark()
        if mark:
            m.watermark_lag.set(max(time.time() - mark / 1000, 0.0))
        curve = self.attribution.positions.propensities()
        for i in range(min(len(curve), 10)):
            m.position_propensity.labels(str(i + 1)).set(min(float(curve[i]), 1.0))

    def _emit(self, key: bytes | None, out: Outputs) -> None:
        m = self.metrics
        m.feedback_attributed.inc(out.attributed)
        m.late.inc(out.late)
        m.duplicates.inc(out.duplicates)
        m.conflicts.inc(out.conflicts)
        for name, records in (("examples", out.examples), ("preferences", out.pairs), ("errors", out.errors)):
            if not records:
                continue
            topic = self.topics.outputs[name]
            add = self.outbox.add
            for record in records:
                record_key = key if key is not None else f"{record.tenant}|r|{record.request_id}".encode()
                add(topic, record_key, record.SerializeToString())
            m.emitted.labels(name).inc(len(records))
        for example in out.examples:
            if example.label > 0:
                m.propensity.observe(example.propensity)
            elif example.feedback_mode == FAKE:
                m.fake_negatives.inc()
