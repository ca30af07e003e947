"""What the demo checks afterwards: the impressions, events and examples read back from the
broker (until idle: end offsets are not trusted), the services' metrics, and what did not flow."""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from google.protobuf.message import DecodeError

from loopwise import codec
from loopwise.tools import stack
from loopwise.tools.demo.common import DemoError
from loopwise.tools.demo.recommender import ReplayStats
from loopwise.topics import Topics
from loopwise.v1 import events_pb2, learning_pb2

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer

log = logging.getLogger(__name__)

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

    from loopwise.kafka_security import aiokafka_security

    out = ReadBack({t: TopicCount() for t in want})
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", client_id="loopwise-demo",
                                **aiokafka_security())
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
