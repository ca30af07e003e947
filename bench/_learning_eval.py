"""Progressive (score-then-learn) evaluation: AUC, gAUC, AUC per time bucket; vectorised.

Every learner's score of a row is the one it gave *before* learning that row's
label, so AUC over a stream is a progressive (prequential) AUC. The AUC and gAUC
are `loopwise.ranking_metrics`' (the trainer's gate and the demo use the same);
`bucket_auc` is the AUC of each time bucket.
"""

from __future__ import annotations

import numpy as np

from loopwise.ranking_metrics import auc, gauc, grouped_auc


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
