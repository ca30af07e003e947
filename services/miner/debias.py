"""Debiasing: propensities and clipped inverse-propensity weights (Rel-MF).

A click is exposure x relevance, so a positive seen where exposure was
unlikely stands for many unseen ones: its weight is ``1 / max(theta, M)``
(M = 0 is unbiased; a larger M trades bias for variance, Saito et al. 2020).
``theta`` = per-position examination propensity x item exposure propensity,
or x the logged propensity when the client sent one (bring-your-own serving).

Item exposure, per tenant (the same candidate id in two tenants is two items):

- `ImpressionExposure` (the default, ``LOOPWISE_EXPOSURE_MODEL=impressions``): exposure
  is observed for served items, so ``theta_i`` = the share of the tenant's requests whose
  impression showed ``i``;
- `ExposureCounter` (``popularity``): Rel-MF's popularity proxy, ``(n_i / max_j n_j) ** eta``
  from positive counts. Its weighted click rate of an item is a monotone function of the
  item's click count, so it cannot reorder items by itself (bench/debiasing.py).

Both keep their counts in a mapping (the miner's changelog-backed table ``exposure``,
`StoredCounts`), so a restarted or rebalanced worker starts from them.

>>> clipped_weight(0.05, clip=0.1)
10.0
>>> counter = ExposureCounter(eta=0.5)
>>> for item in ["a", "a", "a", "a", "b"]:
...     counter.clicked("t1", item)
>>> round(counter.propensity("t1", "b"), 3), counter.propensity("t1", "a"), counter.propensity("t2", "a")
(0.5, 1.0, 1.0)
>>> seen = ImpressionExposure({})
>>> seen.shown("t1", ["a", "b"]); seen.shown("t1", ["a", "c"])
>>> seen.propensity("t1", "a"), seen.propensity("t1", "b"), seen.propensity("t2", "a")
(1.0, 0.6, 1.0)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, MutableMapping
from typing import Protocol

import numpy as np


def clipped_weight(propensity: float, clip: float) -> float:
    """``1 / max(propensity, clip)`` (propensity 0 with clip 0 gives weight 1)."""
    p = max(propensity, clip)
    return 1.0 / p if p > 0 else 1.0


class ExposureModel(Protocol):
    """What attribution asks of an item exposure estimator."""

    def shown(self, tenant: str, items: Iterable[str]) -> None: ...

    def clicked(self, tenant: str, item: str) -> None: ...

    def propensity(self, tenant: str, item: str) -> float: ...


class StoredCounts:
    """Per-tenant item counts kept in memory and mirrored into ``store`` (bytes keys
    ``tenant|<tag>|item`` -> count, ASCII numbers) by `flush`; `rebuild` reloads them
    from it after a restart or a rebalance. With several workers each counts the records
    of its own partitions (a request is in one partition, so each worker's shares estimate
    the same rates) and a key holds the last flushed value of whichever worker wrote it.
    Bounded: beyond ``max_items`` items of a tenant the least-counted half is forgotten
    (and deleted from the store). Each subclass names its ``tag``, so two estimators can share
    one table without reading each other's counts."""

    tag = ""

    def __init__(self, store: MutableMapping[bytes, bytes] | None, max_items: int) -> None:
        self.store: MutableMapping[bytes, bytes] = {} if store is None else store
        self.max_items = max_items
        self.counts: dict[str, Counter[str]] = {}
        # Changed since the last flush: items per tenant, and tenants whose ``tenant|n`` changed.
        self.dirty: dict[str, set[str]] = {}
        self.dirty_totals: set[str] = set()

    def _count(self, tenant: str, items: Iterable[str]) -> Counter[str]:
        """Add one to each of ``items`` (distinct) of ``tenant``; counting and marking run in C
        (`Counter.update`, `set.update`), no Python loop per item."""
        if not isinstance(items, (list, tuple, set, frozenset)):
            items = list(items)
        counts = self.counts.get(tenant)
        if counts is None:
            counts = self.counts[tenant] = Counter()
        counts.update(items)
        dirty = self.dirty.get(tenant)
        if dirty is None:
            dirty = self.dirty[tenant] = set()
        dirty.update(items)
        if len(counts) > self.max_items:
            keep = Counter(dict(counts.most_common(self.max_items // 2)))
            for item in counts.keys() - keep.keys():
                dirty.discard(item)
                self.store.pop(self._key(tenant, item), None)
            self.counts[tenant] = counts = keep
        return counts

    def _key(self, tenant: str, item: str) -> bytes:
        return f"{tenant}|{self.tag}|{item}".encode()

    def _total(self, tenant: str) -> int:
        """The tenant-wide figure written under ``tenant|n`` (for the tenants in ``dirty_totals``)."""
        raise NotImplementedError

    def _recovered(self, totals: dict[str, int]) -> None:
        """After `rebuild` reloaded the item counts: the tenant-wide figures (``tenant|n``)."""

    def flush(self) -> int:
        """Write the counts changed since the last flush to the store; how many keys."""
        dirty, totals = self.dirty, self.dirty_totals
        self.dirty, self.dirty_totals = {}, set()
        written = 0
        for tenant in totals:
            self.store[f"{tenant}|n".encode()] = str(self._total(tenant)).encode()
            written += 1
        for tenant, items in dirty.items():
            counts = self.counts.get(tenant, {})
            for item in items:
                if item in counts:
                    self.store[self._key(tenant, item)] = str(counts[item]).encode()
                    written += 1
        return written

    def rebuild(self) -> None:
        """Reload every count from the store (what this worker holds of it)."""
        self.counts, self.dirty, self.dirty_totals = {}, {}, set()
        totals: dict[str, int] = {}
        prefix = f"{self.tag}|"
        for key, value in list(self.store.items()):
            if value is None:
                continue
            tenant, sep, rest = bytes(key).decode().partition("|")
            if rest == "n":
                totals[tenant] = int(value)
            elif sep and rest.startswith(prefix):
                self.counts.setdefault(tenant, Counter())[rest[len(prefix):]] = int(value)
        self._recovered(totals)


class ExposureCounter(StoredCounts):
    """Item exposure propensity ``(n_i / max_j n_j) ** eta`` from positive counts, per tenant.

    The counts (keys ``tenant|c|item``) are mirrored into ``store`` (the miner's table
    ``exposure``; None: in memory only) as `StoredCounts` says. An item never seen
    positive counts as 1 (its propensity is small, not zero).
    """

    tag = "c"

    def __init__(self, eta: float = 0.5, max_items: int = 1_000_000,
                 store: MutableMapping[bytes, bytes] | None = None) -> None:
        super().__init__(store, max_items)
        self.eta = eta
        self.max_count: dict[str, int] = {}

    def shown(self, tenant: str, items: Iterable[str]) -> None:
        """Impressions are not what this proxy counts."""

    def clicked(self, tenant: str, item: str) -> None:
        n = self._count(tenant, (item,)).get(item, 0)
        if n > self.max_count.get(tenant, 0):
            self.max_count[tenant] = n

    def propensity(self, tenant: str, item: str) -> float:
        top = self.max_count.get(tenant, 0)
        if top == 0:
            return 1.0
        return (max(self.counts[tenant].get(item, 0), 1) / top) ** self.eta

    def _recovered(self, totals: dict[str, int]) -> None:
        self.max_count = {tenant: max(counts.values(), default=0) for tenant, counts in self.counts.items()}


class ImpressionExposure(StoredCounts):
    """Item exposure propensity per tenant from impressions: ``theta_i`` = (impressions
    showing ``i`` + ``prior``) / (the tenant's impressions + ``prior``), at most 1; 1 before
    the tenant's first impression.

    The counts are mirrored into ``store`` (keys ``tenant|x|item`` -> shown count,
    ``tenant|n`` -> impressions) as `StoredCounts` says.
    """

    tag = "x"

    def __init__(self, store: MutableMapping[bytes, bytes] | None, prior: float = 0.5,
                 max_items: int = 1_000_000) -> None:
        super().__init__(store, max_items)
        self.prior = prior
        self.requests: dict[str, int] = {}

    def shown(self, tenant: str, items: Iterable[str]) -> None:
        """One impression of ``tenant`` showed ``items``."""
        self.requests[tenant] = self.requests.get(tenant, 0) + 1
        self.dirty_totals.add(tenant)
        self._count(tenant, set(items))

    def clicked(self, tenant: str, item: str) -> None:
        """Clicks are not what this estimator counts (exposure is observed)."""

    def propensity(self, tenant: str, item: str) -> float:
        n = self.requests.get(tenant, 0)
        if n == 0:
            return 1.0
        return min((self.counts[tenant].get(item, 0) + self.prior) / (n + self.prior), 1.0)

    def _total(self, tenant: str) -> int:
        return self.requests[tenant]

    def _recovered(self, totals: dict[str, int]) -> None:
        self.requests = totals
        for tenant, counts in self.counts.items():
            self.requests.setdefault(tenant, max(counts.values(), default=0))


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
