"""Which version serves: the pointer, its moves, their history, rollback.

The serving version of (tenant, model) is its Redis pointer
(`redis_keys.model_pointer`), else the pointer persisted in the model store
(``pointer.json``, `ModelStore.read_pointer`), else the newest complete
version (`resolve`). Redis is a cache, the store is the truth: a Redis that
restarted empty changes nothing that serves. Inference, the trainer and
``loopwise model`` all follow this rule through this module.

Every writer of the pointer (the trainer on publish, operators through
``loopwise model promote``) moves it with `move`: in one Redis transaction
the pointer is set and ``{"from", "to", "action", "time_ms"}`` is pushed on
`redis_keys.model_history` (newest first, `HISTORY_KEEP` kept), then the same
pointer and history are written to the store. A move to the version already
serving records no history entry (a "v2 -> v2" entry would be a rollback
that goes nowhere).

`promote` refuses a version that would not serve (`loadable`: its manifest,
its sha256 and `contract.check_artifact`: finite weights, an onnxruntime
session, the contract's inputs and outputs, a warm-up). `rollback` walks
back, never to the version serving, past every version that is not
loadable: first the history chain (entries whose ``to`` is the version
serving, then the one before, ...; the entries walked are popped), then the
serving manifest's ``parent_version`` chain, then the older versions, newest
first. `fallback_order` is the order a replica tries when the pointer's
version cannot serve.

The Redis client is passed in: redis-py's for the synchronous functions,
redis.asyncio's for `read_many_async`. This module imports redis only where
a transaction needs its ``WatchError``, so the store works without redis.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

from loopwise import redis_keys

from . import contract
from .store import Manifest, ModelStore, StoreError, version_number

log = logging.getLogger(__name__)

HISTORY_KEEP = 50

Key = tuple[str, str]


class PointerError(Exception):
    """A pointer move or rollback that cannot be done (the message says why)."""


def resolve(*choices: str | None) -> str | None:
    """The rule: the first set of (Redis pointer, persisted pointer, newest version)."""
    return next((c for c in choices if c), None)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def read(client: Any, tenant: str, model: str) -> str | None:
    """The Redis pointer of (tenant, model), None when unset."""
    return _text(client.get(redis_keys.model_pointer(tenant, model))) or None


async def read_many_async(client: Any, keys: Sequence[Key]) -> dict[Key, str | None]:
    """{(tenant, model): Redis pointer or None} with one ``MGET`` on a redis.asyncio client."""
    if not keys:
        return {}
    raw = await client.mget([redis_keys.model_pointer(t, m) for t, m in keys])
    return {key: _text(v) or None for key, v in zip(keys, raw, strict=True)}


def _redis_history(client: Any, tenant: str, model: str) -> list[dict[str, Any]]:
    out = []
    for raw in client.lrange(redis_keys.model_history(tenant, model), 0, -1):
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out


def _pointer(store: ModelStore, client: Any, tenant: str, model: str, tolerant: bool) -> tuple[str | None, bool]:
    """(pointer, whether it is Redis's): Redis's when set, else the store's."""
    if client is not None:
        try:
            pointer = read(client, tenant, model)
            if pointer:
                return pointer, True
        except Exception as exc:  # noqa: BLE001 - redis raises several types
            if not tolerant:
                raise
            log.warning("model pointer unreadable in Redis; using the store's",
                        extra={"tenant": tenant, "model": model, "error": repr(exc)})
    return store.read_pointer(tenant, model)[0], False


def serving_version(store: ModelStore, client: Any, tenant: str, model: str, *,
                    tolerant: bool = False) -> str | None:
    """The version serving (what inference serves): see the module doc.

    ``tolerant``: an unreadable Redis is logged and the store answers (a Redis
    outage must not stop a reader that can use the store).
    """
    return resolve(_pointer(store, client, tenant, model, tolerant)[0], store.latest(tenant, model))


def history(store: ModelStore, client: Any, tenant: str, model: str) -> list[dict[str, Any]]:
    """The recorded moves, newest first: Redis's when its pointer is set, else the store's."""
    if _pointer(store, client, tenant, model, False)[1]:
        return _redis_history(client, tenant, model)
    return store.read_pointer(tenant, model)[1]


def move(store: ModelStore, client: Any, tenant: str, model: str, version: str, action: str,
         serving: str | None = None) -> str | None:
    """Set the pointer and record the move, in Redis (one transaction; none when
    ``client`` is None) and then in the store.

    Returns the version serving before: the old pointer, else ``serving``
    (what the caller knows serves without a pointer: the newest version).
    """
    stored, stored_history = store.read_pointer(tenant, model)
    old = stored or serving
    entry: dict[str, Any] = {}
    if client is not None:
        import redis

        key, hist = redis_keys.model_pointer(tenant, model), redis_keys.model_history(tenant, model)
        with client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    old = _text(pipe.get(key)) or stored or serving
                    entry = _entry(old, version, action)
                    pipe.multi()
                    pipe.set(key, version)
                    if entry:
                        pipe.lpush(hist, json.dumps(entry))
                        pipe.ltrim(hist, 0, HISTORY_KEEP - 1)
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
    else:
        entry = _entry(old, version, action)
    store.write_pointer(tenant, model, version, ([entry] if entry else []) + stored_history[:HISTORY_KEEP - 1])
    return old


def _entry(old: str | None, version: str, action: str) -> dict[str, Any]:
    if old == version:
        return {}
    return {"from": old, "to": version, "action": action, "time_ms": int(time.time() * 1000)}


def verify(store: ModelStore, tenant: str, model: str, version: str) -> Manifest:
    """The manifest exists and the artifact matches its sha256 (else `PointerError`)."""
    if version not in store.versions(tenant, model):
        raise PointerError(f"{tenant}/{model} has no version {version!r} "
                           f"(versions: {', '.join(store.versions(tenant, model)) or 'none'})")
    try:
        _, manifest = store.load(tenant, model, version)
    except StoreError as exc:
        raise PointerError(f"refusing {tenant}/{model}@{version}: {exc}") from None
    return manifest


def problem(store: ModelStore, tenant: str, model: str, version: str) -> str:
    """Why ``version`` would not serve ("" when it would): the checks inference makes before it serves."""
    try:
        artifact, manifest = store.load(tenant, model, version)
        spec = manifest.spec()
    except (StoreError, ValueError, KeyError) as exc:
        return str(exc)
    try:
        contract.check_artifact(artifact, spec, manifest.hidden_dim)
    except contract.ContractError as exc:
        return f"{exc.reason}: {exc}"
    except ImportError as exc:
        return f"cannot check (onnxruntime is not installed: {exc})"
    return ""


def loadable(store: ModelStore, tenant: str, model: str, version: str) -> Manifest:
    """`verify`, then the checks inference makes before it serves (else `PointerError`)."""
    manifest = verify(store, tenant, model, version)
    why = problem(store, tenant, model, version)
    if why:
        raise PointerError(f"refusing {tenant}/{model}@{version}: it would not serve ({why})")
    return manifest


def promote(store: ModelStore, client: Any, tenant: str, model: str, version: str) -> str | None:
    """Serve ``version`` (checked loadable first) with a recorded "promoted" move; the version serving before."""
    loadable(store, tenant, model, version)
    previous = serving_version(store, client, tenant, model)
    move(store, client, tenant, model, version, "promoted", serving=previous)
    return previous


def _candidates(store: ModelStore, tenant: str, model: str, current: str,
                entries: list[dict[str, Any]]) -> Iterable[tuple[str, int]]:
    """(version, history entries consumed) to roll back to, in order (see the module doc)."""
    expected = current
    for i, e in enumerate(entries):
        if e.get("to") != expected or not e.get("from"):
            break
        expected = str(e["from"])
        yield expected, i + 1
    version, seen = current, {current}
    while True:
        try:
            parent = store.manifest(tenant, model, version).parent_version
        except StoreError:
            break
        if not parent or parent in seen:
            break
        seen.add(parent)
        version = parent
        yield parent, 0
    number = version_number(current)
    for older in reversed(store.versions(tenant, model)):
        if version_number(older) < number:
            yield older, 0


def rollback_target(store: ModelStore, client: Any, tenant: str,
                    model: str) -> tuple[str, str, int, list[str]]:
    """(serving version, loadable version to go back to, history entries to pop,
    the versions skipped with why)."""
    current = serving_version(store, client, tenant, model)
    if current is None:
        raise PointerError(f"{tenant}/{model} has no version")
    skipped: list[str] = []
    tried = {current}
    for version, pops in _candidates(store, tenant, model, current, history(store, client, tenant, model)):
        if version in tried:
            continue
        tried.add(version)
        why = problem(store, tenant, model, version) if version in store.versions(tenant, model) else "not in store"
        if not why:
            return current, version, pops, skipped
        skipped.append(f"{version} ({why})")
    raise PointerError(f"nothing to roll back to: {tenant}/{model}@{current} has no earlier version that would "
                       f"serve (history, parent_version, older versions)"
                       + (f"; skipped {', '.join(skipped)}" if skipped else ""))


def rollback(store: ModelStore, client: Any, tenant: str, model: str) -> tuple[str, str, list[str]]:
    """Move the pointer back (see the module doc); returns (from, to, versions skipped with why)."""
    current, target, pops, skipped = rollback_target(store, client, tenant, model)
    stored, stored_history = store.read_pointer(tenant, model)
    if client is not None:
        import redis

        key, hist = redis_keys.model_pointer(tenant, model), redis_keys.model_history(tenant, model)
        with client.pipeline() as pipe:
            try:
                pipe.watch(key, hist)
                if resolve(_text(pipe.get(key)), stored, store.latest(tenant, model)) != current:
                    raise PointerError("the pointer moved meanwhile; run rollback again")
                pipe.multi()
                pipe.set(key, target)
                if pops:
                    pipe.ltrim(hist, pops, -1)
                pipe.execute()
            except redis.WatchError:
                raise PointerError("the pointer moved meanwhile; run rollback again") from None
    if stored_history[:1] and stored_history[0].get("to") != current:
        pops = 0  # the store's history is not the chain walked (Redis's was)
    store.write_pointer(tenant, model, target, stored_history[pops:])
    if skipped:
        log.warning("rollback skipped versions that would not serve",
                    extra={"tenant": tenant, "model": model, "to": target, "skipped": skipped})
    return current, target, skipped


def fallback_order(wanted: str | None, entries: Sequence[dict[str, Any]], versions: Sequence[str]) -> list[str]:
    """The versions a replica tries, in order, when ``wanted`` cannot serve: the
    versions the history moved from (newest move first), then every other
    version, newest first."""
    out: list[str] = []
    for v in [str(e.get("from") or "") for e in entries] + list(reversed(versions)):
        if v and v != wanted and v not in out and v in versions:
            out.append(v)
    return out
