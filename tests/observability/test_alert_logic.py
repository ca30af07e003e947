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
