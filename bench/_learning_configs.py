"""bench/learning.py's Loopwise configurations: which stack runs one replay makes.

- one run per feedback mode of the miner (``LOOPWISE_FEEDBACK_MODE``: ``window``, the
  examples wait for the attribution window, and ``fnw``, fake negatives at once with FNW
  weights in the trainer), learner ``loopwise_<mode>``;
- ``loopwise_whole_versions``: the default configuration with sparse deltas off
  (``LOOPWISE_DELTAS=false``), when the trainer has that setting; without it every
  version the stack serves is a whole one and the default run is that configuration;
- ``loopwise_no_pending`` (``--pending-ablation``): the default configuration without the
  replicas' pending shows (``LOOPWISE_PENDING_STEP=0``: shown candidates wait for their
  deltas like everything else), the ablation of services/inference/pending.py;
- ``loopwise``: the run of the default configuration (the services' own defaults), the
  production configuration the JSON's ``auc_loopwise`` reports.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MODES = ("window", "fnw")


@dataclass(frozen=True)
class Config:
    name: str  # the learner's name in the results
    env: dict[str, str] = field(default_factory=dict)
    label: str = ""  # for the table's config column


def default_feedback_mode() -> str:
    """The miner's default ``LOOPWISE_FEEDBACK_MODE``."""
    from loopwise.miner.settings import MinerSettings

    return str(MinerSettings.__dataclass_fields__["feedback_mode"].default)


def deltas_setting() -> bool | None:
    """The trainer's default for sparse deltas (``LOOPWISE_DELTAS``); None: no such setting."""
    from loopwise.trainer.settings import TrainerSettings

    fields = {f.name: f for f in dataclasses.fields(TrainerSettings)}
    return bool(fields["deltas"].default) if "deltas" in fields else None


def delta_interval_s() -> float:
    """The trainer's default delta step interval (``LOOPWISE_TRAINER_DELTA_INTERVAL_S``)."""
    from loopwise.trainer.settings import TrainerSettings

    return float(TrainerSettings.__dataclass_fields__["trainer_delta_interval_s"].default)


def configurations(feedback: str, whole_versions: bool, pending_ablation: bool = False) -> tuple[list[Config], str]:
    """The stack runs for ``--feedback-mode`` (window, fnw, both or default) and whether to add
    the whole-versions run and the run without pending shows; and the name of the default
    configuration's run."""
    default = default_feedback_mode()
    modes = MODES if feedback == "both" else (default if feedback == "default" else feedback,)
    runs = [Config(f"loopwise_{m}", {"LOOPWISE_FEEDBACK_MODE": m},
                   f"feedback {m}" + (" (default)" if m == default else "")) for m in modes]
    if whole_versions and deltas_setting():
        runs.append(Config("loopwise_whole_versions", {"LOOPWISE_FEEDBACK_MODE": default, "LOOPWISE_DELTAS": "false"},
                           f"feedback {default}, deltas off: whole versions only"))
    if pending_ablation:
        runs.append(Config("loopwise_no_pending", {"LOOPWISE_FEEDBACK_MODE": default, "LOOPWISE_PENDING_STEP": "0"},
                           f"feedback {default}, no pending shows in the replicas"))
    main = f"loopwise_{default}" if default in modes else runs[0].name
    return runs, main


def freshness_keys(loopwise: str, runs: dict[str, Any], get: Callable[[str, str], float | None],
                   reasons: dict[str, str]) -> dict[str, Any]:
    """Issue 11's keys from the runs (``loopwise``: the ``--loopwise`` mode; ``get(learner,
    key)``: a recorded figure): per feedback mode, whole versions, in-process, deltas."""
    default = default_feedback_mode()
    out: dict[str, Any] = {"feedback_mode_default": default}
    for mode in MODES:
        name = "loopwise" if runs.get("loopwise") and runs["loopwise"].extra.get("feedback_mode") == mode \
            else f"loopwise_{mode}"
        out[f"auc_loopwise_{mode}"] = get(name, "auc")
        out[f"gauc_loopwise_{mode}"] = get(name, "gauc")
        if name in runs:
            extra = runs[name].extra
            out[f"versions_{mode}"] = int(runs[name].version.max())
            out[f"published_{mode}"] = len(extra.get("published_versions") or [])
    deltas = deltas_setting()
    if "loopwise_whole_versions" in runs:
        out["auc_whole_versions"] = get("loopwise_whole_versions", "auc")
    elif deltas is None and "loopwise" in runs:
        out["auc_whole_versions"] = get("loopwise", "auc")
        out["whole_versions_note"] = "the trainer has no sparse deltas: every version served is a whole one"
    else:
        out["auc_whole_versions"] = None
        reasons["whole_versions"] = "not run (--no-whole-versions or deltas off by default)"
    if "loopwise_no_pending" in runs:
        out["auc_no_pending"] = get("loopwise_no_pending", "auc")
        out["gauc_no_pending"] = get("loopwise_no_pending", "gauc")
    inprocess = "inprocess" if loopwise == "stack" else "loopwise" if loopwise == "inprocess" else ""
    out["auc_inprocess"] = get(inprocess, "auc")
    out["gauc_inprocess"] = get(inprocess, "gauc")
    if loopwise == "stack":
        for name in ("inprocess", "inprocess_interval"):
            block = runs[name].extra.get("delta_block") if name in runs else None
            out[f"{name}_delta_block"] = block
        out["auc_inprocess_interval"] = get("inprocess_interval", "auc")
        out["gauc_inprocess_interval"] = get("inprocess_interval", "gauc")
    extra = runs["loopwise"].extra if "loopwise" in runs else {}
    for key in ("delta_to_serving_p50_s", "delta_to_serving_p99_s", "delta_bytes_per_s"):
        out[key] = extra.get(key)
        if out[key] is None:
            reasons[key] = ("the stack publishes no sparse deltas (no LOOPWISE_DELTAS setting in the trainer)"
                            if deltas is None else "not measured by this run")
    return out
