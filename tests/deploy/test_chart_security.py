"""helm/loopwise with API keys, TLS, a metrics token and the gRPC limits switched on:
valid Kubernetes, the files and variables where the services read them."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from loopwise import auth
from tests.deploy.chart import CUSTOM_KINDS, KUBE_VERSIONS, by_kind, containers, render

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is in the dev extra")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

SECURE: dict[str, Any] = {
    "grpcSecurity": {"apiKeys": {"enabled": True, "tenants": {"shop": [
        auth.hash_key("lw_a"), {"hash": auth.hash_key("lw_b"), "expires": "2027-01-01T00:00:00Z", "name": "ci"}]}},
        "tls": {"enabled": True, "secretName": "loopwise-grpc-tls", "mutual": True},
        "limits": {"maxConcurrentRpcs": 200, "inflightBytes": 67108864}},
    "secret": {"metricsToken": "t0ken", "pseudonymiseKey": "k3y"},
    "metrics": {"requireToken": True, "serviceMonitor": {"enabled": True}},
}


@pytest.fixture(scope="module")
def secure() -> list[dict[str, Any]]:
    return render(SECURE)


def env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container["env"]}


def test_secure_rendering_is_valid_kubernetes(secure) -> None:
    for doc in secure:
        if doc["kind"] not in CUSTOM_KINDS:
            for version in KUBE_VERSIONS:
                kubernetes_validate.validate(doc, version, strict=True)


def test_grpc_services_read_keys_tls_and_limits(secure) -> None:
    keys = json.loads(by_kind(secure, "Secret")["rel-loopwise-api-keys"]["stringData"]["keys.json"])
    assert auth.parse_keys(keys)[auth.hash_key("lw_b")][0].name == "ci"  # the format loopwise.auth reads
    for name, c in containers(secure).items():
        e = env(c)
        if name.endswith(("collector", "inference")):
            assert e["LOOPWISE_API_KEYS_FILE"] == "/etc/loopwise/keys/keys.json"
            assert e["LOOPWISE_TLS_CLIENT_CA_FILE"] == "/etc/loopwise/tls/ca.crt"
            assert e["LOOPWISE_MAX_CONCURRENT_RPCS"] == "200" and e["LOOPWISE_INFLIGHT_BYTES"] == "67108864"
            assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/etc/loopwise/keys", "/etc/loopwise/tls"}
            assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"  # the kubelet's gRPC probe has no TLS
        else:
            assert "LOOPWISE_API_KEYS_FILE" not in e


def test_metrics_token_reaches_the_secret_and_the_service_monitor(secure) -> None:
    assert by_kind(secure, "Secret")["rel-loopwise-credentials"]["stringData"]["LOOPWISE_METRICS_TOKEN"] == "t0ken"
    endpoint = by_kind(secure, "ServiceMonitor")["rel-loopwise"]["spec"]["endpoints"][0]
    assert endpoint["authorization"]["credentials"]["key"] == "LOOPWISE_METRICS_TOKEN"


@pytest.mark.parametrize(("values", "message"), [
    ({"grpcSecurity": {"apiKeys": {"enabled": True}}}, "grpcSecurity.apiKeys.enabled needs grpcSecurity.apiKeys.tenants"),
    ({"grpcSecurity": {"tls": {"enabled": True}}}, "grpcSecurity.tls.enabled needs grpcSecurity.tls.secretName"),
    ({"metrics": {"requireToken": True}}, "metrics.requireToken needs secret.metricsToken"),
])
def test_the_chart_refuses_incomplete_security(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        render(values)


def test_schema_refuses_a_plain_key() -> None:
    with pytest.raises(helm.HelmValuesError, match="apiKeys"):
        render({"grpcSecurity": {"apiKeys": {"enabled": True, "tenants": {"shop": ["lw_plain-key"]}}}})
