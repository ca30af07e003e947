"""Debiasing: propensities and clipped inverse-propensity weights (Rel-MF).

A click is exposure x relevance, so a positive seen where exposure was
unlikely stands for many unseen ones: its weight is ``1 / max(theta, M)``
(M = 0 is unbiased; a larger M trades bias for variance, Saito et al. 2020).
``theta`` = per-position examination propensity x item exposure propensity,
or x the logged propensity when the client sent one (bring-your-own serving).

>>> clipped_weight(0.05, clip=0.1)
10.0
>>> counter = ExposureCounter(eta=0.5)
>>> counter.add(["a", "a", "a", "a", "b"])
>>> round(counter.propensity("b"), 3), counter.propensity("a")
(0.5, 1.0)
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def clipped_weight(propensity: float, clip: float) -> float:
    """``1 / max(propensity, clip)`` (propensity 0 with clip 0 gives weight 1)."""
    p = max(propensity, clip)
    return 1.0 / p if p > 0 else 1.0


class ExposureCounter:
    """Item exposure propensity ``(n_i / max_j n_j) ** eta`` from positive counts.

    Bounded: beyond ``max_items`` the least-counted half is forgotten.
    An item never seen positive counts as 1 (its propensity is small, not zero).
    """

    def __init__(self, eta: float = 0.5, max_items: int = 1_000_000) -> None:
        self.eta = eta
        self.max_items = max_items
        self.counts: dict[str, int] = {}
        self.max_count = 0

    def add(self, items: Iterable[str]) -> None:
        counts = self.counts
        for item in items:
            n = counts.get(item, 0) + 1
            counts[item] = n
            if n > self.max_count:
                self.max_count = n
        if len(counts) > self.max_items:
            keep = sorted(counts.items(), key=lambda kv: kv[1], reverse=True)[: self.max_items // 2]
            self.counts = dict(keep)

    def propensity(self, item: str) -> float:
        if self.max_count == 0:
            return 1.0
        return (max(self.counts.get(item, 0), 1) / self.max_count) ** self.eta


class FixedPositions:
    """Examination propensity per 1-based position from a fixed curve
    (the fallback before an estimator has data): ``1 / position ** power``."""

    def __init__(self, power: float = 0.5, positions: int = 100) -> None:
        self.curve = 1.0 / np.arange(1, positions + 1, dtype=np.float64) ** power

    def propensities(self) -> np.ndarray:
        return self.curve

    def update(self, positions: np.ndarray, item_ids: list[str], clicks: np.ndarray) -> None:
        """A fixed curve learns nothing."""


def position_propensity(curve: np.ndarray, position: int) -> float:
    """Propensity of a 1-based position relative to the top, at most 1 (an estimate above
    the top's is noise: positions without data yet); beyond the curve, its last value."""
    if position < 1:
        return 1.0
    return min(float(curve[min(position, len(curve)) - 1]), 1.0)
