"""bench/learning.py's delta figures, read from the stack's own metrics at the end of a run:
example produced -> its delta applied in ``Rank`` (the inference replica's
``loopwise_inference_delta_example_to_applied_seconds`` histogram: p50 and p99 within its
buckets) and the delta bytes the trainer published per second of replay."""

from __future__ import annotations

from typing import Any

DELTA_LAG = "loopwise_inference_delta_example_to_applied_seconds"


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile on cumulative ``(upper bound, count)`` buckets (linear
    within a bucket; the last finite bound when the rank falls in +Inf); None: no samples."""
    buckets = sorted(buckets)
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return None
    rank, lo, below = q * total, 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lo
            return lo + (bound - lo) * (rank - below) / max(count - below, 1e-12)
        lo, below = bound, count
    return lo


def delta_figures(metrics: dict[str, str], seconds: float) -> dict[str, Any]:
    """Example produced -> its delta applied in the inference replica (p50, p99 from the
    replica's histogram, so within its buckets), delta bytes the trainer published per second
    of replay (nothing when the stack published no deltas); and the rollbacks: delta streams the
    replica's guard dropped back to their base, production versions the trainer's watchdog
    rolled back for falling below the static model."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    buckets: list[tuple[float, float]] = []
    published = 0.0
    rollbacks = {"delta_rollbacks": 0.0, "production_rollbacks": 0.0}
    names = {"loopwise_inference_delta_rollbacks_total": "delta_rollbacks",
             "loopwise_trainer_production_rollbacks_total": "production_rollbacks"}
    for service in ("inference", "trainer"):
        url = metrics.get(service, "")
        try:
            text = urlopen(url, timeout=5).read().decode() if url else ""
        except OSError:
            continue
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == f"{DELTA_LAG}_bucket":
                    buckets.append((float(sample.labels["le"]), sample.value))
                elif sample.name == "loopwise_trainer_delta_bytes_total":
                    published += sample.value
                elif sample.name in names:
                    rollbacks[names[sample.name]] += sample.value
    out: dict[str, Any] = {k: int(v) for k, v in rollbacks.items()}
    p50, p99 = histogram_quantile(0.5, buckets), histogram_quantile(0.99, buckets)
    if p50 is not None and p99 is not None:
        out.update(delta_to_serving_p50_s=round(p50, 2), delta_to_serving_p99_s=round(p99, 2),
                   deltas_applied=int(max(c for _, c in buckets)))
    if published:
        out["delta_bytes_per_s"] = round(published / max(seconds, 1e-9))
    return out
