"""What the demo's parts share: its error, its seed and the assistant loop's time scale."""

from __future__ import annotations

SEED = 7
# The assistant loop: simulated time runs TIME_SCALE x real gaps (sessions of a
# few seconds), so the miner's session gap is scaled alike on the stacks it starts.
TIME_SCALE = 0.02


class DemoError(Exception):
    """Something did not flow; the message says what."""
