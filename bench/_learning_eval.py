"""Progressive (score-then-learn) evaluation: AUC, gAUC, AUC per time bucket; vectorised.

Every learner's score of a row is the one it gave *before* learning that row's
label, so AUC over a stream is a progressive (prequential) AUC.

- `grouped_auc`: the Mann-Whitney AUC of each group at once (ties count 1/2):
  one lexsort by (group, score), average ranks inside tie blocks, and per-group
  sums with `np.bincount`. NaN for a group without both classes.
- `auc`: one group. `gauc`: the per-user AUCs averaged over users with both
  classes, weighted by their rows (impressions), as in the ReLoop2 / DIN
  evaluations. `bucket_auc`: AUC of each time bucket.
"""

from __future__ import annotations

import numpy as np


def grouped_auc(y: np.ndarray, score: np.ndarray, group: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(AUC per group, rows per group, whether a group has both classes), groups in sorted order
    of ``np.unique(group)``."""
    y = np.asarray(y).reshape(-1) > 0
    score = np.asarray(score, dtype=np.float64).reshape(-1)
    _, gid = np.unique(np.asarray(group).reshape(-1), return_inverse=True)
    n = len(y)
    if n == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    order = np.lexsort((score, gid))
    g, s, yy = gid[order], score[order], y[order]
    pos = np.arange(n)
    new_group = np.r_[True, g[1:] != g[:-1]]
    new_block = new_group | np.r_[True, s[1:] != s[:-1]]
    starts = pos[new_block]
    ends = np.r_[starts[1:], n]
    block = np.cumsum(new_block) - 1
    mid = (starts + ends - 1) / 2.0  # average 0-based position of each tie block
    group_start = np.maximum.accumulate(np.where(new_group, pos, 0))
    rank = mid[block] - group_start + 1.0  # 1-based average rank inside the group
    groups = int(g.max()) + 1
    rows = np.bincount(g, minlength=groups)
    npos = np.bincount(g, weights=yy, minlength=groups)
    nneg = rows - npos
    rank_pos = np.bincount(g, weights=rank * yy, minlength=groups)
    both = (npos > 0) & (nneg > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (rank_pos - npos * (npos + 1) / 2.0) / (npos * nneg)
    out[~both] = np.nan
    return out, rows, both


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC (NaN without both classes)."""
    y = np.asarray(y).reshape(-1)
    return float(grouped_auc(y, score, np.zeros(len(y), dtype=np.int64))[0][0]) if len(y) else float("nan")


def gauc(y: np.ndarray, score: np.ndarray, group: np.ndarray) -> float:
    """Per-group AUC averaged over groups with both classes, weighted by their rows."""
    per, rows, both = grouped_auc(y, score, group)
    if not both.any():
        return float("nan")
    return float(np.average(per[both], weights=rows[both]))


def bucket_ids(n_requests: int, k: int, buckets: int) -> np.ndarray:
    """(n_requests * k,) bucket of each row: requests cut into ``buckets`` equal runs."""
    per_request = np.minimum(np.arange(n_requests) * buckets // max(n_requests, 1), buckets - 1)
    return np.repeat(per_request, k)


def bucket_auc(y: np.ndarray, score: np.ndarray, bucket: np.ndarray, buckets: int) -> np.ndarray:
    """AUC of each bucket 0..buckets-1 (NaN for an empty or one-class bucket)."""
    per, _, _ = grouped_auc(y, score, bucket)
    out = np.full(buckets, np.nan)
    out[np.unique(bucket)] = per
    return out


def summarize(y: np.ndarray, score: np.ndarray, users: np.ndarray, requests: np.ndarray,
              bucket: np.ndarray, buckets: int, rows: slice | None = None) -> dict[str, object]:
    """AUC, gAUC (per user), request AUC (per request: where the click landed) and the
    bucket curve of one learner's progressive scores (NaN rows, i.e. unscored, dropped)."""
    if rows is not None:
        y, score, users, requests, bucket = y[rows], score[rows], users[rows], requests[rows], bucket[rows]
    ok = np.isfinite(score)
    y, score, users, requests, bucket = y[ok], score[ok], users[ok], requests[ok], bucket[ok]
    return {"auc": auc(y, score), "gauc": gauc(y, score, users), "request_auc": gauc(y, score, requests),
            "curve": bucket_auc(y, score, bucket, buckets).tolist(), "scored": int(ok.sum())}
