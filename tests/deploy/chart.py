"""Render helm/loopwise with Helm's own engine (helm-python-sdk, no helm binary).

`COMBINATIONS` are the switch settings the tests render; `render` returns the
documents of one rendering, parsed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "loopwise"
RELEASE, NAMESPACE = "rel", "loopwise"
# The two newest Kubernetes versions kubernetes-validate carries schemas for.
KUBE_VERSIONS = ("1.36.0", "1.37.0")
# Prometheus Operator and KEDA resources: no schema in kubernetes-validate.
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule", "ScaledObject"}

EVERYTHING_ON: dict[str, Any] = {
    "kafka": {"bootstrap": "kafka-0.kafka:9093,kafka-1.kafka:9093", "securityProtocol": "SASL_SSL",
              "tls": {"caSecret": "kafka-ca"}, "sasl": {"mechanism": "SCRAM-SHA-512", "username": "loopwise"}},
    "redis": {"host": "redis.data", "tls": {"enabled": True, "caSecret": "redis-ca"},
              "auth": {"enabled": True, "username": "loopwise"}},
    "secret": {"existingSecret": "loopwise-credentials"},
    "modelStore": {"url": "s3://models/loopwise"},
    "settings": {"tenants": ["shop", "help"], "topicPartitions": 8, "topics": {"events": "shop.events"},
                 "extraEnv": {"LOOPWISE_COMPRESSION": "zstd"}},
    "miner": {"keda": {"enabled": True, "maxReplicas": 8}},
    "trainer": {"gpu": 1, "nodeSelector": {"nvidia.com/gpu.present": "true"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "data": {"existingClaim": "trainer-window"}, "env": {"LOOPWISE_TRAINER_INTERVAL_S": 300}},
    "networkPolicy": {"kafkaEgress": {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}], "ports": [9093]},
                      "extraEgress": [{"to": [{"ipBlock": {"cidr": "10.30.0.0/16"}}], "ports": [{"port": 3128}]}]},
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
                "prometheusRule": {"enabled": True}, "dashboards": {"enabled": True}},
}

MINIMAL: dict[str, Any] = {
    "serviceAccount": {"create": False},
    "networkPolicy": {"enabled": False},
    "metrics": {"podAnnotations": False},
    "collector": {"autoscaling": {"enabled": False}, "podDisruptionBudget": {"enabled": False}, "replicas": 1},
    "inference": {"autoscaling": {"enabled": False}, "podDisruptionBudget": {"enabled": False}, "replicas": 1},
    "miner": {"replicas": 4, "podDisruptionBudget": {"enabled": False}},
    "modelStore": {"persistence": {"existingClaim": "models"}},
}

SERVING_ONLY: dict[str, Any] = {"miner": {"enabled": False}, "trainer": {"enabled": False}}

COMBINATIONS: dict[str, dict[str, Any]] = {
    "default": {}, "everything-on": EVERYTHING_ON, "minimal": MINIMAL, "serving-only": SERVING_ONLY,
}


def render(values: dict[str, Any], chart: Path = CHART) -> list[dict[str, Any]]:
    """The rendered Kubernetes objects (NOTES.txt left out)."""
    import helm_python as helm

    loaded = helm.Chart.load(str(chart))
    try:
        rendered = loaded.render(values, name=RELEASE, namespace=NAMESPACE)
    finally:
        loaded.close()
    return [doc for path, text in sorted(rendered.items()) if path.endswith(".yaml")
            for doc in yaml.safe_load_all(text) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def containers(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Deployment name -> its (only) container."""
    return {name: d["spec"]["template"]["spec"]["containers"][0] for name, d in by_kind(docs, "Deployment").items()}
