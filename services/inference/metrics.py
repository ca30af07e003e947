"""Every Prometheus object of the inference service."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from loopwise.grpcserver import RpcMetrics


class InferenceMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.rpc = RpcMetrics("inference", r)
        self.candidates = Histogram("loopwise_inference_rank_candidates", "Candidates per Rank call",
                                    registry=r, buckets=(1, 10, 50, 100, 200, 500, 1000, 5000, 10000))
        self.score_seconds = Histogram("loopwise_inference_score_seconds",
                                       "Feature building + model run per Rank call", registry=r,
                                       buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.05))
        self.impressions_emitted = Counter("loopwise_inference_impressions_emitted_total",
                                           "Impressions acked by the broker", registry=r)
        self.impressions_dropped = Counter(
            "loopwise_inference_impressions_dropped_total",
            "Impressions not emitted, by reason: buffer_full, shutdown, abandoned (the call was cancelled "
            "or past its deadline), undeliverable (not acked within the retry time), deadletter_failed",
            ["reason"], registry=r)
        self.impression_errors = Counter("loopwise_inference_impression_errors_total",
                                         "Failed impression produce attempts (retried within a bound)",
                                         registry=r)
        self.impressions_dead_lettered = Counter(
            "loopwise_inference_impressions_dead_lettered_total",
            "Impressions sent to the dead-letter topic instead, by reason (event_too_large, rejected_by_broker)",
            ["reason"], registry=r)
        self.impressions_trimmed = Counter("loopwise_inference_impressions_trimmed_total",
                                           "Impressions emitted without a part to fit the event size limit",
                                           ["part"], registry=r)
        self.impressions_refused = Counter("loopwise_inference_impressions_too_large_total",
                                           "Rank calls refused because their impression would exceed the "
                                           "event size limit", registry=r)
        self.impressions_degraded = Gauge("loopwise_inference_impressions_degraded",
                                          "1 while impressions cannot be delivered (no producer, a batch "
                                          "failing); Rank keeps serving", registry=r)
        self.impression_buffer = Gauge("loopwise_inference_impression_buffer",
                                       "Impressions waiting to be produced", registry=r)
        self.model_info = Info("loopwise_inference_model", "Model version serving", ["tenant", "model"],
                               registry=r)
        self.model_version = Gauge("loopwise_inference_model_version",
                                   "Version number (v<N>: N) this replica serves (role serving) and the one "
                                   "its pointer asks for (role wanted); they differ while a version is "
                                   "loading or refused", ["tenant", "model", "role"], registry=r)
        self.model_loads = Counter("loopwise_inference_model_loads_total", "Model load attempts",
                                   ["tenant", "model", "result"], registry=r)
        self.models_serving = Gauge("loopwise_inference_models_serving", "Models loaded and serving",
                                    registry=r)
        self.model_swaps = Counter("loopwise_inference_model_swaps_total",
                                   "Versions switched to while serving (hot swaps)", ["tenant", "model"],
                                   registry=r)
        self.model_refusals = Counter("loopwise_inference_model_refusals_total",
                                      "Versions refused (the old one keeps serving), by reason",
                                      ["tenant", "model", "reason"], registry=r)
        self.swap_seconds = Histogram("loopwise_inference_model_swap_seconds",
                                      "From a new version seen (pointer, store or announcement) to serving it",
                                      ["tenant", "model"], registry=r,
                                      buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30))
        self.nonfinite_scores = Counter("loopwise_inference_nonfinite_scores_total",
                                        "Rank calls whose model answered non-finite scores, by what answered "
                                        "instead (fallback: the previous good version; failed: an error)",
                                        ["tenant", "model", "version", "result"], registry=r)
        self.model_fallbacks = Counter("loopwise_inference_model_fallbacks_total",
                                       "Versions served instead of the pointer's because it cannot serve "
                                       "and nothing else was serving (e.g. at start)",
                                       ["tenant", "model", "reason"], registry=r)
        self.announcements = Counter("loopwise_inference_model_announcements_total",
                                     "ModelAnnouncements read from the models topic, by result",
                                     ["result"], registry=r)
        self.rewrite_rules = Gauge("loopwise_inference_rewrite_rules", "Rules in the local rewrite table copy",
                                   ["tenant"], registry=r)
        self.rewrite_age = Gauge("loopwise_inference_rewrite_table_age_seconds",
                                 "Seconds since the local rewrite table copy was last confirmed current",
                                 ["tenant"], registry=r)
        self.rewrite_refreshes = Counter("loopwise_inference_rewrite_refreshes_total",
                                         "Rewrite table reads from Redis (HGETALL) and failed polls",
                                         ["result"], registry=r)
        self.rewrites = Counter("loopwise_inference_rewrites_total", "Rewrite calls by outcome",
                                ["outcome"], registry=r)
        # Error memory (memory/): fill, writes, lag, compensation, prequential scores.
        self.memory_fill = Gauge("loopwise_inference_memory_fill",
                                 "Fraction of the serving version's error sketch buckets holding anything",
                                 ["tenant", "model"], registry=r)
        self.memory_bytes = Gauge("loopwise_inference_memory_bytes", "Bytes of one version's error sketch",
                                  ["tenant", "model"], registry=r)
        self.errors_read = Counter(
            "loopwise_inference_errors_read_total",
            "Records of the errors topic read (once per replica, for the error memory and the deltas' guard), "
            "by result: decoded, malformed (undecodable)", ["result"], registry=r)
        self.memory_writes = Counter(
            "loopwise_inference_memory_writes_total",
            "Prediction errors read for the error memory, by result: written, pending (version not serving "
            "here yet), ignored (mode off, a tenant not served here), malformed (wrong key size, non-finite; "
            "undecodable records: loopwise_inference_errors_read_total)",
            ["tenant", "model", "result"], registry=r)
        self.memory_resets = Counter("loopwise_inference_memory_resets_total",
                                     "Error memories started fresh (a version started serving)",
                                     ["tenant", "model"], registry=r)
        self.memory_lag = Histogram("loopwise_inference_memory_lag_seconds",
                                    "From a prediction error produced to written in the memory", registry=r,
                                    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 60))
        self.memory_compensation = Histogram(
            "loopwise_inference_memory_compensation",
            "Mean |compensated - base| probability per Rank call, by mode (shadow: computed, not served)",
            ["mode"], registry=r, buckets=(0.0001, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5))
        self.memory_consumer_up = Gauge("loopwise_inference_memory_consumer_up",
                                        "1 while the errors topic is read into the error memory", registry=r)
        self.memory_scored = Counter("loopwise_inference_memory_scored_total",
                                     "Prediction errors scored before being written (prequential)",
                                     ["tenant", "model"], registry=r)
        self.memory_squared_error = Counter(
            "loopwise_inference_memory_squared_error_total",
            "Sum of (score - label)^2 of the scored errors by scorer: base (served prediction) or memory "
            "(compensated by the memory as it was before the error); / scored_total = Brier score",
            ["tenant", "model", "scorer"], registry=r)
        self.memory_score_bins = Counter(
            "loopwise_inference_memory_score_bin_total",
            "Scored errors by scorer, label (0/1) and score bin (upper edge, 0.05 wide): the bins give "
            "online AUC of base vs memory", ["tenant", "model", "scorer", "label", "bin"], registry=r)

        # Sparse deltas (deltas*.py).
        self.deltas = Counter(
            "loopwise_inference_deltas_total",
            "Delta records read, by result: applied, pending (waits for an earlier sequence), duplicate, "
            "stale_stream, rolled_back, pending_full, other_tenant; rejected: malformed, bad_layout, bad_ids, "
            "non_finite", ["tenant", "model", "result"], registry=r)
        self.delta_bytes = Counter("loopwise_inference_delta_bytes_total", "Bytes of delta records read",
                                   registry=r)
        self.delta_sequence = Gauge("loopwise_inference_delta_sequence",
                                    "Delta sequence applied on top of the serving version (0: none)",
                                    ["tenant", "model"], registry=r)
        latency = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 20, 60)
        self.delta_example_to_applied = Histogram(
            "loopwise_inference_delta_example_to_applied_seconds",
            "From the oldest example of a delta produced to the delta applied here (live deltas)",
            registry=r, buckets=latency)
        self.delta_created_to_applied = Histogram(
            "loopwise_inference_delta_created_to_applied_seconds",
            "From a delta created by the trainer to applied here (live deltas)", registry=r, buckets=latency)
        self.delta_consumer_up = Gauge("loopwise_inference_delta_consumer_up",
                                       "1 while the deltas topic is read", registry=r)
        self.delta_rollbacks = Counter("loopwise_inference_delta_rollbacks_total",
                                       "Delta streams dropped back to their base version by the online guard",
                                       ["tenant", "model"], registry=r)
        self.swap_delta_waits = Counter(
            "loopwise_inference_swap_delta_waits_total",
            "Swaps that waited for the new version's first delta, by outcome: ready (it came) or timeout "
            "(delta_swap_wait_s passed)", ["tenant", "model", "outcome"], registry=r)
        self.swap_delta_wait_seconds = Histogram("loopwise_inference_swap_delta_wait_seconds",
                                                 "How long a swap waited for the new version's first delta",
                                                 registry=r, buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10))
        self.pending_shows = Gauge("loopwise_inference_pending_shows",
                                   "Answered calls whose shown candidates' deltas are still pending (pending.py)",
                                   registry=r)
        self.pending_dropped = Counter(
            "loopwise_inference_pending_dropped_total",
            "Pending shows dropped, by reason: covered (a delta learned them), aged (no delta covered them "
            "within pending_max_age_s), overflow (over pending_max_held), new_base (a new version serves: its "
            "deltas cover them)", ["tenant", "model", "reason"], registry=r)
        self.pending_adjusted = Counter("loopwise_inference_pending_adjusted_total",
                                        "Candidates scored with pending shows' steps", registry=r)
        self.delta_online_auc = Gauge(
            "loopwise_inference_delta_online_auc",
            "Online AUC over the guard's window of labelled calls scored with deltas, by scorer: "
            "base (the version alone) or deltas (as served)", ["tenant", "model", "scorer"], registry=r)

    def version(self, tenant: str, model: str, role: str, version: str) -> None:
        """Set ``loopwise_inference_model_version`` (-1 for a version not of the form v<N>)."""
        digits = version[1:] if version.startswith("v") else ""
        self.model_version.labels(tenant, model, role).set(int(digits) if digits.isdigit() else -1)
