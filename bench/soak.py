"""Soak: the local stack under mixed traffic and faults, nothing lost, nothing leaking.

    .venv/bin/python bench/soak.py [--minutes 10]

Starts the local stack (`loopwise.tools.stack.up`, API keys on), measures Rank's
capacity for a few seconds, then for ``--minutes`` drives mixed traffic at half
of it (``--load``): Rank over 100 candidates, clicks on what users like,
assistant turns and Rewrite, and a small share of bad events (refused by the
collector with a reason). Training runs and model swaps happen on the stack's
own schedule. Three faults, at a quarter, a half and three quarters of the run:

- ``broker_stall``: the broker stopped (SIGSTOP) for ``--stall-s`` seconds,
- ``redis_restart``: Redis killed and started again on its port (empty: the
  local stack's Redis keeps nothing on disk),
- ``miner_kill``: the miner killed (SIGKILL); the stack's supervisor restarts it.

It samples every service's resident memory and the miner's consumer lag, and at
the end reads the events topic back: every event the collector acknowledged
must be on it. Errors are counted by method and status; those during a fault
(and ``--grace-s`` after it) are expected and counted apart.

Last line, one JSON object: ``errors``, ``expected_errors``, ``acked``,
``acked_missing``, ``duplicates_downstream`` (example ids on the examples topic
more than once: at-least-once delivery after the miner kill; the trainer
dedupes them), ``rss_mb_start``, ``rss_mb_end``, ``rss_mb_max`` (per service),
``max_lag``, ``lag_recovered_s`` (per fault), plus the rates, Rank's and Report's
latency and ``rss_mb_curve`` (each service's RSS at seven even points of the run).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _soak_parts import Faults, Monitor, Traffic, capacity, read_topic_ids  # noqa: E402

from loopwise.tools import stack  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--load", type=float, default=0.5, help="share of the measured Rank capacity to drive")
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--stall-s", type=float, default=10.0)
    p.add_argument("--grace-s", type=float, default=30.0, help="errors this long after a fault are expected")
    p.add_argument("--keep", action="store_true", help="keep the stack's directory")
    args = p.parse_args()

    root = Path(tempfile.mkdtemp(prefix="loopwise-soak-"))
    say(f"stack in {root}")
    info = stack.up(root, auth_keys=True)
    try:
        result = soak(root, info, args)
    finally:
        stack.down(root)
        if not args.keep:
            import shutil
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result))


def soak(root: Path, info: stack.StackInfo, args: argparse.Namespace) -> dict:
    cap = capacity(info, seconds=8.0, threads=args.threads)
    rate = max(cap * args.load, 1.0)
    say(f"Rank capacity {cap:.0f}/s; driving {rate:.0f} requests/s for {args.minutes} min")
    monitor = Monitor(root)
    faults = Faults(root, info, stall_s=args.stall_s, grace_s=args.grace_s)
    # twice the callers of the capacity probe: each also reports, rewrites and sleeps between calls
    traffic = Traffic(info, rate=rate, threads=2 * args.threads, expected=faults.expected)
    duration = args.minutes * 60.0
    monitor.start()
    traffic.start()
    started = time.monotonic()
    plan = [(0.25, faults.broker_stall), (0.5, faults.redis_restart), (0.75, faults.miner_kill)]
    for at, fault in plan:
        wait = started + at * duration - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        say(f"fault: {fault.__name__}")
        fault()
        threading.Thread(target=faults.watch_recovery, args=(fault.__name__, monitor), daemon=True).start()
    time.sleep(max(0.0, started + duration - time.monotonic()))
    traffic.stop()
    faults.settle(monitor, timeout=120.0)
    monitor.stop()
    say("reading the events and examples topics back")
    events = read_topic_ids(info.kafka, info.topics["events"], "event")
    examples = read_topic_ids(info.kafka, info.topics["examples"], "example")
    acked = traffic.acked
    missing = len(acked - set(events))
    duplicates = len(examples) - len(set(examples))
    return {
        "minutes": args.minutes, "rate_per_s": round(rate, 1), "capacity_per_s": round(cap, 1),
        "requests": traffic.requests, "achieved_per_s": round(traffic.requests / duration, 1), "errors": traffic.errors(expected=False),
        "expected_errors": traffic.errors(expected=True), "rejected_bad_events": traffic.rejected,
        "acked": len(acked), "acked_missing": missing, "duplicates_downstream": duplicates,
        "examples": len(examples), "latency_s": traffic.latency(), **monitor.rss_summary(),
        "rss_mb_curve": monitor.rss_curve(), "max_lag": monitor.max_lag,
        "lag_recovered_s": faults.recovered_s, "restarts": (stack.StackInfo.read(root) or info).restarts,
    }


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.environ.setdefault("LOOPWISE_LOG_LEVEL", "WARNING")
    main()
