"""bench/error_memory.py on the real stack: bench/learning.py's replay with the memory on.

`replay` runs `_learning_stack.run_stack` (the local stack, the stack's trainer
service retraining on the same schedule as bench/learning.py) with the
inference service's error memory configured through its settings
(``LOOPWISE_ERROR_MEMORY_*``, mode ``on``), and taps it:

- every Rank answer of the replay is kept: ``base_scores`` (the model alone:
  the memory off) and ``compensated_scores`` (served), with the wall-clock
  time the request was sent;
- when the replay is over and before the stack goes down, ``after`` runs
  with the stack's endpoints (`measure.measure`: latency and click-to-effect).

The tap wraps `loopwise.tools.stack.up` (to learn the endpoints) and the
client class `run_stack` imports (to keep each answer); nothing else of the
replay changes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import numpy as np
from _learning_stream import Stream

import loopwise.client
from loopwise.client.sync import Ranked, rank_request
from loopwise.tools import stack


@dataclass
class Answers:
    """The Rank answers of one replay, request order."""

    base: list[list[float]] = field(default_factory=list)
    compensated: list[list[float]] = field(default_factory=list)
    modes: list[str] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)

    def arrays(self, n: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(base [n*k], compensated [n*k], sent_at [n]); NaN where an answer had none."""
        base, comp = np.full(n * k, np.nan), np.full(n * k, np.nan)
        for i in range(min(n, len(self.base))):
            if len(self.base[i]) == k:
                base[i * k:(i + 1) * k] = self.base[i]
            if len(self.compensated[i]) == k:
                comp[i * k:(i + 1) * k] = self.compensated[i]
        sent = np.asarray(self.sent_at[:n] + [np.nan] * (n - len(self.sent_at)), dtype=np.float64)
        return base, comp, sent


def memory_env(mode: str, k: int, bits: int, lam: float, tau: float, gamma: float, settle_s: float = 0.0,
               pair_lam: float = 0.0, pair_prior: float = 1.0, pair_at_rank: bool = False) -> dict[str, str]:
    """The inference settings of the memory (`loopwise.inference.settings`)."""
    return {"LOOPWISE_ERROR_MEMORY_MODE": mode, "LOOPWISE_ERROR_MEMORY_K": str(k),
            "LOOPWISE_ERROR_MEMORY_BITS": str(bits), "LOOPWISE_ERROR_MEMORY_LAMBDA": str(lam),
            "LOOPWISE_ERROR_MEMORY_TAU": str(tau), "LOOPWISE_ERROR_MEMORY_GAMMA": str(gamma),
            "LOOPWISE_ERROR_MEMORY_SETTLE_S": str(settle_s), "LOOPWISE_ERROR_MEMORY_PAIR_LAMBDA": str(pair_lam),
            "LOOPWISE_ERROR_MEMORY_PAIR_PRIOR": str(pair_prior),
            "LOOPWISE_ERROR_MEMORY_PAIR_AT_RANK": str(pair_at_rank).lower()}


@contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """``values`` in this process's environment (the stack's services inherit it), restored after."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def replay(stream: Stream, parent: bytes, every: int, trainer: Any, env: dict[str, str], *, window_ms: int,
           after: Callable[[stack.StackInfo], dict[str, Any]] | None = None,
           say: Callable[[str], None] = print) -> tuple[Any, Answers, dict[str, Any]]:
    """(`LoopRun`, the Rank answers, what ``after`` returned) of one replay through the stack."""
    from _learning_stack import run_stack

    answers = Answers()
    measured: dict[str, Any] = {}
    infos: list[stack.StackInfo] = []
    real_up, real_client = stack.up, loopwise.client.Client

    def up(*args: Any, **kwargs: Any) -> stack.StackInfo:
        info = real_up(*args, **kwargs)
        infos.append(info)
        return info

    class TapClient(real_client):  # type: ignore[misc, valid-type]
        def rank(self, candidate_ids: Any, **kwargs: Any) -> Ranked:
            timeout = kwargs.pop("timeout", self.timeout)
            request = rank_request(self.tenant, candidate_ids, **kwargs)
            answers.sent_at.append(time.time())
            response = self.rank_raw(request, timeout=timeout)
            answers.base.append(list(response.base_scores) or list(response.scores))
            answers.compensated.append(list(response.compensated_scores))
            answers.modes.append(response.memory_mode)
            return Ranked.of(candidate_ids, response)

        def __exit__(self, kind: Any, value: Any, tb: Any) -> Any:
            if kind is None and after is not None and infos:
                try:
                    self.flush()
                    measured.update(after(infos[-1]))
                except Exception as exc:  # noqa: BLE001 - the replay's figures still count
                    import traceback

                    traceback.print_exc()
                    say(f"measurements FAILED: {exc!r}")
                    measured["measure_error"] = repr(exc)
            return super().__exit__(kind, value, tb)

    with _environ(env), mock.patch.object(stack, "up", up), mock.patch.object(loopwise.client, "Client", TapClient):
        loop = run_stack(stream, parent, every, trainer, window_ms=window_ms, training="auto", say=say)
    return loop, answers, measured
