"""``loopwise model``: list, show, promote and roll back model versions.

    loopwise model list     --tenant T --model M          versions, marking the serving one
    loopwise model show     --tenant T --model M [--version V]
    loopwise model promote  --tenant T --model M --version V
    loopwise model rollback --tenant T --model M

The model store, Redis and the broker come from the local stack's
``stack.json`` (``--root``), or from ``--store``, ``--redis`` and ``--kafka``
for a cluster. The serving version of (tenant, model) is the Redis pointer
(`redis_keys.model_pointer`), else the newest version in the store — the rule
inference follows.

Pointer moves go through `move_pointer`: in one Redis transaction the
pointer is set and ``{"from", "to", "action", "time_ms"}`` is pushed on
`redis_keys.model_history` (newest first, 50 kept). `rollback` moves the
pointer back to the head entry's ``from`` when its ``to`` is the version
serving (and pops it, so rolling back twice walks back twice), else to the
serving manifest's ``parent_version``. `promote` and `rollback` check the
target's manifest and artifact sha256 first and then announce the move on
``loopwise.models.v1`` (``ModelAnnouncement`` with action ``promoted`` or
``rolled_back``), so inference replicas switch at once instead of at their
next pointer poll; a failed announcement is reported but the move stands.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loopwise import redis_keys
from loopwise.modelstore import Manifest, ModelStore, StoreError

HISTORY_KEEP = 50
SHOWN_METRICS = ("auc", "gauc", "logloss", "ece", "production_auc", "production_gauc")


class ModelCliError(Exception):
    pass


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def pointer(redis_client: Any, tenant: str, model: str) -> str | None:
    return _text(redis_client.get(redis_keys.model_pointer(tenant, model))) or None


def serving_version(store: ModelStore, redis_client: Any, tenant: str, model: str) -> str | None:
    """The pointer, else the newest version (what inference serves)."""
    return pointer(redis_client, tenant, model) or store.latest(tenant, model)


def history(redis_client: Any, tenant: str, model: str) -> list[dict[str, Any]]:
    out = []
    for raw in redis_client.lrange(redis_keys.model_history(tenant, model), 0, -1):
        try:
            out.append(json.loads(raw))
        except ValueError:
            continue
    return out


def move_pointer(redis_client: Any, tenant: str, model: str, version: str, action: str,
                 serving: str | None = None) -> str | None:
    """Set the pointer and record the move in the history list, atomically.

    Returns the version serving before: the old pointer, else ``serving``
    (what the caller knows serves without a pointer: the newest version). Any
    writer of the pointer (trainer, operators) should move it this way so
    that `rollback` can undo the move.
    """
    import redis

    key, hist = redis_keys.model_pointer(tenant, model), redis_keys.model_history(tenant, model)
    with redis_client.pipeline() as pipe:
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


def rollback_target(store: ModelStore, redis_client: Any, tenant: str, model: str
                    ) -> tuple[str, str, bool]:
    """(serving version, version to go back to, whether the history head is consumed)."""
    current = serving_version(store, redis_client, tenant, model)
    if current is None:
        raise ModelCliError(f"{tenant}/{model} has no version")
    entries = history(redis_client, tenant, model)
    if entries and entries[0].get("to") == current and entries[0].get("from"):
        return current, str(entries[0]["from"]), True
    try:
        parent = store.manifest(tenant, model, current).parent_version
    except StoreError as exc:
        raise ModelCliError(f"cannot read the serving manifest: {exc}") from None
    if not parent:
        raise ModelCliError(f"nothing to roll back to: {tenant}/{model}@{current} has no recorded previous "
                            "version (history) and no parent_version")
    return current, parent, False


def rollback(store: ModelStore, redis_client: Any, tenant: str, model: str) -> tuple[str, str]:
    """Move the pointer back (see the module doc); returns (from, to)."""
    import redis

    current, target, pop = rollback_target(store, redis_client, tenant, model)
    verify(store, tenant, model, target)
    key, hist = redis_keys.model_pointer(tenant, model), redis_keys.model_history(tenant, model)
    with redis_client.pipeline() as pipe:
        try:
            pipe.watch(key, hist)
            if (_text(pipe.get(key)) or store.latest(tenant, model)) != current:
                raise ModelCliError("the pointer moved meanwhile; run rollback again")
            pipe.multi()
            pipe.set(key, target)
            if pop:
                pipe.lpop(hist)
            pipe.execute()
        except redis.WatchError:
            raise ModelCliError("the pointer moved meanwhile; run rollback again") from None
    return current, target


def verify(store: ModelStore, tenant: str, model: str, version: str) -> Manifest:
    """The manifest exists and the artifact matches its sha256 (else `ModelCliError`)."""
    if version not in store.versions(tenant, model):
        raise ModelCliError(f"{tenant}/{model} has no version {version!r} "
                            f"(versions: {', '.join(store.versions(tenant, model)) or 'none'})")
    try:
        _, manifest = store.load(tenant, model, version)
    except StoreError as exc:
        raise ModelCliError(f"refusing {tenant}/{model}@{version}: {exc}") from None
    return manifest


def rows(store: ModelStore, redis_client: Any, tenant: str, model: str) -> list[dict[str, Any]]:
    """One dict per version (oldest first): version, created, source, parent, decision, metrics, current."""
    current = serving_version(store, redis_client, tenant, model)
    out = []
    for m in store.manifests(tenant, model):
        out.append({"version": m.version, "created_at": m.created_at,
                    "created": datetime.fromtimestamp(m.created_at, UTC).strftime("%Y-%m-%d %H:%M:%S"),
                    "source": m.source, "parent": m.parent_version,
                    "decision": str(m.metrics.get("decision", "")),
                    "metrics": {k: m.metrics[k] for k in SHOWN_METRICS if k in m.metrics},
                    "current": m.version == current})
    return out


def announce(bootstrap: str, topic: str, tenant: str, model: str, version: str, previous: str, action: str,
             reason: str = "", timeout: float = 10.0) -> None:
    """Produce one `ModelAnnouncement` (acks=all); raises on failure."""
    from aiokafka import AIOKafkaProducer

    from loopwise import stamps
    from loopwise.v1 import learning_pb2

    ann = learning_pb2.ModelAnnouncement(event_id=stamps.new_event_id(), tenant=tenant, model=model,
                                         version=version, previous_version=previous or "", action=action,
                                         reason=reason, time_ms=stamps.now_ms())

    async def _send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False,
                                    request_timeout_ms=int(timeout * 1000), client_id="loopwise-cli")
        await asyncio.wait_for(producer.start(), timeout)
        try:
            await asyncio.wait_for(producer.send_and_wait(topic, ann.SerializeToString(),
                                                          key=f"{tenant}|{model}".encode()), timeout)
        finally:
            await producer.stop()

    asyncio.run(_send())


# -- the command line ---------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    for name, help_ in (("list", "versions with created time, gate decision and metrics"),
                        ("show", "one version's manifest (default: the serving one)"),
                        ("promote", "serve VERSION: move the pointer and announce it"),
                        ("rollback", "serve the previous version again and announce it")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--tenant", default="default")
        p.add_argument("--model", default="ranker")
        if name in ("show", "promote"):
            p.add_argument("--version", required=name == "promote")
        p.add_argument("--store", help="model store directory or fsspec URL (default: the local stack's)")
        p.add_argument("--redis", help="Redis URL (default: the local stack's)")
        p.add_argument("--kafka", help="bootstrap servers for the announcement (default: the local stack's)")
        p.add_argument("--topic", help="models topic (default: the stack's, else loopwise.models.v1)")
        if name in ("promote", "rollback"):
            p.add_argument("--reason", default="", help="recorded in the announcement")
            p.add_argument("--no-announce", action="store_true", help="move the pointer only")
        p.add_argument("--json", action="store_true")


def _endpoints(args: argparse.Namespace) -> dict[str, str | None]:
    from loopwise.tools import stack
    from loopwise.topics import Topics

    info = stack.StackInfo.read(Path(args.root).resolve()) if getattr(args, "root", None) else None
    out = {"store": args.store or (info.model_store if info else None),
           "redis": args.redis or (info.redis if info else None),
           "kafka": args.kafka or (info.kafka if info else None),
           "topic": args.topic or ((info.topics or {}).get("models") if info else None) or Topics.from_env().models}
    missing = [k for k in ("store", "redis") if not out[k]]
    if missing:
        raise ModelCliError(f"no local stack at {args.root} and no --{' / --'.join(missing)} given")
    return out


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (ModelCliError, StoreError) as exc:
        print(f"loopwise model {args.action}: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    import redis

    ends = _endpoints(args)
    store = ModelStore(str(ends["store"]))
    client = redis.Redis.from_url(str(ends["redis"]), socket_timeout=5.0, socket_connect_timeout=5.0)
    tenant, model = args.tenant, args.model
    try:
        if args.action == "list":
            found = rows(store, client, tenant, model)
            if args.json:
                print(json.dumps(found, indent=2))
            elif not found:
                print(f"{tenant}/{model}: no versions in {store.url}")
            else:
                print(f"  {'version':8} {'created (UTC)':19}  {'source':9} {'parent':7} {'decision':10} metrics")
                for r in found:
                    figures = " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                       for k, v in r["metrics"].items())
                    print(f"{'*' if r['current'] else ' '} {r['version']:8} {r['created']:19}  {r['source']:9} "
                          f"{r['parent'] or '-':7} {r['decision'] or '-':10} {figures}")
            return 0 if found else 1
        if args.action == "show":
            version = args.version or serving_version(store, client, tenant, model)
            if version is None:
                raise ModelCliError(f"{tenant}/{model} has no version")
            manifest = store.manifest(tenant, model, version)
            print(manifest.to_json())
            return 0
        if args.action == "promote":
            verify(store, tenant, model, args.version)
            previous = serving_version(store, client, tenant, model)
            move_pointer(client, tenant, model, args.version, "promoted", serving=previous)
            before, after, action = previous or "", args.version, "promoted"
        else:
            before, after = rollback(store, client, tenant, model)
            action = "rolled_back"
    finally:
        client.close()
    result = {"tenant": tenant, "model": model, "action": action, "from": before, "to": after,
              "announced": False}
    if not args.no_announce and ends["kafka"]:
        try:
            announce(str(ends["kafka"]), str(ends["topic"]), tenant, model, after, before, action, args.reason)
            result["announced"] = True
        except Exception as exc:  # noqa: BLE001 - the pointer moved; replicas follow it at their next poll
            result["announce_error"] = repr(exc)
            print(f"warning: announcement not sent ({exc!r}); replicas follow the pointer at their next poll",
                  file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{tenant}/{model}: {before or '-'} -> {after} ({action}"
              f"{', announced' if result['announced'] else ''})")
    return 0
