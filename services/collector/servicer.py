"""FeedbackService: validate, produce, answer after the broker's ack."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator, Iterable

from loopwise import codec, stamps
from loopwise.auth import pseudonym
from loopwise.errors import InvalidArgument, Unavailable
from loopwise.grpcserver import check_parsed, rpc
from loopwise.topics import Topics
from loopwise.v1 import feedback_pb2, feedback_pb2_grpc
from loopwise.validation import Limits, check_event

from .metrics import CollectorMetrics
from .producer import AckedProducer, ProduceFailed
from .settings import CollectorSettings

log = logging.getLogger(__name__)

# StreamReport lists at most this many rejected events; a result is at most
# ~450 bytes (a 128-character id, a MAX_DETAIL detail): ~4.4 MB in all, well
# under the 16 MiB message limit.
MAX_LISTED_REJECTIONS = 10_000
MAX_DETAIL = 256


class Answer:
    """The `ReportResponse` of one call, built batch by batch.

    ``every=True`` (Report) lists every event in request order; a Report
    carries at most `max_batch_events`, so its answer is bounded by its
    request. ``every=False`` (StreamReport) lists only rejected events, at
    most `MAX_LISTED_REJECTIONS`: counts summarise the rest, so a stream of
    any length gets an answer of bounded size.

    >>> answer = Answer(every=False)
    >>> answer.add([feedback_pb2.EventResult(event_id="e1", accepted=True),
    ...             feedback_pb2.EventResult(event_id="e1", accepted=True, duplicate=True),
    ...             feedback_pb2.EventResult(event_id="e2", reason="missing_request_id")])
    >>> r = answer.response
    >>> (r.accepted, r.duplicates, r.rejected, dict(r.rejected_by_reason), [x.event_id for x in r.results])
    (2, 1, 1, {'missing_request_id': 1}, ['e2'])
    """

    def __init__(self, *, every: bool) -> None:
        self.every = every
        self.response = feedback_pb2.ReportResponse()

    def add(self, results: Iterable[feedback_pb2.EventResult]) -> None:
        """Count (and list) the results of one acknowledged batch."""
        response = self.response
        for result in results:
            if result.accepted:
                response.accepted += 1
                response.duplicates += result.duplicate
                if self.every:
                    response.results.append(result)
                continue
            response.rejected += 1
            response.rejected_by_reason[result.reason] += 1
            if self.every or len(response.results) < MAX_LISTED_REJECTIONS:
                response.results.append(result)
            else:
                response.unlisted_rejected += 1


class FeedbackServicer(feedback_pb2_grpc.FeedbackServiceServicer):
    def __init__(self, settings: CollectorSettings, producer: AckedProducer, metrics: CollectorMetrics) -> None:
        self.settings = settings
        self.producer = producer
        self.metrics = metrics
        self.rpc_metrics = metrics.rpc
        metrics.producer_up.set_function(lambda: float(producer.healthy))
        self.tenants = frozenset(settings.tenants)
        self.topics: Topics = settings.topics
        self.limits = Limits(max_future_ms=settings.max_future_s * 1000, max_age_ms=settings.max_age_s * 1000)
        self.pseudonym_key = settings.pseudonymise_key.encode()

    @rpc("Report")
    async def Report(self, request: feedback_pb2.ReportRequest, context) -> feedback_pb2.ReportResponse:  # noqa: N802
        answer = Answer(every=True)
        answer.add(await self._handle(request.events))
        return answer.response

    @rpc("StreamReport")
    async def StreamReport(self, request_iterator: AsyncIterator[feedback_pb2.ReportRequest], context  # noqa: N802
                           ) -> feedback_pb2.ReportResponse:
        answer = Answer(every=False)
        async for request in request_iterator:
            answer.add(await self._handle(check_parsed(request).events))
        return answer.response

    async def _handle(self, events) -> list[feedback_pb2.EventResult]:
        """Validate one batch, write its accepted events once each, and return
        one result per event once the broker acknowledged them."""
        n = len(events)
        limit = self.settings.max_batch_events
        if n > limit:
            raise InvalidArgument(f"{n} events in one request, at most {limit}",
                                  reason="batch_too_large", violations=[("events", f"at most {limit} events")])
        now = stamps.now_ms()
        records: list[tuple[str, bytes, bytes]] = []
        accepted: list[tuple[str, str]] = []
        written: set[str] = set()
        duplicates = 0
        results = []
        rejected = self.metrics.events_rejected
        for event in events:
            size = event.ByteSize()
            problem = check_event(event, tenants=self.tenants, now_ms=now, limits=self.limits, size=size)
            if problem is not None:
                reason, detail = problem
                rejected.labels(reason).inc()
                event_id = event.event_id[:self.limits.max_id_chars]
                results.append(feedback_pb2.EventResult(event_id=event_id, accepted=False, reason=reason,
                                                        detail=detail[:MAX_DETAIL]))
                continue
            if event.event_id in written:
                duplicates += 1
                results.append(feedback_pb2.EventResult(event_id=event.event_id, accepted=True, duplicate=True))
                continue
            written.add(event.event_id)
            event.received_time_ms = now
            if self.pseudonym_key and event.user_id:
                event.user_id = pseudonym(self.pseudonym_key, event.user_id)
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
        if duplicates:
            self.metrics.events_duplicate.inc(duplicates)
        return results
