"""From request features to the model's input tensors, shared by serving and training.

A `FeatureSpec` (stored in every model's manifest) names the model's sparse
fields and dense fields as ``source.name``, where source is one of

- ``request``: ``request.user_id`` (the request's user id),
- ``user`` / ``context``: a key of the request's user / context `Features`,
- ``candidate``: a column of the request's `Candidates` (``candidate.id`` is
  the candidate id itself).

`build_inputs` turns one request into ``sparse_ids`` (int64, [n, fields]; 0 for
a missing value) and ``dense`` (float32, [n, dense]; 0.0 for a missing value),
hashing every string of the request in one vectorised call. It refuses
(`FeatureError`) a request the event validation would refuse too
(`loopwise.validation` uses the same checks): a candidate column without one
value per candidate, a NaN or infinite numeric feature (any, not only those
the model reads: the request's features travel on to training examples).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from loopwise.hashing import field_seed, hash_strings
from loopwise.limits import MAX_CANDIDATES, MAX_VALUE_CHARS

SOURCES = ("request", "user", "context", "candidate")


class FeatureError(ValueError):
    """A request whose features do not fit the spec; ``field`` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def all_finite(values: Iterable[float]) -> bool:
    """Whether no value is NaN or infinite: their sum is finite exactly then (one C-level
    pass; float32 values summed as doubles cannot overflow for any count that fits a message)."""
    return math.isfinite(sum(values))


def non_finite(user: Any, context: Any, candidates: Any) -> str | None:
    """The first numeric feature holding NaN or an infinity (``user.name``, ``context.name``,
    ``candidates.name``), else None; ``user``/``context``: `Features`, ``candidates``: `Candidates`."""
    for source, features in (("user", user), ("context", context)):
        if not all_finite(features.numeric.values()):
            return next(f"{source}.{k}" for k, v in features.numeric.items() if not math.isfinite(v))
    for column in candidates.numeric:
        if not all_finite(column.values):
            return f"candidates.{column.name}"
    return None


def misaligned_column(candidates: Any) -> tuple[str, int] | None:
    """The first column of a `Candidates` without one value per id: (its name, its length)."""
    n = len(candidates.ids)
    for column in (*candidates.categorical, *candidates.numeric):
        if len(column.values) != n:
            return column.name, len(column.values)
    return None


def _parse(names: Sequence[str]) -> tuple[tuple[str, str], ...]:
    out = []
    for full in names:
        source, _, name = full.partition(".")
        if source not in SOURCES or not name:
            raise ValueError(f"feature {full!r}: expected source.name with source in {SOURCES}")
        out.append((source, name))
    return tuple(out)


@dataclass(frozen=True)
class FeatureSpec:
    sparse: tuple[str, ...]
    dense: tuple[str, ...]
    buckets: int = 1 << 18

    def __post_init__(self) -> None:
        _parse(self.sparse)
        _parse(self.dense)
        if not self.dense:
            raise ValueError("a feature spec needs at least one dense feature")
        if self.buckets < 2:
            raise ValueError("buckets must be >= 2")

    def to_dict(self) -> dict[str, Any]:
        return {"sparse": list(self.sparse), "dense": list(self.dense), "buckets": self.buckets}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureSpec:
        return cls(sparse=tuple(d["sparse"]), dense=tuple(d["dense"]), buckets=int(d["buckets"]))


class InputBuilder:
    """Precomputed layout of a spec; `build` is the hot path of `Rank`."""

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec
        self.sparse = _parse(spec.sparse)
        self.dense = _parse(spec.dense)
        self._seeds = [field_seed(f) for f in spec.sparse]
        self._mod = np.uint64(spec.buckets - 1)

    def build(self, user_id: str, user: Any, context: Any, candidates: Any) -> tuple[np.ndarray, np.ndarray]:
        """``user``/``context``: `Features` messages; ``candidates``: a `Candidates` message."""
        ids_list = candidates.ids
        n = len(ids_list)
        if n > MAX_CANDIDATES:
            raise FeatureError("candidates.ids", f"{n} candidates, at most {MAX_CANDIDATES}")
        misaligned = misaligned_column(candidates)
        if misaligned is not None:
            raise FeatureError(f"candidates.{misaligned[0]}", f"{misaligned[1]} values for {n} candidates")
        bad = non_finite(user, context, candidates)
        if bad is not None:  # refused even when the model does not read it: it would reach the examples
            raise FeatureError(bad, "numeric features must be finite")
        str_cols = {c.name: c.values for c in candidates.categorical}
        num_cols = {c.name: c.values for c in candidates.numeric}

        # Sparse: every string of the request in one hash call.
        col_values: list[str] = []
        col_seeds: list[np.uint64] = []
        col_pos: list[int] = []
        scalar_values: list[str] = []
        scalar_seeds: list[np.uint64] = []
        scalar_pos: list[int] = []
        for j, (source, name) in enumerate(self.sparse):
            if source == "candidate":
                col = ids_list if name == "id" else str_cols.get(name)
                if col is None:
                    continue
                col_values.extend(col)
                col_seeds.append(self._seeds[j])
                col_pos.append(j)
            else:
                if source == "request":
                    value = user_id if name == "user_id" else ""
                else:
                    value = (user if source == "user" else context).categorical.get(name, "")
                if value:
                    scalar_values.append(value)
                    scalar_seeds.append(self._seeds[j])
                    scalar_pos.append(j)
        sparse = np.zeros((n, len(self.sparse)), dtype=np.int64)
        if col_pos or scalar_pos:
            seeds = np.concatenate([np.repeat(np.asarray(col_seeds, dtype=np.uint64), n),
                                    np.asarray(scalar_seeds, dtype=np.uint64)])
            values = np.asarray(col_values + scalar_values, dtype=np.str_)
            if values.dtype.itemsize // 4 > MAX_VALUE_CHARS:
                raise FeatureError("features", f"a categorical value is longer than {MAX_VALUE_CHARS} characters")
            ids = (hash_strings(values, seeds) % self._mod).astype(np.int64) + 1
            ids[values == ""] = 0
            k = len(col_pos)
            if k:
                sparse[:, col_pos] = ids[: k * n].reshape(k, n).T
            if scalar_pos:
                sparse[:, scalar_pos] = ids[k * n:]

        dense = np.zeros((n, len(self.dense)), dtype=np.float32)
        for j, (source, name) in enumerate(self.dense):
            if source == "candidate":
                col = num_cols.get(name)
                if col is not None:
                    dense[:, j] = col
            elif source in ("user", "context"):
                dense[:, j] = (user if source == "user" else context).numeric.get(name, 0.0)
        return sparse, dense
