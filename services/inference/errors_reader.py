"""`ErrorsReader`: a replica's one reader of ``loopwise.errors.v1``.

Two parts of a replica read prediction errors: the error memory
(`memory.ErrorConsumer`: every error, after a warm-up on the recent ones)
and the deltas' guard (`deltas_guard.DeltaGuard`: the labels of the calls
it remembers). One `topic_reader.TopicReader` reads the topic for both,
when either is on (none when neither is): each record is decoded once, and
each decoded batch goes to every sink in turn, with when each record was
produced. The reader starts where ``start_at`` says (the memory's warm-up,
when the memory is on; the guard judges only the labels of calls it
remembers, so those older errors pass it by), else at the topic's end; after
a lost connection it resumes where it was. Counted in
``loopwise_inference_errors_read_total{result}`` (decoded, malformed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from google.protobuf.message import DecodeError

from loopwise.settings import BaseSettings
from loopwise.v1 import learning_pb2

from .metrics import InferenceMetrics
from .topic_reader import StartAt, TopicReader

# (decoded errors, when each was produced in ms, aligned) -> None
Sink = Callable[[list[learning_pb2.PredictionError], list[int]], None]


def decode(records: list, metrics: InferenceMetrics) -> tuple[list[learning_pb2.PredictionError], list[int]]:
    """The errors of a batch of records and their production times (ms); the undecodable ones counted."""
    errors, produced = [], []
    for record in records:
        error = learning_pb2.PredictionError()
        try:
            error.ParseFromString(record.value or b"")
        except DecodeError:
            continue
        errors.append(error)
        produced.append(record.timestamp or 0)
    metrics.errors_read.labels("decoded").inc(len(errors))
    if len(errors) < len(records):
        metrics.errors_read.labels("malformed").inc(len(records) - len(errors))
    return errors, produced


class ErrorsReader:
    """The errors topic, decoded once per record, into every sink (see the module doc)."""

    def __init__(self, settings: BaseSettings, topic: str, sinks: Sequence[Sink], metrics: InferenceMetrics, *,
                 start_at: StartAt | None = None, up: Callable[[bool], None] | None = None,
                 batch: int = 1_000) -> None:
        self.sinks, self.metrics = tuple(sinks), metrics
        self.reader = TopicReader(settings, topic, self._on_batch, from_start=False, name="loopwise-inference-errors",
                                  start_at=start_at, up=up, batch=batch)

    @property
    def ready(self) -> asyncio.Event:
        """Set while every partition is assigned and positioned (tests wait on it)."""
        return self.reader.ready

    def start(self) -> None:
        self.reader.start()

    async def stop(self) -> None:
        await self.reader.stop()

    async def _on_batch(self, records: list) -> None:
        errors, produced = decode(records, self.metrics)
        if not errors:
            return
        for sink in self.sinks:
            sink(errors, produced)
