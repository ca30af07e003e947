"""The alert rules' logic on synthetic series, with `promtool test rules` (no services): the
thresholds, the ``for:`` durations, and the cases a plain ``increase()`` would miss (a
counter series created by its first increment). The rules are the generated ones without
their annotations (promtool compares those too; their text is not under test here)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from observability import alerts
from tests.observability.prom import binary

KEY = 'tenant="default", model="ranker"'


def firing(name: str, at: str, *labels: dict[str, str]) -> dict:
    return {"alertname": name, "eval_time": at,
            "exp_alerts": [{"exp_labels": {"severity": "warning", "service": "loopwise", **x}} for x in labels]}


CASES = {
    "a first refusal (the series appears at 1) fires": ("1m",
        [(f'loopwise_inference_model_refusals_total{{{KEY}, reason="missing", instance="i"}}', "_x5 1x10")],
        [firing("LoopwiseModelVersionRefused", "8m",
                {"tenant": "default", "model": "ranker", "reason": "missing"})]),
    "a replica on another version than its pointer's fires after 10 minutes": ("1m",
        [(f'loopwise_inference_model_version{{{KEY}, role="wanted", instance="i"}}', "3x20"),
         (f'loopwise_inference_model_version{{{KEY}, role="serving", instance="i"}}', "2x20")],
        [firing("LoopwiseInferenceStaleModel", "5m"),
         firing("LoopwiseInferenceStaleModel", "11m", {"tenant": "default", "model": "ranker", "instance": "i"})]),
    "one serving its pointer's version is quiet": ("1m",
        [(f'loopwise_inference_model_version{{{KEY}, role="wanted", instance="i"}}', "3x20"),
         (f'loopwise_inference_model_version{{{KEY}, role="serving", instance="i"}}', "3x20")],
        [firing("LoopwiseInferenceStaleModel", "15m")]),
    "runs refused for 6 hours: no new model": ("10m",
        [(f'loopwise_trainer_runs_total{{{KEY}, outcome="refused"}}', "0+1x40"),
         (f'loopwise_trainer_last_run_timestamp_seconds{{{KEY}}}', "0+600x40")],
        [firing("LoopwiseNoNewModel", "6h30m", {"tenant": "default", "model": "ranker"})]),
    "runs refused, then a first publish (the series appears at 1): quiet": ("10m",
        [(f'loopwise_trainer_runs_total{{{KEY}, outcome="refused"}}', "0+1x40"),
         (f'loopwise_trainer_runs_total{{{KEY}, outcome="published"}}', "_x30 1x10"),
         (f'loopwise_trainer_last_run_timestamp_seconds{{{KEY}}}', "0+600x40")],
        [firing("LoopwiseNoNewModel", "6h30m")]),
    "no run at all for 6 hours: no new model": ("10m",
        [(f'loopwise_trainer_last_run_timestamp_seconds{{{KEY}}}', "0x40")],
        [firing("LoopwiseNoNewModel", "6h30m", {"tenant": "default", "model": "ranker"})]),
    "2% of the miner's records dead-lettered for 5 minutes fires": ("1m",
        [('loopwise_miner_records_total{kind="click", instance="i"}', "0+6000x20"),
         ('loopwise_miner_deadlettered_total{reason="undecodable", instance="i"}', "0+120x20")],
        [firing("LoopwiseMinerDeadLetters", "4m"), firing("LoopwiseMinerDeadLetters", "12m", {})]),
    "a trickle (one every 4 minutes, under 1 record/s) does not": ("1m",
        [('loopwise_miner_records_total{kind="click", instance="i"}', "0+30x20"),
         ('loopwise_miner_deadlettered_total{reason="undecodable", instance="i"}', "0+0.25x20")],
        [firing("LoopwiseMinerDeadLetters", "12m")]),
    "four rollbacks in an hour": ("1m",
        [('loopwise_miner_rules_withdrawn_total{reason="rollback", instance="i"}', "0x10 1 2 3 4x10")],
        [firing("LoopwiseRewriteRollbacks", "20m", {"severity": "info"})]),
    # The loop's safety signals. Their counters start at 0 (created at the services' start).
    "an idle stack, every loop counter at 0, is quiet": ("1m",
        [(f'loopwise_trainer_production_rollbacks_total{{{KEY}, reason="below_static", instance="t"}}', "0x40"),
         (f'loopwise_inference_delta_rollbacks_total{{{KEY}, instance="i"}}', "0x40"),
         (f'loopwise_inference_deltas_total{{{KEY}, result="applied", instance="i"}}', "0x40"),
         *[(f'loopwise_trainer_deltas_total{{{KEY}, outcome="{o}", instance="t"}}', "0x40")
           for o in ("published", "empty", "no_base", "failed", "restreamed")],
         *[(f'loopwise_inference_delta_example_to_applied_seconds_bucket{{le="{le}", instance="i"}}', "0x40")
           for le in ("2", "5", "7.5", "+Inf")],
         ('loopwise_trainer_delta_loop_heartbeat_timestamp_seconds{instance="t"}', "0+60x40")],
        [firing(name, "35m") for name in (
            "LoopwiseProductionRolledBack", "LoopwiseProductionRollbacksRepeated", "LoopwiseDeltaRollbacksRepeated",
            "LoopwiseDeltaFreshnessSlow", "LoopwiseDeltasNotApplied", "LoopwiseTrainerDeltasStopped",
            "LoopwiseTrainerDeltaLoopStalled")]),
    "a first production rollback fires for an hour": ("1m",
        [(f'loopwise_trainer_production_rollbacks_total{{{KEY}, reason="below_static", instance="t"}}', "0x10 1x80")],
        [firing("LoopwiseProductionRolledBack", "5m"),
         firing("LoopwiseProductionRolledBack", "15m", {"tenant": "default", "model": "ranker", "reason": "below_static"}),
         firing("LoopwiseProductionRolledBack", "80m"),
         firing("LoopwiseProductionRollbacksRepeated", "15m")]),
    "three production rollbacks in 6 hours are critical, two are not": ("10m",
        [(f'loopwise_trainer_production_rollbacks_total{{{KEY}, reason="below_static", instance="t"}}', "0 1 2 2 3x30")],
        [firing("LoopwiseProductionRollbacksRepeated", "30m"),
         firing("LoopwiseProductionRollbacksRepeated", "50m",
                {"severity": "critical", "tenant": "default", "model": "ranker"})]),
    "six delta rollbacks in an hour on one replica fire": ("5m",
        [(f'loopwise_inference_delta_rollbacks_total{{{KEY}, instance="i"}}', "0 1 2 3 4 5 6x20")],
        [firing("LoopwiseDeltaRollbacksRepeated", "35m", {"tenant": "default", "model": "ranker", "instance": "i"})]),
    "five in an hour do not": ("5m",
        [(f'loopwise_inference_delta_rollbacks_total{{{KEY}, instance="i"}}', "0 1 2 3 4 5x20")],
        [firing("LoopwiseDeltaRollbacksRepeated", "35m"), firing("LoopwiseDeltaRollbacksRepeated", "90m")]),
    "a tenth of the deltas applied past 7.5 s for 15 minutes fires": ("1m",
        [*[(f'loopwise_inference_delta_example_to_applied_seconds_bucket{{le="{le}", instance="i"}}', "0+90x40")
           for le in ("2", "5", "7.5")],
         ('loopwise_inference_delta_example_to_applied_seconds_bucket{le="+Inf", instance="i"}', "0+100x40")],
        [firing("LoopwiseDeltaFreshnessSlow", "10m"), firing("LoopwiseDeltaFreshnessSlow", "25m", {"instance": "i"})]),
    "deltas applied within 2 s are quiet": ("1m",
        [(f'loopwise_inference_delta_example_to_applied_seconds_bucket{{le="{le}", instance="i"}}', "0+100x40")
         for le in ("2", "5", "7.5", "+Inf")],
        [firing("LoopwiseDeltaFreshnessSlow", "35m")]),
    "the trainer publishes, one replica of two applies nothing": ("1m",
        [(f'loopwise_trainer_deltas_total{{{KEY}, outcome="published", instance="t"}}', "0+10x40"),
         (f'loopwise_inference_deltas_total{{{KEY}, result="applied", instance="i"}}', "0x40"),
         (f'loopwise_inference_deltas_total{{{KEY}, result="applied", instance="j"}}', "0+10x40")],
        [firing("LoopwiseDeltasNotApplied", "5m"),
         firing("LoopwiseDeltasNotApplied", "25m", {"tenant": "default", "model": "ranker", "instance": "i"})]),
    "the trainer's steps find no base and publish nothing": ("1m",
        [(f'loopwise_trainer_deltas_total{{{KEY}, outcome="no_base", instance="t"}}', "0+10x40"),
         (f'loopwise_trainer_deltas_total{{{KEY}, outcome="published", instance="t"}}', "0x40")],
        [firing("LoopwiseTrainerDeltasStopped", "5m"),
         firing("LoopwiseTrainerDeltasStopped", "25m", {"tenant": "default", "model": "ranker"})]),
    "a failed step now and then while deltas are published is quiet": ("1m",
        [(f'loopwise_trainer_deltas_total{{{KEY}, outcome="failed", instance="t"}}', "0+1x40"),
         (f'loopwise_trainer_deltas_total{{{KEY}, outcome="published", instance="t"}}', "0+10x40")],
        [firing("LoopwiseTrainerDeltasStopped", "25m")]),
    # The delta loop's heartbeat (a timestamp; time() is the evaluation time here) stops at 10m:
    # older than 5 minutes from 16m, firing 5 minutes later. Nothing is counted meanwhile.
    "a delta loop whose pass hangs fires, though it counts nothing": ("1m",
        [('loopwise_trainer_delta_loop_heartbeat_timestamp_seconds{instance="t"}', "0+60x10 600x30"),
         *[(f'loopwise_trainer_deltas_total{{{KEY}, outcome="{o}", instance="t"}}', "0x40")
           for o in ("published", "empty", "no_base", "failed", "restreamed")]],
        [firing("LoopwiseTrainerDeltaLoopStalled", "19m"),
         firing("LoopwiseTrainerDeltaLoopStalled", "25m", {"instance": "t"}),
         firing("LoopwiseTrainerDeltasStopped", "25m")]),
    "a pass slowed for 4 minutes (a send waiting out its timeout) is quiet": ("1m",
        [('loopwise_trainer_delta_loop_heartbeat_timestamp_seconds{instance="t"}', "0+60x10 600x3 840+60x20")],
        [firing("LoopwiseTrainerDeltaLoopStalled", "13m"), firing("LoopwiseTrainerDeltaLoopStalled", "30m")]),
    "a trainer without a delta loop (its heartbeat at 0) is quiet": ("1m",
        [('loopwise_trainer_delta_loop_heartbeat_timestamp_seconds{instance="t"}', "0x40")],
        [firing("LoopwiseTrainerDeltaLoopStalled", "35m")]),
}


@pytest.fixture(scope="module")
def rules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    groups = alerts.rule_groups()
    for group in groups["groups"]:
        for rule in group["rules"]:
            del rule["annotations"]
    path = tmp_path_factory.mktemp("rules") / "alerts.yml"
    path.write_text(yaml.safe_dump(groups))
    return path


@pytest.mark.parametrize("case", sorted(CASES))
def test_alert_logic(case: str, rules: Path, tmp_path: Path) -> None:
    interval, series, expected = CASES[case]
    spec = {"rule_files": [str(rules)], "evaluation_interval": "1m",
            "tests": [{"interval": interval, "input_series": [{"series": s, "values": v} for s, v in series],
                       "alert_rule_test": expected}]}
    (tmp_path / "test.yml").write_text(yaml.safe_dump(spec, sort_keys=False))
    result = subprocess.run([binary("promtool"), "test", "rules", str(tmp_path / "test.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
