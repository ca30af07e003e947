"""docker-compose.yml, checked without a Docker engine: the Compose specification's schema,
and every image, build context, port, variable, mount and dependency it names exists and
agrees with the Dockerfiles, the services' settings and the Prometheus/Grafana configs."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from loopwise.collector.settings import CollectorSettings
from loopwise.inference.settings import InferenceSettings
from loopwise.miner.settings import MinerSettings
from loopwise.settings import BaseSettings
from loopwise.topics import Topics
from loopwise.trainer.settings import TrainerSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE = yaml.safe_load(COMPOSE_FILE.read_text())
SERVICES = COMPOSE["services"]
SETTINGS = {"collector": CollectorSettings, "inference": InferenceSettings, "miner": MinerSettings,
            "trainer": TrainerSettings, "models-init": BaseSettings}
LOOPWISE = ("collector", "inference", "miner", "trainer")
# Images pulled from a registry: the official ones, pinned to a release.
PULLED = {"kafka": "apache/kafka", "redis": "redis", "prometheus": "prom/prometheus", "grafana": "grafana/grafana"}


def dockerfile(name: str) -> str:
    build = SERVICES[name]["build"]
    return (ROOT / build["context"] / build["dockerfile"]).read_text()


def settings_variables(settings: type) -> set[str]:
    return {f"LOOPWISE_{f.name.upper()}" for f in fields(settings) if f.name != "topics"} | set(Topics().env())


def container_port(mapping: str) -> int:
    return int(str(mapping).rsplit(":", 1)[-1].split("/")[0])


def test_the_compose_file_validates_against_the_compose_specification() -> None:
    result = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                             str(COMPOSE_FILE)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_service_is_there() -> None:
    assert set(SERVICES) == {*LOOPWISE, *PULLED, "models-init"}
    kafka = SERVICES["kafka"]["environment"]
    assert "controller" in kafka["KAFKA_PROCESS_ROLES"] and not any("ZOOKEEPER" in k for k in kafka)
    assert f"kafka:{kafka['KAFKA_LOG_DIRS']}" in SERVICES["kafka"]["volumes"]  # the data on the volume
    assert SERVICES["collector"]["environment"]["LOOPWISE_KAFKA_BOOTSTRAP"] in kafka["KAFKA_ADVERTISED_LISTENERS"]


@pytest.mark.parametrize("name", sorted(PULLED))
def test_pulled_images_are_official_and_pinned(name: str) -> None:
    image, _, tag = SERVICES[name]["image"].partition(":")
    assert image == PULLED[name]
    assert re.fullmatch(r"v?\d+\.\d+\.\d+(-alpine)?", tag), f"{name}: pin a release, not {tag!r}"


@pytest.mark.parametrize("name", [*LOOPWISE, "models-init"])
def test_build_contexts_dockerfiles_and_build_args_exist(name: str) -> None:
    build = SERVICES[name]["build"]
    assert (ROOT / build["context"]).is_dir() and (ROOT / build["context"] / build["dockerfile"]).is_file()
    text = dockerfile(name)
    declared = set(re.findall(r"^ARG (\w+)", text, re.MULTILINE))
    assert set(build.get("args", {})) <= declared, f"{name}: build args {set(build.get('args', {})) - declared}"
    if name in LOOPWISE:
        assert f'"loopwise.{name}"' in text.split("ENTRYPOINT", 1)[1].splitlines()[0]


@pytest.mark.parametrize("name", LOOPWISE)
def test_ports_agree_with_the_dockerfile_the_settings_and_prometheus(name: str) -> None:
    service, exposed = SERVICES[name], set()
    for line in re.findall(r"^EXPOSE (.+)$", dockerfile(name), re.MULTILINE):
        exposed |= {int(p.split("/")[0]) for p in line.split()}
    env = service["environment"]
    metrics_port = int(env["LOOPWISE_METRICS_PORT"])
    assert metrics_port == SETTINGS[name].metrics_port and metrics_port in exposed
    assert f"127.0.0.1:{metrics_port}/readyz" in " ".join(service["healthcheck"]["test"])
    published = {container_port(p) for p in service.get("ports", [])}
    if "LOOPWISE_GRPC_PORT" in env:
        grpc_port = int(env["LOOPWISE_GRPC_PORT"])
        assert grpc_port == SETTINGS[name].grpc_port and grpc_port in exposed and published == {grpc_port}
    else:
        assert not published
    scrape = yaml.safe_load((ROOT / "observability/prometheus/prometheus.yml").read_text())
    targets = {c["job_name"]: c["static_configs"][0]["targets"] for c in scrape["scrape_configs"]}
    assert targets[name] == [f"{name}:{metrics_port}"]


@pytest.mark.parametrize("name", [*LOOPWISE, "models-init"])
def test_every_loopwise_variable_is_a_setting_of_that_service(name: str) -> None:
    env = SERVICES[name]["environment"]
    unknown = {key for key in env if key.startswith("LOOPWISE_")} - settings_variables(SETTINGS[name])
    assert not unknown, f"{name} does not read {sorted(unknown)}"


def test_every_interpolated_variable_has_a_default() -> None:
    text = COMPOSE_FILE.read_text()
    interpolated = re.findall(r"\$\{([^}]*)\}", text)
    assert interpolated and all(":-" in v for v in interpolated), interpolated


def test_mounts_dependencies_and_volumes_exist() -> None:
    volumes = set(COMPOSE["volumes"])
    for name, service in SERVICES.items():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: {source}"
            else:
                assert source in volumes, f"{name}: volume {source} is not declared"
        for dependency in service.get("depends_on", []):
            assert dependency in SERVICES, f"{name} depends on {dependency}"


def test_grafana_provisioning_matches_the_compose_file() -> None:
    provisioning = ROOT / "observability/grafana/provisioning"
    source = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())["datasources"][0]
    port = container_port(SERVICES["prometheus"]["ports"][0])
    assert source["url"] == f"http://prometheus:{port}" and source["type"] == "prometheus"
    provider = yaml.safe_load((provisioning / "dashboards/loopwise.yml").read_text())["providers"][0]
    mounts = dict(m.split(":")[:2] for m in SERVICES["grafana"]["volumes"])
    assert mounts["./observability/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./observability/grafana/provisioning"] == "/etc/grafana/provisioning"
    home = SERVICES["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (ROOT / "observability/grafana/dashboards" / Path(home).name).is_file()
    prometheus_mounts = dict(m.split(":")[:2] for m in SERVICES["prometheus"]["volumes"])
    assert prometheus_mounts["./observability/prometheus/alerts.yml"] == "/etc/prometheus/alerts.yml"


def test_models_init_publishes_the_cold_start_model_once(tmp_path: Path) -> None:
    entrypoint = SERVICES["models-init"]["entrypoint"]
    assert entrypoint[:2] == ["python", "-c"]
    env = {**SERVICES["models-init"]["environment"], "LOOPWISE_MODEL_STORE": str(tmp_path / "models"),
           "LOOPWISE_TENANTS": "default,other"}
    runs = [subprocess.run([sys.executable, "-c", entrypoint[2]], env=env, capture_output=True, text=True,
                           timeout=120) for _ in range(2)]
    assert all(run.returncode == 0 for run in runs), runs[0].stderr + runs[1].stderr
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["default", "other"]
    assert runs[1].stdout.count("has a model already") == 2
