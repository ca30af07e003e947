"""The synchronous client."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from loopwise import tls
from loopwise.client import build
from loopwise.limits import MAX_MESSAGE_BYTES
from loopwise.v1 import (
    events_pb2,
    feedback_pb2,
    feedback_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
)

RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]


class ReportError(Exception):
    """A batch still unacknowledged after every retry; resend the same events later."""

    def __init__(self, message: str, events: Sequence[events_pb2.Event], cause: grpc.RpcError) -> None:
        super().__init__(message)
        self.events = list(events)
        self.cause = cause


@dataclass(frozen=True)
class Ranked:
    request_id: str
    model: str
    version: str
    candidate_ids: list[str]
    scores: list[float]
    ranking: list[int]
    # The model's own scores and the error memory's (empty when its mode is off),
    # aligned with candidate_ids; `scores` is one of them (see `memory_mode`).
    base_scores: list[float] = field(default_factory=list)
    compensated_scores: list[float] = field(default_factory=list)
    memory_mode: str = ""
    # The sparse delta sequence applied on top of `version` (0: the version alone).
    delta_sequence: int = 0

    @classmethod
    def of(cls, ids: Sequence[str], response: inference_pb2.RankResponse) -> Ranked:
        return cls(response.request_id, response.model, response.version, list(ids), list(response.scores),
                   list(response.ranking), list(response.base_scores), list(response.compensated_scores),
                   response.memory_mode, response.delta_sequence)

    def top(self, k: int) -> list[str]:
        """The k best candidate ids, in served order."""
        return [self.candidate_ids[i] for i in self.ranking[:k]]


def backoff(attempt: int, base: float = 0.1, cap: float = 5.0) -> float:
    return min(cap, base * 2 ** attempt) * (0.5 + random.random() / 2)


def rank_request(tenant: str, candidate_ids: Sequence[str], *, model: str = "", user_id: str = "",
                 session_id: str = "", request_id: str = "", user: build.FeatureValues | None = None,
                 context: build.FeatureValues | None = None,
                 features: Mapping[str, Sequence[Any]] | None = None) -> inference_pb2.RankRequest:
    return inference_pb2.RankRequest(tenant=tenant, model=model, request_id=request_id, user_id=user_id,
                                     session_id=session_id, user=build.features(user),
                                     context=build.features(context),
                                     candidates=build.candidates(candidate_ids, features))


def merge_into(total: feedback_pb2.ReportResponse, response: feedback_pb2.ReportResponse) -> None:
    """Add one batch's answer to the answer of a whole `report` call."""
    total.results.extend(response.results)
    total.accepted += response.accepted
    total.rejected += response.rejected
    total.duplicates += response.duplicates
    total.unlisted_rejected += response.unlisted_rejected
    for reason, count in response.rejected_by_reason.items():
        total.rejected_by_reason[reason] += count


class ClientBase:
    """What the sync and asyncio clients share: settings, channels, stubs, builders.

    ``api_key`` (default: ``LOOPWISE_API_KEY``) goes with every call as
    ``authorization: Bearer <key>``. TLS: ``ca_file`` (the servers' CA; the
    system's when empty), ``cert_file``/``key_file`` (a client certificate, for
    mutual TLS); ``tls`` turns it on (default: when any of the three, or
    ``LOOPWISE_TLS_CA_FILE`` / ``_CLIENT_CERT_FILE`` / ``_CLIENT_KEY_FILE``, is set).
    """

    def __init__(self, collector: str | None, inference: str | None, *, tenant: str, batch_size: int,
                 retries: int, timeout: float, grpc_module: Any, api_key: str | None = None,
                 tls_files: dict[str, str] | None = None, use_tls: bool | None = None) -> None:
        key = os.environ.get("LOOPWISE_API_KEY", "") if api_key is None else api_key
        self._metadata = (("authorization", f"Bearer {key}"),) if key else None
        files = {k: v for k, v in (tls_files or {}).items() if v} or tls.client_tls_from_env()
        if use_tls if use_tls is not None else bool(files):
            credentials = tls.client_credentials(**files)

            def channel(target: str, options: Any) -> Any:
                return grpc_module.secure_channel(target, credentials, options=options)
        else:
            def channel(target: str, options: Any) -> Any:
                return grpc_module.insecure_channel(target, options=options)
        self.tenant = tenant
        self.events = build.EventFactory(tenant)
        self.batch_size = batch_size
        self.retries = retries
        self.timeout = timeout
        self._channels: list[Any] = []
        self._feedback: Any = None
        self._inference: Any = None
        if collector:
            self._channels.append(channel(collector, options=CHANNEL_OPTIONS))
            self._feedback = feedback_pb2_grpc.FeedbackServiceStub(self._channels[-1])
        if inference:
            self._channels.append(channel(inference, options=CHANNEL_OPTIONS))
            self._inference = inference_pb2_grpc.InferenceServiceStub(self._channels[-1])

    def _rewrite_request(self, utterance: str, user_id: str, session_id: str,
                         context: Mapping[str, str] | None) -> inference_pb2.RewriteRequest:
        return inference_pb2.RewriteRequest(tenant=self.tenant, utterance=utterance, user_id=user_id,
                                            session_id=session_id, context=dict(context or {}))

    @staticmethod
    def _stub(stub: Any) -> Any:
        if stub is None:
            raise RuntimeError("this client was built without that service's address")
        return stub


class Client(ClientBase):
    """``Client(collector_target, inference_target, tenant="default")``; either target may be None.
    Keys and TLS: see `ClientBase`."""

    def __init__(self, collector: str | None = None, inference: str | None = None, *, tenant: str = "default",
                 batch_size: int = 1000, retries: int = 6, timeout: float = 30.0, api_key: str | None = None,
                 tls: bool | None = None, ca_file: str = "", cert_file: str = "", key_file: str = "") -> None:
        super().__init__(collector, inference, tenant=tenant, batch_size=batch_size, retries=retries,
                         timeout=timeout, grpc_module=grpc, api_key=api_key, use_tls=tls,
                         tls_files={"ca_file": ca_file, "cert_file": cert_file, "key_file": key_file})
        self._buffer: list[events_pb2.Event] = []

    # -- inference -----------------------------------------------------------------
    def rank(self, candidate_ids: Sequence[str], **kwargs: Any) -> Ranked:
        """Score candidates; kwargs: model, user_id, session_id, request_id, user, context, features."""
        timeout = kwargs.pop("timeout", self.timeout)
        request = rank_request(self.tenant, candidate_ids, **kwargs)
        return Ranked.of(candidate_ids, self._stub(self._inference).Rank(request, timeout=timeout, metadata=self._metadata))

    def rank_raw(self, request: inference_pb2.RankRequest, timeout: float | None = None) -> inference_pb2.RankResponse:
        return self._stub(self._inference).Rank(request, timeout=timeout or self.timeout, metadata=self._metadata)

    def rewrite(self, utterance: str, *, user_id: str = "", session_id: str = "",
                context: Mapping[str, str] | None = None) -> inference_pb2.RewriteResponse:
        request = self._rewrite_request(utterance, user_id, session_id, context)
        return self._stub(self._inference).Rewrite(request, timeout=self.timeout, metadata=self._metadata)

    # -- feedback ------------------------------------------------------------------
    def report(self, events: Sequence[events_pb2.Event]) -> feedback_pb2.ReportResponse:
        """Send now, in batches; retry UNAVAILABLE with the same event ids.

        One result per event, in order; a copy of an event id earlier in its
        batch is acknowledged (``duplicate``) but written once."""
        total = feedback_pb2.ReportResponse()
        for batch in build.chunks(list(events), self.batch_size):
            merge_into(total, self._report_batch(batch))
        return total

    def _report_batch(self, batch: Sequence[events_pb2.Event]) -> feedback_pb2.ReportResponse:
        stub = self._stub(self._feedback)
        request = feedback_pb2.ReportRequest(events=batch)
        for attempt in range(self.retries + 1):
            try:
                return stub.Report(request, timeout=self.timeout, metadata=self._metadata)
            except grpc.RpcError as exc:
                if exc.code() not in RETRYABLE or attempt == self.retries:
                    if exc.code() in RETRYABLE:
                        raise ReportError(f"batch of {len(batch)} not acknowledged: {exc.details()}",
                                          batch, exc) from exc
                    raise
                time.sleep(backoff(attempt))
        raise AssertionError("unreachable")

    def send(self, *events: events_pb2.Event) -> feedback_pb2.ReportResponse | None:
        """Buffer events; a full buffer is reported at once and its response
        returned (per-event results included), else None."""
        self._buffer.extend(events)
        if len(self._buffer) >= self.batch_size:
            return self.flush()
        return None

    def flush(self) -> feedback_pb2.ReportResponse:
        events, self._buffer = self._buffer, []
        try:
            return self.report(events)
        except ReportError:
            self._buffer[:0] = events  # nothing unacked is lost: keep it for the next flush
            raise

    # -- lifecycle -----------------------------------------------------------------
    def close(self) -> None:
        for ch in self._channels:
            ch.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._buffer and exc == (None, None, None):
            self.flush()
        self.close()
