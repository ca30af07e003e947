"""``loopwise model``: list, show, promote and roll back model versions.

    loopwise model list     --tenant T --model M          versions, marking the serving one and
                                                          the ones that would not serve
    loopwise model show     --tenant T --model M [--version V]
    loopwise model promote  --tenant T --model M --version V
    loopwise model rollback --tenant T --model M

The model store, Redis and the broker come from the local stack's
``stack.json`` (``--root``), or from ``--store``, ``--redis`` and ``--kafka``
for a cluster. Which version serves, pointer moves with their history and
rollback are `loopwise.modelstore.pointers` (promote refuses a version that
would not serve; rollback skips such versions and says which); this module
parses the arguments, calls it and prints. ``list`` runs the checks a
replica makes before it serves on every version: ``*`` marks the pointer's
version when it would serve, ``!`` a version that would not (with why). `promote` and `rollback` then announce the
move on ``loopwise.models.v1`` (``ModelAnnouncement`` with action
``promoted`` or ``rolled_back``), so inference replicas switch at once
instead of at their next pointer poll; a failed announcement is reported but
the move stands. ``show`` prints the manifest with ``replicas``: what each
live inference replica serves (version, delta stream and the delta sequence
applied on top of it, whether its guard rolled the deltas back), as the
replicas write it to Redis every few seconds (`loopwise.redis_keys.delta_replica`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loopwise import redis_keys, stamps
from loopwise.modelstore import ModelStore, StoreError, pointers
from loopwise.modelstore.contract import DEFAULT_MODEL

SHOWN_METRICS = ("auc", "gauc", "logloss", "ece", "production_auc", "production_gauc")


class ModelCliError(Exception):
    pass


def rows(store: ModelStore, redis_client: Any, tenant: str, model: str) -> list[dict[str, Any]]:
    """One dict per version (oldest first): version, created, source, parent, decision, metrics,
    current (the pointer names it), loadable and problem (why it would not serve, else "")."""
    current = pointers.serving_version(store, redis_client, tenant, model)
    out = []
    for m in store.manifests(tenant, model):
        problem = pointers.problem(store, tenant, model, m.version)
        out.append({"version": m.version, "created_at": m.created_at,
                    "created": datetime.fromtimestamp(m.created_at, UTC).strftime("%Y-%m-%d %H:%M:%S"),
                    "source": m.source, "parent": m.parent_version,
                    "decision": str(m.metrics.get("decision", "")),
                    "metrics": {k: m.metrics[k] for k in SHOWN_METRICS if k in m.metrics},
                    "current": m.version == current, "loadable": not problem, "problem": problem})
    return out


def replicas(redis_client: Any, tenant: str, model: str) -> list[dict[str, Any]]:
    """What each live replica serves for (tenant, model): version, stream, sequence, rolled_back, age_s."""
    out = []
    for key in sorted(redis_client.scan_iter(match=redis_keys.delta_replica(tenant, model, "*"), count=100)):
        raw = redis_client.get(key)
        try:
            state = json.loads(raw) if raw else None
        except ValueError:
            state = None
        if isinstance(state, dict):
            state["age_s"] = round(max(stamps.now_ms() - int(state.pop("at_ms", 0)), 0) / 1000, 1)
            out.append(state)
    return out


def announce(bootstrap: str, topic: str, tenant: str, model: str, version: str, previous: str, action: str,
             reason: str = "", timeout: float = 10.0) -> None:
    """Produce one `ModelAnnouncement` (acks=all); raises on failure."""
    from aiokafka import AIOKafkaProducer

    from loopwise import stamps
    from loopwise.kafka_security import aiokafka_security
    from loopwise.v1 import learning_pb2

    ann = learning_pb2.ModelAnnouncement(event_id=stamps.new_event_id(), tenant=tenant, model=model,
                                         version=version, previous_version=previous or "", action=action,
                                         reason=reason, time_ms=stamps.now_ms())

    async def _send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False,
                                    request_timeout_ms=int(timeout * 1000), client_id="loopwise-cli",
                                    **aiokafka_security())
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
        p.add_argument("--model", default=DEFAULT_MODEL)
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
    except (ModelCliError, pointers.PointerError, StoreError) as exc:
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
                    mark = "!" if r["problem"] else "*" if r["current"] else " "
                    note = f"  WOULD NOT SERVE: {r['problem']}" if r["problem"] else ""
                    print(f"{mark} {r['version']:8} {r['created']:19}  {r['source']:9} "
                          f"{r['parent'] or '-':7} {r['decision'] or '-':10} {figures}{note}")
            return 0 if found else 1
        if args.action == "show":
            version = args.version or pointers.serving_version(store, client, tenant, model)
            if version is None:
                raise ModelCliError(f"{tenant}/{model} has no version")
            shown = json.loads(store.manifest(tenant, model, version).to_json())
            shown["replicas"] = replicas(client, tenant, model)
            print(json.dumps(shown, indent=2, sort_keys=True))
            return 0
        if args.action == "promote":
            previous = pointers.promote(store, client, tenant, model, args.version)
            before, after, action = previous or "", args.version, "promoted"
        else:
            before, after, skipped = pointers.rollback(store, client, tenant, model)
            action = "rolled_back"
            for why in skipped:
                print(f"skipped {why}", file=sys.stderr)
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
