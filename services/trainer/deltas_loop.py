"""The trainer's delta loop: examples in, deltas out, between full runs (``LOOPWISE_DELTAS``).

Every new example the trainer reads also goes to the (tenant, model)'s
`deltas.DeltaTrainer`. The loop passes on a fixed clock, every
``trainer_delta_interval_s`` (within 0.01-0.1 s), a pass's own time not pushing the next
one back (a 40 ms step after a 0.1 s sleep made a step every ~150 ms at a 0.1 s
interval). Every interval with new examples (or
at ``trainer_delta_every_n`` of them) `DeltaLoop.step` re-reads the serving
pointer (a new version becomes the base: a new stream, the sequence reset, the
examples it has not learned requeued, or with none a delta without rows that
starts the stream at once, so replicas know it is live; with no example waiting the pointer is
still re-read every interval, so those go out at once), takes one step on the sparse tables in a
worker thread and sends its deltas on ``loopwise.deltas.v1`` (key
``tenant|model``, so one model's deltas keep their order). Deltas a failed
send left behind go first, and no new step is taken while any is left, so no
sequence goes missing on the topic while its base serves. Every
``trainer_delta_restream_s`` a base's stream starts again on the same tables
(`deltas.DeltaTrainer.restream`: its first deltas carry every row changed since
the base), so a replica whose guard rolled the stream back tries it again, and the
newest stream alone rebuilds the tables. Counted in
``loopwise_trainer_deltas_total{outcome}``, ``loopwise_trainer_delta_bytes_total``,
``loopwise_trainer_delta_sequence`` and ``loopwise_trainer_delta_step_seconds``.
Every pass, with a step or not, ends by stamping
``loopwise_trainer_delta_loop_heartbeat_timestamp_seconds``: a pass that never
returns (a send or a step that hangs) counts nothing, but its heartbeat stops
(alert LoopwiseTrainerDeltaLoopStalled).

A (tenant, model) whose pass fails (a restream, a step or a send that raises) is
counted as outcome ``failed`` and left alone for a pause that starts at
``trainer_delta_interval_s`` (at least `BACKOFF_MIN_S`) and doubles with each
failure in a row up to `BACKOFF_MAX_S`; the first pass that succeeds ends it. The first failure is
logged with its traceback, each repeat (at most one per pause) in one line, and
the recovery once; the other (tenant, model)s go on meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from loopwise.modelstore import coldstart, pointers

from .deltas import DeltaTrainer

log = logging.getLogger(__name__)

Key = tuple[str, str]
# loopwise_trainer_deltas_total's outcomes, each created at 0 for a (tenant, model) the loop
# knows (its tenants' default model from the start, another at its first example), so the
# alert rules (observability/alerts.py) see the first of each.
OUTCOMES = ("published", "empty", "no_base", "failed", "restreamed")
# The shortest and the longest pause after failed passes of one (tenant, model), in seconds.
BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 30.0
# Seconds between two passes of the loop: the delta interval, within these bounds.
PASS_MIN_S = 0.01
PASS_MAX_S = 0.1


class DeltaLoop:
    """Owned by the `app.Trainer` (its settings, store, Redis, producer, metrics)."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.settings = trainer.settings
        self.metrics = trainer.metrics
        self.trainers: dict[Key, DeltaTrainer] = {}
        self._last: dict[Key, float] = {}  # last step
        self._checked: dict[Key, float] = {}  # last look at the pointer while no example waits
        self._outbox: dict[Key, list[bytes]] = {}  # not yet acked, in sequence order
        self._failing: dict[Key, tuple[int, float, float]] = {}  # failures in a row, pause, retry at
        if self.settings.deltas:
            self.metrics.delta_heartbeat.set(time.time())  # the loop is due from now on
            for tenant in self.settings.tenants:
                # Known from the start, so its base (~2-3 s: the serving version's model) is built
                # before the first examples come (`prepare`, before the trainer is ready), not
                # after: on bench/learning.py the first delta reached serving 2.5 s (~290
                # requests) into the replay before.
                self._trainer(tenant, self.settings.default_model)

    def _trainer(self, tenant: str, model: str) -> DeltaTrainer:
        """The (tenant, model)'s delta trainer, made (its outcomes counted from zero) when new."""
        dt = self.trainers.get((tenant, model))
        if dt is None:
            dt = self.trainers[(tenant, model)] = DeltaTrainer(tenant, model, self.settings)
            for outcome in OUTCOMES:
                self.metrics.deltas.labels(tenant, model, outcome)
        return dt

    def add(self, tenant: str, model: str, value: bytes, produced_ms: int, time_ms: int) -> None:
        """A new example (on the event loop)."""
        self._trainer(tenant, model).add(value, produced_ms, time_ms)

    async def run(self) -> None:
        """A pass every `period` (a fixed clock: a pass's own time does not push the next one
        back; a loop that fell behind, e.g. behind a long step, starts the clock again)."""
        period = self.period()
        next_at = time.monotonic()
        while not self.trainer._stopping.is_set():
            next_at += period
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            now = time.monotonic()
            if now - next_at > period:
                next_at = now
            await self.tick(now)
            self.metrics.delta_heartbeat.set(time.time())

    def _due(self, last: float, now: float) -> bool:
        """One delta interval since ``last``, give or take half a pass: passes come on a fixed
        clock, so "not quite an interval yet" would wait a whole extra pass."""
        return now - last >= self.settings.trainer_delta_interval_s - self.period() / 2

    def period(self) -> float:
        """Seconds between two passes: the delta interval, within `PASS_MIN_S`..`PASS_MAX_S`."""
        return max(PASS_MIN_S, min(PASS_MAX_S, self.settings.trainer_delta_interval_s))

    async def tick(self, now: float) -> None:
        """One pass over the (tenant, model)s: a step where examples wait (every interval, or at
        once at ``trainer_delta_every_n``) or deltas are unsent; where none wait, the serving
        pointer is still re-read every interval, so a new version's first deltas (the examples
        it has not learned) go out at once, before its replicas swap it in, not when the next
        example comes. A (tenant, model) whose last pass failed waits out its pause."""
        for key, dt in list(self.trainers.items()):
            failing = self._failing.get(key)
            if failing is not None and now < failing[2]:
                continue
            try:
                await self._pass(key, dt, now)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - logged and counted; tried again after a pause
                self._failed(key, now, exc)
            else:
                if failing is not None:
                    del self._failing[key]
                    log.info("delta steps work again", extra={"tenant": key[0], "model": key[1],
                                                             "failures": failing[0]})

    def _failed(self, key: Key, now: float, exc: Exception) -> None:
        """Count a failed pass and pause the (tenant, model): the interval (at least
        `BACKOFF_MIN_S`), doubled with each failure in a row up to `BACKOFF_MAX_S`."""
        self.metrics.deltas.labels(*key, "failed").inc()
        failures, pause, _ = self._failing.get(key, (0, 0.0, 0.0))
        pause = min(max(pause * 2, self.settings.trainer_delta_interval_s, BACKOFF_MIN_S), BACKOFF_MAX_S)
        self._failing[key] = (failures + 1, pause, now + pause)
        extra = {"tenant": key[0], "model": key[1], "failures": failures + 1, "retry_in_s": round(pause, 3)}
        if failures == 0:
            log.exception("delta step failed", extra=extra)
        else:
            log.warning("delta step failed again", extra={**extra, "error": repr(exc)})

    async def _pass(self, key: Key, dt: DeltaTrainer, now: float) -> None:
        """The pass of one (tenant, model): its restream when due, then its step when due."""
        s = self.settings
        if (s.trainer_delta_restream_s > 0 and not self._outbox.get(key) and dt.sequence > 0
                and now - dt.stream_started >= s.trainer_delta_restream_s):
            records = await asyncio.to_thread(dt.restream)
            if records:
                self._outbox[key] = records
                self.metrics.deltas.labels(*key, "restreamed").inc()
        waiting = dt.waiting()
        due = self._due(self._last.get(key, 0.0), now)
        if not self._outbox.get(key) and not waiting:
            if self._due(self._checked.get(key, 0.0), now):
                self._checked[key] = now
                if await self.rebase(*key):
                    await self.step(*key)
            return
        if not self._outbox.get(key) and waiting < s.trainer_delta_every_n and not due:
            return
        self._last[key] = now
        await self.step(*key)

    async def prepare(self) -> None:
        """Before the trainer reads examples: build the base of every (tenant, model) known so far
        (each tenant's default model), so its first examples go out in a delta at once. A base
        that cannot be built now (no serving version yet, a store error) is logged and left to
        the passes."""
        for key in list(self.trainers):
            try:
                await self.rebase(*key)
            except Exception:  # noqa: BLE001 - the loop's passes try again
                log.warning("delta base not built at start", exc_info=True,
                            extra={"tenant": key[0], "model": key[1]})

    async def rebase(self, tenant: str, model: str) -> bool:
        """Build on the serving version if it is new (its stream at sequence 0, the examples it
        has not learned requeued); True when it was."""
        key = (tenant, model)
        dt = self.trainers[key]
        t = self.trainer
        version = await asyncio.to_thread(pointers.serving_version, t.store, t.redis, tenant, model, tolerant=True)
        if not version or version == dt.base_version:
            return False
        production = await asyncio.to_thread(t.runner.production, tenant, model)
        spec = production.manifest.spec() if production and production.manifest else coldstart.DEFAULT_SPEC
        await asyncio.to_thread(dt.rebase, version, production, spec)
        self._outbox.pop(key, None)  # the old base's: no replica serves it any more
        requeued = dt.requeue()
        if not requeued:  # else the first step's delta starts the stream, with the requeued examples
            self._outbox[key] = dt.start_stream()
        log.info("delta base", extra={"tenant": tenant, "model": model, "version": version, "stream": dt.stream,
                                      "requeued": requeued, "why_not": dt.why_not or None})
        return True

    async def step(self, tenant: str, model: str) -> int:
        """One delta step for (tenant, model) on its serving version; the last sequence published (0: none)."""
        key = (tenant, model)
        dt = self.trainers[key]
        await self.rebase(tenant, model)
        outbox = self._outbox.setdefault(key, [])
        if not outbox:  # else left by a failed send, or a stream's start: they go first, alone
            t0 = time.perf_counter()
            step = await asyncio.to_thread(dt.step, dt.take())
            self.metrics.delta_seconds.observe(time.perf_counter() - t0)
            if not step.records:
                self.metrics.deltas.labels(tenant, model, "empty" if dt.model is not None else "no_base").inc()
                return 0
            outbox.extend(step.records)
            log.debug("delta step", extra={"tenant": tenant, "model": model, "base": dt.base_version,
                                           "sequence": step.sequence, "examples": step.examples, "rows": step.rows,
                                           "deltas": len(step.records), "loss": round(step.loss, 5)})
        await self._send(tenant, model, outbox)
        return dt.sequence

    async def _send(self, tenant: str, model: str, outbox: list[bytes]) -> None:
        """Send ``outbox`` in order, each record removed once acked."""
        t = self.trainer
        assert t.producer is not None
        while outbox:
            await t.producer.send_and_wait(self.settings.topics.deltas, outbox[0], key=f"{tenant}|{model}".encode())
            record = outbox.pop(0)
            self.metrics.deltas.labels(tenant, model, "published").inc()
            self.metrics.delta_bytes.labels(tenant, model).inc(len(record))
        self.metrics.delta_sequence.labels(tenant, model).set(self.trainers[(tenant, model)].sequence)
