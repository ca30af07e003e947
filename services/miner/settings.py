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
    # Delayed feedback: "fnw" (fake negatives: every shown candidate at once as a negative,
    # a click as a positive duplicate, weighed by the trainer with FNW weights) or "window"
    # (a shown candidate's example waits for its window: a negative when it closes). fnw is
    # the default: measured better on bench/learning.py --quick (see the miner README).
    feedback_mode: str = "fnw"
    # Records handled between two flushes of the changelog and outputs.
    batch_size: int = 1000
    batch_within_s: float = 0.05
    # After Faust's table recovery, re-read the attribution changelog to its real
    # end until idle: a workaround for brokers that under-report end offsets (the
    # local Tansu; the local stack turns it on). Apache Kafka does not need it.
    changelog_catch_up: bool = False
    catch_up_idle_s: float = 0.5
    # A partition's input that delivered nothing for this long is idle: its
    # watermark then follows the wall clock (seconds).
    idle_s: float = 2.0
    # How often windows due by the watermark are closed (seconds).
    close_interval_s: float = 1.0
    # Clip M of the inverse-propensity weights; eta of the exposure propensity.
    ips_clip: float = 0.05
    # Weigh clicks by 1 / max(propensity, M) (the propensities are recorded on every example
    # either way). Off by default: through the stack on bench/learning.py --requests 15000 the
    # weights cost AUC (impressions, 2^22 cross buckets: 0.803 with them, 0.842 without; earlier,
    # with the popularity proxy, seed 7: 0.657 vs 0.696, seed 8: 0.653 vs 0.713), though on
    # bench/debiasing.py they gain on every seed at every p.
    ips_weights: bool = False
    exposure_eta: float = 0.5
    # Item exposure, both kept per tenant in the table ``exposure``: "impressions" (the share
    # of the tenant's impressions that showed the item: exposure is observed for served items)
    # or "popularity" (Rel-MF's proxy, (positives / max)^eta). On bench/debiasing.py (every pair,
    # 5 seeds, the trainer's defaults) the impressions' weights beat naive at every p and the
    # proxy's lost about 1 % at p >= 2 (cross in 2^20 buckets): an item-level share of clicks
    # ranks items as their click counts do. With the weights off (the default) the choice changes
    # what is recorded only.
    exposure_model: str = "impressions"
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
    # Reformulation mining: a session closes after this gap between turns (event time).
    session_gap_ms: int = 45_000
    session_max_turns: int = 32
    # A turn within this long after a defect that resembles it is a rephrase.
    rephrase_window_ms: int = 30_000
    # Chain: counts halve every half-life (event time); at most this many states.
    chain_half_life_s: float = 14 * 24 * 3600
    chain_max_states: int = 100_000
    # Rules: distinct users on every edge, success margin over the source, target success, source turns.
    rule_min_support: float = 3.0
    rule_min_margin: float = 0.1
    rule_min_target_success: float = 0.6
    rule_min_source_turns: int = 5
    # Rollback: one-sided test level and the rewritten turns it needs.
    rollback_alpha: float = 0.05
    rollback_min_turns: int = 30
    # Span (entity-level) rules beside whole-utterance ones; the defect rate the turns heard
    # with a span must have.
    span_rules: bool = True
    span_min_source_defect: float = 0.8
    # Carrier-pooled whole-utterance rules: the utterances that differ only by their carrier
    # phrase pool their evidence (`reformulation.carriers`).
    carrier_rules: bool = True
    # Canary: a new rule serves this share of users (1: everyone at once), promoted or withdrawn
    # at this one-sided level once canary and control have this many turns each.
    canary_share: float = 0.5
    canary_alpha: float = 0.05
    canary_min_turns: int = 5
    # How often rules are re-derived and Redis updated; how long the mine agent batches sessions.
    rules_interval_s: float = 1.0
    mine_within_s: float = 0.5
    # The mining state is checkpointed at most this often (seconds); sessions mined since are
    # read again from the sessions topic after a restart (the checkpoint keeps their offsets).
    reform_checkpoint_interval_s: float = 5.0
    # The defect-rate gauge covers this many most recent turns.
    defect_rate_turns: int = 5000
    # Kafka consumer group session timeout (short: fast joins and failover).
    kafka_session_timeout_s: float = 6.0
    # Longest wait of a fetch that found no data (ms; Faust's own is 1500). Brokers that hold
    # a fetch to its end (Tansu) add up to this much to every record's latency.
    kafka_fetch_max_wait_ms: int = 100
    max_future_s: int = 300
    max_age_s: int = 30 * 24 * 3600
