"""The locality-sensitive error sketch (RACE; docs/methods.md §1, item 7).

K arrays of 2^L buckets; each bucket keeps (count, sum of labels, sum of
served predictions) and the time of its last write. A key (the model's
hidden representation) falls in one bucket per array: the L signs of its
projections on L fixed random hyperplanes (sign random projection), so keys
at a small angle share buckets. Memory is constant (``nbytes``), a write and
a read touch K buckets per key, and both are vectorised over a whole batch:
two small matrix products, one gather (read) or ``np.add.at`` (write), no
Python loop per key.

The K arrays draw their L bits from one shared pool of ``projections``
hyperplanes (by default ``min(K * L, max(2 * dim, 128))``; each array its own L of
them): the key is projected once on the pool, and a second product turns
the pool's signs into the K bucket codes. With K * L = 640 that is 128
projections instead of 640, the most of a read's cost (the arrays are then
not independent, only differently drawn).

Keys are hashed as they travel: the int8 codes of `loopwise.representation`
(`canonical`), so a read at `Rank` (float32 from the model) and a write
from a `PredictionError` (decoded from the impression) land in the same
buckets. The hyperplanes come from ``seed``: every replica builds the
same sketch.

Decay (``half_life_s`` > 0): a bucket's sums are scaled by
``0.5 ** (dt / half_life_s)`` since its last write, in the stream's time
(the newest error written so far), so replays and live traffic decay alike.
"""

from __future__ import annotations

import numpy as np

from .compensate import Neighbours

POOL = 128  # the least shared pool of projections (with fewer than K * L needed)


def canonical(keys: np.ndarray) -> np.ndarray:
    """Keys as an impression carries them: the int8 codes of `loopwise.representation`
    (as float32; the per-row scale, positive, changes no projection's sign). A key
    decoded from an impression gives back the same codes."""
    keys = np.asarray(keys, dtype=np.float32)
    top = np.abs(keys).max(axis=1, keepdims=True)
    return np.rint(keys * np.divide(127.0, top, out=np.zeros_like(top), where=top > 0))


class Sketch:
    def __init__(self, dim: int, k: int = 32, bits: int = 12, *, seed: int = 0, half_life_s: float = 0.0,
                 projections: int = 0) -> None:
        pool = projections or min(k * bits, max(2 * dim, POOL))
        if not (1 <= bits <= 24 and k >= 1 and dim >= 1 and bits <= pool):
            raise ValueError(f"sketch needs dim >= 1, k >= 1, 1 <= L <= 24, L <= projections "
                             f"(got {dim}, {k}, {bits}, {pool})")
        self.dim, self.k, self.bits = dim, k, bits
        self.half_life_s = half_life_s
        rng = np.random.default_rng(seed)
        self.planes = rng.standard_normal((dim, pool)).astype(np.float32)
        # bit j of array a is the sign of projection bit_index[a, j] (distinct within an array)
        self.bit_index = np.stack([rng.choice(pool, bits, replace=False) for _ in range(k)])
        # [pool, K]: 2^j where projection p is bit j of array a; float32 holds codes below 2^24 exactly
        self._weights = np.zeros((pool, k), dtype=np.float32)
        for a in range(k):
            self._weights[self.bit_index[a], a] = 2.0 ** np.arange(bits)
        self._offsets = (np.arange(k, dtype=np.int64) << bits).astype(np.float32)
        size = k << bits
        # one row per bucket: (count, sum of labels, sum of served predictions), one gather per read
        self.table = np.zeros((size, 3), dtype=np.float32)
        self.count, self.sum_y, self.sum_pred = self.table[:, 0], self.table[:, 1], self.table[:, 2]
        # last write per bucket, kept only with decay
        self.stamp = np.zeros(size if half_life_s > 0 else 0, dtype=np.float64)
        self.clock = 0.0  # the newest write's time, seconds
        self.writes = 0

    @property
    def nbytes(self) -> int:
        return self.table.nbytes + self.stamp.nbytes + self.planes.nbytes + self._weights.nbytes

    def fill(self) -> float:
        """Fraction of buckets holding anything."""
        return float(np.count_nonzero(self.count)) / self.count.size

    def signs(self, keys: np.ndarray) -> np.ndarray:
        """[n, K, L] the sign bits of ``keys`` per array (what `buckets` encodes)."""
        return ((np.asarray(keys, dtype=np.float32) @ self.planes) > 0)[:, self.bit_index]

    def buckets(self, keys: np.ndarray) -> np.ndarray:
        """[n, K] flat bucket indices of ``keys`` [n, dim] (hashed as given: see `canonical`)."""
        positive = ((np.asarray(keys, dtype=np.float32) @ self.planes) > 0).astype(np.float32)
        return (positive @ self._weights + self._offsets).astype(np.int64)

    def _decay(self, idx: np.ndarray, now: float) -> np.ndarray:
        """Factor per bucket in ``idx`` from its last write to ``now`` (with decay only)."""
        dt = np.maximum(now - self.stamp[idx], 0.0)
        return (0.5 ** (dt / self.half_life_s)).astype(np.float32)

    def write(self, keys: np.ndarray, labels: np.ndarray, preds: np.ndarray,
              times_s: np.ndarray | None = None) -> None:
        """Add a batch of errors: keys [n, dim], labels and served predictions [n], times (s) [n]."""
        keys = np.asarray(keys, dtype=np.float32)
        n = len(keys)
        if n == 0:
            return
        idx = self.buckets(keys)
        y = np.repeat(np.asarray(labels, dtype=np.float32), self.k)
        p = np.repeat(np.asarray(preds, dtype=np.float32), self.k)
        flat = idx.reshape(-1)
        if self.half_life_s > 0:
            t = np.full(n, self.clock) if times_s is None else np.asarray(times_s, dtype=np.float64)
            now = max(self.clock, float(t.max()))
            touched = np.unique(flat)
            factor = self._decay(touched, now)
            self.table[touched] *= factor[:, None]
            self.stamp[touched] = now
            self.clock = now
            w = np.repeat((0.5 ** ((now - t) / self.half_life_s)).astype(np.float32), self.k)
        else:
            if times_s is not None:
                self.clock = max(self.clock, float(np.max(times_s)))
            w = np.ones(len(flat), dtype=np.float32)
        np.add.at(self.table, flat, np.stack([w, w * y, w * p], axis=1))
        self.writes += n

    def read(self, keys: np.ndarray) -> Neighbours:
        """One pseudo-neighbour per array: similarity = the bucket's count over the
        fullest of the key's K buckets (in [0, 1]), and the bucket's sums."""
        idx = self.buckets(keys)
        rows = np.take(self.table, idx, axis=0)  # [n, K, 3]: one gather (take: faster than [idx])
        if self.half_life_s > 0:
            rows *= self._decay(idx, self.clock)[:, :, None]
        count, sum_y, sum_pred = rows[:, :, 0], rows[:, :, 1], rows[:, :, 2]
        top = count.max(axis=1, keepdims=True)
        sim = count / np.maximum(top, np.float32(1e-30))
        return Neighbours(sim=sim, count=count, sum_y=sum_y, sum_pred=sum_pred)
