"""The exact (user, item) part of the error memory: a hashed table of each pair's own errors.

The sketch (`sketch.py`) generalises between keys at a small angle; on a
stream where the same user is shown the same item again (a recommender's
repeated exposure) the most telling error is that pair's own earlier one,
and the model's hidden layer does not tell a pair seen again from the same
user's other candidates (bench/_error_memory_diagnose.py: the median cosine
of a key to the nearest *other* pair's is 0.993-0.9999). This table keeps,
per (user id, candidate id), the (count, sum of labels, sum of served
predictions) of its errors, and `ModelMemory` adds its correction to the
sketch's (``pair_lambda``; 0 turns the table off).

- Keys are 64-bit hashes of the candidate id seeded by the user id's hash
  (`loopwise.hashing.hash_strings`, vectorised over a whole call: no Python
  loop per candidate); the user id is the one `Rank` and the impression
  carry (pseudonymised where serving pseudonymises), so a read at `Rank`
  and a write from a `PredictionError` meet. An empty user id has no pair.
- Direct-mapped: ``2^bits`` slots, each holding one pair's fingerprint (its
  full hash) and sums; a pair landing on a slot held by another replaces it
  (the newest wins), and a read only takes a slot whose fingerprint is its
  own. Constant memory (``nbytes``), O(1) reads and writes.
- A click goes in at once: it moves only its own pair, so there is no
  window to wait for (unlike the sketch's `settle_s`).
- Shown at once (``pair_at_rank``, `ModelMemory.shown`): the replica that
  answers a `Rank` writes each candidate's pair as shown, unclicked so far
  (count 1, label 0: the fake negative of docs/methods.md §6), so a pair
  shown again before its window closes is already corrected there; that
  request's errors then add only what the impression did not (a click's
  label; its negatives are already counted). Other replicas count the pair
  from its errors, as without: after the window every replica holds the
  same sums.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from loopwise.hashing import hash_strings

from .compensate import Params

SALT = "loopwise.error-memory.pair"


class PairTable:
    def __init__(self, bits: int = 16, seed: int = 0) -> None:
        if not 1 <= bits <= 26:
            raise ValueError(f"pair table needs 1 <= bits <= 26 (got {bits})")
        self.bits = bits
        self._mask = np.uint64((1 << bits) - 1)
        self._salt = hash_strings([f"{SALT}:{seed}"], np.uint64(0))[0]
        self.fingerprint = np.zeros(1 << bits, dtype=np.uint64)
        # one row per slot: (count, sum of labels, sum of served predictions)
        self.table = np.zeros((1 << bits, 3), dtype=np.float32)
        self.writes = 0

    @property
    def nbytes(self) -> int:
        return self.fingerprint.nbytes + self.table.nbytes

    def fill(self) -> float:
        """Fraction of slots holding a pair."""
        return float(np.count_nonzero(self.table[:, 0])) / len(self.table)

    def keys(self, users: str | Sequence[str] | np.ndarray, items: Sequence[str] | np.ndarray) -> np.ndarray:
        """[n] uint64 pair hashes: one user for all ``items``, or one user per item; 0 (no pair)
        where the user id is empty (a nonzero hash of 0 is replaced by 1)."""
        items = np.asarray(items, dtype=np.str_).reshape(-1)
        if isinstance(users, str):
            seeds = np.full(len(items), hash_strings([users], self._salt)[0] if users else 0, dtype=np.uint64)
            known = np.full(len(items), bool(users))
        else:
            users = np.asarray(users, dtype=np.str_).reshape(-1)
            seeds = hash_strings(users, self._salt)
            known = users != ""
        h = hash_strings(items, seeds)
        h[h == 0] = 1
        h[~known] = 0
        return h

    def write(self, keys: np.ndarray, labels: np.ndarray, preds: np.ndarray, counted: np.ndarray | None = None
              ) -> None:
        """Add errors of pairs ``keys`` (from `keys`; 0 is skipped). ``counted`` (bool per error): the
        pair's impression is already in (`ModelMemory.shown`): only the label is added, unless the
        pair lost its slot meanwhile (then it comes in whole)."""
        keep = keys != 0
        keys = keys[keep]
        if not len(keys):
            return
        slots = (keys & self._mask).astype(np.int64)
        fresh = self.fingerprint[slots] != keys
        if fresh.any():  # another pair held the slot (or none): the newest pair takes it
            self.table[slots[fresh]] = 0.0
            self.fingerprint[slots[fresh]] = keys[fresh]
        own = self.fingerprint[slots] == keys  # two new pairs on one slot in a batch: the last holds it
        y = np.asarray(labels, dtype=np.float32)[keep][own]
        p = np.asarray(preds, dtype=np.float32)[keep][own]
        whole = np.ones_like(y) if counted is None else (fresh | ~np.asarray(counted)[keep])[own].astype(np.float32)
        np.add.at(self.table, slots[own], np.stack([whole, y, whole * p], axis=1))
        self.writes += int(own.sum())

    def read(self, keys: np.ndarray) -> np.ndarray:
        """[n, 3] (count, sum of labels, sum of served predictions) of each pair; zeros for none."""
        slots = (keys & self._mask).astype(np.int64)
        rows = np.take(self.table, slots, axis=0)
        rows[(self.fingerprint[slots] != keys) | (keys == 0)] = 0.0
        return rows

    def error(self, keys: np.ndarray, p_base: np.ndarray, params: Params) -> np.ndarray:
        """Per pair, ``y_err`` of its own errors as one neighbour of full weight: the compensation's
        gamma = 1 form ``(sum_y - count * p_base) / (count + prior)``, 0 for a pair with none."""
        count, sum_y, _ = self.read(keys).T
        p = np.asarray(p_base, dtype=np.float32).reshape(-1)
        return ((sum_y - count * p) / np.maximum(count + params.prior, np.float32(1e-12))).astype(np.float32)
