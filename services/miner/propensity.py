"""Per-position examination propensities estimated from the click stream (pure numpy).

Position-based click model (PBM): a candidate is clicked when its position is
examined and it is relevant, independently,
``P(click | position k, item i) = theta_k * gamma_i``. Rel-MF and clipped IPS
need ``theta_k`` relative to the top position (docs/methods.md §3); both
estimators return that curve, normalised so position 1 is 1.0. Positions are
1-based everywhere, as in ``Click.position``.

- `PositionBiasEM` fits the PBM by expectation-maximisation on any traffic
  (biased logging included) whose items appear at more than one position:
  the item terms absorb "better items are shown higher".
- `RandomizedEstimator` is the reference where the logging policy
  randomised what went where (OBD's ``random`` policy, randomised swaps):
  there relevance is independent of position, so ``theta_k / theta_1`` is
  CTR at k over CTR at 1. On biased traffic the same arithmetic is the
  *naive* estimator, biased towards a steeper curve.

Both keep only decayed sufficient statistics, so memory does not grow with
the stream.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

EPS = 1e-9
_INITIAL_COLUMNS = 64


def _positions(positions: np.ndarray | Sequence[int], n_positions: int) -> np.ndarray:
    """0-based slots of 1-based positions; positions past the last share the last slot."""
    pos = np.asarray(positions, dtype=np.int64).reshape(-1)
    if pos.size and pos.min() < 1:
        raise ValueError("positions are 1-based: got a position below 1")
    return np.minimum(pos, n_positions) - 1


def _clicks(clicks: np.ndarray | Sequence[float], n: int) -> np.ndarray:
    out = np.asarray(clicks, dtype=np.float64).reshape(-1)
    if out.size != n:
        raise ValueError(f"{out.size} clicks for {n} positions")
    if out.size and (out.min() < 0 or out.max() > 1):
        raise ValueError("clicks must be in [0, 1]")
    return out


def _check_common(n_positions: int, decay: float) -> None:
    if n_positions < 1:
        raise ValueError("n_positions must be at least 1")
    if not 0.0 < decay <= 1.0:
        raise ValueError("decay must be in (0, 1]")


class PositionBiasEM:
    """Streaming EM for the position-based click model.

    Sufficient statistics are per (position, item) cell: decayed impressions
    ``views[k, i]`` and clicks ``clicks[k, i]``; the PBM posterior of a
    non-click depends only on its cell, so EM on these counts is exact EM on
    every impression seen (weighted by the forgetting factor). Each `update`
    multiplies the counts by ``decay`` (1.0: never forget; 0.999 per batch of
    1,000 impressions is a half-life of ~700k impressions), adds the batch and
    runs ``iterations`` EM steps warm-started from the current estimate, so
    iterations accumulate across batches; `fit` runs more on demand.

    With low click rates (OBD: ~0.4 %) EM moves ``theta`` by roughly the
    click rate per step, so thousands of steps (cheap: each costs
    O(positions x tracked items)) are needed to converge from scratch;
    streaming amortises them over the batches.

    Memory is bounded: at most ``max_items`` items get a column of their own;
    column 0 pools the rest. New items take free columns (in sorted order);
    when a new item meets a full table, the less-viewed half of the tracked
    items is merged into the pool first (as `debias.ExposureCounter`
    forgets), so newly popular items get columns; new items that still find
    none are pooled. Pooled items share one
    ``gamma``, which biases ``theta`` only where pooled items' positions
    correlate with their relevance; keep the cap above the catalogue's head.
    Positions beyond ``n_positions`` share the last one's statistics.

    Until a position has data its propensity stays at its initial value.

    >>> em = PositionBiasEM(n_positions=2, iterations=500)
    >>> # item "a": clicked 4/10 at position 1, 2/10 at 2; item "b": 2/10 and 1/10
    >>> pos = [1] * 10 + [2] * 10 + [1] * 10 + [2] * 10
    >>> items = ["a"] * 20 + ["b"] * 20
    >>> clicks = [1] * 4 + [0] * 6 + [1] * 2 + [0] * 8 + [1] * 2 + [0] * 8 + [1] + [0] * 9
    >>> em.update(pos, items, clicks)
    >>> em.propensities().round(2).tolist()
    [1.0, 0.5]
    """

    def __init__(self, n_positions: int = 10, *, max_items: int = 10_000, iterations: int = 5,
                 decay: float = 1.0, initial_theta: float = 0.5, initial_gamma: float = 0.1) -> None:
        _check_common(n_positions, decay)
        if max_items < 1 or iterations < 0:
            raise ValueError("max_items must be at least 1 and iterations at least 0")
        self.n_positions = n_positions
        self.max_items = max_items
        self.iterations = iterations
        self.decay = decay
        self.initial_gamma = initial_gamma
        self.theta = np.full(n_positions, initial_theta)
        columns = min(_INITIAL_COLUMNS, max_items + 1)
        self.gamma = np.full(columns, initial_gamma)
        self.views = np.zeros((n_positions, columns))
        self.clicks = np.zeros((n_positions, columns))
        self.column: dict[Hashable, int] = {}
        self._free = list(range(columns - 1, 0, -1))  # column 0 is the pool
        self.steps = 0

    # -- the stream ------------------------------------------------------------------------
    def update(self, positions: np.ndarray | Sequence[int], item_ids: np.ndarray | Sequence[Hashable],
               clicks: np.ndarray | Sequence[float]) -> None:
        """Add a batch of impressions (aligned arrays), then run ``iterations`` EM steps."""
        slots = _positions(positions, self.n_positions)
        click = _clicks(clicks, slots.size)
        if len(item_ids) != slots.size:
            raise ValueError(f"{len(item_ids)} item ids for {slots.size} positions")
        if slots.size == 0:
            return
        columns = self._columns(item_ids)
        if self.decay < 1.0:
            self.views *= self.decay
            self.clicks *= self.decay
        np.add.at(self.views, (slots, columns), 1.0)
        np.add.at(self.clicks, (slots, columns), click)
        self.fit(self.iterations)

    def fit(self, iterations: int = 1000, tol: float = 0.0) -> int:
        """Run up to ``iterations`` EM steps on the statistics held; stop early once
        no propensity moves more than ``tol``. Returns the steps run."""
        for step in range(iterations):
            before = self.propensities()
            self._em_step()
            if tol > 0 and np.max(np.abs(self.propensities() - before)) <= tol:
                return step + 1
        return iterations

    def propensities(self) -> np.ndarray:
        """Examination propensity of positions 1..n_positions, position 1 = 1.0."""
        top = self.theta[0]
        return self.theta / top if top > 0 else np.ones(self.n_positions)

    # -- diagnostics -----------------------------------------------------------------------
    def log_likelihood(self) -> float:
        """Log-likelihood of the (decayed) statistics under the current parameters."""
        p = np.clip(self.theta[:, None] * self.gamma[None, :], EPS, 1 - EPS)
        return float(np.sum(self.clicks * np.log(p) + (self.views - self.clicks) * np.log1p(-p)))

    @property
    def items_tracked(self) -> int:
        return len(self.column)

    @property
    def columns_allocated(self) -> int:
        """Columns held (pool included): at most ``max_items + 1``."""
        return self.views.shape[1]

    def relevance(self, item_id: Hashable) -> float:
        """``gamma`` of an item (the pool's for an item without a column)."""
        return float(self.gamma[self.column.get(item_id, 0)])

    # -- EM --------------------------------------------------------------------------------
    def _em_step(self) -> None:
        views, clicks = self.views, self.clicks
        theta, gamma = self.theta[:, None], self.gamma[None, :]
        missed = views - clicks
        unclicked = np.maximum(1.0 - theta * gamma, EPS)
        examined = clicks + missed * (theta * (1.0 - gamma) / unclicked)
        relevant = clicks + missed * ((1.0 - theta) * gamma / unclicked)
        per_position, per_item = views.sum(axis=1), views.sum(axis=0)
        self.theta = np.where(per_position > 0, examined.sum(axis=1) / np.maximum(per_position, EPS),
                              self.theta).clip(EPS, 1 - EPS)
        self.gamma = np.where(per_item > 0, relevant.sum(axis=0) / np.maximum(per_item, EPS),
                              self.gamma).clip(EPS, 1 - EPS)
        self.steps += 1

    # -- bounded item table ----------------------------------------------------------------
    def _columns(self, item_ids: np.ndarray | Sequence[Hashable]) -> np.ndarray:
        unique, inverse = np.unique(np.asarray(item_ids), return_inverse=True)
        keys = unique.tolist()
        new = [k for k in keys if k not in self.column]
        if new:
            self._admit(new)
        lookup = np.asarray([self.column.get(k, 0) for k in keys], dtype=np.int64)
        return lookup[inverse.reshape(-1)]

    def _admit(self, new: list[Hashable]) -> None:
        """Give new items free columns (growing up to the cap); a full table first
        merges its less-viewed half into the pool. Items that find no column pool."""
        if len(self._free) < len(new):
            self._grow(len(new))
        if not self._free and self.column:
            self._evict(max(1, len(self.column) // 2))
        for key in new:
            if not self._free:
                break
            col = self._free.pop()
            self.column[key] = col
            self.gamma[col] = self.initial_gamma

    def _grow(self, wanted: int) -> None:
        have = self.views.shape[1]
        size = min(self.max_items + 1, max(2 * have, len(self.column) + wanted + 1))
        if size <= have:
            return
        extra = size - have
        self.views = np.hstack([self.views, np.zeros((self.n_positions, extra))])
        self.clicks = np.hstack([self.clicks, np.zeros((self.n_positions, extra))])
        self.gamma = np.concatenate([self.gamma, np.full(extra, self.initial_gamma)])
        self._free.extend(range(size - 1, have - 1, -1))

    def _evict(self, count: int) -> None:
        """Merge the ``count`` least-viewed tracked items into the pool (column 0)."""
        keys = list(self.column)
        cols = np.asarray([self.column[k] for k in keys], dtype=np.int64)
        count = min(count, len(keys))
        order = np.argsort(self.views[:, cols].sum(axis=0), kind="stable")[:count]
        gone = cols[order]
        self.views[:, 0] += self.views[:, gone].sum(axis=1)
        self.clicks[:, 0] += self.clicks[:, gone].sum(axis=1)
        self.views[:, gone] = 0.0
        self.clicks[:, gone] = 0.0
        for i in order.tolist():
            del self.column[keys[i]]
        self._free.extend(gone.tolist())


class RandomizedEstimator:
    """Examination propensities from randomised traffic: CTR at k / CTR at 1.

    Valid only where the logging policy randomised which item went to which
    position (then relevance is independent of position and
    ``CTR_k = theta_k * mean gamma``). Each position's CTR is smoothed
    towards the pooled CTR with ``prior_views`` pseudo-impressions, so a
    position with few impressions reads ~1.0 rather than 0 or infinity.
    ``decay`` multiplies the counts before each `update` (1.0: never
    forget). Fed non-randomised traffic it is the naive estimator.

    >>> est = RandomizedEstimator(n_positions=3, prior_views=0.0)
    >>> est.update([1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3], [1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0])
    >>> est.propensities().tolist()
    [1.0, 0.5, 0.0]
    >>> RandomizedEstimator(n_positions=2).propensities().tolist()  # no data yet
    [1.0, 1.0]
    """

    def __init__(self, n_positions: int = 10, *, prior_views: float = 1.0, decay: float = 1.0) -> None:
        _check_common(n_positions, decay)
        if prior_views < 0:
            raise ValueError("prior_views must be non-negative")
        self.n_positions = n_positions
        self.prior_views = prior_views
        self.decay = decay
        self.views = np.zeros(n_positions)
        self.clicks = np.zeros(n_positions)

    def update(self, positions: np.ndarray | Sequence[int], clicks: np.ndarray | Sequence[float]) -> None:
        """Add a batch of impressions at 1-based ``positions`` with their ``clicks``."""
        slots = _positions(positions, self.n_positions)
        click = _clicks(clicks, slots.size)
        if self.decay < 1.0:
            self.views *= self.decay
            self.clicks *= self.decay
        self.views += np.bincount(slots, minlength=self.n_positions)[: self.n_positions]
        self.clicks += np.bincount(slots, weights=click, minlength=self.n_positions)[: self.n_positions]

    def ctr(self) -> np.ndarray:
        """Smoothed click-through rate per position."""
        total = self.views.sum()
        pooled = self.clicks.sum() / total if total > 0 else 0.0
        return (self.clicks + self.prior_views * pooled) / np.maximum(self.views + self.prior_views, EPS)

    def propensities(self) -> np.ndarray:
        """``CTR_k / CTR_1``, position 1 = 1.0 (all ones before any click at position 1)."""
        ctr = self.ctr()
        return ctr / ctr[0] if ctr[0] > 0 else np.ones(self.n_positions)
