"""Ranking figures shared by the trainer's gate, the demo and the benchmarks (numpy only).

- `grouped_auc`: the ROC AUC of every group at once (the Mann-Whitney rank
  formula): one lexsort by (group, score), average ranks inside tie blocks, so a
  tied positive/negative pair counts one half, and per-group sums with
  `np.bincount`.
- `auc`: one group.
- `gauc`: the per-group (per-user) AUCs averaged with each group's row count as
  its weight, as in the ReLoop2 / DIN evaluations; groups without a defined AUC
  are skipped.
- `paired_auc`: the AUCs of two scorers on the same labels and the DeLong
  standard error of their difference (the trainer's gate against the static model).
- `paired_call_auc`: the same comparison within calls (a (positive, negative)
  pair counts only when both were candidates of one call), with a standard error
  across calls (the online guards: inference's delta guard and the trainer's
  production watchdog). A scorer whose scores move up or down over time (deltas as
  they learn, a new version's calibration) ranks each call as well as before, but
  its pooled AUC over a window of calls falls: pooled, it is judged on the drift.
  `judge_auc` takes it when enough calls hold both classes, else the pooled one
  (calls of one candidate each: nothing to rank within a call).

A label above 0.5 is a positive. An AUC is undefined, and NaN, for a group
without both classes (and for a group holding a NaN score); `gauc` is NaN when
no group has a defined AUC.

>>> import numpy as np
>>> y = np.array([0, 0, 1, 1]); p = np.array([0.1, 0.4, 0.35, 0.8])
>>> auc(y, p)  # 3 of the 4 (positive, negative) pairs are ordered right
0.75
>>> auc(np.array([0, 1]), np.array([0.5, 0.5]))  # a tie counts one half
0.5
>>> auc(np.array([1, 1]), np.array([0.2, 0.7]))  # one class: undefined
nan
>>> gauc(y, p, np.array([1, 2, 1, 2]))  # each user's own pair is ordered right
1.0
>>> gauc(np.array([1, 0, 1, 1]), np.array([0.9, 0.1, 0.2, 0.3]), np.array(["a", "a", "b", "b"]))
1.0
"""

from __future__ import annotations

import numpy as np


def grouped_auc(label: np.ndarray, score: np.ndarray, group: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(AUC per group, rows per group, whether a group has both classes), groups in the
    sorted order of ``np.unique(group)``; a group's AUC is NaN without both classes or
    with a NaN score.

    >>> per, rows, both = grouped_auc(np.array([0, 1, 1, 1, 0]), np.array([.1, .2, .3, .4, .5]),
    ...                               np.array([7, 7, 3, 3, 7]))
    >>> per.tolist(), rows.tolist(), both.tolist()
    ([nan, 0.5], [2, 3], [False, True])
    """
    y = np.asarray(label).reshape(-1) > 0.5
    score = np.asarray(score, dtype=np.float64).reshape(-1)
    _, gid = np.unique(np.asarray(group).reshape(-1), return_inverse=True)
    gid = gid.reshape(-1)
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
    out[~both | (np.bincount(g, weights=np.isnan(s), minlength=groups) > 0)] = np.nan
    return out, rows, both


def auc(label: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC with tied scores counted half (NaN without both classes).

    >>> auc(np.array([1, 0, 1]), np.array([0.9, 0.5, 0.2]))
    0.5
    """
    y = np.asarray(label).reshape(-1)
    if not len(y):
        return float("nan")
    return float(grouped_auc(y, score, np.zeros(len(y), dtype=np.int64))[0][0])


def gauc(label: np.ndarray, score: np.ndarray, group: np.ndarray) -> float:
    """Per-group AUC averaged over the groups where it is defined, weighted by their rows
    (NaN when it is defined for none).

    >>> y = np.array([1, 0, 0, 0, 1, 0, 1, 1]); s = np.array([.9, .1, .2, .3, .1, .5, .4, .6])
    >>> gauc(y, s, np.array(list("aabbbbcc")))  # a: 1.0 on 2 rows, b: 0.0 on 4, c: one class
    0.3333333333333333
    """
    per, rows, _ = grouped_auc(label, score, group)
    defined = ~np.isnan(per)
    if not defined.any():
        return float("nan")
    return float(np.average(per[defined], weights=rows[defined]))


def _placements(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's placement values: for each positive the share of negatives it beats (ties
    half), for each negative the share of positives that beat it."""
    sn, sp = np.sort(neg), np.sort(pos)
    v10 = (np.searchsorted(sn, pos, "left") + np.searchsorted(sn, pos, "right")) / (2.0 * len(neg))
    v01 = (2 * len(pos) - np.searchsorted(sp, neg, "left") - np.searchsorted(sp, neg, "right")) / (2.0 * len(pos))
    return v10, v01


def paired_auc(label: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """AUC of scores ``a`` and ``b`` on the same labels (bool), and the standard error of
    ``auc(b) - auc(a)`` (DeLong, DeLong & Clarke-Pearson 1988); NaNs without two of each class.

    >>> y = np.array([False, False, True, True]); a = np.array([.1, .4, .35, .8])
    >>> tuple(round(v, 4) for v in paired_auc(y, a, a))
    (0.75, 0.75, 0.0)
    """
    m, n = int(label.sum()), int((~label).sum())
    if m < 2 or n < 2:
        return float("nan"), float("nan"), float("nan")
    va10, va01 = _placements(a[label], a[~label])
    vb10, vb01 = _placements(b[label], b[~label])
    d10, d01 = vb10 - va10, vb01 - va01
    var = d10.var(ddof=1) / m + d01.var(ddof=1) / n
    return float(va10.mean()), float(vb10.mean()), float(np.sqrt(max(var, 0.0)))


def paired_call_auc(label: np.ndarray, a: np.ndarray, b: np.ndarray, call: np.ndarray, min_calls: int = 2
                    ) -> tuple[float, float, float]:
    """Within-call AUCs of scores ``a`` and ``b`` on the same labels (bool): each call's AUC
    weighted by its (positive, negative) pairs, so each is the share of a call's pairs ordered
    right; and the standard error of the difference ``b - a`` across calls (each call's
    difference, with its weight, as one cluster); NaNs with fewer than ``min_calls`` (at least
    2) calls holding both classes.

    >>> y = np.array([1, 0, 0, 1, 0, 0], dtype=bool); call = np.array([1, 1, 1, 2, 2, 2])
    >>> drift = np.array([.3, .2, .1, .9, .8, .7])  # each call ranked right, the second all higher
    >>> paired_call_auc(y, drift, drift, call)[:2], round(paired_auc(y, drift, drift)[1], 4)
    ((1.0, 1.0), 0.75)
    """
    a_per, _, both = grouped_auc(label, a, call)
    b_per, _, _ = grouped_auc(label, b, call)
    y = np.asarray(label).reshape(-1) > 0.5
    _, gid = np.unique(np.asarray(call).reshape(-1), return_inverse=True)
    npos = np.bincount(gid.reshape(-1), weights=y, minlength=len(both))
    nneg = np.bincount(gid.reshape(-1), weights=~y, minlength=len(both))
    ok = both & np.isfinite(a_per) & np.isfinite(b_per)
    if int(ok.sum()) < max(2, min_calls):
        return float("nan"), float("nan"), float("nan")
    w = (npos * nneg)[ok]
    total = w.sum()
    auc_a, auc_b = float(w @ a_per[ok] / total), float(w @ b_per[ok] / total)
    d = b_per[ok] - a_per[ok]
    g = len(w)
    var = float((w * w) @ (d - (auc_b - auc_a)) ** 2) / total ** 2 * g / (g - 1)
    return auc_a, auc_b, float(np.sqrt(max(var, 0.0)))


def judge_auc(label: np.ndarray, a: np.ndarray, b: np.ndarray, call: np.ndarray, min_calls: int = 10
              ) -> tuple[float, float, float, str]:
    """`paired_call_auc` when at least ``min_calls`` calls hold both classes, else `paired_auc`
    on the rows pooled; and which one ("calls" or "pooled").

    >>> y = np.array([1, 0, 1, 0], dtype=bool); s = np.array([.9, .1, .8, .2])
    >>> judge_auc(y, s, s, np.arange(4))[3], judge_auc(y, s, s, np.array([1, 1, 2, 2]), min_calls=2)[3]
    ('pooled', 'calls')
    """
    y = np.asarray(label).reshape(-1) > 0.5
    within = paired_call_auc(y, a, b, call, min_calls)
    if np.isfinite(within[0]):
        return (*within, "calls")
    return (*paired_auc(y, np.asarray(a, np.float64), np.asarray(b, np.float64)), "pooled")
