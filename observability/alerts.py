"""Loopwise's Prometheus alert rules, as data: one `Alert` per condition.

Each alert names its ``signal`` (the quantity it watches, a PromQL expression
that returns a series whenever the services run and see traffic) and its
``expr`` (the signal compared with its threshold). ``rule_file`` renders the
Prometheus rule file; `observability/dashboards.py` writes it, with the
dashboards, to ``observability/prometheus/alerts.yml`` (Docker Compose) and
``helm/loopwise/files/alerts.yml`` (the chart's PrometheusRule).
``tests/observability/test_alert_logic.py`` checks the rules on synthetic
series (``promtool test rules``); ``tests/observability/test_prometheus.py``
evaluates every signal and every expression against a real Prometheus
scraping the local stack, with the file rendered with ``for: 0s``, and drives
alerts to firing.

Metric names are those of ``services/*/metrics.py`` and
``shared/grpcserver.py`` (``loopwise_<service>_rpc_*``).
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml

GROUP = "loopwise"
NO_MODEL_HOURS = 6  # "no new model in N hours"


@dataclass(frozen=True)
class Alert:
    name: str
    signal: str  # what is watched: returns series while the stack runs with traffic
    expr: str  # the condition (usually the signal against a threshold)
    for_: str
    severity: str
    summary: str
    description: str


def _lag(service: str, remedy: str) -> Alert:
    signal = f"max by (topic) (loopwise_{service}_consumer_lag_records)"
    return Alert(
        f"Loopwise{service.title()}ConsumerLag", signal, f"{signal} > 100000", "15m", "warning",
        f"The {service} is more than 100k records behind on {{{{ $labels.topic }}}}",
        f"Consumer lag of the {service} on {{{{ $labels.topic }}}} is {{{{ $value | humanize }}}} records "
        f"(loopwise_{service}_consumer_lag_records): {remedy}")


def _dead_share(dead: str, read: str) -> str:
    """Dead-lettered records per record read (read floored at 1/s, so a trickle does not page)."""
    return f"sum(rate({dead}[5m])) / clamp_min(sum(rate({read}[5m])), 1)"


def _published(hours: int) -> str:
    """(tenant, model) with a version published in the last ``hours``: the counter grew, or its
    series is new (a trainer's first publish since it started creates it; increase() misses that)."""
    published = 'loopwise_trainer_runs_total{outcome="published"}'
    return (f"sum by (tenant, model) (increase({published}[{hours}h])) > 0"
            f" or sum by (tenant, model) ({published} unless {published} offset {hours}h)")


ALERTS: tuple[Alert, ...] = (
    _lag("miner", "add miner replicas (at most the topics' partition count) or look for a slow or stuck one."),
    _lag("trainer", "look for a stuck consumer, a slow disk under its window, or runs that hold the CPU."),
    Alert(
        "LoopwiseCollectorRejecting",
        "sum(rate(loopwise_collector_events_rejected_total[5m])) / "
        "clamp_min(sum(rate(loopwise_collector_events_accepted_total[5m])) "
        "+ sum(rate(loopwise_collector_events_rejected_total[5m])), 1e-9)",
        "", "10m", "warning",
        "The collector refuses more than 5% of the events it receives",
        "{{ $value | humanizePercentage }} of the events are refused by validation "
        "(loopwise_collector_events_rejected_total{reason} says why): a client sends malformed events."),
    Alert(
        "LoopwiseMinerDeadLetters",
        _dead_share("loopwise_miner_deadlettered_total", "loopwise_miner_records_total"),
        "", "5m", "warning",
        "The miner dead-letters more than 1% of the records it reads",
        "{{ $value | humanizePercentage }} of the miner's records go to the dead-letter topic "
        "(loopwise_miner_deadlettered_total{reason} says why; the records are on loopwise.deadletter.v1)."),
    Alert(
        "LoopwiseTrainerDeadLetters",
        _dead_share('loopwise_trainer_records_total{outcome="dead"}', "loopwise_trainer_records_total"),
        "", "5m", "warning",
        "The trainer dead-letters more than 1% of the records it reads",
        "{{ $value | humanizePercentage }} of the examples and preference pairs the trainer reads do not "
        "decode (loopwise_trainer_records_total{outcome=\"dead\"}); they are on loopwise.deadletter.v1."),
    Alert(
        "LoopwiseRankLatencyHigh",
        'histogram_quantile(0.99, sum by (le) (rate(loopwise_inference_rpc_seconds_bucket{method="Rank"}[5m])))',
        "", "10m", "warning",
        "Rank p99 latency is above 50 ms",
        "The 99th percentile of Rank is {{ $value | humanizeDuration }} (loopwise_inference_rpc_seconds): "
        "look at candidates per call and at CPU throttling of the inference pods."),
    Alert(
        "LoopwiseModelVersionRefused",
        "sum by (tenant, model, reason) (increase(loopwise_inference_model_refusals_total[15m]))",
        # a replica's first refusal creates the series (increase() cannot see it): new series count too
        "sum by (tenant, model, reason) (increase(loopwise_inference_model_refusals_total[15m])) > 0"
        " or sum by (tenant, model, reason) (loopwise_inference_model_refusals_total"
        " unless loopwise_inference_model_refusals_total offset 15m)",
        "0m", "warning",
        "Inference refused a model version of {{ $labels.tenant }}/{{ $labels.model }}",
        "A version was refused ({{ $labels.reason }}); the previous version keeps serving. "
        "`loopwise model list` marks versions that would not serve and says why."),
    Alert(
        "LoopwiseRewriteRollbacks",
        'sum(increase(loopwise_miner_rules_withdrawn_total{reason="rollback"}[1h]))',
        "", "0m", "info",
        "More than 3 rewrite rules rolled back in the last hour",
        "{{ $value }} rules were withdrawn because their rewritten turns did worse than the original "
        "(loopwise_miner_rules_withdrawn_total{reason=\"rollback\"}): the mining thresholds may be too loose."),
    Alert(
        "LoopwiseNoNewModel",
        "time() - max by (tenant, model) (loopwise_trainer_last_run_timestamp_seconds)",
        f"(time() - max by (tenant, model) (loopwise_trainer_last_run_timestamp_seconds) > {NO_MODEL_HOURS * 3600})"
        f" or (sum by (tenant, model) (increase(loopwise_trainer_runs_total[{NO_MODEL_HOURS}h])) > 0"
        f" unless on (tenant, model) ({_published(NO_MODEL_HOURS)}))",
        "0m", "warning",
        f"No new model for {{{{ $labels.tenant }}}}/{{{{ $labels.model }}}} in {NO_MODEL_HOURS} hours",
        f"In {NO_MODEL_HOURS} h the trainer either ran no training run or published none of them "
        "(loopwise_trainer_runs_total{outcome}: refused by the gate, or failed): the model stops following "
        "what users do. Check the trainer's lag, its window and the gate's figures."),
    Alert(
        "LoopwiseInferenceStaleModel",
        'loopwise_inference_model_version{role="wanted"} - ignoring (role) '
        'loopwise_inference_model_version{role="serving"}',
        'loopwise_inference_model_version{role="wanted"} != ignoring (role) '
        'loopwise_inference_model_version{role="serving"}',
        "10m", "warning",
        "{{ $labels.instance }} does not serve the version its pointer asks for",
        "Inference on {{ $labels.instance }} serves another version of {{ $labels.tenant }}/{{ $labels.model }} "
        "than the pointer's (loopwise_inference_model_version{role}): the version is refused, or it "
        "cannot be read from the model store."),
    Alert(
        "LoopwiseInferenceStaleRewrites",
        "max by (instance, tenant) (loopwise_inference_rewrite_table_age_seconds)",
        "", "5m", "warning",
        "{{ $labels.instance }} has not confirmed its rewrite table of {{ $labels.tenant }} for 5 minutes",
        "The local copy of the rewrite table was last confirmed current {{ $value | humanizeDuration }} ago "
        "(loopwise_inference_rewrite_table_age_seconds): Redis is unreachable from this replica."),
)

# The thresholds of the alerts whose ``expr`` is left empty above: signal > threshold.
THRESHOLDS = {
    "LoopwiseCollectorRejecting": "0.05",
    "LoopwiseMinerDeadLetters": "0.01",
    "LoopwiseTrainerDeadLetters": "0.01",
    "LoopwiseRankLatencyHigh": "0.05",
    "LoopwiseRewriteRollbacks": "3",
    "LoopwiseInferenceStaleRewrites": "300",
}


def expression(alert: Alert) -> str:
    return alert.expr or f"{alert.signal} > {THRESHOLDS[alert.name]}"


def rule_groups(for_override: str | None = None, interval: str | None = None) -> dict:
    """The rule file as a dict; ``for_override`` replaces every ``for:`` (the test uses 0s)."""
    rules = []
    for alert in ALERTS:
        rules.append({
            "alert": alert.name,
            "expr": expression(alert),
            "for": for_override or alert.for_,
            "labels": {"severity": alert.severity, "service": "loopwise"},
            "annotations": {"summary": alert.summary, "description": alert.description},
        })
    group: dict = {"name": GROUP}
    if interval:
        group["interval"] = interval
    group["rules"] = rules
    return {"groups": [group]}


def rule_file(for_override: str | None = None, interval: str | None = None) -> str:
    header = ("# Generated by observability/dashboards.py from observability/alerts.py: "
              "edit those and run `make dashboards`.\n")
    return header + yaml.safe_dump(rule_groups(for_override, interval), sort_keys=False, width=1000,
                                   allow_unicode=True)
