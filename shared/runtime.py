"""How every Loopwise process runs: signals, drain, metrics and health.

- `MetricsServer` answers on one HTTP port, from a daemon thread:
  ``/healthz`` (200 while the process is up), ``/readyz`` (200 when the
  process says it is ready, 503 before that and from the moment it drains,
  for Kubernetes HTTP probes) and, on every other path, the process's
  Prometheus registry (``/metrics``). With a token (``LOOPWISE_METRICS_TOKEN``)
  the metrics want ``Authorization: Bearer <token>`` (401 without it); the
  probes stay open for the kubelet. ``LOOPWISE_METRICS_HOST`` can bind the
  port to an interface of its own (a cluster-internal one, ``127.0.0.1``).
- `ready_metric` makes a worker's readiness its ``loopwise_<name>_ready``
  gauge, so the probe and the metric never disagree.
- `ConsumerLag`: a consumer's lag in records per (topic, partition), computed
  when scraped from what the consumer already knows (its high-water marks and
  the next offset it will hand over): nothing on the hot path.
- `run_until_signal` builds a service inside the event loop, starts it and,
  on SIGTERM or SIGINT, stops it: the service's ``stop`` drains (readiness
  off, in-flight work finished within its grace period). A second signal
  stops waiting for the drain.
- `cpu_budget`: how many CPUs this process may use: its CPU affinity, capped by
  its cgroup's CPU quota (a Kubernetes CPU limit), for thread pools that would
  otherwise size themselves by the node's cores.

The gRPC services also answer the standard gRPC health service
(`loopwise.grpcserver.GrpcService`), flipped together with ``/readyz``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from socketserver import ThreadingMixIn
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def cpu_budget(cgroup_root: str = "/sys/fs/cgroup") -> int:
    """The CPUs this process may use (at least 1): its affinity, capped by its cgroup's CPU
    quota rounded up (cgroup v2 ``cpu.max``, else v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``).
    A pod limited to 4 CPUs on a 64-core node gets 4, where torch would start a thread per core
    and be throttled."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota - 1e-9)))
    return max(1, cpus)


def _cgroup_quota(root: str) -> float | None:
    """The cgroup's CPU quota in CPUs, or None when unlimited or unreadable."""
    def read(name: str) -> str | None:
        try:
            with open(os.path.join(root, name), encoding="ascii") as f:
                return f.read().strip()
        except OSError:
            return None

    v2 = read("cpu.max")  # "max 100000" or "400000 100000"
    if v2 is not None:
        quota_s, _, period_s = v2.partition(" ")
    else:  # cgroup v1; a quota of -1 is no limit
        quota_s = read("cpu/cpu.cfs_quota_us") or read("cpu.cfs_quota_us") or ""
        period_s = read("cpu/cpu.cfs_period_us") or read("cpu.cfs_period_us") or ""
    try:
        quota, period = int(quota_s), int(period_s)
    except ValueError:  # "max", unreadable or garbled
        return None
    return quota / period if quota > 0 and period > 0 else None


class Service(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Probes every few seconds are not worth a log line."""


def _server_class(host: str, port: int) -> type[WSGIServer]:
    """A threading WSGI server of the address family of ``host`` (IPv4 or IPv6)."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    return type("LoopwiseHttpServer", (ThreadingMixIn, WSGIServer),
                {"daemon_threads": True, "address_family": family})


def ready_metric(registry: CollectorRegistry, name: str) -> Callable[[], bool]:
    """Readiness read from the 0/1 gauge ``name`` of ``registry``."""
    return lambda: registry.get_sample_value(name) == 1.0


class ConsumerLag:
    """Gauge ``name{topic,partition}``: records from the next one a consumer hands over to
    its partition's high-water mark, read from `source` at each scrape (a partition not
    read from yet in this process is absent; a negative difference reads 0).

    >>> registry = CollectorRegistry()
    >>> lag = ConsumerLag("example_consumer_lag_records", registry)
    >>> lag.source = lambda: {("events", 0): 5, ("events", 1): -2}
    >>> registry.get_sample_value("example_consumer_lag_records", {"topic": "events", "partition": "1"})
    0.0
    """

    def __init__(self, name: str, registry: CollectorRegistry) -> None:
        self.name = name
        self.source: Callable[[], Mapping[tuple[str, int], int]] = dict
        registry.register(self)

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self.name, "Records between what the consumer read and the partition's "
                                 "high-water mark", labels=["topic", "partition"])

    def describe(self) -> list[GaugeMetricFamily]:
        return [self._family()]

    def collect(self) -> list[GaugeMetricFamily]:
        family = self._family()
        for (topic, partition), lag in sorted(self.source().items()):
            family.add_metric([topic, str(partition)], float(max(lag, 0)))
        return [family]


class MetricsServer:
    """``/healthz``, ``/readyz`` and the Prometheus metrics on one port.

    ``ready`` says whether the process is ready (called on every ``/readyz``);
    `drain` turns readiness off for good. `start` on a negative port serves
    nothing (``port`` stays 0). ``token``: the bearer token ``/metrics`` wants
    (None: ``LOOPWISE_METRICS_TOKEN``; empty: none).
    """

    def __init__(self, registry: CollectorRegistry, ready: Callable[[], bool] = lambda: True,
                 token: str | None = None) -> None:
        self.registry = registry
        self.token = os.environ.get("LOOPWISE_METRICS_TOKEN", "") if token is None else token
        self.port = 0
        self.draining = False
        self._ready = ready
        self._metrics = make_wsgi_app(registry)
        self._httpd: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (0: any free port; negative: not at all)."""
        if port < 0:
            return
        self._httpd = make_server(host, port, self._app, _server_class(host, port), _QuietHandler)
        self.port = self._httpd.server_port
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="loopwise-http", daemon=True)
        self._thread.start()

    def is_ready(self) -> tuple[bool, str]:
        """(ready, why) as ``/readyz`` answers it."""
        if self.draining:
            return False, "draining"
        try:
            return (True, "ready") if self._ready() else (False, "not ready")
        except Exception as exc:  # noqa: BLE001 - a failing check is an unready process, not a 500
            return False, f"readiness check failed: {exc!r}"

    def drain(self) -> None:
        """``/readyz`` answers 503 from now on (``/healthz`` and metrics go on)."""
        self.draining = True

    def close(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def _app(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            return _plain(start_response, "200 OK", "ok")
        if path == "/readyz":
            ready, why = self.is_ready()
            return _plain(start_response, "200 OK" if ready else "503 Service Unavailable", why)
        if self.token and not hmac.compare_digest(environ.get("HTTP_AUTHORIZATION", "").encode(),
                                                  f"Bearer {self.token}".encode()):
            return _plain(start_response, "401 Unauthorized", "a bearer token is required")
        return self._metrics(environ, start_response)


def _plain(start_response: Callable, status: str, text: str) -> list[bytes]:
    body = (text + "\n").encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(body)))])
    return [body]


async def serve(factory: Callable[[], Service], signals: tuple[signal.Signals, ...] = SIGNALS) -> None:
    """Build (``factory()``, inside the loop) and start a service, wait for one
    of ``signals``, then ``await service.stop()``; a second signal cancels
    that stop."""
    loop = asyncio.get_running_loop()
    received: asyncio.Queue[signal.Signals] = asyncio.Queue()
    for sig in signals:
        loop.add_signal_handler(sig, received.put_nowait, sig)
    try:
        service = factory()
        await service.start()
        sig = await received.get()
        log.info("signal received, draining", extra={"signal": sig.name})
        stopping = asyncio.ensure_future(service.stop())
        second = asyncio.ensure_future(received.get())
        await asyncio.wait({stopping, second}, return_when=asyncio.FIRST_COMPLETED)
        if stopping.done():
            second.cancel()
            stopping.result()
            log.info("stopped")
        else:
            log.warning("second signal: stopping without waiting for the drain",
                        extra={"signal": second.result().name})
            stopping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stopping
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def run_until_signal(factory: Callable[[], Service]) -> None:
    """A process's main: `serve` in a fresh event loop."""
    asyncio.run(serve(factory))
