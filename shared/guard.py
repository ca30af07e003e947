"""The door of every gRPC service: who calls, for which tenant, with how much.

`Guard` is the server interceptor `loopwise.grpcserver.GrpcService` installs.
For each call it

1. authenticates the API key in the call's metadata (`loopwise.auth`, when a
   keys file is configured): none, unknown or expired -> UNAUTHENTICATED;
2. counts the request's bytes against the server's in-flight budget *before*
   they are parsed (its own deserializer): past the budget -> RESOURCE_EXHAUSTED,
   the message never becomes an object; the bytes come back when the call ends
   (a stream's message when the next one arrives). While the budget is used up a
   new call is refused at once, before its message is read;
3. after parsing, checks every tenant the request names (``tenant``, each
   event's on Report and every StreamReport message) against the key's:
   another tenant's -> PERMISSION_DENIED;
4. refuses a request holding a string over its limit
   (`loopwise.validation.long_string`; events are checked one by one by the
   collector instead, which rejects only the event);
5. gives a client stream (StreamReport) at most ``stream_deadline_s``, then
   DEADLINE_EXCEEDED.

The gRPC health service is always open (Kubernetes probes carry no key).
Refusals are counted in ``loopwise_grpc_refused_total{service,method,reason}``
and logged with the key's name or the reason, never the key.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health
from prometheus_client import CollectorRegistry, Counter, Gauge

from loopwise import auth
from loopwise.validation import long_string

log = logging.getLogger(__name__)

OPEN_SERVICES = frozenset({health.SERVICE_NAME})


class GuardMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.refused = Counter("loopwise_grpc_refused_total",
                               "Calls refused at the door: authentication, tenancy, limits",
                               ["service", "method", "reason"], registry=registry)
        self.inflight_bytes = Gauge("loopwise_grpc_inflight_request_bytes",
                                    "Request bytes held by calls in progress (the budget's use)",
                                    registry=registry)


class Refused:
    """Stands in for a message refused before parsing (over the in-flight budget)."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size


class ByteBudget:
    """Request bytes held by calls in progress, at most ``limit`` (the event loop's thread only)."""

    def __init__(self, limit: int, gauge: Gauge) -> None:
        self.limit = limit
        self.used = 0
        self._gauge = gauge

    def take(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.used += n
        self._gauge.set(self.used)
        return True

    def give(self, n: int) -> None:
        self.used -= n
        self._gauge.set(self.used)


class _Call:
    """One call's share of the budget."""

    __slots__ = ("budget", "held", "last")

    def __init__(self, budget: ByteBudget) -> None:
        self.budget = budget
        self.held = 0
        self.last = 0  # the bytes of the message parsed last

    def deserializer(self, parse: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
        def deserialize(data: bytes) -> Any:
            if not self.budget.take(len(data)):
                self.last = 0
                return Refused(len(data))
            self.held += len(data)
            self.last = len(data)
            return parse(data) if parse is not None else data

        return deserialize

    def release(self, keep: int = 0) -> None:
        """Give back what the call holds but ``keep`` bytes (the message in hand)."""
        back = self.held - keep
        if back > 0:
            self.budget.give(back)
            self.held = keep


class Guard(grpc.aio.ServerInterceptor):
    def __init__(self, *, keys: auth.KeyStore | None, inflight_bytes: int, stream_deadline_s: float,
                 metrics: GuardMetrics) -> None:
        self.keys = keys
        self.metrics = metrics
        self.budget = ByteBudget(inflight_bytes, metrics.inflight_bytes)
        self.stream_deadline_s = stream_deadline_s

    async def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        service, _, method = details.method.lstrip("/").rpartition("/")
        if handler is None or service in OPEN_SERVICES:
            return handler
        if self.budget.used >= self.budget.limit:
            self._refused(service, method, "inflight_bytes")
            return _denied(handler, grpc.StatusCode.RESOURCE_EXHAUSTED,
                           "server busy: the in-flight request budget is used up; retry later")
        principal = None
        if self.keys is not None:
            principal, reason = self.keys.authenticate(auth.key_from_metadata(details.invocation_metadata))
            if principal is None:
                self._refused(service, method, reason)
                return _denied(handler, grpc.StatusCode.UNAUTHENTICATED, f"API key refused: {reason}")
        return self._guarded(handler, service, method, principal)

    def _refused(self, service: str, method: str, reason: str, who: str = "") -> None:
        self.metrics.refused.labels(service, method, reason).inc()
        log.warning("call refused", extra={"service": service, "method": method, "reason": reason,
                                           "key": who or None})

    async def _check(self, request: Any, context: Any, service: str, method: str,
                     principal: auth.Principal | None) -> None:
        """Abort the call for a refused, foreign-tenant or over-long request."""
        if isinstance(request, Refused):
            self._refused(service, method, "inflight_bytes")
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"server busy: {request.size} request bytes over the in-flight budget; retry later")
        if not isinstance(request, Message):
            return  # did not parse: the handler answers INVALID_ARGUMENT
        if principal is not None:
            foreign = auth.request_tenants(request) - principal.tenants
            if foreign:
                self._refused(service, method, auth.WRONG_TENANT, principal.name)
                await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                    f"this API key may not act for tenant {sorted(foreign)[0][:64]!r}")
        if "events" not in request.DESCRIPTOR.fields_by_name and (long := long_string(request)) is not None:
            self._refused(service, method, "field_too_long")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"{long[0]} longer than {long[1]} characters")

    def _guarded(self, handler: Any, service: str, method: str, principal: auth.Principal | None) -> Any:
        call = _Call(self.budget)
        deserializer = call.deserializer(handler.request_deserializer)
        check = self._check
        if handler.unary_unary is not None:
            behaviour = handler.unary_unary

            async def unary(request: Any, context: Any) -> Any:
                try:
                    await check(request, context, service, method, principal)
                    return await behaviour(request, context)
                finally:
                    call.release()

            return handler._replace(request_deserializer=deserializer, unary_unary=unary)
        if handler.stream_unary is not None:
            behaviour = handler.stream_unary
            deadline = self.stream_deadline_s

            async def checked(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
                async for request in requests:
                    call.release(keep=call.last)
                    await check(request, context, service, method, principal)
                    yield request

            async def client_stream(requests: AsyncIterator[Any], context: Any) -> Any:
                try:
                    return await asyncio.wait_for(behaviour(checked(requests, context), context), deadline)
                except TimeoutError:
                    self._refused(service, method, "stream_deadline")
                    await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                        f"a stream may last at most {deadline:g} s: send the rest on a new one")
                finally:
                    call.release()

            return handler._replace(request_deserializer=deserializer, stream_unary=client_stream)
        return handler  # server streams (reflection): authenticated above, nothing to count


def _denied(handler: Any, code: grpc.StatusCode, details: str) -> Any:
    """``handler`` answering ``code`` without reading (or parsing) the request."""

    async def deny(request: Any, context: Any) -> Any:
        await context.abort(code, details)

    async def deny_stream(request: Any, context: Any) -> AsyncIterator[Any]:
        await context.abort(code, details)
        yield  # pragma: no cover - an async generator, as the kind requires

    kind = "unary_unary" if handler.unary_unary is not None else (
        "stream_unary" if handler.stream_unary is not None else
        "unary_stream" if handler.unary_stream is not None else "stream_stream")
    body = deny_stream if kind.endswith("_stream") else deny
    return handler._replace(request_deserializer=None, **{kind: body})
