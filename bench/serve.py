"""Rank throughput and latency against a bare gRPC echo of the same message sizes.

What runs (all on this machine, each its own process, stopped at the end):

- the Tansu broker and a redis-server, the cold-start model in a fresh model
  store, and the inference service (``python -m loopwise.inference``) with
  ``LOOPWISE_EMIT_IMPRESSIONS=true``, as in production: every Rank offers an
  Impression that a background task produces to Kafka (acks=all, zstd);
- a second inference process with impressions off (what impressions cost);
- ``echo``: a bare grpc.aio server with a generic bytes handler (no protobuf
  work at all) that answers Rank with the bytes of a real RankResponse
  captured from the service: the baseline;
- ``servicer``: the same canned answer through our serving stack
  (`loopwise.grpcserver.GrpcService` and `add_service`, the ``@rpc`` metrics
  wrapper, protobuf parse and serialise) but no work: what the stack costs.

One client process (grpc.aio, ``--concurrency`` calls in flight, default 8)
sends the same pre-built RankRequests (100 candidates with genre, decade,
popularity; user gender, age_group, occupation, activity; context hour and
device; user_id; built once with `loopwise.client.sync.rank_request`) through
the generated stub to each target in turn: same request bytes, same response
bytes, same client code. Each phase warms up, then counts the calls completing
inside the measured window, with their latency. Phases alternate for two rounds
(one with --quick).

Where the time goes: CPU per call of every process (client, server, broker)
and of the server's threads over each measured window (a waterfall echo ->
servicer -> rank without impressions -> rank), the server's own
``loopwise_inference_score_seconds``, and an in-process timing of each step of
a Rank on the same request (parse, `InputBuilder.build`, `LoadedModel.score`,
response, Impression building). ``--profile DIR`` adds a py-spy phase.

Usage: python bench/serve.py [--seconds S] [--quick] [--concurrency N] [--profile DIR]
The last line printed is one JSON object: rank_rps, echo_rps, rank_to_echo,
rank_p50_ms, rank_p99_ms, and extras.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import _common as c
import grpc
import numpy as np

from loopwise import codec, stamps
from loopwise.client.sync import CHANNEL_OPTIONS, rank_request
from loopwise.inference import models
from loopwise.inference.impressions import build_impression
from loopwise.modelstore import ModelStore, coldstart
from loopwise.modelstore.contract import DEFAULT_MODEL
from loopwise.tools import procs
from loopwise.topics import Topics, ensure_topics
from loopwise.v1 import inference_pb2, inference_pb2_grpc

TENANT = "default"
MODEL = DEFAULT_MODEL
SERVICE = "loopwise.v1.InferenceService"
CANDIDATES = 100
POOL = 8
GOAL = 0.8
PHASES = ("echo", "servicer", "rank_noimp", "rank")

GENRES = ("Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War",
          "Western")
DECADES = ("1930s", "1940s", "1950s", "1960s", "1970s", "1980s", "1990s")
AGE_GROUPS = ("18-24", "25-34", "35-44", "45-49", "50-55", "56+")
OCCUPATIONS = ("administrator", "artist", "educator", "engineer", "entertainment", "executive",
               "healthcare", "homemaker", "lawyer", "librarian", "marketing", "programmer", "retired",
               "salesman", "scientist", "student", "technician", "writer", "other")


def request_pool(n: int = POOL, seed: int = 7) -> list[inference_pb2.RankRequest]:
    """MovieLens-like RankRequests with 100 candidates each, built once with the client's helper."""
    rng = np.random.default_rng(seed)
    pool = []
    for _ in range(n):
        movies = rng.choice(np.arange(1, 1683), CANDIDATES, replace=False)
        features = {
            "genre": [GENRES[g] for g in rng.integers(0, len(GENRES), CANDIDATES)],
            "decade": [DECADES[d] for d in rng.integers(0, len(DECADES), CANDIDATES)],
            "popularity": np.round(rng.beta(1.2, 6.0, CANDIDATES), 4).tolist(),
        }
        user = {"gender": str(rng.choice(["M", "F"])), "age_group": str(rng.choice(AGE_GROUPS)),
                "occupation": str(rng.choice(OCCUPATIONS)), "activity": float(rng.integers(20, 700))}
        context = {"hour": str(int(rng.integers(0, 24))), "device": str(rng.choice(["tv", "web", "ios"]))}
        pool.append(rank_request(TENANT, [f"m{m}" for m in movies], user_id=f"u{int(rng.integers(1, 944))}",
                                 session_id=uuid.uuid4().hex, user=user, context=context,
                                 features=features))
    return pool


# -- the two reference servers (run as `python bench/serve.py echo-server ...`) ----------------


async def _serve_echo(port: int, response: bytes, mode: str) -> None:
    if mode == "bytes":
        async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return response

        handler = grpc.method_handlers_generic_handler(
            SERVICE, {"Rank": grpc.unary_unary_rpc_method_handler(handle)})  # no (de)serializers: bytes
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()
        return

    from prometheus_client import CollectorRegistry

    from loopwise.grpcserver import GrpcService, RpcMetrics, add_service, rpc

    canned = inference_pb2.RankResponse.FromString(response)

    class CannedServicer(inference_pb2_grpc.InferenceServiceServicer):
        """Our serving stack around no work: parse, @rpc metrics, a ready answer."""

        def __init__(self) -> None:
            self.rpc_metrics = RpcMetrics("bench", CollectorRegistry())

        @rpc("Rank")
        async def Rank(self, request: inference_pb2.RankRequest, context: Any  # noqa: N802
                       ) -> inference_pb2.RankResponse:
            return canned

    service = GrpcService(host="127.0.0.1", port=port, metrics_host="127.0.0.1", metrics_port=-1, registry=CollectorRegistry(),
                          service_names=[SERVICE])
    add_service(service.server, CannedServicer(), inference_pb2.DESCRIPTOR.services_by_name["InferenceService"])
    await service.start()
    await service.set_serving(True)
    await service.server.wait_for_termination()


def echo_server_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="serve.py echo-server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--response", type=Path, required=True, help="bytes of a real RankResponse")
    parser.add_argument("--mode", choices=("bytes", "servicer"), default="bytes")
    args = parser.parse_args(argv)
    asyncio.run(_serve_echo(args.port, args.response.read_bytes(), args.mode))


# -- the benchmark -----------------------------------------------------------------------------


def breakdown(store_path: Path, version: str, request: inference_pb2.RankRequest,
              response: inference_pb2.RankResponse) -> dict[str, float]:
    """Microseconds per step of one Rank, timed in this process (machine otherwise idle),
    with warm caches (a tight loop) and cold ones (``*_cold``: caches flushed before each call)."""
    loaded = models.load(ModelStore(str(store_path)), TENANT, MODEL, version)
    wire = request.SerializeToString()
    req = inference_pb2.RankRequest.FromString(wire)
    sparse, dense = loaded.builder.build(req.user_id, req.user, req.context, req.candidates)
    prob, hidden = loaded.score(sparse, dense)
    ranking = np.argsort(-prob, kind="stable")

    def respond() -> bytes:
        order = np.argsort(-prob, kind="stable")
        return inference_pb2.RankResponse(request_id=uuid.uuid4().hex, model=loaded.model,
                                          version=loaded.version, scores=prob.tolist(),
                                          ranking=order.tolist()).SerializeToString()

    def impression() -> tuple[bytes, bytes]:
        event = build_impression(TENANT, req, response.request_id, loaded.model, loaded.version, prob,
                                 ranking, hidden, stamps.now_ms())
        return codec.record_key(event), event.SerializeToString()

    steps = {
        "parse_request": lambda: inference_pb2.RankRequest.FromString(wire),
        "build_features": lambda: loaded.builder.build(req.user_id, req.user, req.context, req.candidates),
        "onnx_score": lambda: loaded.score(sparse, dense),
        "rank_and_response": respond,
        "impression_event": impression,
    }
    return {**{name: c.time_call(fn) * 1e6 for name, fn in steps.items()},
            **{f"{name}_cold": c.time_call_cold(fn) * 1e6 for name, fn in steps.items()}}


async def wait_emitter_idle(metrics_url: str, timeout: float = 15.0) -> dict[str, float]:
    """Until the impression counters stop moving (the emitter drained its queue)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        snap = await asyncio.to_thread(c.scrape, metrics_url)
        key = (c.delta(snap, {}, "loopwise_inference_impressions_emitted_total"),
               c.delta(snap, {}, "loopwise_inference_impressions_dropped_total"))
        if key == last or time.monotonic() > deadline:
            return snap
        last = key
        await asyncio.sleep(0.5)


async def run(args: argparse.Namespace, ws: c.Workspace) -> dict[str, Any]:
    seconds, warmup = c.resolve_timing(args)
    rounds = 1 if args.quick else 2
    broker, bootstrap = ws.broker()
    _, redis_url = ws.redis()
    topics = Topics.from_env({})
    ensure_topics(bootstrap, [topics.impressions], 4)
    store_path = ws.root / "models"
    manifest = coldstart.ensure(ModelStore(str(store_path)), TENANT, MODEL)
    assert manifest is not None
    env = {"LOOPWISE_KAFKA_BOOTSTRAP": bootstrap, "LOOPWISE_REDIS_URL": redis_url,
           "LOOPWISE_TENANTS": TENANT, "LOOPWISE_MODEL_STORE": str(store_path),
           "LOOPWISE_TOPIC_PARTITIONS": "4", **topics.env()}
    inference, rank_target, rank_metrics = ws.service(
        "loopwise.inference", {**env, "LOOPWISE_EMIT_IMPRESSIONS": "true"}, "inference")
    plain, plain_target, plain_metrics = ws.service(
        "loopwise.inference", {**env, "LOOPWISE_EMIT_IMPRESSIONS": "false"}, "inference-noimp")

    pool = request_pool()
    sizes = sorted({r.ByteSize() for r in pool})
    async with grpc.aio.insecure_channel(rank_target, options=CHANNEL_OPTIONS) as ch:
        sample = await inference_pb2_grpc.InferenceServiceStub(ch).Rank(pool[0], timeout=10)
    response_file = ws.root / "rank_response.bin"
    response_file.write_bytes(sample.SerializeToString())
    refs = {}
    for mode in ("bytes", "servicer"):
        port = procs.free_port()
        proc = ws.script(f"echo-{mode}", [__file__, "echo-server", "--port", str(port), "--response",
                                          str(response_file), "--mode", mode], port)
        refs[mode] = (f"127.0.0.1:{port}", proc.pid)
    c.say(f"RankRequest: {CANDIDATES} candidates, {len(pool)} distinct requests of {sizes[0]}-{sizes[-1]} B; "
          f"RankResponse {sample.ByteSize()} B (the echo servers answer these very bytes)")
    c.say(f"client: grpc.aio, {args.concurrency} calls in flight; {rounds} round(s) of "
          f"{warmup:g}s warm-up + {seconds:g}s measured per phase; {os.cpu_count()} cores")

    targets: dict[str, tuple[str, int, str | None]] = {
        "echo": (*refs["bytes"], None),
        "servicer": (*refs["servicer"], None),
        "rank_noimp": (plain_target, plain.pid, plain_metrics),
        "rank": (rank_target, inference.pid, rank_metrics),
    }
    results: dict[str, list[c.PhaseResult]] = {name: [] for name in PHASES}
    server: dict[str, float] = {"score_s": 0.0, "score_n": 0.0, "rpc_s": 0.0, "rpc_n": 0.0}

    async def phase(name: str, profile_to: Path | None = None) -> c.PhaseResult:
        target, pid, metrics_url = targets[name]
        requests = itertools.cycle(pool)
        before: dict[str, float] = {}
        spy = None

        async def edge(which: str) -> None:
            nonlocal before, spy
            if profile_to is not None and which == "start":
                spy = c.py_spy(pid, seconds, profile_to, name)
            if metrics_url is None or profile_to is not None:
                return
            snap = await asyncio.to_thread(c.scrape, metrics_url)
            if which == "start":
                before = snap
            elif name == "rank":
                server["score_s"] += c.delta(snap, before, "loopwise_inference_score_seconds_sum")
                server["score_n"] += c.delta(snap, before, "loopwise_inference_score_seconds_count")
                server["rpc_s"] += c.delta(snap, before, "loopwise_inference_rpc_seconds_sum")
                server["rpc_n"] += c.delta(snap, before, "loopwise_inference_rpc_seconds_count")

        async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as ch:
            stub = inference_pb2_grpc.InferenceServiceStub(ch)

            async def call(request: inference_pb2.RankRequest) -> int:
                await stub.Rank(request, timeout=10)
                return 1

            meter = c.CpuMeter({"server": pid, "broker": broker.pid}, threads=("server",))
            result = await c.closed_loop(name, call, concurrency=args.concurrency, warmup=warmup,
                                         seconds=seconds, prepare=lambda: next(requests), meter=meter,
                                         on_window=edge)
        if name == "rank":
            await wait_emitter_idle(rank_metrics)  # its backlog must not spill into the next phase
        if spy is not None:
            spy.wait(timeout=seconds + 30)
        return result

    for r in range(rounds):
        for name in PHASES:
            res = await phase(name)
            results[name].append(res)
            c.say(f"  round {r + 1} {name:<10} {res.calls_per_s:8,.0f} req/s  p50 {res.pct_ms(50):5.2f} ms  "
                  f"p99 {res.pct_ms(99):5.2f} ms  errors {res.errors}")

    final = await wait_emitter_idle(rank_metrics)
    server["emitted"] = c.delta(final, {}, "loopwise_inference_impressions_emitted_total")
    server["dropped"] = c.delta(final, {}, "loopwise_inference_impressions_dropped_total")
    server["rank_calls"] = c.delta(final, {}, "loopwise_inference_rpc_requests_total{code=OK,method=Rank}")

    merged = {name: c.merge(name, res) for name, res in results.items()}
    steps = breakdown(store_path, manifest.version, pool[0], sample)

    profile_lines: list[str] = []
    if args.profile is not None:
        c.say(f"profiling the inference service with py-spy for {seconds:g}s (not counted) ...")
        await phase("rank", args.profile)
        profile_lines = c.summarize_folded(args.profile / "rank.folded")

    rank_r, echo_r = merged["rank"], merged["echo"]
    ratio = rank_r.calls_per_s / echo_r.calls_per_s if echo_r.calls_per_s else 0.0
    report(merged, steps, server, ratio)
    if profile_lines:
        c.say(f"py-spy (threads holding the GIL) of the inference service, {args.profile}/rank.folded:")
        for line in profile_lines:
            c.say("  " + line)

    def per_call(res: c.PhaseResult, proc: str) -> float | None:
        return round(res.cpu[proc] / res.calls * 1e6, 1) if res.calls else None

    return {
        "rank_rps": round(rank_r.calls_per_s, 1),
        "echo_rps": round(echo_r.calls_per_s, 1),
        "rank_to_echo": round(ratio, 3),
        "rank_p50_ms": round(rank_r.pct_ms(50), 3),
        "rank_p99_ms": round(rank_r.pct_ms(99), 3),
        "echo_p50_ms": round(echo_r.pct_ms(50), 3),
        "echo_p99_ms": round(echo_r.pct_ms(99), 3),
        "servicer_rps": round(merged["servicer"].calls_per_s, 1),
        "rank_noimp_rps": round(merged["rank_noimp"].calls_per_s, 1),
        "rank_errors": rank_r.errors,
        "server_cpu_us_per_call": {name: per_call(res, "server") for name, res in merged.items()},
        "score_us_server": (round(server["score_s"] / server["score_n"] * 1e6, 1)
                            if server["score_n"] else None),
        "impressions_dropped": int(server["dropped"]),
        "steps_us": {k: round(v, 1) for k, v in steps.items()},
        "concurrency": args.concurrency,
        "seconds": round(seconds, 2),
        "rounds": rounds,
        "goal_met": ratio >= GOAL,
    }


def report(merged: dict[str, c.PhaseResult], steps: dict[str, float], server: dict[str, float],
           ratio: float) -> None:
    c.say("")
    c.say("== results (rounds merged) ==")
    for name, res in merged.items():
        c.say(f"{name:<10} {res.calls_per_s:8,.0f} req/s  p50 {res.pct_ms(50):5.2f} ms  "
              f"p99 {res.pct_ms(99):5.2f} ms  ({res.calls:,} calls, {res.errors} errors)")
        c.say(f"           CPU: {res.cpu_line()}")
        c.say(f"           server threads: {res.threads_line('server')}")
    if not all(r.calls for r in merged.values()):
        return
    per = {name: {k: v / r.calls * 1e6 for k, v in r.cpu.items()} for name, r in merged.items()}
    cost = {name: p["server"] for name, p in per.items()}
    echo_rps = merged["echo"].calls_per_s
    c.say("")
    c.say("== where a Rank goes ==")
    c.say("server CPU per call (us), each step adding to the one before:")
    prev = None
    labels = {"echo": "bare grpc.aio, bytes in/out",
              "servicer": "+ GrpcService, add_service, @rpc metrics, protobuf parse/serialise",
              "rank_noimp": "+ Rank's work: features, onnxruntime, argsort, response",
              "rank": "+ impressions (built and produced on the same event loop)"}
    for name in PHASES:
        step = f"(+{cost[name] - cost[prev]:,.0f})" if prev else ""
        c.say(f"  {name:<10} {cost[name]:6,.0f} {step:>8}  {merged[name].calls_per_s / echo_rps:5.2f}x echo  "
              f"{labels[name]}")
        prev = name
    c.say(f"  broker CPU per Rank call (impressions): {per['rank']['broker']:,.0f} us")
    names = [k for k in steps if not k.endswith("_cold")]
    c.say("in-process, same request, idle machine, us warm / cold caches: " +
          ", ".join(f"{k} {steps[k]:,.0f} / {steps[k + '_cold']:,.0f}" for k in names))
    if server["score_n"]:
        c.say(f"in the server under load: loopwise_inference_score_seconds (build + score + argsort) "
              f"{server['score_s'] / server['score_n'] * 1e6:,.0f} us mean; Rank handler (rpc_seconds) "
              f"{server['rpc_s'] / max(server['rpc_n'], 1) * 1e6:,.0f} us mean")
    c.say(f"impressions: {server['emitted']:,.0f} emitted, {server['dropped']:,.0f} dropped of "
          f"{server['rank_calls']:,.0f} Rank calls" + ("  <-- the emitter fell behind: rank_rps is overstated"
                                                       if server["dropped"] else ""))
    c.say("")
    c.say(f"rank_to_echo = {ratio:.3f} (goal >= {GOAL}: {'met' if ratio >= GOAL else 'NOT met'})")
    if ratio < GOAL:
        gaps = {labels[b].lstrip("+ "): cost[b] - cost[a] for a, b in zip(PHASES, PHASES[1:], strict=False)}
        top = max(gaps, key=lambda k: gaps[k])
        rank = merged["rank"]
        busiest, secs = max(rank.threads.get("server", {"?": 0.0}).items(), key=lambda kv: kv[1])
        if rank.seconds and secs / rank.seconds >= 0.85:
            c.say(f"the bottleneck is the server's thread {busiest!r} at {secs / rank.seconds:.2f} core "
                  "(one event loop does all of Rank's Python work)")
        c.say(f"largest added cost per call: {top} (+{gaps[top]:,.0f} us of server CPU)")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "echo-server":
        echo_server_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    c.add_common_args(parser, seconds=6.0, concurrency=8)
    args = parser.parse_args()
    with c.Workspace("loopwise-bench-serve-", keep=args.keep) as ws:
        result = asyncio.run(run(args, ws))
    c.emit_result(result)


if __name__ == "__main__":
    main()
