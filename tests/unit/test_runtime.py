"""loopwise.runtime: the probe endpoint on a real socket, and signals that drain."""

import asyncio
import os
import signal
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Gauge

from loopwise import runtime


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def registry():
    return CollectorRegistry()


@pytest.fixture
def server(registry):
    ready = Gauge("loopwise_test_ready", "1 once ready", registry=registry)
    http = runtime.MetricsServer(registry, ready=runtime.ready_metric(registry, "loopwise_test_ready"))
    http.start("127.0.0.1", 0)
    yield http, ready
    http.close()


def test_healthz_readyz_and_metrics_tell_the_truth(server):
    http, ready = server
    assert http.port > 0
    assert get(http.port, "/healthz") == (200, "ok\n")
    assert get(http.port, "/readyz") == (503, "not ready\n")
    ready.set(1)
    assert get(http.port, "/readyz") == (200, "ready\n")
    status, text = get(http.port, "/metrics")
    assert status == 200 and "loopwise_test_ready 1.0" in text
    http.drain()
    assert get(http.port, "/readyz") == (503, "draining\n")
    assert get(http.port, "/healthz")[0] == 200  # alive while it drains


def test_a_failing_readiness_check_is_not_ready(registry):
    def broken() -> bool:
        raise RuntimeError("no consumer yet")

    http = runtime.MetricsServer(registry, ready=broken)
    http.start("127.0.0.1", 0)
    try:
        status, text = get(http.port, "/readyz")
        assert status == 503 and "no consumer yet" in text
    finally:
        http.close()


def test_a_negative_port_serves_nothing(registry):
    http = runtime.MetricsServer(registry)
    http.start("127.0.0.1", -1)
    assert http.port == 0
    http.drain()
    http.close()


def test_close_frees_the_port(server):
    http, _ = server
    port = http.port
    http.close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)


class Service:
    """Sends itself SIGTERM once started; records the drain."""

    def __init__(self, stop_signals: int = 0) -> None:
        self.calls: list[str] = []
        self.stop_signals = stop_signals

    async def start(self) -> None:
        self.calls.append("start")
        os.kill(os.getpid(), signal.SIGTERM)

    async def stop(self) -> None:
        self.calls.append("stop")
        for _ in range(self.stop_signals):
            os.kill(os.getpid(), signal.SIGINT)
        try:
            await asyncio.sleep(0.05 if not self.stop_signals else 60)
        except asyncio.CancelledError:
            self.calls.append("cancelled")
            raise
        self.calls.append("drained")


def test_a_signal_drains_the_service():
    service = Service()
    asyncio.run(runtime.serve(lambda: service))
    assert service.calls == ["start", "stop", "drained"]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers handed back


def test_a_second_signal_stops_waiting_for_the_drain():
    service = Service(stop_signals=1)
    started = time.monotonic()
    asyncio.run(runtime.serve(lambda: service))
    assert service.calls == ["start", "stop", "cancelled"]
    assert time.monotonic() - started < 10
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_grpc_health_and_readyz_flip_together(registry):
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from loopwise.grpcserver import GrpcService

    async def scenario() -> list[tuple[int, int]]:
        service = GrpcService(host="127.0.0.1", port=0, metrics_host="127.0.0.1", metrics_port=0,
                              registry=registry, service_names=["loopwise.v1.Test"])
        await service.start()
        seen = []
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for serving in (False, True):
                await service.set_serving(serving)
                status = (await stub.Check(health_pb2.HealthCheckRequest(service="loopwise.v1.Test"))).status
                seen.append((status, (await asyncio.to_thread(get, service.metrics_port, "/readyz"))[0]))
        port = service.metrics_port
        await service.stop(grace=0.1)
        assert service.http.draining
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2)
        return seen

    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    assert asyncio.run(scenario()) == [(not_serving, 503), (serving, 200)]


def _cgroup(tmp_path, **files):
    for name, text in files.items():
        path = tmp_path / name.replace("__", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(tmp_path)


def test_cpu_budget_is_capped_by_the_cgroups_cpu_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: set(range(64)))
    # cgroup v2: 4 CPUs, 2.5 CPUs (rounded up), unlimited
    assert runtime.cpu_budget(_cgroup(tmp_path / "a", **{"cpu.max": "400000 100000\n"})) == 4
    assert runtime.cpu_budget(_cgroup(tmp_path / "b", **{"cpu.max": "250000 100000"})) == 3
    assert runtime.cpu_budget(_cgroup(tmp_path / "c", **{"cpu.max": "max 100000"})) == 64
    # cgroup v1: 2 CPUs; -1 is unlimited
    assert runtime.cpu_budget(_cgroup(tmp_path / "d", **{"cpu__cpu.cfs_quota_us": "200000",
                                                          "cpu__cpu.cfs_period_us": "100000"})) == 2
    assert runtime.cpu_budget(_cgroup(tmp_path / "e", **{"cpu__cpu.cfs_quota_us": "-1",
                                                          "cpu__cpu.cfs_period_us": "100000"})) == 64
    # nothing readable, a garbled file, a quota under one CPU
    assert runtime.cpu_budget(str(tmp_path / "none")) == 64
    assert runtime.cpu_budget(_cgroup(tmp_path / "f", **{"cpu.max": "lots 100000"})) == 64
    assert runtime.cpu_budget(_cgroup(tmp_path / "g", **{"cpu.max": "50000 100000"})) == 1


def test_cpu_budget_never_exceeds_the_affinity(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {0, 1})
    assert runtime.cpu_budget(_cgroup(tmp_path, **{"cpu.max": "800000 100000"})) == 2


def test_the_trainer_uses_its_cpu_budget_unless_told(monkeypatch):
    import torch

    from loopwise.trainer.settings import TrainerSettings
    from loopwise.trainer.train import use_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(runtime, "cpu_budget", lambda: 1)
        assert use_threads(TrainerSettings(trainer_threads=0)) == 1 and torch.get_num_threads() == 1
        assert use_threads(TrainerSettings(trainer_threads=2)) == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
