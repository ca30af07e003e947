"""Exact kNN over the most recent errors: the reference the sketch is checked against.

A ring of the last ``capacity`` entries (key, label, served prediction);
a read takes, per query, the ``top`` entries of highest cosine similarity
(one matrix product over the ring) as neighbours of count 1. Memory and read
time grow with ``capacity``: for tests and the benchmark, not for serving.
"""

from __future__ import annotations

import numpy as np

from .compensate import Neighbours


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


class ExactKnn:
    def __init__(self, dim: int, capacity: int = 10_000, top: int = 32) -> None:
        self.dim, self.capacity, self.top = dim, capacity, top
        self.keys = np.zeros((capacity, dim), dtype=np.float32)
        self.labels = np.zeros(capacity, dtype=np.float32)
        self.preds = np.zeros(capacity, dtype=np.float32)
        self.size = 0
        self._next = 0

    def write(self, keys: np.ndarray, labels: np.ndarray, preds: np.ndarray, times_s: np.ndarray | None = None
              ) -> None:
        keys = _unit(np.asarray(keys, dtype=np.float32))[-self.capacity:]
        labels = np.asarray(labels, dtype=np.float32)[-self.capacity:]
        preds = np.asarray(preds, dtype=np.float32)[-self.capacity:]
        rows = (self._next + np.arange(len(keys))) % self.capacity
        self.keys[rows], self.labels[rows], self.preds[rows] = keys, labels, preds
        self._next = (self._next + len(keys)) % self.capacity
        self.size = min(self.capacity, self.size + len(keys))

    def read(self, keys: np.ndarray) -> Neighbours:
        n, m = len(keys), min(self.top, self.size)
        if m == 0:
            zero = np.zeros((n, 1), dtype=np.float32)
            return Neighbours(zero, zero, zero, zero)
        sim = _unit(np.asarray(keys, dtype=np.float32)) @ self.keys[:self.size].T
        nearest = np.argpartition(-sim, m - 1, axis=1)[:, :m]
        return Neighbours(sim=np.take_along_axis(sim, nearest, axis=1), count=np.ones((n, m), dtype=np.float32),
                          sum_y=self.labels[nearest], sum_pred=self.preds[nearest])
