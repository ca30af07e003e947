"""Shared pieces of the benchmarks in bench/: processes, phases, CPU accounting, output.

- `Workspace`: a temporary directory with logs/, and every process started
  through it stopped at the end (reverse order), also on error, Ctrl-C or
  SIGTERM; on error the tail of every log is printed and the directory kept.
- `closed_loop`: N concurrent asyncio callers for a warm-up plus a measured
  window; only calls that complete inside the window count, each with its
  latency.
- `CpuMeter`: CPU seconds (user + system) per process, and per thread where
  asked, over the measured window, read from /proc: where the cycles went.
- `time_call`/`time_call_cold`: in-process timing of one step, with warm
  caches and with the caches flushed before each call.
- `scrape`/`delta`: a service's Prometheus counters around a window;
  `py_spy`/`summarize_folded`: an optional profile of a service.

The last line a benchmark prints is one JSON object (`emit_result`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from loopwise.tools import procs

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
                        help="add a phase profiling the service under test with py-spy (folded stacks "
                             "into DIR, summarised in the output; needs `pip install py-spy`)")
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

    def __enter__(self) -> Workspace:
        signal.signal(signal.SIGTERM, _terminate)  # SIGTERM stops what we started, like Ctrl-C
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            say(f"interrupted ({exc!r}); stopping everything")
        elif exc is not None:
            say(f"FAILED: {exc!r} (traceback below); the logs of what was started:")
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


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def py_spy(pid: int, seconds: float, out: Path, name: str) -> subprocess.Popen | None:
    """Start ``py-spy record`` on ``pid`` for ``seconds`` (None when py-spy is not installed)."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        say("py-spy not found (pip install py-spy); no profile recorded")
        return None
    out.mkdir(parents=True, exist_ok=True)
    argv = [exe, "record", "--pid", str(pid), "--duration", str(max(int(seconds), 1)), "--rate", "200",
            "--gil", "--format", "raw", "-o", str(out / f"{name}.folded")]
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


def _stat_cpu(path: str) -> tuple[str, float]:
    """(command name, user + system CPU seconds) from a /proc stat file."""
    with open(path) as f:
        text = f.read()
    name = text[text.index("(") + 1:text.rindex(")")]
    fields = text.rpartition(")")[2].split()
    return name, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) so far."""
    return _stat_cpu(f"/proc/{pid}/stat")[1]


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds so far per thread of a process.

    Labels: "main" for the main thread (an asyncio service's event loop), the
    Python thread name for this process's own threads, else the OS thread name
    (grpc's C threads name themselves) with "/tid" when Python started it.
    """
    own = {t.native_id: t.name for t in threading.enumerate()} if pid == os.getpid() else {}
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name, secs = _stat_cpu(str(task / "stat"))
        except (OSError, ValueError):
            continue  # the thread ended meanwhile
        tid = int(task.name)
        if tid == pid:
            label = "main"
        elif tid in own:
            label = own[tid]
        elif name.startswith("python"):
            label = f"{name}/{tid}"
        else:
            label = name
        out[label] = out.get(label, 0.0) + secs
    return out


class CpuMeter:
    """CPU seconds per named process between `start` and `stop`; "client" is this process.

    For the processes named in ``threads``, also CPU seconds per thread name
    (``threads_used``): which thread of a service is busy.
    """

    def __init__(self, pids: dict[str, int], threads: tuple[str, ...] = ()) -> None:
        self.pids = {"client": os.getpid(), **pids}
        self.threads = threads
        self._t0: dict[str, float] = {}
        self._th0: dict[str, dict[str, float]] = {}
        self.used: dict[str, float] = {}
        self.threads_used: dict[str, dict[str, float]] = {}

    def _read(self) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
        out = {}
        for name, pid in self.pids.items():
            try:
                out[name] = cpu_seconds(pid)
            except OSError:
                out[name] = float("nan")
        per_thread = {}
        for name in self.threads:
            try:
                per_thread[name] = thread_cpu(self.pids[name])
            except OSError:
                per_thread[name] = {}
        return out, per_thread

    def start(self) -> None:
        self._t0, self._th0 = self._read()

    def stop(self) -> dict[str, float]:
        now, threads = self._read()
        self.used = {name: now[name] - self._t0[name] for name in now}
        self.threads_used = {
            proc: {t: v - self._th0.get(proc, {}).get(t, 0.0) for t, v in per.items()}
            for proc, per in threads.items()}
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
    threads: dict[str, dict[str, float]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds if self.seconds else 0.0

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    def pct_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1000) if self.latencies else float("nan")

    def _n(self, per: str) -> int:
        return self.calls if per == "call" else self.items

    def cpu_line(self, per: str = "call") -> str:
        """CPU us per call (or per item: ``per="event"``) and share of a core, per process."""
        n = self._n(per)
        parts = [f"{name} {secs / n * 1e6:,.1f} us/{per} ({secs / self.seconds:.2f} core)"
                 for name, secs in self.cpu.items() if n and self.seconds]
        if self.seconds:
            parts.append(f"total {sum(self.cpu.values()) / self.seconds:.2f} of {os.cpu_count()} cores")
        return "; ".join(parts)

    def threads_line(self, proc: str, per: str = "call", top: int = 6) -> str:
        """The busiest threads of one process: CPU us per call (or item) and share of a core."""
        n = self._n(per)
        busy = sorted(self.threads.get(proc, {}).items(), key=lambda kv: -kv[1])[:top]
        return ", ".join(f"{t} {v / n * 1e6:,.1f} us/{per} ({v / self.seconds:.2f} core)"
                         for t, v in busy if v > 0 and n and self.seconds)


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
        for proc, per in p.threads.items():
            mine = out.threads.setdefault(proc, {})
            for t, v in per.items():
                mine[t] = mine.get(t, 0.0) + v
    return out


async def closed_loop(name: str, call: Callable[[Any], Awaitable[int]], *, concurrency: int, warmup: float,
                      seconds: float, prepare: Callable[[], Any] = lambda: None,
                      meter: CpuMeter | None = None,
                      on_window: Callable[[str], Awaitable[None]] | None = None) -> PhaseResult:
    """``concurrency`` callers, each awaiting ``call(prepare())`` back to back (``call``
    returns the items it got acknowledged); counted: the calls completing inside the
    measured window, each with its latency (``prepare`` is not timed).

    ``on_window("start"/"stop")`` runs at the window's edges (e.g. to scrape metrics).
    """
    result = PhaseResult(name)
    t0 = t1 = float("inf")
    stop = False
    errors: dict[str, int] = {}

    async def worker() -> None:
        nonlocal stop
        while not stop:
            arg = prepare()
            start = time.perf_counter()
            try:
                n = await call(arg)
            except Exception as exc:  # noqa: BLE001 - counted and reported, the phase goes on
                end = time.perf_counter()
                code = getattr(exc, "code", None)
                key = type(exc).__name__ + (f"({code().name})" if callable(code) else "")
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
            result.threads = meter.threads_used
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


_THRASH = np.ones(1 << 20)  # 8 MiB: more than the caches a call's data would stay in


def time_call_cold(fn: Callable[[], Any], runs: int = 200) -> float:
    """Median seconds per call of ``fn`` with the CPU caches flushed before each call, as in a
    server where other work (gRPC, asyncio, other requests) runs between two calls."""
    samples = []
    for _ in range(runs):
        _THRASH.sum()
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return float(np.median(samples))
