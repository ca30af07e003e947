"""The assistant loop: rounds of simulated voice-assistant users through Rewrite, while the
miner turns their sessions into rewrite rules that the next round gets."""

from __future__ import annotations

import time
from dataclasses import dataclass

from loopwise.client import Client
from loopwise.tools import stack
from loopwise.tools.demo.common import SEED, TIME_SCALE


@dataclass
class AssistantRound:
    round: int
    turns: int
    defect_rate: float
    rewritten: int
    wins: int
    losses: int
    rules_live: int


def rules_live(info: stack.StackInfo, tenant: str) -> int:
    import redis

    from loopwise import redis_keys

    try:
        with redis.Redis.from_url(info.redis, socket_timeout=2.0) as r:
            return int(r.hlen(redis_keys.rewrite_table(tenant)))
    except redis.RedisError:
        return -1


def assistant_loop(info: stack.StackInfo, tenant: str, rounds: int, users: int, minutes: float
                   ) -> list[AssistantRound]:
    """Rounds of simulated voice-assistant users (new users each round) through Rewrite and
    FeedbackService, live-paced; between rounds the miner closes their sessions and
    (re)derives rules, which the next round's Rewrite calls get."""
    from loopwise.tools.simulate import assistant

    world = assistant.World(assistant.movielens_catalog(), time_scale=TIME_SCALE)
    out = []
    print(f"assistant loop: {rounds} rounds of {users} simulated users x {minutes:.0f} min "
          f"(time x{TIME_SCALE}: {minutes * 60 * TIME_SCALE:.0f} s each), Rewrite before the NLU")
    with Client(info.collector, info.inference, tenant=tenant, api_key=info.api_key) as client:
        for r in range(rounds):
            live = rules_live(info, tenant)
            s = assistant.run(client, users=users, minutes=minutes, seed=SEED * 1000 + r, time_scale=TIME_SCALE,
                              pace=True, world=world)
            out.append(AssistantRound(r + 1, s.turns, s.defect_rate, s.rewritten, s.wins, s.losses, live))
            print(f"  round {r + 1}: {s.turns:6} turns, defect rate {s.defect_rate:.3f}, rules live at start "
                  f"{live:4}, rewritten {s.rewritten} (won {s.wins}, lost {s.losses})")
            time.sleep(2.0)  # the last sessions close (gap + idle) and the rules refresh
    if len(out) > 1 and out[0].defect_rate > 0:
        change = 1 - out[-1].defect_rate / out[0].defect_rate
        print(f"defect rate {out[0].defect_rate:.3f} -> {out[-1].defect_rate:.3f} ({change:+.1%} relative "
              f"reduction) with {rules_live(info, tenant)} rules live now")
    return out
