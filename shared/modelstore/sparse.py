"""The ranker's sparse tables outside the ONNX graph, and the deltas that update them
(docs/methods.md §7, Monolith's split).

The ranker's logit is a dense part (shared embedding, MLP: in the ONNX graph,
changed only by full versions) plus three purely additive sparse terms:

- ``fm`` [buckets, fm_dim]: the factorisation-machine term
  ``0.5 * sum_k((sum_f v_fk)^2 - sum_f v_fk^2)`` over the fields' rows;
- ``bias`` [buckets, 1]: first-order per-id weights summed over the fields;
- ``cross`` [cross_buckets, 1]: hashed pair weights of two fields
  (`cross_ids`, the hash the graph computes).

A trainer version publishes its tables with the version (`SPARSE_FILE`, an
npz, and its `Layout` in the manifest's ``metrics.sparse_layout``); a version
without them (the cold-start model, older versions) has implicit zero
``bias`` and ``cross`` tables. A delta (`SparseDelta` on ``loopwise.deltas.v1``)
carries the new values of the rows touched since the previous one;
`decode_delta` checks one before it may touch a table (`DeltaError` says why
not). Serving scores ``logit(prob) + sparse_logit(current) - sparse_logit(base)``
(`adjust`): the version's own ``prob`` with the difference the deltas made,
exact for any version whatever its graph (``prob`` is clipped to
[1e-7, 1 - 1e-7] before its logit).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from loopwise import stamps
from loopwise.v1 import learning_pb2

SPARSE_FILE = "sparse.npz"
TABLES = ("fm", "bias", "cross")
CROSS_PRIME = 1_000_003  # the graph's cross hash: (a * CROSS_PRIME + b) mod (cross_buckets - 1) + 1
PROB_CLIP = 1e-7

# name, ids [n, fields] -> values [n, fields, dim]
Lookup = Callable[[str, np.ndarray], np.ndarray]


class DeltaError(Exception):
    """A delta that must not touch a table; ``reason`` is a short label."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Layout:
    """Which sparse tables a model has and their shapes."""

    buckets: int
    fm_dim: int = 0
    linear: bool = True
    cross_a: tuple[int, ...] = ()
    cross_b: tuple[int, ...] = ()
    cross_buckets: int = 0

    def rows(self, table: str) -> int:
        return self.cross_buckets if table == "cross" else self.buckets

    def dim(self, table: str) -> int:
        return self.fm_dim if table == "fm" else 1

    def tables(self) -> tuple[str, ...]:
        return tuple(t for t, on in (("fm", self.fm_dim > 0), ("bias", self.linear),
                                     ("cross", bool(self.cross_a) and self.cross_buckets >= 2)) if on)

    def to_dict(self) -> dict:
        return {"buckets": self.buckets, "fm_dim": self.fm_dim, "linear": self.linear,
                "cross_a": list(self.cross_a), "cross_b": list(self.cross_b), "cross_buckets": self.cross_buckets}

    @classmethod
    def from_dict(cls, d: Mapping) -> Layout:
        return cls(int(d["buckets"]), int(d.get("fm_dim", 0)), bool(d.get("linear", True)),
                   tuple(int(a) for a in d.get("cross_a", ())), tuple(int(b) for b in d.get("cross_b", ())),
                   int(d.get("cross_buckets", 0)))

    @classmethod
    def of_config(cls, config: Mapping) -> Layout:
        """The layout of a trainer ``Ranker``'s config."""
        crosses = config.get("crosses") or []
        return cls(int(config["buckets"]), int(config.get("fm_dim", 0)), bool(config.get("linear", False)),
                   tuple(int(a) for a, _ in crosses), tuple(int(b) for _, b in crosses),
                   int(config.get("cross_buckets", 0)) if crosses else 0)

    @classmethod
    def of_delta(cls, msg: learning_pb2.SparseDelta) -> Layout:
        return cls(int(msg.buckets), int(msg.fm_dim), bool(msg.linear), tuple(msg.cross_a), tuple(msg.cross_b),
                   int(msg.cross_buckets))


def cross_ids(sparse: np.ndarray, layout: Layout) -> np.ndarray:
    """[n, crosses] hashed pair ids (0 where either id is the padding 0), as the graph hashes them."""
    a = sparse[:, list(layout.cross_a)].astype(np.int64)
    b = sparse[:, list(layout.cross_b)].astype(np.int64)
    h = np.remainder(a * CROSS_PRIME + b, layout.cross_buckets - 1) + 1
    return h * ((a > 0) & (b > 0))


def sparse_logit(sparse: np.ndarray, layout: Layout, lookup: Lookup) -> np.ndarray:
    """The sparse terms of the logit of each row of ``sparse`` [n, fields], float64 [n]."""
    z = np.zeros(len(sparse), dtype=np.float64)
    tables = layout.tables()
    if "fm" in tables:
        v = lookup("fm", sparse).astype(np.float64)
        total = v.sum(axis=1)
        z += 0.5 * (total * total - (v * v).sum(axis=1)).sum(axis=1)
    if "bias" in tables:
        z += lookup("bias", sparse)[..., 0].sum(axis=1, dtype=np.float64)
    if "cross" in tables:
        z += lookup("cross", cross_ids(sparse, layout))[..., 0].sum(axis=1, dtype=np.float64)
    return z


def logit(prob: np.ndarray) -> np.ndarray:
    p = np.clip(prob.astype(np.float64), PROB_CLIP, 1.0 - PROB_CLIP)
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)


# -- the version's tables (npz) --------------------------------------------------------

def tables_bytes(tables: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tables.items()})
    return buf.getvalue()


def tables_from_bytes(data: bytes, layout: Layout) -> dict[str, np.ndarray]:
    """The tables of `tables_bytes`, checked against ``layout`` and made read-only."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        out = {k: np.array(npz[k], dtype=np.float32) for k in npz.files}
    for name in layout.tables():
        t = out.get(name)
        if t is None or t.shape != (layout.rows(name), layout.dim(name)):
            raise DeltaError(f"table {name} {None if t is None else t.shape} does not fit {layout}", "bad_layout")
        if not np.isfinite(t).all():
            raise DeltaError(f"table {name} has non-finite values", "non_finite")
        t.setflags(write=False)
    return {k: v for k, v in out.items() if k in layout.tables()}


# -- deltas ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Rows:
    """Checked rows of one table: ascending unique ids and their values [len(ids), dim]."""

    ids: np.ndarray
    values: np.ndarray


@dataclass
class Delta:
    """A decoded, checked `SparseDelta`."""

    tenant: str
    model: str
    base_version: str
    stream: str
    sequence: int
    layout: Layout
    rows: dict[str, Rows] = field(default_factory=dict)
    created_ms: int = 0
    first_example_ms: int = 0
    examples: int = 0
    size: int = 0
    impressions_through_ms: int = 0


def encode_delta(tenant: str, model: str, base_version: str, stream: str, sequence: int, layout: Layout,
                 rows: Mapping[str, tuple[np.ndarray, np.ndarray]], *, first_example_ms: int = 0,
                 last_example_ms: int = 0, examples: int = 0, impressions_through_ms: int = 0) -> bytes:
    """The `SparseDelta` record of ``rows`` ({table: (ids, values [n, dim])})."""
    msg = learning_pb2.SparseDelta(
        event_id=stamps.new_event_id(), tenant=tenant, model=model, base_version=base_version, stream=stream,
        sequence=sequence, created_ms=stamps.now_ms(), first_example_ms=first_example_ms,
        last_example_ms=last_example_ms, examples=examples, impressions_through_ms=impressions_through_ms,
        buckets=layout.buckets, fm_dim=layout.fm_dim,
        linear=layout.linear, cross_a=list(layout.cross_a), cross_b=list(layout.cross_b),
        cross_buckets=layout.cross_buckets)
    for name, (ids, values) in rows.items():
        order = np.argsort(ids, kind="stable")
        msg.tables.add(table=name, ids=np.asarray(ids, dtype="<i8")[order].tobytes(),
                       values=np.asarray(values, dtype="<f4").reshape(len(ids), -1)[order].tobytes(),
                       dim=layout.dim(name))
    return msg.SerializeToString()


def decode_delta(data: bytes) -> Delta:
    """Parse and check a delta: known tables of its layout, ids ascending in [1, rows),
    values finite and of the table's width (else `DeltaError`)."""
    try:
        msg = learning_pb2.SparseDelta.FromString(data)
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and others
        raise DeltaError(f"undecodable: {exc}", "malformed") from None
    if not (msg.tenant and msg.model and msg.base_version and msg.stream and msg.sequence > 0):
        raise DeltaError("tenant, model, base_version, stream and a sequence > 0 are required", "malformed")
    layout = Layout.of_delta(msg)
    if layout.buckets < 2 or len(layout.cross_a) != len(layout.cross_b):
        raise DeltaError(f"bad layout {layout}", "bad_layout")
    out = Delta(msg.tenant, msg.model, msg.base_version, msg.stream, int(msg.sequence), layout,
                created_ms=msg.created_ms, first_example_ms=msg.first_example_ms, examples=msg.examples,
                size=len(data), impressions_through_ms=msg.impressions_through_ms)
    for t in msg.tables:
        if t.table not in layout.tables() or t.table in out.rows or t.dim != layout.dim(t.table):
            raise DeltaError(f"table {t.table!r} (dim {t.dim}) not in the layout or repeated", "bad_layout")
        if len(t.ids) % 8 or len(t.values) % 4:
            raise DeltaError(f"table {t.table}: truncated ids or values", "malformed")
        ids = np.frombuffer(t.ids, dtype="<i8").astype(np.int64)
        values = np.frombuffer(t.values, dtype="<f4").astype(np.float32)
        if len(values) != len(ids) * t.dim:
            raise DeltaError(f"table {t.table}: {len(values)} values for {len(ids)} rows of {t.dim}", "malformed")
        if len(ids) and (ids[0] < 1 or ids[-1] >= layout.rows(t.table) or np.any(np.diff(ids) <= 0)):
            raise DeltaError(f"table {t.table}: ids not ascending in [1, {layout.rows(t.table)})", "bad_ids")
        if not np.isfinite(values).all():
            raise DeltaError(f"table {t.table}: non-finite values", "non_finite")
        values = values.reshape(len(ids), t.dim)
        ids.setflags(write=False)
        values.setflags(write=False)
        out.rows[t.table] = Rows(ids, values)
    return out
