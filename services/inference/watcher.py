"""Hot swap: follow the Redis model pointers and the models topic, load new
versions off the event loop, switch with one dict assignment.

The version that should serve a (tenant, model) is its Redis pointer, else
the pointer persisted in the store, else the newest complete version
(`loopwise.modelstore.pointers`): a Redis restarted empty changes nothing.
`ModelWatcher.run` reads every Redis pointer with one ``MGET`` each
``poll_s`` (0.5 s) and lists the store (versions and persisted pointers) each
``store_scan_s`` (2 s) for new models and versions. A `ModelAnnouncement` on ``loopwise.models.v1`` is only a wake-up
(read by a `topic_reader.TopicReader`, no consumer group, from the latest
offset, and from the latest again after a lost connection: what was announced
meanwhile the pointer poll finds): the watcher polls at once, and a
"promoted"/"rolled_back" version is given a fresh chance if it was refused
before. The pointer always decides.

A changed version is loaded, checked and warmed up in a single loader thread
(`models.load`, warmed up on the recent real inputs), then put in the model registry; requests already running keep
the `LoadedModel` they picked up, so they finish on the old session. The
replaced model is kept, so moving the pointer back to it swaps at once.
Make before break: while the serving version has live deltas, a new version
that takes deltas replaces it once its own first delta is applied here (the
trainer starts a new base's stream at once), or after ``delta_swap_wait_s``
(2 s; 0: at once), so no call is scored by a version without the newest
examples' deltas (counted in ``..._swap_delta_waits_total{outcome}``: ready,
timeout). The swaps of other models wait meanwhile. A
version that fails to load is refused: logged with its reason, counted in
``loopwise_inference_model_refusals_total{reason}``, the old version keeps
serving, and it is not tried again for ``refused_retry_s`` (5 s when it was
merely missing from the store).

When the refused version was to be the first to serve (a replica starting
with a pointer at a version that cannot serve), the watcher does not stay
NOT_SERVING: it serves the first version of `pointers.fallback_order` that
loads (the versions the history moved from, then the others newest first),
logs it and counts it in ``loopwise_inference_model_fallbacks_total``; the
pointer's version is tried again after ``refused_retry_s``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import redis.asyncio as aioredis
from google.protobuf.message import DecodeError

from loopwise.errors import ModelError
from loopwise.modelstore import ModelStore, pointers
from loopwise.v1 import learning_pb2

from . import models
from .metrics import InferenceMetrics
from .settings import InferenceSettings
from .topic_reader import TopicReader

log = logging.getLogger(__name__)

Key = tuple[str, str]
MISSING_RETRY_S = 5.0


class ModelWatcher:
    def __init__(self, settings: InferenceSettings, store: ModelStore, model_registry: models.ModelRegistry,
                 redis: aioredis.Redis, metrics: InferenceMetrics,
                 on_loaded: Callable[[], Awaitable[None]] | None = None,
                 on_swap: Callable[[models.LoadedModel], object] | None = None,
                 deltas_ready: Callable[[models.LoadedModel, models.LoadedModel], bool] | None = None) -> None:
        self.settings = settings
        # (serving, new) -> whether a swap need not wait for the new version's deltas.
        self.deltas_ready = deltas_ready
        # Called with each version as it starts serving (the error memory resets there).
        self.on_swap = on_swap
        self.store = store
        self.model_registry = model_registry
        self.redis = redis
        self.metrics = metrics
        self.on_loaded = on_loaded
        self.tenants = tuple(settings.tenants)
        self._latest: dict[Key, str] = {}
        self._stored: dict[Key, tuple[str | None, list[dict]]] = {}
        self._pointers: dict[Key, str | None] = {}
        self._pointers_read = False
        self._previous: dict[Key, models.LoadedModel] = {}
        self._seen: dict[tuple[Key, str], float] = {}
        self._refused: dict[tuple[Key, str], tuple[float, str]] = {}
        self._next_scan = 0.0
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="model-loader")
        self._tasks: list[asyncio.Task] = []
        self._stopping = False
        self._announcements = TopicReader(settings, settings.topics.models, self._on_announcements, from_start=False,
                                          name="loopwise-inference-models", resume=False)

    @property
    def announcements_ready(self) -> asyncio.Event:
        """Set while the models topic is followed (tests wait on it)."""
        return self._announcements.ready

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self.run(), name="model-watcher"))
        if self.settings.watch_announcements:
            self._announcements.start()

    async def stop(self) -> None:
        self._stopping = True
        await self._announcements.stop()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=5.0)
            for task in pending:  # never hold a shutdown hostage (e.g. a consumer stuck connecting)
                log.warning("watcher task did not stop", extra={"task": task.get_name(),
                                                                "stack": [repr(f) for f in task.get_stack()]})
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def run(self) -> None:
        task = asyncio.current_task()
        while not self._stopping:
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the watcher must outlive any one bad poll
                log.exception("model watcher poll failed")
            if task is not None and task.cancelling():
                # A library on the way swallowed our cancellation (seen with redis.asyncio): honour it.
                raise asyncio.CancelledError
            try:
                await asyncio.wait_for(self._wake.wait(), self.settings.pointer_poll_s)
            except TimeoutError:
                pass
            self._wake.clear()

    def wake(self, *, rescan: bool = True) -> None:
        if rescan:
            self._next_scan = 0.0
        self._wake.set()

    # -- one poll -------------------------------------------------------------

    async def check(self) -> None:
        """Rescan the store if due, read the pointers, swap what changed."""
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        if now >= self._next_scan:
            self._next_scan = now + self.settings.store_scan_s
            try:
                self._latest, self._stored = await loop.run_in_executor(self._executor, self._scan)
            except Exception as exc:  # noqa: BLE001 - a store outage keeps what serves
                log.warning("model store not listable", extra={"store": self.store.url, "error": repr(exc)})
        keys = sorted(set(self._latest) | set(self.model_registry.versions()))
        await self._read_pointers(keys)
        now = time.monotonic()
        for key in keys:
            want = pointers.resolve(self._pointers.get(key), self._stored.get(key, (None, []))[0],
                                    self._latest.get(key))
            if want is not None:
                self.metrics.version(*key, "wanted", want)
            current = self.model_registry.get(*key)
            if want is None or (current is not None and current.version == want):
                continue
            self._seen.setdefault((key, want), now)
            refused = self._refused.get((key, want))
            if refused is not None and now < refused[0]:
                continue
            if not await self._swap(key, want) and self.model_registry.get(*key) is None:
                await self._fall_back(key, want)

    def _scan(self) -> tuple[dict[Key, str], dict[Key, tuple[str | None, list[dict]]]]:
        latest = self.store.latest_versions(self.tenants)
        return latest, {key: self.store.read_pointer(*key) for key in latest}

    async def _fall_back(self, key: Key, wanted: str) -> None:
        """Nothing serves ``key`` and ``wanted`` cannot: serve the first version of the fallback order that loads."""
        versions = await asyncio.get_running_loop().run_in_executor(self._executor, self.store.versions, *key)
        now = time.monotonic()
        for version in pointers.fallback_order(wanted, self._stored.get(key, (None, []))[1], versions):
            refused = self._refused.get((key, version))
            if refused is not None and now < refused[0]:
                continue
            if await self._swap(key, version):
                reason = self._refused.get((key, wanted), (0.0, "error"))[1]
                self.metrics.model_fallbacks.labels(*key, reason).inc()
                log.error("the pointer's version cannot serve; serving a fallback version", extra={
                    "tenant": key[0], "model": key[1], "wanted": wanted, "reason": reason, "serving": version})
                return
        log.error("no version of this model can serve", extra={"tenant": key[0], "model": key[1],
                                                                "wanted": wanted, "versions": versions})

    async def _read_pointers(self, keys: list[Key]) -> None:
        if not keys:
            return
        try:
            read = await pointers.read_many_async(self.redis, keys)
        except Exception as exc:  # noqa: BLE001 - keep the last pointers seen
            if self._pointers_read:
                return
            log.warning("model pointers unreadable; using the newest versions", extra={"error": repr(exc)})
            return
        self._pointers_read = True
        self._pointers = read

    async def _swap(self, key: Key, version: str) -> bool:
        """Load ``version`` (unless it is the one just replaced) and serve it; False when refused."""
        tenant, model = key
        previous = self._previous.get(key)
        if previous is not None and previous.version == version:
            loaded = previous  # rollback to the version just replaced: no reload
        else:
            try:
                loaded = await asyncio.get_running_loop().run_in_executor(
                    self._executor, lambda: models.load(self.store, tenant, model, version,
                                                        threads=self.settings.ort_threads,
                                                        guard=self.model_registry.guard(tenant, model)))
            except ModelError as exc:
                self._refuse(key, version, exc.reason, exc.message)
                return False
            except Exception as exc:  # noqa: BLE001 - e.g. an fsspec/network error
                self._refuse(key, version, "error", repr(exc))
                return False
        await self._wait_for_deltas(key, loaded)
        old = self.model_registry.put(loaded)
        if self.on_swap is not None:
            self.on_swap(loaded)
        if old is not None:
            self._previous[key] = old
        self._refused.pop((key, version), None)
        seen = self._seen.pop((key, version), None)
        for stale in [k for k in self._seen if k[0] == key]:
            del self._seen[stale]
        self.metrics.model_loads.labels(tenant, model, "ok").inc()
        self.metrics.model_info.labels(tenant, model).info({"version": version})
        self.metrics.version(tenant, model, "serving", version)
        self.metrics.models_serving.set(len(self.model_registry))
        took = time.monotonic() - seen if seen is not None else 0.0
        if old is not None:
            self.metrics.model_swaps.labels(tenant, model).inc()
            self.metrics.swap_seconds.labels(tenant, model).observe(took)
        log.info("model serving", extra={"tenant": tenant, "model": model, "version": version,
                                         "previous": old.version if old else None, "swap_s": round(took, 4)})
        if self.on_loaded is not None:
            await self.on_loaded()
        return True

    async def _wait_for_deltas(self, key: Key, loaded: models.LoadedModel) -> None:
        """Make before break: while the serving version has live deltas, ``loaded`` replaces it
        once its own delta stream is live here (``deltas_ready``), or after
        ``delta_swap_wait_s``; the old version and its deltas serve meanwhile."""
        current, ready, wait_s = self.model_registry.get(*key), self.deltas_ready, self.settings.delta_swap_wait_s
        if ready is None or wait_s <= 0 or current is None or ready(current, loaded):
            return
        start = time.monotonic()
        outcome = "timeout"
        while time.monotonic() - start < wait_s and not self._stopping:
            await asyncio.sleep(0.01)
            if ready(current, loaded):
                outcome = "ready"
                break
        waited = time.monotonic() - start
        self.metrics.swap_delta_waits.labels(*key, outcome).inc()
        self.metrics.swap_delta_wait_seconds.observe(waited)
        log.log(logging.INFO if outcome == "ready" else logging.WARNING, "swap waited for the new version's deltas",
                extra={"tenant": key[0], "model": key[1], "version": loaded.version, "outcome": outcome,
                       "waited_s": round(waited, 3)})

    def _refuse(self, key: Key, version: str, reason: str, message: str) -> None:
        tenant, model = key
        retry = MISSING_RETRY_S if reason == "missing" else self.settings.refused_retry_s
        self._refused[(key, version)] = (time.monotonic() + retry, reason)
        self.metrics.model_loads.labels(tenant, model, "refused").inc()
        self.metrics.model_refusals.labels(tenant, model, reason).inc()
        current = self.model_registry.get(tenant, model)
        log.error("model version refused", extra={
            "tenant": tenant, "model": model, "version": version, "reason": reason, "detail": message,
            "serving": current.version if current else None, "retry_in_s": retry})

    def refused(self) -> dict[tuple[Key, str], str]:
        """{((tenant, model), version): reason} of the versions refused and not yet retried."""
        return {k: reason for k, (_, reason) in self._refused.items()}

    # -- announcements ---------------------------------------------------------

    def handle_announcement(self, data: bytes) -> None:
        ann = learning_pb2.ModelAnnouncement()
        try:
            ann.ParseFromString(data)
        except DecodeError:
            self.metrics.announcements.labels("malformed").inc()
            return
        if ann.tenant not in self.tenants or not ann.model:
            self.metrics.announcements.labels("ignored").inc()
            return
        key = (ann.tenant, ann.model)
        if ann.action in ("promoted", "rolled_back") and ann.version:
            self._refused.pop((key, ann.version), None)  # an operator asked for it: try again
        if ann.version:
            self._seen.setdefault((key, ann.version), time.monotonic())
        self.metrics.announcements.labels("accepted").inc()
        log.info("model announcement", extra={"tenant": ann.tenant, "model": ann.model, "version": ann.version,
                                              "action": ann.action})
        self.wake(rescan=True)

    async def _on_announcements(self, records: list) -> None:
        """A batch of the models topic (`topic_reader.TopicReader`)."""
        for record in records:
            self.handle_announcement(record.value or b"")
