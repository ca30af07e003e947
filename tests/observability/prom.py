"""A real Prometheus (Debian's ``prometheus`` package, installed by ``make setup``) for the
tests: started on a free loopback port with a generated config, queried over its HTTP API."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from loopwise.tools import procs

METRIC = re.compile(r"\bloopwise_[a-z0-9_]+")
# Grafana's own variables, as a test range and step would resolve them.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "5m"}


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: `make setup` installs Debian's prometheus package")
    return path


def metric_names(expr: str) -> set[str]:
    """The Loopwise metric names an expression reads (histogram suffixes kept)."""
    return set(METRIC.findall(expr))


def grafana_expr(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


class Prometheus:
    """``prometheus`` scraping ``targets`` ({job: "host:port"}) every second and evaluating
    ``rules`` (a rule file's text) every second."""

    def __init__(self, workdir: Path, targets: dict[str, str], rules: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "alerts.yml").write_text(rules)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["alerts.yml"],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}
                               for job, target in targets.items()],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = procs.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        log = open(workdir / "prometheus.log", "ab")  # noqa: SIM115 - the child keeps it
        self.popen = subprocess.Popen(
            [binary("prometheus"), f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.log = workdir / "prometheus.log"
        deadline = time.monotonic() + 30
        while not self._ready():
            if self.popen.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"prometheus did not start:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.2)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as answer:
                body = json.load(answer)
        except urllib.error.HTTPError as exc:  # 400: a query that does not parse or type-check
            body = json.load(exc)
        if body.get("status") != "success":
            raise ValueError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """The series an instant query returns now or ``at`` (ValueError if it is not valid PromQL)."""
        data = self.api("query", query=expr, **({"time": f"{at:.3f}"} if at is not None else {}))
        return data["result"] if data["resultType"] in ("vector", "matrix") else [data["result"]]

    def names(self) -> set[str]:
        return set(self.api("label/__name__/values"))

    def alerts(self) -> dict[str, str]:
        """{alert name: state} of the active alerts (pending or firing)."""
        return {a["labels"]["alertname"]: a["state"] for a in self.api("alerts")["alerts"]}

    def targets_up(self) -> dict[str, str]:
        return {t["labels"]["job"]: t["health"] for t in self.api("targets")["activeTargets"]}

    def stop(self) -> None:
        procs.stop_pid(self.popen.pid, timeout=10, popen=self.popen)


def dashboard_queries(folder: Path) -> list[tuple[str, str]]:
    """(dashboard / panel title, expr) of every query of every generated dashboard in ``folder``."""
    out = []
    for path in sorted(folder.glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets") or []:
                out.append((f"{board['title']} / {panel['title']}", target["expr"]))
    return out
