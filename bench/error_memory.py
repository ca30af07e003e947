"""Does the error memory correct the served model between two versions? (docs/methods.md §1)

The replay of bench/learning.py (MovieLens-100K in time order, 20 candidates
per request, the same seeds; ``--quick`` is the same prefix as
``bench/learning.py --quick``) runs through the real local stack with the
stack's trainer service retraining on the same schedule, and the inference
service's error memory on (``LOOPWISE_ERROR_MEMORY_MODE=on``). Every Rank
answer carries the model's own probability (``base_scores``: the memory
off) and the compensated one (served), so memory off and on are scored on
the same requests of one run: AUC and gAUC (per user), overall and per time
slice, progressive (`_learning_eval`).

K, L, lambda, tau (and gamma), and the exact (user, item) table's lambda and
prior, are tuned before the stack starts, on the first ``--tune-fraction``
of the stream only (`_error_memory_tune`: the inference service's own
sketch and pair table replayed over the cold-start model's hidden layer and
the scores the stack would serve on the prefix: the model plus the
trainer's sparse deltas, learnt in-process as the prefix goes; ``--tune-base
coldstart``: the model's own scores, as before the deltas served). The memory's ``settle_s`` is the attribution window
(``--settle-s``): a click's error waits for its window's negatives before
its buckets take it (services/inference/memory/fresh.py).

Then, on the same stack (`_error_memory_measure`): Rank latency with 100
candidates, memory on vs off (more replicas started together, one
with the memory on, two off: the second off one against the first is the
noise floor, ``rank_latency_a_a``);
click-to-effect (a click acknowledged by the collector until the
compensation moved in Rank on both of two memory-on replicas); bytes of one
model's memory at the service's default K and L (and at the tuned ones).

A second replay (``--no-shift`` skips it) injects a preference shift
(`_error_memory_shift`: from the middle of a retraining interval after
``--shift-at`` of the stream, students click horror, thriller, sci-fi and
crime movies instead of what they rated): the gAUC gain after the shift, and
the seconds until the compensated AUC of the segment is back at its level
before the shift (the base's too, for comparison); null when it is not
within the replay, ``shift_recovery_not_within_s`` then says how long was
watched.

Usage: python bench/error_memory.py [--quick] [--requests N] [--no-shift] [--save-answers FILE.npz]
            [--tune-base deltas|coldstart]
The last line printed is one JSON object: gauc_base, gauc_memory, gauc_gain_points, auc_base, auc_memory,
shift_recovery_s, rank_latency_overhead, click_to_effect_p50_s, click_to_effect_p99_s, bytes_per_model,
and extras.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Any

import _common as c
import numpy as np
from _error_memory_measure import measure
from _error_memory_shift import inject_shift, recovery_s
from _error_memory_stack import memory_env, replay
from _error_memory_tune import tune
from _learning_eval import bucket_ids, summarize
from _learning_inprocess import run_inprocess
from _learning_loopwise import make_trainer
from _learning_stream import Stream, build_stream, featurize
from learning import (
    BUCKETS,
    QUICK_BUCKETS,
    QUICK_REQUESTS,
    QUICK_RETRAINS,
    RETRAINS,
    bucket_edges,
    fmt,
)

from loopwise.modelstore import coldstart
from loopwise.ranking_metrics import auc, gauc
from loopwise.tools import datasets


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help=f"replay the first {QUICK_REQUESTS} ratings")
    p.add_argument("--requests", type=int, default=None, help="ratings to replay (default all 100,000)")
    p.add_argument("--retrain-every", type=int, default=None,
                   help=f"requests between two training triggers (default requests / {RETRAINS}, --quick: / "
                        f"{QUICK_RETRAINS})")
    p.add_argument("--buckets", type=int, default=None, help=f"time slices (default {BUCKETS}, quick {QUICK_BUCKETS})")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--attribution-window-ms", type=int, default=2_000, help="the miner's window")
    p.add_argument("--tune-fraction", type=float, default=0.1, help="stream prefix the memory is tuned on")
    p.add_argument("--tune-base", choices=("deltas", "coldstart"), default="deltas",
                   help="the base the memory is tuned over on the prefix: the cold-start model plus the "
                        "trainer's sparse deltas learnt as the prefix goes (what the stack serves; default), "
                        "or the cold-start model alone")
    p.add_argument("--tune-delta-block", type=int, default=10,
                   help="with --tune-base deltas: requests per delta step (bench/learning.py's "
                        "--inprocess-delta-block)")
    p.add_argument("--shift-at", type=float, default=0.5,
                   help="the shift starts half a retraining interval after this fraction of the stream")
    p.add_argument("--no-shift", action="store_true", help="skip the replay with the injected shift")
    p.add_argument("--save-answers", default="",
                   help="write replay 1's base and compensated scores and send times (npz) here, for offline "
                        "replays of other memories over the stack's own base (bench/_error_memory_diagnose.py "
                        "--answers)")
    p.add_argument("--settle-s", type=float, default=None,
                   help="the memory's settle_s: a click waits this long for its window's negatives "
                        "(default: the attribution window; 0: clicks into the sketch at once)")
    return p.parse_args(argv)


def scored(stream: Stream, base: np.ndarray, memory: np.ndarray, buckets: int, rows: np.ndarray | None = None
           ) -> dict[str, dict[str, Any]]:
    """AUC, gAUC and the per-slice curve of the base and the compensated scores (rows: a mask)."""
    y = stream.label.reshape(-1)
    users = stream.row_users()
    req = np.repeat(np.arange(stream.n), stream.k)
    bucket = bucket_ids(stream.n, stream.k, buckets)
    both = np.isfinite(base) & np.isfinite(memory) & (rows if rows is not None else True)
    return {name: summarize(y, s, users, req, bucket, buckets, rows=both)
            for name, s in (("base", base), ("memory", memory))}


def rounded(x: Any, digits: int = 4) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), digits)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    requests = args.requests or (QUICK_REQUESTS if args.quick else None)
    buckets = args.buckets or (QUICK_BUCKETS if args.quick else BUCKETS)
    data = datasets.movielens_100k()
    n = min(requests or len(data), len(data))
    every = args.retrain_every or max(n // (QUICK_RETRAINS if args.quick else RETRAINS), 1)
    c.say(f"MovieLens-100K: replaying {n} of {len(data)} ratings, 20 candidates each, retrain every {every} "
          f"requests (bench/learning.py's stream and schedule), {buckets} time slices")
    stream = featurize(build_stream(data, n, seed=args.seed))
    parent = coldstart.build_onnx(stream.spec)
    y = stream.label.reshape(-1)

    prefix = max(int(args.tune_fraction * n), 1)
    settle_s = args.attribution_window_ms / 1000 if args.settle_s is None else args.settle_s
    served = None
    if args.tune_base == "deltas":
        prefix_trainer = make_trainer("auto", parent, stream.spec, seed=args.seed, say=lambda _m: None,
                                      overrides={"attribution_window_ms": str(args.attribution_window_ms)})
        served = run_inprocess(stream, parent, n + 1, prefix_trainer, say=lambda _m: None,
                               delta_block=args.tune_delta_block, requests=prefix).scores
        if np.isnan(served[:prefix * stream.k]).any():
            raise RuntimeError("the prefix was not scored with deltas")
    tuned = tune(stream, parent, prefix, quick=args.quick, settle=settle_s > 0, say=c.say, served=served)
    env = memory_env("on", tuned.k, tuned.bits, tuned.lam, tuned.tau, tuned.gamma, settle_s, tuned.pair_lam,
                     tuned.pair_prior, tuned.pair_at_rank)
    trainer = make_trainer("auto", parent, stream.spec, seed=args.seed, say=c.say,
                           overrides={"attribution_window_ms": str(args.attribution_window_ms)})

    c.say("replay 1: the stream as it is, memory on; then latency, click-to-effect and size on the same stack")
    loop, answers, measured = replay(stream, parent, every, trainer, env, window_ms=args.attribution_window_ms,
                                     after=lambda info: measure(info, data, args.seed, c.say), say=c.say)
    base, memory, sent = answers.arrays(stream.n, stream.k)
    if args.save_answers:
        np.savez(args.save_answers, base=base, memory=memory, sent_at=sent, requests=stream.n, seed=args.seed,
                 retrain_every=every)
    modes = sorted(set(answers.modes))
    res = scored(stream, base, memory, buckets)
    edges = bucket_edges(stream, buckets)
    c.say(f"memory modes answered: {modes}; versions served: {loop.extra.get('versions_served')}")
    c.say(f"{'':10} {'AUC':>7} {'gAUC':>7}")
    for name in ("base", "memory"):
        c.say(f"{name:10} {fmt(res[name]['auc']):>7} {fmt(res[name]['gauc']):>7}")
    c.say("AUC per time slice (slice ends):  base  memory")
    for j, edge in enumerate(edges):
        c.say(f"{edge:>12}  {fmt(res['base']['curve'][j])}  {fmt(res['memory']['curve'][j])}")

    shift_out: dict[str, Any] = {}
    if not args.no_shift:
        at = min(int(args.shift_at * n) // every * every + every // 2, n - 1)
        shifted, shift = inject_shift(stream, at)
        c.say(f"replay 2: preference shift {shift.describe()}")
        trainer2 = make_trainer("auto", parent, stream.spec, seed=args.seed, say=c.say,
                                overrides={"attribution_window_ms": str(args.attribution_window_ms)})
        _, answers2, _ = replay(shifted, parent, every, trainer2, env, window_ms=args.attribution_window_ms,
                                say=c.say)
        b2, m2, sent2 = answers2.arrays(shifted.n, shifted.k)
        y2 = shifted.label.reshape(-1)
        after = np.repeat(np.arange(shifted.n) >= at, shifted.k)
        seg_after = after & shift.rows(shifted.k)
        users2 = shifted.row_users()
        for label, rows in (("after", after), ("segment_after", seg_after)):
            ok = rows & np.isfinite(b2) & np.isfinite(m2)
            for name, s in (("base", b2), ("memory", m2)):
                shift_out[f"shift_{label}_gauc_{name}"] = rounded(gauc(y2[ok], s[ok], users2[ok]))
                shift_out[f"shift_{label}_auc_{name}"] = rounded(auc(y2[ok], s[ok]))
        for name, s in (("memory", m2), ("base", b2)):
            rec = recovery_s(y2, s, shifted.k, shift, sent2)
            shift_out.update({f"shift_{key}_{name}": value for key, value in rec.items()})
        gain = (shift_out["shift_after_gauc_memory"] or 0) - (shift_out["shift_after_gauc_base"] or 0)
        shift_out["shift_gauc_gain_points"] = round(100 * gain, 3)
        shift_out["shift_at_request"] = at
        c.say("after the shift: " + ", ".join(f"{k.removeprefix('shift_')}={v}" for k, v in shift_out.items()))

    # Bytes at the service's defaults (the memory's own count, as its gauge reports it: the sketch
    # at the default K and L and the pair table); the tuned memory's are what the replica's
    # loopwise_inference_memory_bytes said.
    from loopwise.inference.memory import ModelMemory
    from loopwise.inference.settings import InferenceSettings

    defaults = InferenceSettings()
    size = ModelMemory("", "", "", coldstart.HIDDEN_DIM, defaults.memory_configs()[0]).nbytes
    result = {
        "gauc_base": rounded(res["base"]["gauc"]), "gauc_memory": rounded(res["memory"]["gauc"]),
        "gauc_gain_points": rounded(100 * (res["memory"]["gauc"] - res["base"]["gauc"]), 3),
        "auc_base": rounded(res["base"]["auc"]), "auc_memory": rounded(res["memory"]["auc"]),
        "shift_recovery_s": shift_out.get("shift_recovery_s_memory"),
        # null: the segment's sliding AUC never got back to its pre-shift level within the replay
        "shift_recovery_not_within_s": (shift_out.get("shift_horizon_s_memory")
                                        if shift_out and shift_out.get("shift_recovery_s_memory") is None else None),
        "rank_latency_overhead": measured.get("rank_latency_overhead"),
        "click_to_effect_p50_s": measured.get("click_to_effect_p50_s"),
        "click_to_effect_p99_s": measured.get("click_to_effect_p99_s"),
        "bytes_per_model": int(size), "bytes_per_model_tuned": measured.get("bytes_per_model"),
        "default_k_bits": [defaults.error_memory_k, defaults.error_memory_bits],
        "tuned": {"k": tuned.k, "bits": tuned.bits, "lambda": tuned.lam, "tau": tuned.tau, "gamma": tuned.gamma,
                  "pair_lambda": tuned.pair_lam, "pair_prior": tuned.pair_prior, "pair_at_rank": tuned.pair_at_rank,
                  "prefix_requests": prefix, "prefix_gauc_base": rounded(tuned.gauc_base),
                  "prefix_gauc_memory": rounded(tuned.gauc_memory), "grid_points": len(tuned.grid),
                  "settle_s": settle_s, "base": args.tune_base},
        "curve_base": [rounded(x) for x in res["base"]["curve"]],
        "curve_memory": [rounded(x) for x in res["memory"]["curve"]], "slice_ends": edges,
        "request_auc_base": rounded(res["base"]["request_auc"]),
        "request_auc_memory": rounded(res["memory"]["request_auc"]),
        "memory_modes": modes, "versions_served": loop.extra.get("versions_served"),
        **{k: v for k, v in measured.items() if k not in ("bytes_per_model",)}, **shift_out,
        "requests": stream.n, "rows": int(len(y)), "retrain_every": every, "cpus": os.cpu_count(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    c.emit_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
