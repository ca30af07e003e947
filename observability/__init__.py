"""Observability as code: the Prometheus alert rules (`observability.alerts`) and the
Grafana dashboards (`observability.dashboards`, which also writes every generated file).
Docker Compose mounts ``observability/prometheus/`` and ``observability/grafana/``; the
Helm chart reads the copies in ``helm/loopwise/files/``."""
