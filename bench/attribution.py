"""Miner attribution: correctness on a replay with known ground truth, and events/s
against a bare aiokafka consumer reading the same records.

What runs (all on this machine, stopped at the end): the Tansu broker and the
miner (``python -m loopwise.miner``, a Faust worker subprocess, its working
directory the benchmark's temporary one, where Faust keeps its data dir), with
its defaults except a short window (``--window-ms``, default 5000) and
``--miner-env NAME=VALUE`` settings.

1. A synthetic replay, seeded, built here and produced up front (kafka-python,
   the collector's producer settings: acks=all, idempotent, zstd) to fresh
   events / impressions topics (4 partitions, keys ``tenant|r|request_id``),
   in arrival order:

   - ``--events N`` impressions (default 10000, --quick 2000), 10 candidates
     each from a 1682-item catalogue (genre, decade, popularity; user and
     context features), event times spread at ``--rate`` impressions per
     second of event time (default 20); 70 % shaped like the inference
     service's (candidates in request order + ``ranking``, an int8 64-dim
     representation), 30 % like a client's own ranker (logged propensities);
   - in-window feedback on distinct shown candidates (0-3 per impression,
     click 60 % / accept 20 % / reject 20 %, top positions likelier);
   - 8 % of impressions get one LATE feedback: event time 0.3-2 s past the
     window's end (mostly clicks on unlabelled candidates: a correction is
     owed; some on labelled candidates or rejects: none owed);
   - 5 % of the impressions with feedback arrive 1-2.5 s after their event
     time, so some of their feedback arrives BEFORE them;
   - feedback for unknown request ids (2 % of N): ``unknown_request`` dead
     letters owed;
   - 3 % of all records re-sent byte for byte 0.2-1.5 s later (exact
     duplicates: no output may change).

2. Throughput, the backlog on the topics before anything reads it.
   ``bare``: an aiokafka consumer (assigned every partition of the two topics)
   counting the records from the beginning, pass after pass for a second:
   ``bare_eps`` (before and after the miner, the better counts; once with
   --quick). ``miner``: the miner started on the backlog, its
   ``loopwise_miner_records_total`` (+ undecodable dead letters) polled every
   0.05 s. It reads records before it reports ready (the ready gauge is set by
   the window timer after recovery and the changelog catch-up), so
   ``miner_eps`` = records read after the first poll that saw any / seconds
   until the poll that saw all; ``miner_e2e_eps`` counts until the last example
   was emitted (closing windows is most of the miner's output).
   The miner writes about ten records per record read: a bare aiokafka
   producer re-writes its output records (``kafka_floor_eps``: bare read +
   bare write). Where the time goes: CPU per event of the miner and the broker
   (and their threads); ``--profile DIR`` adds a second miner (another app id,
   other output topics, same input) recorded by py-spy.

3. Correctness, once the miner's table is empty (``loopwise_miner_window_backlog``
   0) and its examples count still for two close intervals: the examples,
   preferences, errors and dead-letter topics read (as many records as the
   miner counted emitted, then until idle) and checked against the
   ground truth: ``join_ratio`` = in-window feedback whose example has its
   label, source and label time / in-window feedback sent (goal 1.0);
   ``duplicates`` = example records whose example_id was already seen (goal
   0); every shown candidate has exactly one non-correction example with the
   right label, position and features; ``late`` = the miner's late counter
   (``late_sent``: the late events sent); corrections for late positives;
   preference pairs; prediction errors; ``unknown_request`` dead letters; the
   miner's own counters. ``correct``: every check passed.

Usage: python bench/attribution.py [--quick] [--events N] [--window-ms MS] [--rate R]
                                    [--miner-env NAME=VALUE] [--profile DIR] [--keep]
The last line printed is one JSON object: join_ratio, duplicates, late,
miner_eps, bare_eps, miner_to_bare, and extras.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _common as c
import numpy as np

from loopwise import codec, representation, stamps
from loopwise.client.build import EventFactory, candidates
from loopwise.collector.producer import producer_config
from loopwise.miner.attribution import stable_id
from loopwise.tools import procs
from loopwise.topics import Topics, ensure_topics
from loopwise.v1 import events_pb2, features_pb2, learning_pb2

TENANT = "default"
PARTITIONS = 4
SLATE = 10
DIM = 64
GOAL = 0.5
GENRES = ("action", "adventure", "animation", "children", "comedy", "crime", "documentary", "drama",
          "fantasy", "film-noir", "horror", "musical", "mystery", "romance", "sci-fi", "thriller", "war",
          "western")
OCCUPATIONS = ("student", "engineer", "educator", "writer", "artist", "programmer", "retired", "other")
SOURCE = {"click": learning_pb2.LABEL_SOURCE_CLICK, "accept": learning_pb2.LABEL_SOURCE_ACCEPT,
          "reject": learning_pb2.LABEL_SOURCE_REJECT}
Record = tuple[int, int, str, bytes, bytes]  # (arrival ms, sequence, topic, key, value)


# -- the replay and its ground truth -----------------------------------------------------------


@dataclass
class Feedback:
    event_id: str
    request_id: str
    candidate_id: str
    kind: str
    time_ms: int
    before_impression: bool = False


@dataclass
class Shown:
    served: list[str]
    genre: dict[str, str]
    time_ms: int


@dataclass
class Replay:
    records: list[Record] = field(default_factory=list)
    shown: dict[str, Shown] = field(default_factory=dict)
    in_window: list[Feedback] = field(default_factory=list)
    late: list[Feedback] = field(default_factory=list)
    unknown: list[Feedback] = field(default_factory=list)
    # (request, candidate) -> (label, source) of every shown candidate
    labels: dict[tuple[str, str], tuple[float, int]] = field(default_factory=dict)
    corrections: set[tuple[str, str]] = field(default_factory=set)
    pairs: set[str] = field(default_factory=set)
    resent: int = 0
    resent_by_kind: collections.Counter = field(default_factory=collections.Counter)
    delayed_impressions: int = 0

    @property
    def before(self) -> list[Feedback]:
        return [fb for fb in self.in_window if fb.before_impression]


def expected_pairs(request_id: str, served: list[str], labels: dict[str, str]) -> set[str]:
    """The preference pairs the rules promise (attribution.Attribution._pairs), as ids."""
    out = set()
    position = {cid: i + 1 for i, cid in enumerate(served)}
    for cid, kind in labels.items():
        if kind != "click":
            continue
        for q in range(1, position[cid]):
            other = served[q - 1]
            if other in labels and labels[other] != "reject":
                continue
            out.add(stable_id(TENANT, request_id, cid, other))
    for a in (cid for cid, kind in labels.items() if kind == "accept"):
        for r in (cid for cid, kind in labels.items() if kind == "reject"):
            out.add(stable_id(TENANT, request_id, a, r))
    return out


def generate(n: int, *, window_ms: int, rate: float, topics: Topics, seed: int = 7) -> Replay:
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    f = EventFactory(TENANT)
    rp = Replay()
    prefix = uuid.uuid4().hex[:8]  # fresh ids per run (a reused broker never sees them twice)
    counter = iter(range(1 << 40))

    def eid() -> str:
        return f"{prefix}e{next(counter):011x}"

    catalogue = [f"m{i}" for i in range(1, 1683)]
    item_genre = {m: GENRES[rng.randrange(len(GENRES))] for m in catalogue}
    item_decade = {m: f"{rng.choice((1950, 1960, 1970, 1980, 1990))}s" for m in catalogue}
    item_pop = {m: round(rng.random(), 4) for m in catalogue}
    pos_weights = [1 / np.sqrt(p) for p in range(1, SLATE + 1)]
    span_ms = int(n / rate * 1000)
    start = stamps.now_ms() - span_ms - 2 * window_ms - 10_000
    seq = iter(range(1 << 40))
    plain: list[Record] = []  # every distinct record: the re-sends are drawn from these

    def put(topic: str, ev: events_pb2.Event, arrival: int) -> None:
        ev.received_time_ms = arrival
        plain.append((arrival, next(seq), topic, codec.record_key(ev), ev.SerializeToString()))

    for i in range(n):
        t = start + int(i * 1000 / rate) + rng.randrange(0, max(int(1000 / rate), 1))
        user = f"u{rng.randint(1, 943)}"
        session = f"s-{user}-{rng.randint(1, 9)}"
        rid = uuid.UUID(int=rng.getrandbits(128)).hex
        request_order = rng.sample(catalogue, SLATE)
        scores = sorted((round(rng.random(), 4) for _ in range(SLATE)), reverse=True)
        inference = rng.random() < 0.7
        if inference:  # candidates in request order, `ranking` maps served position -> request index
            ranking = list(range(SLATE))
            rng.shuffle(ranking)
            served = [request_order[j] for j in ranking]
            imp = f.impression(rid, served, user_id=user, session_id=session, model="ranker", version="v3",
                               scores=scores, source="inference", event_id=eid(), at_ms=t)
            imp.impression.ranking.extend(ranking)
            cand_order = request_order
            hidden = nrng.standard_normal((SLATE, DIM)).astype(np.float32)
            imp.impression.representation, scale = representation.encode(hidden)
            imp.impression.representation_dim = DIM
            imp.impression.representation_scale.extend(scale.tolist())
        else:  # a client's own ranker: served order, logged propensities
            served = request_order
            imp = f.impression(rid, served, user_id=user, session_id=session, model="client-ranker",
                               version="2024-06", scores=scores,
                               propensities=[round(0.9 / (p + 1), 4) for p in range(SLATE)],
                               event_id=eid(), at_ms=t)
            cand_order = served
        imp.impression.candidates.CopyFrom(candidates(cand_order, {
            "genre": [item_genre[m] for m in cand_order], "decade": [item_decade[m] for m in cand_order],
            "popularity": [item_pop[m] for m in cand_order]}))
        imp.impression.user.CopyFrom(features_pb2.Features(
            categorical={"gender": rng.choice("MF"), "occupation": rng.choice(OCCUPATIONS),
                         "age_group": rng.choice(("18-24", "25-34", "35-44", "45-54", "55+"))},
            numeric={"activity": round(rng.random(), 3)}))
        imp.impression.context.CopyFrom(features_pb2.Features(
            categorical={"device": rng.choice(("phone", "tv", "speaker", "web"))},
            numeric={"hour": float(rng.randrange(24))}))
        rp.shown[rid] = Shown(served, {m: item_genre[m] for m in served}, t)
        deadline = t + window_ms

        # in-window feedback on distinct candidates
        k = rng.choices((0, 1, 2, 3), weights=(35, 35, 20, 10))[0]
        positions: list[int] = []
        while len(positions) < k:
            p = rng.choices(range(1, SLATE + 1), weights=pos_weights)[0]
            if p not in positions:
                positions.append(p)
        labels: dict[str, str] = {}
        feedback: list[tuple[events_pb2.Event, Feedback]] = []
        for p in positions:
            cid = served[p - 1]
            kind = rng.choices(("click", "accept", "reject"), weights=(60, 20, 20))[0]
            at = t + rng.randint(100, window_ms - 300)
            ev = build_feedback(f, kind, rid, cid, p, user, session, eid(), at, rng)
            labels[cid] = kind
            feedback.append((ev, Feedback(ev.event_id, rid, cid, kind, at)))
        for cid in served:
            kind = labels.get(cid)
            rp.labels[(rid, cid)] = ((1.0 if kind in ("click", "accept") else 0.0),
                                     SOURCE[kind] if kind else learning_pb2.LABEL_SOURCE_NO_FEEDBACK)
        rp.pairs |= expected_pairs(rid, served, labels)

        # late feedback: past the window by its own clock
        if rng.random() < 0.08:
            unlabelled = [cid for cid in served if cid not in labels]
            if labels and (rng.random() < 0.3 or not unlabelled):
                cid = rng.choice(sorted(labels))
            else:
                cid = rng.choice(unlabelled)
            kind = rng.choices(("click", "accept", "reject"), weights=(70, 15, 15))[0]
            at = deadline + rng.randint(300, 2000)
            ev = build_feedback(f, kind, rid, cid, served.index(cid) + 1, user, session, eid(), at, rng)
            fb = Feedback(ev.event_id, rid, cid, kind, at)
            rp.late.append(fb)
            feedback.append((ev, fb))
            if kind != "reject" and cid not in labels:
                rp.corrections.add((rid, cid))

        # an impression that arrives after some of its feedback
        arrival = t
        if feedback and rng.random() < 0.05:
            arrival = t + rng.randint(1000, 2500)
            rp.delayed_impressions += 1
        put(topics.impressions, imp, arrival)
        for ev, fb in feedback:
            put(topics.events, ev, fb.time_ms)
            if fb.time_ms <= deadline:
                fb.before_impression = fb.time_ms < arrival
                rp.in_window.append(fb)

    # feedback for requests nobody saw
    for _ in range(max(1, n // 50)):
        at = start + rng.randrange(span_ms)
        rid = uuid.UUID(int=rng.getrandbits(128)).hex
        kind = rng.choice(("click", "accept", "reject"))
        cid, position = rng.choice(catalogue), rng.randint(1, SLATE)
        ev = build_feedback(f, kind, rid, cid, position, "u0", "", eid(), at, rng)
        rp.unknown.append(Feedback(ev.event_id, rid, getattr(ev, kind).candidate_id, kind, at))
        put(topics.events, ev, at)

    # exact re-sends (a client or collector retry): same bytes, a little later
    records = list(plain)
    for original in rng.sample(plain, max(1, int(0.03 * len(plain)))):
        arrival, _, topic, key, value = original
        records.append((arrival + rng.randint(200, 1500), next(seq), topic, key, value))
        rp.resent += 1
        rp.resent_by_kind["impression" if topic == topics.impressions else "feedback"] += 1
    records.sort()
    rp.records = records
    return rp


def build_feedback(f: EventFactory, kind: str, rid: str, cid: str, position: int, user: str, session: str,
                   event_id: str, at: int, rng: random.Random) -> events_pb2.Event:
    envelope = {"user_id": user, "position": position, "session_id": session, "event_id": event_id, "at_ms": at}
    if kind == "click":
        return f.click(rid, cid, dwell_ms=rng.choice((0, rng.randint(1_000, 90_000))), **envelope)
    if kind == "accept":
        return f.accept(rid, cid, **envelope)
    return f.reject(rid, cid, reason=rng.choice(("", "not_interested", "seen_it")), **envelope)


def produce(bootstrap: str, records: list[Record]) -> float:
    """Every record, in arrival order, acknowledged; returns the seconds it took."""
    from kafka import KafkaProducer

    producer = KafkaProducer(**producer_config(bootstrap, client_id="bench-attribution"))
    try:
        t0 = time.perf_counter()
        futures = [producer.send(topic, key=key, value=value) for _, _, topic, key, value in records]
        producer.flush(60)
        for fut in futures:
            fut.get(timeout=30)
        return time.perf_counter() - t0
    finally:
        producer.close(5)


# -- reading -----------------------------------------------------------------------------------


async def bare_drain(bootstrap: str, topics: list[str], total: int, min_seconds: float = 1.0,
                     timeout: float = 120.0) -> tuple[int, float, int]:
    """The baseline: count every record of ``topics`` from the beginning, again and again (a seek to
    the beginning between passes) until ``min_seconds`` have passed; (records, seconds, passes)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(PARTITIONS)]
        consumer.assign(tps)
        n = passes = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < min_seconds:
            await consumer.seek_to_beginning(*tps)
            got = 0
            while got < total and time.perf_counter() - t0 < timeout:
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    got += len(records)
            if got < total:
                raise RuntimeError(f"the bare consumer read {got} of {total} records in {timeout:.0f}s")
            n += got
            passes += 1
        return n, time.perf_counter() - t0, passes
    finally:
        await consumer.stop()


async def bare_produce(bootstrap: str, topic: str, values: list[bytes]) -> float:
    """A bare aiokafka producer (acks=all, like the miner's) writing ``values``; seconds until all acked."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        t0 = time.perf_counter()
        futures = [await producer.send(topic, value) for value in values]
        await producer.flush()
        await asyncio.gather(*futures)
        return time.perf_counter() - t0
    finally:
        await producer.stop()


async def read_until_idle(bootstrap: str, topic: str, want: int, timeout: float,
                          idle: float = 1.0) -> list[bytes]:
    """Values of ``topic`` from the beginning: at least ``want`` and then ``idle`` quiet seconds (or
    ``timeout``). Tansu under-reports end offsets: never trust them."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    out: list[bytes] = []
    try:
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
            got = [m.value for msgs in batch.values() for m in msgs]
            if got:
                out.extend(got)
                last = time.monotonic()
            if len(out) >= want and time.monotonic() - last > idle:
                break
    finally:
        await consumer.stop()
    return out


# -- the miner ---------------------------------------------------------------------------------


def start_miner(ws: c.Workspace, bootstrap: str, topics: Topics, app_id: str, window_ms: int, name: str,
                extra_env: dict[str, str] | None = None) -> tuple[procs.Proc, str]:
    """``python -m loopwise.miner`` with its working directory in the workspace (Faust writes
    ``<app_id>-data`` into the current directory); (proc, metrics url) once the process is up."""
    mport = procs.free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "LOOPWISE_KAFKA_BOOTSTRAP": bootstrap,
           "LOOPWISE_APP_ID": app_id, "LOOPWISE_TOPIC_PARTITIONS": str(PARTITIONS),
           "LOOPWISE_METRICS_PORT": str(mport), "LOOPWISE_GRPC_HOST": "127.0.0.1",
           "LOOPWISE_ATTRIBUTION_WINDOW_MS": str(window_ms), "LOOPWISE_LOG_LEVEL": "WARNING",
           "LOOPWISE_CHANGELOG_CATCH_UP": "true",  # on Tansu, as in the local stack
           **topics.env(), **(extra_env or {})}
    log = ws.logs / f"{name}.log"
    with open(log, "ab") as out:
        popen = subprocess.Popen([sys.executable, "-m", "loopwise.miner"], stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env=env, cwd=ws.root, start_new_session=True)
    proc = ws.track(procs.Proc(name, popen, popen.pid, log))
    return proc, f"http://127.0.0.1:{mport}/metrics"


def consumed(m: dict[str, float]) -> float:
    """Records the miner has read: every decoded record is counted by kind, undecodable ones are
    dead-lettered before that."""
    return (c.delta(m, {}, "loopwise_miner_records_total{")
            + m.get("loopwise_miner_deadlettered_total{reason=undecodable}", 0.0))


def safe_scrape(url: str) -> dict[str, float] | None:
    try:
        return c.scrape(url)
    except OSError:
        return None


@dataclass
class Drain:
    """The miner's drain of the backlog, times in seconds after its process started.

    The miner's agent reads records as soon as it has its partitions, before it
    reports ready (``loopwise_miner_ready`` is set by the window timer after
    table recovery and the changelog catch-up), so the drain is timed from the
    first poll that saw records read (``first``, ``at_first`` records by then)
    to the first that saw all of them (``done``): ``eps``. Closing windows is
    part of the miner's work too: ``closed`` is when it emitted its last example
    (with the table empty after it): ``e2e_eps``.
    """

    started: float = 0.0  # perf_counter at the process start
    ready: float = float("nan")
    at_ready: float = 0.0  # records read when ready was first seen
    first: float = float("nan")
    at_first: float = 0.0
    done: float = float("nan")
    closed: float = float("nan")
    settled: float = float("nan")
    consumed: float = 0.0
    backlog_peak: float = 0.0
    stalls: list[float] = field(default_factory=list)  # gaps > 1 s between two answers of /metrics
    metrics: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    threads: dict[str, dict[str, float]] = field(default_factory=dict)
    e2e_cpu: dict[str, float] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.done - self.first

    @property
    def measured(self) -> float:
        return self.consumed - self.at_first

    @property
    def eps(self) -> float:
        return self.measured / self.seconds if self.seconds > 0 else float("nan")

    @property
    def e2e_eps(self) -> float:
        secs = self.closed - self.first
        return self.measured / secs if secs > 0 else float("nan")


class Poller:
    """The miner's /metrics, polled; notes answers that came late (a blocked worker)."""

    def __init__(self, proc: procs.Proc, url: str, d: Drain) -> None:
        self.proc, self.url, self.d = proc, url, d
        self.last_answer = time.perf_counter()

    def poll(self) -> dict[str, float] | None:
        if not self.proc.alive():
            raise RuntimeError(f"the miner exited; see {self.proc.log}")
        m = safe_scrape(self.url)
        now = time.perf_counter()
        if m is not None:
            if now - self.last_answer > 1.0 and self.d.first == self.d.first:
                self.d.stalls.append(now - self.last_answer)
            self.last_answer = now
            self.d.metrics = m
            self.d.backlog_peak = max(self.d.backlog_peak, m.get("loopwise_miner_window_backlog", 0.0))
            if m.get("loopwise_miner_ready") == 1.0 and self.d.ready != self.d.ready:
                self.d.ready, self.d.at_ready = now - self.d.started, consumed(m)
        return m


def watch_drain(proc: procs.Proc, url: str, total: int, meter: c.CpuMeter, timeout: float,
                on_first: Any = None, every: float = 0.05) -> Drain:
    """Poll the miner's metrics every ``every`` s from its start until it has read ``total`` records."""
    d = Drain(started=time.perf_counter())
    poller = Poller(proc, url, d)
    while True:
        if time.perf_counter() - d.started > timeout:
            raise TimeoutError(f"the miner read {d.consumed:.0f} of {total} records in {timeout:.0f}s")
        m = poller.poll()
        if m is not None:
            now = time.perf_counter() - d.started
            n = d.consumed = consumed(m)
            if n > 0 and d.first != d.first:
                d.first, d.at_first = now, n
                meter.start()
                if on_first:
                    on_first()
            if n >= total:
                d.done = now
                d.cpu = meter.stop()
                d.threads = meter.threads_used
                return d
        time.sleep(every)


def wait_settled(proc: procs.Proc, url: str, d: Drain, meter: c.CpuMeter, timeout: float,
                 close_interval: float = 1.0) -> None:
    """After the drain: until the miner's table is empty (every window closed, every retention over:
    the window backlog gauge at 0) and its examples count has not moved, both over two close intervals.
    The backlog gauge reads 0 until the end of the first closing round, which may take seconds and
    counts its examples only at its end: only polls after that round count (the position propensity
    gauges are set last in a round: their samples exist from then on). ``d.closed``: when its last
    example was emitted."""
    poller = Poller(proc, url, d)
    t0 = time.perf_counter()
    zero_since = ticked_since = None
    examples, changed = -1.0, time.perf_counter() - d.started
    cpu: dict[str, float] = {}
    while time.perf_counter() - t0 < timeout:
        m = poller.poll() or {}
        now = time.perf_counter() - d.started
        got = m.get("loopwise_miner_emitted_total{topic=examples}", 0.0)
        if got != examples:
            examples, changed = got, now
            cpu = dict(meter.stop())  # since the first record read
        if "loopwise_miner_position_propensity{position=1}" in m:
            ticked_since = now if ticked_since is None else ticked_since
        zero = m.get("loopwise_miner_window_backlog", 1.0) == 0.0
        zero_since = (now if zero_since is None else zero_since) if zero else None
        quiet = 2 * close_interval
        if (ticked_since is not None and now - ticked_since >= quiet and zero_since is not None
                and now - zero_since >= quiet and now - changed >= quiet):
            d.closed, d.settled, d.e2e_cpu = changed, max(zero_since, changed), cpu
            return
        time.sleep(0.1)
    d.closed, d.e2e_cpu = changed, cpu
    c.say(f"WARNING: after {timeout:.0f}s the miner's window backlog is "
          f"{d.metrics.get('loopwise_miner_window_backlog')} (examples emitted {examples:,.0f}); "
          "checking what is there")


# -- checking ----------------------------------------------------------------------------------


def check(rp: Replay, examples_raw: list[bytes], pairs_raw: list[bytes], errors_raw: list[bytes],
          dead_raw: list[bytes]) -> dict[str, Any]:
    examples = [learning_pb2.Example.FromString(v) for v in examples_raw]
    ids = collections.Counter(e.example_id for e in examples)
    duplicates = sum(n - 1 for n in ids.values())
    first: dict[str, learning_pb2.Example] = {}
    conflicting = set()
    for e in examples:
        seen = first.setdefault(e.example_id, e)
        if seen.label != e.label or seen.source != e.source:
            conflicting.add(e.example_id)
    plain: dict[tuple[str, str], list[learning_pb2.Example]] = collections.defaultdict(list)
    corrections: set[tuple[str, str]] = set()
    for e in first.values():
        if e.correction:
            corrections.add((e.request_id, e.candidate_id))
        else:
            plain[(e.request_id, e.candidate_id)].append(e)
    missing = wrong_label = wrong_position = wrong_features = 0
    for (rid, cid), (label, source) in rp.labels.items():
        got = plain.get((rid, cid), [])
        if len(got) != 1:
            missing += 1
            continue
        e = got[0]
        if e.label != label or e.source != source:
            wrong_label += 1
        shown = rp.shown[rid]
        if e.position != shown.served.index(cid) + 1:
            wrong_position += 1
        if e.candidate.categorical.get("genre") != shown.genre[cid] or "popularity" not in e.candidate.numeric:
            wrong_features += 1
    unexpected = sum(1 for key in plain if key not in rp.labels)

    def attributed(fbs: list[Feedback]) -> int:
        n = 0
        for fb in fbs:
            got = plain.get((fb.request_id, fb.candidate_id), [])
            if len(got) == 1 and got[0].source == SOURCE[fb.kind] and got[0].label_time_ms == fb.time_ms:
                n += 1
        return n

    joined = attributed(rp.in_window)
    before = rp.before
    pair_ids = collections.Counter(learning_pb2.PreferencePair.FromString(v).pair_id for v in pairs_raw)
    error_ids = collections.Counter(learning_pb2.PredictionError.FromString(v).error_id for v in errors_raw)
    want_errors = {stable_id(TENANT, rid, cid, "error") for rid, cid in rp.labels}
    dead = [learning_pb2.DeadLetter.FromString(v) for v in dead_raw]
    reasons = collections.Counter(d.reason for d in dead)
    unknown_ids = {fb.event_id for fb in rp.unknown}
    dead_unknown = collections.Counter()
    for d in dead:
        if d.reason == "unknown_request":
            ev = events_pb2.Event.FromString(d.payload)
            dead_unknown["expected" if ev.event_id in unknown_ids else "known_request"] += 1
    return {
        "examples": len(examples), "distinct_examples": len(first), "duplicates": duplicates,
        "conflicting": len(conflicting),
        "shown": len(rp.labels), "missing": missing, "wrong_label": wrong_label,
        "wrong_position": wrong_position, "wrong_features": wrong_features, "unexpected": unexpected,
        "in_window_sent": len(rp.in_window), "in_window_attributed": joined,
        "join_ratio": joined / len(rp.in_window) if rp.in_window else 1.0,
        "before_sent": len(before), "before_attributed": attributed(before),
        "corrections_expected": len(rp.corrections), "corrections_ok": len(corrections & rp.corrections),
        "corrections_unexpected": len(corrections - rp.corrections),
        "pairs_expected": len(rp.pairs), "pairs_ok": len(set(pair_ids) & rp.pairs),
        "pairs_unexpected": len(set(pair_ids) - rp.pairs),
        "pair_duplicates": sum(n - 1 for n in pair_ids.values()),
        "errors_expected": len(want_errors), "errors_ok": len(set(error_ids) & want_errors),
        "error_duplicates": sum(n - 1 for n in error_ids.values()),
        "dead_letters": dict(reasons), "unknown_sent": len(unknown_ids),
        "unknown_dead_lettered": dead_unknown["expected"],
        "known_dead_lettered_unknown": dead_unknown["known_request"],
    }


# -- the run -----------------------------------------------------------------------------------


def fmt(x: float, digits: int = 0) -> str:
    return "n/a" if x != x else f"{x:,.{digits}f}"


def num(x: float | None, digits: int = 1) -> float | None:
    """A JSON-safe number: None for NaN."""
    return None if x is None or x != x else round(float(x), digits)


def run(args: argparse.Namespace, ws: c.Workspace) -> dict[str, Any]:
    n = args.events or (2000 if args.quick else 10_000)
    window = args.window_ms
    extra_env = dict(kv.split("=", 1) for kv in args.miner_env)
    broker, bootstrap = ws.broker()
    run_id = uuid.uuid4().hex[:8]
    topics = Topics.with_prefix(f"bench.{run_id}.")
    ensure_topics(bootstrap, topics.all(), PARTITIONS)

    t = time.perf_counter()
    rp = generate(n, window_ms=window, rate=args.rate, topics=topics)
    total = len(rp.records)
    gen_s = time.perf_counter() - t
    produce_s = produce(bootstrap, rp.records)
    sizes = [len(r[4]) for r in rp.records]
    c.say(f"replay: {n:,} impressions x {SLATE} candidates, {len(rp.in_window):,} in-window feedback "
          f"({len(rp.before)} before their impression), {len(rp.late)} late, "
          f"{len(rp.unknown)} unknown-request, "
          f"{rp.resent} re-sent ({dict(rp.resent_by_kind)}): {total:,} records, mean {np.mean(sizes):,.0f} B; "
          f"event time {n / args.rate:,.0f}s, window {window} ms; built in {gen_s:.1f}s, "
          f"produced in {produce_s:.1f}s ({total / produce_s:,.0f}/s)")

    inputs = [topics.events, topics.impressions]
    bare_runs: list[float] = []

    def bare(when: str) -> None:
        got, secs, passes = asyncio.run(bare_drain(bootstrap, inputs, total))
        bare_runs.append(got / secs)
        c.say(f"bare aiokafka consumer ({when}): {passes} passes over the {total:,} records, {got:,} in "
              f"{secs:.2f}s = {got / secs:,.0f}/s")

    bare("before the miner")

    examples_owed = len(rp.labels) + len(rp.corrections)
    proc, url = start_miner(ws, bootstrap, topics, f"bench-miner-{run_id}", window, "miner", extra_env)
    meter = c.CpuMeter({"miner": proc.pid, "broker": broker.pid}, threads=("miner", "broker"))
    d = watch_drain(proc, url, total, meter, timeout=240.0)
    c.say(f"miner: records read from {d.first:.2f}s after its start ({d.at_first:,.0f} at that poll), "
          f"all {total:,} at {d.done:.2f}s: {d.eps:,.0f}/s; ready at {d.ready:.2f}s")
    wait_settled(proc, url, d, meter, timeout=4 * window / 1000 + 120)
    emitted = {name: int(d.metrics.get(f"loopwise_miner_emitted_total{{topic={name}}}", 0))
               for name in ("examples", "preferences", "errors")}
    emitted["deadletter"] = int(c.delta(d.metrics, {}, "loopwise_miner_deadlettered_total"))
    c.say(f"miner: last example emitted at {d.closed:.2f}s ({d.e2e_eps:,.0f} records/s end to end; "
          f"{emitted['examples']:,} examples for {examples_owed:,} owed), table empty at {d.settled:.2f}s; "
          f"ready at {d.ready:.2f}s ({d.at_ready:,.0f} records read by then)")

    idle = 1.0 if args.quick else 1.5

    async def read_all() -> tuple[list[bytes], ...]:
        # as many as the miner says it emitted (all acked by now), then quiet
        return (await read_until_idle(bootstrap, topics.examples, emitted["examples"], 60, idle),
                await read_until_idle(bootstrap, topics.preferences, emitted["preferences"], 30, idle),
                await read_until_idle(bootstrap, topics.errors, emitted["errors"], 30, idle),
                await read_until_idle(bootstrap, topics.deadletter, emitted["deadletter"], 30, idle))

    outputs = asyncio.run(read_all())
    final = safe_scrape(url) or d.metrics
    result = check(rp, *outputs)
    proc.stop()

    # The miner writes about ten records per record it reads: what writing them costs a bare producer.
    written = [v for values in outputs for v in values]
    scratch = f"bench.{run_id}.scratch"
    ensure_topics(bootstrap, [scratch], PARTITIONS)
    produce_out_s = asyncio.run(bare_produce(bootstrap, scratch, written))
    c.say(f"bare aiokafka producer: the miner's {len(written):,} output records (examples, pairs, errors, dead "
          f"letters; not its changelog) in {produce_out_s:.2f}s = {len(written) / produce_out_s:,.0f}/s")

    profile_lines: list[str] = []
    if args.profile:
        profile_lines = profile_phase(args, ws, bootstrap, topics, run_id, window, total, extra_env,
                                      seconds=max((d.closed - d.first) * 1.5, 5.0))
    if not args.quick:
        bare("after the miner")
    bare_eps = max(bare_runs)

    late_metric = final.get("loopwise_miner_late_feedback_total", float("nan"))
    dup_metric = final.get("loopwise_miner_duplicates_total", float("nan"))
    floor_s = total / bare_eps + produce_out_s
    report(rp, result, d, final, bare_eps, total, late_metric, dup_metric)
    c.say(f"  {'bare read + bare write of outputs':<34} {total / floor_s:>10,.0f}  {floor_s:>8.2f}  "
          f"{total / floor_s / bare_eps:>8.4f}   (the Kafka floor of the miner's end-to-end work)")
    for line in profile_lines:
        c.say(line)
    per_event = max(d.measured, 1) / 1e6
    correct = (result["join_ratio"] == 1.0 and result["duplicates"] == 0 and result["missing"] == 0
               and result["wrong_label"] == result["wrong_position"] == result["wrong_features"] == 0
               and result["unexpected"] == 0 and late_metric == len(rp.late) and dup_metric == rp.resent
               and result["corrections_ok"] == len(rp.corrections) and result["corrections_unexpected"] == 0
               and result["pairs_ok"] == len(rp.pairs) and result["pairs_unexpected"] == 0
               and result["errors_ok"] == result["errors_expected"] and result["error_duplicates"] == 0
               and result["unknown_dead_lettered"] == len(rp.unknown)
               and result["dead_letters"] == {"unknown_request": len(rp.unknown)})
    c.say(f"correctness: {'every check passed' if correct else 'SOME CHECKS FAILED (WRONG above)'}; "
          f"miner/bare {d.eps / bare_eps:.4f} (goal >= {GOAL})")
    return {
        "correct": correct,
        "join_ratio": num(result["join_ratio"], 4), "duplicates": result["duplicates"],
        "duplicates_conflicting": result["conflicting"],
        "late": num(late_metric, 0), "late_sent": len(rp.late),
        "miner_eps": num(d.eps), "bare_eps": num(bare_eps),
        "miner_to_bare": num(d.eps / bare_eps, 4), "goal": GOAL,
        "miner_e2e_eps": num(d.e2e_eps), "miner_e2e_to_bare": num(d.e2e_eps / bare_eps, 4),
        "records": total, "impressions": n, "window_ms": window, "miner_env": extra_env,
        "in_window_sent": result["in_window_sent"], "in_window_attributed": result["in_window_attributed"],
        "before_sent": result["before_sent"], "before_attributed": result["before_attributed"],
        "shown": result["shown"], "missing": result["missing"], "wrong_label": result["wrong_label"],
        "wrong_position": result["wrong_position"], "wrong_features": result["wrong_features"],
        "unexpected_examples": result["unexpected"],
        "corrections_expected": result["corrections_expected"], "corrections_ok": result["corrections_ok"],
        "corrections_unexpected": result["corrections_unexpected"],
        "pairs_expected": result["pairs_expected"], "pairs_ok": result["pairs_ok"],
        "pairs_unexpected": result["pairs_unexpected"], "pair_duplicates": result["pair_duplicates"],
        "error_duplicates": result["error_duplicates"],
        "errors_expected": result["errors_expected"], "errors_ok": result["errors_ok"],
        "resent": rp.resent, "duplicates_metric": num(dup_metric, 0),
        "unknown_sent": result["unknown_sent"], "unknown_dead_lettered": result["unknown_dead_lettered"],
        "known_dead_lettered_unknown": result["known_dead_lettered_unknown"],
        "dead_letters": result["dead_letters"],
        "feedback_received_metric": num(final.get("loopwise_miner_feedback_received_total"), 0),
        "feedback_attributed_metric": num(final.get("loopwise_miner_feedback_attributed_total"), 0),
        "conflicts_metric": num(final.get("loopwise_miner_label_conflicts_total"), 0),
        "miner_first_read_s": num(d.first, 2), "miner_all_read_s": num(d.done, 2),
        "miner_all_emitted_s": num(d.closed, 2), "miner_ready_s": num(d.ready, 2),
        "read_before_ready": d.at_ready, "window_backlog_peak": d.backlog_peak,
        "metrics_stalls_s": [round(x, 1) for x in d.stalls],
        "miner_cpu_us_per_event": num(d.cpu.get("miner", float("nan")) / per_event),
        "broker_cpu_us_per_event": num(d.cpu.get("broker", float("nan")) / per_event),
        "miner_e2e_cpu_us_per_event": num(d.e2e_cpu.get("miner", float("nan")) / per_event),
        "bare_eps_runs": [round(x, 1) for x in bare_runs],
        "outputs_written": len(written), "bare_produce_outputs_s": num(produce_out_s, 2),
        "kafka_floor_eps": num(total / floor_s),
    }


def report(rp: Replay, r: dict[str, Any], d: Drain, m: dict[str, float], bare_eps: float, total: int,
           late_metric: float, dup_metric: float) -> None:
    def mx(prefix: str) -> float:
        return c.delta(m, {}, prefix)

    def row(name: str, got: Any, want: Any, ok: bool | None = None) -> None:
        mark = "" if ok is None else ("ok" if ok else "WRONG")
        c.say(f"  {name:<44} {got!s:>12} {want!s:>12}  {mark}")

    c.say()
    c.say(f"  {'correctness':<44} {'got':>12} {'expected':>12}")
    row("in-window feedback attributed (join)", r["in_window_attributed"], r["in_window_sent"],
        r["in_window_attributed"] == r["in_window_sent"])
    row("  of which arrived before the impression", r["before_attributed"], r["before_sent"],
        r["before_attributed"] == r["before_sent"])
    row("shown candidates with exactly one example", r["shown"] - r["missing"], r["shown"], r["missing"] == 0)
    row("  with the wrong label/source", r["wrong_label"], 0, r["wrong_label"] == 0)
    row("  with the wrong position", r["wrong_position"], 0, r["wrong_position"] == 0)
    row("  with the wrong candidate features", r["wrong_features"], 0, r["wrong_features"] == 0)
    row("examples for candidates never shown", r["unexpected"], 0, r["unexpected"] == 0)
    row("duplicate example records (same id)", r["duplicates"], 0, r["duplicates"] == 0)
    row("  ids with two different labels", r["conflicting"], 0, r["conflicting"] == 0)
    row("corrections for late positives", r["corrections_ok"], r["corrections_expected"],
        r["corrections_ok"] == r["corrections_expected"] and not r["corrections_unexpected"])
    row("  unexpected corrections", r["corrections_unexpected"], 0, r["corrections_unexpected"] == 0)
    row("late feedback (miner counter / sent)", fmt(late_metric), len(rp.late), late_metric == len(rp.late))
    row("duplicates (miner counter / re-sent)", fmt(dup_metric), rp.resent, dup_metric == rp.resent)
    row("preference pairs", r["pairs_ok"], r["pairs_expected"],
        r["pairs_ok"] == r["pairs_expected"] and not r["pairs_unexpected"])
    row("  unexpected pairs", r["pairs_unexpected"], 0, r["pairs_unexpected"] == 0)
    row("prediction errors", r["errors_ok"], r["errors_expected"], r["errors_ok"] == r["errors_expected"])
    row("unknown-request dead letters", r["unknown_dead_lettered"], r["unknown_sent"],
        r["unknown_dead_lettered"] == r["unknown_sent"])
    row("  for feedback of known requests", r["known_dead_lettered_unknown"], 0,
        r["known_dead_lettered_unknown"] == 0)
    other = {k: v for k, v in r["dead_letters"].items() if k != "unknown_request"}
    row("other dead letters", sum(other.values()), 0, not other)
    if other:
        c.say(f"    {other}")
    recv = m.get("loopwise_miner_feedback_received_total", float("nan"))
    attr = m.get("loopwise_miner_feedback_attributed_total", float("nan"))
    c.say(f"  miner counters: feedback received {fmt(recv)}, attributed {fmt(attr)}, late {fmt(late_metric)}, "
          f"duplicates {fmt(dup_metric)}, conflicts {fmt(m.get('loopwise_miner_label_conflicts_total', 0))}, "
          f"dead-lettered {fmt(mx('loopwise_miner_deadlettered_total'))}, "
          f"emitted {fmt(mx('loopwise_miner_emitted_total'))}")
    c.say()
    drained = d.measured
    c.say(f"  {'throughput':<34} {'events/s':>10}  {'seconds':>8}  {'vs bare':>8}")
    c.say(f"  {'bare aiokafka consumer':<34} {bare_eps:>10,.0f}  {total / bare_eps:>8.2f}")
    c.say(f"  {'miner: records read':<34} {d.eps:>10,.0f}  {d.seconds:>8.2f}  {d.eps / bare_eps:>8.4f}"
          f"   (goal >= {GOAL})")
    c.say(f"  {'miner: + last example emitted':<34} {d.e2e_eps:>10,.0f}  {d.closed - d.first:>8.2f}  "
          f"{d.e2e_eps / bare_eps:>8.4f}")
    c.say(f"  miner process: first record read at {d.first:.1f}s, ready (window timer past its catch-up) at "
          f"{d.ready:.1f}s with {d.at_ready:,.0f} of {total:,} records read; /metrics unanswered for > 1 s: "
          f"{', '.join(f'{x:.1f}s' for x in d.stalls) or 'never'}")
    if not d.ready <= d.done:
        c.say("  the window timer did not get past its changelog catch-up while records were read: no window "
              "closed during the drain, the table held every request until the end")
    else:
        c.say(f"  window backlog (table size) peak while polled: {d.backlog_peak:,.0f} requests")
    drained = d.measured
    if d.seconds > 0 and drained > 0:
        c.say("  CPU while reading: " + "; ".join(
            f"{name} {secs / drained * 1e6:,.0f} us/event ({secs / d.seconds:.2f} core)"
            for name, secs in d.cpu.items()) + f"; of {os.cpu_count()} cores")
        for proc in ("miner", "broker"):
            busy = sorted(d.threads.get(proc, {}).items(), key=lambda kv: -kv[1])[:4]
            c.say(f"    {proc} threads: "
                  + ", ".join(f"{t} {v / d.seconds:.2f} core" for t, v in busy if v > 0))
    if d.e2e_cpu and d.closed == d.closed:
        secs = d.closed - d.first
        c.say("  CPU until the last example was emitted: " + "; ".join(
            f"{name} {v / drained * 1e6:,.0f} us/event ({v / secs:.2f} core)" for name, v in d.e2e_cpu.items()))


def profile_phase(args: argparse.Namespace, ws: c.Workspace, bootstrap: str, topics: Topics, run_id: str,
                  window: int, total: int, extra_env: dict[str, str], seconds: float) -> list[str]:
    """A second miner (its own group and output topics) on the same input, under py-spy from its
    first record read for ``seconds`` (the first miner's time to emit everything, and some)."""
    out_topics = Topics.with_prefix(f"bench.{run_id}.profile.")
    profiled = Topics(**{**{k: getattr(out_topics, k) for k in ("examples", "preferences", "errors", "rewrites",
                                                                "models", "deadletter")},
                         "events": topics.events, "impressions": topics.impressions})
    ensure_topics(bootstrap, profiled.all(), PARTITIONS)
    proc, url = start_miner(ws, bootstrap, profiled, f"bench-miner-{run_id}-profile", window, "miner-profile",
                            extra_env)
    spy: list[subprocess.Popen | None] = [None]

    def on_first() -> None:
        spy[0] = c.py_spy(proc.pid, seconds, args.profile, "miner")

    meter = c.CpuMeter({"miner": proc.pid})
    try:
        d = watch_drain(proc, url, total, meter, timeout=240.0, on_first=on_first)
        wait_settled(proc, url, d, meter, timeout=4 * window / 1000 + 120)
        c.say(f"profiled miner (under py-spy): {d.eps:,.0f} records/s read, {d.e2e_eps:,.0f}/s end to end")
    finally:
        if spy[0] is not None:
            spy[0].wait(seconds + 30)
        proc.stop()
    return [f"py-spy profile of the miner, {seconds:.0f}s from its first record read (GIL-holding samples):",
            *c.summarize_folded(args.profile / "miner.folded", top=25)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller replay, one baseline run: a smoke run")
    parser.add_argument("--events", type=int, default=None, metavar="N",
                        help="impressions in the replay (default 10000, --quick 2000); records are about 2.2 N")
    parser.add_argument("--window-ms", type=int, default=5000,
                        help="attribution window, event time (default 5000)")
    parser.add_argument("--rate", type=float, default=20.0,
                        help="impressions per second of event time (default 20)")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="add a phase profiling a second miner with py-spy (folded stacks into DIR)")
    parser.add_argument("--miner-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an extra setting for the miner, e.g. LOOPWISE_CHANGELOG_CATCH_UP=false "
                             "(repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) at the end")
    args = parser.parse_args()
    with c.Workspace("loopwise-bench-attribution-", keep=args.keep) as ws:
        result = run(args, ws)
    c.emit_result(result)


if __name__ == "__main__":
    main()
