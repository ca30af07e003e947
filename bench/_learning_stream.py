"""The replay stream of bench/learning.py: MovieLens-100K as 20-candidate Rank requests.

Each rating (timestamp order) becomes one request: the rated movie plus
``CANDIDATES - 1`` movies the user never rated (over the whole data set, as in
`loopwise.tools.demo`), drawn without replacement in proportion to ``1 + ratings so
far`` (a recommender's exposure: popular items are shown more; the +1 keeps
never-rated movies possible). The label is 1 for the rated movie when its
rating is >= 4, else 0 (a click or nothing). Everything a request carries is
computed from the ratings *before* it (progressive popularity and activity,
no future leakage); only "never rated" looks at the whole data set, which is
what defines a negative.

Features are those of `loopwise.tools.datasets.rank_inputs` (the names of the
cold-start spec) with ``candidate.popularity`` and ``user.activity`` made
progressive: ``log1p(count so far) / log1p(max count so far)``. The hashed ids
and dense values every learner sees come from `InputBuilder.build` on the very
`RankRequest` the client sends (`loopwise.client.sync.rank_request`), so the
peers, the in-process scorers and the stack see identical inputs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from loopwise.client.sync import rank_request
from loopwise.features import FeatureSpec, InputBuilder
from loopwise.tools import datasets

CANDIDATES = 20
LIKED = 4.0
SEED = 7
OVERDRAW = 4  # draw this many times the needed negatives with replacement, then dedupe


@dataclass
class Stream:
    """``n`` requests of ``k`` candidates; row ``r = i * k + j`` is candidate j of request i."""

    data: datasets.MovieLens
    rating_rows: np.ndarray  # (n,) index into the data's ratings
    cand: np.ndarray  # (n, k) item indices into data.item_ids
    label: np.ndarray  # (n, k) float32
    popularity: np.ndarray  # (n, k) float32, progressive
    activity: np.ndarray  # (n,) float32, progressive
    spec: FeatureSpec
    sparse: np.ndarray | None = None  # (n * k, fields) int32 hashed ids, see `featurize`
    dense: np.ndarray | None = None  # (n * k, dense) float32

    @property
    def n(self) -> int:
        return len(self.rating_rows)

    @property
    def k(self) -> int:
        return self.cand.shape[1]

    def user(self, i: int) -> str:
        return str(self.data.user[self.rating_rows[i]])

    def users(self) -> np.ndarray:
        """(n,) user id of each request."""
        return self.data.user[self.rating_rows]

    def row_users(self) -> np.ndarray:
        """(n * k,) user id of each row."""
        return np.repeat(self.users(), self.k)

    def timestamps(self) -> np.ndarray:
        return self.data.timestamp[self.rating_rows]

    def item_ids(self, i: int) -> list[str]:
        ids = self.data.item_ids
        return [ids[j] for j in self.cand[i]]

    def rank_kwargs(self, i: int) -> dict[str, Any]:
        """``client.rank(ids, **kwargs)`` arguments of request i (`datasets.rank_inputs` with
        progressive popularity/activity)."""
        row = self.rating_rows[i]
        user = dataclasses.replace(self.data.users[str(self.data.user[row])], activity=float(self.activity[i]))
        items = [dataclasses.replace(self.data.items[item], popularity=float(p))
                 for item, p in zip(self.item_ids(i), self.popularity[i].tolist(), strict=True)]
        return datasets.rank_inputs(user, items, timestamp=float(self.data.timestamp[row]))

    def request(self, i: int, tenant: str = "default") -> Any:
        """The `RankRequest` the client sends for request i."""
        return rank_request(tenant, self.item_ids(i), **self.rank_kwargs(i))


def progressive_scale(count: np.ndarray | float, top: float) -> np.ndarray:
    """``log1p(count) / log1p(top)`` (0 when top is 0): `datasets.log_scale` on counts so far."""
    denom = np.log1p(top)
    return np.asarray(np.log1p(count) / denom if denom > 0 else np.zeros_like(count, dtype=np.float64),
                      dtype=np.float32)


def build_stream(data: datasets.MovieLens, requests: int | None = None, *, k: int = CANDIDATES,
                 seed: int = SEED, spec: FeatureSpec | None = None) -> Stream:
    """The first ``requests`` ratings as requests (all when None); deterministic in ``seed``."""
    from loopwise.modelstore.coldstart import DEFAULT_SPEC

    n = len(data) if requests is None else min(requests, len(data))
    rng = np.random.default_rng(seed)
    item_index = {item: j for j, item in enumerate(data.item_ids)}
    user_ids = sorted(data.users)
    user_index = {u: j for j, u in enumerate(user_ids)}
    u_all = np.fromiter((user_index[u] for u in data.user.tolist()), dtype=np.int64, count=len(data))
    i_all = np.fromiter((item_index[i] for i in data.item.tolist()), dtype=np.int64, count=len(data))
    rated = np.zeros((len(user_ids), len(data.item_ids)), dtype=bool)
    rated[u_all, i_all] = True

    item_count = np.zeros(len(data.item_ids), dtype=np.int64)
    user_count = np.zeros(len(user_ids), dtype=np.int64)
    cand = np.empty((n, k), dtype=np.int64)
    label = np.zeros((n, k), dtype=np.float32)
    popularity = np.empty((n, k), dtype=np.float32)
    activity = np.empty(n, dtype=np.float32)
    for r in range(n):
        u, pos = u_all[r], i_all[r]
        weights = (item_count + 1).astype(np.float64)
        weights[rated[u]] = 0.0
        negs = draw_without_replacement(rng, weights, k - 1)
        row = np.concatenate([[pos], negs])
        perm = rng.permutation(len(row))
        row = row[perm]
        cand[r, :len(row)] = row
        if data.rating[r] >= LIKED:
            label[r] = (row == pos).astype(np.float32)
        popularity[r] = progressive_scale(item_count[row], float(item_count.max()))
        activity[r] = progressive_scale(float(user_count[u]), float(user_count.max()))
        item_count[pos] += 1
        user_count[u] += 1
    return Stream(data=data, rating_rows=np.arange(n), cand=cand, label=label, popularity=popularity,
                  activity=activity, spec=spec or DEFAULT_SPEC)


def draw_without_replacement(rng: np.random.Generator, weights: np.ndarray, k: int) -> np.ndarray:
    """k distinct indices drawn in proportion to ``weights`` (successive sampling: the same
    law as ``rng.choice(replace=False, p=...)``, via oversampling with replacement)."""
    available = int(np.count_nonzero(weights))
    if available < k:
        raise ValueError(f"only {available} items to draw {k} from")
    cdf = np.cumsum(weights)
    total = cdf[-1]
    picked: list[int] = []
    seen: set[int] = set()
    while len(picked) < k:
        draws = np.searchsorted(cdf, rng.random(OVERDRAW * k) * total, side="right")
        for d in draws.tolist():
            if d not in seen and weights[d] > 0:
                seen.add(d)
                picked.append(d)
                if len(picked) == k:
                    break
    return np.asarray(picked, dtype=np.int64)


def featurize(stream: Stream, tenant: str = "default") -> Stream:
    """Fill ``stream.sparse``/``stream.dense`` with `InputBuilder.build` on each request's
    `RankRequest` (what the inference service computes for the same request)."""
    builder = InputBuilder(stream.spec)
    k = stream.k
    sparse = np.zeros((stream.n * k, len(stream.spec.sparse)), dtype=np.int32)
    dense = np.zeros((stream.n * k, len(stream.spec.dense)), dtype=np.float32)
    for i in range(stream.n):
        req = stream.request(i, tenant)
        s, d = builder.build(req.user_id, req.user, req.context, req.candidates)
        sparse[i * k:(i + 1) * k] = s
        dense[i * k:(i + 1) * k] = d
    stream.sparse, stream.dense = sparse, dense
    return stream


# -- the same inputs for the online peers ---------------------------------------------------

USER_SIDE = ("request", "user")
ITEM_SIDE = ("candidate",)


def namespaces(spec: FeatureSpec) -> list[str]:
    """VW namespace of each sparse field: ``u`` (request/user), ``i`` (candidate), ``c`` (context)."""
    out = []
    for full in spec.sparse:
        source = full.partition(".")[0]
        out.append("u" if source in USER_SIDE else "i" if source in ITEM_SIDE else "c")
    return out


def dense_names(spec: FeatureSpec) -> list[str]:
    return [full.replace(".", "_") for full in spec.dense]


def vw_lines(stream: Stream, rows: slice, labels: bool = True) -> list[str]:
    """VW text examples for ``rows``: the hashed ids as features of namespaces u/i/c, the dense
    values in namespace d; label -1/1 (logistic loss)."""
    assert stream.sparse is not None and stream.dense is not None
    ns = namespaces(stream.spec)
    dnames = dense_names(stream.spec)
    order = sorted(set(ns))
    cols = {n: [j for j, x in enumerate(ns) if x == n] for n in order}
    sparse = stream.sparse[rows]
    dense = stream.dense[rows]
    y = stream.label.reshape(-1)[rows]
    out = []
    for r in range(sparse.shape[0]):
        ids = sparse[r]
        parts = ["1" if y[r] > 0 else "-1"] if labels else [""]
        for n in order:
            parts.append(f"|{n} " + " ".join(str(int(ids[j])) for j in cols[n] if ids[j]))
        parts.append("|d " + " ".join(f"{name}:{float(v):.6g}" for name, v in zip(dnames, dense[r], strict=True)))
        out.append(" ".join(parts))
    return out


def river_dicts(stream: Stream, rows: slice) -> list[dict[str, float]]:
    """River feature dicts for ``rows``: one-hot hashed ids (key ``"h<id>"``) and the dense values."""
    assert stream.sparse is not None and stream.dense is not None
    dnames = dense_names(stream.spec)
    sparse = stream.sparse[rows]
    dense = stream.dense[rows]
    out = []
    for r in range(sparse.shape[0]):
        x = {f"h{int(i)}": 1.0 for i in sparse[r] if i}
        x.update(zip(dnames, dense[r].tolist(), strict=True))
        out.append(x)
    return out
