"""The ReLoop2 compensation (docs/methods.md §1), shared by the sketch and the kNN reference.

A read yields, per candidate, ``m`` neighbours (the sketch: one bucket per
array; the kNN: the top-k entries), each with a similarity ``s``, a count
``c``, a sum of labels and a sum of the served predictions. With weights
``a = softmax(s / tau)`` over the ``m`` neighbours and a pseudo-count
``prior`` (0 is the paper's estimate; more shrinks a thin neighbour toward no
correction):

    y_err = sum_k a_k [gamma (sum_y_k - c_k p_base) + (1 - gamma)(sum_y_k - sum_yb_k)] / (c_k + prior)
    p     = clamp(p_base + lambda * y_err, 0, 1)

With ``prior = 0`` and ``c_k = 1`` that is the paper's
``gamma (y_bar - p_base) + (1 - gamma)(y_bar - y_bar_base)``. An empty
neighbour (``c_k = 0``: a sketch bucket nothing fell in) keeps its weight and
adds no error: evidence of nothing. So a key that shares a bucket with
written errors in only a few of the K arrays (a chance collision) moves
little, and one that shares buckets in all of them moves fully.
``lambda = 0``, no neighbour holding anything, or labels equal to the
predictions leave ``p_base``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Params:
    """Compensation parameters of one model's memory."""

    lam: float = 0.5
    tau: float = 1.0
    gamma: float = 1.0
    prior: float = 1.0


@dataclass(frozen=True)
class Neighbours:
    """[n, m] arrays: similarity, count, sum of labels, sum of served predictions."""

    sim: np.ndarray
    count: np.ndarray
    sum_y: np.ndarray
    sum_pred: np.ndarray


def error(p_base: np.ndarray, nb: Neighbours, params: Params) -> np.ndarray:
    """``y_err`` per candidate (0 where no neighbour holds anything)."""
    w = np.exp((nb.sim - nb.sim.max(axis=1, keepdims=True)) / params.tau)
    p = p_base.reshape(-1, 1)
    per = nb.sum_y - nb.count * p if params.gamma == 1.0 else (
        params.gamma * (nb.sum_y - nb.count * p) + (1.0 - params.gamma) * (nb.sum_y - nb.sum_pred))
    # an empty neighbour (count 0) has per = 0; the floor only keeps 0 / 0 out
    per /= np.maximum(nb.count + params.prior, 1e-12)
    return (w * per).sum(axis=1) / w.sum(axis=1)


def compensate(p_base: np.ndarray, nb: Neighbours, params: Params) -> np.ndarray:
    """``clamp(p_base + lambda * y_err, 0, 1)``, float32 like the model's output."""
    p = np.asarray(p_base, dtype=np.float32).reshape(-1)
    if params.lam == 0.0:
        return p
    return np.clip(p + np.float32(params.lam) * error(p, nb, params), 0.0, 1.0).astype(np.float32)
