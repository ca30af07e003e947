"""The demo from start to end: a stack (the running one, else a fresh one), the recommender
replay, the assistant loop, the learning table and plot, the read-back, the verdict."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import grpc

from loopwise.client import Client
from loopwise.tools import datasets, procs, stack
from loopwise.tools.demo.assistant import assistant_loop
from loopwise.tools.demo.common import TIME_SCALE, DemoError
from loopwise.tools.demo.readback import problems, read_back, show_metrics, show_read_back
from loopwise.tools.demo.recommender import CANDIDATES, replay, show_learning, show_replay
from loopwise.topics import Topics

log = logging.getLogger(__name__)

DEMO_WINDOW_MS = 10_000
DEMO_SESSION_GAP_MS = int(45_000 * TIME_SCALE)


# -- the stack -----------------------------------------------------------------------------


def running_stack(root: Path) -> stack.StackInfo | None:
    """The stack of ``root`` if every one of its processes is alive."""
    info = stack.StackInfo.read(root.resolve())
    if info is None or not info.pids:
        return None
    return info if all(procs.pid_alive(pid) for pid in info.pids.values()) else None


def acquire_stack(root: Path) -> tuple[stack.StackInfo, bool]:
    """(the stack to use, whether this call started it)."""
    info = running_stack(root)
    if info is not None:
        print(f"using the stack running from {info.root}")
        return info, False
    print(f"starting a local stack in {root.resolve()} ...")
    started = time.monotonic()
    # A short attribution window, so negatives (and retrained models) arrive while the demo runs.
    info = stack.up(root, attribution_window_ms=DEMO_WINDOW_MS, auth_keys=True,
                    extra_env={"LOOPWISE_SESSION_GAP_MS": str(DEMO_SESSION_GAP_MS), "LOOPWISE_IDLE_S": "0.5"})
    print(f"stack up in {time.monotonic() - started:.1f}s: inference {info.inference}, "
          f"collector {info.collector}, kafka {info.kafka}")
    return info, True


# -- entry point ---------------------------------------------------------------------------


def demo(info: stack.StackInfo, data: datasets.MovieLens, requests: int, assistant_rounds: int = 4,
         assistant_users: int = 4000, assistant_minutes: float = 30.0, rate: float = 0.0) -> int:
    tenant = info.tenants[0] if info.tenants else "default"
    topics = Topics(**info.topics) if info.topics else Topics.from_env()
    print(f"replaying {min(requests, len(data))} of {len(data)} MovieLens-100K ratings "
          f"(tenant {tenant!r}, {CANDIDATES} candidates per Rank)")
    with Client(info.collector, info.inference, tenant=tenant, api_key=info.api_key) as client:
        # Halfway, one segment of users starts preferring other movies: the error memory's moment.
        stats = replay(client, data, requests, rate, shift_at=min(requests, len(data)) // 2)
    show_replay(stats)
    rounds = assistant_loop(info, tenant, assistant_rounds, assistant_users, assistant_minutes) \
        if assistant_rounds > 0 else []
    show_learning(stats, Path(info.root) / "demo.png", rounds)
    back = read_back(info.kafka, topics, stats)
    show_read_back(back)
    show_metrics(info)
    found = problems(stats, back, topics)
    for problem in found:
        print(f"DID NOT FLOW: {problem}", file=sys.stderr)
    if not found:
        print("ok: ranked, impressions logged, feedback collected and attributed")
    return 1 if found else 0


def run(root: Path, requests: int = 2000, keep: bool = False, assistant_rounds: int = 4,
        assistant_users: int = 4000, rate: float = 50.0) -> int:
    """Replay ``requests`` MovieLens ratings through the stack in ``root``; 0 if everything flowed."""
    if requests < 1:
        print("loopwise demo: --requests must be at least 1", file=sys.stderr)
        return 2
    try:
        data = datasets.movielens_100k()
        info, started = acquire_stack(root)
    except (datasets.DatasetError, stack.StackError) as exc:
        print(f"loopwise demo: {exc}", file=sys.stderr)
        return 1
    try:
        return demo(info, data, requests, assistant_rounds, assistant_users, rate=rate)
    except (DemoError, grpc.RpcError) as exc:
        log.debug("demo failed", exc_info=True)
        detail = exc.details() if isinstance(exc, grpc.RpcError) else str(exc)
        print(f"loopwise demo: {detail}", file=sys.stderr)
        return 1
    finally:
        if started and not keep:
            print("stopped: " + ", ".join(stack.down(root)))
        elif started:
            print(f"the stack keeps running; stop it with: loopwise --root {root} down")
