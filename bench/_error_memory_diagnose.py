"""Why the error memory does not gain on bench/error_memory.py's stream: an offline check.

Usage: python bench/_error_memory_diagnose.py [--requests 6000] [--trained | --answers FILE.npz]

On the replay stream (`_learning_stream`, the ``--quick`` prefix by
default) the served model's probabilities and 64-d hidden layers are
computed in-process: the cold-start model, or with ``--trained`` the
versions of bench/learning.py's stand-in trainer (`StandinTrainer`, the
cold-start architecture, retrained every ``--every`` requests; the memory
resets with each version, as in serving), or with ``--answers`` the base
scores the stack itself served (model and sparse deltas: a
bench/error_memory.py ``--save-answers`` file; versions by the retraining
schedule; no hidden keys, so only the key-free memories). Then, per version:

- keys: how spread the int8 keys are (cosine percentiles) and how many of
  one array's 2^12 buckets they fill;
- separability: for a (user, item) pair shown again, the cosine of its key
  to its own earlier key and to the nearest earlier key of another pair;
- oracles: the progressive gAUC gain of a memory keyed exactly by the
  pair, the item or the user (one bucket each, same compensation), with the
  click's error written at once or settled with its window's negatives
  (``LAG`` requests later, as `_error_memory_tune`), of the service's
  sketch on the hidden keys, and of the service's exact (user, item) table
  (`memory/pairs.py`) alone, from the errors (``pair_table``) or with the
  pairs shown written at Rank (``pair_table_at_rank``), and beside the
  sketch (``hybrid_*``), at ``--pair-lambda`` and ``--pair-prior``.

Prints one JSON object last. Nothing here tunes anything: it explains.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np
from _error_memory_tune import BLOCK, LAG, row_items
from _error_memory_tune import replay as sketch_replay
from _learning_stream import build_stream, featurize

from loopwise.inference.memory.sketch import Sketch, canonical
from loopwise.modelstore import coldstart
from loopwise.modelstore.contract import HIDDEN_OUTPUT, PROB_OUTPUT, feeds
from loopwise.ranking_metrics import gauc
from loopwise.representation import decode, encode
from loopwise.tools import datasets


def versions(stream: Any, every: int, trained: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prob [rows], hidden as an impression carries it [rows, dim], version per row)."""
    import onnxruntime as ort

    k, n = stream.k, stream.n
    artifact = coldstart.build_onnx(stream.spec)
    trainer = None
    if trained:
        from _learning_loopwise import StandinTrainer

        trainer = StandinTrainer(artifact, stream.spec, threads=1)
    prob = np.empty(n * k)
    hidden = np.empty((n * k, coldstart.HIDDEN_DIM), dtype=np.float32)
    version = np.empty(n * k, dtype=np.int64)
    step = every if trainer is not None else n
    for v, start in enumerate(range(0, n, step)):
        a, b = start * k, min(start + step, n) * k
        session = ort.InferenceSession(artifact, providers=["CPUExecutionProvider"])
        p, h = session.run([PROB_OUTPUT, HIDDEN_OUTPUT], feeds(stream.sparse[a:b].astype(np.int64),
                                                              stream.dense[a:b].astype(np.float32)))
        data, scale = encode(np.asarray(h, dtype=np.float32))
        prob[a:b], hidden[a:b], version[a:b] = p, decode(data, scale, hidden.shape[1]), v
        if trainer is not None and b < n * k:
            artifact, _ = trainer.train_rows(stream, b, a)
    return prob, hidden, version


def oracle(key: np.ndarray, prob: np.ndarray, y: np.ndarray, k: int, settle: bool, lam: float = 1.0) -> np.ndarray:
    """Progressive compensated scores of a memory with one bucket per ``key`` value (gamma 1, prior 1)."""
    ids = np.unique(key, return_inverse=True)[1]
    count, sum_y = np.zeros(ids.max() + 1), np.zeros(ids.max() + 1)
    out, n, done = np.empty(len(prob)), len(prob) // k, 0
    for a in range(0, n, BLOCK):
        b = min(a + BLOCK, n)
        rows = np.arange(a * k, b * k)
        c = ids[rows]
        out[rows] = np.clip(prob[rows] + lam * (sum_y[c] - count[c] * prob[rows]) / (count[c] + 1.0), 0, 1)
        if not settle:
            pos = rows[y[rows] > 0]
            np.add.at(count, ids[pos], 1.0)
            np.add.at(sum_y, ids[pos], 1.0)
        due = max(b - LAG, 0)
        if due > done:
            late = np.arange(done * k, due * k)
            late = late if settle else late[y[late] <= 0]
            np.add.at(count, ids[late], 1.0)
            np.add.at(sum_y, ids[late], y[late])
            done = due
    return out


def separability(keys: np.ndarray, pair: np.ndarray, gap: int = 40, most: int = 300) -> dict[str, float]:
    """Cosine of a repeated pair's key to its own earlier key vs to the nearest other pair's."""
    unit = keys / np.maximum(np.linalg.norm(keys, axis=1, keepdims=True), 1e-9)
    first: dict[int, int] = {}
    own, other = [], []
    for j, p in enumerate(pair.tolist()):
        if p in first and j - first[p] > gap and len(own) < most:
            sims = unit[:j - gap] @ unit[j]
            own.append(sims[first[p]])
            other.append(sims[pair[:j - gap] != p].max())
        first.setdefault(p, j)
    if not own:
        return {}
    own_a, other_a = np.array(own), np.array(other)
    return {"repeats": len(own), "cos_own_p10": round(float(np.percentile(own_a, 10)), 4),
            "cos_own_p50": round(float(np.median(own_a)), 4),
            "cos_nearest_other_p50": round(float(np.median(other_a)), 4),
            "own_closer_than_any_other": round(float((own_a > other_a).mean()), 3)}


def from_answers(path: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(the stack's base probability [rows], its version by the retraining schedule [rows]) of a
    bench/error_memory.py ``--save-answers`` file."""
    saved = np.load(path)
    version = np.repeat(np.arange(int(saved["requests"])) // int(saved["retrain_every"]), k)
    return saved["base"].astype(np.float64), version


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=6_000)
    p.add_argument("--every", type=int, default=600, help="requests per version with --trained")
    p.add_argument("--trained", action="store_true", help="versions of the stand-in trainer")
    p.add_argument("--answers", default="", help="the stack's own base scores (bench/error_memory.py "
                   "--save-answers, same --requests and --seed): the key-free memories only")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--pair-lambda", type=float, default=1.0, help="the pair table's lambda (pair_*, hybrid_*)")
    p.add_argument("--pair-prior", type=float, default=0.0, help="the pair table's prior (pair_*, hybrid_*)")
    args = p.parse_args(argv)
    stream = featurize(build_stream(datasets.movielens_100k(), args.requests, seed=args.seed))
    if args.answers:
        prob, version = from_answers(args.answers, stream.k)
        hidden = None
    else:
        prob, hidden, version = versions(stream, args.every, args.trained)
    k, y, users = stream.k, stream.label.reshape(-1), stream.row_users()
    user = np.unique(users, return_inverse=True)[1]
    item = stream.cand.reshape(-1)
    keys = {"pair": user * (item.max() + 1) + item, "item": item, "user": user}
    hows = (("at_once", False), ("settled", True))
    scored: dict[str, np.ndarray] = {f"{name}_{how}": np.full(len(y), np.nan) for name in (*keys, "sketch", "hybrid")
                                     for how, _ in hows}
    scored["pair_table"] = np.full(len(y), np.nan)
    scored["pair_table_at_rank"] = np.full(len(y), np.nan)
    row_user, row_item = users.astype(np.str_), row_items(stream, slice(0, len(y)))
    pair_args = {"pair_lam": args.pair_lambda, "pair_prior": args.pair_prior}
    spread: list[dict[str, Any]] = []
    for v in np.unique(version):
        rows = np.flatnonzero(version == v)
        pairs = (row_user[rows], row_item[rows])
        codes = canonical(hidden[rows]) if hidden is not None else np.zeros((len(rows), 1), dtype=np.float32)
        for how, settle in hows:
            for name, key in keys.items():
                scored[f"{name}_{how}"][rows] = oracle(key[rows], prob[rows], y[rows], k, settle)
            if hidden is not None:
                sketch = {"k": 32, "bits": 12, "lam": 0.25, "tau": 0.1, "gamma": 0.0, "settle": settle}
                scored[f"sketch_{how}"][rows] = sketch_replay(prob[rows], codes, y[rows], k, **sketch)
                scored[f"hybrid_{how}"][rows] = sketch_replay(prob[rows], codes, y[rows], k, **sketch, pairs=pairs,
                                                              **pair_args)
        for name, at_rank in (("pair_table", False), ("pair_table_at_rank", True)):
            scored[name][rows] = sketch_replay(prob[rows], codes, y[rows], k, k=1, bits=1, lam=0.0, tau=1.0,
                                               pairs=pairs, pair_at_rank=at_rank, **pair_args)
        if hidden is not None:
            spread.append({"version": int(v) + 1, **spread_of(codes), **separability(codes, keys["pair"][rows])})
    ok = np.isfinite(prob)
    base = gauc(y[ok], prob[ok], users[ok])
    gains = {name: round(100 * (gauc(y[ok], s[ok], users[ok]) - base), 2) for name, s in scored.items()
             if np.isfinite(s[ok]).all()}
    print(json.dumps({"requests": stream.n, "trained": args.trained, "answers": args.answers,
                      "gauc_base": round(float(base), 4), "gain_points": gains, "keys": spread}))
    return 0


def spread_of(codes: np.ndarray) -> dict[str, Any]:
    """Cosine percentiles of a sample of keys, and how they fill one array of 2^12 buckets."""
    buckets = np.bincount(Sketch(codes.shape[1], 1, 12).buckets(codes)[:, 0], minlength=1 << 12)
    sample = codes[np.random.default_rng(0).choice(len(codes), min(len(codes), 1500), replace=False)]
    unit = sample / np.maximum(np.linalg.norm(sample, axis=1, keepdims=True), 1e-9)
    cos = (unit @ unit.T)[np.triu_indices(len(unit), 1)]
    return {"cos_p5_p50_p95": np.percentile(cos, [5, 50, 95]).round(3).tolist(),
            "buckets_used_of_4096": int((buckets > 0).sum()),
            "largest_bucket_share": round(float(buckets.max() / len(codes)), 3)}


if __name__ == "__main__":
    sys.exit(main())
