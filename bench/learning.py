"""Does Loopwise learn? MovieLens-100K replayed in time order, progressive AUC per learner.

The stream (`_learning_stream`): each rating, in timestamp order, becomes a
Rank request over the rated movie plus 19 movies the user never rated, drawn
in proportion to ``1 + ratings so far`` (a recommender's exposure; uniform
negatives would make popularity alone look strong); the label is a click on
the rated movie when its rating is >= 4. Features are those the demo sends
(`loopwise.tools.datasets.rank_inputs`) with popularity and activity computed from
past ratings only; every learner gets the hashed ids and dense values that
the inference service computes for the same request (`InputBuilder`).

Learners, all scored before they learn a request's labels (progressive):

- ``static``: the cold-start ONNX model, never retrained (scored in-process
  with onnxruntime on the serving inputs for speed; in ``--loopwise stack``
  mode its scores are checked against the stack's own Rank answers while v1
  serves);
- ``loopwise``: periodic retraining, every ``--retrain-every`` requests. Modes:
  ``stack`` (default; the real stack, see `_learning_stack`: `loopwise.tools.stack.up`
  with a short attribution window; Rank through the client with the demo's
  features, a Click for each liked movie, nothing for the rest (the miner's
  window makes them negatives); the scores are those of the Rank answers and
  the version each answer names is recorded. Training: by the stack's trainer
  service when the stack has one (the bench only watches the models topic),
  else triggered by the bench (the replay waits) on the miner's examples and
  pairs read back from Kafka, published to the stack's model store + Redis
  pointer + models topic, so the inference service hot-swaps) or
  ``inprocess`` (no stack: labels at once, versions scored in-process, and
  between them the trainer's own sparse delta steps every
  ``--inprocess-delta-block`` requests: `_learning_inprocess`). The
  bench-triggered trainer is ``loopwise.trainer``'s in-process API
  (`train.run`: holdout, gate, export) when it imports, else the bench's
  stand-in (`_learning_loopwise.StandinTrainer`); ``--trainer`` forces one and
  ``--trainer-set name=value`` overrides its settings. In stack mode
  ``shadow_loopwise`` scores every published version in-process from its
  trigger on (what instant swaps would have served), and the miner's examples
  are checked against the stream (labels and hashed inputs);
- ``vw``: Vowpal Wabbit, logistic loss, same hashed ids (namespaces user /
  item / context + dense), learning rate x interactions tuned on the first
  10% of the stream;
- ``river``: River LogisticRegression (SGD), learning rate tuned likewise.

Stack mode runs the stack once per configuration (`_learning_configs`): per feedback
mode of the miner (``--feedback-mode both``: ``window`` and ``fnw``, fake negatives at
once with FNW weights), plus deltas off (``loopwise_whole_versions``) when the trainer
has sparse deltas, plus pending shows off (``loopwise_no_pending``, with
``--pending-ablation``); ``loopwise`` is the run of the services' default configuration. The
in-process loop runs too at the same cadence (``inprocess``, labels at once: the bound
the stack's delays are measured against; ``--no-inprocess-baseline`` skips it): versions
every ``--retrain-every`` requests and a delta step every as many requests as the stack's
answers saw per update (the replay's requests over the versions and delta sequences its
answers named; ``inprocess_delta_block``). A second in-process run takes the configured
cadence instead (``inprocess_interval``: ``LOOPWISE_TRAINER_DELTA_INTERVAL_S`` at the
replay's request rate while traffic flowed, the pauses for the trainer service's runs left
out). Neither has the stack's latency: a step's rows are learned before the next block is
scored, which is what the comparison measures.

Reported: AUC, gAUC (per user, weighted by rows), request AUC (per request),
AUC per time bucket (table and bench/results/learning.png), throughput, and
trainer examples/s and trigger-to-serving seconds.

Usage: python bench/learning.py [--quick] [--requests N] [--loopwise stack|inprocess]
                                [--feedback-mode both|default|window|fnw]
The last line printed is one JSON object: auc_static, auc_loopwise, gauc_loopwise (the
default configuration), auc_vw, gauc_vw, auc_river, auc_whole_versions, auc_inprocess (and
auc_inprocess_interval, inprocess_delta_block, inprocess_interval_delta_block),
auc_loopwise_<mode> per feedback mode, delta_to_serving_p50_s / _p99_s and
delta_bytes_per_s (null while the stack has no deltas), trainer_examples_per_s,
trigger_to_serving_s, and extras.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import _common as c
import numpy as np
from _learning_configs import Config, configurations, delta_interval_s, freshness_keys
from _learning_eval import bucket_ids, summarize
from _learning_inprocess import run_inprocess
from _learning_loopwise import LoopRun, OnnxScorer, make_trainer
from _learning_peers import PeerRun, river_peer, vw_peer
from _learning_stream import Stream, build_stream, featurize

from loopwise.modelstore import coldstart
from loopwise.tools import datasets

QUICK_REQUESTS = 6_000
BUCKETS = 20
QUICK_BUCKETS = 10
RETRAINS = 20  # default: retrain this many times over the stream
QUICK_RETRAINS = 10
RESULTS = Path(__file__).resolve().parent / "results"
LEARNERS = ("static", "loopwise", "loopwise_window", "loopwise_fnw", "loopwise_whole_versions",
            "loopwise_no_pending", "inprocess", "inprocess_interval",
            "shadow_loopwise", "vw", "river")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help=f"replay the first {QUICK_REQUESTS} ratings")
    p.add_argument("--requests", type=int, default=None, help="ratings to replay (default all 100,000)")
    p.add_argument("--loopwise", choices=("stack", "inprocess", "off"), default="stack",
                   help="how the Loopwise loop runs (default stack: the real services)")
    p.add_argument("--stack-training", choices=("auto", "bench"), default="auto",
                   help="stack mode: auto = the stack's trainer service when it has one, else runs triggered by "
                        "the bench with --trainer; bench = always the latter (the service never triggers)")
    p.add_argument("--trainer", choices=("auto", "loopwise", "standin"), default="auto",
                   help="auto: loopwise.trainer's in-process API when it imports, else the bench stand-in")
    p.add_argument("--trainer-set", action="append", default=[], metavar="NAME=VALUE",
                   help="override a TrainerSettings field of the in-process loopwise.trainer "
                        "(e.g. trainer_epochs=1; repeatable)")
    p.add_argument("--retrain-every", type=int, default=None,
                   help=f"requests between two training triggers (default requests / {RETRAINS}, --quick: / {QUICK_RETRAINS})")
    p.add_argument("--feedback-mode", choices=("both", "default", "window", "fnw"), default="both",
                   help="stack mode: the miner's LOOPWISE_FEEDBACK_MODE runs (both: a stack run per mode)")
    p.add_argument("--whole-versions", action=argparse.BooleanOptionalAction, default=True,
                   help="stack mode: also run the default configuration with sparse deltas off (when the "
                        "trainer has them)")
    p.add_argument("--pending-ablation", action="store_true",
                   help="stack mode: also run the default configuration without the replicas' pending shows "
                        "(LOOPWISE_PENDING_STEP=0; auc_no_pending, gauc_no_pending)")
    p.add_argument("--inprocess-delta-block", type=int, default=10,
                   help="in-process loop: a sparse delta step every this many requests (0: whole versions only; "
                        "a stack run's baselines take the stack's own cadence: see inprocess_delta_block)")
    p.add_argument("--inprocess-baseline", action=argparse.BooleanOptionalAction, default=True,
                   help="stack mode: also run the in-process loop at the same cadence (auc_inprocess, "
                        "auc_inprocess_interval)")
    p.add_argument("--peers", default="vw,river", help="online peers to run (comma-separated; '' for none)")
    p.add_argument("--tune-fraction", type=float, default=0.1, help="stream prefix the peers are tuned on")
    p.add_argument("--buckets", type=int, default=None, help=f"time buckets (default {BUCKETS}, quick {QUICK_BUCKETS})")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--attribution-window-ms", type=int, default=2_000, help="the miner's window in stack mode")
    p.add_argument("--threads", type=int, default=0, help="torch threads for training (0: torch's default)")
    p.add_argument("--png", type=Path, default=RESULTS / "learning.png")
    p.add_argument("--keep", action="store_true", help="keep the stack's work directory")
    return p.parse_args(argv)


# -- reporting --------------------------------------------------------------------------------


def fmt(x: float | None, digits: int = 4) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def table(results: dict[str, dict[str, Any]], edges: list[str]) -> list[str]:
    names = [n for n in LEARNERS if n in results]
    w = max([10, *map(len, names)])
    lines = [f"{'learner':{w}} {'AUC':>7} {'gAUC':>7} {'reqAUC':>7} {'rows/s':>9}  config"]
    for n in names:
        r = results[n]
        rate = r.get("rows_per_s")
        lines.append(f"{n:{w}} {fmt(r['auc']):>7} {fmt(r['gauc']):>7} {fmt(r['request_auc']):>7} "
                     f"{(f'{rate:,.0f}' if rate else '-'):>9}  {r.get('config', '')}")
    lines.append("")
    lines.append("AUC per time bucket (bucket ends):")
    lines.append(f"{'ends':>10} " + " ".join(f"{n:>{max(8, len(n))}}" for n in names))
    for j, edge in enumerate(edges):
        lines.append(f"{edge:>10} " + " ".join(f"{fmt(results[n]['curve'][j]):>{max(8, len(n))}}" for n in names))
    return lines


def plot(path: Path, results: dict[str, dict[str, Any]], edges: list[str], title: str, n_requests: int,
         versions: list[tuple[int, str]] | None = None) -> None:
    """AUC per bucket per learner; ``versions``: (first request served, name) of each new version."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(10, 5.5))
    x = np.arange(len(edges))
    for name in LEARNERS:
        if name in results:
            r = results[name]
            ax.plot(x, r["curve"], marker="o", ms=3, ls="--" if name.startswith("shadow") else "-",
                    label=f"{name} (AUC {fmt(r['auc'], 3)})")
    for j, (request, name) in enumerate(versions or []):
        ax.axvline(request * len(edges) / n_requests - 0.5, color="grey", lw=0.6, ls=":",
                   label="a new Loopwise version serves" if j == 0 else None)
        ax.annotate(name, (request * len(edges) / n_requests - 0.5, ax.get_ylim()[0]), fontsize=6, color="grey",
                    rotation=90, va="bottom")
    ax.set_xticks(x)
    ax.set_xticklabels(edges, rotation=45, ha="right", fontsize=8)
    ax.set_xlabel("time bucket (last rating's date)")
    ax.set_ylabel("progressive AUC in the bucket")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def bucket_edges(stream: Stream, buckets: int) -> list[str]:
    from datetime import UTC, datetime

    ts = stream.timestamps()
    per = np.minimum(np.arange(stream.n) * buckets // stream.n, buckets - 1)
    out = []
    for j in range(buckets):
        last = ts[per == j]
        out.append(datetime.fromtimestamp(int(last.max()), UTC).strftime("%Y-%m-%d") if len(last) else "-")
    return out


# -- the learners -----------------------------------------------------------------------------


def run_static(stream: Stream, parent: bytes) -> tuple[np.ndarray, float]:
    assert stream.sparse is not None and stream.dense is not None
    t = time.perf_counter()
    scores = OnnxScorer(parent).score(stream.sparse, stream.dense)
    return scores, time.perf_counter() - t


def run_loopwise(args: argparse.Namespace, stream: Stream, parent: bytes, every: int, mode: str | None = None,
                 service_env: dict[str, str] | None = None, delta_block: int | None = None
                 ) -> tuple[LoopRun | None, str]:
    """One Loopwise loop: ``mode`` stack or inprocess (default ``--loopwise``); ``service_env``:
    the stack's extra settings; ``delta_block``: in-process delta steps every this many requests
    (None: ``--inprocess-delta-block``)."""
    mode = mode or args.loopwise
    if mode == "off":
        return None, "--loopwise off"
    try:
        overrides = dict(kv.split("=", 1) for kv in args.trainer_set)
        # The trainer's settle filter waits out the miner's attribution window: the stack's
        # (--attribution-window-ms) in stack mode; in-process labels are complete at once.
        if args.trainer != "standin":
            overrides.setdefault("attribution_window_ms", str(args.attribution_window_ms if mode == "stack" else 0))
        trainer = make_trainer(args.trainer, parent, stream.spec, threads=args.threads, seed=args.seed, say=c.say,
                               overrides=overrides)
    except Exception as exc:  # noqa: BLE001 - reported with its reason, the other learners still count
        c.say(f"loopwise trainer FAILED to start: {exc!r}")
        return None, f"trainer failed: {exc!r}"
    c.say(f"loopwise: {mode} mode" + ("" if mode == "stack" and args.stack_training == "auto"
                                      else f", trainer {trainer.name}")
          + (f", {' '.join(f'{k}={v}' for k, v in service_env.items())}" if service_env else ""))
    try:
        if mode == "inprocess":
            return run_inprocess(stream, parent, every, trainer, say=c.say,
                                 delta_block=delta_block if delta_block is not None else args.inprocess_delta_block), ""
        from _learning_stack import run_stack

        return run_stack(stream, parent, every, trainer, window_ms=args.attribution_window_ms, keep=args.keep,
                         training=args.stack_training, service_env=service_env, say=c.say), ""
    except Exception as exc:  # noqa: BLE001 - reported with its reason, the other learners still count
        import traceback

        traceback.print_exc()
        c.say(f"loopwise ({mode}) FAILED: {exc!r}")
        return None, f"{mode} mode failed: {exc!r}"


def run_all(args: argparse.Namespace, stream: Stream, parent: bytes, every: int, record: Any,
            reasons: dict[str, str]) -> dict[str, LoopRun]:
    """Every Loopwise configuration's run (stack mode: `configurations`, then the in-process
    baseline), recorded as a learner; ``loopwise``: the default configuration's."""
    if args.loopwise == "stack":
        configs, main = configurations(args.feedback_mode, args.whole_versions, args.pending_ablation)
    else:
        configs, main = [Config("loopwise")], "loopwise"
    runs: dict[str, LoopRun] = {}
    for cfg in configs:
        name = "loopwise" if cfg.name == main else cfg.name
        loop, why = run_loopwise(args, stream, parent, every, service_env=cfg.env or None)
        if loop is None:
            reasons[name] = why
            continue
        runs[name] = loop
        loop.extra["feedback_mode"] = cfg.env.get("LOOPWISE_FEEDBACK_MODE", "")
        trainer = "" if loop.trainer in loop.mode else f"; {loop.trainer}"
        label = f"; {cfg.label}" if cfg.label else ""
        record(name, loop.scores, config=f"{loop.mode}{trainer}{label}; every {every} requests",
               versions=int(loop.version.max()))
        for key, value in loop.extra.items():
            if key.startswith("shadow_scores") and name == "loopwise":
                record(key.replace("_scores", ""), value,
                       config="each published version scored in-process from its trigger on")
    if args.loopwise == "stack" and args.inprocess_baseline:
        for name, block in inprocess_cadences(stream.n, runs["loopwise"].extra if "loopwise" in runs else {}):
            loop, why = run_loopwise(args, stream, parent, every, mode="inprocess", delta_block=block)
            if loop is None:
                reasons[name] = why
                continue
            runs[name] = loop
            loop.extra["delta_block"] = block
            record(name, loop.scores, config=f"{loop.mode}; {loop.trainer}, labels at once; every {every} "
                                             "requests", versions=int(loop.version.max()))
    return runs


def inprocess_cadences(requests: int, stack: dict[str, Any]) -> list[tuple[str, int | None]]:
    """The in-process baselines of a stack run, each (name, requests per delta step):
    ``inprocess`` at the cadence the stack's traffic saw (requests per version and delta
    sequence its answers named: every delta a request was scored with, not the ones a newer
    one overtook before any request), and ``inprocess_interval`` at its configured one (the
    trainer's delta interval at the replay's request rate while traffic flowed, the pauses
    for the trainer service's runs left out); None where the stack run has no figure."""
    states = stack.get("served_states")
    rate = stack.get("replay_active_rank_per_s") or stack.get("replay_rank_per_s")
    return [("inprocess", max(1, round(requests / states)) if states else None),
            ("inprocess_interval", max(1, round(rate * delta_interval_s())) if rate else None)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    requests = args.requests or (QUICK_REQUESTS if args.quick else None)
    buckets = args.buckets or (QUICK_BUCKETS if args.quick else BUCKETS)
    started = time.perf_counter()
    data = datasets.movielens_100k()
    n = min(requests or len(data), len(data))
    every = args.retrain_every or max(n // (QUICK_RETRAINS if args.quick else RETRAINS), 1)
    c.say(f"MovieLens-100K: replaying {n} of {len(data)} ratings, 20 candidates each "
          f"(popularity-drawn never-rated negatives), {buckets} time buckets, retrain every {every} requests")

    t = time.perf_counter()
    stream = build_stream(data, n, seed=args.seed)
    featurize(stream)
    y = stream.label.reshape(-1)
    c.say(f"stream: {stream.n} requests, {len(y)} rows, {int(y.sum())} clicks "
          f"({y.sum() / stream.n:.1%} of requests), built and hashed in {time.perf_counter() - t:.1f}s")

    parent = coldstart.build_onnx(stream.spec)
    users = stream.row_users()
    req_ids = np.repeat(np.arange(stream.n), stream.k)
    bucket = bucket_ids(stream.n, stream.k, buckets)
    results: dict[str, dict[str, Any]] = {}
    reasons: dict[str, str] = {}

    def record(name: str, scores: np.ndarray, **extra: Any) -> None:
        results[name] = {**summarize(y, scores, users, req_ids, bucket, buckets), **extra}
        r = results[name]
        c.say(f"{name}: AUC {fmt(r['auc'])} gAUC {fmt(r['gauc'])} request AUC {fmt(r['request_auc'])}")

    scores, secs = run_static(stream, parent)
    record("static", scores, rows_per_s=len(scores) / secs, config="cold-start ONNX, never retrained")

    runs = run_all(args, stream, parent, every, record, reasons)
    loop = runs.get("loopwise")

    tune = max(int(args.tune_fraction * stream.n), 1)
    peers = {"vw": vw_peer, "river": river_peer}
    for name in [p for p in args.peers.split(",") if p]:
        try:
            run: PeerRun = peers[name](stream, tune, c.say)
        except Exception as exc:  # noqa: BLE001 - a peer that cannot run is reported, not fatal
            c.say(f"{name} FAILED: {exc!r}")
            reasons[name] = repr(exc)
            continue
        record(name, run.scores, rows_per_s=run.rows_per_s, config=run.config, grid=run.grid)
    for name in ("vw", "river"):
        if name not in results and name not in reasons:
            reasons[name] = "not requested (--peers)"

    edges = bucket_edges(stream, buckets)
    c.say("")
    for line in table(results, edges):
        c.say(line)
    title = (f"MovieLens-100K progressive AUC, {stream.n} requests x {stream.k} candidates"
             + (f"; loopwise: {loop.mode}, retrain every {every}" if loop else ""))
    swaps = []
    if loop is not None:
        for r in (np.flatnonzero(np.diff(loop.version)) + 1).tolist():
            swaps.append((r, f"v{int(loop.version[r])}"))
    plot(args.png, results, edges, title, stream.n, swaps)
    c.say(f"plot: {args.png}")

    def get(name: str, key: str) -> float | None:
        v = results.get(name, {}).get(key)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), 4)

    stats = loop.stats if loop else None
    fresh = freshness_keys(args.loopwise, runs, get, reasons)
    for name, why in reasons.items():
        c.say(f"{name}: null ({why})")
    result = {
        "auc_static": get("static", "auc"),
        "auc_loopwise": get("loopwise", "auc"),
        "gauc_loopwise": get("loopwise", "gauc"),
        "auc_vw": get("vw", "auc"),
        "auc_river": get("river", "auc"),
        "trainer_examples_per_s": round(stats.examples_per_s) if stats and stats.examples else None,
        "trigger_to_serving_s": loop.extra.get("trigger_to_serving_s") if loop else None,
        "auc_loopwise_shadow": get("shadow_loopwise", "auc"),
        "gauc_static": get("static", "gauc"), "gauc_vw": get("vw", "gauc"), "gauc_river": get("river", "gauc"),
        "loopwise_mode": loop.mode if loop else None, "trainer": loop.trainer if loop else None,
        "requests": stream.n, "rows": int(len(y)), "retrain_every": every,
        "versions": int(loop.version.max()) if loop else None,
        "vw_config": results.get("vw", {}).get("config"), "river_config": results.get("river", {}).get("config"),
        "cpus": os.cpu_count(), "seconds": round(time.perf_counter() - started, 1),
        **fresh,
        "null_reasons": reasons or None,
    }
    if "loopwise" in results and "static" in results:
        # time buckets where the served loop ranked worse than the static model (goal: none)
        below = np.asarray(results["loopwise"]["curve"]) < np.asarray(results["static"]["curve"])
        result["buckets_below_static"] = f"{int(below.sum())} of {buckets}"
    if loop:
        result.update({k: v for k, v in loop.extra.items() if not k.startswith("shadow_scores")
                       and k not in result and not isinstance(v, np.ndarray)})
    c.emit_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
