"""bench/reformulation.py's stack phase: two simulated populations trained through the real
stack at once (one tenant each), the rules settled, then each held-out seed simulated without
rewrites, with the rules as `Rewrite` serves them (canaries included: by user), and with the
oracle (every recurring confusion rewritten right)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from _reformulation_eval import held_out, json_num, rules_from_table, table_lookup
from _reformulation_offline import by_kind, reduction

from loopwise import redis_keys
from loopwise.tools.simulate import assistant
from loopwise.tools.simulate.assistant import RewriteContext, simulate, summarize


def train(info: Any, args: Any, worlds: Mapping[str, tuple[str, Any]]) -> list[tuple[str, int, Any, float]]:
    """One paced simulator per (population, training seed), in threads; [(population, seed, Summary, s)]."""
    from loopwise.client import Client

    results: list[tuple[str, int, Any, float]] = []
    errors: list[BaseException] = []

    def one(name: str, tenant: str, world: Any, seed: int) -> None:
        t = time.monotonic()
        try:
            with Client(info.collector, info.inference, tenant=tenant) as client:
                s = assistant.run(client, users=args.users, minutes=args.minutes, seed=seed,
                                  time_scale=args.time_scale, pace=True, world=world)
            results.append((name, seed, s, time.monotonic() - t))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(name, tenant, world, s), name=f"train-{name}-{s}", daemon=True)
               for name, (tenant, world) in worlds.items() for s in args.train_seeds]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    return sorted(results, key=lambda r: (r[0], r[1]))


def wait_rules(redis: Any, scrape: Callable[[], Mapping[str, float]], tenants: Sequence[str], quiet_s: float,
               timeout: float) -> tuple[dict[str, dict[bytes, bytes]], float]:
    """Until the miner's sessions counter and the tenants' rewrite tables are unchanged for
    ``quiet_s``; ({tenant: table}, seconds waited)."""
    t0 = time.monotonic()
    last: tuple[Any, ...] | None = None
    since = t0
    tables: dict[str, dict[bytes, bytes]] = {}
    while time.monotonic() - t0 < timeout:
        tables = {t: redis.hgetall(redis_keys.rewrite_table(t)) for t in tenants}
        now = (scrape().get("loopwise_miner_sessions_total", -1.0),
               *(tuple(sorted(tab.items())) for tab in tables.values()))
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
        time.sleep(0.25)
    return tables, time.monotonic() - t0


def rpc_rewriter(client: Any, table: dict[str, dict[str, Any]], stats: dict[str, int]) -> Any:
    """The simulator's client path: ``Rewrite`` for every turn (with the user, so canaries apply
    by user); counts answers that differ from the table snapshot (a rule changed meanwhile, or
    the cache is stale)."""
    expect = table_lookup(table)

    def rewrite(utterance: str, ctx: RewriteContext) -> tuple[str, str] | None:
        resp = client.rewrite(utterance, user_id=ctx.user_id, session_id=ctx.session_id)
        got = (resp.utterance, resp.rule_id) if resp.rewritten else None
        stats["calls"] += 1
        stats["rewritten"] += got is not None
        stats["differs_from_table"] += got != expect(utterance, ctx)
        return got

    return rewrite


def kinds_of(table: Mapping[str, Mapping[str, Any]]) -> list[Any]:
    """(rule_id, kind) of the served table's rules, as `by_kind` wants them."""
    from types import SimpleNamespace

    return [SimpleNamespace(rule_id=v.get("rule_id", ""), kind=v.get("kind", "utterance")) for v in table.values()]


def test_population(info: Any, args: Any, tenant: str, world: Any, table: dict[str, dict[str, Any]],
                    say: Callable[[str], None]) -> dict[str, Any]:
    """Held-out seeds of one population: before, after (Rewrite), oracle; the figures."""
    from loopwise.client import Client

    stats = {"calls": 0, "rewritten": 0, "differs_from_table": 0}
    before: list[Any] = []
    after: list[Any] = []
    oracle: list[Any] = []
    t = time.monotonic()
    with Client(info.collector, info.inference, tenant=tenant) as client:
        rewrite = rpc_rewriter(client, table, stats)
        for seed in args.test_seeds:
            before += simulate(world, users=args.users, minutes=args.minutes, seed=seed)
            after += simulate(world, users=args.users, minutes=args.minutes, seed=seed, rewrite=rewrite)
            oracle += simulate(world, users=args.users, minutes=args.minutes, seed=seed, oracle=True)
    from _reformulation_eval import served_rules

    h = held_out(world, served_rules(table), before, after)
    best = summarize(oracle)
    ceiling = reduction(h.before, best)
    kinds = by_kind(kinds_of(table), after)
    canaries = sum(1 for v in table.values() if float(v.get("canary", 1.0)) < 1.0)
    say(f"  held-out seeds {args.test_seeds} ({stats['calls']:,} Rewrite calls in {time.monotonic() - t:.1f}s, "
        f"{stats['rewritten']:,} rewritten, {stats['differs_from_table']} differing from the table snapshot):")
    for line in h.lines():
        say(f"    {line}")
    say(f"    oracle: defect rate {best.defect_rate:.4f} (-{100 * ceiling:.1f}%): reached "
        f"{h.reduction / ceiling if ceiling else float('nan'):.2f} of it; rules still canaries {canaries}; by kind "
        + "; ".join(f"{k} {v['rules']} rules, wins {v['wins']}, losses {v['losses']}" for k, v in sorted(kinds.items())))
    return {
        "defect_rate_before": json_num(h.before.defect_rate), "defect_rate_after": json_num(h.after.defect_rate),
        "defect_reduction": json_num(h.reduction), "defect_reduction_oracle": json_num(ceiling),
        "defect_reduction_to_oracle": json_num(h.reduction / ceiling if ceiling else None),
        "win_loss": json_num(h.after.win_loss, 2), "rule_precision": json_num(h.precision), "rules": h.rules,
        "span_rules": kinds.get("span", {}).get("rules", 0), "utterance_rules": kinds.get("utterance", {}).get("rules", 0),
        "canary_rules": canaries, "by_kind": {k: {**v, "win_loss": json_num(ratio(v["wins"], v["losses"]), 2)}
                                              for k, v in kinds.items()},
        "judged_rules": h.judged_rules, "wins": h.after.wins, "losses": h.after.losses,
        "rewritten": h.after.rewritten, "turns_before": h.before.turns, "turns_after": h.after.turns,
        "rewrite_calls": stats["calls"], "rewrite_differs_from_table": stats["differs_from_table"]}


def ratio(wins: int, losses: int) -> float:
    return wins / losses if losses else float("inf") if wins else 0.0


def read_tables(redis: Any, tenants: Sequence[str]) -> dict[str, dict[str, dict[str, Any]]]:
    return {t: rules_from_table(redis.hgetall(redis_keys.rewrite_table(t))) for t in tenants}
