"""Every Prometheus object of the miner."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from loopwise.runtime import ConsumerLag


class MinerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.ready = Gauge("loopwise_miner_ready", "1 once the worker has its partitions", registry=r)
        self.records = Counter("loopwise_miner_records_total", "Records read", ["kind"], registry=r)
        # per input (topic, partition): set its source to `recovery.ReadPositions.lag`
        self.consumer_lag = ConsumerLag("loopwise_miner_consumer_lag_records", r)
        self.feedback_received = Counter("loopwise_miner_feedback_received_total",
                                         "Feedback events received (click, accept, reject)", registry=r)
        self.feedback_attributed = Counter("loopwise_miner_feedback_attributed_total",
                                           "Feedback joined to its impression in the window", registry=r)
        self.late = Counter("loopwise_miner_late_feedback_total", "Feedback after its window", registry=r)
        self.duplicates = Counter("loopwise_miner_duplicates_total", "Events seen before (same event id)",
                                  registry=r)
        self.conflicts = Counter("loopwise_miner_label_conflicts_total",
                                 "A second label for one candidate (the first wins)", registry=r)
        self.emitted = Counter("loopwise_miner_emitted_total", "Records produced", ["topic"], registry=r)
        self.fake_negatives = Counter("loopwise_miner_fake_negatives_total",
                                      "Examples emitted at once as negatives (LOOPWISE_FEEDBACK_MODE=fnw)",
                                      registry=r)
        self.dead = Counter("loopwise_miner_deadlettered_total", "Records dead-lettered", ["reason"], registry=r)
        self.backlog = Gauge("loopwise_miner_window_backlog", "Requests with an open or closed window kept",
                             registry=r)
        self.watermark_lag = Gauge("loopwise_miner_watermark_lag_seconds",
                                   "Wall clock minus the event-time watermark", registry=r)
        self.clock_ahead = Counter("loopwise_miner_clock_ahead_total",
                                   "Records whose client time was over 1 s past their received time "
                                   "(their watermark used the received time)", registry=r)
        self.partition_skew = Gauge("loopwise_miner_watermark_skew_seconds",
                                    "Most advanced minus slowest partition watermark", registry=r)
        self.join_ratio_gauge = Gauge("loopwise_miner_join_ratio",
                                      "Feedback attributed / feedback received, since start", registry=r)
        self.propensity = Histogram("loopwise_miner_example_propensity", "Propensity of emitted positives",
                                    registry=r, buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0))
        self.position_propensity = Gauge("loopwise_miner_position_propensity",
                                         "Estimated examination propensity by position", ["position"],
                                         registry=r)

        # reformulation mining
        self.turns = Counter("loopwise_miner_turns_total", "Turn events taken for reformulation mining", registry=r)
        self.sessions = Counter("loopwise_miner_sessions_total", "Sessions closed", registry=r)
        self.defects = Counter("loopwise_miner_defects_total", "Defective turns by kind", ["kind"], registry=r)
        self.defect_rate = Gauge("loopwise_miner_defect_rate", "Defective share of the most recent turns",
                                 registry=r)
        self.rewrite_hits = Counter("loopwise_miner_rewrite_hits_total", "Turns served with a rewrite rule",
                                    registry=r)
        self.rules_live = Gauge("loopwise_miner_rules_live", "Rewrite rules deployed", ["tenant"], registry=r)
        self.rules_created = Counter("loopwise_miner_rules_created_total", "Rewrite rules deployed", registry=r)
        self.rules_withdrawn = Counter("loopwise_miner_rules_withdrawn_total", "Rewrite rules withdrawn",
                                       ["reason"], registry=r)
        for reason in ("rollback", "blocklisted", "superseded", "canary"):  # exported at 0 from the start (alerts)
            self.rules_withdrawn.labels(reason)
        self.rules_by_kind = Gauge("loopwise_miner_rules_live_by_kind", "Rewrite rules deployed by kind "
                                   "(utterance, span) and stage (canary, live)", ["tenant", "kind", "stage"],
                                   registry=r)
        self.rules_promoted = Counter("loopwise_miner_rules_promoted_total", "Canary rules that beat their control",
                                      registry=r)
        self.canary_seconds = Histogram("loopwise_miner_canary_to_promoted_seconds",
                                        "Wall time from a rule's canary to its promotion", registry=r,
                                        buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600))
        self.rephrases = Counter("loopwise_miner_rephrases_total", "Rephrase links found, by what found them "
                                 "(text: similar words; interpretation: the same request by its slot values)",
                                 ["by"], registry=r)
        self.chain_states = Gauge("loopwise_miner_chain_states", "States of the reformulation chain", ["tenant"],
                                  registry=r)
        self.rules_caught_up = Gauge("loopwise_miner_rules_caught_up_seconds",
                                     "Event time (Unix seconds) before which every session is mined and the "
                                     "rewrite rules refreshed from it", ["tenant"], registry=r)
        self.checkpoint_bytes = Gauge("loopwise_miner_reformulation_checkpoint_bytes",
                                      "Size of the last reformulation checkpoint", registry=r)
        self.checkpoint_seconds = Histogram("loopwise_miner_reformulation_checkpoint_seconds",
                                            "Time to write the reformulation checkpoint (all changed tenants)",
                                            buckets=(.001, .005, .01, .05, .1, .25, .5, 1, 2.5), registry=r)
        self.sessions_replayed = Counter("loopwise_miner_reformulation_sessions_replayed_total",
                                         "Sessions read again after a restart or rebalance because the last "
                                         "checkpoint did not cover them yet", registry=r)
        self.rewrite_restored = Counter("loopwise_miner_rewrite_table_restored_total",
                                        "Rewrite tables found lost in Redis and rewritten from the miner's state",
                                        registry=r)
        self.redis_errors = Counter("loopwise_miner_redis_errors_total", "Failed writes of the rewrite table",
                                    registry=r)

    def join_ratio(self) -> float:
        received = self.registry.get_sample_value("loopwise_miner_feedback_received_total") or 0.0
        attributed = self.registry.get_sample_value("loopwise_miner_feedback_attributed_total") or 0.0
        return attributed / received if received else 1.0
