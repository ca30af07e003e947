"""One training run of the service, blocking (the trainer calls it in a worker thread).

`Runner.train_and_publish` (tenant, model): the serving version from the
pointer (`production`), the window's inputs built with its feature spec
(`data.PartCache`, segments built once across runs), `train.run` (train,
gate, the holdout and the rows that came meanwhile learned (`newer`), export,
checks), then `publish.publish` when the candidate passes
(store, weights, Redis pointer). It returns a `RunResult` (published,
refused or failed), records the run's metrics and logs one ``training run``
line; a failure is logged and counted, never raised. Announcing the result
and deciding when to run are the trainer's (`app.Trainer.run_now`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from loopwise.features import FeatureSpec, InputBuilder
from loopwise.modelstore import ModelStore, StoreError, coldstart, pointers, version_number

from . import publish as pub
from .data import PartCache, WindowData
from .metrics import TrainerMetrics
from .replay_buffer import ReplayBuffer
from .settings import TrainerSettings
from .train import Outcome, Production, after, run, settle

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    tenant: str
    model: str
    action: str  # published, refused, failed
    version: str
    previous_version: str
    reason: str
    figures: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


class Runner:
    """Built by the trainer with its dependencies; ``static_model(tenant, model)``: the cold-start
    model the gate compares with (`watchdog.Watchdog.static_model`); ``should_stop``: asked at
    every batch, so a stopping trainer ends a run in progress (not published)."""

    def __init__(self, settings: TrainerSettings, metrics: TrainerMetrics, store: ModelStore, redis_client: redis.Redis,
                 window: ReplayBuffer, static_model: Callable[[str, str], Production | None],
                 should_stop: Callable[[], bool]) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store = store
        self.redis = redis_client
        self.window = window
        self.static_model = static_model
        self.should_stop = should_stop
        self.parts = PartCache()  # built inputs per window segment, reused across runs

    def production(self, tenant: str, model: str) -> Production | None:
        version = pointers.serving_version(self.store, self.redis, tenant, model, tolerant=True)
        try:
            return pub.load_production(self.store, tenant, model, version)
        except StoreError as exc:
            log.error("production model unreadable; the candidate is compared with nothing",
                      extra={"tenant": tenant, "model": model, "version": version, "error": str(exc)})
            return None

    def newer(self, tenant: str, model: str, spec: FeatureSpec, since_ms: int) -> WindowData | None:
        """The window's rows newer than ``since_ms`` (those that came while the run trained),
        settled as a run's are: a passed candidate learns them before it is exported. None
        when the window cannot be read (logged; the deltas learn those rows instead)."""
        try:
            data = self.parts.window_data(self.window, tenant, model, InputBuilder(spec))
        except Exception:  # noqa: BLE001 - the candidate is published without them
            log.exception("the rows that came during the run could not be read", extra={"tenant": tenant,
                                                                                       "model": model})
            return None
        return after(settle(data, self.settings.attribution_window_ms), since_ms)

    def train_and_publish(self, tenant: str, model: str) -> RunResult:
        m = self.metrics
        started = time.perf_counter()
        production = None
        try:
            production = self.production(tenant, model)
            spec = production.manifest.spec() if production and production.manifest else coldstart.DEFAULT_SPEC
            t0 = time.perf_counter()
            data = self.parts.window_data(self.window, tenant, model, InputBuilder(spec))
            m.run_seconds.labels("build").observe(time.perf_counter() - t0)
            static = self.static_model(tenant, model) if self.settings.trainer_gate_static else None
            outcome = run(data, production, spec, self.settings, should_stop=self.should_stop, static=static,
                          newer=lambda since: self.newer(tenant, model, spec, since))
            for stage, seconds in outcome.timings.items():
                m.run_seconds.labels(stage).observe(seconds)
            figures = outcome.figures()
            figures["skipped_rows"] = float(data.skipped)
            self._record_figures(tenant, model, outcome)
            previous = production.version if production else ""
            if outcome.candidate.stopped:
                result = RunResult(tenant, model, "failed", "", previous, outcome.reason, figures)
            elif outcome.publish:
                t1 = time.perf_counter()
                manifest = pub.publish(self.store, self.redis, tenant, model, outcome, production)
                m.run_seconds.labels("publish").observe(time.perf_counter() - t1)
                m.published.labels(tenant, model).set(version_number(manifest.version))
                result = RunResult(tenant, model, "published", manifest.version, previous, outcome.reason, figures)
            else:
                result = RunResult(tenant, model, "refused", "", previous, outcome.reason, figures)
        except Exception as exc:  # noqa: BLE001 - a failed run is logged and counted, the service goes on
            log.exception("training run failed", extra={"tenant": tenant, "model": model})
            result = RunResult(tenant, model, "failed", "", production.version if production else "", repr(exc))
        result.seconds = time.perf_counter() - started
        m.runs.labels(tenant, model, result.action).inc()
        m.run_seconds.labels("total").observe(result.seconds)
        m.last_run.labels(tenant, model).set(time.time())
        log.info("training run", extra={"tenant": tenant, "model": model, "action": result.action,
                                        "version": result.version, "previous_version": result.previous_version,
                                        "reason": result.reason, "seconds": round(result.seconds, 3),
                                        "figures": result.figures})
        return result

    def _record_figures(self, tenant: str, model: str, outcome: Outcome) -> None:
        m = self.metrics
        m.examples_per_s.labels(tenant, model).set(outcome.candidate.examples_per_s)
        m.parity.labels(tenant, model).set(outcome.parity_max_abs_diff)
        for role, figures in (("candidate", outcome.evaluation.candidate),
                              ("production", outcome.evaluation.production or {}),
                              ("static", outcome.evaluation.static or {})):
            for name, value in figures.items():
                m.gate.labels(tenant, model, role, name).set(value)
