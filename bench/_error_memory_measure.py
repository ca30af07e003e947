"""Speed and size of the error memory on a running stack (bench/error_memory.py).

Three more inference replicas are started beside the stack's (its settings,
its broker, Redis and model store, the memory mode changed): ``on`` (a
second replica with the memory on: click-to-effect must hold on every
replica), ``off`` (the baseline for latency) and ``twin`` (memory off as
well: the noise floor). Then:

- Rank latency: ``LATENCY_CALLS`` calls of 100 candidates to each replica,
  in turn: the stack's (memory on, filled by the replay), the second
  memory-on one, the ``off`` one and its ``twin`` (memory off too); the
  overhead is median(second on) / median(off) - 1: the two replicas started
  together with the same settings but the memory mode (the on one also
  reads and writes the errors these calls make), and the median of the
  per-round ratios (``_paired``); twin against off (``rank_latency_a_a``) is
  the same figure between two identical replicas, the noise floor; the
  stack's replica differs by more than the memory (it served the whole
  replay): its figure is reported beside.
- Click-to-effect (first: the latency calls' impressions soon make enough
  examples for the trainer service to publish a version, and a new version
  starts with a fresh memory): for each of ``TRIALS`` probes (a user never
  seen, five random movies), Rank on both replicas, report a click on one
  candidate through the collector, then Rank the same request on both
  replicas every ``POLL_S`` until its compensated probability changed on
  each (not necessarily up: a sketch read weighs the key's buckets by their
  counts, and the click adds to every one of them); the effect time is the latest replica's first such answer minus the
  moment the collector acknowledged the click.
- Bytes per model: the replica's ``loopwise_inference_memory_bytes``.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from loopwise.client import Client
from loopwise.client.sync import rank_request
from loopwise.modelstore.contract import DEFAULT_MODEL
from loopwise.tools import datasets, procs, stack

LATENCY_CALLS = 300
LATENCY_CANDIDATES = 100
TRIALS = 30
POLL_S = 0.02
EFFECT_TIMEOUT_S = 10.0
PROBE_CANDIDATES = 5
MODEL = DEFAULT_MODEL


def start_replica(info: stack.StackInfo, mode: str, name: str) -> tuple[procs.Proc, str, str]:
    """Another inference process with the stack's settings and memory ``mode``: (proc, endpoint, metrics)."""
    specs = json.loads((Path(info.root) / stack.SPECS_FILE).read_text())
    port, mport = procs.free_port(), procs.free_port()
    env = {**specs["inference"]["env"], "LOOPWISE_GRPC_PORT": str(port), "LOOPWISE_METRICS_PORT": str(mport),
           "LOOPWISE_ERROR_MEMORY_MODE": mode}
    proc = procs.start_service("loopwise.inference", env, Path(info.root) / "logs" / f"{name}.log")
    endpoint = f"127.0.0.1:{port}"
    procs.wait_healthy(endpoint, 60, proc)
    return proc, endpoint, f"http://127.0.0.1:{mport}/metrics"


def _request(data: datasets.MovieLens, user_id: str, items: list[str], tenant: str, profile: str = "") -> Any:
    """A Rank request for ``items`` by ``user_id``, with the features of MovieLens user ``profile``."""
    user = data.users[profile or str(data.user[0])]
    inputs = datasets.rank_inputs(user, [data.items[i] for i in items])
    inputs["user_id"] = user_id
    return rank_request(tenant, items, **inputs)


def rank_latency(stack_on: Client, fresh_on: Client, off: Client, twin: Client, data: datasets.MovieLens,
                 tenant: str, seed: int) -> dict[str, float]:
    """Rank of 100 candidates, in rounds of one call to each replica in turn: the stack's (memory
    on), the second memory-on one, the memory-off one and its twin (memory off as well). The
    overhead compares the two replicas started together with the same settings but the memory
    mode (the stack's has served the whole replay besides): the ratio of their medians, and the
    median of the ratios within a round (paired: both calls see the machine's load of that
    moment). The twin against the off replica is the same comparison with no difference between
    them: the noise floor of the figure on this machine."""
    rng = random.Random(seed)
    ids = list(data.items)
    clients = [("stack", "on", stack_on), ("on", "on", fresh_on), ("off", "off", off), ("twin", "off", twin)]
    times: dict[str, list[float]] = {name: [] for name, _, _ in clients}
    warm = 5 * len(clients)  # the first rounds warm them up
    for call in range(LATENCY_CALLS * len(clients) + warm):
        request = _request(data, f"latency-{call % 50}", rng.sample(ids, LATENCY_CANDIDATES), tenant)
        name, mode, client = clients[call % len(clients)]
        t = time.perf_counter()
        answer = client.rank_raw(request)
        if call >= warm:
            times[name].append(time.perf_counter() - t)
        if (answer.memory_mode or "off") != mode:
            raise RuntimeError(f"a memory-{mode} replica answers with memory mode {answer.memory_mode!r}")
    p50 = {name: float(np.median(t)) * 1000 for name, t in times.items()}
    p99 = {name: float(np.percentile(t, 99)) * 1000 for name, t in times.items()}
    per = {name: np.asarray(t) for name, t in times.items()}
    return {"rank_ms_p50_memory_on": round(p50["on"], 3), "rank_ms_p50_memory_off": round(p50["off"], 3),
            "rank_ms_p50_stack_replica": round(p50["stack"], 3), "rank_ms_p50_memory_off_twin": round(p50["twin"], 3),
            "rank_ms_p99_memory_on": round(p99["on"], 3), "rank_ms_p99_memory_off": round(p99["off"], 3),
            "rank_ms_p99_stack_replica": round(p99["stack"], 3),
            "rank_latency_overhead": round(p50["on"] / p50["off"] - 1.0, 4),
            "rank_latency_overhead_paired": round(float(np.median(per["on"] / per["off"])) - 1.0, 4),
            "rank_latency_overhead_stack_replica": round(p50["stack"] / p50["off"] - 1.0, 4),
            "rank_latency_a_a": round(p50["twin"] / p50["off"] - 1.0, 4),
            "rank_latency_a_a_paired": round(float(np.median(per["twin"] / per["off"])) - 1.0, 4)}


def click_to_effect(collector: Client, replicas: list[Client], data: datasets.MovieLens, tenant: str, seed: int,
                    settle_s: float, say: Callable[[str], None]) -> dict[str, Any]:
    """Seconds from a click acknowledged to its compensation visible on every replica. A trial
    during which a new version starts serving is not counted (the memory starts afresh with it:
    ``swapped``); one not visible within ``EFFECT_TIMEOUT_S`` is ``missed`` and counts as that long.
    Each probe has the features of another MovieLens user, and the next waits ``settle_s`` (the
    attribution window and then some), so the negatives of one probe's windows (every Rank call
    is an impression) do not land in the next probe's buckets while it is watched."""
    rng = random.Random(seed + 1)
    ids = list(data.items)
    profiles = sorted(data.users)
    effects: list[float] = []
    missed = swapped = 0
    for trial in range(TRIALS):
        items = rng.sample(ids, PROBE_CANDIDATES)
        request = _request(data, f"probe-{seed}-{trial}", items, tenant, rng.choice(profiles))
        shown = replicas[0].rank_raw(request)
        before = [r.rank_raw(request) for r in replicas]
        j = rng.randrange(PROBE_CANDIDATES)
        collector.report([collector.events.click(shown.request_id, items[j], user_id=request.user_id,
                                                 position=list(shown.ranking).index(j) + 1)])
        acked = time.monotonic()
        seen: dict[int, float] = {}
        moved = False
        while len(seen) < len(replicas) and time.monotonic() - acked < EFFECT_TIMEOUT_S and not moved:
            for r, client in enumerate(replicas):
                if r in seen:
                    continue
                now = client.rank_raw(request)
                if now.version != before[r].version or now.version != shown.version:
                    moved = True
                    break
                if abs(now.compensated_scores[j] - before[r].compensated_scores[j]) > 1e-6:
                    seen[r] = time.monotonic() - acked
            time.sleep(POLL_S)
        time.sleep(settle_s)
        if moved:
            swapped += 1
        elif len(seen) == len(replicas):
            effects.append(max(seen.values()))
        else:
            missed += 1
            effects.append(EFFECT_TIMEOUT_S)
    say(f"click-to-effect: {len(effects) - missed} of {TRIALS} clicks visible on {len(replicas)} replicas"
        + (f", {missed} not within {EFFECT_TIMEOUT_S:.0f}s (counted as {EFFECT_TIMEOUT_S:.0f}s)" if missed else "")
        + (f", {swapped} not counted (a new version started serving)" if swapped else ""))
    if not effects:
        return {"click_to_effect_p50_s": None, "click_to_effect_p99_s": None, "click_to_effect_swapped": swapped}
    return {"click_to_effect_p50_s": round(float(np.median(effects)), 3),
            "click_to_effect_p99_s": round(float(np.percentile(effects, 99)), 3),
            "click_to_effect_max_s": round(float(max(effects)), 3), "click_to_effect_trials": len(effects),
            "click_to_effect_missed": missed, "click_to_effect_swapped": swapped}


def measure(info: stack.StackInfo, data: datasets.MovieLens, seed: int, say: Callable[[str], None]
            ) -> dict[str, Any]:
    """Latency, click-to-effect and bytes on the running stack ``info`` (its memory on)."""
    tenant = info.tenants[0]
    window_s = int(json.loads((Path(info.root) / stack.SPECS_FILE).read_text())["miner"]["env"]
                   ["LOOPWISE_ATTRIBUTION_WINDOW_MS"]) / 1000
    started = []
    out: dict[str, Any] = {}
    try:
        second, second_at, second_metrics = start_replica(info, "on", "inference-memory-on")
        started.append(second)
        off, off_at, _ = start_replica(info, "off", "inference-memory-off")
        started.append(off)
        twin, twin_at, _ = start_replica(info, "off", "inference-memory-off-twin")
        started.append(twin)
        say(f"replicas: {info.inference} (the stack's, memory on), {second_at} (memory on), {off_at} and "
            f"{twin_at} (memory off)")
        with Client(info.collector, info.inference, tenant=tenant) as main, \
                Client(None, second_at, tenant=tenant) as other, Client(None, off_at, tenant=tenant) as base, \
                Client(None, twin_at, tenant=tenant) as base_twin:
            # Clicks first: the latency calls' impressions become enough examples to retrain on.
            out.update(click_to_effect(main, [main, other], data, tenant, seed, window_s + 2.0, say))
            out.update(rank_latency(main, other, base, base_twin, data, tenant, seed))
            say(f"Rank, {LATENCY_CANDIDATES} candidates: p50 {out['rank_ms_p50_memory_on']} ms memory on, "
                f"{out['rank_ms_p50_memory_off']} ms off (overhead {out['rank_latency_overhead']:+.1%}, paired "
                f"{out['rank_latency_overhead_paired']:+.1%}); two memory-off replicas against each other "
                f"{out['rank_latency_a_a']:+.1%} (paired {out['rank_latency_a_a_paired']:+.1%}): the noise floor; "
                f"the stack's replica (memory on, served the replay) {out['rank_ms_p50_stack_replica']} ms "
                f"({out['rank_latency_overhead_stack_replica']:+.1%})")
        out["bytes_per_model"] = procs.metric_value(second_metrics, "loopwise_inference_memory_bytes",
                                                    {"tenant": tenant, "model": MODEL})
    finally:
        for proc in started:
            proc.stop()
    return out
