"""Every Prometheus object of the trainer (one registry per trainer)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from loopwise.runtime import ConsumerLag


class TrainerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.ready = Gauge("loopwise_trainer_ready", "1 once the consumer has its partitions", registry=r)
        self.records = Counter("loopwise_trainer_records_total", "Records read",
                               ["kind", "outcome"], registry=r)  # outcome: added, duplicate, other_tenant, dead
        # per (topic, partition) of examples and preferences: its source is `Trainer.lag`
        self.consumer_lag = ConsumerLag("loopwise_trainer_consumer_lag_records", r)
        self.commits = Counter("loopwise_trainer_commits_total", "Window flushes followed by an offset commit",
                               registry=r)
        self.window_rows = Gauge("loopwise_trainer_window_rows", "Rows in the replay window",
                                 ["tenant", "model", "kind"], registry=r)
        self.window_dropped = Gauge("loopwise_trainer_window_dropped_rows",
                                    "Rows dropped from the window by its bound, since start", registry=r)
        self.runs = Counter("loopwise_trainer_runs_total", "Training runs by outcome",
                            ["tenant", "model", "outcome"], registry=r)  # published, refused, failed
        self.run_seconds = Histogram("loopwise_trainer_run_seconds", "Duration of a training run's stages",
                                     ["stage"], registry=r,
                                     buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800))
        self.examples_per_s = Gauge("loopwise_trainer_examples_per_second",
                                    "Training throughput of the last run (examples x epochs / s)",
                                    ["tenant", "model"], registry=r)
        self.gate = Gauge("loopwise_trainer_gate_metric", "Holdout figures of the last run",
                          ["tenant", "model", "role", "metric"], registry=r)  # role: candidate, production, static
        self.parity = Gauge("loopwise_trainer_onnx_parity_max_abs_diff",
                            "Max |ONNX - torch| of the last export", ["tenant", "model"], registry=r)
        self.last_run = Gauge("loopwise_trainer_last_run_timestamp_seconds", "End of the last run",
                              ["tenant", "model"], registry=r)
        self.deltas = Counter("loopwise_trainer_deltas_total",
                              "Delta steps by outcome: published, empty (nothing touched), no_base (the serving "
                              "version takes no deltas), failed, restreamed (a new stream on the same tables)", ["tenant", "model", "outcome"], registry=r)
        self.delta_bytes = Counter("loopwise_trainer_delta_bytes_total", "Bytes of the deltas published",
                                   ["tenant", "model"], registry=r)
        self.delta_sequence = Gauge("loopwise_trainer_delta_sequence",
                                    "Sequence of the last delta published on the current base",
                                    ["tenant", "model"], registry=r)
        self.delta_heartbeat = Gauge("loopwise_trainer_delta_loop_heartbeat_timestamp_seconds",
                                     "End of the delta loop's last pass, whether or not it stepped (0: no delta "
                                     "loop, LOOPWISE_DELTAS off)", registry=r)
        self.delta_seconds = Histogram("loopwise_trainer_delta_step_seconds", "Duration of a delta step",
                                       registry=r, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
        self.published = Gauge("loopwise_trainer_published_version",
                               "Number of the last version the trainer published", ["tenant", "model"],
                               registry=r)
        self.rollbacks = Counter("loopwise_trainer_production_rollbacks_total",
                                 "Serving pointer moved back by the production watchdog (reason: below_static)",
                                 ["tenant", "model", "reason"], registry=r)
        self.online_auc = Gauge("loopwise_trainer_production_online_auc",
                                "Online AUC on the watchdog's final labels of the serving version: what it "
                                "served (scorer=production) and the static cold-start model (scorer=static)",
                                ["tenant", "model", "scorer"], registry=r)
        self.watchdog_labels = Gauge("loopwise_trainer_production_online_labels",
                                     "Final labels the watchdog judges the serving version on",
                                     ["tenant", "model"], registry=r)
        self.watchdog_pending = Gauge("loopwise_trainer_watchdog_pending_rows",
                                      "Served examples waiting for their final label", ["tenant", "model"],
                                      registry=r)
