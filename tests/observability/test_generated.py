"""The generated observability files: fresh, valid for promtool, and naming only metrics the
services define (read from their metrics classes, nothing started)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from loopwise.collector.metrics import CollectorMetrics
from loopwise.inference.metrics import InferenceMetrics
from loopwise.miner.metrics import MinerMetrics
from loopwise.trainer.metrics import TrainerMetrics
from observability import alerts, dashboards
from tests.observability.prom import binary, dashboard_queries, grafana_expr, metric_names

ROOT = Path(__file__).resolve().parents[2]
OBS = ROOT / "observability"
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "gauge": ("",), "info": ("_info",), "summary": ("", "_sum", "_count", "_created")}


def defined_metrics() -> set[str]:
    """Every sample name the four services can export."""
    names = set()
    for metrics_class in (CollectorMetrics, InferenceMetrics, MinerMetrics, TrainerMetrics):
        registry = CollectorRegistry()
        metrics_class(registry)
        for family in registry.collect():
            names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
    return names


def all_expressions() -> list[tuple[str, str]]:
    out = [(title, grafana_expr(expr)) for title, expr in dashboard_queries(OBS / "grafana" / "dashboards")]
    for alert in alerts.ALERTS:
        out += [(alert.name, alert.signal), (alert.name, alerts.expression(alert))]
    return out


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([binary("promtool"), *args], capture_output=True, text=True, timeout=60)


def test_generated_files_are_fresh() -> None:
    stale = [str(path.relative_to(ROOT)) for path in dashboards.stale()]
    assert not stale, f"run `make dashboards`: stale {stale}"


def test_every_expression_names_only_metrics_the_services_define() -> None:
    defined = defined_metrics()
    unknown = [f"{where}: {name}" for where, expr in all_expressions() for name in sorted(metric_names(expr) - defined)]
    assert not unknown, unknown
    assert len(all_expressions()) > 50


@pytest.mark.parametrize("path", [OBS / "prometheus" / "alerts.yml", ROOT / "helm/loopwise/files/alerts.yml"],
                         ids=["compose", "helm"])
def test_promtool_checks_the_rules(path: Path) -> None:
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts.ALERTS)} rules found" in result.stdout


def test_promtool_checks_the_compose_scrape_config() -> None:
    result = promtool("check", "config", str(OBS / "prometheus" / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alerts_cover_what_the_operators_watch() -> None:
    exprs = {a.name: alerts.expression(a) for a in alerts.ALERTS}
    assert len(exprs) == len(alerts.ALERTS)
    watched = {
        "consumer lag": ("loopwise_miner_consumer_lag_records", "loopwise_trainer_consumer_lag_records"),
        "rejected": ("loopwise_collector_events_rejected_total",),
        "dead-lettered": ("loopwise_miner_deadlettered_total", 'loopwise_trainer_records_total{outcome="dead"}'),
        "Rank p99": ('loopwise_inference_rpc_seconds_bucket{method="Rank"}',),
        "refused versions": ("loopwise_inference_model_refusals_total",),
        "rewrite rollbacks": ('loopwise_miner_rules_withdrawn_total{reason="rollback"}',),
        "no new model": ('loopwise_trainer_runs_total{outcome="published"}',),
        "stale version": ('loopwise_inference_model_version{role="serving"}',),
        "production rollbacks": ("loopwise_trainer_production_rollbacks_total",),
        "delta rollbacks": ("loopwise_inference_delta_rollbacks_total",),
        "delta freshness": ("loopwise_inference_delta_example_to_applied_seconds_bucket",),
        "deltas not applied": ('loopwise_inference_deltas_total{result="applied"}',
                               'loopwise_trainer_deltas_total{outcome=~"published"}'),
        "a hung delta loop": ("loopwise_trainer_delta_loop_heartbeat_timestamp_seconds",),
    }
    for what, needles in watched.items():
        for needle in needles:
            assert any(needle in expr for expr in exprs.values()), f"no alert on {what} ({needle})"
    for alert in alerts.ALERTS:
        assert alert.severity in ("info", "warning", "critical") and alert.summary and alert.description


def test_dashboards_are_well_formed() -> None:
    files = sorted((OBS / "grafana" / "dashboards").glob("*.json"))
    boards = [json.loads(path.read_text()) for path in files]
    assert [b["uid"] for b in boards] == [path.stem for path in files]
    assert len({b["uid"] for b in boards}) == len(boards) == len(dashboards.BOARDS)
    for board in boards:
        assert [v["name"] for v in board["templating"]["list"]] == ["datasource"]
        ids = [p["id"] for p in board["panels"]]
        assert len(set(ids)) == len(ids), board["title"]
        for panel in board["panels"]:
            assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
            if panel["type"] != "row":
                assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]


def test_the_online_auc_reads_the_bins_inference_writes() -> None:
    from loopwise.inference.memory.bank import BIN_EDGES

    assert dashboards.SCORE_BINS == tuple(BIN_EDGES)
