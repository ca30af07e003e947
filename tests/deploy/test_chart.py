"""helm/loopwise: rendered by Helm's engine for several switch settings, linted,
validated against the Kubernetes schemas, scanned by checkov, and its values
schema refuses wrong values with a message naming them."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.chart import (
    CHART,
    COMBINATIONS,
    CUSTOM_KINDS,
    KUBE_VERSIONS,
    NAMESPACE,
    ROOT,
    by_kind,
    containers,
    render,
)

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is in the dev extra")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
GRPC = {"collector": 50051, "inference": 50052}
METRICS = {"collector": 9101, "inference": 9102, "miner": 9103, "trainer": 9104}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: render(values) for name, values in COMBINATIONS.items()}


def kinds(docs: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for d in docs:
        counts[d["kind"]] = counts.get(d["kind"], 0) + 1
    return counts


def test_default_renders_the_four_services_hardened(rendered) -> None:
    docs = rendered["default"]
    assert set(by_kind(docs, "Deployment")) == {f"rel-loopwise-{s}" for s in METRICS}
    assert set(by_kind(docs, "Service")) == {"rel-loopwise-collector", "rel-loopwise-inference"}
    assert set(by_kind(docs, "HorizontalPodAutoscaler")) == {"rel-loopwise-collector", "rel-loopwise-inference"}
    assert kinds(docs)["PodDisruptionBudget"] == 3  # not the single trainer by default
    assert {"ServiceAccount", "ConfigMap", "Secret", "PersistentVolumeClaim", "NetworkPolicy"} <= set(kinds(docs))
    assert not CUSTOM_KINDS & set(kinds(docs))
    assert all(d["metadata"]["namespace"] == NAMESPACE for d in docs)


@pytest.mark.parametrize("combination", sorted(COMBINATIONS))
def test_every_container_is_locked_down(rendered, combination: str) -> None:
    for name, deployment in by_kind(rendered[combination], "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        c = pod["containers"][0]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["automountServiceAccountToken"] is False, name
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, name
        assert sc["capabilities"]["drop"] == ["ALL"], name
        assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and {"cpu", "memory"} <= set(c["resources"]["limits"])
        assert {"mountPath": "/tmp", "name": "tmp"} in c["volumeMounts"], name


def test_grpc_services_use_grpc_probes_and_workers_http_health(rendered) -> None:
    for name, c in containers(rendered["default"]).items():
        service = name.removeprefix("rel-loopwise-")
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["metrics"] == METRICS[service]
        # Started once up: inference stays unready until a model loads, however long.
        assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        if service in GRPC:
            assert ports["grpc"] == GRPC[service]
            assert c["readinessProbe"]["grpc"] == {"port": GRPC[service]}
        else:
            assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}


def test_termination_grace_outlasts_the_drain(rendered) -> None:
    for name, deployment in by_kind(rendered["default"], "Deployment").items():
        env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        if "LOOPWISE_DRAIN_S" in env:
            assert grace > float(env["LOOPWISE_DRAIN_S"]) + float(env["LOOPWISE_GRACE_S"]), name


def test_shared_settings_come_from_one_configmap(rendered) -> None:
    data = by_kind(rendered["everything-on"], "ConfigMap")["rel-loopwise"]["data"]
    assert data["LOOPWISE_KAFKA_BOOTSTRAP"] == "kafka-0.kafka:9093,kafka-1.kafka:9093"
    assert data["LOOPWISE_TENANTS"] == "shop,help"
    assert data["LOOPWISE_TOPIC_EVENTS"] == "shop.events"
    assert data["LOOPWISE_TOPIC_PARTITIONS"] == "8"
    assert data["LOOPWISE_MODEL_STORE"] == "s3://models/loopwise"
    assert data["LOOPWISE_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert data["LOOPWISE_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert data["LOOPWISE_KAFKA_SSL_CAFILE"] == "/etc/loopwise/kafka-ca/ca.crt"
    assert data["LOOPWISE_COMPRESSION"] == "zstd"
    for c in containers(rendered["everything-on"]).values():
        assert {"configMapRef": {"name": "rel-loopwise"}} in c["envFrom"]
        assert {"secretRef": {"name": "loopwise-credentials"}} in c["envFrom"]


def test_redis_credentials_reach_the_url_from_the_secret(rendered) -> None:
    c = containers(rendered["everything-on"])["rel-loopwise-inference"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["LOOPWISE_REDIS_URL"] == (
        "rediss://loopwise:$(LOOPWISE_REDIS_PASSWORD)@redis.data:6379/0?ssl_ca_certs=/etc/loopwise/redis-ca/ca.crt")
    assert not by_kind(rendered["everything-on"], "Secret")  # existingSecret: the chart creates none
    env = {e["name"]: e.get("value") for e in containers(rendered["default"])["rel-loopwise-miner"]["env"]}
    assert env["LOOPWISE_REDIS_URL"] == "redis://redis:6379/0"


def test_model_store_is_a_claim_or_an_object_store_url(rendered) -> None:
    default = containers(rendered["default"])
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in default["rel-loopwise-inference"]["volumeMounts"]
    assert {"name": "models", "mountPath": "/models"} in default["rel-loopwise-trainer"]["volumeMounts"]
    claim = by_kind(rendered["default"], "PersistentVolumeClaim")["rel-loopwise-models"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert not by_kind(rendered["everything-on"], "PersistentVolumeClaim")
    assert all("models" not in [m["name"] for m in c["volumeMounts"]] for c in containers(rendered["everything-on"]).values())
    minimal = by_kind(rendered["minimal"], "Deployment")["rel-loopwise-trainer"]["spec"]["template"]["spec"]
    assert {"name": "models", "persistentVolumeClaim": {"claimName": "models"}} in minimal["volumes"]


def test_the_trainer_seeds_the_cold_start_model_into_an_empty_store(rendered, tmp_path: Path) -> None:
    """The init container's command, run here against a store directory, publishes v1 per tenant."""
    pod = by_kind(rendered["default"], "Deployment")["rel-loopwise-trainer"]["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["image"] == pod["containers"][0]["image"]
    assert init["command"][:2] == ["python", "-c"]
    env = {"LOOPWISE_MODEL_STORE": str(tmp_path), "LOOPWISE_TENANTS": "shop,help", "LOOPWISE_DEFAULT_MODEL": "ranker"}
    for _ in range(2):  # the second run finds the models and publishes nothing
        subprocess.run([sys.executable, "-c", init["command"][2]], env={**os.environ, **env}, check=True, timeout=60)
    from loopwise.modelstore import ModelStore

    store = ModelStore(str(tmp_path))
    assert [store.versions(t, "ranker") for t in ("shop", "help")] == [[store.latest("shop", "ranker")]] * 2
    assert "initContainers" not in by_kind(render({"modelStore": {"seedColdStart": False}}), "Deployment")[
        "rel-loopwise-trainer"]["spec"]["template"]["spec"]


def test_trainer_gpu_request_image_variant_and_placement(rendered) -> None:
    cpu = containers(rendered["default"])["rel-loopwise-trainer"]
    assert cpu["image"] == "loopwise-trainer:0.1.0-cpu"
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]
    gpu_pod = by_kind(rendered["everything-on"], "Deployment")["rel-loopwise-trainer"]["spec"]["template"]["spec"]
    gpu = gpu_pod["containers"][0]
    assert gpu["image"] == "loopwise-trainer:0.1.0-cuda"
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1 and gpu["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert gpu["resources"]["limits"]["memory"] == "8Gi"  # the GPU is added, not substituted
    assert gpu_pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert gpu_pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "trainer-window"}} in gpu_pod["volumes"]


def test_replicas_follow_the_scalers(rendered) -> None:
    default = by_kind(rendered["default"], "Deployment")
    assert "replicas" not in default["rel-loopwise-collector"]["spec"]  # the HPA owns it
    assert default["rel-loopwise-miner"]["spec"]["replicas"] == 1
    assert by_kind(rendered["minimal"], "Deployment")["rel-loopwise-miner"]["spec"]["replicas"] == 4
    on = rendered["everything-on"]
    assert "replicas" not in by_kind(on, "Deployment")["rel-loopwise-miner"]["spec"]  # KEDA owns it
    scaled = by_kind(on, "ScaledObject")["rel-loopwise-miner"]["spec"]
    assert scaled["maxReplicaCount"] == 8 and scaled["scaleTargetRef"]["name"] == "rel-loopwise-miner"
    trigger = scaled["triggers"][0]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == "loopwise-miner" and trigger["metadata"]["topic"] == "shop.events"


def test_network_policies_deny_by_default_then_allow_the_paths(rendered) -> None:
    policies = by_kind(rendered["everything-on"], "NetworkPolicy")
    deny = policies["rel-loopwise-default-deny"]["spec"]
    assert deny["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in deny and "egress" not in deny
    grpc = policies["rel-loopwise-inference-grpc"]["spec"]
    assert grpc["ingress"][0]["ports"] == [{"port": 50052, "protocol": "TCP"}]
    metrics = policies["rel-loopwise-metrics"]["spec"]["ingress"][0]
    assert sorted(p["port"] for p in metrics["ports"]) == sorted(METRICS.values())
    egress = policies["rel-loopwise-egress"]["spec"]["egress"]
    ports = [sorted(p["port"] for p in rule["ports"]) for rule in egress]
    assert ports == [[53, 53], [9093], [6379], [443], [3128]]  # DNS, Kafka, Redis, object store, extra
    assert egress[1]["to"] == [{"ipBlock": {"cidr": "10.20.0.0/16"}}]
    assert not by_kind(rendered["minimal"], "NetworkPolicy")


def test_service_monitor_scrapes_every_service(rendered) -> None:
    on = rendered["everything-on"]
    monitor = by_kind(on, "ServiceMonitor")["rel-loopwise"]
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = [s for s in by_kind(on, "Service").values()
                if selector.items() <= s["metadata"]["labels"].items()]
    assert sorted(s["metadata"]["labels"]["app.kubernetes.io/component"] for s in services) == sorted(METRICS)
    assert all("metrics" in [p["name"] for p in s["spec"]["ports"]] for s in services)


@pytest.mark.parametrize("combination", sorted(COMBINATIONS))
def test_every_manifest_is_valid_kubernetes(rendered, combination: str) -> None:
    skipped = set()
    for doc in rendered[combination]:
        if doc["kind"] in CUSTOM_KINDS:
            skipped.add(doc["kind"])
            continue
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
    # PrometheusRule: only once observability/ has generated files/alerts.yml.
    expected = {"ServiceMonitor", "ScaledObject"} if combination == "everything-on" else set()
    assert expected <= skipped <= CUSTOM_KINDS


def test_lint_is_clean() -> None:
    for version in KUBE_VERSIONS:
        result = helm.lint(str(CHART), strict=True, kube_version=f"v{version}")
        assert not result["errors"], result
        assert [m for m in result["messages"] if m["severity"] > 1] == [], result  # INFO only (no icon)


def test_checkov_finds_nothing(rendered, tmp_path: Path) -> None:
    """One checkov run over every combination with NetworkPolicies on (with them
    off, CKV2_K8S_6 rightly reports pods without one: that is the user's choice)."""
    assert CHECKOV.exists(), "checkov's own virtual env is missing: run `make setup` (.venv-checkov)"
    for name, docs in rendered.items():
        if COMBINATIONS[name].get("networkPolicy", {}).get("enabled", True):
            (tmp_path / name).mkdir()
            for i, doc in enumerate(docs):
                (tmp_path / name / f"{i:02d}-{doc['kind'].lower()}.yaml").write_text(yaml.safe_dump(doc))
    proc = subprocess.run([str(CHECKOV), "-d", str(tmp_path), "--framework", "kubernetes", "--compact",
                           "--skip-download", "-o", "json"], capture_output=True, text=True, timeout=240)
    report = json.loads(proc.stdout)
    summary = report["summary"]
    failed = [(c["check_id"], c["resource"], c["file_path"]) for c in report["results"]["failed_checks"]]
    assert summary["failed"] == 0 and not failed, failed
    assert summary["passed"] > 100
    skipped = {c["check_id"] for c in report["results"]["skipped_checks"]}
    assert skipped <= {"CKV_K8S_43", "CKV_K8S_35"}, skipped  # each justified in _helpers.tpl


@pytest.mark.parametrize(("values", "where"), [
    ({"miner": {"replicas": "two"}}, "/miner/replicas"),
    ({"collector": {"replicass": 3}}, "replicass"),
    ({"kafka": {"securityProtocol": "TLS"}}, "/kafka/securityProtocol"),
    ({"kafka": {"bootstrap": "kafka"}}, "/kafka/bootstrap"),
    ({"podSecurityContext": {"runAsNonRoot": False}}, "/podSecurityContext/runAsNonRoot"),
    ({"trainer": {"gpu": -1}}, "/trainer/gpu"),
    ({"inference": {"resources": {"limits": {"cpu": "lots", "memory": "1Gi"}}}}, "/inference/resources/limits/cpu"),
    ({"settings": {"topics": {"event": "x"}}}, "/settings/topics"),
    ({"secret": {"redisPassword": "p@ss/word"}}, "/secret/redisPassword"),
])
def test_schema_refuses_a_wrong_value_naming_it(values: dict[str, Any], where: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=re.escape(where)):
        render(values)


@pytest.mark.parametrize(("values", "message"), [
    ({"miner": {"replicas": 5}}, "miner.replicas (5) must not exceed settings.topicPartitions (4)"),
    ({"miner": {"keda": {"enabled": True, "maxReplicas": 9}}}, "miner.keda.maxReplicas (9) must not exceed"),
    ({"inference": {"terminationGracePeriodSeconds": 15}}, "inference.terminationGracePeriodSeconds (15) must exceed"),
    ({"redis": {"auth": {"enabled": True}}}, "redis.auth.enabled needs secret.redisPassword"),
    ({"kafka": {"securityProtocol": "SASL_SSL"}}, "kafka.securityProtocol SASL_SSL needs secret.kafkaSaslPassword"),
])
def test_the_chart_refuses_what_the_schema_cannot_see(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        render(values)


@pytest.fixture(scope="module")
def chart_copy(tmp_path_factory) -> Path:
    """The chart without its generated files/ (observability/ writes them)."""
    copy_ = tmp_path_factory.mktemp("chart") / "loopwise"
    shutil.copytree(CHART, copy_, ignore=shutil.ignore_patterns("files"))
    return copy_


def test_rules_and_dashboards_render_nothing_until_generated_then_everything(chart_copy: Path) -> None:
    on = copy.deepcopy(COMBINATIONS["everything-on"])
    before = render(on, chart_copy)
    assert not by_kind(before, "PrometheusRule")
    assert not [n for n in by_kind(before, "ConfigMap") if "dashboard" in n]
    files = chart_copy / "files"
    (files / "dashboards").mkdir(parents=True)
    rule = {"alert": "LoopwiseDeadLetters", "expr": "rate(x_total[5m]) > 0",
            "annotations": {"summary": "{{ $labels.instance }} dead-letters"}}
    (files / "alerts.yml").write_text(yaml.safe_dump({"groups": [{"name": "loopwise", "rules": [rule]}]}))
    dashboard = {"title": "Loopwise traffic", "panels": [{"targets": [{"expr": 'sum(rate(y{code="OK"}[1m]))'}]}]}
    (files / "dashboards" / "traffic.json").write_text(json.dumps(dashboard))
    after = render(on, chart_copy)
    groups = by_kind(after, "PrometheusRule")["rel-loopwise"]["spec"]["groups"]
    assert groups[0]["rules"] == [rule]  # Prometheus templates left untouched by Helm
    config_map = by_kind(after, "ConfigMap")["rel-loopwise-dashboard-traffic"]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["traffic.json"]) == dashboard
    shutil.rmtree(files)


# Maps passed to Kubernetes as they are: the README lists the map, not its keys.
WHOLE_MAPS = {"podSecurityContext", "containerSecurityContext", "metrics.dashboards.labels"}


def leaf_paths(values: Any, prefix: str = "") -> list[str]:
    """Dotted paths of values.yaml's leaves (an empty map or list is a leaf)."""
    if isinstance(values, dict) and values and prefix not in WHOLE_MAPS and not prefix.endswith(".resources"):
        return [p for key, value in values.items() for p in leaf_paths(value, f"{prefix}.{key}".lstrip("."))]
    return [prefix]


def test_readme_lists_every_value() -> None:
    """Each value by its path; a value every service has may be listed once as ``<service>.key``."""
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def listed(path: str) -> bool:
        head, _, rest = path.partition(".")
        return f"`{path}`" in readme or (head in METRICS and f"`<service>.{rest}`" in readme)

    missing = [p for p in leaf_paths(values) if not listed(p)]
    assert not missing, f"helm/loopwise/README.md does not list: {missing}"


def test_schema_describes_every_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(node: dict[str, Any], path: str) -> None:
        props = node.get("properties")
        if props is None or node.get("additionalProperties") is not False:
            return  # an open map (env, labels, a security context): Kubernetes checks it
        for key in (values_at(path) or {}):
            assert key in props, f"values.schema.json has no {path}.{key}".replace("..", ".")
            walk(props[key], f"{path}.{key}")

    def values_at(path: str) -> Any:
        node: Any = values
        for part in [p for p in path.split(".") if p]:
            node = node[part]
        return node if isinstance(node, dict) else None

    walk(schema, "")
