"""The replay buffer: recent examples and preference pairs on local disk (the window of
traffic a training run reads; not the miner's attribution windows).

One directory per (tenant, model, kind) under the data directory, holding
immutable-by-name segments ``seg-<sequence number>.npz`` (arrival order), each with
the raw protobuf records (``payload`` bytes plus ``offsets``), their ids and
event times. Records are added to an in-memory buffer and are durable once
`flush` returns: segments are written to a temporary file, fsynced and
renamed into place, so a crash leaves either the old or the new segment.
The consumer commits its Kafka offsets only after a flush.

Bounded: at most ``max_rows`` rows per stream; the oldest segments are
dropped first (``segment_rows`` per segment, the tail segment is topped up on
each flush so small flushes do not multiply files). Delivery is at least once,
so `add` drops a record whose id is already in the buffer. `open` reloads the
buffer (and the dedupe ids) after a restart.

Raw records rather than model inputs are kept, so a change of the feature
spec does not invalidate the buffer; `read` returns the payloads.

>>> import tempfile
>>> w = ReplayBuffer(tempfile.mkdtemp(), max_rows=4, segment_rows=2)
>>> [w.add("t", "m", "examples", f"id{i % 3}", i, b"x") for i in range(4)]
[True, True, True, False]
>>> w.flush(); w.rows("t", "m", "examples")
3
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

KINDS = ("examples", "preferences")


@dataclass
class _Segment:
    path: Path
    rows: int


@dataclass
class _Stream:
    dir: Path
    segments: list[_Segment] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    pending_ids: list[str] = field(default_factory=list)
    pending_times: list[int] = field(default_factory=list)
    pending_payloads: list[bytes] = field(default_factory=list)
    next_seq: int = 0

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.segments) + len(self.pending_ids)


@dataclass(frozen=True)
class Records:
    """The records of one stream in arrival order."""

    ids: np.ndarray  # str
    time_ms: np.ndarray  # int64
    payloads: list[bytes]

    def __len__(self) -> int:
        return len(self.payloads)


def _write_segment(path: Path, ids: list[str], times: list[int], payloads: list[bytes]) -> None:
    offsets = np.zeros(len(payloads) + 1, dtype=np.int64)
    np.cumsum([len(p) for p in payloads], out=offsets[1:])
    blob = np.frombuffer(b"".join(payloads), dtype=np.uint8)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, ids=np.asarray(ids, dtype=np.str_), time_ms=np.asarray(times, dtype=np.int64),
                 offsets=offsets, payload=blob)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_segment(path: Path) -> tuple[np.ndarray, np.ndarray, list[bytes]]:
    with np.load(path, allow_pickle=False) as z:
        ids, times, offsets, blob = z["ids"], z["time_ms"], z["offsets"], z["payload"].tobytes()
    payloads = [blob[offsets[i]:offsets[i + 1]] for i in range(len(ids))]
    return ids, times, payloads


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ReplayBuffer:
    """Thread-safe: the consumer adds and flushes, a training run reads."""

    def __init__(self, root: str | os.PathLike, max_rows: int = 500_000, segment_rows: int = 20_000) -> None:
        if max_rows < 1 or segment_rows < 1:
            raise ValueError("max_rows and segment_rows must be >= 1")
        self.root = Path(root)
        self.max_rows = max_rows
        self.segment_rows = min(segment_rows, max_rows)
        self._streams: dict[tuple[str, str, str], _Stream] = {}
        self._lock = threading.RLock()
        self.dropped_rows = 0

    # -- open / reload ----------------------------------------------------------------
    def open(self) -> ReplayBuffer:
        """Reload every stream found on disk (after a restart)."""
        with self._lock:
            if not self.root.exists():
                return self
            for kind_dir in sorted(self.root.glob("*/*/*")):
                if not kind_dir.is_dir() or kind_dir.name not in KINDS:
                    continue
                tenant, model = kind_dir.parent.parent.name, kind_dir.parent.name
                stream = self._stream(tenant, model, kind_dir.name)
                for tmp in kind_dir.glob("*.tmp"):
                    tmp.unlink()  # a write that crashed before its rename
                for path in sorted(kind_dir.glob("seg-*.npz")):
                    ids, _, _ = _read_segment(path)
                    stream.segments.append(_Segment(path, len(ids)))
                    stream.ids.update(ids.tolist())
                    stream.next_seq = max(stream.next_seq, int(path.stem[4:]) + 1)
        return self

    def _stream(self, tenant: str, model: str, kind: str) -> _Stream:
        key = (tenant, model, kind)
        stream = self._streams.get(key)
        if stream is None:
            if kind not in KINDS:
                raise ValueError(f"kind {kind!r}: expected one of {KINDS}")
            stream = self._streams[key] = _Stream(self.root / tenant / model / kind)
        return stream

    # -- write --------------------------------------------------------------------------
    def add(self, tenant: str, model: str, kind: str, record_id: str, time_ms: int, payload: bytes) -> bool:
        """Buffer a record; False for an id already in the buffer (a redelivery)."""
        with self._lock:
            stream = self._stream(tenant, model, kind)
            if record_id in stream.ids:
                return False
            stream.ids.add(record_id)
            stream.pending_ids.append(record_id)
            stream.pending_times.append(int(time_ms))
            stream.pending_payloads.append(bytes(payload))
            return True

    def pending(self) -> int:
        with self._lock:
            return sum(len(s.pending_ids) for s in self._streams.values())

    def flush(self) -> None:
        """Make every buffered record durable, then enforce the bound."""
        with self._lock:
            for stream in self._streams.values():
                if stream.pending_ids:
                    self._flush_stream(stream)
                self._enforce_bound(stream)

    def _flush_stream(self, stream: _Stream) -> None:
        stream.dir.mkdir(parents=True, exist_ok=True)
        ids, times, payloads = stream.pending_ids, stream.pending_times, stream.pending_payloads
        tail = stream.segments[-1] if stream.segments else None
        if tail is not None and tail.rows < self.segment_rows:
            # Top up the tail segment: rewrite it (atomically, same name) with the new rows.
            t_ids, t_times, t_payloads = _read_segment(tail.path)
            take = self.segment_rows - tail.rows
            _write_segment(tail.path, t_ids.tolist() + ids[:take], t_times.tolist() + times[:take],
                           t_payloads + payloads[:take])
            tail.rows += len(ids[:take])
            ids, times, payloads = ids[take:], times[take:], payloads[take:]
        for start in range(0, len(ids), self.segment_rows):
            end = start + self.segment_rows
            path = stream.dir / f"seg-{stream.next_seq:012d}.npz"
            _write_segment(path, ids[start:end], times[start:end], payloads[start:end])
            stream.segments.append(_Segment(path, len(ids[start:end])))
            stream.next_seq += 1
        _fsync_dir(stream.dir)
        stream.pending_ids, stream.pending_times, stream.pending_payloads = [], [], []

    def _enforce_bound(self, stream: _Stream) -> None:
        while stream.segments and sum(s.rows for s in stream.segments) > self.max_rows:
            oldest = stream.segments.pop(0)
            ids, _, _ = _read_segment(oldest.path)
            stream.ids.difference_update(ids.tolist())
            oldest.path.unlink()
            self.dropped_rows += oldest.rows

    # -- read ---------------------------------------------------------------------------
    def keys(self) -> list[tuple[str, str]]:
        with self._lock:
            return sorted({(t, m) for (t, m, _), s in self._streams.items() if s.rows})

    def rows(self, tenant: str, model: str, kind: str) -> int:
        with self._lock:
            stream = self._streams.get((tenant, model, kind))
            return stream.rows if stream else 0

    def blocks(self, tenant: str, model: str, kind: str,
               want: Callable[[tuple[str, int]], bool] | None = None) -> list[tuple[tuple[str, int] | None, Records | None]]:
        """The stream as blocks, oldest first: ``((segment name, rows), records)`` per
        segment (records None where ``want(key)`` is False: the caller has it cached;
        a segment's name and row count identify its content) and ``(None, records)``
        for the buffered records."""
        with self._lock:
            stream = self._streams.get((tenant, model, kind))
            if stream is None:
                return []
            out: list[tuple[tuple[str, int] | None, Records | None]] = []
            for seg in stream.segments:
                key = (seg.path.name, seg.rows)
                out.append((key, Records(*_read_segment(seg.path)) if want is None or want(key) else None))
            if stream.pending_ids:
                out.append((None, Records(np.asarray(stream.pending_ids, dtype=np.str_),
                                          np.asarray(stream.pending_times, dtype=np.int64),
                                          list(stream.pending_payloads))))
            return out

    def read(self, tenant: str, model: str, kind: str) -> Records:
        """Durable and buffered records of a stream, oldest first."""
        with self._lock:
            stream = self._streams.get((tenant, model, kind))
            if stream is None:
                return Records(np.zeros(0, dtype=np.str_), np.zeros(0, dtype=np.int64), [])
            parts = [_read_segment(s.path) for s in stream.segments]
            parts.append((np.asarray(stream.pending_ids, dtype=np.str_),
                          np.asarray(stream.pending_times, dtype=np.int64), list(stream.pending_payloads)))
        ids = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, dtype=np.str_)
        times = np.concatenate([p[1] for p in parts]).astype(np.int64)
        payloads = [b for p in parts for b in p[2]]
        return Records(ids, times, payloads)
