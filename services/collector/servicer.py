"""FeedbackService: validate, produce, answer after the broker's ack."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator

from loopwise import codec, stamps
from loopwise.errors import InvalidArgument, Unavailable
from loopwise.grpcserver import check_parsed, rpc
from loopwise.topics import Topics
from loopwise.v1 import feedback_pb2, feedback_pb2_grpc
from loopwise.validation import Limits, check_event

from .metrics import CollectorMetrics
from .producer import AckedProducer, ProduceFailed
from .settings import CollectorSettings

log = logging.getLogger(__name__)


class FeedbackServicer(feedback_pb2_grpc.FeedbackServiceServicer):
    def __init__(self, settings: CollectorSettings, producer: AckedProducer, metrics: CollectorMetrics) -> None:
        self.settings = settings
        self.producer = producer
        self.metrics = metrics
        self.rpc_metrics = metrics.rpc
        self.tenants = frozenset(settings.tenants)
        self.topics: Topics = settings.topics
        self.limits = Limits(max_future_ms=settings.max_future_s * 1000, max_age_ms=settings.max_age_s * 1000)

    @rpc("Report")
    async def Report(self, request: feedback_pb2.ReportRequest, context) -> feedback_pb2.ReportResponse:  # noqa: N802
        response = feedback_pb2.ReportResponse()
        await self._handle(request.events, response)
        return response

    @rpc("StreamReport")
    async def StreamReport(self, request_iterator: AsyncIterator[feedback_pb2.ReportRequest], context  # noqa: N802
                           ) -> feedback_pb2.ReportResponse:
        response = feedback_pb2.ReportResponse()
        async for request in request_iterator:
            await self._handle(check_parsed(request).events, response)
        return response

    async def _handle(self, events, response: feedback_pb2.ReportResponse) -> None:
        n = len(events)
        limit = self.settings.max_batch_events
        if n > limit:
            raise InvalidArgument(f"{n} events in one request, at most {limit}",
                                  reason="batch_too_large", violations=[("events", f"at most {limit} events")])
        now = stamps.now_ms()
        records: list[tuple[str, bytes, bytes]] = []
        accepted: list[tuple[str, str]] = []
        results = []
        rejected = self.metrics.events_rejected
        for event in events:
            size = event.ByteSize()
            problem = check_event(event, tenants=self.tenants, now_ms=now, limits=self.limits, size=size)
            if problem is not None:
                reason, detail = problem
                rejected.labels(reason).inc()
                results.append(feedback_pb2.EventResult(event_id=event.event_id[:128], accepted=False,
                                                        reason=reason, detail=detail))
                continue
            event.received_time_ms = now
            kind = event.WhichOneof("body")
            topic = self.topics.impressions if kind == "impression" else self.topics.events
            records.append((topic, codec.record_key(event), event.SerializeToString()))
            accepted.append((event.tenant, kind))
            results.append(feedback_pb2.EventResult(event_id=event.event_id, accepted=True))
        if records:
            self.metrics.in_flight.inc(len(records))
            try:
                await self.producer.send_batch(records, self.settings.ack_timeout_s)
            except ProduceFailed as exc:
                self.metrics.produce_failures.labels(type(exc.__cause__ or exc).__name__).inc()
                log.warning("broker did not ack a batch", extra={"events": len(records), "error": str(exc)})
                raise Unavailable(f"the event log did not acknowledge the batch ({exc}); "
                                  "retry with the same event ids", reason="broker_unavailable") from None
            finally:
                self.metrics.in_flight.dec(len(records))
            counter = self.metrics.events_accepted
            for (tenant, kind), count in Counter(accepted).items():
                counter.labels(tenant, kind).inc(count)
        response.results.extend(results)
        response.accepted += len(records)
        response.rejected += n - len(records)

