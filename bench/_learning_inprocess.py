"""The Loopwise loop without a stack (bench/learning.py ``--loopwise inprocess`` and the
``auc_inprocess`` baseline of a stack run): labels at once, the same trainer code.

`run_inprocess` scores each block of requests with what serves, then learns from the
block's labels:

- whole versions every ``every`` requests (``trainer.train_rows``: the trainer's own
  `train.run` on the window of labelled rows, published when its gate passes);
- with ``delta_block`` > 0 and a trainer with sparse deltas (`RealTrainer.delta_trainer`),
  also the trainer's own `deltas.DeltaTrainer` between versions: every ``delta_block``
  requests one step on the sparse tables (`DeltaTrainer.learn`) on the block's rows, and
  the requests scored by the base version plus those tables (the torch model the deltas
  are taken from: serving's ONNX plus the same tables, `test_deltas` checks their parity).
  A new version becomes the base, and the rows it has not learned (its holdout, newer
  than its ``train_until_ms``) are learned again on it, as the delta loop's requeue does.
  ``delta_block`` is the stack's delta cadence in requests: its step interval times the
  replay's request rate (``--inprocess-delta-block``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from _learning_loopwise import LoopRun, OnnxScorer
from _learning_stream import Stream


class DeltaScorer:
    """A `DeltaTrainer` on the serving version, scoring and learning blocks of stream rows."""

    def __init__(self, stream: Stream, dt: Any) -> None:
        import torch

        self.torch, self.stream, self.dt = torch, stream, dt

    def score(self, a: int, b: int) -> np.ndarray:
        torch, s = self.torch, self.stream
        assert s.sparse is not None and s.dense is not None and self.dt.model is not None
        with torch.no_grad():
            prob, _ = self.dt.model(torch.from_numpy(s.sparse[a:b].astype(np.int64)),
                                    torch.from_numpy(s.dense[a:b]))
        return prob.numpy().astype(np.float64)

    def learn(self, rows: slice | np.ndarray) -> None:
        """One step on these stream rows, labels at once, weight 1."""
        s = self.stream
        assert s.sparse is not None and s.dense is not None
        label = s.label.reshape(-1)[rows]
        self.dt.learn(s.sparse[rows], s.dense[rows], label, np.ones(len(label), dtype=np.float32))

    def rebase(self, version: str, production: Any, relearn: np.ndarray, block: int) -> None:
        """Build on ``version`` and learn the stream rows ``relearn`` again, ``block`` requests' worth a step."""
        self.dt.rebase(version, production, self.stream.spec)
        if self.dt.model is None:
            raise RuntimeError(f"no deltas on {version}: {self.dt.why_not}")
        step = block * self.stream.k
        for start in range(0, len(relearn), step):
            self.learn(relearn[start:start + step])


def run_inprocess(stream: Stream, parent: bytes, every: int, trainer: Any, say: Callable[[str], None] = print,
                  delta_block: int = 0, requests: int | None = None) -> LoopRun:
    """Score each block of requests with what serves, then learn (see the module docstring);
    ``requests``: stop after the first this many (their scores only; the rest stay NaN)."""
    assert stream.sparse is not None and stream.dense is not None
    k = stream.k
    n = stream.n if requests is None else min(requests, stream.n)
    scores = np.full(stream.n * k, np.nan, dtype=np.float64)
    version = np.ones(stream.n, dtype=np.int64)
    scorer = OnnxScorer(parent)
    deltas = None
    make = getattr(trainer, "delta_trainer", None)
    if delta_block > 0 and make is not None:
        dt = make()
        if dt is not None:
            deltas = DeltaScorer(stream, dt)
            deltas.rebase("v1", trainer.production, np.zeros(0, dtype=np.int64), delta_block)
    block = delta_block if deltas is not None else every
    current, trained_to, steps = 1, 0, 0
    for start in range(0, n, block):
        stop = min(start + block, n, (start // every + 1) * every)
        a, b = start * k, stop * k
        scores[a:b] = deltas.score(a, b) if deltas is not None else scorer.score(stream.sparse[a:b],
                                                                                  stream.dense[a:b])
        version[start:stop] = current
        if deltas is not None:
            deltas.learn(slice(a, b))
            steps += 1
        if stop == n:
            break
        if stop % every:
            continue
        t = time.perf_counter()
        artifact, info = trainer.train_rows(stream, b, trained_to)
        trained_to = b
        info.update(after_request=stop, seconds=round(time.perf_counter() - t, 2))
        if artifact is not None:
            scorer = OnnxScorer(artifact)
            current += 1
            info["version"] = f"v{current}"
            if deltas is not None:  # the rows it has not learned (newer than its newest training example)
                relearn = np.flatnonzero(trainer.row_times(stream, 0, b) > trainer.train_until_ms())
                deltas.rebase(info["version"], trainer.production, relearn, delta_block)
        trainer.stats.history.append(info)
        say(f"  after request {stop}: " + ", ".join(f"{k_}={v}" for k_, v in info.items()))
    mode = f"inprocess, deltas every {delta_block} requests" if deltas is not None else "inprocess"
    return LoopRun(scores=scores, version=version, trainer=trainer.name, stats=trainer.stats, mode=mode,
                   extra={"delta_steps": steps})
