"""Clicks not yet settled: held out of the sketch until their window's negatives can be there.

A click's error reaches the memory at once, its request's negatives only
when the miner's attribution window closes. Written into the sketch at
once, a click makes its buckets look better than they are for a whole
window: every key near a recent click is raised (offline, on
bench/error_memory.py's stream, that bias alone cost several gAUC points).
With ``settle_s`` > 0 (`MemoryConfig`; set it to the miner's window) a
positive error waits here until the stream's clock (the newest error time
the memory has seen: negatives carry their window's close) has passed its
time by ``settle_s``, and then goes into the sketch with its window's
negatives around it.

Meanwhile it still acts at once, but only on its own key: a key equal to
a waiting click's (the same int8 codes: the same candidate for the same
request features) gets the waiting errors' correction on top of the
sketch's (`error`: the compensation's formula over their sums, as one
neighbour of full weight). A click is visible in `Rank` for the candidate
clicked within the consumer's lag, and moves nothing else until it
settles.
"""

from __future__ import annotations

import numpy as np

from .compensate import Params


class Fresh:
    def __init__(self, dim: int, seed: int = 0) -> None:
        # an exact key's fingerprint: its int8 codes (shifted to 1..255) dotted with odd random
        # int64 multipliers, wrapping; equal codes give equal fingerprints
        self._mult = np.random.default_rng(seed + 1).integers(1, 2**62, size=dim, dtype=np.int64) | 1
        self.keys = np.zeros((0, dim), dtype=np.float32)
        self.labels = np.zeros(0, dtype=np.float32)
        self.preds = np.zeros(0, dtype=np.float32)
        self.times = np.zeros(0, dtype=np.float64)
        self._sorted = np.zeros(0, dtype=np.int64)  # fingerprints, sorted
        self._cum = np.zeros((1, 3), dtype=np.float64)  # cumulative (count, sum_y, sum_pred) in that order

    @property
    def size(self) -> int:
        return len(self.labels)

    def fingerprint(self, keys: np.ndarray) -> np.ndarray:
        """[n] int64 fingerprints of canonical keys [n, dim]."""
        return (np.asarray(keys).astype(np.int64) + 128) @ self._mult

    def add(self, keys: np.ndarray, labels: np.ndarray, preds: np.ndarray, times_s: np.ndarray) -> None:
        self.keys = np.concatenate([self.keys, keys])
        self.labels = np.concatenate([self.labels, labels])
        self.preds = np.concatenate([self.preds, preds])
        self.times = np.concatenate([self.times, times_s])
        self._index()

    def settle(self, until_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Remove and return (keys, labels, preds, times) of the errors at or before ``until_s``."""
        due = self.times <= until_s
        out = self.keys[due], self.labels[due], self.preds[due], self.times[due]
        if due.any():
            keep = ~due
            self.keys, self.labels, self.preds, self.times = (self.keys[keep], self.labels[keep],
                                                             self.preds[keep], self.times[keep])
            self._index()
        return out

    def _index(self) -> None:
        prints = self.fingerprint(self.keys)
        order = np.argsort(prints, kind="stable")
        self._sorted = prints[order]
        rows = np.stack([np.ones(len(order)), self.labels[order], self.preds[order]], axis=1)
        self._cum = np.vstack([np.zeros((1, 3)), np.cumsum(rows, axis=0)])

    def error(self, keys: np.ndarray, p_base: np.ndarray, params: Params) -> np.ndarray | None:
        """Per key, the error of the clicks waiting on exactly that key (the compensation's
        ``gamma`` form over their sums; 0 where none waits), or None when none waits on any."""
        if not self.size:
            return None
        prints = self.fingerprint(keys)
        lo = np.searchsorted(self._sorted, prints, side="left")
        hi = np.searchsorted(self._sorted, prints, side="right")
        if not (hi > lo).any():
            return None
        count, sum_y, sum_pred = (self._cum[hi] - self._cum[lo]).T
        p = np.asarray(p_base, dtype=np.float64).reshape(-1)
        per = params.gamma * (sum_y - count * p) + (1.0 - params.gamma) * (sum_y - sum_pred)
        return (per / np.maximum(count + params.prior, 1e-12)).astype(np.float32)
