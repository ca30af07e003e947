"""Feature hashing shared bit for bit by training and serving.

A feature value is hashed together with its field name into one of
``buckets - 1`` ids (id 0 is reserved for "missing", the model's padding row).
The hash is vectorised over many strings at once: the strings become a
fixed-width UTF-32 matrix, a polynomial over the code points is one integer
matrix product (mod 2**64), and a murmur3 finaliser mixes the result with the
field's seed. It is stable across processes, machines and Python versions
(Python's ``hash()`` is salted per process), and it is the only feature
hashing Loopwise has.

>>> ids = hash_ids(["toy story", "heat", ""], field="title", buckets=1 << 20)
>>> ids.dtype, ids[2]
(dtype('int64'), np.int64(0))
>>> bool((hash_ids(["heat"], field="title", buckets=1 << 20) == ids[1]).all())
True
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_K = 0x9E3779B97F4A7C15  # odd multiplier of the polynomial
_MASK = (1 << 64) - 1
_S33 = np.uint64(33)


def _powers(n: int) -> np.ndarray:
    out = np.empty(n, dtype=np.uint64)
    acc = 1
    for i in range(n):
        acc = (acc * _K) & _MASK
        out[i] = acc
    return out


_POW = _powers(256)


def _fmix64(h: np.ndarray) -> np.ndarray:
    """murmur3's 64-bit finaliser, in place (uint64 arithmetic wraps silently)."""
    h ^= h >> _S33
    h *= _M1
    h ^= h >> _S33
    h *= _M2
    h ^= h >> _S33
    return h


def _string_seed(s: str) -> np.uint64:
    """The 64-bit hash of one string with seed 0 (used to seed a field)."""
    return hash_strings([s], np.zeros(1, dtype=np.uint64))[0]


def hash_strings(values: Sequence[str] | np.ndarray, seeds: np.ndarray | np.uint64) -> np.ndarray:
    """64-bit hashes of ``values``, one seed per value (or one for all)."""
    global _POW
    arr = np.asarray(values, dtype=np.str_)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if arr.size == 0:
        return np.zeros(0, dtype=np.uint64)
    width = max(arr.dtype.itemsize // 4, 1)
    if arr.dtype.itemsize == 0:  # all empty strings
        codes = np.zeros((arr.size, 1), dtype=np.uint64)
    else:
        codes = arr.view(np.uint32).reshape(arr.size, width).astype(np.uint64)
    if width > _POW.size:
        _POW = _powers(max(width, 2 * _POW.size))
    h = codes @ _POW[:width]
    h += np.asarray(seeds, dtype=np.uint64)
    return _fmix64(h)


_FIELD_SEEDS: dict[str, np.uint64] = {}


def field_seed(field: str) -> np.uint64:
    seed = _FIELD_SEEDS.get(field)
    if seed is None:
        seed = _FIELD_SEEDS[field] = _fmix64(np.asarray([_string_seed("field:" + field)], dtype=np.uint64))[0]
    return seed


def hash_ids(values: Sequence[str] | np.ndarray, field: str | Sequence[str] | np.ndarray,
             buckets: int) -> np.ndarray:
    """Hashed ids in ``[1, buckets)`` for non-empty values, 0 for empty ones.

    ``field`` is one field name for all values, or one per value.
    """
    arr = np.asarray(values, dtype=np.str_).reshape(-1)
    if isinstance(field, str):
        seeds: np.ndarray | np.uint64 = field_seed(field)
    else:
        seeds = np.fromiter((field_seed(f) for f in field), dtype=np.uint64, count=len(field))
    h = hash_strings(arr, seeds)
    ids = (h % np.uint64(buckets - 1)).astype(np.int64) + 1
    ids[arr == ""] = 0
    return ids
