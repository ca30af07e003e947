"""Tuning the error memory of bench/error_memory.py on a prefix of the stream only.

The prefix (``--tune-fraction`` of the requests, the first 10% by default:
the span the cold-start model serves before the first retrain, and the
prefix bench/learning.py tunes its peers on) is scored in-process with the
cold-start ONNX model: its hidden layer, the memory's key, hashed as it
travels (int8, `canonical`), and its probability, or (``served``, what
bench/error_memory.py passes) the probability the stack would serve: the
model plus the trainer's sparse deltas learnt on the prefix as it goes
(`_learning_inprocess.run_inprocess`). The memory corrects what serves: tuned
on the bare model, it learnt to do what the deltas already do and, on top of
them, over-corrected (see bench/error_memory.py). The inference service's own
memory (`loopwise.inference.memory`: `Sketch` and `compensate`) then replays
it progressively for each point of a grid over K, L, lambda and tau (and
gamma: 1, the paper's, pulls a prediction toward its neighbours' labels; 0
shifts it by their mean error, which keeps the model's ranking inside a
coarse bucket):
each block of ``BLOCK`` requests is read (compensated) before it is written,
the negatives ``lag`` requests later (the miner's window) and a click's error
at once or, with ``settle`` (the service's ``settle_s``, `memory/fresh.py`),
with its request's negatives (its effect on its own exact key in between is
not modelled: a replayed request never repeats its exact key).

Two stages, both on the prefix: first the exact (user, item) table alone
(`memory/pairs.py`: ``pair_lambda`` x ``pair_prior`` x ``pair_at_rank``, the
sketch's lambda 0; a click at once, the negatives ``lag`` requests later or,
with ``pair_at_rank``, each pair as shown at once), then the sketch's
grid with that table on. Every point replays the whole prefix; each stage's
point is the one with the best gAUC over the prefix's first half, and the
sketch is kept (its lambda above 0) only when it also beats the table alone
over the second half, which chose nothing. Nothing after the prefix is
looked at.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from _learning_stream import Stream

from loopwise.modelstore.contract import HIDDEN_OUTPUT, PROB_OUTPUT, feeds
from loopwise.ranking_metrics import gauc

GRID = {"k": (16, 32, 64), "bits": (8, 10, 12, 14), "lam": (0.1, 0.25, 0.5, 1.0), "tau": (0.1, 0.5, 1.0),
        "gamma": (1.0, 0.0)}
QUICK_GRID = {"k": (16, 32, 64), "bits": (8, 10, 12), "lam": (0.1, 0.25, 0.5, 1.0), "tau": (0.1, 0.5),
              "gamma": (1.0, 0.0)}
PAIR_GRID = {"pair_lam": (0.0, 0.25, 0.5, 1.0), "pair_prior": (0.0, 0.5, 1.0), "pair_at_rank": (False, True)}
BLOCK = 10  # requests read together before their labels are written
LAG = 100  # requests between a request and its negatives (2 s window at ~50 requests/s)


@dataclass(frozen=True)
class Tuned:
    k: int
    bits: int
    lam: float
    tau: float
    gamma: float
    pair_lam: float
    pair_prior: float
    pair_at_rank: bool
    gauc_base: float
    gauc_memory: float
    grid: list[dict[str, float]]
    rows: int

    def describe(self) -> str:
        return (f"K={self.k} L={self.bits} lambda={self.lam} tau={self.tau} gamma={self.gamma} "
                f"pair_lambda={self.pair_lam} pair_prior={self.pair_prior} pair_at_rank={self.pair_at_rank}: prefix gAUC {self.gauc_base:.4f} -> "
                f"{self.gauc_memory:.4f} ({len(self.grid)} points, {self.rows} rows)")


def score_with_keys(artifact: bytes, sparse: np.ndarray, dense: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The model's probability [n] and hidden layer [n, dim] (hashed as an impression carries it)."""
    import onnxruntime as ort

    from loopwise.inference.memory.sketch import canonical

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(artifact, options, providers=["CPUExecutionProvider"])
    prob, hidden = session.run([PROB_OUTPUT, HIDDEN_OUTPUT], feeds(sparse.astype(np.int64), dense.astype(np.float32)))
    return np.asarray(prob, dtype=np.float64), canonical(np.asarray(hidden, dtype=np.float32))


def replay(prob: np.ndarray, keys: np.ndarray, y: np.ndarray, k_rows: int, *, k: int, bits: int, lam: float,
           tau: float, gamma: float = 1.0, lag: int = LAG, seed: int = 0, settle: bool = False,
           pairs: tuple[np.ndarray, np.ndarray] | None = None, pair_lam: float = 0.0, pair_prior: float = 1.0,
           pair_at_rank: bool = False) -> np.ndarray:
    """Progressive compensated scores of ``prob`` (rows request-major, ``k_rows`` per request);
    ``pairs`` (user, item id per row) and ``pair_lam`` > 0: with the exact (user, item) table, its
    negatives ``lag`` requests later, or with ``pair_at_rank`` each pair as shown right after its
    block is read (then its click; the replica that answered, `ModelMemory.shown`)."""
    from loopwise.inference.memory.compensate import Params, compensate
    from loopwise.inference.memory.pairs import PairTable
    from loopwise.inference.memory.sketch import Sketch

    memory = Sketch(keys.shape[1], k=k, bits=bits, seed=seed)
    params = Params(lam=lam, tau=tau, gamma=gamma)
    table = PairTable(seed=seed) if pairs is not None and pair_lam > 0 else None
    pair_params = Params(lam=pair_lam, gamma=1.0, prior=pair_prior)
    pair_keys = table.keys(*pairs) if table is not None and pairs is not None else None
    n = len(prob) // k_rows
    out = np.empty_like(prob)
    written_neg = 0  # requests whose negatives are in memory
    for a in range(0, n, BLOCK):
        b = min(a + BLOCK, n)
        rows = slice(a * k_rows, b * k_rows)
        out[rows] = compensate(prob[rows], memory.read(keys[rows]), params) if lam > 0 else prob[rows]
        pos = np.flatnonzero(y[rows] > 0) + a * k_rows
        if table is not None and pair_keys is not None:
            out[rows] = np.clip(out[rows] + pair_lam * table.error(pair_keys[rows], prob[rows], pair_params), 0, 1)
            if pair_at_rank:  # shown, unclicked, then the click at once: the final label at once
                table.write(pair_keys[rows], y[rows], prob[rows])
            else:
                table.write(pair_keys[pos], y[pos], prob[pos])  # a click: into its pair at once
        if len(pos) and not settle:
            memory.write(keys[pos], y[pos], prob[pos])
        due = max(b - lag, 0)
        if due > written_neg:
            span = slice(written_neg * k_rows, due * k_rows)
            # the window's negatives (and, with settle, its clicks)
            late = np.arange(span.start, span.stop) if settle else np.flatnonzero(y[span] <= 0) + span.start
            memory.write(keys[late], y[late], prob[late])
            if table is not None and pair_keys is not None and not pair_at_rank:
                neg = np.flatnonzero(y[span] <= 0) + span.start
                table.write(pair_keys[neg], y[neg], prob[neg])
            written_neg = due
    return out


def row_items(stream: Stream, rows: slice) -> np.ndarray:
    """The candidate id of each row in ``rows`` (request-major)."""
    ids = np.asarray(stream.data.item_ids, dtype=np.str_)
    return ids[stream.cand.reshape(-1)[rows]]


def tune(stream: Stream, parent: bytes, prefix: int, quick: bool = False, settle: bool = False,
         say: Callable[[str], None] = print, served: np.ndarray | None = None) -> Tuned:
    """The grid point with the best progressive gAUC on the first ``prefix`` requests;
    ``served``: the base probabilities of those rows as served (the model plus its sparse
    deltas), else the cold-start model's own."""
    assert stream.sparse is not None and stream.dense is not None
    k_rows = stream.k
    rows = slice(0, prefix * k_rows)
    prob, keys = score_with_keys(parent, stream.sparse[rows], stream.dense[rows])
    if served is not None:
        prob = np.asarray(served[rows], dtype=prob.dtype)
    y = stream.label.reshape(-1)[rows]
    users = stream.row_users()[rows]
    base = gauc(y, prob, users)
    pairs = (users.astype(np.str_), row_items(stream, rows))
    half = (prefix // 2) * k_rows

    def scored(comp: np.ndarray) -> dict[str, float]:
        """gAUC over the prefix, its first half (where points are chosen) and its second (where
        the sketch must confirm its gain over the table alone)."""
        return {"gauc": round(float(gauc(y, comp, users)), 5),
                "gauc_first": round(float(gauc(y[:half], comp[:half], users[:half])), 5),
                "gauc_second": round(float(gauc(y[half:], comp[half:], users[half:])), 5)}

    results = []
    for pair_lam, pair_prior, at_rank in itertools.product(*PAIR_GRID.values()):
        comp = replay(prob, keys, y, k_rows, k=1, bits=1, lam=0.0, tau=1.0, pairs=pairs, pair_lam=pair_lam,
                      pair_prior=pair_prior, pair_at_rank=at_rank)
        results.append({"pair_lam": pair_lam, "pair_prior": pair_prior, "pair_at_rank": at_rank, "lam": 0.0,
                        **scored(comp)})
    pair = max(results, key=lambda r: r["gauc_first"])
    grid = QUICK_GRID if quick else GRID
    for k, bits, lam, tau, gamma in itertools.product(*grid.values()):
        comp = replay(prob, keys, y, k_rows, k=k, bits=bits, lam=lam, tau=tau, gamma=gamma, settle=settle,
                      pairs=pairs, pair_lam=pair["pair_lam"], pair_prior=pair["pair_prior"],
                      pair_at_rank=pair["pair_at_rank"])
        results.append({"k": k, "bits": bits, "lam": lam, "tau": tau, "gamma": gamma, "pair_lam": pair["pair_lam"],
                        "pair_prior": pair["pair_prior"], "pair_at_rank": pair["pair_at_rank"], **scored(comp)})
    sketch = max((r for r in results if r["lam"] > 0), key=lambda r: r["gauc_first"])
    best = sketch if sketch["gauc_second"] > pair["gauc_second"] else pair
    if best["lam"] == 0.0:  # the sketch did not confirm its gain: the sketch's defaults, lambda 0
        best = {**best, "k": 32, "bits": 12, "tau": 1.0, "gamma": 1.0}
    tuned = Tuned(k=int(best["k"]), bits=int(best["bits"]), lam=float(best["lam"]), tau=float(best["tau"]),
                  gamma=float(best["gamma"]), pair_lam=float(best["pair_lam"]), pair_prior=float(best["pair_prior"]),
                  pair_at_rank=bool(best["pair_at_rank"]),
                  gauc_base=float(base), gauc_memory=float(best["gauc"]), grid=results, rows=len(y))
    say(f"memory tuned on the first {prefix} requests: {tuned.describe()}")
    return tuned
