"""The Loopwise loop through the real local stack (``--loopwise stack``).

`loopwise.tools.stack.up` starts the broker, Redis, collector, inference and miner
(attribution window ``window_ms``, short, so windows close as the replay goes).
Each request of the stream is ranked through `Client.rank` with the demo's
features; a liked movie gets a Click at its served position (wall-clock event
time right after its Rank: the inference service stamps impressions with its
own clock, so the replay's wall clock *is* the compressed MovieLens timeline);
nothing is sent for the other candidates: the miner's window makes them
negatives. The scores recorded for Loopwise are those of the Rank answers,
with the version each answer names.

Training, two ways:

- the stack has a trainer service (``loopwise.trainer`` in `stack.SERVICES`):
  it is told to trigger every ``every`` requests' worth of examples
  (``LOOPWISE_TRAINER_EVERY_N``, interval trigger off); at each such point
  the replay waits (up to ``SERVICE_WAIT_S``) for the run's announcement on
  the models topic (published or refused). trigger-to-serving is estimated
  as the first Rank answer naming the version minus (announcement time - the
  run's train + evaluate + export seconds); trainer examples/s come from the
  announcements' figures.
- no trainer service: the bench triggers each run itself (the replay waits):
  the examples the miner has produced so far for *complete* requests (every
  candidate labelled: positives come at once, negatives when the window
  closes, so a fresh request is all positives; `CompleteRequests`) and the
  preference pairs are handed to the in-process trainer (``loopwise.trainer``'s
  `train.run` on its bounded window, or the bench stand-in), and a version
  that passes is published like the service does (model store, weights,
  Redis pointer) plus a `ModelAnnouncement` on the models topic.
  trigger-to-serving is the time from the trigger to the first Rank answer
  naming the new version.

The versions published are also scored in-process on the requests that came
after them ("loopwise_shadow"): what the loop would have served had every
version gone live at once; the gap to "loopwise" is the cost of the swap
latency (or, if inference never swaps, of not swapping).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _learning_deltas import delta_figures
from _learning_loopwise import LoopRun, OnnxScorer, TrainStats
from _learning_stream import Stream

from loopwise.modelstore import ModelStore
from loopwise.modelstore.contract import DEFAULT_MODEL
from loopwise.tools import stack
from loopwise.topics import Topics
from loopwise.v1 import learning_pb2

MODEL = DEFAULT_MODEL
# Clicks go out at least this often (a client reports feedback as it happens; batching by a
# request count made the clicks of a fast replay wait ~1 s, 50 requests, before any learner saw them).
FLUSH_S = 0.1
SWAP_WAIT_S = 15.0  # after the replay, how long to wait for a pending version to serve
SERVICE_WAIT_S = 60.0  # trainer service: how long the replay waits at a trigger point for its run
DRAIN_S = 3.0  # at a trigger, wait until no new example arrived for this long (bounded by the window)


class ExampleReader(threading.Thread):
    """Reads the examples and preferences topics from the beginning into memory (kafka-python,
    every partition)."""

    def __init__(self, bootstrap: str, examples: str, preferences: str, models: str, partitions: int) -> None:
        super().__init__(name="examples-reader", daemon=True)
        from kafka import KafkaConsumer, TopicPartition

        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                      auto_offset_reset="earliest", client_id="loopwise-bench-learning")
        parts = [TopicPartition(t, p) for t in (examples, preferences, models) for p in range(partitions)]
        self.consumer.assign(parts)
        self.consumer.seek_to_beginning(*parts)
        self.examples_topic = examples
        self.models_topic = models
        self.announcements: list[tuple[float, learning_pb2.ModelAnnouncement]] = []  # (wall time seen, record)
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.pending: list[learning_pb2.Example] = []
        self.pairs: list[learning_pb2.PreferencePair] = []
        self.total = 0
        self.total_pairs = 0
        self.last_arrival = time.monotonic()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                batch = self.consumer.poll(timeout_ms=200, max_records=5000)
                exs, prs = [], []
                for tp, recs in batch.items():
                    if tp.topic == self.examples_topic:
                        exs.extend(learning_pb2.Example.FromString(r.value) for r in recs)
                    elif tp.topic == self.models_topic:
                        with self.lock:
                            self.announcements.extend(
                                (time.time(), learning_pb2.ModelAnnouncement.FromString(r.value)) for r in recs)
                    else:
                        prs.extend(learning_pb2.PreferencePair.FromString(r.value) for r in recs)
                if exs or prs:
                    with self.lock:
                        self.pending.extend(exs)
                        self.pairs.extend(prs)
                        self.total += len(exs)
                        self.total_pairs += len(prs)
                        self.last_arrival = time.monotonic()
        except BaseException as exc:  # noqa: BLE001 - surfaced by `take`
            self.error = exc
        finally:
            self.consumer.close()

    def take(self) -> list[learning_pb2.Example]:
        if self.error is not None:
            raise RuntimeError(f"reading examples failed: {self.error!r}")
        with self.lock:
            out, self.pending = self.pending, []
        return out

    def take_announcements(self) -> list[tuple[float, learning_pb2.ModelAnnouncement]]:
        with self.lock:
            out, self.announcements = self.announcements, []
        return out

    def take_pairs(self) -> list[learning_pb2.PreferencePair]:
        with self.lock:
            out, self.pairs = self.pairs, []
        return out

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=5)


class CompleteRequests:
    """Holds the miner's examples until every candidate of their request has one.

    Positives are emitted at once and negatives when the window closes, so the
    newest examples are mostly positives; training on them before their
    negatives land would teach "everything recent is a click". A trainer keeps
    a request's examples out until its window has closed; this is that rule.
    """

    def __init__(self, k: int) -> None:
        self.k = k
        self.open: dict[str, dict[str, learning_pb2.Example]] = {}

    def add(self, examples: list[learning_pb2.Example]) -> list[learning_pb2.Example]:
        """The examples of the requests completed by ``examples`` (a correction's positive wins)."""
        touched = set()
        for ex in examples:
            have = self.open.setdefault(ex.request_id, {})
            old = have.get(ex.candidate_id)
            if old is None or ex.label > old.label:
                have[ex.candidate_id] = ex
            touched.add(ex.request_id)
        out: list[learning_pb2.Example] = []
        for rid in touched:
            if len(self.open[rid]) >= self.k:
                out.extend(self.open.pop(rid).values())
        return out


def _announce(bootstrap: str, topic: str, tenant: str, version: str, previous: str, metrics: dict[str, float],
              reason: str) -> None:
    from kafka import KafkaProducer

    from loopwise import stamps

    msg = learning_pb2.ModelAnnouncement(event_id=stamps.new_event_id(), tenant=tenant, model=MODEL,
                                         version=version, previous_version=previous, action="published",
                                         reason=reason, metrics=metrics,
                                         time_ms=stamps.now_ms())
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        producer.send(topic, key=f"{tenant}|{MODEL}".encode(), value=msg.SerializeToString()).get(timeout=10)
    finally:
        producer.close()


def run_stack(stream: Stream, parent: bytes, every: int, trainer: Any, *,
              window_ms: int = 2_000, keep: bool = False, tenant: str = "default", partitions: int = 4,
              training: str = "auto", service_env: dict[str, str] | None = None,
              say: Callable[[str], None] = print) -> LoopRun:
    """The replay through a local stack; ``service_env``: extra settings of its services (e.g.
    ``LOOPWISE_FEEDBACK_MODE``; ``fnw``: the miner's examples are not held back as complete
    requests in bench-triggered training, the fake negatives and positive duplicates go in as
    they come)."""
    import redis

    from loopwise.client import Client

    root = Path(tempfile.mkdtemp(prefix="loopwise-bench-learning-"))
    say(f"starting a local stack in {root} (attribution window {window_ms} ms) ...")
    t = time.monotonic()
    # Read only by a trainer service, where the stack has one: trigger every `every` requests' examples.
    # training="bench": a trainer service, if any, never triggers (the bench does).
    every_n = int(0.95 * every * stream.k) if training != "bench" else 1 << 60
    env = {"LOOPWISE_LOG_LEVEL": "WARNING", "LOOPWISE_IDLE_S": "1",
           "LOOPWISE_TRAINER_EVERY_N": str(every_n), "LOOPWISE_TRAINER_INTERVAL_S": str(1 << 30),
           "LOOPWISE_TRAINER_CHECK_S": "0.5", **(service_env or {})}
    fake_negatives = env.get("LOOPWISE_FEEDBACK_MODE") == "fnw"
    info = stack.up(root, tenants=(tenant,), partitions=partitions, attribution_window_ms=window_ms,
                    extra_env=env)
    service = "trainer" in info.pids and training != "bench"
    say(f"stack up in {time.monotonic() - t:.1f}s: services {', '.join(info.pids)}; training "
        + ("by the stack's trainer service (the bench only watches)" if service else
           f"triggered by the bench every {every} requests ({trainer.name})"))
    reader: ExampleReader | None = None
    try:
        topics = Topics(**info.topics) if info.topics else Topics.from_env()
        store = ModelStore(info.model_store)
        served_v1 = store.load(tenant, MODEL, "v1")[0]
        if served_v1 != parent:
            say("note: the stack's v1 is not byte-identical to the bench's cold-start model")
        reader = ExampleReader(info.kafka, topics.examples, topics.preferences, topics.models, partitions)
        reader.start()
        complete = CompleteRequests(stream.k)
        rdb = redis.Redis.from_url(info.redis)
        k = stream.k
        scores = np.full(stream.n * k, np.nan)
        version = np.zeros(stream.n, dtype=np.int64)
        sequence = np.zeros(stream.n, dtype=np.int64)  # the sparse delta each answer was scored with
        stats: TrainStats = trainer.stats
        pending: dict[str, float] = {}  # published version -> trigger time (monotonic)
        swaps: list[float] = []
        published: list[tuple[int, bytes]] = []  # (first request after the trigger, artifact)
        current = "v1"
        first_seen: dict[str, float] = {}  # service mode: version -> wall time of the first Rank naming it
        announced: dict[str, learning_pb2.ModelAnnouncement] = {}
        clicks = 0
        request_index: dict[str, int] = {}
        seen_examples: list[learning_pb2.Example] = []
        extra: dict[str, Any] = {}
        replay_start = time.monotonic()
        paused_s = 0.0  # the replay waiting for the trainer service's runs (no traffic meanwhile)
        rank_seconds = 0.0
        last_flush = time.monotonic()
        with Client(info.collector, info.inference, tenant=tenant) as client:
            for i in range(stream.n):
                ids = stream.item_ids(i)
                t0 = time.perf_counter()
                ranked = client.rank(ids, **stream.rank_kwargs(i))
                rank_seconds += time.perf_counter() - t0
                scores[i * k:(i + 1) * k] = ranked.scores
                request_index[ranked.request_id] = i
                version[i] = int(ranked.version.lstrip("v") or 0)
                sequence[i] = getattr(ranked, "delta_sequence", 0)
                if ranked.version in pending:
                    swaps.append(time.monotonic() - pending.pop(ranked.version))
                    say(f"  {ranked.version} serving from request {i}, {swaps[-1]:.2f}s after its trigger")
                if service:
                    watch_service(reader, store, tenant, i, ranked.version, published, first_seen, announced, say)
                liked = np.flatnonzero(stream.label[i] > 0)
                for j in liked.tolist():
                    client.send(client.events.click(ranked.request_id, ids[j], user_id=stream.user(i),
                                                    position=ranked.ranking.index(j) + 1))
                    clicks += 1
                if time.monotonic() - last_flush >= FLUSH_S:
                    client.flush()
                    last_flush = time.monotonic()
                if service and (i + 1) % every == 0 and i + 1 < stream.n:
                    # The replay waits for the service's run (as it waits for its own runs otherwise).
                    client.flush()
                    paused = time.monotonic()
                    wait_until = paused + SERVICE_WAIT_S
                    while time.monotonic() < wait_until and not watch_service(
                            reader, store, tenant, i + 1, ranked.version, published, first_seen, announced, say):
                        time.sleep(0.2)
                    paused_s += time.monotonic() - paused
                if not service and (i + 1) % every == 0 and i + 1 < stream.n:
                    client.flush()
                    trigger = time.monotonic()
                    deadline = trigger + max(DRAIN_S, 2 * window_ms / 1000)
                    while time.monotonic() < deadline and time.monotonic() - reader.last_arrival < 0.5:
                        time.sleep(0.05)  # let the batch in flight land (bounded)
                    new = reader.take() if fake_negatives else complete.add(reader.take())
                    seen_examples.extend(new)
                    pairs = reader.take_pairs()
                    artifact, run_info = trainer.train_examples(new, pairs)
                    run_info.update(after_request=i + 1, examples_new=len(new), pairs_new=len(pairs))
                    if artifact is None:
                        run_info["trigger_s"] = round(time.monotonic() - trigger, 2)
                        stats.history.append(run_info)
                        say(f"  trigger after request {i + 1}: no version ({run_info.get('reason', '')})")
                        continue
                    version_name = trainer.publish(store, rdb, tenant, MODEL, artifact, current)
                    _announce(info.kafka, topics.models, tenant, version_name, current,
                              {k_: float(v) for k_, v in run_info.items() if isinstance(v, int | float)},
                              f"bench/learning.py: run triggered by the bench ({trainer.name})")
                    current = version_name
                    pending[version_name] = trigger
                    published.append((i + 1, artifact))
                    run_info.update(version=version_name, trigger_s=round(time.monotonic() - trigger, 2))
                    stats.history.append(run_info)
                    say(f"  trigger after request {i + 1}: {len(new)} new examples of complete requests, "
                        f"{len(pairs)} pairs; " + ", ".join(f"{k_}={v}" for k_, v in run_info.items()
                                                          if k_ not in ("after_request",)))
            client.flush()
            replay_s = time.monotonic() - replay_start
            # A version published but not yet seen: probe until it serves (bounded).
            probe = stream.request(0, tenant)
            wait_until = time.monotonic() + (SWAP_WAIT_S if pending else 0)
            if service:
                time.sleep(min(SWAP_WAIT_S, 2 * window_ms / 1000 + 3.0))
                watch_service(reader, store, tenant, stream.n, client.rank_raw(probe).version, published,
                              first_seen, announced, say)
            while pending and time.monotonic() < wait_until:
                answer = client.rank_raw(probe)
                if answer.version in pending:
                    swaps.append(time.monotonic() - pending.pop(answer.version))
                time.sleep(0.2)
        extra.update(delta_figures(info.metrics, replay_s))
        extra["replay_rank_per_s"] = round(stream.n / max(replay_s, 1e-9), 1)
        # while traffic flowed (the pauses for the trainer service's runs left out)
        extra["replay_active_rank_per_s"] = round(stream.n / max(replay_s - paused_s, 1e-9), 1)
        # the states the replay was served from: one per version and delta sequence seen
        extra["served_states"] = len(set(zip(version.tolist(), sequence.tolist(), strict=True)))
        extra["rank_ms_mean"] = round(1000 * rank_seconds / stream.n, 2)
        extra["clicks_reported"] = clicks
        time.sleep(min(2 * window_ms / 1000 + 1.0, 10.0))
        seen_examples.extend(complete.add(reader.take()))
        extra.update(check_examples(stream, request_index, seen_examples))
        extra["examples_read"] = reader.total
        extra["pairs_read"] = reader.total_pairs
        extra["examples_expected"] = stream.n * k
        if not service:
            extra["published_versions"] = [h["version"] for h in stats.history if "version" in h]
            extra["runs_refused"] = sum(1 for h in stats.history if "version" not in h)
        extra["versions_served"] = sorted({f"v{v}" for v in np.unique(version).tolist()})
        if service:
            swaps = service_swaps(first_seen, announced)
            stats = service_stats(announced)
            extra["trigger_to_serving_note"] = ("trainer service: trigger estimated as the announcement time minus "
                                                "the run's train+evaluate+export seconds")
            extra["published_versions"] = sorted(announced, key=lambda v: int(v.lstrip("v")))
        extra["trigger_to_serving_s"] = round(float(np.median(swaps)), 2) if swaps else None
        if not swaps and published:
            extra["trigger_to_serving_note"] = (f"no Rank answer named a published version (waited {SWAP_WAIT_S:.0f}s "
                                                "after the replay): the inference service did not hot-swap")
        v1 = (version == 1) & (sequence == 0)  # the cold-start model as published, no delta on it
        extra["requests_with_deltas"] = int((sequence > 0).sum())
        if v1.any():
            static = OnnxScorer(served_v1).score(stream.sparse[np.repeat(v1, k)], stream.dense[np.repeat(v1, k)])
            extra["static_parity_max_abs"] = float(np.max(np.abs(static - scores[np.repeat(v1, k)])))
        # Shadow: every published version scored in-process on the requests after its trigger.
        shadow = OnnxScorer(parent).score(stream.sparse, stream.dense)
        for j, (first, artifact) in enumerate(published):
            last = published[j + 1][0] if j + 1 < len(published) else stream.n
            shadow[first * k:last * k] = OnnxScorer(artifact).score(stream.sparse[first * k:last * k],
                                                                     stream.dense[first * k:last * k])
        extra["shadow_scores_loopwise"] = shadow
    finally:
        if reader is not None:
            reader.stop()
        stopped = stack.down(root)
        say(f"stack stopped ({', '.join(stopped)})")
        if keep:
            say(f"stack directory kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return LoopRun(scores=scores, version=version, trainer="trainer service" if service else trainer.name,
                   stats=stats, mode="stack, trainer service" if service else "stack, bench-triggered training",
                   extra=extra)


# -- when the stack has its own trainer service ------------------------------------------------


def watch_service(reader: ExampleReader, store: ModelStore, tenant: str, request: int, serving: str,
                  published: list[tuple[int, bytes]], first_seen: dict[str, float],
                  announced: dict[str, learning_pb2.ModelAnnouncement], say: Callable[[str], None]) -> int:
    """Record the trainer service's announcements (with the request they arrived before and the
    artifact, for the shadow) and the first Rank answer naming each version; how many arrived."""
    if serving not in first_seen:
        first_seen[serving] = time.time()
    got = reader.take_announcements()
    for _, ann in got:
        if ann.tenant != tenant or ann.model != MODEL:
            continue
        say(f"  trainer service: {ann.action} {ann.version or '-'} before request {request} ({ann.reason})")
        if ann.action == "published" and ann.version:
            announced[ann.version] = ann
            published.append((request, store.load(tenant, MODEL, ann.version)[0]))
    return len(got)


def service_swaps(first_seen: dict[str, float], announced: dict[str, learning_pb2.ModelAnnouncement]) -> list[float]:
    """Seconds from each run's estimated trigger (announcement time minus the run's train,
    evaluate and export seconds) to the first Rank answer naming its version."""
    out = []
    for version, ann in announced.items():
        if version in first_seen:
            run_s = sum(ann.metrics.get(key, 0.0) for key in ("train_seconds", "evaluate_seconds", "export_seconds"))
            out.append(first_seen[version] - (ann.time_ms / 1000 - run_s))
    return out


def service_stats(announced: dict[str, learning_pb2.ModelAnnouncement]) -> TrainStats:
    """Examples and seconds of the service's published runs, from their announcements."""
    stats = TrainStats()
    for ann in announced.values():
        m = ann.metrics
        if m.get("fit_seconds", 0.0) > 0:
            stats.runs += 1
            stats.examples += int(m.get("train_rows", 0.0) * m.get("epochs", 0.0))
            stats.seconds += m["fit_seconds"]
    return stats


def check_examples(stream: Stream, request_index: dict[str, int], examples: list[learning_pb2.Example],
                   sample: int = 2000) -> dict[str, Any]:
    """Do the miner's examples say what the stream says? For up to ``sample`` requests: each
    example's label and hashed inputs against the stream's row of the same request and candidate."""
    from _learning_loopwise import examples_to_arrays

    assert stream.sparse is not None and stream.dense is not None
    by_request: dict[str, list[learning_pb2.Example]] = {}
    for ex in examples:
        if ex.request_id in request_index:
            by_request.setdefault(ex.request_id, []).append(ex)
    checked = label_bad = feature_bad = 0
    for rid, group in list(by_request.items())[:sample]:
        i = request_index[rid]
        ids = stream.item_ids(i)
        uniq: dict[str, learning_pb2.Example] = {}
        for ex in group:
            if ex.candidate_id not in uniq or ex.label > uniq[ex.candidate_id].label:
                uniq[ex.candidate_id] = ex
        group = list(uniq.values())
        s, d, y, _ = examples_to_arrays(group, stream.spec)  # rows in the order of `group`
        rows = [i * stream.k + ids.index(ex.candidate_id) for ex in group]
        checked += len(rows)
        label_bad += int((y != stream.label.reshape(-1)[rows]).sum())
        feature_bad += int(((s != stream.sparse[rows]).any(axis=1)
                            | ~np.isclose(d, stream.dense[rows], atol=1e-6).all(axis=1)).sum())
    return {"examples_checked": checked, "examples_label_mismatch": label_bad,
            "examples_feature_mismatch": feature_bad}
