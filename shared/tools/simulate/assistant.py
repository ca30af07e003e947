"""A population of users talking to a movie-playing voice assistant.

- `catalog`: the movies (MovieLens-100K titles, rating counts as popularity)
  and the assistant's strict NLU (carrier phrase + exact spoken title);
- `asr`: speech recognition that makes *recurring* errors (homophones,
  spelling-by-sound edits, split or merged words, a similar title);
- `users`: who asks for what, repeats, rephrases or gives up; `simulate`,
  pure and deterministic for a seed, returns every turn with its ground truth
  (intended movie, whether it succeeded, and whether it would have without the
  rewrite), and `summarize` its figures;
- this module: `run` drives a running stack with it (``Rewrite`` before the
  NLU, every turn reported through FeedbackService).

Every public name of the three modules is importable from here.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from loopwise.tools.simulate.asr import EDITS, HOMOPHONES, Asr
from loopwise.tools.simulate.catalog import (
    DOMAIN,
    INTENT,
    NLU_CARRIERS,
    OK,
    UNHANDLED,
    Catalog,
    Movie,
    Nlu,
    Understanding,
    movielens_catalog,
    spoken_title,
)
from loopwise.tools.simulate.users import (
    CARRIERS,
    Behaviour,
    RewriteContext,
    Rewriter,
    SimTurn,
    Summary,
    World,
    no_rewrite,
    simulate,
    summarize,
    table_rewriter,
)

__all__ = [
    "CARRIERS", "DOMAIN", "EDITS", "HOMOPHONES", "INTENT", "NLU_CARRIERS", "OK", "UNHANDLED", "Asr",
    "Behaviour", "Catalog", "Movie", "Nlu", "RewriteContext", "Rewriter", "SimTurn", "Summary",
    "Understanding", "World", "main_simulate", "movielens_catalog", "no_rewrite", "run", "simulate",
    "spoken_title", "summarize", "table_rewriter",
]

log = logging.getLogger(__name__)


def run(target: Any, *, users: int = 100, minutes: float = 10.0, seed: int = 7, tenant: str | None = None,
        time_scale: float = 1.0, pace: bool = True, world: World | None = None, flush_s: float = 1.0
        ) -> Summary:
    """Drive a running stack: ``target`` is a `loopwise.client.Client` (or a stand-in with
    ``rewrite``, ``send``, ``flush`` and ``events``) or the root folder of a running stack.

    Every turn calls ``Rewrite`` before the NLU and is reported (with the rule id
    when a rewrite applied) through FeedbackService. With ``pace`` the turns
    are sent when their (scaled) time comes, so ``minutes * time_scale`` of
    wall time; without, as fast as possible with time stamps ending now.
    """
    world = world or World(movielens_catalog(), time_scale=time_scale)
    own = None
    if isinstance(target, str | Path):
        from loopwise.client import Client
        from loopwise.tools import stack

        info = stack.StackInfo.read(Path(target).resolve())
        if info is None:
            raise RuntimeError(f"no stack running in {target}")
        own = target = Client(info.collector, info.inference, api_key=info.api_key,
                              tenant=tenant or (info.tenants[0] if info.tenants else "default"))
    client = target  # anything with rewrite(), send(), flush() and an `events` EventFactory
    span_ms = int(minutes * 60_000 * world.time_scale)
    now_ms = int(time.time() * 1000)
    start_ms = now_ms if pace else now_ms - span_ms - 1000
    wall0 = time.monotonic()

    def rewrite(utterance: str, ctx: RewriteContext) -> tuple[str, str] | None:
        if pace:
            delay = (ctx.time_ms - start_ms) / 1000 - (time.monotonic() - wall0)
            if delay > 0:
                time.sleep(delay)
        resp = client.rewrite(utterance, user_id=ctx.user_id, session_id=ctx.session_id)
        return (resp.utterance, resp.rule_id) if resp.rewritten else None

    last_flush = [time.monotonic()]

    def sink(turn: SimTurn) -> None:
        client.send(turn.to_event(client.events))
        if pace and time.monotonic() - last_flush[0] >= flush_s:  # live traffic: at most flush_s late
            client.flush()
            last_flush[0] = time.monotonic()

    try:
        turns = simulate(world, users=users, minutes=minutes, seed=seed, rewrite=rewrite,
                         start_ms=start_ms, sink=sink)
        client.flush()
    finally:
        if own is not None:
            own.close()
    return summarize(turns)


def main_simulate(args: Any) -> int:
    """For ``loopwise simulate assistant``: ``args`` has root, users, minutes, seed, and optionally
    tenant, time_scale, pace."""
    try:
        s = run(Path(args.root), users=args.users, minutes=args.minutes, seed=args.seed,
                tenant=getattr(args, "tenant", None), time_scale=getattr(args, "time_scale", 1.0),
                pace=getattr(args, "pace", True))
    except Exception as exc:  # noqa: BLE001 - a CLI reports, never tracebacks
        log.debug("simulate failed", exc_info=True)
        print(f"loopwise simulate assistant: {exc}", file=sys.stderr)
        return 1
    print(f"turns {s.turns}, defect rate {s.defect_rate:.3f}, failed requests {s.request_failure_rate:.3f}, "
          f"rewritten {s.rewritten}, wins {s.wins}, losses {s.losses}")
    return 0
