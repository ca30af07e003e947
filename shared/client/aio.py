"""The asyncio client: the same calls as `Client`, awaited."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import grpc

from loopwise.client import build
from loopwise.client.sync import (
    RETRYABLE,
    ClientBase,
    Ranked,
    ReportError,
    backoff,
    merge_into,
    rank_request,
)
from loopwise.v1 import (
    events_pb2,
    feedback_pb2,
    inference_pb2,
)


class AsyncClient(ClientBase):
    def __init__(self, collector: str | None = None, inference: str | None = None, *, tenant: str = "default",
                 batch_size: int = 1000, retries: int = 6, timeout: float = 30.0, api_key: str | None = None,
                 tls: bool | None = None, ca_file: str = "", cert_file: str = "", key_file: str = "") -> None:
        super().__init__(collector, inference, tenant=tenant, batch_size=batch_size, retries=retries,
                         timeout=timeout, grpc_module=grpc.aio, api_key=api_key, use_tls=tls,
                         tls_files={"ca_file": ca_file, "cert_file": cert_file, "key_file": key_file})

    async def rank(self, candidate_ids: Sequence[str], **kwargs: Any) -> Ranked:
        timeout = kwargs.pop("timeout", self.timeout)
        request = rank_request(self.tenant, candidate_ids, **kwargs)
        return Ranked.of(candidate_ids, await self._stub(self._inference).Rank(request, timeout=timeout, metadata=self._metadata))

    async def rank_raw(self, request: inference_pb2.RankRequest, timeout: float | None = None
                       ) -> inference_pb2.RankResponse:
        return await self._stub(self._inference).Rank(request, timeout=timeout or self.timeout, metadata=self._metadata)

    async def rewrite(self, utterance: str, *, user_id: str = "", session_id: str = "",
                      context: Mapping[str, str] | None = None) -> inference_pb2.RewriteResponse:
        request = self._rewrite_request(utterance, user_id, session_id, context)
        return await self._stub(self._inference).Rewrite(request, timeout=self.timeout, metadata=self._metadata)

    async def report(self, events: Sequence[events_pb2.Event]) -> feedback_pb2.ReportResponse:
        total = feedback_pb2.ReportResponse()
        for batch in build.chunks(list(events), self.batch_size):
            merge_into(total, await self._report_batch(batch))
        return total

    async def _report_batch(self, batch: Sequence[events_pb2.Event]) -> feedback_pb2.ReportResponse:
        stub = self._stub(self._feedback)
        request = feedback_pb2.ReportRequest(events=batch)
        for attempt in range(self.retries + 1):
            try:
                return await stub.Report(request, timeout=self.timeout, metadata=self._metadata)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRYABLE or attempt == self.retries:
                    if exc.code() in RETRYABLE:
                        raise ReportError(f"batch of {len(batch)} not acknowledged: {exc.details()}",
                                          batch, exc) from exc
                    raise
                await asyncio.sleep(backoff(attempt))
        raise AssertionError("unreachable")

    async def stream_report(self, batches: Sequence[Sequence[events_pb2.Event]]) -> feedback_pb2.ReportResponse:
        """Several batches on one client stream (no automatic retry: resend all on UNAVAILABLE).

        The answer counts every event (``accepted``, ``rejected``,
        ``rejected_by_reason``, ``duplicates``) and lists only the rejected
        ones in ``results`` (at most 10,000; ``unlisted_rejected`` counts the
        rest), so it stays small however many events the stream carried."""
        stub = self._stub(self._feedback)

        async def requests():
            for batch in batches:
                yield feedback_pb2.ReportRequest(events=batch)

        return await stub.StreamReport(requests(), timeout=self.timeout, metadata=self._metadata)

    async def close(self) -> None:
        for ch in self._channels:
            await ch.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
