"""Inference settings (LOOPWISE_* environment variables, see loopwise.settings)."""

from __future__ import annotations

from dataclasses import dataclass

from loopwise.settings import BaseSettings


@dataclass(frozen=True)
class InferenceSettings(BaseSettings):
    grpc_port: int = 50052
    metrics_port: int = 9102
    # Model used when a RankRequest leaves `model` empty.
    default_model: str = "ranker"
    # onnxruntime intra-op threads per session.
    ort_threads: int = 1
    # Requests with more candidates than this are scored off the event loop.
    offload_candidates: int = 1000
    # Impressions waiting to be produced; beyond this they are dropped (counted).
    impression_buffer: int = 10_000
    impression_batch: int = 500
    emit_impressions: bool = True
    compression: str = "zstd"
