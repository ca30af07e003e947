"""Inference settings (LOOPWISE_* environment variables, see loopwise.settings)."""

from __future__ import annotations

from dataclasses import dataclass

from loopwise.modelstore.contract import DEFAULT_MODEL
from loopwise.settings import GrpcSettings


@dataclass(frozen=True)
class InferenceSettings(GrpcSettings):
    grpc_port: int = 50052
    metrics_port: int = 9102
    # Model used when a RankRequest leaves `model` empty.
    default_model: str = DEFAULT_MODEL
    # onnxruntime intra-op threads per session.
    ort_threads: int = 1
    # Requests with more candidates than this are scored off the event loop.
    offload_candidates: int = 1000
    # Impressions waiting to be produced; beyond this they are dropped (counted).
    impression_buffer: int = 10_000
    impression_batch: int = 500
    # A batch not acked is retried for at most this long, then dropped (counted).
    impression_retry_s: float = 30.0
    # No impression for a call whose deadline was less than this away when its
    # answer left (a round trip: the client may have given up before it arrived).
    impression_deadline_margin_ms: float = 5.0
    emit_impressions: bool = True
    compression: str = "zstd"
    # Hot swap: the Redis pointers of every served (tenant, model) are read
    # (one MGET) this often; the store is listed for new models/versions this often.
    pointer_poll_s: float = 0.5
    store_scan_s: float = 2.0
    # Follow ModelAnnouncements on the models topic (a wake-up; the pointer decides).
    watch_announcements: bool = True
    # A refused version is not tried again before this many seconds (a missing one: 5 s).
    refused_retry_s: float = 300.0
    # Rewrite table copy: version counters polled this often (HGETALL on change).
    rewrite_poll_s: float = 0.5
    # Full re-read of a rewrite table even when its counter did not move.
    rewrite_full_refresh_s: float = 30.0
