"""Fixtures every test can use: real NATS, Redis and databases (tests/infra.py), and the system's processes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.infra import *  # noqa: F403
from tests.system import RunningSystem, running_system


@pytest.fixture(scope="session")
def system(
    nats_url: str, redis_url: str, namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningSystem]:
    """A gateway and triage, task (two of them) and research workers as separate processes on SQLite, shared by
    the tests that only talk HTTP and by tests/e2e/test_agents.py (which has the two task workers share turns).
    Starting such a system costs seconds of CPU: one for all of them."""
    workdir = tmp_path_factory.mktemp("system")
    with running_system(
        nats_url=nats_url,
        redis_url=redis_url,
        namespace=f"{namespace}sy",
        log_dir=workdir,
        workers=("triage", "task", "task", "research"),
    ) as running:
        yield running
