"""``loopwise demo``: replay MovieLens-100K through a local stack and show that traffic flows.

Uses the stack running in ``root`` if there is one, else starts one (and
stops it afterwards unless ``keep``). Then, for the first ``requests``
ratings in timestamp order, it ranks the rated movie among 19 movies the user
never rated (drawn by popularity), and reports feedback: a Click on the rated
movie at its served position when the rating is 4 or 5, else a Reject of it.
Feedback goes in batches through the client's ``send``/``flush``.

At the end it reads the impressions and events topics back from the broker
(until idle: end offsets are not trusted), decodes one impression, scrapes
the services' metrics, and returns non-zero if anything did not flow.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from loopwise import codec
from loopwise.client import Client, ReportError
from loopwise.tools import datasets, procs, stack
from loopwise.topics import Topics
from loopwise.v1 import events_pb2, feedback_pb2, learning_pb2

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer

log = logging.getLogger(__name__)

CANDIDATES = 20
LIKED = 4.0
FLUSH_EVERY = 100  # Rank calls between two flushes of buffered feedback
PROGRESS_LINES = 5
SEED = 7
DEMO_WINDOW_MS = 10_000
# The assistant loop: simulated time runs TIME_SCALE x real gaps (sessions of a
# few seconds), so the miner's session gap is scaled alike on the stacks it starts.
TIME_SCALE = 0.02
DEMO_SESSION_GAP_MS = int(45_000 * TIME_SCALE)
READ_IDLE_S = 1.5  # stop reading this long after the last record, once everything expected is in
READ_PATIENCE_S = 10.0  # ... or this long after the last record, if it is not
READ_MAX_S = 60.0
METRICS = {
    "inference": (("loopwise_inference_rpc_requests_total", {"method": "Rank"}),
                  ("loopwise_inference_impressions_emitted_total", {}),
                  ("loopwise_inference_impressions_dropped_total", {})),
    "collector": (("loopwise_collector_rpc_requests_total", {"method": "Report"}),
                  ("loopwise_collector_events_accepted_total", {}),
                  ("loopwise_collector_events_rejected_total", {})),
    "miner": (("loopwise_miner_feedback_attributed_total", {}),
              ("loopwise_miner_emitted_total", {"topic": "examples"}),
              ("loopwise_miner_window_backlog", {})),
}


class DemoError(Exception):
    """Something did not flow; the message says what."""


# -- the stack -----------------------------------------------------------------------------


def running_stack(root: Path) -> stack.StackInfo | None:
    """The stack of ``root`` if every one of its processes is alive."""
    info = stack.StackInfo.read(root.resolve())
    if info is None or not info.pids:
        return None
    return info if all(procs.pid_alive(pid) for pid in info.pids.values()) else None


def acquire_stack(root: Path) -> tuple[stack.StackInfo, bool]:
    """(the stack to use, whether this call started it)."""
    info = running_stack(root)
    if info is not None:
        print(f"using the stack running from {info.root}")
        return info, False
    print(f"starting a local stack in {root.resolve()} ...")
    started = time.monotonic()
    # A short attribution window, so negatives (and retrained models) arrive while the demo runs.
    info = stack.up(root, attribution_window_ms=DEMO_WINDOW_MS,
                    extra_env={"LOOPWISE_SESSION_GAP_MS": str(DEMO_SESSION_GAP_MS), "LOOPWISE_IDLE_S": "0.5"})
    print(f"stack up in {time.monotonic() - started:.1f}s: inference {info.inference}, "
          f"collector {info.collector}, kafka {info.kafka}")
    return info, True


# -- the replay ----------------------------------------------------------------------------


class NegativeSampler:
    """Items a user never rated, drawn without replacement in proportion to their rating counts."""

    def __init__(self, data: datasets.MovieLens, seed: int = SEED) -> None:
        self.item_ids = data.item_ids
        self.weights = data.item_counts.astype(np.float64) + 1e-9  # unrated items stay possible
        index = {item: i for i, item in enumerate(self.item_ids)}
        self.rated = {user: np.fromiter((index[i] for i in items), dtype=np.int64)
                      for user, items in data.rated_by().items()}
        self.rng = np.random.default_rng(seed)

    def draw(self, user: str, k: int) -> list[str]:
        weights = self.weights.copy()
        weights[self.rated.get(user, np.zeros(0, dtype=np.int64))] = 0.0
        k = min(k, int(np.count_nonzero(weights)))
        picked = self.rng.choice(len(weights), size=k, replace=False, p=weights / weights.sum())
        return [self.item_ids[i] for i in picked]


@dataclass
class ReplayStats:
    requests: int = 0
    clicks: int = 0
    rejects: int = 0
    sent: int = 0
    accepted: int = 0
    rejected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    liked_positions: list[int] = field(default_factory=list)
    request_ids: set[str] = field(default_factory=set)
    seconds: float = 0.0
    # Progressive (score-then-learn) evaluation: per Rank call, the version that
    # scored it, its scores and the labels the feedback then gave.
    versions: list[str] = field(default_factory=list)
    scores: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)

    def add(self, response: feedback_pb2.ReportResponse) -> None:
        self.accepted += response.accepted
        self.rejected += response.rejected
        self.reasons.update(r.reason for r in response.results if not r.accepted)


def feedback_event(client: Client, data: datasets.MovieLens, row: int, request_id: str, position: int
                   ) -> events_pb2.Event:
    """A Click on the rated item if it was liked, else a Reject; ``position`` is 1-based."""
    user, item = str(data.user[row]), str(data.item[row])
    if data.rating[row] >= LIKED:
        return client.events.click(request_id, item, user_id=user, position=position)
    return client.events.reject(request_id, item, user_id=user, position=position, reason="rated_low")


def replay_one(client: Client, data: datasets.MovieLens, sampler: NegativeSampler, row: int,
               stats: ReplayStats) -> None:
    """Rank the rated item among never-rated ones and buffer the feedback on it."""
    user, item = str(data.user[row]), str(data.item[row])
    ids = [item, *sampler.draw(user, CANDIDATES - 1)]
    ids = [ids[i] for i in sampler.rng.permutation(len(ids))]
    inputs = datasets.rank_inputs(data.users[user], [data.items[i] for i in ids],
                                  timestamp=float(data.timestamp[row]))
    ranked = client.rank(ids, **inputs)
    position = ranked.ranking.index(ids.index(item)) + 1
    event = feedback_event(client, data, row, ranked.request_id, position)
    client.send(event)
    label = np.zeros(len(ids), dtype=np.int8)
    label[ids.index(item)] = 1 if data.rating[row] >= LIKED else 0
    stats.versions.append(ranked.version)
    stats.scores.append(np.asarray(ranked.scores, dtype=np.float32))
    stats.labels.append(label)
    stats.requests += 1
    stats.sent += 1
    stats.request_ids.add(ranked.request_id)
    if event.HasField("click"):
        stats.clicks += 1
        stats.liked_positions.append(position)
    else:
        stats.rejects += 1


def flush(client: Client, stats: ReplayStats) -> None:
    try:
        stats.add(client.flush())
    except ReportError as exc:
        raise DemoError(f"the collector did not acknowledge {len(exc.events)} events: {exc}") from exc


def replay(client: Client, data: datasets.MovieLens, requests: int, rate: float = 0.0) -> ReplayStats:
    """``rate`` > 0: at most that many Rank calls per second (live-looking traffic, so
    attribution windows close and the trainer publishes versions while the replay runs)."""
    sampler = NegativeSampler(data)
    stats = ReplayStats()
    total = min(requests, len(data))
    every = max(1, total // PROGRESS_LINES)
    start = time.monotonic()
    for row in range(total):
        if rate > 0:
            ahead = row / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
        replay_one(client, data, sampler, row, stats)
        progress = stats.requests % every == 0 or stats.requests == total
        if progress or stats.requests % FLUSH_EVERY == 0:
            flush(client, stats)
        if progress:
            elapsed = time.monotonic() - start
            print(f"  {stats.requests:>6}/{total} Rank calls  {stats.requests / elapsed:7.0f} req/s  "
                  f"events accepted {stats.accepted} (rejected {stats.rejected})")
    stats.seconds = time.monotonic() - start
    return stats


# -- learning while serving ---------------------------------------------------------------


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC with tied scores counted half (NaN without both classes)."""
    pos = int(labels.sum())
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = (ends - (counts - 1) / 2.0)[inverse]  # average 1-based rank of each tie group
    return float((ranks[labels == 1].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


@dataclass
class Bucket:
    first: int
    last: int
    auc: float
    versions: Counter[str]


def online_auc(stats: ReplayStats, buckets: int = 10) -> list[Bucket]:
    """AUC of the served scores over consecutive slices of the Rank calls, with the versions that served."""
    n = len(stats.scores)
    if n == 0:
        return []
    edges = np.linspace(0, n, min(buckets, n) + 1).astype(int)
    out = []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        if b <= a:
            continue
        out.append(Bucket(int(a) + 1, int(b), auc(np.concatenate(stats.labels[a:b]),
                                                  np.concatenate(stats.scores[a:b])),
                          Counter(stats.versions[a:b])))
    return out


def show_learning(stats: ReplayStats, png: Path | None, rounds: list[AssistantRound] | None = None) -> None:
    table = online_auc(stats)
    if not table:
        return
    print("online AUC of the served scores (scored before the feedback was known), by slice of Rank calls:")
    for bucket in table:
        versions = ", ".join(f"{v} x{n}" for v, n in bucket.versions.most_common())
        print(f"  calls {bucket.first:>6}-{bucket.last:<6} AUC {bucket.auc:6.3f}   served by {versions}")
    served = list(dict.fromkeys(stats.versions))
    print(f"model versions that served: {', '.join(served)}")
    if png is not None:
        plot_learning(stats, table, png, rounds or [])


def plot_learning(stats: ReplayStats, table: list[Bucket], png: Path, rounds: list[AssistantRound]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("  (no plot: matplotlib is not installed; pip install 'loopwise[bench]')")
        return
    fig, axes = plt.subplots(1, 2 if rounds else 1, figsize=(13 if rounds else 8, 4), squeeze=False)
    ax = axes[0][0]
    ax.plot([b.last for b in table], [b.auc for b in table], marker="o", label="online AUC")
    changes = [i for i in range(1, len(stats.versions)) if stats.versions[i] != stats.versions[i - 1]]
    for i in changes:
        ax.axvline(i + 1, color="grey", linestyle=":", linewidth=1)
        ax.text(i + 1, ax.get_ylim()[0], stats.versions[i], rotation=90, fontsize=7, va="bottom")
    ax.set_xlabel("Rank calls")
    ax.set_ylabel("AUC (progressive)")
    ax.set_title("Recommender: served model quality while it retrains")
    ax.legend(loc="lower right")
    if rounds:
        ax = axes[0][1]
        x = [r.round for r in rounds]
        ax.plot(x, [r.defect_rate for r in rounds], marker="o", color="tab:red", label="defect rate")
        ax.set_xlabel("assistant round (new simulated users)")
        ax.set_ylabel("defect rate per turn")
        ax.set_ylim(bottom=0)
        twin = ax.twinx()
        twin.bar(x, [max(r.rules_live, 0) for r in rounds], alpha=0.25, color="tab:blue", label="rules live")
        twin.set_ylabel("rewrite rules live at the round's start")
        ax.set_title("Assistant: defects while rewrite rules go live")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    print(f"  plot: {png}")


# -- the assistant loop ------------------------------------------------------------------


@dataclass
class AssistantRound:
    round: int
    turns: int
    defect_rate: float
    rewritten: int
    wins: int
    losses: int
    rules_live: int


def rules_live(info: stack.StackInfo, tenant: str) -> int:
    import redis

    from loopwise import redis_keys

    try:
        with redis.Redis.from_url(info.redis, socket_timeout=2.0) as r:
            return int(r.hlen(redis_keys.rewrite_table(tenant)))
    except redis.RedisError:
        return -1


def assistant_loop(info: stack.StackInfo, tenant: str, rounds: int, users: int, minutes: float
                   ) -> list[AssistantRound]:
    """Rounds of simulated voice-assistant users (new users each round) through Rewrite and
    FeedbackService, live-paced; between rounds the miner closes their sessions and
    (re)derives rules, which the next round's Rewrite calls get."""
    from loopwise.tools.simulate import assistant

    world = assistant.World(assistant.movielens_catalog(), time_scale=TIME_SCALE)
    out = []
    print(f"assistant loop: {rounds} rounds of {users} simulated users x {minutes:.0f} min "
          f"(time x{TIME_SCALE}: {minutes * 60 * TIME_SCALE:.0f} s each), Rewrite before the NLU")
    with Client(info.collector, info.inference, tenant=tenant) as client:
        for r in range(rounds):
            live = rules_live(info, tenant)
            s = assistant.run(client, users=users, minutes=minutes, seed=SEED * 1000 + r, time_scale=TIME_SCALE,
                              pace=True, world=world)
            out.append(AssistantRound(r + 1, s.turns, s.defect_rate, s.rewritten, s.wins, s.losses, live))
            print(f"  round {r + 1}: {s.turns:6} turns, defect rate {s.defect_rate:.3f}, rules live at start "
                  f"{live:4}, rewritten {s.rewritten} (won {s.wins}, lost {s.losses})")
            time.sleep(2.0)  # the last sessions close (gap + idle) and the rules refresh
    if len(out) > 1 and out[0].defect_rate > 0:
        change = 1 - out[-1].defect_rate / out[0].defect_rate
        print(f"defect rate {out[0].defect_rate:.3f} -> {out[-1].defect_rate:.3f} ({change:+.1%} relative "
              f"reduction) with {rules_live(info, tenant)} rules live now")
    return out


# -- reading the broker back ---------------------------------------------------------------


@dataclass
class TopicCount:
    records: int = 0
    this_run: int = 0
    undecodable: int = 0
    kinds: Counter[str] = field(default_factory=Counter)


@dataclass
class ReadBack:
    topics: dict[str, TopicCount]
    sample: events_pb2.Event | None = None
    seconds: float = 0.0


async def _assign_all(consumer: AIOKafkaConsumer, topics: list[str]) -> None:
    from aiokafka import TopicPartition

    await consumer.topics()  # a full metadata refresh
    parts = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
    if not parts:
        raise DemoError(f"the broker knows none of the topics {', '.join(topics)}")
    consumer.assign(parts)
    await consumer.seek_to_beginning(*parts)


def _count(out: ReadBack, topic: str, value: bytes, request_ids: set[str], examples: str) -> None:
    counts = out.topics[topic]
    counts.records += 1
    if topic == examples:  # learning records, not events
        try:
            example = learning_pb2.Example.FromString(value)
        except DecodeError:
            counts.undecodable += 1
            return
        if example.request_id in request_ids:
            counts.this_run += 1
            counts.kinds["positive" if example.label > 0 else "negative"] += 1
        return
    try:
        event = codec.decode(value)
    except ValueError:
        counts.undecodable += 1
        return
    if event.request_id in request_ids:
        counts.this_run += 1
        counts.kinds[event.WhichOneof("body") or "none"] += 1
        if out.sample is None and event.HasField("impression"):
            out.sample = event


async def _read_back(bootstrap: str, want: dict[str, int], request_ids: set[str], examples: str) -> ReadBack:
    from aiokafka import AIOKafkaConsumer

    out = ReadBack({t: TopicCount() for t in want})
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", client_id="loopwise-demo")
    await consumer.start()
    start = last = time.monotonic()
    try:
        await _assign_all(consumer, list(want))
        while time.monotonic() - start < READ_MAX_S:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            now = time.monotonic()
            for tp, records in batch.items():
                for record in records:
                    _count(out, tp.topic, record.value, request_ids, examples)
                last = now if records else last
            complete = all(out.topics[t].this_run >= n for t, n in want.items())
            if now - last > (READ_IDLE_S if complete else READ_PATIENCE_S):
                break
    finally:
        await consumer.stop()
    out.seconds = time.monotonic() - start
    log.debug("read back", extra={"counts": {t: c.records for t, c in out.topics.items()},
                                  "seconds": out.seconds})
    return out


def read_back(bootstrap: str, topics: Topics, stats: ReplayStats) -> ReadBack:
    # Every accepted click or reject is an example at once (the miner emits
    # the negatives of unclicked candidates when the attribution window closes).
    want = {topics.impressions: stats.requests, topics.events: stats.accepted, topics.examples: stats.accepted}
    return asyncio.run(_read_back(bootstrap, want, stats.request_ids, topics.examples))


# -- metrics -------------------------------------------------------------------------------


def scrape(url: str, wanted: tuple[tuple[str, dict[str, str]], ...], timeout: float = 5.0
           ) -> dict[str, float]:
    """Sum of the samples of each wanted metric whose labels include the given ones."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - our own local URL
        text = response.read().decode()
    sums = {name: 0.0 for name, _ in wanted}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for name, labels in wanted:
                if sample.name == name and labels.items() <= sample.labels.items():
                    sums[name] += sample.value
    return sums


def show_metrics(info: stack.StackInfo) -> None:
    print("metrics (cumulative since each service started):")
    for service, wanted in METRICS.items():
        url = info.metrics.get(service)
        if not url:
            continue
        try:
            values = scrape(url, wanted)
        except OSError as exc:
            print(f"  {service}: {url} unreadable ({exc})")
            continue
        for (name, labels), value in zip(wanted, values.values(), strict=True):
            shown = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
            print(f"  {shown:58} {value:10.0f}")


# -- the report ----------------------------------------------------------------------------


def describe(event: events_pb2.Event, k: int = 3) -> str:
    imp = event.impression
    top = ", ".join(f"{c} ({s:.3f})" for c, s in zip(imp.candidate_ids[:k], imp.scores[:k], strict=False))
    user = dict(sorted(imp.user.categorical.items()))
    return (f"request {event.request_id[:12]} user {event.user_id} {user} hour "
            f"{imp.context.categorical.get('hour', '?')}: {imp.model}@{imp.version} ranked "
            f"{len(imp.candidate_ids)} candidates, top {k}: {top}")


def show_replay(stats: ReplayStats) -> None:
    mean = float(np.mean(stats.liked_positions)) if stats.liked_positions else 0.0
    print(f"replayed {stats.requests} ratings in {stats.seconds:.1f}s "
          f"({stats.requests / max(stats.seconds, 1e-9):.0f} Rank/s)")
    print(f"feedback: {stats.clicks} clicks, {stats.rejects} rejects; collector accepted "
          f"{stats.accepted}/{stats.sent}" + (f", rejected {dict(stats.reasons)}" if stats.rejected else ""))
    print(f"liked movies were served at mean position {mean:.1f} of {CANDIDATES}")


def show_read_back(back: ReadBack) -> None:
    print(f"read back from the broker in {back.seconds:.1f}s:")
    for topic, c in back.topics.items():
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(c.kinds.items()))
        print(f"  {topic:26} {c.records:7} records, {c.this_run} from this run ({kinds or 'none'})"
              + (f", {c.undecodable} undecodable" if c.undecodable else ""))
    if back.sample is not None:
        print("  e.g. " + describe(back.sample))


def problems(stats: ReplayStats, back: ReadBack, topics: Topics) -> list[str]:
    found = []
    if stats.accepted < stats.sent:
        found.append(f"the collector accepted {stats.accepted} of {stats.sent} events "
                     f"(reasons: {dict(stats.reasons)})")
    impressions = back.topics[topics.impressions].this_run
    if impressions < stats.requests:
        found.append(f"{impressions} of {stats.requests} impressions read back from {topics.impressions}")
    events = back.topics[topics.events].this_run
    if events < stats.accepted:
        found.append(f"{events} of {stats.accepted} accepted events read back from {topics.events}")
    examples = back.topics[topics.examples].this_run
    if examples < stats.accepted:
        found.append(f"{examples} of {stats.accepted} feedback events became examples on {topics.examples}")
    return found


# -- entry point ---------------------------------------------------------------------------


def demo(info: stack.StackInfo, data: datasets.MovieLens, requests: int, assistant_rounds: int = 4,
         assistant_users: int = 4000, assistant_minutes: float = 30.0, rate: float = 0.0) -> int:
    tenant = info.tenants[0] if info.tenants else "default"
    topics = Topics(**info.topics) if info.topics else Topics.from_env()
    print(f"replaying {min(requests, len(data))} of {len(data)} MovieLens-100K ratings "
          f"(tenant {tenant!r}, {CANDIDATES} candidates per Rank)")
    with Client(info.collector, info.inference, tenant=tenant) as client:
        stats = replay(client, data, requests, rate)
    show_replay(stats)
    rounds = assistant_loop(info, tenant, assistant_rounds, assistant_users, assistant_minutes) \
        if assistant_rounds > 0 else []
    show_learning(stats, Path(info.root) / "demo.png", rounds)
    back = read_back(info.kafka, topics, stats)
    show_read_back(back)
    show_metrics(info)
    found = problems(stats, back, topics)
    for problem in found:
        print(f"DID NOT FLOW: {problem}", file=sys.stderr)
    if not found:
        print("ok: ranked, impressions logged, feedback collected and attributed")
    return 1 if found else 0


def run(root: Path, requests: int = 2000, keep: bool = False, assistant_rounds: int = 4,
        assistant_users: int = 4000, rate: float = 50.0) -> int:
    """Replay ``requests`` MovieLens ratings through the stack in ``root``; 0 if everything flowed."""
    if requests < 1:
        print("loopwise demo: --requests must be at least 1", file=sys.stderr)
        return 2
    try:
        data = datasets.movielens_100k()
        info, started = acquire_stack(root)
    except (datasets.DatasetError, stack.StackError) as exc:
        print(f"loopwise demo: {exc}", file=sys.stderr)
        return 1
    try:
        return demo(info, data, requests, assistant_rounds, assistant_users, rate=rate)
    except (DemoError, grpc.RpcError) as exc:
        log.debug("demo failed", exc_info=True)
        detail = exc.details() if isinstance(exc, grpc.RpcError) else str(exc)
        print(f"loopwise demo: {detail}", file=sys.stderr)
        return 1
    finally:
        if started and not keep:
            print("stopped: " + ", ".join(stack.down(root)))
        elif started:
            print(f"the stack keeps running; stop it with: loopwise --root {root} down")
