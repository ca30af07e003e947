"""What every event is stamped with: a fresh id and the wall-clock time."""

from __future__ import annotations

import time
import uuid


def new_event_id() -> str:
    return uuid.uuid4().hex


def now_ms() -> int:
    return int(time.time() * 1000)
