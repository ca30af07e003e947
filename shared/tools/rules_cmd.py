"""``loopwise rules list|status|block|unblock|evaluate``: the live rewrite rules, how far
mining has caught up, the manual blocklist, and the offline miner on a log.

``list`` names each rule's kind (``utterance``: the whole utterance; ``span``:
the words, rewritten in any utterance containing them) and whether it is a
canary (served to a share of the users) or live for everyone.

The miner reads the blocklist (`loopwise.redis_keys.rewrite_blocklist`) on
every refresh: a blocked source (normalised utterance) or target (chain state
or surface form) is never rewritten from / to, and a live rule it matches is
withdrawn within a refresh (logged on ``loopwise.rewrites.v1`` with reason
``blocklisted``). Redis comes from ``--redis`` or the stack's ``stack.json``.

``status`` prints the tenant's live rule count and the miner's caught-up
signal (`loopwise.redis_keys.rules_caught_up`): the event time before which
every session is mined and the rules refreshed from it, and when that
refresh ran. ``evaluate FILE.jsonl`` runs `loopwise.tools.rules_eval` on a
file of Turn events (no stack needed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import redis

from loopwise import redis_keys
from loopwise.spans import SPAN_PREFIX
from loopwise.text import normalize
from loopwise.tools import stack


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("list", "status", "block", "unblock", "evaluate"))
    parser.add_argument("file", nargs="?", type=Path, help="evaluate: a file of Turn events (JSON lines)")
    parser.add_argument("--tenant", default=None, help="default: 'default' (evaluate: every tenant in the file)")
    parser.add_argument("--train-share", type=float, default=0.7,
                        help="evaluate: the share of the log's time span whose sessions mine the rules")
    parser.add_argument("--session-gap-s", type=float, default=45.0,
                        help="evaluate: the session gap for turns without a session_id")
    parser.add_argument("--source", action="append", default=[], help="an utterance never to rewrite (repeatable)")
    parser.add_argument("--target", action="append", default=[], help="a state or surface form never to rewrite to")
    parser.add_argument("--redis", default=None, help="Redis URL (default: the local stack's)")
    parser.add_argument("--json", action="store_true")


def _client(args: argparse.Namespace) -> redis.Redis:
    url = args.redis
    if url is None:
        info = stack.StackInfo.read(args.root.resolve())
        if info is None:
            raise SystemExit("loopwise rules: no --redis and no stack (loopwise up, or pass --redis)")
        url = info.redis
    return redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d} UTC"


def _status(r: redis.Redis, tenant: str, as_json: bool) -> int:
    raw = r.get(redis_keys.rules_caught_up(tenant))
    caught = json.loads(raw) if raw else None
    live = r.hlen(redis_keys.rewrite_table(tenant))
    if as_json:
        print(json.dumps({"tenant": tenant, "rules": live, "caught_up": caught}))
        return 0
    print(f"{live} live rules (tenant {tenant!r})")
    if caught is None:
        print("caught up: not yet (no rules refresh from mined sessions)")
    else:
        lag = max(0.0, (caught["refreshed_ms"] - caught["through_ms"]) / 1000)
        print(f"caught up through {_when(caught['through_ms'])} (event time; sessions mined and rules "
              f"refreshed at {_when(caught['refreshed_ms'])}, {lag:.1f} s behind)")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.action == "evaluate":
        from loopwise.tools import rules_eval

        if args.file is None:
            print("loopwise rules evaluate: give FILE.jsonl (Turn events, one JSON Event a line)", file=sys.stderr)
            return 2
        return rules_eval.run(args.file, train_share=args.train_share, gap_ms=int(args.session_gap_s * 1000),
                              tenant=args.tenant or "")
    args.tenant = args.tenant or "default"
    try:
        r = _client(args)
        if args.action == "status":
            return _status(r, args.tenant, args.json)
        sources_key = redis_keys.rewrite_blocklist(args.tenant, "sources")
        targets_key = redis_keys.rewrite_blocklist(args.tenant, "targets")
        sources = [normalize(s) for s in args.source]
        targets = [t if ":" in t else normalize(t) for t in args.target]
        if args.action in ("block", "unblock"):
            if not sources and not targets:
                print("loopwise rules: give --source and/or --target", file=sys.stderr)
                return 2
            op = r.sadd if args.action == "block" else r.srem
            if sources:
                op(sources_key, *sources)
            if targets:
                op(targets_key, *targets)
        rules = {k.decode(): json.loads(v) for k, v in r.hgetall(redis_keys.rewrite_table(args.tenant)).items()}
        blocked = {"sources": sorted(s.decode() for s in r.smembers(sources_key)),
                   "targets": sorted(t.decode() for t in r.smembers(targets_key))}
    except redis.RedisError as exc:
        print(f"loopwise rules: Redis: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"rules": rules, "blocklist": blocked}, indent=2))
        return 0
    print(f"{len(rules)} live rules (tenant {args.tenant!r})")
    for key, rule in sorted(rules.items()):
        kind = rule.get("kind", "utterance")
        source = key.removeprefix(SPAN_PREFIX) if kind == "span" else key
        stage = f"canary {float(rule['canary']):.0%} of users" if "canary" in rule else "live"
        print(f"  {kind:9} {source!r:40} -> {rule.get('rewrite')!r:40} confidence "
              f"{float(rule.get('confidence', 0)):.2f} {stage} rule {rule.get('rule_id')}")
    print(f"blocklist: sources {blocked['sources']}, targets {blocked['targets']}")
    return 0
