"""The Rel-MF semi-synthetic world on MovieLens-100K (docs/methods.md §3).

- relevance: a low-rank fit of the observed ratings (ALS), predicted for every
  user-item pair, ``gamma = sigmoid(clip(r_hat, 1, 5) - 5)``;
- exposure: a logistic matrix factorisation of "was rated" over every pair,
  ``theta = sigmoid(o_hat) ** p``;
- clicks: ``Y = O * R`` with ``O ~ Bernoulli(theta)`` and ``R ~ Bernoulli(gamma)``.

Both fits depend only on the data (fixed seed), so every method and seed of a
run sees the same truth; a seed draws the clicks and the training subsample.

Metrics (per user over every item, averaged over the evaluated users), with
the true relevance as gain: ``DCG@5 = sum_k gamma_(k) / log2(k + 1)`` of the
model's top 5; ``recall@5`` = share of the user's relevant items (one draw of
``R``) in the top 5, out of ``min(5, relevant)``; rare-item DCG@5 = DCG@5 of
the model's ranking among the rare items only (the half of the catalogue with
the fewest ratings).

`item_rate_dcg` is the data's own ceiling for a method's weights, no model: DCG@5 of
ranking every user's items by the item's weighted click rate on the trained pairs
(``sum(y * w) / n``, the estimator a model's item terms start from). When the
true-theta IPS rate ranks worse than the naive one, the clicks of the subsample are too
few for the unbiased estimator's variance, whatever the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from loopwise.tools import datasets

RANK = 10
K = 5


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass(frozen=True)
class Truth:
    """The semi-synthetic ground truth: ``gamma`` and the exposure logit, [users, items]."""

    user_ids: list[str]
    item_ids: list[str]
    gamma: np.ndarray
    o_logit: np.ndarray
    rated: np.ndarray  # bool [users, items]
    rare: np.ndarray  # bool [items]

    def theta(self, p: float) -> np.ndarray:
        return sigmoid(self.o_logit) ** p


def fit_ratings(u: np.ndarray, i: np.ndarray, r: np.ndarray, shape: tuple[int, int], rank: int = RANK,
                reg: float = 5.0, iterations: int = 15, seed: int = 0) -> np.ndarray:
    """Predicted ratings of every pair from ALS on the observed ones (with user/item biases)."""
    rng = np.random.default_rng(seed)
    n_u, n_i = shape
    mu = float(r.mean())
    P = rng.normal(0, 0.1, (n_u, rank + 2))
    Q = rng.normal(0, 0.1, (n_i, rank + 2))
    # Column rank: user bias (Q's column is 1); rank+1: item bias (P's column is 1).
    by_user = [np.flatnonzero(u == a) for a in range(n_u)]
    by_item = [np.flatnonzero(i == b) for b in range(n_i)]
    eye = reg * np.eye(rank + 1)
    for _ in range(iterations):
        Q[:, rank] = 1.0
        for a, rows in enumerate(by_user):
            X = Q[i[rows]][:, : rank + 1]
            y = r[rows] - mu - Q[i[rows], rank + 1]
            P[a, : rank + 1] = np.linalg.solve(X.T @ X + eye, X.T @ y)
        P[:, rank + 1] = 1.0
        for b, rows in enumerate(by_item):
            if not len(rows):
                continue
            X = P[u[rows]][:, [*range(rank), rank + 1]]
            y = r[rows] - mu - P[u[rows], rank]
            sol = np.linalg.solve(X.T @ X + eye, X.T @ y)
            Q[b, :rank], Q[b, rank + 1] = sol[:rank], sol[rank]
    Q[:, rank] = 1.0
    P[:, rank + 1] = 1.0
    return mu + P @ Q.T


def fit_exposure(rated: np.ndarray, rank: int = RANK, reg: float = 1e-3, steps: int = 300, lr: float = 0.05,
                 seed: int = 0) -> np.ndarray:
    """Logistic MF logits of "was rated" over every pair (full-batch Adam on the mean log loss)."""
    rng = np.random.default_rng(seed)
    n_u, n_i = rated.shape
    y = rated.astype(np.float64)
    params = [rng.normal(0, 0.1, (n_u, rank)), rng.normal(0, 0.1, (n_i, rank)), np.zeros(n_u), np.zeros(n_i),
              np.zeros(1)]
    m = [np.zeros_like(x) for x in params]
    v = [np.zeros_like(x) for x in params]
    for t in range(1, steps + 1):
        P, Q, bu, bi, b = params
        z = P @ Q.T + bu[:, None] + bi[None, :] + b
        g = (sigmoid(z) - y) / y.size
        grads = [g @ Q + reg * P / n_u, g.T @ P + reg * Q / n_i, g.sum(1), g.sum(0), np.array([g.sum()])]
        for x, gx, mx, vx in zip(params, grads, m, v, strict=True):
            mx *= 0.9
            mx += 0.1 * gx
            vx *= 0.999
            vx += 0.001 * gx * gx
            x -= lr * (mx / (1 - 0.9 ** t)) / (np.sqrt(vx / (1 - 0.999 ** t)) + 1e-8)
    P, Q, bu, bi, b = params
    return P @ Q.T + bu[:, None] + bi[None, :] + b


def build_truth() -> Truth:
    data = datasets.movielens_100k()
    user_ids = sorted(set(data.user.tolist()), key=int)
    item_ids = sorted(set(data.item.tolist()), key=int)
    u_of = {x: k for k, x in enumerate(user_ids)}
    i_of = {x: k for k, x in enumerate(item_ids)}
    u = np.fromiter((u_of[x] for x in data.user.tolist()), dtype=np.int64, count=len(data))
    i = np.fromiter((i_of[x] for x in data.item.tolist()), dtype=np.int64, count=len(data))
    shape = (len(user_ids), len(item_ids))
    r_hat = fit_ratings(u, i, data.rating.astype(np.float64), shape)
    rated = np.zeros(shape, dtype=bool)
    rated[u, i] = True
    counts = rated.sum(0)
    rare = counts <= np.median(counts)
    return Truth(user_ids, item_ids, sigmoid(np.clip(r_hat, 1.0, 5.0) - 5.0), fit_exposure(rated), rated, rare)


def dcg_at(gain: np.ndarray, scores: np.ndarray, mask: np.ndarray | None = None, k: int = K) -> np.ndarray:
    """Per-user DCG@k of ranking by ``scores`` (items outside ``mask`` left out)."""
    s = scores if mask is None else np.where(mask[None, :], scores, -np.inf)
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    return (np.take_along_axis(gain, top, axis=1) * disc).sum(1)


def recall_at(relevant: np.ndarray, scores: np.ndarray, k: int = K) -> np.ndarray:
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    hits = np.take_along_axis(relevant, top, axis=1).sum(1)
    denom = np.minimum(relevant.sum(1), k)
    return np.where(denom > 0, hits / np.maximum(denom, 1), np.nan)


def metrics(truth: Truth, scores: np.ndarray, relevant: np.ndarray, users: np.ndarray) -> dict[str, float]:
    g = truth.gamma[users]
    s = scores
    return {"dcg": float(dcg_at(g, s).mean()), "recall": float(np.nanmean(recall_at(relevant[users], s))),
            "rare_dcg": float(dcg_at(g, s, truth.rare).mean())}


def item_rate_dcg(truth: Truth, clicks: np.ndarray, weight: np.ndarray, trained: np.ndarray, users: np.ndarray
                  ) -> float:
    """Mean DCG@5 of the evaluated ``users`` ranking items by ``sum(y * w) / n`` over the trained pairs."""
    seen = trained.sum(0)
    rate = (clicks * weight * trained).sum(0) / np.maximum(seen, 1)
    return float(dcg_at(truth.gamma[users], np.broadcast_to(rate, (len(users), rate.size))).mean())
