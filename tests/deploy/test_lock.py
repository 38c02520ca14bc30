"""Reproducible installs: `make install`, the image and CI install exactly what the lock files name (hashes
checked), the lock files pin every dependency pyproject.toml declares within its range, and this environment is
what the test lock file says. `make lock` refreshes them."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.manifests import ROOT, dockerfile_instructions

RUNTIME_LOCK = ROOT / "requirements.lock"
TEST_LOCK = ROOT / "requirements-test.lock"
_PIN = re.compile(r"^(?P<name>[A-Za-z0-9_.\-\[\]]+)==(?P<version>[^\s;\\]+)(?:\s*;\s*(?P<marker>[^\\]+?))?\s*\\?$")


def pins(lock: Path) -> dict[str, tuple[str, Marker | None, int]]:
    """name -> (version, marker, number of hashes) of every requirement the lock file pins."""
    found: dict[str, tuple[str, Marker | None, int]] = {}
    current: str | None = None
    for line in lock.read_text().splitlines():
        if match := _PIN.match(line):
            current = canonicalize_name(match["name"].split("[")[0])
            marker = Marker(match["marker"]) if match["marker"] else None
            found[current] = (match["version"], marker, 0)
        elif current and line.strip().startswith("--hash=sha256:"):
            version, marker, hashes = found[current]
            found[current] = (version, marker, hashes + 1)
    return found


def declared(extra: str | None = None) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(spec) for spec in project["dependencies"]]
    if extra:
        requirements += [Requirement(spec) for spec in project["optional-dependencies"][extra]]
    return requirements


@pytest.mark.parametrize(("lock", "extra"), [(RUNTIME_LOCK, None), (TEST_LOCK, "test")])
def test_the_lock_pins_every_declared_dependency_within_its_range_with_hashes(lock: Path, extra: str | None) -> None:
    pinned = pins(lock)
    for requirement in declared(extra):
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{lock.name} does not pin {requirement.name}: run `make lock`"
        version, _, hashes = pinned[name]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{lock.name} pins {requirement.name}=={version}, outside pyproject's {requirement.specifier}: "
            "run `make lock`"
        )
        assert hashes >= 1, f"{lock.name} gives no hash for {requirement.name}"


def test_this_environment_is_what_the_test_lock_names() -> None:
    """What `make install` installed, and so what the suite ran on, is the lock file's: no other version."""
    drifted = []
    for name, (version, marker, _) in pins(TEST_LOCK).items():
        if marker is not None and not marker.evaluate():
            continue  # another platform's (pywin32, colorama, ...)
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            drifted.append(f"{name} {version} is not installed")
            continue
        if installed != version:
            drifted.append(f"{name} {installed} installed, the lock names {version}")
    assert not drifted, "; ".join(drifted) + ": run `make install` (or `make lock` after changing pyproject.toml)"


def test_the_image_installs_the_runtime_lock_with_its_hashes() -> None:
    runs = [rest for instruction, rest in dockerfile_instructions() if instruction == "RUN"]
    copies = [rest for instruction, rest in dockerfile_instructions() if instruction == "COPY"]
    assert any("requirements.lock" in copy.split() for copy in copies)
    assert any("--require-hashes -r requirements.lock" in run for run in runs), runs
    # The package itself adds nothing: every dependency came from the lock.
    assert any("pip install --no-deps ." in run for run in runs), runs
    makefile = (ROOT / "Makefile").read_text()
    assert "--require-hashes -r requirements-test.lock" in makefile
