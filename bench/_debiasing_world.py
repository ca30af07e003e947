"""The Rel-MF semi-synthetic world on MovieLens-100K (docs/methods.md §3).

- relevance: a low-rank fit of the observed ratings (ALS), predicted for every
  user-item pair, ``gamma = sigmoid(clip(r_hat, 1, 5) - 5)``;
- exposure: a logistic matrix factorisation of "was rated" over every pair,
  ``theta = sigmoid(o_hat) ** p``;
- clicks: ``Y = O * R`` with ``O ~ Bernoulli(theta)`` and ``R ~ Bernoulli(gamma)``.

Both fits depend only on the data (fixed seed), so every method and seed of a
run sees the same truth; a seed draws the clicks and the training subsample.

Metrics, the authors' evaluation (Rel-MF's code: the test set is the unclicked
pairs): each evaluated user's **positives** are the pairs relevant in the same
draw of ``R`` that made the clicks but not clicked (``R = 1, Y = 0``: relevant
items the log never showed, or showed without a click); they are ranked among
``NEGATIVES`` (100) items drawn from the user's irrelevant ones (``R = 0``).
``DCG@5 = sum_k rel_(k) / log2(k + 1)`` over the top 5 (binary gains; the
authors' code also divides it by the user's number of positives, which with
~300 positives per user against 100 negatives squeezes every model into
0.009-0.010), ``recall@5`` = positives in the top 5 / positives, rare-item
DCG@5 = the same with positives and negatives among the rare items only (the
half of the catalogue with the fewest ratings); users without a positive are
left out. So the figure asks what a recommender
is for: which of the items the user has not clicked to show next.

`gamma_dcg` is the full-catalogue figure: DCG@5 of ranking every item (clicked
ones included) with the true relevance ``gamma`` as the gain.

`item_rate_dcg` is the data's own ceiling for a method's weights, no model: DCG@5 (the
authors' test set) of ranking by the item's weighted click rate on the trained pairs
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
NEGATIVES = 100


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


def dcg_at(gain: np.ndarray, scores: np.ndarray, k: int = K) -> np.ndarray:
    """Per-user DCG@k of ranking every item by ``scores``, ``gain`` as the gain."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    return (np.take_along_axis(gain, top, axis=1) * disc).sum(1)


@dataclass(frozen=True)
class Judged:
    """The authors' test set of the evaluated users: ``positive`` (``R = 1, Y = 0``) and
    ``candidate`` (the positives plus the sampled negatives), bool [users, items]."""

    positive: np.ndarray
    candidate: np.ndarray


def judged(relevance: np.ndarray, clicks: np.ndarray, rng: np.random.Generator, negatives: int = NEGATIVES,
           within: np.ndarray | None = None) -> Judged:
    """The test set from the draw of ``R`` (``relevance``) that made ``clicks`` ([users,
    items] of the evaluated users): ``negatives`` random irrelevant items per user, among the
    items of ``within`` (bool [items]) when given."""
    allowed = np.ones(relevance.shape[1], dtype=bool) if within is None else within
    positive = relevance & ~clicks & allowed[None, :]
    keys = rng.random(relevance.shape)
    keys[relevance | ~allowed[None, :]] = np.inf
    order = np.argsort(keys, axis=1, kind="stable")[:, :negatives]
    negative = np.zeros_like(relevance)
    np.put_along_axis(negative, order, np.take_along_axis(np.isfinite(keys), order, axis=1), axis=1)
    return Judged(positive, positive | negative)


def ranking_figures(scores: np.ndarray, test: Judged, k: int = K) -> tuple[float, float]:
    """(DCG@k, recall@k) of ranking each user's candidates by ``scores``, means over the users
    with a positive."""
    s = np.where(test.candidate, scores, -np.inf)
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    hit = np.take_along_axis(test.positive, top, axis=1)
    n = test.positive.sum(1)
    users = n > 0
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    return (float((hit * disc).sum(1)[users].mean()),
            float((hit.sum(1)[users] / n[users]).mean()))


def metrics(truth: Truth, scores: np.ndarray, test: Judged, rare_test: Judged, users: np.ndarray
            ) -> dict[str, float]:
    """The figures of one model: ``scores`` [evaluated users, items]."""
    dcg, recall = ranking_figures(scores, test)
    return {"dcg": dcg, "recall": recall, "rare_dcg": ranking_figures(scores, rare_test)[0],
            "gamma_dcg": float(dcg_at(truth.gamma[users], scores).mean())}


def item_rate_dcg(clicks: np.ndarray, weight: np.ndarray, trained: np.ndarray, test: Judged, k: int = K
                  ) -> float:
    """DCG@k on ``test`` (the evaluated users') of ranking items by ``sum(y * w) / n`` over the
    trained pairs."""
    seen = trained.sum(0)
    rate = (clicks * weight * trained).sum(0) / np.maximum(seen, 1)
    return ranking_figures(np.broadcast_to(rate, test.positive.shape), test, k)[0]
