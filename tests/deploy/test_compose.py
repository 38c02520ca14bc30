"""deploy/compose.yaml as Docker Compose resolves it: valid, built from the Dockerfile's real target, running kitrelay
commands that exist, with settings kitrelay reads, migrations before everything else."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from kitrelay.gateway.auth import resolve_auth_mode
from kitrelay.shared.settings import Settings
from tests.deploy.manifests import (
    COMPOSE_FILE,
    ROOT,
    check_health_args,
    check_kitrelay_args,
    compose_config,
    dockerfile_stages,
    effective_settings,
    foreign_env,
    image_repository,
)

KITRELAY_SERVICES = ("migrate", "gateway", "worker-triage", "worker-task", "worker-research")


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    config = compose_config()
    found: dict[str, Any] = config["services"]
    return found


def kitrelay_services(services: dict[str, Any]) -> dict[str, Any]:
    return {name: s for name, s in services.items() if image_repository(s["image"]) == "kitrelay"}


def test_compose_builds_kitrelay_from_a_real_dockerfile_target(services: dict[str, Any]) -> None:
    assert sorted(kitrelay_services(services)) == sorted(KITRELAY_SERVICES)
    stages = dockerfile_stages()
    for name, service in kitrelay_services(services).items():
        build = service["build"]
        dockerfile = Path(build["context"]) / build["dockerfile"]
        assert dockerfile.resolve() == (ROOT / "Dockerfile").resolve(), name
        assert build["target"] in stages, f"{name} builds target {build['target']!r}; the Dockerfile has {stages}"


def test_kitrelay_services_run_commands_that_exist(services: dict[str, Any]) -> None:
    commands = {}
    for name, service in kitrelay_services(services).items():
        assert service.get("entrypoint") is None, "the image's entrypoint is `kitrelay`"
        commands[name] = service["command"]
        check_kitrelay_args(service["command"])
        test = service.get("healthcheck", {}).get("test")
        if test:
            assert test[0] == "CMD"
            assert test[1:4] == ["python", "-m", "kitrelay.services.health"], f"{name}: {test}"
            check_health_args(test[4:])
    assert commands["migrate"] == ["migrate"]
    assert commands["gateway"] == ["gateway"]
    for kind in ("triage", "task", "research"):
        assert commands[f"worker-{kind}"] == ["worker", "--agent", kind]


def test_task_workers_are_two(services: dict[str, Any]) -> None:
    assert services["worker-task"]["deploy"]["replicas"] == 2


def test_environment_names_are_settings_and_values_parse(services: dict[str, Any]) -> None:
    fields = set(Settings.model_fields)
    for name, service in kitrelay_services(services).items():
        env: dict[str, str | None] = service["environment"]
        unread = {key for key in env if key not in fields and not foreign_env(key)}
        assert not unread, f"{name}: no setting reads {sorted(unread)}"
        # Empty variables count as unset (Settings' env_ignore_empty), e.g. OPENAI_API_KEY when the shell has none.
        settings = effective_settings({key: value for key, value in env.items() if value})
        if name == "gateway":
            # Raises where the gateway would refuse to start (a non-loopback address with no JWT key).
            resolve_auth_mode(settings)
            assert settings.GATEWAY_HOST == "0.0.0.0" or "GATEWAY_HOST" not in env
        grace = float(service["stop_grace_period"].rstrip("s"))
        assert grace > settings.WORKER_DRAIN_TIMEOUT_S, f"{name}: compose would SIGKILL mid-drain"


def test_migrations_run_before_anything_uses_the_database(services: dict[str, Any]) -> None:
    migrate = services["migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in KITRELAY_SERVICES[1:]:
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        for server in ("nats", "redis"):
            assert depends[server]["condition"] == "service_healthy", name
    for server in ("nats", "redis", "postgres"):
        assert services[server]["healthcheck"]["test"], f"{server} needs a healthcheck for depends_on"


def test_jetstream_and_data_live_on_volumes(services: dict[str, Any]) -> None:
    nats = services["nats"]
    assert "--jetstream" in nats["command"]
    store = nats["command"][nats["command"].index("--store_dir") + 1]
    mounted = {volume["target"]: volume for volume in nats["volumes"]}
    assert mounted[store]["type"] == "volume"
    for server, path in (("redis", "/data"), ("postgres", "/var/lib/postgresql/data")):
        assert {v["target"]: v["type"] for v in services[server]["volumes"]}[path] == "volume"


def test_images_are_pinned(services: dict[str, Any]) -> None:
    for name, service in services.items():
        if name in KITRELAY_SERVICES:
            continue
        tag = service["image"].rsplit("/", 1)[-1].partition(":")[2]
        assert tag and tag != "latest", f"{name}: {service['image']} is not pinned"


def test_observability_is_wired(services: dict[str, Any]) -> None:
    assert {"jaeger", "prometheus", "grafana", "nats-exporter"} <= set(services)
    for name, service in kitrelay_services(services).items():
        endpoint = service["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
        assert endpoint == "http://jaeger:4317", name
        if name != "migrate":
            assert service["environment"]["OTEL_SERVICE_NAME"] == f"kitrelay-{name}"
    # Every file compose mounts exists, and Prometheus scrapes services compose defines.
    for service in services.values():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), volume["source"]
    prometheus = yaml.safe_load((COMPOSE_FILE.parent / "prometheus" / "prometheus.yml").read_text())
    targets = {
        host.split(":")[0]
        for job in prometheus["scrape_configs"]
        for host in [t for sc in job.get("static_configs", []) for t in sc["targets"]]
        + [n for sd in job.get("dns_sd_configs", []) for n in sd["names"]]
    }
    assert targets - {"localhost"} <= set(services), f"Prometheus scrapes unknown hosts: {targets - set(services)}"
    assert "gateway" in targets
    dashboard = json.loads((COMPOSE_FILE.parent / "grafana" / "dashboards" / "kitrelay.json").read_text())
    queries = " ".join(t["expr"] for panel in dashboard["panels"] for t in panel["targets"])
    assert "_TURNS" in queries, "the dashboard follows the turns stream's consumers"
