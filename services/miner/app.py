"""The miner's Faust app: one `faust.App`, built and wired from settings, no side effects at import.

`create_app` declares the topics (`topics.py`) and the changelog-backed tables
(`tables.py`), builds the agents (`agents/`) with what they share — the
metrics, the read positions (`recovery.py`), the outbox and the dead letters
(`outputs.py`) — and registers them:

====================  ========================  ==========================================
agent / timer         reads                     does
====================  ========================  ==========================================
``attribute``         events + impressions      attribution; turns to ``{app_id}-turns``
``close_windows``     (every close interval)    closes attribution windows
``sessions``          ``{app_id}-turns``        the session book
``close_sessions``    (every close interval)    closes idle sessions
``mine``              ``{app_id}-sessions``     chains, rules, rollback, checkpoints
``refresh_rules``     (every rules interval)    the Redis rewrite table, rule records
====================  ========================  ==========================================
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust

from loopwise import logs, runtime
from loopwise.kafka_security import faust_credentials
from loopwise.limits import MAX_RECORD_BYTES

from .agents import AttributionAgents, ReformulationAgents
from .metrics import MinerMetrics
from .outputs import DeadLetters, Outbox
from .recovery import ReadPositions, consumer_highwater
from .settings import MinerSettings
from .tables import create_tables
from .topics import create_topics
from .transport import use_fetch_wait


@dataclass
class Miner:
    """The built app and what runs beside it."""

    app: faust.App
    settings: MinerSettings
    metrics: MinerMetrics
    outbox: Outbox
    reformulation: ReformulationAgents

    async def stop(self, sender: Any = None, **kwargs: Any) -> None:
        await self.outbox.stop()
        await self.reformulation.close()


def faust_app(settings: MinerSettings) -> faust.App:
    data_dir = Path(settings.data_dir or Path(tempfile.gettempdir()) / "loopwise-miner")
    data_dir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id, broker=f"kafka://{settings.kafka_bootstrap}", store="memory://",
        topic_partitions=settings.topic_partitions, web_enabled=False,
        broker_session_timeout=settings.kafka_session_timeout_s, broker_heartbeat_interval=settings.kafka_session_timeout_s / 3,
        consumer_auto_offset_reset="earliest", producer_acks=-1, stream_wait_empty=False,
        producer_max_request_size=MAX_RECORD_BYTES,
        broker_commit_every=1000, broker_commit_interval=1.0, table_standby_replicas=0,
        datadir=str(data_dir / f"{settings.app_id}-data"), broker_credentials=faust_credentials(settings),
    )
    use_fetch_wait(app, settings.kafka_fetch_max_wait_ms)
    return app


def create_app(settings: MinerSettings | None = None) -> Miner:
    settings = settings or MinerSettings.from_env()
    app = faust_app(settings)
    topics = create_topics(app, settings)
    tables = create_tables(app, settings)
    metrics = MinerMetrics()
    positions = ReadPositions(consumer_highwater(app))
    metrics.consumer_lag.source = positions.lag
    outbox = Outbox(settings)
    reformulation = ReformulationAgents(app, settings, metrics, topics, tables, positions)
    attribution = AttributionAgents(app, settings, metrics, topics, tables, positions, outbox,
                                    DeadLetters(topics.deadletter, metrics))

    app.agent(topics.turns, name="sessions")(reformulation.sessions)
    app.agent(topics.sessions, name="mine")(reformulation.mine)
    app.timer(settings.close_interval_s, name="close_sessions")(reformulation.close_sessions)
    app.timer(settings.rules_interval_s, name="refresh_rules")(reformulation.refresh_rules)
    app.agent(topics.source, name="attribute")(attribution.attribute)
    app.timer(settings.close_interval_s, name="close_windows")(attribution.close_windows)
    app.on_rebalance_complete.connect(reformulation.on_rebalance)
    app.on_rebalance_complete.connect(attribution.on_rebalance)

    miner = Miner(app, settings, metrics, outbox, reformulation)
    app.on_before_shutdown.connect(miner.stop)
    return miner


def main() -> None:
    settings = MinerSettings.from_env()
    logs.setup(settings.log_level)
    miner = create_app(settings)
    # /metrics, /healthz and /readyz on one port (ready: the loopwise_miner_ready gauge).
    # Faust's worker handles SIGTERM/SIGINT; /readyz answers 503 from the start of its shutdown.
    registry = miner.metrics.registry
    http = runtime.MetricsServer(registry, ready=runtime.ready_metric(registry, "loopwise_miner_ready"))

    async def drain(sender: Any = None, **kwargs: Any) -> None:
        http.drain()

    miner.app.on_before_shutdown.connect(drain)
    if settings.metrics_port >= 0:
        http.start(settings.metrics_host, settings.metrics_port)
    worker = faust.Worker(miner.app, loglevel=settings.log_level.lower().replace("warning", "warn"),
                          override_logging=False)
    worker.execute_from_commandline()
