"""A real Prometheus scraping the real local stack (`loopwise.tools.stack.up`: Tansu, Redis and
the four services as processes) while traffic flows: every expression of every generated
dashboard panel and alert rule is valid PromQL over metrics the services export, every
panel and every alert's signal returns series, and the miner's dead-letter alert fires when
bad records arrive (rules rendered with ``for: 0s``, evaluated every second)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from kafka import KafkaProducer

from loopwise import redis_keys
from loopwise.client import Client
from loopwise.modelstore.contract import DEFAULT_MODEL
from loopwise.tools import stack as stack_tool
from observability import alerts
from observability.dashboards import online_auc
from tests.observability.prom import Prometheus, dashboard_queries, grafana_expr, metric_names

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "observability" / "grafana" / "dashboards"
TENANT = "default"
# A stack that learns within seconds: 2 s attribution windows and sessions, a training run
# every 2 s once 200 examples are in, and a gate loose enough that the first run publishes.
FAST = {"LOOPWISE_TRAINER_INTERVAL_S": "2", "LOOPWISE_TRAINER_EVERY_N": "200",
        "LOOPWISE_TRAINER_MIN_EXAMPLES": "200", "LOOPWISE_TRAINER_MIN_HOLDOUT": "20",
        "LOOPWISE_TRAINER_TOLERANCE_AUC": "1", "LOOPWISE_TRAINER_TOLERANCE_GAUC": "1",
        "LOOPWISE_TRAINER_TOLERANCE_LOGLOSS": "100", "LOOPWISE_TRAINER_TOLERANCE_ECE": "1",
        "LOOPWISE_SESSION_GAP_MS": "2000", "LOOPWISE_IDLE_S": "1"}
DEADLINE_S = 90.0
DRIVEN = ("LoopwiseMinerDeadLetters", "LoopwiseTrainerDeadLetters", "LoopwiseModelVersionRefused",
          "LoopwiseCollectorRejecting", "LoopwiseInferenceStaleModel")


class Traffic(threading.Thread):
    """Rank calls with a click on one candidate, Rewrite calls and assistant turns, until
    stopped; once `poison` is set, each round also sends what the alerts watch for: an event
    of a tenant not served (rejected by the collector), bytes that are no event (dead-lettered
    by the miner) and no example (dead-lettered by the trainer), and the model pointer set
    to a version that does not exist (refused by inference, which then serves another)."""

    def __init__(self, info: stack_tool.StackInfo) -> None:
        super().__init__(daemon=True, name="traffic")
        self.info = info
        self.halt = threading.Event()
        self.poison = threading.Event()
        self.calls = 0

    def run(self) -> None:
        producer = KafkaProducer(bootstrap_servers=self.info.kafka, acks=1)
        pointer = redis.Redis.from_url(self.info.redis)
        with (Client(self.info.collector, self.info.inference, tenant=TENANT, timeout=10) as lw,
              Client(self.info.collector, tenant="not-served") as stranger):
            while not self.halt.is_set():
                self._round(lw)
                if self.poison.is_set() and self.calls % 5 == 0:
                    stranger.report([stranger.events.click("r", f"m{i}", user_id="x") for i in range(3)])
                    for topic in (self.info.topics["events"], self.info.topics["examples"]):
                        for _ in range(10):
                            producer.send(topic, key=TENANT.encode(), value=b"\xff no protobuf " + uuid.uuid4().bytes)
                    pointer.set(redis_keys.model_pointer(TENANT, DEFAULT_MODEL), "v999")
                time.sleep(0.02)
        producer.close(5)
        pointer.close()

    def _round(self, lw: Client) -> None:
        n = self.calls
        user = f"u{n % 13}"
        ids = [f"m{(n * 7 + i) % 97}" for i in range(20)]
        ranked = lw.rank(ids, user_id=user, features={"popularity": [(i % 10) / 10 for i in range(20)]})
        events = [lw.events.click(ranked.request_id, ranked.top(3)[n % 3], user_id=user, position=n % 3 + 1)]
        if n % 5 == 0:
            lw.rewrite("play some jazz", user_id=user, session_id=f"s{n}")
            events += [lw.events.turn("play some jas", user_id=user, session_id=f"s{n}", status=3),
                       lw.events.turn("play some jazz", user_id=user, session_id=f"s{n}", status=1)]
        lw.report(events)
        self.calls += 1


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[stack_tool.StackInfo, Prometheus, Traffic]]:
    root = tmp_path_factory.mktemp("observe")
    try:
        info = stack_tool.up(root / "stack", attribution_window_ms=2000, extra_env=FAST, supervise=False)
    except stack_tool.StackError:  # a free port taken by another process meanwhile (up stopped what it started)
        info = stack_tool.up(root / "again", attribution_window_ms=2000, extra_env=FAST, supervise=False)
    prometheus = None
    traffic = Traffic(info)
    try:
        targets = {name: url.removeprefix("http://").removesuffix("/metrics") for name, url in info.metrics.items()}
        prometheus = Prometheus(root / "prometheus", targets, alerts.rule_file(for_override="0s", interval="1s"))
        traffic.start()
        yield info, prometheus, traffic
    finally:
        traffic.halt.set()
        traffic.join(15)
        if prometheus is not None:
            prometheus.stop()
        stack_tool.down(Path(info.root))


def wait_for(check, what: str, deadline: float) -> None:
    while True:
        problems = check()
        if not problems:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{what} after {DEADLINE_S:.0f} s:\n" + "\n".join(problems))
        time.sleep(1.0)


def test_every_dashboard_and_alert_expression_returns_series_and_an_alert_fires(running) -> None:
    info, prometheus, traffic = running
    deadline = time.monotonic() + DEADLINE_S

    def scraped() -> list[str]:
        health = prometheus.targets_up()
        return [f"{job}: {health.get(job, 'not a target yet')}" for job in info.metrics if health.get(job) != "up"]

    def trained() -> list[str]:
        return [] if prometheus.query("loopwise_trainer_published_version") else ["no model published yet"]

    wait_for(scraped, "services not scraped", deadline)
    wait_for(trained, "the trainer published no model", deadline)
    # Nothing bad sent yet: those alerts are silent (a swap in progress may make the stale one pending).
    assert not set(DRIVEN[:-1]) & set(prometheus.alerts()), prometheus.alerts()
    traffic.poison.set()

    def missing() -> list[str]:
        exported = prometheus.names()
        found = []
        for alert in alerts.ALERTS:
            for expr in (alert.signal, alerts.expression(alert)):
                found += [f"{alert.name}: {name} not exported" for name in sorted(metric_names(expr) - exported)]
                try:
                    prometheus.query(expr)
                except ValueError as exc:
                    found.append(f"{alert.name}: {exc}")
            if not any(line.startswith(f"{alert.name}:") for line in found) and not prometheus.query(alert.signal):
                found.append(f"{alert.name}: no series for {alert.signal}")
        for title, expr in dashboard_queries(DASHBOARDS):
            expr = grafana_expr(expr)
            found += [f"{title}: {name} not exported" for name in sorted(metric_names(expr) - exported)]
            try:
                if not prometheus.query(expr):
                    found.append(f"{title}: no series for {expr}")
            except ValueError as exc:
                found.append(f"{title}: {exc}")
        return found

    wait_for(missing, "expressions without series", deadline)

    def firing() -> list[str]:
        active = prometheus.alerts()
        return [f"{name} is {active.get(name, 'inactive')}" for name in DRIVEN if active.get(name) != "firing"]

    wait_for(firing, "alerts driven on purpose not firing", deadline)
    print(f"all expressions answered and {len(DRIVEN)} alerts fired {DEADLINE_S - (deadline - time.monotonic()):.0f} s into "
          f"the test; {traffic.calls} Rank calls")
    active = prometheus.alerts()
    assert not {"LoopwiseRankLatencyHigh", "LoopwiseNoNewModel", "LoopwiseInferenceStaleRewrites"} & set(active), active


def test_online_auc_panel_matches_the_auc_of_the_score_bins(running) -> None:
    """The dashboard's PromQL AUC equals the AUC computed here from the same bin counts."""
    _, prometheus, _ = running
    at = time.time()
    raw = prometheus.query('sum by (scorer, label, bin) (increase(loopwise_inference_memory_score_bin_total[5m]))', at)
    assert raw, "no scored prediction errors"
    counts: dict[str, dict[str, dict[float, float]]] = {}
    for series in raw:
        labels = series["metric"]
        counts.setdefault(labels["scorer"], {}).setdefault(labels["label"], {})[float(labels["bin"])] = float(
            series["value"][1])
    expected = {}
    for scorer, by_label in counts.items():
        neg, pos = by_label.get("0", {}), by_label.get("1", {})
        if not neg or not pos:
            continue
        above = sum(n * sum(p for b, p in pos.items() if b > edge) for edge, n in neg.items())
        ties = sum(n * pos.get(edge, 0.0) for edge, n in neg.items())
        expected[scorer] = (above + 0.5 * ties) / (sum(neg.values()) * sum(pos.values()))
    assert expected, counts
    got = {s["metric"]["scorer"]: float(s["value"][1])
           for s in prometheus.query(grafana_expr(online_auc()), at)}
    assert got.keys() == expected.keys()
    for scorer, auc in expected.items():
        assert abs(got[scorer] - auc) < 1e-9, (scorer, got, expected)
