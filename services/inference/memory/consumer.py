"""The error memory's side of ``loopwise.errors.v1``: where the replica's
reader starts, and the decoded errors into the bank.

Every replica reads the whole errors stream (`errors_reader.ErrorsReader`:
every partition, no consumer group, each record decoded once for the memory
and the deltas' guard), so replicas hold the same memories. With the memory
on, the reader warms up from the recent errors (`ErrorConsumer.warmup_offsets`):
each partition is positioned at the first record of the last ``warmup_s``
seconds (`offsets_for_times`), or, where the broker cannot say, at most
``warmup_records`` records before its end. Errors of versions not serving
yet wait in the bank (`MemoryBank`). The errors are written in the reader's
batches (at most 1,000) on the event loop: a batch write is a few vectorised
numpy operations (1,000 errors ≈ 30 ms on 2 busy cores, most of it decoding
and scoring them), so a `Rank` call waits at most that long behind one and
never on I/O for the memory.
"""

from __future__ import annotations

import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from loopwise.v1 import learning_pb2

from ..metrics import InferenceMetrics
from .bank import MemoryBank

log = logging.getLogger(__name__)


class ErrorConsumer:
    """The warm-up offsets (`warmup_offsets`) and the sink of decoded errors (`write`) of the memory."""

    def __init__(self, bank: MemoryBank, metrics: InferenceMetrics, *, warmup_s: float = 900.0,
                 warmup_records: int = 100_000) -> None:
        self.bank, self.metrics = bank, metrics
        self.warmup_s, self.warmup_records = warmup_s, warmup_records
        self._started_ms = 0  # records produced before the warm-up's offsets were taken: no lag measured

    async def warmup_offsets(self, consumer: AIOKafkaConsumer, tps: list[TopicPartition]
                             ) -> dict[TopicPartition, int]:
        """First offset of the last ``warmup_s`` per partition (bounded by ``warmup_records``)."""
        self._started_ms = self._started_ms or int(time.time() * 1000)
        begin = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        bounded = {tp: max(begin[tp], end[tp] - self.warmup_records) for tp in tps}
        if self.warmup_s <= 0:
            return dict(end)
        since = int((time.time() - self.warmup_s) * 1000)
        try:
            found = await consumer.offsets_for_times({tp: since for tp in tps})
        except Exception as exc:  # noqa: BLE001 - a broker without timestamp lookups: count-bounded
            log.info("errors topic: no offset lookup by time; warming up by count",
                     extra={"error": repr(exc), "records": self.warmup_records})
            return bounded
        return {tp: end[tp] if found.get(tp) is None else max(found[tp].offset, bounded[tp]) for tp in tps}

    def write(self, errors: list[learning_pb2.PredictionError], produced_ms: list[int]) -> None:
        """A decoded batch into the bank (``produced_ms`` aligned with ``errors``)."""
        # the lag of live records only: the warm-up's are as old as the warm-up reaches
        started = self._started_ms
        self.bank.write(errors, [t if t >= started else 0 for t in produced_ms])
