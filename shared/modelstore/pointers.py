"""Which version serves: the Redis pointer, its moves, their history, rollback.

The serving version of (tenant, model) is its Redis pointer
(`redis_keys.model_pointer`), else the newest complete version in the store
(`resolve`); inference, the trainer and ``loopwise model`` all follow this
rule through this module.

Every writer of the pointer (the trainer on publish, operators through
``loopwise model promote``) moves it with `move`: in one Redis transaction
the pointer is set and ``{"from", "to", "action", "time_ms"}`` is pushed on
`redis_keys.model_history` (newest first, `HISTORY_KEEP` kept). `rollback`
moves the pointer back to the head entry's ``from`` when its ``to`` is the
version serving (and pops it, so rolling back twice walks back twice), else
to the serving manifest's ``parent_version``. A target is checked first
(`verify`: its manifest exists and its artifact matches the sha256).

The Redis client is passed in: redis-py's for the synchronous functions,
redis.asyncio's for `read_many_async`. This module imports redis only where
a transaction needs its ``WatchError``, so the store works without redis.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import Any

from loopwise import redis_keys

from .store import Manifest, ModelStore, StoreError

log = logging.getLogger(__name__)

HISTORY_KEEP = 50

Key = tuple[str, str]


class PointerError(Exception):
    """A pointer move or rollback that cannot be done (the message says why)."""


def resolve(pointer: str | None, newest: str | None) -> str | None:
    """The rule: the pointer, else the newest complete version."""
    return pointer or newest


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def read(client: Any, tenant: str, model: str) -> str | None:
    """The pointer of (tenant, model), None when unset."""
    return _text(client.get(redis_keys.model_pointer(tenant, model))) or None


async def read_many_async(client: Any, keys: Sequence[Key]) -> dict[Key, str | None]:
    """{(tenant, model): pointer or None} with one ``MGET`` on a redis.asyncio client."""
    if not keys:
        return {}
    raw = await client.mget([redis_keys.model_pointer(t, m) for t, m in keys])
    return {key: _text(v) or None for key, v in zip(keys, raw, strict=True)}


def serving_version(store: ModelStore, client: Any, tenant: str, model: str, *,
                    tolerant: bool = False) -> str | None:
    """The version serving (what inference serves); without a client, the newest.

    ``tolerant``: an unreadable pointer is logged and the newest version
    answers (a Redis outage must not stop a reader that can use the store).
    """
    pointer = None
    if client is not None:
        try:
            pointer = read(client, tenant, model)
        except Exception as exc:  # noqa: BLE001 - redis raises several types
            if not tolerant:
                raise
            log.warning("model pointer unreadable; using the newest version",
                        extra={"tenant": tenant, "model": model, "error": repr(exc)})
    return resolve(pointer, store.latest(tenant, model))


def history(client: Any, tenant: str, model: str) -> list[dict[str, Any]]:
    """The recorded moves, newest first (unreadable entries skipped)."""
    out = []
    for raw in client.lrange(redis_keys.model_history(tenant, model), 0, -1):
        try:
            out.append(json.loads(raw))
        except ValueError:
            continue
    return out


def move(client: Any, tenant: str, model: str, version: str, action: str,
         serving: str | None = None) -> str | None:
    """Set the pointer and record the move in the history list, atomically.

    Returns the version serving before: the old pointer, else ``serving``
    (what the caller knows serves without a pointer: the newest version).
    """
    import redis

    key, hist = redis_keys.model_pointer(tenant, model), redis_keys.model_history(tenant, model)
    with client.pipeline() as pipe:
        while True:
            try:
                pipe.watch(key)
                old = _text(pipe.get(key)) or serving
                entry = json.dumps({"from": old, "to": version, "action": action, "time_ms": int(time.time() * 1000)})
                pipe.multi()
                pipe.set(key, version)
                pipe.lpush(hist, entry)
                pipe.ltrim(hist, 0, HISTORY_KEEP - 1)
                pipe.execute()
                return old
            except redis.WatchError:
                continue


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


def promote(store: ModelStore, client: Any, tenant: str, model: str, version: str) -> str | None:
    """Serve ``version`` (checked first) with a recorded "promoted" move; the version serving before."""
    verify(store, tenant, model, version)
    previous = serving_version(store, client, tenant, model)
    move(client, tenant, model, version, "promoted", serving=previous)
    return previous


def rollback_target(store: ModelStore, client: Any, tenant: str, model: str) -> tuple[str, str, bool]:
    """(serving version, version to go back to, whether the history head is consumed)."""
    current = serving_version(store, client, tenant, model)
    if current is None:
        raise PointerError(f"{tenant}/{model} has no version")
    entries = history(client, tenant, model)
    if entries and entries[0].get("to") == current and entries[0].get("from"):
        return current, str(entries[0]["from"]), True
    try:
        parent = store.manifest(tenant, model, current).parent_version
    except StoreError as exc:
        raise PointerError(f"cannot read the serving manifest: {exc}") from None
    if not parent:
        raise PointerError(f"nothing to roll back to: {tenant}/{model}@{current} has no recorded previous "
                           "version (history) and no parent_version")
    return current, parent, False


def rollback(store: ModelStore, client: Any, tenant: str, model: str) -> tuple[str, str]:
    """Move the pointer back (see the module doc); returns (from, to)."""
    import redis

    current, target, pop = rollback_target(store, client, tenant, model)
    verify(store, tenant, model, target)
    key, hist = redis_keys.model_pointer(tenant, model), redis_keys.model_history(tenant, model)
    with client.pipeline() as pipe:
        try:
            pipe.watch(key, hist)
            if resolve(_text(pipe.get(key)), store.latest(tenant, model)) != current:
                raise PointerError("the pointer moved meanwhile; run rollback again")
            pipe.multi()
            pipe.set(key, target)
            if pop:
                pipe.lpop(hist)
            pipe.execute()
        except redis.WatchError:
            raise PointerError("the pointer moved meanwhile; run rollback again") from None
    return current, target
