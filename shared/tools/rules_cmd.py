"""``loopwise rules list|block|unblock``: the live rewrite rules and the manual blocklist.

The miner reads the blocklist (`loopwise.redis_keys.rewrite_blocklist`) on
every refresh: a blocked source (normalised utterance) or target (chain state
or surface form) is never rewritten from / to, and a live rule it matches is
withdrawn within a refresh (logged on ``loopwise.rewrites.v1`` with reason
``blocklisted``). Redis comes from ``--redis`` or the stack's ``stack.json``.
"""

from __future__ import annotations

import argparse
import json
import sys

import redis

from loopwise import redis_keys
from loopwise.text import normalize
from loopwise.tools import stack


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("list", "block", "unblock"))
    parser.add_argument("--tenant", default="default")
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


def run(args: argparse.Namespace) -> int:
    try:
        r = _client(args)
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
    for source, rule in sorted(rules.items()):
        print(f"  {source!r:40} -> {rule.get('rewrite')!r:40} confidence {float(rule.get('confidence', 0)):.2f} "
              f"rule {rule.get('rule_id')}")
    print(f"blocklist: sources {blocked['sources']}, targets {blocked['targets']}")
    return 0
