"""An absorbing Markov chain of reformulations, pooled across all users of a tenant.

States are chain keys (`TurnRecord.state`: the interpretation when reported,
else the normalised utterance) plus two absorbing states, SUCCESS and FAILURE.
Each turn of a closed session adds one transition: to the next turn's state
when the next turn rephrases it, else to SUCCESS (no defect) or FAILURE.

Weights decay exponentially with event time (``half_life_ms``). They are kept
as *forward-decayed* sums (each observation weighs ``2**((t - t0)/h)``), so
transition probabilities, which are ratios within a row, never need the
current time; ``t0`` is moved forward when the exponent grows large.

Each edge keeps a bounded sketch of its distinct users (the ``k`` smallest
user hashes, a KMV sketch: exact below ``k``, an estimate above), so one
user's burst counts as one.

`solve` computes absorption probabilities ``B = (I - Q)^-1 R`` with a sparse
LU (`scipy.sparse.linalg.spsolve`) on the weakly connected components touched
since the previous solve only; the touched components form one block-diagonal
system, so this is the same as solving each component on its own. At most
``max_states`` transient states are kept: beyond it the least (decayed) weight
states are evicted with their edges (down to ``evict_to`` of the bound).

>>> c = Chain()
>>> c.add("a", "SUCCESS", user="u1", time_ms=0)
>>> c.add("b", "a", user="u1", time_ms=0)
>>> _ = c.solve()
>>> round(c.success("b"), 3)
1.0
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph
from scipy.sparse.linalg import spsolve

from loopwise.text import normalize

from .defects import DefectKind
from .sessions import TurnRecord

SUCCESS, FAILURE = "SUCCESS", "FAILURE"
_ABSORBING = {SUCCESS: -1, FAILURE: -2}
_REBASE_EXP = 64.0  # move t0 when an observation would weigh more than 2**64
_HASH_SCALE = float(2**52)


def user_hash(user: str) -> int:
    """A 52-bit hash of a user id (JSON-safe, stable across processes)."""
    return int.from_bytes(hashlib.blake2b(user.encode(), digest_size=8).digest(), "big") >> 12


def sketch_add(sketch: list[int], h: int, k: int) -> None:
    """Insert ``h`` into the sorted KMV sketch (the ``k`` smallest distinct hashes)."""
    if h in sketch:
        return
    if len(sketch) < k:
        sketch.append(h)
        sketch.sort()
    elif h < sketch[-1]:
        sketch[-1] = h
        sketch.sort()


def sketch_count(sketch: Sequence[int], k: int) -> float:
    """Distinct users behind a KMV sketch: exact below ``k``, else ``(k-1)/h_k``."""
    if len(sketch) < k:
        return float(len(sketch))
    return (k - 1) / ((sketch[-1] + 1) / _HASH_SCALE)


@dataclass(frozen=True)
class ChainConfig:
    half_life_ms: int = 14 * 24 * 3600 * 1000
    max_states: int = 100_000
    evict_to: float = 0.9
    max_forms: int = 8  # surface forms kept per state
    sketch_k: int = 16


class Chain:
    """Transition weights, user sketches and absorption probabilities; see the module docstring."""

    def __init__(self, config: ChainConfig = ChainConfig()) -> None:
        self.config = config
        self.t0_ms: int | None = None
        self.keys: list[str | None] = []
        self.index: dict[str, int] = {}
        self._free: list[int] = []
        self.state_w = np.zeros(0)  # forward-decayed observations per state
        self.turns = np.zeros(0, dtype=np.int64)  # raw turns observed per state
        self.successes = np.zeros(0, dtype=np.int64)  # raw turns absorbed in SUCCESS directly
        self.forms: list[dict[str, list[float]]] = []  # text -> [weight, success weight]
        self.edge_index: dict[tuple[int, int], int] = {}
        self._src = np.zeros(0, dtype=np.int64)  # edge arrays with spare capacity; n_edges used
        self._dst = np.zeros(0, dtype=np.int64)
        self._w = np.zeros(0)
        self._users = np.zeros(0)  # distinct users per edge (sketch_count of its sketch)
        self.n_edges = 0
        self.sketches: list[list[int]] = []
        self.dirty: set[int] = set()
        self.p_success = np.zeros(0)  # absorption probabilities, valid after solve
        self.p_failure = np.zeros(0)
        self.p_direct = np.zeros(0)  # one-step probability of SUCCESS (the turn itself worked)

    @property
    def e_src(self) -> np.ndarray:
        return self._src[:self.n_edges]

    @property
    def e_dst(self) -> np.ndarray:
        return self._dst[:self.n_edges]

    @property
    def e_w(self) -> np.ndarray:
        return self._w[:self.n_edges]

    @property
    def e_users(self) -> np.ndarray:
        return self._users[:self.n_edges]

    def _set_edges(self, src: np.ndarray, dst: np.ndarray, w: np.ndarray) -> None:
        """Replace the edge arrays (``sketches`` must already match them)."""
        self._src, self._dst, self._w = (np.array(src, dtype=np.int64), np.array(dst, dtype=np.int64),
                                         np.array(w, dtype=np.float64))
        k = self.config.sketch_k
        self._users = np.array([sketch_count(sk, k) for sk in self.sketches], dtype=np.float64)
        self.n_edges = len(self._src)
        self.edge_index = {(s, d): i for i, (s, d) in enumerate(zip(self._src.tolist(), self._dst.tolist(),
                                                                        strict=True))}

    # -- time -----------------------------------------------------------------------
    def _factor(self, time_ms: int) -> float:
        if self.t0_ms is None:
            self.t0_ms = int(time_ms)
        exp = (time_ms - self.t0_ms) / self.config.half_life_ms
        if exp > _REBASE_EXP:
            scale = 2.0 ** -exp
            self.state_w *= scale
            self._w *= scale
            for forms in self.forms:
                for v in forms.values():
                    v[0] *= scale
                    v[1] *= scale
            self.t0_ms, exp = int(time_ms), 0.0
        return 2.0 ** exp

    # -- states and edges -----------------------------------------------------------------
    def _state(self, key: str) -> int:
        idx = self.index.get(key)
        if idx is not None:
            return idx
        if self._free:
            idx = self._free.pop()
            self.keys[idx] = key
        else:
            idx = len(self.keys)
            self.keys.append(key)
            self.forms.append({})
            grow = max(16, 2 * len(self.state_w)) if idx >= len(self.state_w) else 0
            if grow:
                for name in ("state_w", "p_success", "p_failure", "p_direct"):
                    arr = getattr(self, name)
                    setattr(self, name, np.concatenate([arr, np.zeros(grow - len(arr))]))
                for name in ("turns", "successes"):
                    arr = getattr(self, name)
                    setattr(self, name, np.concatenate([arr, np.zeros(grow - len(arr), dtype=np.int64)]))
        self.index[key] = idx
        self.state_w[idx] = 0.0
        self.turns[idx] = self.successes[idx] = 0
        self.p_success[idx] = self.p_failure[idx] = self.p_direct[idx] = 0.0
        self.forms[idx] = {}
        return idx

    def add(self, src: str, dst: str, *, user: str, time_ms: int, form: str | None = None) -> None:
        """One transition ``src -> dst`` (a state key, or SUCCESS / FAILURE) by ``user`` at ``time_ms``;
        ``form`` is the normalised text the source turn had (defaults to ``src``)."""
        w = self._factor(time_ms)
        s = self._state(src)
        d = _ABSORBING.get(dst)
        if d is None:
            d = self._state(dst)
            self.dirty.add(d)
        self.dirty.add(s)
        self.state_w[s] += w
        self.turns[s] += 1
        ok = dst == SUCCESS
        self.successes[s] += ok
        forms = self.forms[s]
        entry = forms.setdefault(form or src, [0.0, 0.0])
        entry[0] += w
        entry[1] += w * ok
        if len(forms) > self.config.max_forms:
            del forms[min(forms, key=lambda f: forms[f][0])]
        eid = self.edge_index.get((s, d))
        if eid is None:
            eid = self.n_edges
            if eid == len(self._src):
                grow = max(64, eid)
                self._src = np.concatenate([self._src, np.zeros(grow, dtype=np.int64)])
                self._dst = np.concatenate([self._dst, np.zeros(grow, dtype=np.int64)])
                self._w = np.concatenate([self._w, np.zeros(grow)])
                self._users = np.concatenate([self._users, np.zeros(grow)])
            self._src[eid], self._dst[eid], self._w[eid] = s, d, 0.0
            self.n_edges += 1
            self.edge_index[(s, d)] = eid
            self.sketches.append([])
        self._w[eid] += w
        sketch = self.sketches[eid]
        sketch_add(sketch, user_hash(user), self.config.sketch_k)
        self._users[eid] = sketch_count(sketch, self.config.sketch_k)
        if len(self.index) > self.config.max_states:
            self.evict(protect=(s, d))

    def observe_session(self, turns: Sequence[TurnRecord], kinds: Sequence[DefectKind],
                        rephrased: Sequence[bool]) -> None:
        """Add one closed session labelled by `defects.label_session`."""
        for i, turn in enumerate(turns):
            if rephrased[i] and i + 1 < len(turns):
                dst = turns[i + 1].state
            else:
                dst = FAILURE if kinds[i] else SUCCESS
            form = normalize(turn.rewritten) if turn.rewritten else turn.text  # what the NLU was given
            self.add(turn.state, dst, user=turn.user_id, time_ms=turn.time_ms, form=form)

    def evict(self, protect: Iterable[int] = ()) -> list[str]:
        """Drop the least-weight states (and their edges) down to ``evict_to * max_states``;
        ``protect``: state indices to keep regardless (the ones just added)."""
        live = np.array(sorted(self.index.values()), dtype=np.int64)
        keep = int(self.config.max_states * self.config.evict_to)
        if len(live) <= keep:
            return []
        weight = self.state_w[live].copy()
        weight[np.isin(live, np.fromiter(protect, dtype=np.int64))] = np.inf
        order = np.argsort(weight, kind="stable")
        gone = live[order[:len(live) - keep]]
        gone_mask = np.zeros(len(self.keys), dtype=bool)
        gone_mask[gone] = True
        touching = gone_mask[self.e_src] | ((self.e_dst >= 0) & gone_mask[np.maximum(self.e_dst, 0)])
        self.dirty.update(self.e_src[touching].tolist())
        self.dirty.update(self.e_dst[touching & (self.e_dst >= 0)].tolist())
        keep_e = ~touching
        self.sketches = [sk for sk, k in zip(self.sketches, keep_e.tolist(), strict=True) if k]
        self._set_edges(self.e_src[keep_e], self.e_dst[keep_e], self.e_w[keep_e])
        names = []
        for idx in gone.tolist():
            key = self.keys[idx]
            names.append(key)
            del self.index[key]
            self.keys[idx] = None
            self.forms[idx] = {}
            self._free.append(idx)
        self.dirty.difference_update(gone.tolist())
        return names

    # -- solving --------------------------------------------------------------------------
    def solve(self, everything: bool = False) -> int:
        """Recompute absorption probabilities of the components touched since the last solve
        (all of them with ``everything``); the number of states solved."""
        n = len(self.keys)
        if n == 0 or (not self.dirty and not everything):
            return 0
        out = np.bincount(self.e_src, weights=self.e_w, minlength=n)
        trans = self.e_dst >= 0
        graph = sparse.coo_matrix((np.ones(int(trans.sum())), (self.e_src[trans], self.e_dst[trans])),
                                  shape=(n, n)).tocsr()
        _, labels = csgraph.connected_components(graph, directed=True, connection="weak")
        live = np.zeros(n, dtype=bool)
        live[list(self.index.values())] = True
        if everything:
            members = np.nonzero(live)[0]
        else:
            touched = np.unique(labels[np.fromiter(self.dirty, dtype=np.int64)])
            members = np.nonzero(np.isin(labels, touched) & live)[0]
        self.dirty.clear()
        m = len(members)
        local = np.full(n, -1, dtype=np.int64)
        local[members] = np.arange(m)
        denom = np.maximum(out, 1e-300) * (1 + 1e-12)  # rows strictly sub-stochastic: I - Q invertible
        in_comp = local[self.e_src] >= 0
        q = in_comp & trans
        rows, cols = local[self.e_src[q]], local[self.e_dst[q]]
        vals = self.e_w[q] / denom[self.e_src[q]]
        a = sparse.identity(m, format="csc") - sparse.csc_matrix((vals, (rows, cols)), shape=(m, m))
        r = np.zeros((m, 2))
        for col, code in ((0, -1), (1, -2)):
            e = in_comp & (self.e_dst == code)
            np.add.at(r[:, col], local[self.e_src[e]], self.e_w[e] / denom[self.e_src[e]])
        b = spsolve(a, r)
        b = np.asarray(b).reshape(m, 2)
        self.p_success[members] = np.clip(b[:, 0], 0.0, 1.0)
        self.p_failure[members] = np.clip(b[:, 1], 0.0, 1.0)
        self.p_direct[members] = r[:, 0]
        return m

    # -- queries --------------------------------------------------------------------------
    def success(self, key: str) -> float:
        return float(self.p_success[self.index[key]])

    def failure(self, key: str) -> float:
        return float(self.p_failure[self.index[key]])

    def direct_success(self, key: str) -> float:
        return float(self.p_direct[self.index[key]])

    def users(self, src: str, dst: str) -> float:
        """Distinct users behind ``src -> dst`` (0 when there is no such edge)."""
        s, d = self.index.get(src), _ABSORBING.get(dst, self.index.get(dst))
        eid = self.edge_index.get((s, d)) if s is not None and d is not None else None
        return 0.0 if eid is None else float(self._users[eid])

    def best_form(self, key: str, *, successful: bool = True) -> str:
        """The state's most frequent (successful) surface form."""
        forms = self.forms[self.index[key]]
        col = 1 if successful else 0
        return max(forms, key=lambda f: (forms[f][col], f)) if forms else key

    def successors(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Transient edges as CSR pieces: (indptr, dst, weight, distinct users), rows by state index."""
        trans = np.nonzero(self.e_dst >= 0)[0]
        order = trans[np.argsort(self.e_src[trans], kind="stable")]
        indptr = np.zeros(len(self.keys) + 1, dtype=np.int64)
        np.add.at(indptr, self.e_src[order] + 1, 1)
        return np.cumsum(indptr), self.e_dst[order], self.e_w[order], self.e_users[order]

    def __len__(self) -> int:
        return len(self.index)

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        n = len(self.keys)
        return {
            "config": self.config.__dict__, "t0_ms": self.t0_ms, "keys": self.keys,
            "state_w": self.state_w[:n].tolist(), "turns": self.turns[:n].tolist(),
            "successes": self.successes[:n].tolist(), "forms": self.forms,
            "e_src": self.e_src.tolist(), "e_dst": self.e_dst.tolist(), "e_w": self.e_w.tolist(),
            "sketches": self.sketches, "dirty": sorted(self.dirty),
            "p_success": self.p_success[:n].tolist(), "p_failure": self.p_failure[:n].tolist(),
            "p_direct": self.p_direct[:n].tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Chain:
        c = cls(ChainConfig(**data["config"]))
        c.t0_ms = data["t0_ms"]
        c.keys = list(data["keys"])
        c.index = {k: i for i, k in enumerate(c.keys) if k is not None}
        c._free = [i for i, k in enumerate(c.keys) if k is None]
        c.forms = [{f: list(v) for f, v in forms.items()} for forms in data["forms"]]
        for name in ("state_w", "p_success", "p_failure", "p_direct"):
            setattr(c, name, np.asarray(data[name], dtype=np.float64))
        for name in ("turns", "successes"):
            setattr(c, name, np.asarray(data[name], dtype=np.int64))
        c.sketches = [list(s) for s in data["sketches"]]
        c._set_edges(data["e_src"], data["e_dst"], data["e_w"])
        c.dirty = set(data["dirty"])
        return c

    def to_bytes(self) -> bytes:
        return zlib.compress(json.dumps(self.to_dict(), separators=(",", ":")).encode(), 3)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Chain:
        return cls.from_dict(json.loads(zlib.decompress(raw)))


def build_chain(sessions: Iterable[Sequence[TurnRecord]], config: ChainConfig = ChainConfig(),
                defect_config: Any = None) -> Chain:
    """Offline: a chain from closed sessions, labelled with `defects.label_session`."""
    from .defects import DefectConfig, label_session

    chain = Chain(config)
    dc = defect_config or DefectConfig()
    for session in sessions:
        kinds, rephrased = label_session(session, dc)
        chain.observe_session(session, kinds, rephrased)
    return chain
