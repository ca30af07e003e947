"""bench/soak.py's parts: traffic, faults, the resident-memory and lag monitor."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import statistics
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

import grpc
from _common import scrape
from aiokafka import AIOKafkaConsumer

from loopwise.client import Client
from loopwise.client.sync import ReportError
from loopwise.kafka_security import aiokafka_security
from loopwise.tools import procs, stack
from loopwise.v1 import events_pb2, learning_pb2

SERVICES = ("collector", "inference", "miner", "trainer")
GENRES = [f"g{i}" for i in range(10)]
ITEMS = [f"item{i}" for i in range(500)]
ITEM_GENRE = {item: GENRES[i % len(GENRES)] for i, item in enumerate(ITEMS)}
LAG_METRIC = "loopwise_miner_consumer_lag_records"


def client(info: stack.StackInfo) -> Client:
    return Client(info.collector, info.inference, tenant=info.tenants[0], api_key=info.api_key)


def capacity(info: stack.StackInfo, seconds: float, threads: int) -> float:
    """Rank calls per second (100 candidates) with ``threads`` closed-loop callers."""
    done = [0] * threads
    stop = time.monotonic() + seconds

    def run(i: int) -> None:
        with client(info) as c:
            rng = random.Random(i)
            while time.monotonic() < stop:
                ids = rng.sample(ITEMS, 100)
                try:
                    c.rank(ids, user_id=f"u{rng.randrange(200)}", features={"genre": [ITEM_GENRE[x] for x in ids]})
                    done[i] += 1
                except grpc.RpcError:
                    pass
    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(done) / seconds


class Traffic:
    """Paced mixed traffic on ``threads`` threads; keeps every acknowledged event id."""

    def __init__(self, info: stack.StackInfo, rate: float, threads: int, expected) -> None:
        self.info, self.rate, self.threads, self.expected = info, rate, threads, expected
        self.acked: set[str] = set()
        self.requests = 0
        self.rejected = 0
        self._errors: Counter[tuple[str, str, bool]] = Counter()
        self.latency_s: dict[str, list[float]] = {"Rank": [], "Report": []}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def start(self) -> None:
        self._workers = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(self.threads)]
        for w in self._workers:
            w.start()

    def stop(self) -> None:
        self._stop.set()
        for w in self._workers:
            w.join(60)

    def latency(self) -> dict[str, dict[str, float]]:
        """p50/p99 seconds per method (the client's retries included)."""
        out = {}
        for method, values in self.latency_s.items():
            if values:
                ordered = sorted(values)
                out[method] = {"p50": round(ordered[len(ordered) // 2], 3),
                               "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3)}
        return out

    def errors(self, expected: bool) -> dict[str, int]:
        return {f"{m}:{c}": n for (m, c, e), n in sorted(self._errors.items()) if e == expected}

    def _error(self, method: str, code: str) -> None:
        with self._lock:
            self._errors[(method, code, self.expected())] += 1

    def _run(self, i: int) -> None:
        rng = random.Random(1000 + i)
        interval = self.threads / self.rate
        next_at = time.monotonic()
        with client(self.info) as c:
            while not self._stop.is_set():
                next_at += interval
                self._one(c, rng)
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    next_at = time.monotonic()  # behind: no burst to catch up

    def _one(self, c: Client, rng: random.Random) -> None:
        user = rng.randrange(200)
        favourite = GENRES[user % len(GENRES)]
        ids = rng.sample(ITEMS, 100)
        events: list[events_pb2.Event] = []
        with self._lock:
            self.requests += 1
            n = self.requests
        t0 = time.monotonic()
        try:
            ranked = c.rank(ids, user_id=f"u{user}", features={"genre": [ITEM_GENRE[x] for x in ids]})
            self.latency_s["Rank"].append(time.monotonic() - t0)
            liked = [x for x in ranked.top(10) if ITEM_GENRE[x] == favourite]
            if liked and rng.random() < 0.7:
                events.append(c.events.click(ranked.request_id, liked[0], user_id=f"u{user}",
                                             position=ranked.top(10).index(liked[0]) + 1))
        except grpc.RpcError as err:
            self._error("Rank", err.code().name)
        if n % 10 == 0:
            utterance = rng.choice(["play jazz", "weather in paris", "time in tokyo", "call mom"])
            try:
                c.rewrite(utterance, user_id=f"u{user}")
            except grpc.RpcError as err:
                self._error("Rewrite", err.code().name)
            events.append(c.events.turn(utterance, user_id=f"u{user}", status=events_pb2.RESPONSE_STATUS_OK))
        if n % 50 == 0:
            bad = c.events.click("r-bad", "", user_id=f"u{user}")  # no candidate: refused with a reason
            events.append(bad)
        if events:
            self._report(c, events)

    def _report(self, c: Client, events: list[events_pb2.Event]) -> None:
        t0 = time.monotonic()
        try:
            response = c.report(events)
        except ReportError as err:
            self._error("Report", err.cause.code().name)
            return
        except grpc.RpcError as err:
            self._error("Report", err.code().name)
            return
        self.latency_s["Report"].append(time.monotonic() - t0)
        with self._lock:
            self.rejected += response.rejected
            self.acked.update(r.event_id for r in response.results if r.accepted)


class Monitor:
    """Every ``period`` seconds: each service's RSS (pids re-read: the supervisor restarts) and the miner's lag."""

    def __init__(self, root: Path, period: float = 2.0) -> None:
        self.root, self.period = root, period
        self.rss: dict[str, list[tuple[float, float]]] = {s: [] for s in SERVICES}
        self.lag: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def max_lag(self) -> float:
        return max((v for _, v in self.lag), default=0.0)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.period)

    def sample(self) -> None:
        info = stack.StackInfo.read(self.root)
        if info is None:
            return
        now = time.monotonic()
        for name in SERVICES:
            mb = rss_mb(info.pids.get(name, 0))
            if mb is not None:
                self.rss[name].append((now, mb))
        try:
            values = scrape(info.metrics["miner"])
            self.lag.append((now, sum(v for k, v in values.items() if k.startswith(LAG_METRIC))))
        except Exception:  # noqa: BLE001 - the miner is down (killed): no sample
            pass

    def lag_since(self, t0: float) -> list[float]:
        return [v for t, v in self.lag if t >= t0]

    def rss_curve(self, points: int = 7) -> dict[str, list[float]]:
        """Each service's RSS (MB) at ``points`` evenly spaced moments of the run."""
        out = {}
        for name, samples in self.rss.items():
            if samples:
                idx = [round(i * (len(samples) - 1) / (points - 1)) for i in range(points)]
                out[name] = [round(samples[i][1]) for i in idx]
        return out

    def rss_summary(self) -> dict[str, dict[str, float]]:
        def pick(i: int) -> dict[str, float]:
            return {s: round(v[i][1], 1) for s, v in self.rss.items() if v}
        return {"rss_mb_start": pick(0), "rss_mb_end": pick(-1),
                "rss_mb_max": {s: round(max(m for _, m in v), 1) for s, v in self.rss.items() if v}}


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Faults:
    """The three faults, when errors are expected, and how long the miner's lag takes to recover."""

    def __init__(self, root: Path, info: stack.StackInfo, stall_s: float, grace_s: float) -> None:
        self.root, self.info, self.stall_s, self.grace_s = root, info, stall_s, grace_s
        self.windows: list[tuple[float, float]] = []
        self.recovered_s: dict[str, float | None] = {}
        self._watchers: list[threading.Thread] = []
        self._steady: float = 0.0

    def expected(self) -> bool:
        now = time.monotonic()
        return any(a <= now <= b + self.grace_s for a, b in self.windows)

    def _pid(self, name: str) -> int:
        info = stack.StackInfo.read(self.root) or self.info
        return info.pids[name]

    def broker_stall(self) -> None:
        start = time.monotonic()
        self.windows.append((start, start + self.stall_s))
        pid = self._pid("kafka")
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(self.stall_s)
        finally:
            os.kill(pid, signal.SIGCONT)
        self.windows[-1] = (start, time.monotonic())

    def redis_restart(self) -> None:
        start = time.monotonic()
        self.windows.append((start, start + 5.0))
        procs.stop_pid(self._pid("redis"), timeout=5.0)
        port = urlparse(self.info.redis).port
        proc = procs.start_redis(port, self.root / "redis", self.root / "logs" / "redis.log",
                                 password=self.info.redis_password)
        info = stack.StackInfo.read(self.root) or self.info
        info.pids["redis"] = proc.pid  # `down` stops the new one
        info.write(self.root)
        self.windows[-1] = (start, time.monotonic())

    def miner_kill(self) -> None:
        start = time.monotonic()
        self.windows.append((start, start + 30.0))
        os.kill(self._pid("miner"), signal.SIGKILL)
        self.windows[-1] = (start, time.monotonic())

    def watch_recovery(self, name: str, monitor: Monitor, timeout: float = 300.0) -> None:
        """Seconds from the fault's end until the miner's lag is back to its level before it."""
        self._watchers.append(threading.current_thread())
        start, end = self.windows[-1]
        before = [v for t, v in monitor.lag if t < start][-30:]
        threshold = max(50.0, 2 * statistics.median(before)) if before else 50.0
        while time.monotonic() - end < timeout:
            recent = monitor.lag_since(end)
            if recent and recent[-1] <= threshold and time.monotonic() - end > monitor.period:
                self.recovered_s[name] = round(time.monotonic() - end, 1)
                return
            time.sleep(0.5)
        self.recovered_s[name] = None

    def settle(self, monitor: Monitor, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for w in self._watchers:
            w.join(max(0.0, deadline - time.monotonic()))


def read_topic_ids(bootstrap: str, topic: str, kind: str, idle_s: float = 5.0, timeout: float = 300.0) -> list[str]:
    """Every record's event or example id, read until the topic is idle (Tansu under-reports end offsets)."""
    async def read() -> list[str]:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                    enable_auto_commit=False, group_id=None, max_partition_fetch_bytes=8 << 20,
                                    **aiokafka_security())
        await consumer.start()
        ids: list[str] = []
        last, deadline = time.monotonic(), time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and time.monotonic() - last < idle_s:
                batch = await consumer.getmany(timeout_ms=500, max_records=5000)
                for records in batch.values():
                    for r in records:
                        if kind == "event":
                            ids.append(events_pb2.Event.FromString(r.value).event_id)
                        else:
                            ids.append(learning_pb2.Example.FromString(r.value).example_id)
                    last = time.monotonic()
        finally:
            await consumer.stop()
        return ids
    return asyncio.run(read())
