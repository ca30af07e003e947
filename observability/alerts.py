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


def _applied(window: str) -> str:
    """Deltas each replica applied per (tenant, model) in ``window``: inference creates the
    ``applied`` series at 0 when a version starts serving, so a replica that never applied
    one answers 0 rather than nothing."""
    return f'sum by (instance, tenant, model) (increase(loopwise_inference_deltas_total{{result="applied"}}[{window}]))'


def _trainer_deltas(outcome: str, window: str) -> str:
    """The trainer's delta steps of ``outcome`` (a regex) per (tenant, model) in ``window``; the
    trainer creates every outcome's series at 0 for a (tenant, model) it takes examples of."""
    return f'sum by (tenant, model) (increase(loopwise_trainer_deltas_total{{outcome=~"{outcome}"}}[{window}]))'


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
    # The self-learning loop's safety signals: the watchdog's production rollbacks, the deltas'
    # guard, and how fresh the deltas are. Their counters exist at 0 from the start (the trainer's
    # for its tenants' default model, inference's when a version serves), so increase() sees a
    # first rollback and an idle stack answers 0, not nothing.
    Alert(
        "LoopwiseProductionRolledBack",
        "sum by (tenant, model, reason) (increase(loopwise_trainer_production_rollbacks_total[1h]))",
        "", "0m", "warning",
        "The watchdog rolled production of {{ $labels.tenant }}/{{ $labels.model }} back",
        "In the last hour the serving version's online AUC fell below the static cold-start model's on the "
        "same traffic and the trainer's watchdog moved the pointer back ({{ $labels.reason }}; "
        "loopwise_trainer_production_rollbacks_total, loopwise_trainer_production_online_auc{scorer}). "
        "The model serves again, but a version the gate passed served worse than the model a fresh stack "
        "starts from: compare the gate's holdout figures (`loopwise model list`) with the online ones."),
    Alert(
        "LoopwiseProductionRollbacksRepeated",
        "sum by (tenant, model) (increase(loopwise_trainer_production_rollbacks_total[6h]))",
        "sum by (tenant, model) (increase(loopwise_trainer_production_rollbacks_total[6h])) >= 3",
        "0m", "critical",
        "Production of {{ $labels.tenant }}/{{ $labels.model }} rolled back 3 times or more in 6 hours",
        "{{ $value | humanize }} watchdog rollbacks in 6 h (loopwise_trainer_production_rollbacks_total): "
        "the trainer keeps publishing versions that serve worse online than the static model, so the loop "
        "spends its time on old versions or the cold-start one. The gate's holdout does not predict online "
        "quality: look at the feedback mode and the attribution window, the replay window's size, and the "
        "gate's static comparison (LOOPWISE_TRAINER_GATE_STATIC)."),
    Alert(
        "LoopwiseDeltaRollbacksRepeated",
        "sum by (instance, tenant, model) (increase(loopwise_inference_delta_rollbacks_total[1h]))",
        "sum by (instance, tenant, model) (increase(loopwise_inference_delta_rollbacks_total[1h])) >= 6",
        "0m", "warning",
        "{{ $labels.instance }} dropped the deltas of {{ $labels.tenant }}/{{ $labels.model }} 6 times or more "
        "in an hour",
        "The guard of {{ $labels.instance }} dropped delta streams back to their base version "
        "{{ $value | humanize }} times in an hour (loopwise_inference_delta_rollbacks_total; "
        "loopwise_inference_delta_online_auc{scorer} shows base against deltas): the trainer's delta steps "
        "serve worse than the version they start from, and each restream is dropped again. Look at the "
        "sparse tables' learning rates (LOOPWISE_TRAINER_EMBEDDING_LR, _LINEAR_LR, _CROSS_LR) and the "
        "guard's margin (LOOPWISE_DELTA_GUARD_MARGIN); the base version keeps serving meanwhile."),
    Alert(
        "LoopwiseDeltaFreshnessSlow",
        "histogram_quantile(0.99, sum by (instance, le) "
        "(rate(loopwise_inference_delta_example_to_applied_seconds_bucket[10m])))",
        "", "15m", "warning",
        "Examples reach Rank on {{ $labels.instance }} through deltas in more than 5 s (p99)",
        "The 99th percentile from an example produced to its delta applied on {{ $labels.instance }} is "
        "{{ $value | humanizeDuration }} (loopwise_inference_delta_example_to_applied_seconds; the goal is "
        "p99 5 s, p50 2 s): look at the trainer's consumer lag and delta step time "
        "(loopwise_trainer_delta_step_seconds) and at this replica's deltas consumer."),
    Alert(
        "LoopwiseDeltasNotApplied",
        _applied("10m"),
        f"{_applied('10m')} == 0 and on (tenant, model) {_trainer_deltas('published', '10m')} > 0",
        "10m", "warning",
        "{{ $labels.instance }} applies no deltas of {{ $labels.tenant }}/{{ $labels.model }}",
        "The trainer publishes deltas but {{ $labels.instance }} applied none in 10 minutes "
        "(loopwise_inference_deltas_total{result}: pending waits for a missing sequence, stale_stream is "
        "another base's): its deltas consumer is down (loopwise_inference_delta_consumer_up), it serves "
        "another version than the trainer's base, or its guard dropped the stream and no restream came "
        "(LOOPWISE_TRAINER_DELTA_RESTREAM_S). Rank serves the base version without what was learnt since."),
    Alert(
        "LoopwiseTrainerDeltasStopped",
        _trainer_deltas("failed|no_base", "10m"),
        f"{_trainer_deltas('failed|no_base', '10m')} > 0"
        f" unless on (tenant, model) {_trainer_deltas('published', '10m')} > 0",
        "10m", "warning",
        "The trainer publishes no deltas of {{ $labels.tenant }}/{{ $labels.model }}",
        "In 10 minutes the trainer's delta steps failed or found no base that takes deltas, and none was "
        "published (loopwise_trainer_deltas_total{outcome}; its log says why: `delta step failed`, `no deltas "
        "on this version`): the model learns only through full versions, every training run's time apart."),
    Alert(
        "LoopwiseTrainerDeltaLoopStalled",
        # 0: a trainer without a delta loop (LOOPWISE_DELTAS off); a trainer not scraped has no series
        "time() - max by (instance) (loopwise_trainer_delta_loop_heartbeat_timestamp_seconds > 0)",
        "", "5m", "warning",
        "The delta loop of the trainer {{ $labels.instance }} has not passed for 5 minutes",
        "The trainer's delta loop last ended a pass {{ $value | humanizeDuration }} ago "
        "(loopwise_trainer_delta_loop_heartbeat_timestamp_seconds; a pass takes a fraction of a second, or a "
        "send's timeout when the broker is away): a step, a send or a read of the serving pointer hangs, or the "
        "loop died. It counts nothing meanwhile (LoopwiseTrainerDeltasStopped stays quiet), no delta goes out, "
        "and the replicas serve their base version without what was learnt since. Restarting the trainer "
        "starts the loop again (the replay window is on disk)."),
)

# The thresholds of the alerts whose ``expr`` is left empty above: signal > threshold.
THRESHOLDS = {
    "LoopwiseCollectorRejecting": "0.05",
    "LoopwiseMinerDeadLetters": "0.01",
    "LoopwiseTrainerDeadLetters": "0.01",
    "LoopwiseRankLatencyHigh": "0.05",
    "LoopwiseRewriteRollbacks": "3",
    "LoopwiseInferenceStaleRewrites": "300",
    "LoopwiseProductionRolledBack": "0",
    "LoopwiseDeltaFreshnessSlow": "5",
    "LoopwiseTrainerDeltaLoopStalled": "300",
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
