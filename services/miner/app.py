"""The miner's Faust app: one `faust.App`, built from settings, no side effects at import.

Agents:
- ``attribute`` reads ``loopwise.events.v1`` and ``loopwise.impressions.v1``
  (co-partitioned by request: both are keyed ``tenant|r|request_id``), keeps
  one `AttributionState` per request in the changelog-backed table
  ``attribution`` and produces examples, preference pairs and prediction
  errors; records it cannot use go to ``loopwise.deadletter.v1`` with a reason.
- a timer closes the windows the watermark has passed.

Delivery is at least once: after a crash, records between the last committed
offset and the crash are processed again; the table (recovered from its
changelog) makes them duplicates, and every output carries a deterministic
id for consumers that see one twice.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import TP
from prometheus_client import start_http_server

from loopwise import codec, stamps
from loopwise.v1 import learning_pb2
from loopwise.validation import Limits, check_event

from .attribution import Attribution, AttributionConfig, Outputs
from .debias import ExposureCounter, FixedPositions
from .metrics import MinerMetrics
from .outbox import Outbox
from .settings import MinerSettings
from .turns import Reformulation
from .window import Windows

log = logging.getLogger(__name__)

ATTRIBUTED = ("impression", "click", "accept", "reject")


def position_model(settings: MinerSettings) -> Any:
    if settings.position_model == "em":
        from .propensity import PositionBiasEM

        # Statistics only per closed request; the EM steps run on the close timer.
        return PositionBiasEM(n_positions=settings.em_positions, max_items=settings.em_items, iterations=0)
    if settings.position_model == "fixed":
        return FixedPositions()
    raise ValueError(f"LOOPWISE_POSITION_MODEL={settings.position_model!r}: expected em or fixed")


class Miner:
    """The app, its topics, its table and the attribution state machine."""

    def __init__(self, settings: MinerSettings) -> None:
        self.settings = settings
        self.metrics = MinerMetrics()
        topics = settings.topics
        data_dir = Path(settings.data_dir or Path(tempfile.gettempdir()) / "loopwise-miner")
        data_dir.mkdir(parents=True, exist_ok=True)
        self.app = faust.App(
            settings.app_id, broker=f"kafka://{settings.kafka_bootstrap}", store="memory://",
            topic_partitions=settings.topic_partitions, web_enabled=False,
            broker_session_timeout=settings.session_timeout_s, broker_heartbeat_interval=settings.session_timeout_s / 3,
            consumer_auto_offset_reset="earliest", producer_acks=-1, stream_wait_empty=False,
            broker_commit_every=1000, broker_commit_interval=1.0, table_standby_replicas=0,
            datadir=str(data_dir / f"{settings.app_id}-data"),
        )
        raw = {"key_serializer": "raw", "value_serializer": "raw"}
        self.source = self.app.topic(topics.events, topics.impressions, **raw)
        self.deadletter = self.app.topic(topics.deadletter, **raw)
        self.output_names = {name: getattr(topics, name) for name in ("examples", "preferences", "errors")}
        self.table = self.app.Table("attribution", default=None, partitions=settings.topic_partitions,
                                    use_partitioner=True, key_type=bytes, value_type=bytes)
        self.attribution = Attribution(
            AttributionConfig(window_ms=settings.attribution_window_ms, clip=settings.ips_clip),
            position_model(settings), ExposureCounter(eta=settings.exposure_eta))
        self.windows = Windows(self.attribution, self.table, topics=(topics.events, topics.impressions),
                               idle_s=settings.idle_s, caught_up=self._caught_up)
        self._read: dict[tuple[str, int], int] = {}  # (topic, partition) -> next offset to read
        self.outbox = Outbox(settings.kafka_bootstrap)
        self.reformulation = Reformulation(self.app, settings, self.metrics, self._caught_up, self._read)
        self.app.on_before_shutdown.connect(self._on_shutdown)
        self.limits = Limits(max_future_ms=settings.max_future_s * 1000, max_age_ms=settings.max_age_s * 1000)
        self.tenants = frozenset(settings.tenants)
        self._rebuilt = False
        self._rebuild_lock = asyncio.Lock()
        self.app.agent(self.source, name="attribute")(self._attribute)
        self.app.timer(settings.close_interval_s, name="close_windows")(self._close_windows)
        self.app.on_rebalance_complete.connect(self._on_rebalance)
        self.metrics_port = 0

    def start_metrics(self) -> None:
        if self.settings.metrics_port >= 0:
            httpd, _ = start_http_server(self.settings.metrics_port, addr=self.settings.grpc_host,
                                         registry=self.metrics.registry)
            self.metrics_port = httpd.server_port

    async def _on_shutdown(self, sender: Any = None, **kwargs: Any) -> None:
        await self.outbox.stop()
        await self.reformulation.close()

    async def _on_rebalance(self, sender: Any = None, **kwargs: Any) -> None:
        self._rebuilt = False  # partitions (and table contents) changed: re-index after recovery

    async def _attribute(self, stream: faust.StreamT) -> None:
        async for events in stream.take_events(self.settings.batch_size, within=self.settings.batch_within_s):
            # Nothing is applied to the table while it is being rebuilt from its changelog.
            while not await self._ensure_rebuilt():
                await asyncio.sleep(0.05)
            for event in events:
                message = event.message
                key = event.key or b""
                outputs = self._handle(key, event.value, message.topic, message.partition, message.offset)
                if outputs is not None:
                    self._emit(key, outputs)
            # The table's changelog and the outputs are on the broker before
            # these offsets can be committed: a crash re-reads, never skips.
            await self.outbox.flush()
            await self.app.producer.flush()

    def _caught_up(self, topic: str, partition: int) -> bool:
        """Whether the consumer has read a partition up to its high-water mark (unknown: yes)."""
        try:
            high = self.app.consumer.highwater(TP(topic, partition))
        except Exception:  # noqa: BLE001 - no consumer or no fetch yet: fall back to the idle timeout
            return True
        read = self._read.get((topic, partition))
        if high is None or read is None:
            # nothing read from it in this run (e.g. fully consumed before a restart):
            # its idle timeout decides, a stale high-water mark must not hold it forever
            return True
        return read >= high

    def _handle(self, key: bytes, value: bytes, topic: str, partition: int, offset: int) -> Outputs | None:
        self._read[(topic, partition)] = offset + 1
        try:
            ev = codec.decode(value)
        except ValueError as exc:
            self._dead(key, value, topic, partition, offset, "undecodable", str(exc))
            return None
        problem = check_event(ev, tenants=self.tenants, now_ms=stamps.now_ms(), limits=self.limits)
        kind = ev.WhichOneof("body") or "none"
        self.metrics.records.labels(kind).inc()
        if problem is not None:
            self._dead(key, value, topic, partition, offset, *problem)
            return None
        if kind == "turn":
            self.reformulation.forward(self.outbox.add, ev, value)
            return None
        if kind not in ATTRIBUTED:
            return None
        if kind != "impression":
            self.metrics.feedback_received.inc()
        out = self.windows.process(key, ev, topic, partition)
        for reason, detail, bad in out.dead:
            self._dead(key, bad.SerializeToString(), topic, partition, offset, reason, detail)
        out.dead = []
        return out

    async def _catch_up_changelog(self) -> None:
        """Re-read this worker's changelog partitions to their real end.

        Faust recovers a table up to the end offsets the broker reports; a
        broker that under-reports them (Tansu does, by whole batches) leaves
        the newest states out. Reading until idle and applying every record
        in order (last write wins, None deletes) restores exactly what a full
        recovery would. Off (LOOPWISE_CHANGELOG_CATCH_UP=false) on Apache Kafka
        with large changelogs.
        """
        topic = self.table.changelog_topic.get_topic_name()
        partitions = sorted({tp.partition for tp in self.app.consumer.assignment() if tp.topic in
                            (self.settings.topics.events, self.settings.topics.impressions)})
        if not partitions:
            return
        consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap, enable_auto_commit=False,
                                    group_id=None, auto_offset_reset="earliest")
        await consumer.start()
        applied = 0
        try:
            tps = [TopicPartition(topic, p) for p in partitions]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            idle_since = time.monotonic()
            while time.monotonic() - idle_since < self.settings.catch_up_idle_s:
                batch = await consumer.getmany(timeout_ms=100, max_records=10_000)
                for records in batch.values():
                    for record in records:
                        if record.value is None:
                            self.table.data.pop(record.key, None)
                        else:
                            self.table.data[record.key] = record.value
                        applied += 1
                    idle_since = time.monotonic()
        finally:
            await consumer.stop()
        log.info("changelog caught up", extra={"records": applied, "partitions": partitions})

    async def _ensure_rebuilt(self) -> bool:
        """After a recovery: catch the table up with its changelog and re-index its windows,
        once, while neither the agent nor the timer touches the table."""
        if self._rebuilt:
            return True
        async with self._rebuild_lock:
            if self._rebuilt:
                return True
            recovery = self.app.tables.recovery
            if self.app.rebalancing or self.app.in_recovery or not recovery.completed.is_set():
                return False
            if self.settings.changelog_catch_up:
                await self._catch_up_changelog()
            self.windows.rebuild()
            self._rebuilt = True
            self.metrics.ready.set(1)
            return True

    async def _close_windows(self) -> None:
        if self.app.rebalancing or self.app.in_recovery or not await self._ensure_rebuilt():
            return
        while True:  # in chunks: the agent and the consumer's heartbeats get the loop in between
            async with self._rebuild_lock:
                out = self.windows.advance(limit=self.settings.close_chunk)
                for reason, detail, bad in out.dead:
                    self._dead(codec.record_key(bad), bad.SerializeToString(), "", -1, -1, reason, detail)
                out.dead = []
                self._emit(None, out)
            await self.outbox.flush()
            await self.app.producer.flush()
            if not self.windows.more() or not self._rebuilt:
                break
            await asyncio.sleep(0)
        fit = getattr(self.attribution.positions, "fit", None)
        if fit is not None and self.settings.em_steps:
            fit(self.settings.em_steps)
        self.metrics.partition_skew.set(self.windows.lag_ms() / 1000)
        self.metrics.backlog.set(self.windows.pending())
        self.metrics.join_ratio_gauge.set(self.metrics.join_ratio())
        mark = self.windows.watermark()
        if mark:
            self.metrics.watermark_lag.set(max(time.time() - mark / 1000, 0.0))
        curve = self.attribution.positions.propensities()
        for i in range(min(len(curve), 10)):
            self.metrics.position_propensity.labels(str(i + 1)).set(min(float(curve[i]), 1.0))

    def _emit(self, key: bytes | None, out: Outputs) -> None:
        m = self.metrics
        m.feedback_attributed.inc(out.attributed)
        m.late.inc(out.late)
        m.duplicates.inc(out.duplicates)
        m.conflicts.inc(out.conflicts)
        for name, records in (("examples", out.examples), ("preferences", out.pairs), ("errors", out.errors)):
            if not records:
                continue
            topic = self.output_names[name]
            add = self.outbox.add
            for record in records:
                record_key = key if key is not None else f"{record.tenant}|r|{record.request_id}".encode()
                add(topic, record_key, record.SerializeToString())
            m.emitted.labels(name).inc(len(records))
        for example in out.examples:
            if example.label > 0:
                m.propensity.observe(example.propensity)

    def _dead(self, key: bytes, payload: bytes, topic: str, partition: int, offset: int, reason: str,
              detail: str) -> None:
        self.metrics.dead.labels(reason).inc()
        record = learning_pb2.DeadLetter(topic=topic, partition=partition, offset=offset, reason=reason,
                                         detail=detail, payload=payload, time_ms=stamps.now_ms(),
                                         service="miner")
        self.deadletter.send_soon(key=key, value=record.SerializeToString())
        log.warning("dead-lettered", extra={"reason": reason, "detail": detail, "topic": topic,
                                            "partition": partition, "offset": offset})


def create_app(settings: MinerSettings | None = None) -> Miner:
    return Miner(settings or MinerSettings.from_env())


def main() -> None:
    from loopwise import logs

    settings = MinerSettings.from_env()
    logs.setup(settings.log_level)
    miner = create_app(settings)
    miner.start_metrics()
    worker = faust.Worker(miner.app, loglevel=settings.log_level.lower().replace("warning", "warn"),
                          override_logging=False)
    worker.execute_from_commandline()
