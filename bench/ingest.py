"""Collector events/s against bare Kafka producers writing the same records.

What runs (all on this machine, stopped at the end): the Tansu broker and the
collector (``python -m loopwise.collector``, a subprocess). Phases, each with a
warm-up and a measured window, each writing to topics of its own with the
collector's partition count (4):

- ``collector``: a grpc.aio client (this process) keeps ``--concurrency``
  (default 8) Report calls in flight, each a batch of 100 events (Impression
  20 %, Click 40 %, Accept 10 %, Turn 30 %), every event with a fresh event_id
  and client_time_ms = now; counted: events the collector answered accepted
  (it answers after the broker acked them);
- ``acked_producer``: the collector's own `AckedProducer` driven from asyncio
  in this process, same batches and concurrency: the collector's produce path
  without gRPC, parsing and validation;
- ``kafka_python``: a bare kafka-python 3.0.12 `KafkaProducer` with the
  collector's settings (acks=all, idempotent, zstd, linger_ms from
  `CollectorSettings`, the config `AckedProducer` builds), writing the records
  the collector writes (same keys, same serialised Events, received_time_ms
  set) in batches of 100, at most ``--concurrency`` batches unacknowledged: the
  baseline (``producer_eps``);
- ``kafka_python_stream``: the same producer without the window (send, never
  wait): the producer's own ceiling;
- ``confluent``: a bare confluent-kafka producer (idempotent, zstd, acks=all,
  same linger), same window: the ceiling of a C client.

After the collector phase, every record on its topics is read back with an
aiokafka consumer (until idle: Tansu's end offsets under-report) and checked
against the event ids the collector accepted: missing, duplicated, unexpected.

Where the time goes: CPU per event of every process (client, collector,
broker) and of their threads; ``--profile DIR`` adds a py-spy phase.
The collector phase and its baseline alternate for two rounds (one with --quick).

Usage: python bench/ingest.py [--seconds S] [--quick] [--concurrency N] [--profile DIR]
The last line printed is one JSON object: collector_eps, producer_eps,
collector_to_producer, confluent_eps, and extras.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import _common as c
import grpc

from loopwise import codec, stamps
from loopwise.client.sync import CHANNEL_OPTIONS
from loopwise.collector.producer import AckedProducer, producer_config
from loopwise.collector.settings import CollectorSettings
from loopwise.topics import Topics, ensure_topics
from loopwise.v1 import events_pb2, feedback_pb2, feedback_pb2_grpc

TENANT = "default"
BATCH = 100
PARTITIONS = 4
GOAL = 0.7
MIX = (("impression", 20), ("click", 40), ("accept", 10), ("turn", 30))
Record = tuple[str, bytes, bytes]  # (topic, key, value)

UTTERANCES = ("play the new album by the beatles", "what's the weather tomorrow",
              "set a timer for ten minutes", "turn off the kitchen lights", "call mom",
              "play something relaxing", "how far is the moon",
              "add milk to my shopping list", "skip this song", "remind me to water the plants at six")
INTENTS = (("music", "play"), ("weather", "forecast"), ("timer", "set"), ("home", "lights_off"),
           ("phone", "call"), ("music", "play"), ("qa", "question"), ("lists", "add"), ("music", "skip"),
           ("reminders", "create"))


# -- events ------------------------------------------------------------------------------------


def templates(seed: int = 11, per_kind: int = 50) -> dict[str, list[events_pb2.Event]]:
    """Realistic events of each kind, without event_id and client_time_ms."""
    rng = random.Random(seed)
    out: dict[str, list[events_pb2.Event]] = {kind: [] for kind, _ in MIX}
    for _ in range(per_kind):
        user = f"u{rng.randint(1, 943)}"
        request = uuid.UUID(int=rng.getrandbits(128)).hex
        shown = [f"m{rng.randint(1, 1682)}" for _ in range(10)]
        scores = sorted((round(rng.random(), 4) for _ in shown), reverse=True)
        pos = rng.randint(1, 10)
        base = {"tenant": TENANT, "user_id": user, "session_id": f"s-{user}-{rng.randint(1, 9)}"}
        impression = events_pb2.Impression(model="ranker", version="v1", candidate_ids=shown, scores=scores,
                                           propensities=[round(1 / (i + 2), 4) for i in range(10)],
                                           source="client")
        out["impression"].append(events_pb2.Event(**base, request_id=request, impression=impression))
        out["click"].append(events_pb2.Event(**base, request_id=request, click=events_pb2.Click(
            candidate_id=shown[pos - 1], position=pos, dwell_ms=rng.randint(0, 120_000))))
        out["accept"].append(events_pb2.Event(**base, request_id=request, accept=events_pb2.Accept(
            candidate_id=shown[pos - 1], position=pos)))
        i = rng.randrange(len(UTTERANCES))
        domain, intent = INTENTS[i]
        out["turn"].append(events_pb2.Event(**base, turn=events_pb2.Turn(
            utterance=UTTERANCES[i], status=events_pb2.RESPONSE_STATUS_OK, latency_ms=rng.randint(150, 900),
            barge_in=rng.random() < 0.05,
            interpretation=events_pb2.Interpretation(domain=domain, intent=intent,
                                                     slots={"slot": UTTERANCES[i].split()[-1]}))))
    return out


class EventSource:
    """Batches of 100 events in the MIX proportions, each with a fresh event_id.

    Every impression stands for a new Rank call (a fresh request_id); clicks and
    accepts refer to one of the last 50 impressions, so record keys (and the
    partitioner's work) are as varied as in production.
    """

    def __init__(self) -> None:
        self.templates = templates()
        kinds = [kind for kind, share in MIX for _ in range(share)]
        random.Random(3).shuffle(kinds)
        self.kinds = kinds  # one batch's kinds, in a mixed order
        self.prefix = uuid.uuid4().hex[:20]
        self.counter = itertools.count()
        self.cursor = itertools.count()
        self.recent: collections.deque[str] = collections.deque(
            (f"{self.prefix}r{i:011x}" for i in range(50)), maxlen=50)

    def batch(self) -> tuple[feedback_pb2.ReportRequest, list[str]]:
        """A ReportRequest of BATCH new events, and their event ids."""
        request = feedback_pb2.ReportRequest()
        now = stamps.now_ms()
        ids = []
        for kind in self.kinds:
            pool = self.templates[kind]
            n = next(self.counter)
            event = request.events.add()
            event.CopyFrom(pool[next(self.cursor) % len(pool)])
            event.event_id = f"{self.prefix}{n:012x}"
            event.client_time_ms = now
            if kind == "impression":
                event.request_id = f"{self.prefix}r{n:011x}"
                self.recent.append(event.request_id)
            elif kind != "turn":
                event.request_id = self.recent[n % len(self.recent)]
            ids.append(event.event_id)
        return request, ids

    def records(self, n: int, topics: Topics) -> list[Record]:
        """What the collector writes for ``n`` events: (topic, key, Event bytes with received_time_ms)."""
        out: list[Record] = []
        while len(out) < n:
            request, _ = self.batch()
            now = stamps.now_ms()
            for event in request.events:
                event.received_time_ms = now
                topic = topics.impressions if event.WhichOneof("body") == "impression" else topics.events
                out.append((topic, codec.record_key(event), event.SerializeToString()))
        return out[:n]


def phase_topics(name: str) -> Topics:
    return Topics(events=f"bench.{name}.events", impressions=f"bench.{name}.impressions")


def collector_config(bootstrap: str) -> dict[str, Any]:
    """The kafka-python settings the collector's producer uses, from the collector's own code."""
    settings = CollectorSettings.from_env({})
    return producer_config(bootstrap, compression=settings.compression, linger_ms=settings.linger_ms,
                           client_id="bench-kafka-python")


# -- threaded producer phases (kafka-python, confluent-kafka) ----------------------------------


class Window:
    """Batches in flight, completions counted inside the measured window (thread-safe)."""

    def __init__(self, result: c.PhaseResult) -> None:
        self.result = result
        self.cond = threading.Condition()
        self.in_flight = 0
        self.t0 = self.t1 = float("inf")
        self.failures: collections.Counter[str] = collections.Counter()

    def sent(self) -> None:
        with self.cond:
            self.in_flight += 1

    def done(self, started: float, n: int, error: BaseException | None) -> None:
        end = time.perf_counter()
        with self.cond:
            self.in_flight -= 1
            if self.t0 <= end <= self.t1:
                if error is None:
                    self.result.calls += 1
                    self.result.items += n
                    self.result.latencies.append(end - started)
                else:
                    self.result.errors += 1
            if error is not None:
                self.failures[type(error).__name__] += 1
            self.cond.notify_all()


def run_window(name: str, send: Callable[[list[Record], Window, float], None], pump: Callable[[Window], None],
               flush: Callable[[], None], batches: Iterator[list[Record]], *, window: int | None,
               warmup: float, seconds: float, meter: c.CpuMeter) -> c.PhaseResult:
    """Send batches, at most ``window`` unacknowledged (None: no limit), for warm-up + window."""
    result = c.PhaseResult(name)
    w = Window(result)
    start = time.perf_counter()
    measuring = False
    while True:
        now = time.perf_counter()
        if not measuring and now >= start + warmup:
            meter.start()
            with w.cond:
                w.t0, w.t1 = now, now + seconds
            measuring = True
        if now >= w.t1:
            break
        if window is not None and w.in_flight >= window:
            pump(w)
            continue
        w.sent()
        send(next(batches), w, time.perf_counter())
    result.cpu = meter.stop()
    result.threads = meter.threads_used
    result.seconds = w.t1 - w.t0
    flush()
    if w.failures:
        result.extra["errors"] = dict(w.failures)
    return result


def kafka_python_phase(name: str, bootstrap: str, pool: list[Record], topics: Topics, *, window: int | None,
                       warmup: float, seconds: float, meter: c.CpuMeter) -> c.PhaseResult:
    from kafka import KafkaProducer

    producer = KafkaProducer(**collector_config(bootstrap))
    route = {t: (topics.impressions if "impressions" in t else topics.events) for t, _, _ in pool}
    try:
        def send(records: list[Record], w: Window, started: float) -> None:
            left = [len(records)]
            lock = threading.Lock()
            first_error: list[BaseException | None] = [None]

            def finished(error: BaseException | None) -> None:
                with lock:
                    if error is not None and first_error[0] is None:
                        first_error[0] = error
                    left[0] -= 1
                    last = left[0] == 0
                if last:
                    w.done(started, len(records), first_error[0])

            for topic, key, value in records:
                fut = producer.send(route[topic], key=key, value=value)
                fut.add_callback(lambda _meta: finished(None))
                fut.add_errback(finished)

        def pump(w: Window) -> None:
            if w.in_flight:
                with w.cond:
                    w.cond.wait(0.05)

        return run_window(name, send, pump, lambda: producer.flush(timeout=30), batched(pool),
                          window=window, warmup=warmup, seconds=seconds, meter=meter)
    finally:
        producer.close(timeout=10)


def confluent_phase(name: str, bootstrap: str, pool: list[Record], topics: Topics, *, linger_ms: int,
                    window: int, warmup: float, seconds: float, meter: c.CpuMeter) -> c.PhaseResult:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "client.id": "bench-confluent", "acks": "all",
                         "enable.idempotence": True, "compression.type": "zstd", "linger.ms": linger_ms})
    route = {t: (topics.impressions if "impressions" in t else topics.events) for t, _, _ in pool}

    def send(records: list[Record], w: Window, started: float) -> None:
        left = [len(records)]
        first_error: list[BaseException | None] = [None]

        def delivered(err: Any, _msg: Any) -> None:  # runs inside poll(), on this thread
            if err is not None and first_error[0] is None:
                first_error[0] = RuntimeError(str(err))
            left[0] -= 1
            if left[0] == 0:
                w.done(started, len(records), first_error[0])

        for topic, key, value in records:
            producer.produce(route[topic], value=value, key=key, on_delivery=delivered)
        producer.poll(0)

    try:
        return run_window(name, send, lambda w: producer.poll(0.05), lambda: producer.flush(30),
                          batched(pool), window=window, warmup=warmup, seconds=seconds, meter=meter)
    finally:
        producer.flush(10)


def batched(pool: list[Record]) -> Iterator[list[Record]]:
    for i in itertools.cycle(range(0, len(pool) - BATCH + 1, BATCH)):
        yield pool[i:i + BATCH]


# -- asyncio phases (the collector, AckedProducer) ---------------------------------------------


async def collector_phase(target: str, source: EventSource, accepted_ids: list[str], *, concurrency: int,
                          warmup: float, seconds: float, meter: c.CpuMeter,
                          on_window: Callable[[str], Any] | None = None) -> c.PhaseResult:
    rejected: collections.Counter[str] = collections.Counter()
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as ch:
        stub = feedback_pb2_grpc.FeedbackServiceStub(ch)

        async def call(batch: tuple[feedback_pb2.ReportRequest, list[str]]) -> int:
            request, ids = batch
            response = await stub.Report(request, timeout=30)
            if response.accepted == len(ids):
                accepted_ids.extend(ids)
            else:
                for r in response.results:
                    if r.accepted:
                        accepted_ids.append(r.event_id)
                    else:
                        rejected[r.reason] += 1
            return response.accepted

        result = await c.closed_loop("collector", call, concurrency=concurrency, warmup=warmup,
                                     seconds=seconds, prepare=source.batch, meter=meter, on_window=on_window)
    if rejected:
        result.extra["rejected"] = dict(rejected)
    return result


async def acked_producer_phase(bootstrap: str, pool: list[Record], topics: Topics, *, concurrency: int,
                               warmup: float, seconds: float, meter: c.CpuMeter) -> c.PhaseResult:
    settings = CollectorSettings.from_env({})
    producer = AckedProducer(bootstrap, compression=settings.compression, linger_ms=settings.linger_ms,
                             client_id="bench-acked")
    route = {t: (topics.impressions if "impressions" in t else topics.events) for t, _, _ in pool}
    batches = batched([(route[t], k, v) for t, k, v in pool])
    try:
        async def call(records: list[Record]) -> int:
            await producer.send_batch(records, settings.ack_timeout_s)
            return len(records)

        return await c.closed_loop("acked_producer", call, concurrency=concurrency, warmup=warmup,
                                   seconds=seconds, prepare=lambda: next(batches), meter=meter)
    finally:
        await producer.close()


async def read_back(bootstrap: str, topics: list[str], idle_s: float = 3.0, limit_s: float = 90.0
                    ) -> collections.Counter[str]:
    """Every event_id on ``topics`` with its count, reading until nothing came for ``idle_s``."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    seen: collections.Counter[str] = collections.Counter()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_partition_fetch_bytes=4 << 20)
    await consumer.start()
    try:
        partitions = []
        for topic in topics:
            parts = consumer.partitions_for_topic(topic)
            for _ in range(50):
                if parts:
                    break
                await consumer.topics()  # refresh the metadata
                await asyncio.sleep(0.1)
                parts = consumer.partitions_for_topic(topic)
            partitions += [TopicPartition(topic, p) for p in sorted(parts or ())]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        deadline = time.monotonic() + limit_s
        last = time.monotonic()
        while time.monotonic() - last < idle_s and time.monotonic() < deadline:
            got = await consumer.getmany(timeout_ms=500, max_records=20_000)
            for records in got.values():
                for record in records:
                    seen[codec.decode(record.value).event_id] += 1
                last = time.monotonic()
    finally:
        await consumer.stop()
    return seen


# -- the benchmark -----------------------------------------------------------------------------


async def run(args: argparse.Namespace, ws: c.Workspace) -> dict[str, Any]:
    seconds, warmup = c.resolve_timing(args)
    window = args.concurrency
    broker, bootstrap = ws.broker()
    names = ["collector", "acked_producer", "kafka_python", "kafka_python_stream", "confluent"]
    ensure_topics(bootstrap, [t for n in names for t in (phase_topics(n).events,
                                                                 phase_topics(n).impressions)], PARTITIONS)
    ctopics = phase_topics("collector")
    collector, target, metrics_url = ws.service("loopwise.collector", {
        "LOOPWISE_KAFKA_BOOTSTRAP": bootstrap, "LOOPWISE_TENANTS": TENANT,
        "LOOPWISE_TOPIC_PARTITIONS": str(PARTITIONS), **ctopics.env()})
    settings = CollectorSettings.from_env({})
    source = EventSource()
    pool = source.records(20_000, Topics())
    sizes = [len(v) for _, _, v in pool]
    c.say(f"events: batches of {BATCH}, mix " + ", ".join(f"{k} {s}%" for k, s in MIX) +
          f"; serialised Event {min(sizes)}-{max(sizes)} B, mean {sum(sizes) / len(sizes):.0f} B")
    c.say(f"kafka settings: acks=all, idempotent, {settings.compression}, linger_ms={settings.linger_ms}, "
          f"{PARTITIONS} partitions; window {window} batches ({window * BATCH} events) in flight; "
          f"{warmup:g}s warm-up + {seconds:g}s measured per phase")

    rounds = 1 if args.quick else 2
    accepted_ids: list[str] = []
    window_metrics: collections.Counter[str] = collections.Counter()
    before: dict[str, float] = {}

    async def edge(which: str) -> None:
        nonlocal before
        snap = await asyncio.to_thread(c.scrape, metrics_url)
        if which == "start":
            before = snap
            return
        for key in ("events_accepted_total", "rpc_seconds_sum", "rpc_seconds_count",
                    "produce_failures_total"):
            window_metrics[key] += c.delta(snap, before, f"loopwise_collector_{key}")

    def producer_phase(name: str, window: int | None) -> c.PhaseResult:
        # Runs on this thread: nothing else runs on the event loop meanwhile.
        meter = c.CpuMeter({"broker": broker.pid}, threads=("client",))
        if name == "confluent":
            assert window is not None
            return confluent_phase(name, bootstrap, pool, phase_topics(name), linger_ms=settings.linger_ms,
                                   window=window, warmup=warmup, seconds=seconds, meter=meter)
        return kafka_python_phase(name, bootstrap, pool, phase_topics(name), window=window, warmup=warmup,
                                  seconds=seconds, meter=meter)

    # The collector and its baseline alternate, so that drift hits both alike.
    rounds_of: dict[str, list[c.PhaseResult]] = {"collector": [], "kafka_python": []}
    for r in range(rounds):
        meter = c.CpuMeter({"collector": collector.pid, "broker": broker.pid}, threads=("collector",))
        rounds_of["collector"].append(await collector_phase(
            target, source, accepted_ids, concurrency=args.concurrency, warmup=warmup, seconds=seconds,
            meter=meter, on_window=edge))
        rounds_of["kafka_python"].append(producer_phase("kafka_python", window))
        for res in (rounds_of["collector"][-1], rounds_of["kafka_python"][-1]):
            show(res, f"round {r + 1}")
    results = {name: c.merge(name, res) for name, res in rounds_of.items()}

    c.say("reading the collector's topics back (until idle) ...")
    t = time.monotonic()
    seen = await read_back(bootstrap, [ctopics.events, ctopics.impressions])
    accepted = set(accepted_ids)
    missing = len(accepted - seen.keys())
    duplicates = sum(n - 1 for n in seen.values() if n > 1)
    unexpected = len(seen.keys() - accepted)
    complete = missing == 0
    c.say(f"  {len(accepted):,} accepted, {sum(seen.values()):,} records read in "
          f"{time.monotonic() - t:.1f}s: "
          f"{missing:,} missing, {duplicates:,} duplicated, {unexpected:,} not acknowledged to the client "
          f"-> {'every accepted event is on the topic' if complete else 'ACCEPTED EVENTS ARE MISSING'}")

    results["acked_producer"] = await acked_producer_phase(
        bootstrap, pool, phase_topics("acked_producer"), concurrency=args.concurrency, warmup=warmup,
        seconds=seconds, meter=c.CpuMeter({"broker": broker.pid}, threads=("client",)))
    show(results["acked_producer"])
    results["kafka_python_stream"] = producer_phase("kafka_python_stream", None)
    show(results["kafka_python_stream"])
    results["confluent"] = producer_phase("confluent", window)
    show(results["confluent"])

    profile_lines: list[str] = []
    if args.profile is not None:
        c.say(f"profiling the collector with py-spy for {seconds:g}s (not counted) ...")
        spy = None

        async def start_spy(which: str) -> None:
            nonlocal spy
            if which == "start":
                spy = c.py_spy(collector.pid, seconds, args.profile, "collector")

        await collector_phase(target, source, [], concurrency=args.concurrency, warmup=warmup,
                              seconds=seconds, meter=c.CpuMeter({}), on_window=start_spy)
        if spy is not None:
            spy.wait(timeout=seconds + 30)
        profile_lines = c.summarize_folded(args.profile / "collector.folded")

    col, kp, ck = results["collector"], results["kafka_python"], results["confluent"]
    ratio = col.items_per_s / kp.items_per_s if kp.items_per_s else 0.0
    report(results, window_metrics, ratio)
    if profile_lines:
        c.say(f"py-spy (threads holding the GIL) of the collector, {args.profile}/collector.folded:")
        for line in profile_lines:
            c.say("  " + line)
    return {
        "collector_eps": round(col.items_per_s, 1),
        "producer_eps": round(kp.items_per_s, 1),
        "collector_to_producer": round(ratio, 3),
        "confluent_eps": round(ck.items_per_s, 1),
        "acked_producer_eps": round(results["acked_producer"].items_per_s, 1),
        "producer_stream_eps": round(results["kafka_python_stream"].items_per_s, 1),
        "collector_p50_ms": round(col.pct_ms(50), 2),
        "collector_p99_ms": round(col.pct_ms(99), 2),
        "collector_errors": col.errors,
        "accepted_total": len(accepted),
        "records_read": sum(seen.values()),
        "missing": missing,
        "duplicates": duplicates,
        "all_accepted_on_topic": complete,
        "cpu_us_per_event": {name: {k: round(v / r.items * 1e6, 1) for k, v in r.cpu.items()}
                             for name, r in results.items() if r.items},
        "concurrency": args.concurrency,
        "batch": BATCH,
        "seconds": round(seconds, 2),
        "rounds": rounds,
        "goal_met": ratio >= GOAL,
    }


def show(res: c.PhaseResult, label: str = "") -> None:
    c.say(f"  {label:<8}{res.name:<20} {res.items_per_s:9,.0f} events/s  ({res.calls_per_s:6,.0f} batches/s, "
          f"p50 {res.pct_ms(50):6.2f} ms, p99 {res.pct_ms(99):6.2f} ms per batch; {res.errors} errors"
          + (f"; {res.extra}" if res.extra else "") + ")")


def report(results: dict[str, c.PhaseResult], metrics: dict[str, float], ratio: float) -> None:
    c.say("")
    c.say("== results (rounds merged) ==")
    for res in results.values():
        c.say(f"{res.name:<20} {res.items_per_s:9,.0f} events/s  p50 {res.pct_ms(50):6.2f} ms  "
              f"p99 {res.pct_ms(99):6.2f} ms per batch of {BATCH}")
        c.say(f"{'':<20} CPU: {res.cpu_line(per='event')}")
        for proc in res.threads:
            c.say(f"{'':<20} {proc} threads: {res.threads_line(proc, per='event')}")
    c.say(f"{'':<20} (collector threads: main = the event loop: gRPC, parse, validate, serialise; the "
          "python/TID threads are AckedProducer's send thread and kafka-python's I/O thread, named in "
          "the acked_producer phase)")
    col, kp = results["collector"], results["kafka_python"]
    if metrics:
        handler_ms = metrics["rpc_seconds_sum"] / max(metrics["rpc_seconds_count"], 1) * 1000
        c.say(f"collector's own metrics over the windows: {metrics['events_accepted_total']:,.0f} events "
              f"accepted, Report handler {handler_ms:.2f} ms mean, "
              f"{metrics['produce_failures_total']:.0f} produce failures")
    acked = results["acked_producer"]
    if col.items and kp.items and acked.items:
        service = col.cpu["collector"] / col.items * 1e6
        produce = acked.cpu["client"] / acked.items * 1e6
        loop = col.threads.get("collector", {}).get("main", 0.0) / col.items * 1e6
        c.say("")
        c.say("== where an event goes (CPU us per event) ==")
        c.say(f"collector process {service:.1f}: its event loop (gRPC, parse, validate, serialise, answer) "
              f"{loop:.1f}, the rest (AckedProducer send thread + kafka-python I/O) {service - loop:.1f}")
        c.say(f"the same produce path alone (acked_producer) {produce:.1f}; bare kafka-python "
              f"{kp.cpu['client'] / kp.items * 1e6:.1f}; confluent-kafka "
              f"{results['confluent'].cpu['client'] / max(results['confluent'].items, 1) * 1e6:.1f}")
        c.say(f"a process's Python threads share one GIL: the collector "
              f"({col.cpu['collector'] / col.seconds:.2f} core) and the bare producer "
              f"({kp.cpu['client'] / kp.seconds:.2f} core) each top out near one "
              "core, so events/s ~ 1 / (CPU per event)")
    c.say("")
    base = kp.items_per_s or float("nan")
    c.say(f"collector_to_producer = {ratio:.3f} (goal >= {GOAL}: {'met' if ratio >= GOAL else 'NOT met'}); "
          f"acked_producer/kafka_python = {acked.items_per_s / base:.3f}; "
          f"confluent/kafka_python = {results['confluent'].items_per_s / base:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    c.add_common_args(parser, seconds=6.0, concurrency=8)
    args = parser.parse_args()
    with c.Workspace("loopwise-bench-ingest-", keep=args.keep) as ws:
        result = asyncio.run(run(args, ws))
    c.emit_result(result)


if __name__ == "__main__":
    main()
