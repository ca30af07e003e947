"""Miner settings (LOOPWISE_* environment variables, see loopwise.settings)."""

from __future__ import annotations

from dataclasses import dataclass

from loopwise.settings import BaseSettings


@dataclass(frozen=True)
class MinerSettings(BaseSettings):
    metrics_port: int = 9103
    # Faust application id: the consumer group and the prefix of its changelog topics.
    app_id: str = "loopwise-miner"
    # Attribution window, on the events' own clock.
    attribution_window_ms: int = 30 * 60 * 1000
    # Records handled between two flushes of the changelog and outputs.
    batch_size: int = 1000
    batch_within_s: float = 0.05
    # After Faust's table recovery, re-read the changelog to its real end (for
    # brokers that under-report end offsets, like the local Tansu) until idle.
    changelog_catch_up: bool = True
    catch_up_idle_s: float = 0.5
    # A partition's input that delivered nothing for this long is idle: its
    # watermark then follows the wall clock (seconds).
    idle_s: float = 2.0
    # How often windows due by the watermark are closed (seconds).
    close_interval_s: float = 1.0
    # Clip M of the inverse-propensity weights; eta of the exposure propensity.
    ips_clip: float = 0.05
    exposure_eta: float = 0.5
    # Position examination model: "em" (position-based click model fit by EM on
    # the stream) or "fixed" (1/sqrt(position)).
    position_model: str = "em"
    # EM: positions with their own propensity (deeper ones share the last),
    # items with their own relevance column, EM steps per close tick.
    em_positions: int = 20
    em_items: int = 10_000
    em_steps: int = 10
    # Windows closed between two yields to the event loop (and producer flushes).
    close_chunk: int = 2000
    # Faust's data directory (the tables are in memory; Faust still wants one).
    data_dir: str = ""
    # Kafka consumer group session timeout (short: fast joins and failover).
    session_timeout_s: float = 6.0
    max_future_s: int = 300
    max_age_s: int = 30 * 24 * 3600
