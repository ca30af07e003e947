"""Reformulation mining: defect rate without / with the learned rewrites on held-out simulated
sessions of two populations, against the oracle, win/loss (per rule kind), rule precision,
evidence-to-served and canary-to-promoted seconds, and miner throughput on Turn events
against a bare aiokafka consumer.

Populations (``--populations``): ``movies`` (the MovieLens assistant: spelling-by-sound
confusions of titles, a few carriers) and ``places`` (`loopwise.tools.simulate.places`:
phonetic sound-alikes of places, "seoul" -> "soul", and users who vary their carrier
phrases per request and on every rephrase). The oracle rewrites every recurring confusion
perfectly on the same held-out users: the ceiling (``defect_reduction_to_oracle``).

Everything runs on this machine and is stopped at the end. Phases:

0. Offline reference (always; seconds, no Kafka): `offline.evaluate` (the miner's own
   `TenantMiner`, every rule live at once) on the same users, minutes and seeds, per
   population. With ``--offline`` its figures are the headline ones and phases 1-3 are skipped.

1. Through the real stack (`loopwise.tools.stack.up`: broker, Redis, collector, inference, miner,
   trainer; one tenant per population), the miner told a session gap / rephrase window scaled
   like the simulator's clock (``--time-scale``; see `_reformulation_eval.session_gap_ms`), span
   rules on and new rules as canaries on ``--canary-share`` of the users. Training: one thread
   per population and ``--train-seeds`` seed runs `loopwise.tools.simulate.assistant.run` (the
   simulator's client path: ``Rewrite`` before the NLU of every turn, the Turn events through
   FeedbackService), paced on the compressed clock, so rules the miner deploys during training
   are already served (canaries to their share, promoted when they beat their control). Then
   the bench waits until the rules settle (the miner's sessions counter and the Redis rewrite
   tables unchanged for a few seconds). Held-out (`_reformulation_live.test_population`): each
   ``--test-seeds`` seed is simulated ``before`` with no rewriter, ``after`` with every turn's
   utterance sent to ``Rewrite`` with its user (nothing reported: the tables stay what training
   made them; canaries still serve their share), and with the oracle. Ground truth from the
   simulator (`summarize`, `offline.judge`): defect rate per turn, win/loss (rewritten turns
   fixed / broken), precision (most turns a rule rewrites get what their user wanted).
   Canary-to-promoted: from the audit topic, the seconds between a rule's ``canary`` and
   ``promoted`` records.

2. Evidence to served (same stack): ``--confusions`` recurring confusions the simulated
   population never makes (`pick_confusions`: a spelling-by-sound edit of a title the
   recogniser hears right). For each, min-support - 1 users' sessions (heard wrong twice,
   then said right and played) are reported first; then, one confusion at a time, the last
   user's session is reported and, from the moment the collector acknowledged it, ``Rewrite``
   of the source is polled every 50 ms until it returns the rule: the seconds between. They
   include closing the session: the miner closes it when its partition's watermark (wall
   clock once idle for ``idle_s``, 2 s) passes its last turn by the session gap.

3. Throughput (after the stack is down, on a fresh broker + Redis): ``--turns`` simulated
   Turn events (keys ``tenant|u|user``, 4 partitions, recent event times) produced up front
   to a fresh events topic; the bare aiokafka consumer counts them from the beginning, pass
   after pass for a second; then a miner (``python -m loopwise.miner``, its own app id) is
   started on the backlog and its ``loopwise_miner_records_total`` polled every 50 ms:
   records read after the first poll that saw any / seconds until the poll that saw all
   (as bench/attribution.py, whose helpers are used). ``miner_to_bare`` = miner / bare.
   Then, on that same deterministic input, until every session of the backlog is closed (the
   last ones ~idle_s + the 45 s gap after the drain, by the idle watermark): the rules the
   miner deployed (its Redis table) against `offline.mine` on the same turns.

Usage: python bench/reformulation.py [--quick] [--offline] [--users N] [--minutes M]
            [--train-seeds S ...] [--test-seeds S ...] [--time-scale X] [--confusions K]
            [--turns N] [--populations movies places] [--canary-share X] [--no-spans]
            [--no-throughput] [--keep]
The last line printed is one JSON object: defect_reduction, defect_reduction_oracle,
defect_reduction_to_oracle, win_loss, rule_precision (the movies population's; both under
``populations``), evidence_to_served_s_p50, canary_to_promoted_s_p50, span_rules,
utterance_rules, miner_to_bare, and extras (``mode`` says which phases ran; ``errors`` any
phase that failed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import traceback
import uuid
from typing import Any

import _common as c
import _reformulation_live as live
from _reformulation_eval import (
    compressed_gaps,
    evidence_session,
    evidence_user,
    json_num,
    percentile,
    pick_confusions,
    promotion_seconds,
    rephrase_window_ms,
    rules_from_table,
    session_gap_ms,
    turn_records,
)
from _reformulation_live import ratio
from _reformulation_offline import evaluate, mine, record_of

from loopwise import codec, redis_keys, stamps
from loopwise.miner.reformulation.sessions import DEFAULT_GAP_MS, sessionize
from loopwise.tools import stack
from loopwise.tools.simulate import assistant
from loopwise.tools.simulate.assistant import World, movielens_catalog, simulate, summarize
from loopwise.tools.simulate.places import PlacesWorld
from loopwise.topics import ensure_topics

TENANT = "default"
PLACES_TENANT = "places"
PROBES = 8  # users Rewrite is asked for in evidence-to-served (a canary serves a share of them)
OFFLINE_TABLE: dict[str, str] = {}  # source -> rewrite of the offline reference's rules
PARTITIONS = 4
GOALS = {"defect_reduction": 0.5, "defect_reduction_to_oracle": 0.7, "win_loss": 20.0,
         "evidence_to_served_s_p50": 10.0, "miner_to_bare": 0.5}
MINER_METRICS = ("loopwise_miner_turns_total", "loopwise_miner_sessions_total", "loopwise_miner_defects_total",
                 "loopwise_miner_rules_live", "loopwise_miner_rules_created_total",
                 "loopwise_miner_rules_withdrawn_total", "loopwise_miner_rewrite_hits_total",
                 "loopwise_miner_chain_states", "loopwise_miner_defect_rate", "loopwise_miner_duplicates_total",
                 "loopwise_miner_redis_errors_total", "loopwise_miner_deadlettered_total")


def miner_view(m: dict[str, float]) -> dict[str, float]:
    """The reformulation samples of a miner scrape."""
    return {k: v for k, v in m.items() if k.startswith(MINER_METRICS) and not k.endswith("_created")}


def safe_scrape(url: str) -> dict[str, float]:
    try:
        return c.scrape(url)
    except OSError:
        return {}


# -- 0. offline reference ----------------------------------------------------------------------


def offline_phase(args: argparse.Namespace, name: str, world: Any) -> dict[str, Any]:
    t = time.perf_counter()
    r = evaluate(world, users=args.users, minutes=args.minutes, train_seeds=args.train_seeds,
                 test_seeds=args.test_seeds)
    c.say(f"offline reference, {name} (offline.evaluate, in process, {time.perf_counter() - t:.1f}s): "
          f"{args.users} users x {args.minutes:g} min, train seeds {args.train_seeds}, test seeds {args.test_seeds}")
    for line in r.lines():
        c.say(f"  {line}")
    if name == "movies":
        OFFLINE_TABLE.clear()
        OFFLINE_TABLE.update({rule.key: rule.rewrite for rule in r.rules})
    kinds = {k: {**v, "win_loss": json_num(ratio(v["wins"], v["losses"]), 2)} for k, v in r.by_kind.items()}
    ceiling = r.oracle_reduction
    return {"rules": len(r.rules), "defect_rate_before": json_num(r.before.defect_rate),
            "defect_rate_after": json_num(r.after.defect_rate), "defect_reduction": json_num(r.relative_reduction),
            "defect_reduction_oracle": json_num(ceiling),
            "defect_reduction_to_oracle": json_num(r.relative_reduction / ceiling if ceiling else None),
            "win_loss": json_num(r.after.win_loss, 2), "rule_precision": json_num(r.precision),
            "span_rules": kinds.get("span", {}).get("rules", 0),
            "utterance_rules": kinds.get("utterance", {}).get("rules", 0), "by_kind": kinds,
            "wins": r.after.wins, "losses": r.after.losses, "turns_before": r.before.turns,
            "turns_after": r.after.turns, "failed_requests_before": json_num(r.before.request_failure_rate),
            "failed_requests_after": json_num(r.after.request_failure_rate),
            "detection_precision": json_num(r.detection.get("precision")),
            "detection_recall": json_num(r.detection.get("recall"))}


# -- 1. the stack: training, rules, held-out ---------------------------------------------------


def stack_phase(args: argparse.Namespace, ws: c.Workspace, worlds: dict[str, tuple[str, Any]],
                out: dict[str, Any]) -> None:
    import redis as redis_lib

    world = worlds["movies"][1]
    gap = session_gap_ms(world.behaviour, args.time_scale)
    inside, between = compressed_gaps(world.behaviour, args.time_scale)
    rephrase = rephrase_window_ms(args.time_scale)
    env = {"LOOPWISE_SESSION_GAP_MS": str(gap), "LOOPWISE_REPHRASE_WINDOW_MS": str(rephrase),
           "LOOPWISE_RULES_INTERVAL_S": f"{args.rules_interval:g}",
           "LOOPWISE_RULE_MIN_SUPPORT": f"{args.min_support:g}", "LOOPWISE_LOG_LEVEL": "WARNING",
           "LOOPWISE_CANARY_SHARE": f"{args.canary_share:g}", "LOOPWISE_SPAN_RULES": str(not args.no_spans).lower()}
    c.say()
    c.say(f"stack: time scale {args.time_scale:g} (simulated gaps inside a session <= {inside} ms, between "
          f"sessions >= {between} ms): miner session gap {gap} ms, rephrase window {rephrase} ms, rules every "
          f"{args.rules_interval:g}s, min support {args.min_support:g} users, canary share {args.canary_share:g}, "
          f"span rules {'off' if args.no_spans else 'on'}; populations {', '.join(worlds)} (one tenant each)")
    root = ws.root / "stack"
    t = time.monotonic()
    tenants = tuple(tenant for tenant, _ in worlds.values())
    info = stack.up(root, tenants=tenants, partitions=PARTITIONS, extra_env=env, timeout=120.0)
    out["stack_env"] = env
    try:
        c.say(f"stack up in {time.monotonic() - t:.1f}s ({', '.join(info.pids)}); logs {root}/logs")
        murl = info.metrics["miner"]
        if "loopwise_miner_turns_total" not in safe_scrape(murl):
            raise RuntimeError("the stack's miner has no reformulation metrics (loopwise_miner_turns_total): "
                               "the reformulation agents are not in this miner; run with --offline")
        redis = redis_lib.Redis.from_url(info.redis)

        wall = args.minutes * 60 * args.time_scale
        c.say(f"training: {len(worlds)} populations x {len(args.train_seeds)} seeds x {args.users} users x "
              f"{args.minutes:g} simulated min, paced: about {wall:.0f}s of wall time")
        t = time.monotonic()
        trained = live.train(info, args, worlds)
        train_s = time.monotonic() - t
        for name, seed, s, secs in trained:
            p = summarize(simulate(worlds[name][1], users=args.users, minutes=args.minutes, seed=seed))
            c.say(f"  {name} seed {seed}: {s.turns:,} turns in {secs:.0f}s, defect rate {s.defect_rate:.4f} with "
                  f"the rules as they went live (without any: {p.defect_rate:.4f}); rewritten {s.rewritten:,}, "
                  f"wins {s.wins}, losses {s.losses}")
        raw, waited = live.wait_rules(redis, lambda: safe_scrape(murl), tenants,
                                      quiet_s=max(3.0, 2 * args.rules_interval + gap / 1000 + 2.5), timeout=120.0)
        tables = {t: rules_from_table(tab) for t, tab in raw.items()}
        m = safe_scrape(murl)
        c.say(f"rules settled {waited:.1f}s after training: "
              + ", ".join(f"{t} {len(tab)}" for t, tab in tables.items()) + " in the Redis rewrite tables; miner: "
              + ", ".join(f"{k.removeprefix('loopwise_miner_')} {v:,.4g}" for k, v in sorted(miner_view(m).items())))
        out["training"] = {"seconds": round(train_s, 1), "settle_s": round(waited, 1),
                           "turns": sum(s.turns for _, _, s, _ in trained),
                           "rewritten": sum(s.rewritten for _, _, s, _ in trained),
                           "wins": sum(s.wins for _, _, s, _ in trained),
                           "losses": sum(s.losses for _, _, s, _ in trained)}
        out["miner_metrics_after_training"] = {k: json_num(v, 4) for k, v in miner_view(m).items()}
        out["stack"] = {}
        for name, (tenant, w) in worlds.items():
            c.say(f"{name} (tenant {tenant}):")
            out["stack"][name] = live.test_population(info, args, tenant, w, tables[tenant], c.say)
        ends = live.read_tables(redis, tenants)
        out["table_changed_during_test"] = {t: ends[t] != tables[t] for t in tenants}
        (ws.root / "rewrite_tables.json").write_text(json.dumps(tables, indent=1, sort_keys=True))
        movies = tables[worlds["movies"][0]]
        same = {src for src, v in movies.items() if OFFLINE_TABLE.get(src) == v["rewrite"]}
        c.say(f"  vs the offline reference's movie rules: {len(same)} of the {len(movies)} live rules are the "
              f"same (key and rewrite) as one of its {len(OFFLINE_TABLE)}")
        evidence_phase(args, info, redis, murl, world, set(movies), out)
        out["miner_metrics_end"] = {k: json_num(v, 4) for k, v in miner_view(safe_scrape(murl)).items()}
        out["audit"] = audit_counts(info)
    finally:
        stopped = stack.down(root)
        c.say(f"stack down ({', '.join(stopped)})")


def audit_counts(info: stack.StackInfo) -> dict[str, Any]:
    """Actions and reasons on the audit topic (loopwise.rewrites.v1)."""
    from attribution import read_until_idle

    from loopwise.v1 import learning_pb2

    topic = info.topics.get("rewrites", "loopwise.rewrites.v1")
    raw = asyncio.run(read_until_idle(info.kafka, topic, 1, timeout=10.0, idle=1.0))
    counts: dict[str, int] = {}
    seen = []
    for v in raw:
        r = learning_pb2.RewriteRuleRecord.FromString(v)
        why = "" if r.action != "withdrawn" else ":canary lost" if r.reason.startswith("canary lost") else \
            ":rollback" if "p=" in r.reason else f":{r.reason}"
        k = f"{r.action}:{r.kind}{why}"
        counts[k] = counts.get(k, 0) + 1
        seen.append((r.rule_id, r.action, r.time_ms))
    waits = promotion_seconds(seen)
    c.say(f"audit topic {topic}: {len(raw)} records {counts}; canary to promoted p50 "
          f"{percentile(waits, 50):.1f}s over {len(waits)} promotions")
    return {"records": len(raw), "canary_to_promoted_s_p50": json_num(percentile(waits, 50), 2),
            "promotions": len(waits), **counts}


def evidence_phase(args: argparse.Namespace, info: stack.StackInfo, redis: Any, murl: str, world: World,
                   live: set[str], out: dict[str, Any]) -> None:
    from loopwise.client import Client

    confusions = pick_confusions(world.catalog, args.confusions, asr=world.asr)
    k = int(args.min_support)
    run_id = uuid.uuid4().hex[:6]
    waits: list[float] = []
    closes: list[float] = []
    rows: list[dict[str, Any]] = []
    table_key = redis_keys.rewrite_table(TENANT)
    with Client(info.collector, info.inference, tenant=TENANT) as client:

        def probe(source: str) -> Any:
            """Rewrite for a few users (a canary serves a share of them): the first rewritten answer."""
            for u in range(PROBES):
                resp = client.rewrite(source, user_id=f"bench-probe-{u}")
                if resp.rewritten:
                    return resp
            return resp

        for conf in confusions:
            if conf.source in live or probe(conf.source).rewritten:
                raise RuntimeError(f"{conf.source!r} is already rewritten before any evidence")

        def report(conf: Any, index: int) -> float:
            """The session of user ``index``, ending now; the wall time of the collector's ack."""
            end = stamps.now_ms()
            user = evidence_user(conf, run_id, index)
            events = [client.events.turn(p.utterance, user_id=user, session_id=f"{user}-s0", status=p.status,
                                         latency_ms=500, at_ms=end + p.offset_ms,
                                         interpretation=_interp(p.item))
                      for p in evidence_session(conf)]
            resp = client.report(events)
            acked = time.monotonic()
            if resp.accepted < len(events):
                raise RuntimeError(f"collector accepted {resp.accepted} of {len(events)} turns: {resp}")
            return acked

        sessions0 = safe_scrape(murl).get("loopwise_miner_sessions_total", 0.0)
        for conf in confusions:
            for i in range(k - 1):
                report(conf, i)
        want = sessions0 + len(confusions) * (k - 1)
        deadline = time.monotonic() + 60
        while safe_scrape(murl).get("loopwise_miner_sessions_total", 0.0) < want and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2 * args.rules_interval + 0.5)  # a refresh or two with the partial evidence
        early = [conf.source for conf in confusions if probe(conf.source).rewritten]
        c.say(f"evidence: {len(confusions)} confusions, {k - 1} users each reported "
              f"({'sessions closed' if time.monotonic() < deadline else 'TIMED OUT waiting for the sessions'}); "
              f"rewritten before min support: {early or 'none'}")
        for conf in confusions:
            s_before = safe_scrape(murl).get("loopwise_miner_sessions_total", 0.0)
            acked = report(conf, k - 1)
            served = closed = stored = float("nan")
            resp = None
            while time.monotonic() - acked < args.evidence_timeout:
                resp = probe(conf.source)
                now = time.monotonic() - acked
                if resp.rewritten:
                    served = now
                    stored = served if stored != stored else stored  # (seen in this same poll)
                    closed = served if closed != closed else closed
                    break
                if closed != closed and safe_scrape(murl).get("loopwise_miner_sessions_total", 0.0) > s_before:
                    closed = now  # the miner closed the session (and sent it to mining)
                if stored != stored and redis.hexists(table_key, conf.source):
                    stored = now  # the rule is in Redis; the inference cache has not picked it up yet
                time.sleep(0.05)
            ok = resp is not None and resp.rewritten
            right = ok and world.nlu.parse(resp.utterance).item == conf.movie.id
            c.say(f"  {conf.source!r} -> {resp.utterance if ok else '(not served)'!r}: "
                  f"{served:.2f}s after the collector's ack (session closed by {closed:.2f}s, rule in Redis by "
                  f"{stored:.2f}s){'' if right or not ok else ' (WRONG movie)'}")
            rows.append({"source": conf.source, "served_s": json_num(served, 3), "closed_s": json_num(closed, 3),
                         "in_redis_s": json_num(stored, 3), "rewrite": resp.utterance if ok else "",
                         "right": right})
            if ok:
                waits.append(served)
                closes.append(closed)
    p50 = percentile(waits, 50)
    c.say(f"evidence to served: p50 {p50:.2f}s, max {max(waits) if waits else float('nan'):.2f}s over "
          f"{len(waits)}/{len(confusions)} served; of which closing the session (the idle watermark: idle_s + "
          f"the gap + the close timer) p50 {percentile([x for x in closes if x == x], 50):.2f}s")
    out["evidence"] = {"p50_s": json_num(p50, 3), "max_s": json_num(max(waits) if waits else None, 3),
                       "session_closed_s_p50": json_num(percentile([x for x in closes if x == x], 50), 3),
                       "served": len(waits), "injected": len(confusions),
                       "wrong_movie": sum(1 for r in rows if r["rewrite"] and not r["right"]), "early": early,
                       "rows": rows}


def _interp(item: str) -> Any:
    if not item:
        return None
    from loopwise.v1 import events_pb2

    return events_pb2.Interpretation(domain=assistant.DOMAIN, intent=assistant.INTENT, slots={"item": item})


# -- 3. throughput -----------------------------------------------------------------------------


def throughput_phase(args: argparse.Namespace, ws: c.Workspace, world: World, out: dict[str, Any]) -> None:
    import attribution as attr

    from loopwise.client.build import EventFactory
    from loopwise.topics import Topics

    broker, bootstrap = ws.broker()
    _, redis_url = ws.redis()
    run_id = uuid.uuid4().hex[:8]
    topics = Topics.with_prefix(f"bench.{run_id}.")
    ensure_topics(bootstrap, topics.all(), PARTITIONS)
    # users x minutes sized for ~args.turns turns (about 3.4 turns per user-hour), event times ending a minute ago
    minutes = 240.0
    users = max(50, int(args.turns / (minutes / 60 * 3.4)))
    span = int(minutes * 60_000)
    turns = simulate(world if world.time_scale == 1 else World(world.catalog, world.asr, world.behaviour),
                     users=users, minutes=minutes, seed=args.turns_seed, start_ms=stamps.now_ms() - span - 60_000)
    records = turn_records(turns, EventFactory(TENANT), topics.events, codec.record_key)
    total = len(records)
    produce_s = attr.produce(bootstrap, records)
    c.say()
    c.say(f"throughput: {total:,} Turn events ({users} users x {minutes:g} simulated min) produced to "
          f"{topics.events} in {produce_s:.1f}s")
    got, secs, passes = asyncio.run(attr.bare_drain(bootstrap, [topics.events], total))
    bare_eps = got / secs
    c.say(f"  bare aiokafka consumer: {passes} passes, {got:,} records in {secs:.2f}s = {bare_eps:,.0f}/s")
    env = {"LOOPWISE_REDIS_URL": redis_url, "LOOPWISE_TENANTS": TENANT}
    proc, url = attr.start_miner(ws, bootstrap, topics, f"bench-reform-{run_id}", 5000, "miner-throughput", env)
    meter = c.CpuMeter({"miner": proc.pid, "broker": broker.pid})
    d = attr.watch_drain(proc, url, total, meter, timeout=240.0)
    turns_metric = d.metrics.get("loopwise_miner_turns_total", float("nan"))
    c.say(f"  miner: records read from {d.first:.2f}s after its start ({d.at_first:,.0f} at that poll), all "
          f"{total:,} at {d.done:.2f}s: {d.eps:,.0f}/s = {d.eps / bare_eps:.3f} x bare (goal >= "
          f"{GOALS['miner_to_bare']}); turns forwarded to mining {turns_metric:,.0f}")
    if d.seconds > 0 and d.measured > 0:
        c.say("  CPU while reading: " + "; ".join(
            f"{name} {v / d.measured * 1e6:,.0f} us/event ({v / d.seconds:.2f} core)" for name, v in d.cpu.items()))
    # Downstream, on the same deterministic input: every session closed (the last ones when the idle
    # partitions' watermark passes their last turn by the gap: ~idle_s + 45 s of wall time after the
    # drain), then the rules it deployed against offline.mine on the same turns.
    expected = sum(1 for _ in sessionize([record_of(t, TENANT) for t in turns], gap_ms=DEFAULT_GAP_MS))
    t0 = time.perf_counter()
    last: tuple[float, float] = (-1.0, -1.0)
    since = all_closed = t0
    while time.perf_counter() - t0 < args.sessions_timeout:
        m = attr.safe_scrape(url) or {}
        now = (m.get("loopwise_miner_sessions_total", 0.0), m.get("loopwise_miner_rules_created_total", 0.0))
        if now != last:
            last, since = now, time.perf_counter()
            if now[0] >= expected and all_closed == t0:
                all_closed = since
        elif now[0] >= expected and time.perf_counter() - since >= 3.0:
            break
        time.sleep(0.25)
    final = attr.safe_scrape(url) or d.metrics
    proc.stop()
    import redis as redis_lib

    live = set(rules_from_table(redis_lib.Redis.from_url(redis_url).hgetall(redis_keys.rewrite_table(TENANT))))
    _, offline_rules, _ = mine(turns, tenant=TENANT)
    offline = {r.key for r in offline_rules}
    both = len(live & offline)
    closed_s = all_closed - d.started - d.first if all_closed != t0 else float("nan")
    c.say(f"  downstream: {last[0]:,.0f} of the {expected:,} sessions in the backlog closed"
          + (f" ({closed_s:.1f}s after the first record read)" if closed_s == closed_s else " (TIMED OUT)")
          + f"; rules live {len(live)} (gauge {final.get(f'loopwise_miner_rules_live{{tenant={TENANT}}}', -1):.0f}),"
          f" offline.mine on the same turns {len(offline)}, in both {both}")
    out["throughput"] = {"turns": total, "bare_eps": json_num(bare_eps, 1), "miner_eps": json_num(d.eps, 1),
                         "miner_to_bare": json_num(d.eps / bare_eps, 4), "turns_metric": json_num(turns_metric, 0),
                         "miner_first_read_s": json_num(d.first, 2), "miner_all_read_s": json_num(d.done, 2),
                         "miner_cpu_us_per_event": json_num(d.cpu.get("miner", float("nan"))
                                                            / max(d.measured, 1) * 1e6, 1),
                         "sessions_expected": expected, "sessions_closed": json_num(last[0], 0),
                         "all_sessions_closed_s": json_num(closed_s, 1), "rules_live": len(live),
                         "rules_offline_same_turns": len(offline), "rules_in_both": both}


# -- the run -----------------------------------------------------------------------------------


def run(args: argparse.Namespace, ws: c.Workspace) -> dict[str, Any]:
    world = World(movielens_catalog(), time_scale=args.time_scale)
    worlds = {"movies": (TENANT, world), "places": (PLACES_TENANT, PlacesWorld(time_scale=args.time_scale))}
    worlds = {k: v for k, v in worlds.items() if k in args.populations}
    out: dict[str, Any] = {}
    errors: dict[str, str] = {}

    def phase(name: str, fn: Any, *a: Any) -> None:
        try:
            fn(*a)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - reported; the other phases still run
            errors[name] = repr(exc)
            c.say(f"PHASE {name} FAILED: {exc!r}")
            c.say(traceback.format_exc(limit=4))

    unscaled = {"movies": World(world.catalog, world.asr, world.behaviour), "places": PlacesWorld()}
    out["offline"] = {name: offline_phase(args, name, unscaled[name]) for name in worlds}
    if not args.offline:
        phase("stack", stack_phase, args, ws, worlds, out)
    if not args.no_throughput:
        phase("throughput", throughput_phase, args, ws, world, out)

    source = "stack" if out.get("stack") else ("offline" if args.offline else None)
    per = out.get(source, {}) if source else {}
    head = per.get("movies", next(iter(per.values()), {}))
    keys = ("defect_reduction", "defect_reduction_oracle", "defect_reduction_to_oracle", "win_loss",
            "rule_precision")
    result: dict[str, Any] = {
        **{k: head.get(k) for k in keys},
        "evidence_to_served_s_p50": out.get("evidence", {}).get("p50_s"),
        "canary_to_promoted_s_p50": out.get("audit", {}).get("canary_to_promoted_s_p50"),
        "span_rules": head.get("span_rules"), "utterance_rules": head.get("utterance_rules"),
        "miner_to_bare": out.get("throughput", {}).get("miner_to_bare"),
        "defect_rate_before": head.get("defect_rate_before"), "defect_rate_after": head.get("defect_rate_after"),
        "populations": {name: {k: per.get(name, {}).get(k) for k in (*keys, "span_rules", "utterance_rules",
                                                                   "by_kind")} for name in worlds},
        "mode": ("offline" if args.offline else "stack") + ("" if args.no_throughput else "+throughput"),
        "quality_source": source, "headline_population": "movies" if "movies" in per else next(iter(per), None),
        "goals": GOALS, "users": args.users, "minutes": args.minutes, "train_seeds": args.train_seeds,
        "test_seeds": args.test_seeds, "time_scale": args.time_scale, **out}
    if errors:
        result["errors"] = errors
    c.say()
    c.say(f"  {'figure':<28} " + " ".join(f"{n:>10}" for n in worlds) + f" {'goal':>10}   ({source or 'no quality'})")
    for key, goal in (("defect_reduction", ">= 0.5"), ("defect_reduction_oracle", ""),
                      ("defect_reduction_to_oracle", ">= 0.7"), ("win_loss", ">= 20"), ("rule_precision", ""),
                      ("span_rules", ""), ("utterance_rules", "")):
        c.say(f"  {key:<28} " + " ".join(f"{fmt(per.get(n, {}).get(key)):>10}" for n in worlds) + f" {goal:>10}")
    for key, goal in (("evidence_to_served_s_p50", "<= 10"), ("canary_to_promoted_s_p50", ""),
                      ("miner_to_bare", ">= 0.5")):
        c.say(f"  {key:<28} {fmt(result[key]):>10} {goal:>10}")
    c.say("  offline reference: " + "; ".join(
        f"{n} {o['defect_rate_before']} -> {o['defect_rate_after']} (oracle {o['defect_reduction_oracle']}), "
        f"win/loss {o['win_loss']}, precision {o['rule_precision']}" for n, o in out["offline"].items()))
    return result


def fmt(v: Any) -> str:
    return "n/a" if v is None else (v if isinstance(v, str) else f"{v:.3f}" if isinstance(v, float) else str(v))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smaller population and clock (a few minutes in all): a smoke run")
    parser.add_argument("--offline", action="store_true",
                        help="quality figures from offline.evaluate only (no stack); throughput still runs")
    parser.add_argument("--users", type=int, default=None, help="simulated users per seed (default 1500)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="simulated minutes per seed (default 480, --quick 240)")
    parser.add_argument("--train-seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--test-seeds", type=int, nargs="+", default=[101])
    parser.add_argument("--time-scale", type=float, default=None,
                        help="simulated clock compression while training through the stack "
                             "(default 0.006, --quick 0.01: wall time = minutes x scale)")
    parser.add_argument("--rules-interval", type=float, default=1.0, help="LOOPWISE_RULES_INTERVAL_S (default 1)")
    parser.add_argument("--min-support", type=float, default=3.0, help="LOOPWISE_RULE_MIN_SUPPORT (default 3)")
    parser.add_argument("--confusions", type=int, default=None,
                        help="injected confusions for evidence-to-served (default 6, --quick 3)")
    parser.add_argument("--evidence-timeout", type=float, default=30.0)
    parser.add_argument("--turns", type=int, default=None,
                        help="Turn events in the throughput backlog (default 60000, --quick 20000)")
    parser.add_argument("--turns-seed", type=int, default=301)
    parser.add_argument("--sessions-timeout", type=float, default=150.0,
                        help="throughput: how long to wait for every session to close after the drain")
    parser.add_argument("--no-throughput", action="store_true", help="skip the throughput phase")
    parser.add_argument("--populations", nargs="+", default=["movies", "places"], choices=["movies", "places"],
                        help="simulated populations (movies: spelling confusions; places: phonetic sound-alikes "
                             "and varied carrier phrases); the headline figures are the first's")
    parser.add_argument("--canary-share", type=float, default=0.5, help="LOOPWISE_CANARY_SHARE (default 0.5)")
    parser.add_argument("--no-spans", action="store_true", help="LOOPWISE_SPAN_RULES=false")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) at the end")
    args = parser.parse_args()
    args.users = args.users or 1500
    args.minutes = args.minutes or (240.0 if args.quick else 480.0)
    args.time_scale = args.time_scale or (0.01 if args.quick else 0.006)
    args.confusions = args.confusions or (3 if args.quick else 6)
    args.turns = args.turns or (20_000 if args.quick else 60_000)
    with c.Workspace("loopwise-bench-reformulation-", keep=args.keep) as ws:
        result = run(args, ws)
    c.emit_result(result)


if __name__ == "__main__":
    main()

