"""The one way every Loopwise gRPC service boots, serves and drains.

`GrpcService` wires a `grpc.aio` server with the standard health service
(`NOT_SERVING` until the service says it is ready), server reflection, the
process's HTTP endpoint (`loopwise.runtime.MetricsServer`: metrics on the
service's own registry, ``/healthz``, ``/readyz`` following the gRPC health)
and a graceful stop. Processes run with `loopwise.runtime.run_until_signal`.
Its settings (`loopwise.settings.GrpcSettings`) add TLS or mutual TLS
(`loopwise.tls`), API keys per tenant and the in-flight byte budget and
stream deadline (`loopwise.guard`, the interceptor every call passes), and
the limits of grpc core: concurrent calls (more are answered
RESOURCE_EXHAUSTED), open connections, handshake, idle and age timeouts, and
keep-alive pings that close dead connections (`server_options`).
`rpc` wraps a servicer method: request count and latency by method and
status code, and `LoopwiseError` -> gRPC status in one place.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import resource
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, Counter, Histogram

from loopwise import tls
from loopwise.auth import KeyStore
from loopwise.errors import InvalidArgument, LoopwiseError
from loopwise.guard import Guard, GuardMetrics
from loopwise.limits import MAX_MESSAGE_BYTES, MAX_REQUEST_BYTES
from loopwise.runtime import MetricsServer
from loopwise.settings import GrpcSettings

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.5, 1, 2, 5)


class Malformed:
    """Stands in for a request whose bytes did not parse (see `add_service`)."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def check_parsed(request: Any) -> Any:
    """Raise INVALID_ARGUMENT for a request that did not parse."""
    if isinstance(request, Malformed):
        raise InvalidArgument(f"malformed request: {request.error}", reason="malformed_request")
    return request


def _safe_parser(message_class: Any) -> Callable[[bytes], Any]:
    parse = message_class.FromString

    def safe(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as exc:
            return Malformed(str(exc))

    return safe


def add_service(server: grpc.aio.Server, servicer: Any, service: Any) -> str:
    """Register ``servicer`` for the service descriptor ``service`` (e.g.
    ``inference_pb2.DESCRIPTOR.services_by_name["InferenceService"]``).

    Like the generated ``add_*Servicer_to_server``, but a request that does
    not parse reaches the handler as `Malformed` (answered INVALID_ARGUMENT by
    `rpc`) instead of grpc's generic UNKNOWN — with no per-call interceptor.
    """
    handlers = {}
    for method in service.methods:
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        kind = {(False, False): grpc.unary_unary_rpc_method_handler,
                (True, False): grpc.stream_unary_rpc_method_handler,
                (False, True): grpc.unary_stream_rpc_method_handler,
                (True, True): grpc.stream_stream_rpc_method_handler}[(method.client_streaming,
                                                                      method.server_streaming)]
        handlers[method.name] = kind(getattr(servicer, method.name),
                                     request_deserializer=_safe_parser(request_class),
                                     response_serializer=response_class.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)
    return service.full_name


class RpcMetrics:
    """`loopwise_<service>_rpc_requests_total` and `loopwise_<service>_rpc_seconds`."""

    def __init__(self, service: str, registry: CollectorRegistry) -> None:
        self.requests = Counter(f"loopwise_{service}_rpc_requests_total", "gRPC calls handled",
                                ["method", "code"], registry=registry)
        self.seconds = Histogram(f"loopwise_{service}_rpc_seconds", "gRPC call latency",
                                 ["method"], registry=registry, buckets=LATENCY_BUCKETS)


def rpc(method: str) -> Callable:
    """Decorate an async servicer method (``self.rpc_metrics`` must exist)."""

    def deco(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(fn)
        async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            code = "OK"
            try:
                return await fn(self, check_parsed(request), context)
            except LoopwiseError as exc:
                code = exc.code.name
                await context.abort_with_status(exc.to_status())
            except (asyncio.CancelledError, grpc.aio.AbortError):
                code = "CANCELLED"
                raise
            except Exception:
                code = "INTERNAL"
                log.exception("unhandled error in %s", method)
                await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}")
            finally:
                metrics: RpcMetrics = self.rpc_metrics
                metrics.requests.labels(method, code).inc()
                metrics.seconds.labels(method).observe(time.perf_counter() - start)

        return wrapper

    return deco


# File descriptors kept for what is not a client connection: Kafka, Redis, the model store, logs.
FD_RESERVE = 256


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def connection_cap(wanted: int) -> int:
    """``wanted`` connections, at most what the process's open-file limit leaves after
    `FD_RESERVE` (more would run out of descriptors before the cap refuses anyone)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or wanted <= soft - FD_RESERVE:
        return wanted
    capped = max(soft - FD_RESERVE, 1)
    log.warning("connection cap lowered to the open-file limit",
                extra={"wanted": wanted, "cap": capped, "nofile": soft})
    return capped


def server_options(settings: GrpcSettings, service_names: list[str] = ()) -> list[tuple[str, int]]:
    """grpc core's channel arguments for the settings' limits (a timeout of 0: none); the
    largest request the services can use (`loopwise.limits.MAX_REQUEST_BYTES`)."""
    receive = max((MAX_REQUEST_BYTES.get(name, MAX_MESSAGE_BYTES) for name in service_names),
                  default=MAX_MESSAGE_BYTES)
    options = [("grpc.max_receive_message_length", receive),
               ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
               ("grpc.so_reuseport", 0),
               ("grpc.max_allowed_incoming_connections", connection_cap(settings.max_connections)),
               ("grpc.server_handshake_timeout_ms", _ms(settings.handshake_timeout_s)),
               ("grpc.keepalive_time_ms", _ms(settings.keepalive_s)),
               ("grpc.keepalive_timeout_ms", _ms(settings.keepalive_timeout_s))]
    if settings.max_connection_idle_s > 0:
        options.append(("grpc.max_connection_idle_ms", _ms(settings.max_connection_idle_s)))
    if settings.max_connection_age_s > 0:
        options += [("grpc.max_connection_age_ms", _ms(settings.max_connection_age_s)),
                    ("grpc.max_connection_age_grace_ms", _ms(settings.stream_deadline_s))]
    return options


class GrpcService:
    """A gRPC server with health, reflection and metrics.

    `service_names` are the full names of the services the caller registers
    on `server` (e.g. ``loopwise.v1.InferenceService``). The metrics and
    probe endpoint listens on ``metrics_host:metrics_port`` (0: any free
    port; negative: none). ``settings``: TLS, keys and limits (default: from
    the environment).
    """

    def __init__(self, *, host: str, port: int, metrics_host: str, metrics_port: int,
                 registry: CollectorRegistry, service_names: list[str],
                 settings: GrpcSettings | None = None) -> None:
        settings = settings if settings is not None else GrpcSettings.from_env()
        keys = KeyStore(settings.api_keys_file) if settings.api_keys_file else None
        self.guard = Guard(keys=keys, inflight_bytes=settings.inflight_bytes,
                           stream_deadline_s=settings.stream_deadline_s, metrics=GuardMetrics(registry))
        self.server = grpc.aio.server(options=server_options(settings, service_names), interceptors=[self.guard],
                                      maximum_concurrent_rpcs=settings.max_concurrent_rpcs or None)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.service_names = list(service_names)
        reflection.enable_server_reflection(
            [*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server)
        credentials = tls.server_credentials(settings.tls_cert_file, settings.tls_key_file,
                                             settings.tls_client_ca_file)
        self.tls = credentials is not None
        self.port = (self.server.add_secure_port(f"{host}:{port}", credentials) if credentials is not None
                     else self.server.add_insecure_port(f"{host}:{port}"))
        if self.port == 0:
            raise OSError(f"cannot listen on {host}:{port}")
        self.serving = False
        self.http = MetricsServer(registry, ready=lambda: self.serving, token=settings.metrics_token)
        self._metrics_address = (metrics_host, metrics_port)

    @property
    def metrics_port(self) -> int:
        """The metrics endpoint's port (0 when there is none)."""
        return self.http.port

    async def start(self) -> None:
        await self.set_serving(False)
        await self.server.start()
        self.http.start(*self._metrics_address)

    async def set_serving(self, serving: bool) -> None:
        """gRPC health and ``/readyz`` together."""
        self.serving = serving
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ["", *self.service_names]:
            await self.health.set(name, status)

    async def stop(self, grace: float, drain: float = 0.0) -> None:
        """Health NOT_SERVING (gRPC and ``/readyz``) first; keep answering for
        ``drain`` seconds so load balancers move away; then refuse new calls
        and give in-flight ones ``grace`` seconds to finish."""
        self.http.drain()
        await self.health.enter_graceful_shutdown()
        if drain > 0:
            await asyncio.sleep(drain)
        await self.server.stop(grace)
        self.http.close()
