"""API keys per tenant: stored hashed, read from a file, rotated without a restart.

The keys file (``LOOPWISE_API_KEYS_FILE``, JSON, in Kubernetes a mounted
Secret) lists, per tenant, the hashes of the keys that may act for it;
several per tenant, so a new key can be handed out before the old one is
removed, each with an optional expiry::

    {"tenants": {
      "acme": [
        "sha256:6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b",
        {"hash": "sha256:d4735e3a265e16eee03f59718b9b5d03019c07d8b6c51f90da3a666eec13ab35",
         "expires": "2026-12-31T00:00:00Z",
         "name": "ci"}]}}

``expires``: ISO 8601 or seconds since the epoch; ``name`` is shown in logs
instead of the key.

`hash_key` gives the line for a key (``loopwise keys new`` makes a key and its line,
``loopwise keys hash`` the line of a key read from standard input). Keys
are random tokens (`new_key`: 256 bits), so one SHA-256 is enough to keep a
leaked file from giving the keys away; a slow password hash would add
latency to every call and no safety.

`KeyStore` re-reads the file when it changes (its size, modification time or
inode: a Secret update swaps a symlink), checked at most once a second from
the calls themselves; a file that no longer parses keeps the keys read last
(logged). A client sends its key as gRPC metadata, ``authorization: Bearer
<key>`` or ``x-loopwise-key: <key>``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

KEY_HEADER = "x-loopwise-key"
RELOAD_CHECK_S = 1.0

# Why a call was refused: the ``reason`` label of ``loopwise_<service>_auth_refused_total``.
MISSING = "missing_key"
UNKNOWN = "unknown_key"
EXPIRED = "expired_key"
WRONG_TENANT = "wrong_tenant"


def new_key() -> str:
    """A fresh random API key."""
    return "lw_" + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The keys file's entry for ``key``."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def pseudonym(secret: bytes, user_id: str) -> str:
    """A stable stand-in for ``user_id``: HMAC-SHA-256 under ``secret``, 32 hex characters
    (the same user always maps to the same value; without the secret it cannot be reversed
    or recomputed from a guess)."""
    if not user_id:
        return ""
    return hmac.new(secret, user_id.encode(), hashlib.sha256).hexdigest()[:32]


@dataclass(frozen=True)
class Grant:
    """One key's right to act for one tenant."""

    tenant: str
    name: str
    expires: float | None  # seconds since the epoch


def _expiry(value: Any) -> float | None:
    if value in (None, ""):
        return None
    if isinstance(value, int | float):
        return float(value)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def parse_keys(data: Any) -> dict[str, list[Grant]]:
    """``{hash: [Grant]}`` from the parsed keys file (ValueError when malformed)."""
    if not isinstance(data, dict) or not isinstance(data.get("tenants"), dict):
        raise ValueError("the keys file needs a 'tenants' mapping")
    out: dict[str, list[Grant]] = {}
    for tenant, entries in data["tenants"].items():
        if not isinstance(entries, list):
            raise ValueError(f"tenant {tenant!r}: a list of key hashes expected")
        for i, entry in enumerate(entries):
            item = {"hash": entry} if isinstance(entry, str) else entry
            if not isinstance(item, dict) or not str(item.get("hash", "")).startswith("sha256:"):
                raise ValueError(f"tenant {tenant!r} entry {i}: a 'sha256:<hex>' hash expected")
            grant = Grant(str(tenant), str(item.get("name") or f"{tenant}#{i}"), _expiry(item.get("expires")))
            out.setdefault(str(item["hash"]).lower(), []).append(grant)
    return out


def _load(path: Path) -> dict[str, list[Grant]]:
    return parse_keys(json.loads(path.read_text()))


def write_keys(path: Path, keys: Iterable[tuple[str, str]]) -> None:
    """A keys file (JSON, mode 0600) granting each ``(tenant, key)``."""
    tenants: dict[str, list[str]] = {}
    for tenant, key in keys:
        tenants.setdefault(tenant, []).append(hash_key(key))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"tenants": tenants}, indent=2))
    tmp.chmod(0o600)
    os.replace(tmp, path)


@dataclass(frozen=True)
class Principal:
    """Who a valid key speaks for."""

    name: str
    tenants: frozenset[str]


class KeyStore:
    """The keys of ``path``, re-read when the file changes."""

    def __init__(self, path: str | Path, clock: Any = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._grants: dict[str, list[Grant]] = {}
        self._signature: tuple[int, int, int] | None = None
        self._checked = 0.0
        self.reload()

    def _stat(self) -> tuple[int, int, int]:
        st = self.path.stat()
        return st.st_ino, st.st_size, st.st_mtime_ns

    def reload(self) -> None:
        """Read the file now (the first time a bad file is an error; later it keeps the last keys)."""
        signature = self._stat()
        try:
            grants = _load(self.path)
        except (OSError, ValueError) as exc:
            if self._signature is None:
                raise ValueError(f"{self.path}: {exc}") from None
            log.error("keys file not reloaded, keeping the keys read before",
                      extra={"path": str(self.path), "error": str(exc)})
            self._signature = signature
            return
        if self._signature is not None:
            log.info("keys file reloaded", extra={"path": str(self.path), "keys": len(grants)})
        self._grants, self._signature = grants, signature

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < RELOAD_CHECK_S:
            return
        with self._lock:
            if now - self._checked < RELOAD_CHECK_S:
                return
            self._checked = now
            try:
                changed = self._stat() != self._signature
            except OSError:
                return  # a Secret being swapped: try again next time
            if changed:
                self.reload()

    def authenticate(self, key: str) -> tuple[Principal | None, str]:
        """(the key's principal, "") or (None, reason)."""
        if not key:
            return None, MISSING
        self._maybe_reload()
        grants = self._grants.get(hash_key(key))
        if not grants:
            return None, UNKNOWN
        now = self._clock()
        valid = [g for g in grants if g.expires is None or g.expires > now]
        if not valid:
            return None, EXPIRED
        return Principal(valid[0].name, frozenset(g.tenant for g in valid)), ""


def key_from_metadata(metadata: Sequence[tuple[str, Any]] | None) -> str:
    """The API key a call carries (``authorization: Bearer`` or ``x-loopwise-key``), else ""."""
    for name, value in metadata or ():
        if isinstance(value, bytes):
            continue
        if name == KEY_HEADER:
            return value.strip()
        if name == "authorization" and value[:7].lower() == "bearer ":
            return value[7:].strip()
    return ""


def request_tenants(request: Any) -> set[str]:
    """Every tenant a request names: its ``tenant`` field and its events' (Report). An empty
    one names none: the handler refuses it (INVALID_ARGUMENT, an event's ``missing_tenant``)."""
    tenants: set[str] = set()
    fields = request.DESCRIPTOR.fields_by_name
    if "tenant" in fields:
        tenants.add(request.tenant)
    if "events" in fields:
        tenants.update(event.tenant for event in request.events)
    tenants.discard("")
    return tenants
