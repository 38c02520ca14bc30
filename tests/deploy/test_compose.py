"""deploy/compose.yaml as Docker Compose resolves it, alone and with the HA file (compose.ha.yaml) on top: valid,
built from the Dockerfile's real target, running kitrelay commands that exist, with settings kitrelay reads,
migrations before everything else, every process's metrics scraped; in HA a 3-node NATS cluster carrying the turns
stream at R3 and Redis behind Sentinels that monitor the primary kitrelay asks for."""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from kitrelay.gateway.auth import resolve_auth_mode
from kitrelay.shared.settings import Settings
from tests.deploy.manifests import (
    COMPOSE_FILE,
    COMPOSE_VARIANTS,
    PROMETHEUS_FILE,
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
NATS_CLIENT_PORT = 4222
NATS_CLUSTER_PORT = 6222
REDIS_PORT = 6379
SENTINEL_PORT = 26379


@pytest.fixture(params=sorted(COMPOSE_VARIANTS), scope="module")
def services(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The services of each variant: everything checked on the default holds for the HA one too."""
    config = compose_config(request.param)
    found: dict[str, Any] = config["services"]
    return found


@pytest.fixture(scope="module")
def ha_services() -> dict[str, Any]:
    found: dict[str, Any] = compose_config("ha")["services"]
    return found


def kitrelay_services(services: dict[str, Any]) -> dict[str, Any]:
    return {name: s for name, s in services.items() if image_repository(s["image"]) == "kitrelay"}


def service_settings(service: dict[str, Any]) -> Settings:
    # Empty variables count as unset (Settings' env_ignore_empty), e.g. OPENAI_API_KEY when the shell has none.
    return effective_settings({key: value for key, value in service["environment"].items() if value})


def option(command: list[str], *flags: str) -> str | None:
    """The value after the first of `flags` in a command line, if any."""
    for index, argument in enumerate(command[:-1]):
        if argument in flags:
            return command[index + 1]
    return None


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
        settings = service_settings(service)
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
    jobs = {job["job_name"] for job in prometheus["scrape_configs"]}
    unknown = set(re.findall(r'job="([^"]+)"', queries)) - jobs
    assert not unknown, f"the dashboard queries jobs Prometheus does not have: {sorted(unknown)}"


def test_prometheus_scrapes_every_process_on_the_port_it_serves_metrics_on(services: dict[str, Any]) -> None:
    # DNS discovery of a compose service's name finds every replica of it (A records: the job gives the port).
    prometheus = yaml.safe_load(PROMETHEUS_FILE.read_text())
    scraped: dict[str, set[tuple[int, str]]] = {}
    for job in prometheus["scrape_configs"]:
        for discovery in job.get("dns_sd_configs", []):
            if discovery.get("type") == "A":
                for name in discovery["names"]:
                    scraped.setdefault(name, set()).add((discovery["port"], job.get("metrics_path", "/metrics")))
    served = {}
    for name, service in kitrelay_services(services).items():
        settings = service_settings(service)
        if service["command"][0] == "worker":
            assert settings.WORKER_METRICS_PORT, f"{name} serves no metrics: WORKER_METRICS_PORT is unset"
            served[name] = settings.WORKER_METRICS_PORT
        elif service["command"][0] == "gateway":
            served[name] = settings.GATEWAY_PORT
    assert sorted(served) == sorted(KITRELAY_SERVICES[1:])
    for name, port in served.items():
        assert (port, "/metrics") in scraped.get(name, set()), (
            f"Prometheus does not scrape {name} on port {port}: it scrapes {scraped.get(name, 'nothing')} there"
        )


def test_ha_runs_on_a_three_node_jetstream_cluster_with_the_turns_stream_at_r3(
    ha_services: dict[str, Any],
) -> None:
    nodes: set[str] = set()
    for name, service in kitrelay_services(ha_services).items():
        settings = service_settings(service)
        urls = [urlsplit(url) for url in settings.nats_servers]
        assert len(urls) == 3, f"{name}: NATS_URL names {len(urls)} servers, not the cluster's three"
        assert settings.TURNS_STREAM_REPLICAS == 3, f"{name}: the turns stream would not outlive its node"
        for url in urls:
            assert url.hostname in ha_services, f"{name}: NATS_URL names {url.hostname}, which compose does not run"
            command = ha_services[url.hostname]["command"]
            assert int(option(command, "-p", "--port") or NATS_CLIENT_PORT) == (url.port or NATS_CLIENT_PORT)
        nodes |= {url.hostname for url in urls if url.hostname}
    commands = {node: ha_services[node]["command"] for node in nodes}
    routes = set()
    for node, command in commands.items():
        assert "--jetstream" in command, node
        cluster = option(command, "--cluster")
        assert cluster is not None, f"{node} is no cluster member"
        routes.add((node, urlsplit(cluster).port))
    for node, command in commands.items():
        # Every node solicits routes to all three, so any two find each other whichever starts first.
        listed = {(url.hostname, url.port) for url in map(urlsplit, (option(command, "--routes") or "").split(","))}
        assert listed >= routes, f"{node} routes to {sorted(listed)}, not every node {sorted(routes)}"
    assert len({option(c, "--cluster_name") for c in commands.values()} - {None}) == 1, "one cluster name"
    # JetStream knows its peers by server name: without one a node takes a new random name at every start.
    names = [option(c, "-n", "--name", "--server_name") for c in commands.values()]
    assert None not in names and len(set(names)) == 3, f"server names {names}"
    stores = set()
    for node, command in commands.items():
        mounted = {v["target"]: v for v in ha_services[node]["volumes"]}[option(command, "-sd", "--store_dir")]
        assert mounted["type"] == "volume", node
        stores.add(mounted["source"])
        # `js-enabled-only` answers ok before the cluster has a JetStream leader, when kitrelay's first stream
        # request would time out; plain /healthz waits for it.
        health = " ".join(ha_services[node]["healthcheck"]["test"])
        assert "/healthz" in health and "js-enabled-only" not in health, f"{node}: {health}"
    default = compose_config("default")["services"]
    standalone = {v["source"] for v in default["nats"]["volumes"]}
    # A clustered server must not take over a standalone server's store (switching variants would lose the stream).
    assert len(stores) == 3 and not (stores & standalone), f"stores {sorted(stores)}, standalone {standalone}"
    # And the default variant stays one plain server: a server configured for a 3-node cluster serves no JetStream
    # until two nodes are up.
    assert "--routes" not in default["nats"]["command"] and "--cluster" not in default["nats"]["command"]
    for service in kitrelay_services(default).values():
        settings = service_settings(service)
        assert len(settings.nats_servers) == 1 and settings.TURNS_STREAM_REPLICAS == 1
        assert not settings.redis_sentinels


def sentinel_directives(service: dict[str, Any]) -> list[list[str]]:
    """The directives of the config file a Sentinel service writes before it starts (its command's here-document)."""
    script = service["command"][-1]
    assert "--sentinel" in script, f"not a Sentinel: {service['command']}"
    document = re.search(r"<<\s*'?EOF'?\n(.*?)\nEOF\n", script, re.DOTALL)
    assert document is not None, f"no config here-document in {script!r}"
    return [line.split() for line in document[1].splitlines() if line.strip() and not line.startswith("#")]


def redis_port(command: list[str]) -> int:
    return int(option(command, "--port") or REDIS_PORT)


def test_ha_redis_is_a_primary_and_replica_behind_sentinels_kitrelay_asks(ha_services: dict[str, Any]) -> None:
    for name, service in kitrelay_services(ha_services).items():
        settings = service_settings(service)
        sentinels = settings.redis_sentinels
        assert len(sentinels) >= 3, f"{name}: REDIS_SENTINELS names {sentinels}: Redis would stand alone"
        assert settings.redis_is_replicated
        monitored = set()
        for host, port in sentinels:
            assert host in ha_services, f"{name}: REDIS_SENTINELS names {host}, which compose does not run"
            directives = sentinel_directives(ha_services[host])
            assert ["port", str(port)] in directives, f"{host} does not listen on {port}"
            monitors = [d[2:] for d in directives if d[:2] == ["sentinel", "monitor"]]
            assert len(monitors) == 1, f"{host} monitors {monitors}"
            [(watched, address, address_port, votes)] = monitors
            monitored.add((watched, address, int(address_port), int(votes)))
            # Sentinel refuses a host name it was not told to resolve; names survive a container's new address.
            try:
                ipaddress.ip_address(address)
            except ValueError:
                assert ["sentinel", "resolve-hostnames", "yes"] in directives, f"{host} cannot resolve {address}"
            health = " ".join(ha_services[host]["healthcheck"]["test"])
            assert settings.REDIS_SENTINEL_MASTER in health, f"{host}'s healthcheck asks for another master"
            if service["command"][0] != "migrate":
                assert service["depends_on"][host]["condition"] == "service_healthy", f"{name} before {host}"
        assert len(monitored) == 1, f"{name}'s Sentinels disagree: {monitored}"
        [(master, primary, primary_port, quorum)] = monitored
        assert master == settings.REDIS_SENTINEL_MASTER, f"{name} asks for {settings.REDIS_SENTINEL_MASTER!r}"
        assert len(sentinels) // 2 < quorum <= len(sentinels), f"quorum {quorum} of {len(sentinels)} Sentinels"
        assert primary in ha_services and redis_port(ha_services[primary]["command"]) == primary_port
    replicas = [
        service
        for service in ha_services.values()
        if option(service.get("command") or [], "--replicaof", "--slaveof") == primary
    ]
    assert replicas, f"no service replicates {primary}: a failover would have nothing to promote"
    # A data node restarted before the Sentinels noticed it had gone must come back with its data: an empty primary
    # would be replicated, emptying its replicas too (docs/deployment.md).
    for command in [ha_services[primary]["command"], *(r["command"] for r in replicas)]:
        assert option(command, "--appendonly") == "yes", command
