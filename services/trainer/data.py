"""From window records to model inputs, with the serving path's own builder.

Every row goes through `loopwise.features.InputBuilder.build`, the function
`Rank` calls, so the trainer's ``sparse_ids``/``dense`` are bit for bit the
ones inference builds for the same features. Records of one request share
the user and context: they are built together as one candidate list (a
missing candidate column is an empty string / 0.0, which the builder maps to
the same id 0 / value 0.0 as an absent column).

Late corrections (``Example.correction``) replace the no-feedback negative of
the same (request, candidate). Examples of the miner's fake-negative mode
(``feedback_mode`` FAKE_NEGATIVE) are all kept: a fake negative and its
positive duplicate are two rows (``fnw``), each at the time it was emitted
(`example_time`: the label time), for the FNW loss.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from loopwise.features import FeatureError, InputBuilder
from loopwise.hashing import hash_ids
from loopwise.v1 import features_pb2, learning_pb2

log = logging.getLogger(__name__)


@dataclass
class WindowData:
    """Model inputs of a window: examples (one row each) and preference pairs."""

    sparse: np.ndarray  # int64 [n, fields]
    dense: np.ndarray  # float32 [n, dense]
    label: np.ndarray  # float32 [n]
    weight: np.ndarray  # float32 [n], the IPS weight of the example
    time_ms: np.ndarray  # int64 [n]
    user: np.ndarray  # int64 [n], hashed user id (for gAUC)
    pref_sparse: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int64))
    pref_dense: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    other_sparse: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int64))
    other_dense: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    strength: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    pair_time_ms: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    skipped: int = 0
    # float32 [n]: a fake-negative-mode row's click scale (FNW loss: the model's probability
    # times it is the click probability; 1 / its click weight), 0 for other rows; int64 [n]:
    # hash of (request, candidate). None: none of the rows / not known.
    fnw: np.ndarray | None = None
    key: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.label)

    @property
    def n_pairs(self) -> int:
        return len(self.strength)

    def take(self, rows: np.ndarray, pair_rows: np.ndarray | None = None) -> WindowData:
        """A subset of examples (and of pairs: none unless ``pair_rows`` is given)."""
        if pair_rows is None:
            pair_rows = np.zeros(0, dtype=np.int64)
        return WindowData(self.sparse[rows], self.dense[rows], self.label[rows], self.weight[rows],
                          self.time_ms[rows], self.user[rows], self.pref_sparse[pair_rows],
                          self.pref_dense[pair_rows], self.other_sparse[pair_rows], self.other_dense[pair_rows],
                          self.strength[pair_rows], self.pair_time_ms[pair_rows],
                          fnw=None if self.fnw is None else self.fnw[rows],
                          key=None if self.key is None else self.key[rows])

    def fnw_rows(self) -> np.ndarray:
        """bool [n]: the rows of the fake-negative mode."""
        return self.fnw > 0 if self.fnw is not None else np.zeros(len(self), dtype=bool)


def final_labels(holdout: WindowData, data: WindowData) -> WindowData:
    """``holdout`` without the fake negatives that a positive duplicate of the same (request,
    candidate) in ``data`` contradicts: one row per candidate with its label so far, the
    view the gate scores (the FNW weights are a training device, not labels)."""
    fnw = holdout.fnw_rows()
    if not fnw.any() or holdout.key is None or data.key is None:
        return holdout
    clicked = data.key[data.fnw_rows() & (data.label > 0)]
    drop = fnw & (holdout.label <= 0) & np.isin(holdout.key, clicked)
    return holdout.take(np.flatnonzero(~drop))


def user_keys(user_ids: Sequence[str]) -> np.ndarray:
    return hash_ids(np.asarray(user_ids, dtype=np.str_), field="trainer.gauc_user", buckets=1 << 62)


def _group_key(user_id: str, user: features_pb2.Features, context: features_pb2.Features) -> tuple:
    return (user_id, user.SerializeToString(deterministic=True), context.SerializeToString(deterministic=True))


def _candidates(ids: list[str], feats: list[features_pb2.Features]) -> features_pb2.Candidates:
    cat_names = sorted({k for f in feats for k in f.categorical})
    num_names = sorted({k for f in feats for k in f.numeric})
    msg = features_pb2.Candidates(ids=ids)
    for name in cat_names:
        msg.categorical.add(name=name, values=[f.categorical.get(name, "") for f in feats])
    for name in num_names:
        msg.numeric.add(name=name, values=[f.numeric.get(name, 0.0) for f in feats])
    return msg


def build_rows(builder: InputBuilder, rows: list[tuple[str, features_pb2.Features, features_pb2.Features,
                                                           str, features_pb2.Features]]
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``rows``: (user_id, user, context, candidate_id, candidate features).

    Returns sparse [n, fields], dense [n, dense] and a bool mask of the rows
    the builder accepted (a row it refuses, e.g. a non-finite number, is left
    out of training and counted).
    """
    n = len(rows)
    spec = builder.spec
    sparse = np.zeros((n, len(spec.sparse)), dtype=np.int64)
    dense = np.zeros((n, len(spec.dense)), dtype=np.float32)
    ok = np.ones(n, dtype=bool)
    groups: dict[tuple, list[int]] = {}
    for i, (user_id, user, context, _, _) in enumerate(rows):
        groups.setdefault(_group_key(user_id, user, context), []).append(i)
    for members in groups.values():
        user_id, user, context = rows[members[0]][:3]
        try:
            s, d = builder.build(user_id, user, context,
                                 _candidates([rows[i][3] for i in members], [rows[i][4] for i in members]))
            sparse[members], dense[members] = s, d
        except FeatureError:
            for i in members:  # one bad row must not cost its neighbours
                try:
                    s, d = builder.build(user_id, user, context, _candidates([rows[i][3]], [rows[i][4]]))
                    sparse[i], dense[i] = s[0], d[0]
                except FeatureError:
                    ok[i] = False
    return sparse, dense, ok


@dataclass
class ExamplePart:
    """Built examples of one window block, before corrections are applied."""

    sparse: np.ndarray
    dense: np.ndarray
    label: np.ndarray
    weight: np.ndarray
    time_ms: np.ndarray
    user: np.ndarray
    key: np.ndarray  # int64 hash of (request_id, candidate_id)
    correction: np.ndarray  # bool
    fnw: np.ndarray  # float32: feedback_mode FAKE_NEGATIVE: `click_scale`, else 0
    skipped: int = 0
    impression_ms: np.ndarray | None = None  # int64: the impression's time (the replica's clock)


@dataclass
class PairPart:
    pref_sparse: np.ndarray
    pref_dense: np.ndarray
    other_sparse: np.ndarray
    other_dense: np.ndarray
    strength: np.ndarray
    time_ms: np.ndarray
    skipped: int = 0


def example_time(ex: learning_pb2.Example) -> int:
    """A row's time: its impression's (a window-mode example is complete then), or for the
    fake-negative mode when it was emitted (a positive duplicate: its click's)."""
    if ex.feedback_mode == learning_pb2.FEEDBACK_MODE_FAKE_NEGATIVE:
        return ex.label_time_ms or ex.impression_time_ms
    return ex.impression_time_ms or ex.label_time_ms


def click_scale(ex: learning_pb2.Example) -> float:
    """0 for a window-mode example; for a fake-negative-mode one ``1 / click_weight`` (in
    (0, 1]; 1 without one): the model learns clicks times the IPS weight, so its probability
    times this is the click probability FNW weighs with."""
    if ex.feedback_mode != learning_pb2.FEEDBACK_MODE_FAKE_NEGATIVE:
        return 0.0
    return 1.0 / ex.click_weight if ex.click_weight > 1.0 else 1.0


def build_example_part(builder: InputBuilder, examples: Sequence[bytes | learning_pb2.Example]) -> ExamplePart:
    exs = [learning_pb2.Example.FromString(e) if isinstance(e, bytes | bytearray) else e for e in examples]
    n = len(exs)
    sparse, dense, ok = build_rows(builder, [(e.user_id, e.user, e.context, e.candidate_id, e.candidate)
                                             for e in exs])
    label = np.fromiter((e.label for e in exs), dtype=np.float32, count=n)
    weight = np.fromiter((e.weight or 1.0 for e in exs), dtype=np.float32, count=n)
    time_ms = np.fromiter((example_time(e) for e in exs), dtype=np.int64, count=n)
    user = user_keys([e.user_id for e in exs]) if n else np.zeros(0, dtype=np.int64)
    key = hash_ids(np.asarray([f"{e.request_id}\x00{e.candidate_id}" for e in exs], dtype=np.str_),
                   field="trainer.example_key", buckets=1 << 62) if n else np.zeros(0, dtype=np.int64)
    correction = np.fromiter((e.correction for e in exs), dtype=bool, count=n)
    fnw = np.fromiter((click_scale(e) for e in exs), dtype=np.float32, count=n)
    shown = np.fromiter((e.impression_time_ms for e in exs), dtype=np.int64, count=n)
    return ExamplePart(sparse[ok], dense[ok], label[ok], weight[ok], time_ms[ok], user[ok], key[ok],
                       correction[ok], fnw[ok], skipped=int((~ok).sum()), impression_ms=shown[ok])


def build_pair_part(builder: InputBuilder, pairs: Sequence[bytes | learning_pb2.PreferencePair]) -> PairPart:
    prs = [learning_pb2.PreferencePair.FromString(p) if isinstance(p, bytes | bytearray) else p for p in pairs]
    rows = []
    for p in prs:
        rows.append((p.user_id, p.user, p.context, p.preferred_id, p.preferred))
        rows.append((p.user_id, p.user, p.context, p.other_id, p.other))
    ps, pd, pok = build_rows(builder, rows)
    ok = pok[0::2] & pok[1::2]
    return PairPart(ps[0::2][ok], pd[0::2][ok], ps[1::2][ok], pd[1::2][ok],
                    np.fromiter((p.strength for p in prs), dtype=np.float32, count=len(prs))[ok],
                    np.fromiter((p.time_ms for p in prs), dtype=np.int64, count=len(prs))[ok],
                    skipped=int((~ok).sum()))


def assemble(builder: InputBuilder, examples: Sequence[ExamplePart], pairs: Sequence[PairPart]) -> WindowData:
    """Concatenate parts in arrival order; a correction replaces the other rows of its
    (request, candidate)."""
    spec = builder.spec
    f, d = len(spec.sparse), len(spec.dense)
    examples = list(examples) or [build_example_part(builder, [])]
    pairs = list(pairs) or [build_pair_part(builder, [])]

    def cat(parts: Sequence[Any], name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        arrays = [getattr(p, name) for p in parts]
        return np.concatenate(arrays) if arrays else np.zeros(shape, dtype=dtype)

    key, correction = cat(examples, "key", (0,), np.int64), cat(examples, "correction", (0,), bool)
    keep = np.ones(len(key), dtype=bool)
    if correction.any():
        keep = correction | ~np.isin(key, key[correction])
    data = WindowData(cat(examples, "sparse", (0, f), np.int64)[keep], cat(examples, "dense", (0, d), np.float32)[keep],
                      cat(examples, "label", (0,), np.float32)[keep], cat(examples, "weight", (0,), np.float32)[keep],
                      cat(examples, "time_ms", (0,), np.int64)[keep], cat(examples, "user", (0,), np.int64)[keep],
                      skipped=sum(p.skipped for p in examples) + sum(p.skipped for p in pairs),
                      fnw=cat(examples, "fnw", (0,), np.float32)[keep], key=key[keep])
    data.pref_sparse = cat(pairs, "pref_sparse", (0, f), np.int64)
    data.pref_dense = cat(pairs, "pref_dense", (0, d), np.float32)
    data.other_sparse = cat(pairs, "other_sparse", (0, f), np.int64)
    data.other_dense = cat(pairs, "other_dense", (0, d), np.float32)
    data.strength = cat(pairs, "strength", (0,), np.float32)
    data.pair_time_ms = cat(pairs, "time_ms", (0,), np.int64)
    return data


def build_window_data(builder: InputBuilder, examples: Sequence[bytes | learning_pb2.Example],
                      pairs: Sequence[bytes | learning_pb2.PreferencePair] = ()) -> WindowData:
    """Decode (if needed) and build the inputs of examples and preference pairs."""
    return assemble(builder, [build_example_part(builder, examples)], [build_pair_part(builder, pairs)])


class PartCache:
    """Built parts per window segment, so a run only builds what is new.

    A segment is identified by its name and row count (a topped-up tail segment
    has a new count, hence a new entry); parts of segments no longer in the
    window, or built with another feature spec, are forgotten.
    """

    def __init__(self) -> None:
        self._parts: dict[tuple, Any] = {}

    def __len__(self) -> int:
        return len(self._parts)

    def window_data(self, window: Any, tenant: str, model: str, builder: InputBuilder) -> WindowData:
        spec_key = json.dumps(builder.spec.to_dict(), sort_keys=True)
        built: dict[str, list[Any]] = {}
        for kind, build in (("examples", build_example_part), ("preferences", build_pair_part)):
            stream = (tenant, model, kind)
            live = set()
            out = []
            for key, records in window.blocks(tenant, model, kind,
                                              want=lambda k, s=stream: (*s, spec_key, k) not in self._parts):
                if key is None:
                    out.append(build(builder, records.payloads))
                    continue
                ck = (*stream, spec_key, key)
                live.add(ck)
                if ck not in self._parts:
                    self._parts[ck] = build(builder, records.payloads)
                out.append(self._parts[ck])
            for ck in [k for k in self._parts if k[:3] == stream and k not in live]:
                del self._parts[ck]
            built[kind] = out
        return assemble(builder, built["examples"], built["preferences"])
