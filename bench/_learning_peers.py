"""Online-learning peers on the replay stream: Vowpal Wabbit and River, score-then-learn.

Both see the same rows as Loopwise (`_learning_stream.vw_lines` / `river_dicts`:
the hashed ids the serving path computes, plus the dense values), request by
request: the 20 candidates of a request are scored first, then learned.

Tuning is as fair as Loopwise gets: each peer's hyperparameters are chosen on
the first ``tune_fraction`` of the stream (by progressive AUC there), then the
chosen configuration is run from scratch over the whole stream.
VW grid: learning rate x (no interactions | user x item quadratic ``-q ui``);
River grid: the SGD learning rate of `linear_model.LogisticRegression`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from _learning_stream import Stream, river_dicts, vw_lines

from loopwise.ranking_metrics import auc

VW_BASE = "--loss_function logistic --link logistic -b 20 --quiet"
VW_GRID: tuple[tuple[float, str], ...] = tuple((lr, q) for q in ("", "-q ui") for lr in (1.0, 3.0, 10.0, 30.0, 100.0))
RIVER_GRID = (0.01, 0.03, 0.1, 0.3, 1.0)
CHUNK_REQUESTS = 2000  # requests converted to text/dicts at a time


@dataclass
class PeerRun:
    name: str
    scores: np.ndarray  # (n * k,) progressive scores
    config: str
    seconds: float  # score + learn (conversion excluded)
    rows: int
    grid: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def _progressive(stream: Stream, requests: int, convert: Callable[[Stream, slice], list[Any]],
                 step: Callable[[list[Any], np.ndarray], np.ndarray]) -> tuple[np.ndarray, float]:
    """Scores of the first ``requests`` requests; ``step(xs, ys)`` scores then learns one request."""
    k = stream.k
    y = stream.label.reshape(-1)
    out = np.empty(requests * k, dtype=np.float64)
    busy = 0.0
    for start in range(0, requests, CHUNK_REQUESTS):
        stop = min(start + CHUNK_REQUESTS, requests)
        xs = convert(stream, slice(start * k, stop * k))
        t = time.perf_counter()
        for i in range(stop - start):
            a, b = i * k, (i + 1) * k
            out[start * k + a:start * k + b] = step(xs[a:b], y[start * k + a:start * k + b])
        busy += time.perf_counter() - t
    return out, busy


# -- Vowpal Wabbit ----------------------------------------------------------------------------


def vw_args(lr: float, interactions: str) -> str:
    return f"{VW_BASE} -l {lr:g} {interactions}".strip()


def run_vw(stream: Stream, requests: int, lr: float, interactions: str) -> tuple[np.ndarray, float]:
    import vowpalwabbit

    ws = vowpalwabbit.Workspace(vw_args(lr, interactions))

    def step(lines: list[str], ys: np.ndarray) -> np.ndarray:
        examples = [ws.parse(line) for line in lines]
        scores = np.fromiter((ws.predict(ex) for ex in examples), dtype=np.float64, count=len(examples))
        for ex in examples:
            ws.learn(ex)
            ws.finish_example(ex)
        return scores

    try:
        return _progressive(stream, requests, vw_lines, step)
    finally:
        ws.finish()


# -- River ------------------------------------------------------------------------------------


def run_river(stream: Stream, requests: int, lr: float) -> tuple[np.ndarray, float]:
    from river import linear_model, optim

    model = linear_model.LogisticRegression(optimizer=optim.SGD(lr))

    def step(xs: list[dict[str, float]], ys: np.ndarray) -> np.ndarray:
        scores = np.fromiter((model.predict_proba_one(x).get(True, 0.0) for x in xs), dtype=np.float64,
                             count=len(xs))
        for x, label in zip(xs, ys.tolist(), strict=True):
            model.learn_one(x, label > 0)
        return scores

    return _progressive(stream, requests, river_dicts, step)


# -- tuning -----------------------------------------------------------------------------------


def tune_and_run(name: str, stream: Stream, tune_requests: int, grid: Sequence[Any],
                 run: Callable[..., tuple[np.ndarray, float]], describe: Callable[[Any], str],
                 say: Callable[[str], None] = print) -> PeerRun:
    """Pick the grid point with the best progressive AUC on the first ``tune_requests``
    requests, then run it over the whole stream."""
    y = stream.label.reshape(-1)
    results = []
    for point in grid:
        args = point if isinstance(point, tuple) else (point,)
        scores, _ = run(stream, tune_requests, *args)
        value = auc(y[:len(scores)], scores)
        results.append({"config": describe(point), "auc": value})
        say(f"  {name} tune {describe(point):38} AUC on the first {tune_requests} requests {value:.4f}")
    best = max(range(len(grid)), key=lambda j: -1.0 if np.isnan(results[j]["auc"]) else results[j]["auc"])
    point = grid[best]
    args = point if isinstance(point, tuple) else (point,)
    scores, seconds = run(stream, stream.n, *args)
    return PeerRun(name=name, scores=scores, config=describe(point), seconds=seconds, rows=len(scores),
                   grid=results)


def vw_peer(stream: Stream, tune_requests: int, say: Callable[[str], None] = print) -> PeerRun:
    return tune_and_run("vw", stream, tune_requests, VW_GRID, run_vw,
                        lambda p: vw_args(p[0], p[1]).replace(VW_BASE, "").strip(), say)


def river_peer(stream: Stream, tune_requests: int, say: Callable[[str], None] = print) -> PeerRun:
    return tune_and_run("river", stream, tune_requests, RIVER_GRID, run_river, lambda lr: f"SGD lr {lr:g}", say)
