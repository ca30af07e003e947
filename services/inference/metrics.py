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
        self.impressions_dropped = Counter("loopwise_inference_impressions_dropped_total",
                                           "Impressions dropped (buffer full or shut down)", ["reason"],
                                           registry=r)
        self.impression_errors = Counter("loopwise_inference_impression_errors_total",
                                         "Failed impression produce attempts (retried)", registry=r)
        self.impression_buffer = Gauge("loopwise_inference_impression_buffer",
                                       "Impressions waiting to be produced", registry=r)
        self.model_info = Info("loopwise_inference_model", "Model version serving", ["tenant", "model"],
                               registry=r)
        self.model_loads = Counter("loopwise_inference_model_loads_total", "Model load attempts",
                                   ["tenant", "model", "result"], registry=r)
        self.models_serving = Gauge("loopwise_inference_models_serving", "Models loaded and serving",
                                    registry=r)
        self.rewrites = Counter("loopwise_inference_rewrites_total", "Rewrite calls by outcome",
                                ["outcome"], registry=r)
