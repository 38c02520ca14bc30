"""k8s/ rendered with kustomize, per overlay, and checked for what breaks in production: schema errors, containers
without probes or resources, KEDA watching a consumer the workers never create, environment variables no setting
reads, grace periods shorter than the drain, proxies that buffer SSE."""

from __future__ import annotations

import base64
import re
from typing import Any
from urllib.parse import urlsplit

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from kitrelay.gateway.app import create_app
from kitrelay.gateway.auth import resolve_auth_mode
from kitrelay.gateway.http_guard import AddressSet
from kitrelay.gateway.security import OPEN_HOST_PATHS
from kitrelay.services.devservers import is_loopback_host
from kitrelay.shared.names import turns_consumer, turns_stream
from kitrelay.shared.settings import AGENT_KINDS, Settings
from tests.deploy.manifests import (
    K8S,
    OVERLAYS,
    Resource,
    check_container_command,
    check_kitrelay_args,
    check_probe_command,
    config_values,
    containers,
    effective_settings,
    foreign_env,
    image_repository,
    is_kitrelay,
    named,
    of_kind,
    pod_spec,
    render,
)

# The oldest Kubernetes the manifests promise to work on (HPA autoscaling/v2 and PDB policy/v1 are GA there).
KUBERNETES_VERSION = "1.27.0"
GRACE_MARGIN_S = (2, 20)

# KEDA's ScaledObject is a custom resource Kubernetes' schemas do not know. The fields kitrelay uses, strict, so a
# misspelt key fails here instead of being dropped by the API server (apiextensions prunes unknown fields).
_HPA_BEHAVIOR: dict[str, Any] = {"type": "object"}
SCALED_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string"},
                        "kind": {"type": "string"},
                        "apiVersion": {"type": "string"},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "fallback": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["failureThreshold", "replicas"],
                    "properties": {"failureThreshold": {"type": "integer"}, "replicas": {"type": "integer"}},
                },
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {"name": {"type": "string"}, "behavior": _HPA_BEHAVIOR},
                        },
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                            "authenticationRef": {"type": "object", "required": ["name"]},
                            # Every metadata value is a string in KEDA's CRD: an unquoted number is rejected.
                            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                        },
                    },
                },
            },
        },
    },
}
# The nats-jetstream trigger's metadata (keda.sh/docs/scalers/nats-jetstream).
NATS_JETSTREAM_METADATA = {
    "required": {"natsServerMonitoringEndpoint", "account", "stream", "consumer", "lagThreshold"},
    "optional": {"activationLagThreshold", "useHttps"},
}


@pytest.fixture(params=OVERLAYS, scope="module")
def overlay(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def resources(overlay: str) -> list[Resource]:
    return render(overlay)


@pytest.fixture(scope="module")
def config(resources: list[Resource]) -> dict[str, str]:
    return config_values(resources)


def secret_values(overlay: str, resources: list[Resource]) -> dict[str, str]:
    """kitrelay-secrets: generated in dev; in prod created outside git from secrets.env.example (its placeholders)."""
    generated = [r for r in of_kind(resources, "Secret") if r["metadata"]["name"].startswith("kitrelay-secrets")]
    if generated:
        return {key: base64.b64decode(value).decode() for key, value in generated[0].get("data", {}).items()}
    example = K8S / "overlays" / overlay / "secrets.env.example"
    assert example.exists(), f"overlays/{overlay} neither generates kitrelay-secrets nor documents its keys"
    lines = [line for line in example.read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def secret_keys(overlay: str, resources: list[Resource]) -> set[str]:
    return set(secret_values(overlay, resources))


def deployments(resources: list[Resource]) -> list[Resource]:
    return of_kind(resources, "Deployment")


def kitrelay_deployments(resources: list[Resource]) -> list[Resource]:
    return [d for d in deployments(resources) if any(is_kitrelay(c) for c in containers(d))]


def worker_kind(deployment: Resource) -> str | None:
    [main] = [c for c in containers(deployment, init=False) if is_kitrelay(c)]
    if main.get("args", [])[:1] != ["worker"]:
        return None
    args: list[str] = main["args"]
    return args[args.index("--agent") + 1]


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


# ---------------------------------------------------------------------------------------------------------------------


def test_every_resource_validates_against_its_schema(resources: list[Resource]) -> None:
    for resource in resources:
        where = f"{resource['kind']}/{resource['metadata']['name']}"
        if resource["kind"] == "ScaledObject":
            jsonschema.validate(resource, SCALED_OBJECT_SCHEMA)
            continue
        try:
            # strict: unknown fields fail, as they would be silently dropped by the API server.
            kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}")


def test_every_container_has_probes_and_resources(resources: list[Resource]) -> None:
    for workload in resources:
        for container in containers(workload):
            where = f"{workload['kind']}/{workload['metadata']['name']} container {container['name']}"
            limits = container.get("resources", {}).get("limits", {})
            requests = container.get("resources", {}).get("requests", {})
            assert {"cpu", "memory"} <= set(requests), f"{where} requests no cpu/memory"
            assert "memory" in limits, f"{where} has no memory limit"
        if workload["kind"] == "Deployment":
            for container in containers(workload, init=False):
                where = f"Deployment/{workload['metadata']['name']} container {container['name']}"
                assert "livenessProbe" in container, f"{where} has no liveness probe"
                assert "readinessProbe" in container, f"{where} has no readiness probe"


def test_kitrelay_containers_run_commands_that_exist(resources: list[Resource]) -> None:
    roles = []
    for workload in resources:
        for container in containers(workload):
            if not is_kitrelay(container):
                continue
            roles.append(check_container_command(container.get("command"), container.get("args")))
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                if "exec" in container.get(probe, {}):
                    check_probe_command(container[probe]["exec"]["command"])
    assert {"gateway", "worker", "migrate", "health"} <= set(roles)
    kinds = sorted(k for d in kitrelay_deployments(resources) if (k := worker_kind(d)) is not None)
    assert kinds == sorted(AGENT_KINDS), "one worker Deployment per agent kind"


def test_gateway_probes_use_routes_the_gateway_serves(resources: list[Resource], config: dict[str, str]) -> None:
    # The OpenAPI document lists every route the app serves, however its routers are nested.
    paths = set(create_app(Settings()).openapi()["paths"])
    gateway = named(resources, "Deployment", "kitrelay-gateway")
    [container] = [c for c in containers(gateway, init=False) if c["args"] == ["gateway"]]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["http"] == int(config["GATEWAY_PORT"]), "the container port is the one the gateway listens on"
    probed = {}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        http = container[probe]["httpGet"]
        assert http["port"] in ports, f"{probe} names no container port"
        probed[probe] = http["path"]
    assert probed["livenessProbe"] == "/healthz"
    assert probed["readinessProbe"] == "/readyz", "readiness must check NATS, Redis and the database"
    missing = set(probed.values()) - paths
    assert not missing, f"the gateway serves no {sorted(missing)}"
    # The kubelet calls the pod by its IP address: the probes must answer whatever the Host header says.
    assert set(probed.values()) <= OPEN_HOST_PATHS


def test_environment_names_are_settings(overlay: str, resources: list[Resource], config: dict[str, str]) -> None:
    fields = set(Settings.model_fields)
    secrets = secret_keys(overlay, resources)
    unread = {key for key in set(config) - fields if not foreign_env(key)}
    assert not unread, f"ConfigMap keys no setting reads: {sorted(unread)}"
    assert not (secrets - fields), f"Secret keys no setting reads: {sorted(secrets - fields)}"
    # envFrom takes the last source's value for a key in both: one place per variable.
    assert not (set(config) & secrets), f"in both the ConfigMap and the Secret: {sorted(set(config) & secrets)}"
    for workload in resources:
        for container in containers(workload):
            if not is_kitrelay(container):
                continue
            for env in container.get("env", []):
                assert env["name"] in fields or foreign_env(env["name"]), f"{env['name']} is no setting"
    # And the values are valid settings: a typo in a number or an enum fails here, not in a crash-looping pod.
    effective_settings({**config, **secret_values(overlay, resources)})


def test_env_sources_exist(overlay: str, resources: list[Resource]) -> None:
    config_maps = {r["metadata"]["name"] for r in of_kind(resources, "ConfigMap")}
    secrets = {r["metadata"]["name"] for r in of_kind(resources, "Secret")}
    external = set() if secrets else {"kitrelay-secrets"}
    for workload in resources:
        for container in containers(workload):
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in config_maps
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets | external, f"{overlay}: {source}"


def test_gateway_can_start_and_share_upload_tokens(
    overlay: str, resources: list[Resource], config: dict[str, str]
) -> None:
    settings = effective_settings({**config, **secret_values(overlay, resources)})
    assert not is_loopback_host(settings.GATEWAY_HOST), "in a pod the gateway must listen beyond loopback"
    # Raises AuthConfigError where the gateway would refuse to start (no JWT key and AUTH_MODE not dev).
    resolve_auth_mode(settings)
    hpa = named(resources, "HorizontalPodAutoscaler", "kitrelay-gateway")
    if hpa["spec"]["maxReplicas"] > 1:
        # Otherwise each replica signs upload tokens with its own random key and rejects the others'.
        assert settings.UPLOAD_TOKEN_SECRET is not None or settings.JWT_SECRET is not None


def test_keda_scales_each_worker_kind_on_the_consumer_workers_create(
    resources: list[Resource], config: dict[str, str]
) -> None:
    settings = effective_settings(config)
    namespace = settings.NAMESPACE
    by_name = {d["metadata"]["name"]: d for d in deployments(resources)}
    scaled = {}
    for scaled_object in of_kind(resources, "ScaledObject"):
        target = by_name[scaled_object["spec"]["scaleTargetRef"]["name"]]
        kind = worker_kind(target)
        assert kind in AGENT_KINDS, f"{scaled_object['metadata']['name']} scales no worker"
        [trigger] = scaled_object["spec"]["triggers"]
        assert trigger["type"] == "nats-jetstream"
        metadata = trigger["metadata"]
        assert set(metadata) >= NATS_JETSTREAM_METADATA["required"]
        assert set(metadata) <= NATS_JETSTREAM_METADATA["required"] | NATS_JETSTREAM_METADATA["optional"]
        # KEDA falls back to the stream's last sequence for a consumer it cannot find, and scales to the maximum.
        assert metadata["stream"] == turns_stream(namespace)
        assert metadata["consumer"] == turns_consumer(namespace, kind)
        assert metadata["account"] == "$G"
        # Lag counts turns in flight: a threshold above one process's concurrency would wait for a full replica.
        assert 0 < int(metadata["lagThreshold"]) <= settings.WORKER_CONCURRENCY
        # Scale-from-zero takes a polling interval plus a pod start, longer than a handoff may wait.
        assert scaled_object["spec"]["minReplicaCount"] >= 1
        assert scaled_object["spec"]["maxReplicaCount"] >= scaled_object["spec"]["minReplicaCount"]
        scaled[kind] = metadata["natsServerMonitoringEndpoint"]
    assert sorted(scaled) == sorted(AGENT_KINDS), "one ScaledObject per agent kind"


def _service_fqdn(host: str, namespace: str) -> tuple[str, str]:
    """(service, namespace) of a cluster DNS name, short or fully qualified."""
    labels = host.split(".")
    return labels[0], labels[1] if len(labels) > 1 else namespace


def test_keda_reads_the_nats_the_workers_use(resources: list[Resource], config: dict[str, str]) -> None:
    namespace = named(resources, "Deployment", "kitrelay-gateway")["metadata"]["namespace"]
    nats_host = urlsplit(config["NATS_URL"]).hostname
    assert nats_host is not None
    nats_service, nats_namespace = _service_fqdn(nats_host, namespace)
    for scaled_object in of_kind(resources, "ScaledObject"):
        endpoint = scaled_object["spec"]["triggers"][0]["metadata"]["natsServerMonitoringEndpoint"]
        host, _, port = endpoint.rpartition(":")
        # KEDA's operator lives in its own namespace: a short name would not resolve from there.
        assert host.endswith(".svc.cluster.local"), f"{endpoint} is not a fully qualified service name"
        assert port == "8222", "the NATS monitoring port"
        service, service_namespace = _service_fqdn(host, namespace)
        # The chart's headless service names the same servers, pod by pod (what KEDA needs in a cluster).
        assert (service.removesuffix("-headless"), service_namespace) == (nats_service, nats_namespace)
        if service_namespace == namespace:
            # In-cluster NATS of this overlay: the Service must exist and expose the monitoring port.
            svc = named(resources, "Service", service)
            assert 8222 in {p["port"] for p in svc["spec"]["ports"]}


def test_autoscaled_deployments_leave_replicas_to_the_autoscaler(resources: list[Resource]) -> None:
    targets = {h["spec"]["scaleTargetRef"]["name"] for h in of_kind(resources, "HorizontalPodAutoscaler")}
    targets |= {s["spec"]["scaleTargetRef"]["name"] for s in of_kind(resources, "ScaledObject")}
    kitrelay = {d["metadata"]["name"] for d in kitrelay_deployments(resources)}
    assert kitrelay <= targets, f"not autoscaled: {sorted(kitrelay - targets)}"
    for deployment in deployments(resources):
        if deployment["metadata"]["name"] in targets:
            # Every `kubectl apply` would reset the autoscaler's count to this number.
            assert "replicas" not in deployment["spec"], deployment["metadata"]["name"]


def test_grace_period_covers_the_drain(resources: list[Resource], config: dict[str, str]) -> None:
    drain_s = effective_settings(config).WORKER_DRAIN_TIMEOUT_S
    low, high = GRACE_MARGIN_S
    for deployment in kitrelay_deployments(resources):
        spec = pod_spec(deployment)
        assert spec is not None
        [main] = [c for c in spec["containers"] if is_kitrelay(c)]
        pre_stop = main.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        pre_stop_s = int(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0
        needed = pre_stop_s + drain_s
        grace = spec["terminationGracePeriodSeconds"]
        # Shorter: SIGKILL lands mid-drain and turns are redone. Much longer: rollouts and scale-in crawl.
        assert needed + low <= grace <= needed + high, (
            f"{deployment['metadata']['name']}: grace {grace}s for {pre_stop_s}s preStop + {drain_s:g}s drain"
        )


def test_ingress_streams_sse_unbuffered(resources: list[Resource], config: dict[str, str]) -> None:
    settings = effective_settings(config)
    [ingress] = of_kind(resources, "Ingress")
    notes = ingress["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert notes["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "off"
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(notes[f"nginx.ingress.kubernetes.io/{timeout}"]) > max(
            settings.TURN_IDLE_TIMEOUT_S, settings.SSE_PING_S
        )
    body = re.fullmatch(r"(\d+)([kmg]?)", notes["nginx.ingress.kubernetes.io/proxy-body-size"].lower())
    assert body is not None
    size = int(body[1]) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[body[2]]
    assert size > settings.MAX_UPLOAD_BYTES, "nginx would answer 413 before the gateway can"
    [rule] = ingress["spec"]["rules"]
    [path] = rule["http"]["paths"]
    backend = path["backend"]["service"]
    service = named(resources, "Service", backend["name"])
    [port] = [p for p in service["spec"]["ports"] if p["name"] == backend["port"]["name"]]
    assert port["targetPort"] == "http"


CONTROLLER_CONFIG = K8S / "ingress-nginx" / "controller-config.yaml"


def test_slow_and_greedy_clients_are_cut_at_the_edge_and_the_gateway(
    resources: list[Resource], config: dict[str, str]
) -> None:
    """Issue 31: slow clients and one address holding hundreds of connections, at the ingress and the gateway."""
    settings = effective_settings(config)
    [ingress] = of_kind(resources, "Ingress")
    limit = int(ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/limit-connections"])
    assert 0 < limit <= 1000
    # Behind the ingress every connection comes from a controller pod: those must be trusted proxies, or the gateway
    # would count the whole ingress as one client (and believe no X-Forwarded-For).
    proxies = AddressSet(settings.TRUSTED_PROXIES)
    for pod_address in ("10.244.1.17", "10.42.0.9", "192.168.3.4"):
        assert pod_address in proxies, f"{pod_address} (a typical pod address) is not a trusted proxy"
    assert "203.0.113.7" not in proxies, "a public address must never be trusted"
    # The controller's own timeouts: a valid ConfigMap, no looser than the gateway's.
    controller = yaml.safe_load(CONTROLLER_CONFIG.read_text())
    kubernetes_validate.validate(controller, KUBERNETES_VERSION, strict=True)
    assert int(controller["data"]["client-header-timeout"]) <= settings.REQUEST_HEADER_TIMEOUT_S
    assert int(controller["data"]["client-body-timeout"]) <= settings.REQUEST_BODY_TIMEOUT_S


def test_selectors_find_their_pods(resources: list[Resource]) -> None:
    pods = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"] for d in deployments(resources)}
    for deployment in deployments(resources):
        assert labels_match(deployment["spec"]["selector"]["matchLabels"], pods[deployment["metadata"]["name"]])
    for kind in ("Service", "PodDisruptionBudget"):
        for resource in of_kind(resources, kind):
            selector = resource["spec"]["selector"]
            selector = selector.get("matchLabels", selector)
            matched = [name for name, labels in pods.items() if labels_match(selector, labels)]
            assert len(matched) == 1, f"{kind}/{resource['metadata']['name']} selects {matched}"
    budgeted = {
        name
        for pdb in of_kind(resources, "PodDisruptionBudget")
        for name, labels in pods.items()
        if labels_match(pdb["spec"]["selector"]["matchLabels"], labels)
    }
    assert {d["metadata"]["name"] for d in kitrelay_deployments(resources)} <= budgeted


def test_images_are_pinned(overlay: str, resources: list[Resource]) -> None:
    for workload in resources:
        for container in containers(workload):
            image = container["image"]
            tag = image.split("@")[0].rsplit("/", 1)[-1].partition(":")[2]
            assert "@sha256:" in image or (tag and tag != "latest"), f"{overlay}: {image} is not pinned"
    kitrelay_images = {c["image"] for w in resources for c in containers(w) if is_kitrelay(c)}
    assert len(kitrelay_images) == 1, f"every kitrelay container runs the same release: {kitrelay_images}"
    assert {image_repository(i) for i in kitrelay_images} == {"kitrelay"}


def test_kitrelay_pods_run_unprivileged(resources: list[Resource]) -> None:
    for workload in resources:
        spec = pod_spec(workload)
        if spec is None or not any(is_kitrelay(c) for c in containers(workload)):
            continue
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["automountServiceAccountToken"] is False
        for container in containers(workload):
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_workers_wait_for_the_schema_and_the_job_migrates(resources: list[Resource]) -> None:
    for deployment in kitrelay_deployments(resources):
        init = deployment["spec"]["template"]["spec"]["initContainers"]
        assert any("schema" in check_probe_command([*c["command"], *c["args"]]) for c in init)
    [job] = of_kind(resources, "Job")
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert check_kitrelay_args(container["args"]) == "migrate"


def test_workers_are_scraped_on_the_port_they_serve_metrics_on(
    overlay: str, resources: list[Resource], config: dict[str, str]
) -> None:
    secrets = secret_values(overlay, resources)
    workers = [d for d in kitrelay_deployments(resources) if worker_kind(d) is not None]
    assert len(workers) == len(AGENT_KINDS)
    for deployment in workers:
        name = deployment["metadata"]["name"]
        [main] = [c for c in containers(deployment, init=False) if is_kitrelay(c)]
        env = {e["name"]: e["value"] for e in main.get("env", []) if "value" in e}
        port = effective_settings({**config, **secrets, **env}).WORKER_METRICS_PORT
        assert port, f"{name} serves no metrics: WORKER_METRICS_PORT is unset"
        # The annotations a Prometheus discovering pods reads (kubernetes_sd_configs, role: pod).
        notes = deployment["spec"]["template"]["metadata"].get("annotations", {})
        assert notes.get("prometheus.io/scrape") == "true", f"{name} is not scraped"
        assert notes.get("prometheus.io/port") == str(port), f"{name} is scraped on another port than {port}"
        assert notes.get("prometheus.io/path") == "/metrics", name
        declared = {p["containerPort"]: p.get("name") for p in main.get("ports", [])}
        assert declared.get(port) == "metrics", f"{name} declares ports {declared}, not metrics on {port}"


# The Bitnami Redis chart's Sentinels watch this master set unless told otherwise (its sentinel.masterSet).
BITNAMI_MASTER_SET = "mymaster"
SENTINEL_PORT = 26379


def test_prod_has_the_turns_stream_on_three_nats_nodes_and_redis_behind_sentinels() -> None:
    resources = render("prod")
    settings = effective_settings({**config_values(resources), **secret_values("prod", resources)})
    assert settings.TURNS_STREAM_REPLICAS == 3, "a turns stream on one NATS node dies with it"
    sentinels = settings.redis_sentinels
    assert len(sentinels) >= 3, f"REDIS_SENTINELS names {sentinels}: Redis would stand alone"
    for host, port in sentinels:
        # Redis lives in its own namespace: only a fully qualified name resolves from kitrelay's.
        assert host.endswith(".svc.cluster.local"), f"{host} is not a fully qualified name"
        assert port == SENTINEL_PORT, host
    assert len({host for host, _ in sentinels}) == len(sentinels), "each Sentinel once"
    assert settings.REDIS_SENTINEL_MASTER == BITNAMI_MASTER_SET, "the master set the chart's Sentinels watch"
    # The chart's Sentinels ask for the password too (auth.sentinel), and REDIS_URL gives the primary's.
    assert settings.REDIS_SENTINEL_PASSWORD is not None
    assert urlsplit(settings.REDIS_URL).password
