"""Loopwise's Grafana dashboards as code (Grafana's `grafana-foundation-sdk`), and the
one command that writes every generated observability file:

    make dashboards      # = python observability/dashboards.py

writes ``observability/grafana/dashboards/*.json`` (Docker Compose's Grafana),
``observability/prometheus/alerts.yml`` (from `observability/alerts.py`) and
the same files under ``helm/loopwise/files/`` (the chart's dashboard
ConfigMaps and PrometheusRule). The files are committed;
``tests/observability/test_generated.py`` fails when they are stale, and
``tests/observability/test_prometheus.py`` runs every panel's query against a
real Prometheus scraping the local stack. ``--check`` only compares.

Dashboards: traffic and latency per RPC; learning (online AUC and Brier
score of the served scores, holdout AUC, feedback joins, position
propensities, defect rate and live rewrite rules); training
runs, gate decisions, model versions, the deltas' freshness and the
production and delta rollbacks; Kafka lag and dead letters. Every
panel queries the data source chosen in the ``datasource`` variable; queries
use Grafana's ``$__rate_interval`` and ``$__range``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import LegendDisplayMode, LegendPlacement
from grafana_foundation_sdk.models.dashboard import DataSourceRef

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if __package__ in (None, ""):  # run as a script: `python observability/dashboards.py`
    sys.path.insert(0, str(ROOT))
from observability import alerts  # noqa: E402

RATE = "$__rate_interval"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Chart:
    title: str
    unit: str
    queries: tuple[Query, ...]
    description: str = ""
    kind: str = "timeseries"  # or "stat"


@dataclass(frozen=True)
class Board:
    uid: str
    title: str
    description: str
    rows: tuple[tuple[str, tuple[Chart, ...]], ...]


def q(expr: str, legend: str = "") -> Query:
    return Query(expr, legend)


# The score bins of loopwise_inference_memory_score_bin_total (upper edges, 0.05 wide; the
# inference service's memory.bank.BIN_EDGES, which tests/observability/test_generated.py compares).
SCORE_BINS = tuple(f"{(b + 1) / 20:.2f}" for b in range(20))


def online_auc(window: str = "$__range") -> str:
    """AUC of the scored prediction errors by scorer (base: the served score; memory: compensated),
    from the score bins: with n_i, p_i the negatives and positives in bin i and C_i the positives
    in bins up to i, AUC = 1 - (sum_i n_i C_i - sum_i n_i p_i / 2) / (N P) (ties count a half)."""
    bins = "loopwise_inference_memory_score_bin_total"
    key = "tenant, model, scorer"

    def per_bin(label: str) -> str:
        return f'sum by ({key}, bin) (increase({bins}{{label="{label}"}}[{window}]))'

    def total(label: str) -> str:
        return f'sum by ({key}) (increase({bins}{{label="{label}"}}[{window}]))'

    cumulative = " or ".join(
        f'label_replace(sum by ({key}) (increase({bins}{{label="1", bin=~"{"|".join(SCORE_BINS[:i + 1])}"}}'
        f'[{window}])), "bin", "{edge}", "", "")' for i, edge in enumerate(SCORE_BINS))
    below = f"sum by ({key}) ({per_bin('0')} * on ({key}, bin) ({cumulative}))"
    ties = f"sum by ({key}) ({per_bin('0')} * on ({key}, bin) {per_bin('1')})"
    zero = f"{total('0')} * 0"  # a bin product may have no series at all
    return f"1 - (({below} or {zero}) - 0.5 * ({ties} or {zero})) / ({total('0')} * on ({key}) {total('1')})"


def rpc_rows(service: str) -> tuple[Chart, ...]:
    requests = f"loopwise_{service}_rpc_requests_total"
    buckets = f"loopwise_{service}_rpc_seconds_bucket"
    return (
        Chart("Calls per second by method and status", "reqps",
              (q(f"sum by (method, code) (rate({requests}[{RATE}]))", "{{method}} {{code}}"),)),
        Chart("Latency by method (p50, p99)", "s",
              (q(f"histogram_quantile(0.5, sum by (le, method) (rate({buckets}[{RATE}])))", "p50 {{method}}"),
               q(f"histogram_quantile(0.99, sum by (le, method) (rate({buckets}[{RATE}])))", "p99 {{method}}"))),
        Chart("Share of calls not OK", "percentunit",
              (q(f'1 - sum by (method) (rate({requests}{{code="OK"}}[{RATE}])) '
                 f"/ sum by (method) (rate({requests}[{RATE}]))", "{{method}}"),),
              "Calls answered with any status but OK (loopwise_" + service + "_rpc_requests_total{code})."),
    )


RPC = Board("loopwise-rpc", "Loopwise / RPC traffic and latency",
            "gRPC calls per method and status code and their latency, for the collector and inference.", (
                ("Collector", (
                    *rpc_rows("collector"),
                    Chart("Events per second", "ops",
                          (q(f"sum by (kind) (rate(loopwise_collector_events_accepted_total[{RATE}]))",
                             "accepted {{kind}}"),
                           q(f"sum by (reason) (rate(loopwise_collector_events_rejected_total[{RATE}]))",
                             "rejected {{reason}}"))),
                    Chart("Producer", "short",
                          (q("min(loopwise_collector_producer_up)", "producer up (min over replicas)"),
                           q("sum(loopwise_collector_in_flight_events)", "events in flight")),
                          "0 while a replica's producer cannot deliver (its health is NOT_SERVING then)."),
                )),
                ("Inference", (
                    *rpc_rows("inference"),
                    Chart("Rank: candidates per call and scoring time (p99)", "short",
                          (q("histogram_quantile(0.99, sum by (le) "
                             f"(rate(loopwise_inference_rank_candidates_bucket[{RATE}])))", "candidates p99"),
                           q("1000 * histogram_quantile(0.99, sum by (le) "
                             f"(rate(loopwise_inference_score_seconds_bucket[{RATE}])))", "scoring ms p99"))),
                    Chart("Impressions", "short",
                          (q(f"sum(rate(loopwise_inference_impressions_emitted_total[{RATE}]))", "emitted per s"),
                           q("sum(loopwise_inference_impression_buffer)", "waiting in the buffer"),
                           q("max(loopwise_inference_impressions_degraded)", "degraded (1: not delivered)"))),
                )),
            ))

LEARNING = Board("loopwise-learning", "Loopwise / Learning",
                 "What the loop learns: the trainer's holdout figures, feedback joined to impressions, "
                 "position propensities, and the assistant's defect rate and rewrite rules.", (
                     ("Ranking", (
                         Chart("Online AUC of served scores (over the range)", "percentunit",
                               (q(online_auc(), "{{tenant}}/{{model}} {{scorer}}"),),
                               "Prediction errors scored as they arrive, before the error memory learns "
                               "them: base is the score inference served, memory the score compensated by "
                               "the error memory (served only in mode on)."),
                         Chart("Online Brier score of served scores (over the range)", "short",
                               (q("sum by (tenant, model, scorer) "
                                  "(increase(loopwise_inference_memory_squared_error_total[$__range])) "
                                  "/ on (tenant, model) group_left sum by (tenant, model) "
                                  "(increase(loopwise_inference_memory_scored_total[$__range]))",
                                  "{{tenant}}/{{model}} {{scorer}}"),)),
                         Chart("Holdout AUC: candidate vs production", "percentunit",
                               (q('max by (tenant, model, role) (loopwise_trainer_gate_metric{metric="auc"})',
                                  "{{tenant}}/{{model}} {{role}}"),),
                               "AUC on the most recent slice of the window, of the last run's candidate and of "
                               "the model serving when it ran."),
                         Chart("Holdout log loss: candidate vs production", "short",
                               (q('max by (tenant, model, role) (loopwise_trainer_gate_metric{metric="logloss"})',
                                  "{{tenant}}/{{model}} {{role}}"),)),
                         Chart("Feedback joined to its impression", "short",
                               (q("max(loopwise_miner_join_ratio)", "join ratio since start"),
                                q(f"sum(rate(loopwise_miner_feedback_attributed_total[{RATE}]))",
                                  "attributed per s"),
                                q(f"sum(rate(loopwise_miner_feedback_received_total[{RATE}]))", "received per s"))),
                         Chart("Examination propensity by position", "percentunit",
                               (q("max by (position) (loopwise_miner_position_propensity)", "position {{position}}"),),
                               "The miner's position-based click model (EM on the stream)."),
                     )),
                     ("Assistant", (
                         Chart("Defect rate", "percentunit",
                               (q("max(loopwise_miner_defect_rate)", "defective share of recent turns"),)),
                         Chart("Live rewrite rules", "short",
                               (q("sum by (tenant) (loopwise_miner_rules_live)", "deployed {{tenant}}"),
                                q("max by (tenant) (loopwise_inference_rewrite_rules)",
                                  "in inference's copy {{tenant}}"))),
                         Chart("Rules created and withdrawn", "short",
                               (q(f"sum(increase(loopwise_miner_rules_created_total[{RATE}]))", "created"),
                                q(f"sum by (reason) (increase(loopwise_miner_rules_withdrawn_total[{RATE}]))",
                                  "withdrawn: {{reason}}"))),
                         Chart("Rewrite calls by outcome", "reqps",
                               (q(f"sum by (outcome) (rate(loopwise_inference_rewrites_total[{RATE}]))",
                                  "{{outcome}}"),)),
                     )),
                 ))

MODELS = Board("loopwise-models", "Loopwise / Training runs, gate and versions",
               "Training runs and their gate decisions, the versions published and served, hot swaps, "
               "refused versions, the deltas' freshness and the rollbacks.", (
                   ("Runs and gate", (
                       Chart("Runs by outcome (over the range)", "short",
                             (q("sum by (tenant, model, outcome) (increase(loopwise_trainer_runs_total[$__range]))",
                                "{{tenant}}/{{model}} {{outcome}}"),),
                             "published: passed the gate; refused: worse than production; failed: an error.",
                             "stat"),
                       Chart("Since the last run", "s",
                             (q("time() - max by (tenant, model) (loopwise_trainer_last_run_timestamp_seconds)",
                                "{{tenant}}/{{model}}"),), kind="stat"),
                       Chart("Gate figures of the last run", "short",
                             (q("max by (metric, role) (loopwise_trainer_gate_metric)", "{{metric}} {{role}}"),)),
                       Chart("Mean stage duration (last hour)", "s",
                             (q("sum by (stage) (rate(loopwise_trainer_run_seconds_sum[1h])) "
                                "/ sum by (stage) (rate(loopwise_trainer_run_seconds_count[1h]))", "{{stage}}"),)),
                       Chart("Training throughput and ONNX parity", "short",
                             (q("max by (tenant, model) (loopwise_trainer_examples_per_second)",
                                "examples/s {{tenant}}/{{model}}"),
                              q("max by (tenant, model) (loopwise_trainer_onnx_parity_max_abs_diff)",
                                "max |onnx - torch| {{tenant}}/{{model}}"))),
                       Chart("Replay window", "short",
                             (q("sum by (tenant, model, kind) (loopwise_trainer_window_rows)",
                                "{{tenant}}/{{model}} {{kind}}"),)),
                   )),
                   ("Versions", (
                       Chart("Versions: published, wanted and serving", "none",
                             (q("max by (tenant, model) (loopwise_trainer_published_version)",
                                "published {{tenant}}/{{model}}"),
                              q("max by (instance, tenant, model, role) (loopwise_inference_model_version)",
                                "{{role}} {{instance}} {{tenant}}/{{model}}"))),
                       Chart("Hot swaps and refused versions (over the range)", "short",
                             (q("sum by (tenant, model) (increase(loopwise_inference_model_swaps_total[$__range]))",
                                "swaps {{tenant}}/{{model}}"),
                              q("sum by (tenant, model, reason) "
                                "(increase(loopwise_inference_model_refusals_total[$__range]))",
                                "refused {{tenant}}/{{model}}: {{reason}}")), kind="stat"),
                       Chart("Swap time p90 (last hour)", "s",
                             (q("histogram_quantile(0.9, sum by (le) "
                                "(rate(loopwise_inference_model_swap_seconds_bucket[1h])))", "p90"),),
                             "From a new version seen to serving it."),
                   )),
                   ("Deltas and rollbacks", (
                       Chart("Example to its delta applied in Rank", "s",
                             tuple(q(f"histogram_quantile({p}, sum by (le) "
                                     f"(rate(loopwise_inference_delta_example_to_applied_seconds_bucket[{RATE}])))",
                                     f"p{round(p * 100)}") for p in (0.5, 0.99)),
                             "From an example produced to the delta that carries it applied on a replica (live "
                             "deltas). The goal is p50 2 s, p99 5 s (alert LoopwiseDeltaFreshnessSlow)."),
                       Chart("Deltas per second", "ops",
                             (q(f"sum by (tenant, model, outcome) (rate(loopwise_trainer_deltas_total[{RATE}]))",
                                "trainer {{tenant}}/{{model}} {{outcome}}"),
                              q(f"sum by (tenant, model, result) (rate(loopwise_inference_deltas_total[{RATE}]))",
                                "inference {{tenant}}/{{model}} {{result}}")),
                             "Delta steps of the trainer by outcome, and delta records read by the replicas by "
                             "result (applied, pending, duplicate, stale_stream, rolled_back, rejected ones)."),
                       Chart("Rollbacks (over the range)", "short",
                             (q("sum by (tenant, model) "
                                "(increase(loopwise_trainer_production_rollbacks_total[$__range]))",
                                "production {{tenant}}/{{model}}"),
                              q("sum by (tenant, model) (increase(loopwise_inference_delta_rollbacks_total[$__range]))",
                                "deltas {{tenant}}/{{model}}")),
                             "production: the trainer's watchdog moved the pointer back (online AUC below the static "
                             "model's); deltas: a replica's guard dropped a delta stream back to its base version.",
                             "stat"),
                       Chart("Since the trainer's delta loop last passed", "s",
                             (q("time() - max by (instance) "
                                "(loopwise_trainer_delta_loop_heartbeat_timestamp_seconds > 0)", "{{instance}}"),),
                             "A pass takes seconds at most; one that hangs counts no delta outcome but stops "
                             "this clock (alert LoopwiseTrainerDeltaLoopStalled above 5 minutes).", "stat"),
                   )),
               ))

KAFKA = Board("loopwise-kafka", "Loopwise / Kafka lag and dead letters",
              "How far the consumers are behind their topics, what they read and what they dead-letter.", (
                  ("Lag", (
                      Chart("Miner consumer lag", "short",
                            (q("sum by (topic) (loopwise_miner_consumer_lag_records)", "{{topic}}"),),
                            "Records between the miner's read position and each topic's end."),
                      Chart("Trainer consumer lag", "short",
                            (q("sum by (topic) (loopwise_trainer_consumer_lag_records)", "{{topic}}"),)),
                      Chart("Miner watermarks", "s",
                            (q("max(loopwise_miner_watermark_lag_seconds)", "wall clock - watermark"),
                             q("max(loopwise_miner_watermark_skew_seconds)", "partition skew"))),
                      Chart("Records read per second", "ops",
                            (q(f"sum by (kind) (rate(loopwise_miner_records_total[{RATE}]))", "miner {{kind}}"),
                             q(f"sum by (kind, outcome) (rate(loopwise_trainer_records_total[{RATE}]))",
                               "trainer {{kind}} {{outcome}}"))),
                  )),
                  ("Dead letters", (
                      Chart("Dead-lettered per second", "ops",
                            (q(f"sum by (reason) (rate(loopwise_miner_deadlettered_total[{RATE}]))",
                               "miner: {{reason}}"),
                             q(f'sum by (kind) (rate(loopwise_trainer_records_total{{outcome="dead"}}[{RATE}]))',
                               "trainer: {{kind}}")),
                            "The records are on the dead-letter topic with their reason."),
                      Chart("Records produced by the miner", "ops",
                            (q(f"sum by (topic) (rate(loopwise_miner_emitted_total[{RATE}]))", "{{topic}}"),)),
                  )),
              ))

BOARDS = (RPC, LEARNING, MODELS, KAFKA)


def _panel(chart: Chart) -> timeseries.Panel | stat.Panel:
    if chart.kind == "stat":
        panel: timeseries.Panel | stat.Panel = stat.Panel()
    else:
        panel = timeseries.Panel().legend(common_builders.VizLegendOptions().show_legend(True).display_mode(
            LegendDisplayMode.LIST).placement(LegendPlacement.BOTTOM))
    panel = panel.title(chart.title).unit(chart.unit).datasource(DATASOURCE).height(8).span(12)
    if chart.description:
        panel = panel.description(chart.description)
    for i, query in enumerate(chart.queries):
        target = prometheus.Dataquery().expr(query.expr).ref_id(chr(ord("A") + i)).datasource(DATASOURCE)
        if query.legend:
            target = target.legend_format(query.legend)
        panel = panel.with_target(target)
    return panel


def build(board: Board) -> dashboard.Dashboard:
    builder = (dashboard.Dashboard(board.title).uid(board.uid).description(board.description)
               .tags(["loopwise", "generated"]).refresh("30s").time("now-1h", "now").editable()
               .with_variable(dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")))
    ids = iter(range(1, 1000))
    for title, charts in board.rows:
        builder = builder.with_row(dashboard.Row(title).id(next(ids)))
        for chart in charts:
            builder = builder.with_panel(_panel(chart).id(next(ids)))
    return builder


def render(board: Board) -> str:
    return JSONEncoder(sort_keys=True, indent=2).encode(build(board).build()) + "\n"


def outputs() -> dict[Path, str]:
    """Every generated file (path -> text)."""
    files: dict[Path, str] = {}
    rules = alerts.rule_file()
    for base, dashboards in ((HERE / "prometheus", HERE / "grafana" / "dashboards"),
                             (ROOT / "helm" / "loopwise" / "files", ROOT / "helm" / "loopwise" / "files" / "dashboards")):
        files[base / "alerts.yml"] = rules
        for board in BOARDS:
            files[dashboards / f"{board.uid}.json"] = render(board)
    return files


def stale() -> list[Path]:
    """Generated files that differ from what the code generates now, are missing, or are
    dashboards the code no longer generates."""
    files = outputs()
    bad = [path for path, text in files.items() if not path.exists() or path.read_text() != text]
    for folder in {path.parent for path in files if path.suffix == ".json"}:
        bad += sorted(path for path in folder.glob("*.json") if path not in files)
    return bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale files (exit 1 if any)")
    args = parser.parse_args(argv)
    if args.check:
        bad = stale()
        for path in bad:
            print(f"stale: {path.relative_to(ROOT)}")
        return 1 if bad else 0
    files = outputs()
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")
    for path in stale():  # dashboards no longer generated
        path.unlink()
        print(f"removed {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
