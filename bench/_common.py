"""Shared pieces of the benchmarks in bench/: processes, phases, CPU accounting, output.

- `Workspace`: a temporary directory with logs/, and every process started
  through it stopped at the end (reverse order), also on error; on error the
  tail of every log is printed.
- `closed_loop`: N concurrent asyncio callers for a warm-up plus a measured
  window; only calls that complete inside the window count, each with its
  latency.
- `CpuMeter`: CPU seconds (user + system, all threads) per process over the
  measured window, read from /proc, so a report can say where the cycles went.
- `echo_main`: a bare grpc.aio server with generic bytes handlers (no protobuf
  work) that answers every call on one method with canned bytes; run as
  ``python bench/_common.py echo PORT METHOD RESPONSE_FILE``.

The last line a benchmark prints is one JSON object (`emit_result`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from loopwise import procs

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def add_common_args(parser: argparse.ArgumentParser, *, seconds: float, concurrency: int) -> None:
    parser.add_argument("--seconds", type=float, default=None,
                        help=f"measured seconds per phase (default {seconds:g}, --quick: a third)")
    parser.add_argument("--warmup", type=float, default=None,
                        help="warm-up seconds before each measured phase (default 2, --quick: 1)")
    parser.add_argument("--quick", action="store_true", help="short phases, one round: a smoke run")
    parser.add_argument("--concurrency", type=int, default=concurrency,
                        help=f"calls in flight from the client (default {concurrency})")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="also record a py-spy flame graph of the service under test into DIR")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) at the end")
    parser.set_defaults(default_seconds=seconds)


def resolve_timing(args: argparse.Namespace) -> tuple[float, float]:
    """(measured seconds, warm-up seconds) per phase from --seconds/--warmup/--quick."""
    seconds = args.seconds if args.seconds is not None else (
        max(args.default_seconds / 3, 2.0) if args.quick else args.default_seconds)
    warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)
    return seconds, warmup


def emit_result(result: dict[str, Any]) -> None:
    """The last line of a benchmark's output: exactly one JSON object."""
    sys.stdout.flush()
    print(json.dumps(result, sort_keys=False), flush=True)


def say(message: str = "") -> None:
    print(message, flush=True)


# -- processes ---------------------------------------------------------------------------------


class Workspace:
    """A work directory plus the processes started in it; everything stops on exit."""

    def __init__(self, prefix: str, keep: bool = False) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=prefix))
        self.logs = self.root / "logs"
        self.logs.mkdir()
        self.keep = keep
        self._procs: list[procs.Proc] = []

    def track(self, proc: procs.Proc) -> procs.Proc:
        self._procs.append(proc)
        return proc

    def broker(self) -> tuple[procs.Proc, str]:
        port = procs.free_port()
        proc = self.track(procs.start_broker(port, self.logs / "kafka.log"))
        return proc, f"127.0.0.1:{port}"

    def redis(self) -> tuple[procs.Proc, str]:
        port = procs.free_port()
        proc = self.track(procs.start_redis(port, self.root / "redis", self.logs / "redis.log"))
        return proc, f"redis://127.0.0.1:{port}/0"

    def service(self, module: str, env: dict[str, str], name: str | None = None,
                timeout: float = 60.0) -> tuple[procs.Proc, str, str]:
        """Start ``python -m module`` on free ports, wait until SERVING: (proc, target, metrics_url)."""
        port, mport = procs.free_port(), procs.free_port()
        name = name or module.rsplit(".", 1)[-1]
        full = {"LOOPWISE_GRPC_HOST": "127.0.0.1", "LOOPWISE_GRPC_PORT": str(port),
                "LOOPWISE_METRICS_PORT": str(mport), "LOOPWISE_LOG_LEVEL": "WARNING", **env}
        proc = self.track(procs.start_service(module, full, self.logs / f"{name}.log"))
        proc.name = name
        target = f"127.0.0.1:{port}"
        procs.wait_healthy(target, timeout, proc)
        return proc, target, f"http://127.0.0.1:{mport}/metrics"

    def script(self, name: str, argv: list[str], port: int, timeout: float = 15.0) -> procs.Proc:
        """A helper process of ours (``python argv...``) that listens on ``port``."""
        log = self.logs / f"{name}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen([sys.executable, *argv], stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        proc = self.track(procs.Proc(name, popen, popen.pid, log))
        deadline = time.monotonic() + timeout
        while True:
            if popen.poll() is not None:
                raise RuntimeError(f"{name} exited with {popen.returncode}; see {log}")
            try:
                procs.wait_port(port, 0.2)
                return proc
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise
                continue

    def stop(self, proc: procs.Proc) -> None:
        proc.stop()
        if proc in self._procs:
            self._procs.remove(proc)

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is not None and not isinstance(exc, KeyboardInterrupt):
            say(f"FAILED: {exc!r}")
            traceback.print_exception(exc, file=sys.stdout)
            for log in sorted(self.logs.glob("*.log")):
                tail = log.read_text(errors="replace").splitlines()[-15:]
                say(f"--- {log.name} (last {len(tail)} lines)")
                for line in tail:
                    say(line)
        for proc in reversed(self._procs):
            try:
                proc.stop()
            except Exception as stop_exc:  # noqa: BLE001 - stop the rest regardless
                say(f"could not stop {proc.name} ({proc.pid}): {stop_exc!r}")
        self._procs.clear()
        if self.keep or exc is not None:
            say(f"work directory kept: {self.root}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)


def py_spy(pid: int, seconds: float, out: Path, name: str) -> subprocess.Popen | None:
    """Start ``py-spy record`` on ``pid`` for ``seconds`` (None when py-spy is not installed)."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        say("py-spy not found (pip install py-spy); no profile recorded")
        return None
    out.mkdir(parents=True, exist_ok=True)
    argv = [exe, "record", "--pid", str(pid), "--duration", str(max(int(seconds), 1)), "--rate", "200",
            "--format", "raw", "-o", str(out / f"{name}.folded")]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def summarize_folded(path: Path, top: int = 15) -> list[str]:
    """Self time by frame and inclusive time by function from py-spy's folded stacks."""
    if not path.exists():
        return [f"(no profile at {path})"]
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        leaf = frames[-1]
        own[leaf] = own.get(leaf, 0) + n
        for frame in set(frames):
            incl[frame] = incl.get(frame, 0) + n
    if not total:
        return ["(empty profile)"]
    lines = [f"{total} samples; self time (top {top}):"]
    for frame, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * n / total:5.1f}%  {frame}")
    lines.append(f"inclusive time (top {top}):")
    for frame, n in sorted(incl.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * n / total:5.1f}%  {frame}")
    return lines


# -- measuring ---------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class CpuMeter:
    """CPU seconds per named process between `start` and `stop`; "client" is this process."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = {"client": os.getpid(), **pids}
        self._t0: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        out = {}
        for name, pid in self.pids.items():
            try:
                out[name] = cpu_seconds(pid)
            except OSError:
                out[name] = float("nan")
        return out

    def start(self) -> None:
        self._t0 = self._read()

    def stop(self) -> dict[str, float]:
        now = self._read()
        self.used = {name: now[name] - self._t0[name] for name in now}
        return self.used


@dataclass
class PhaseResult:
    name: str
    seconds: float = 0.0
    calls: int = 0
    items: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds if self.seconds else 0.0

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    def pct_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1000) if self.latencies else float("nan")

    def cpu_line(self, per: str = "call", scale: float = 1e6, unit: str = "us") -> str:
        """CPU per item and share of the machine's cores, per process."""
        n = self.items if per != "call" else self.calls
        cores = os.cpu_count() or 1
        parts = []
        for name, secs in self.cpu.items():
            parts.append(f"{name} {secs / n * scale:,.0f} {unit}/{per} ({secs / self.seconds:.2f} core)"
                         if n and self.seconds else f"{name} {secs:.2f}s")
        total = sum(self.cpu.values())
        parts.append(f"total {total / self.seconds:.2f} of {cores} cores" if self.seconds else "")
        return "; ".join(p for p in parts if p)


def merge(name: str, phases: list[PhaseResult]) -> PhaseResult:
    """Several rounds of one phase as one result (sums; latencies concatenated)."""
    out = PhaseResult(name)
    for p in phases:
        out.seconds += p.seconds
        out.calls += p.calls
        out.items += p.items
        out.errors += p.errors
        out.latencies.extend(p.latencies)
        for k, v in p.cpu.items():
            out.cpu[k] = out.cpu.get(k, 0.0) + v
    return out


async def closed_loop(name: str, call: Callable[[], Awaitable[int]], *, concurrency: int, warmup: float,
                      seconds: float, meter: CpuMeter | None = None,
                      on_window: Callable[[str], Awaitable[None]] | None = None) -> PhaseResult:
    """``concurrency`` callers, each awaiting ``call()`` (which returns the items it got
    acknowledged) back to back; counted: calls completing inside the measured window.

    ``on_window("start"/"stop")`` runs at the window's edges (e.g. to scrape metrics).
    """
    result = PhaseResult(name)
    t0 = t1 = float("inf")
    stop = False
    errors: dict[str, int] = {}

    async def worker() -> None:
        nonlocal stop
        while not stop:
            start = time.perf_counter()
            try:
                n = await call()
            except Exception as exc:  # noqa: BLE001 - counted and reported, the phase goes on
                end = time.perf_counter()
                key = type(exc).__name__ + (f"({exc.code().name})" if hasattr(exc, "code") else "")
                errors[key] = errors.get(key, 0) + 1
                if t0 <= end <= t1:
                    result.errors += 1
                if sum(errors.values()) > 1000:
                    stop = True
                continue
            end = time.perf_counter()
            if t0 <= end <= t1:
                result.calls += 1
                result.items += n
                result.latencies.append(end - start)

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    try:
        await asyncio.sleep(warmup)
        if on_window:
            await on_window("start")
        if meter:
            meter.start()
        t0 = time.perf_counter()
        await asyncio.sleep(seconds)
        t1 = time.perf_counter()
        if meter:
            result.cpu = meter.stop()
        if on_window:
            await on_window("stop")
        result.seconds = t1 - t0
    finally:
        stop = True
        await asyncio.gather(*tasks, return_exceptions=True)
    if errors:
        result.extra["errors"] = errors
    return result


def scrape(url: str) -> dict[str, float]:
    """Prometheus text from ``url`` as {"name{labels}": value} (samples summed over nothing)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def delta(after: dict[str, float], before: dict[str, float], prefix: str) -> float:
    """Sum of (after - before) over every sample whose key starts with ``prefix``."""
    return sum(v - before.get(k, 0.0) for k, v in after.items() if k.startswith(prefix))


def time_call(fn: Callable[[], Any], min_seconds: float = 0.3, min_runs: int = 50) -> float:
    """Median seconds per call of ``fn`` over batches of runs (at least ``min_seconds`` in all)."""
    fn()
    samples = []
    runs = 0
    start = time.perf_counter()
    while runs < min_runs or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        for _ in range(10):
            fn()
        samples.append((time.perf_counter() - t) / 10)
        runs += 10
    return float(np.median(samples))


# -- the echo server ---------------------------------------------------------------------------


async def _echo_serve(port: int, method: str, response: bytes) -> None:
    import grpc

    service, _, name = method.strip("/").partition("/")
    received = 0

    async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        nonlocal received
        received += len(request)
        return response

    handler = grpc.method_handlers_generic_handler(
        service, {name: grpc.unary_unary_rpc_method_handler(handle)})  # bytes in, bytes out
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def echo_main(argv: list[str]) -> None:
    """``echo PORT METHOD RESPONSE_FILE``: answer METHOD with the file's bytes, until SIGTERM."""
    port, method, response_file = int(argv[0]), argv[1], Path(argv[2])
    asyncio.run(_echo_serve(port, method, response_file.read_bytes()))


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "echo":
        echo_main(sys.argv[2:])
    else:
        sys.exit("usage: python bench/_common.py echo PORT METHOD RESPONSE_FILE")
