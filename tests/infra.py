"""Session fixtures that give every test real NATS (JetStream), Redis and, where possible, PostgreSQL servers.

tests/conftest.py imports these (``from tests.infra import *``). Each server URL is chosen in this order:

1. an explicit URL in the environment: ``KITRELAY_TEST_NATS_URL``, ``KITRELAY_TEST_REDIS_URL``,
   ``KITRELAY_TEST_PG_URL``;
2. a throw-away testcontainers container, when a Docker engine answers (``KITRELAY_TEST_DOCKER=0`` skips this);
3. a server already listening on its default loopback port (4222, 6379, 5432);
4. for NATS and Redis, a server started from the project's own binaries on a free loopback port
   (PostgreSQL has no such fallback: ``pg_url`` is then None and callers skip).

Every name a test run creates on shared servers starts with the session ``namespace`` (``kt`` + 8 hex digits),
and what is left on shared servers under that prefix is deleted at session end.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import logging
import os
import re
import secrets
import threading
import time
import warnings
from collections.abc import Callable, Coroutine, Iterator
from contextlib import ExitStack
from typing import Any, TypeVar

import nats
import pytest
import redis

from kitrelay.services.devservers import (
    DevServerError,
    free_port,
    is_listening,
    is_loopback_host,
    nats_info,
    start_nats,
    start_redis,
)

__all__ = [
    "cleanup_nats_namespace",
    "cleanup_redis_namespace",
    "docker_available",
    "namespace",
    "nats_url",
    "pg_url",
    "redis_url",
    "unique_namespace",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

NATS_IMAGE = "nats:2.10"
REDIS_IMAGE = "redis:7"
POSTGRES_IMAGE = "postgres:16"
DEFAULT_PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
NAMESPACE_RE = re.compile(r"^kt[0-9a-f]{8}$")
_CLEANUP_TIMEOUT_S = 10.0


def _env(name: str) -> str | None:
    # An empty variable (e.g. `KITRELAY_TEST_NATS_URL= pytest`) means "not set", as for Settings.
    value = os.environ.get(name, "").strip()
    return value or None


@functools.cache
def docker_available() -> bool:
    """True when a Docker engine answers a ping within a few seconds; False on any error. Cached per process."""
    if _env("KITRELAY_TEST_DOCKER") in ("0", "false", "no"):
        return False
    try:
        # Imported by name: the docker package ships no type stubs, and this module must load without it.
        client = importlib.import_module("docker").from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def _run_async(factory: Callable[[], Coroutine[Any, Any, T]], timeout_s: float = _CLEANUP_TIMEOUT_S) -> T:
    """Run a coroutine to completion from sync code, even if this thread already runs an event loop."""
    result: list[T] = []
    error: list[BaseException] = []

    def runner() -> None:
        try:
            result.append(asyncio.run(asyncio.wait_for(factory(), timeout_s)))
        except BaseException as exc:
            error.append(exc)

    # A fresh thread has no running loop, so asyncio.run works whatever pytest-asyncio is doing in ours.
    thread = threading.Thread(target=runner, name="kitrelay-test-cleanup", daemon=True)
    thread.start()
    thread.join(timeout_s + 5)
    if error:
        raise error[0]
    if not result:
        raise TimeoutError(f"cleanup did not finish within {timeout_s}s")
    return result[0]


# ---------------------------------------------------------------------------------------------------------------------
# Namespaces and cleanup.


def _new_namespace() -> str:
    return f"kt{secrets.token_hex(4)}"


@pytest.fixture(scope="session")
def namespace() -> str:
    """A name prefix unique to this test session (``kt`` + 8 hex digits): streams, subjects and keys use it."""
    return _new_namespace()


@pytest.fixture
def unique_namespace(namespace: str) -> str:
    """A namespace unique to one test. It extends the session's, so the session-end cleanup removes its leftovers."""
    return f"{namespace}x{secrets.token_hex(3)}"


def cleanup_nats_namespace(url: str, namespace: str) -> list[str]:
    """Delete the JetStream streams (KV and object-store buckets included) named with ``namespace``; return them."""
    prefix = namespace.upper()
    # KV buckets and object stores live in streams named KV_<bucket> / OBJ_<bucket>.
    prefixes = (prefix, f"KV_{prefix}", f"OBJ_{prefix}")

    async def error_cb(exc: Exception) -> None:
        # nats-py logs connection errors loudly by default; the caller reports a failure once.
        return None

    async def purge() -> list[str]:
        # In nats-py, max_reconnect_attempts=0 means "retry forever", even for the first connect; 1 gives up fast.
        nc = await nats.connect(
            url,
            connect_timeout=3,
            allow_reconnect=False,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.2,
            error_cb=error_cb,
        )
        try:
            js = nc.jetstream(timeout=5)
            names: list[str] = []
            offset = 0
            # STREAM.LIST is paged; collect every name before deleting so the offsets stay valid.
            while True:
                page = await js.streams_info(offset=offset)
                if not page:
                    break
                names.extend(info.config.name for info in page if info.config.name)
                offset += len(page)
            doomed = [name for name in names if name.upper().startswith(prefixes)]
            for name in doomed:
                await js.delete_stream(name)
            return doomed
        finally:
            await nc.close()

    return _run_async(purge)


def cleanup_redis_namespace(url: str, namespace: str) -> int:
    """UNLINK every key of ``url``'s database whose name starts with ``namespace``; return how many."""
    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=10)
    deleted = 0
    try:
        batch: list[Any] = []
        # `<namespace>*` rather than `<namespace>:*`: keys of unique_namespace() extend the session prefix.
        for key in client.scan_iter(match=f"{namespace}*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += int(client.unlink(*batch))
                batch.clear()
        if batch:
            deleted += int(client.unlink(*batch))
    finally:
        client.close()
    return deleted


def _best_effort(what: str, action: Callable[[], object]) -> None:
    try:
        outcome = action()
        logger.info("%s: %s", what, outcome)
    except Exception as exc:
        warnings.warn(f"{what} failed (leftovers stay on the server): {exc!r}", RuntimeWarning, stacklevel=2)


# ---------------------------------------------------------------------------------------------------------------------
# Containers. Ports are published on 127.0.0.1 only: Docker's default would publish them on every interface.


def _publish_on_loopback(container: Any, port: int) -> None:
    # testcontainers types its port map as host *port* only; docker-py also takes (host_ip,) for a random port.
    ports: dict[str, Any] = container.ports
    ports[str(port)] = ("127.0.0.1",)


def _container_host(container: Any) -> str:
    host = str(container.get_container_host_ip())
    if not is_loopback_host(host):
        raise DevServerError(f"the Docker engine publishes ports on {host!r}, which is not a loopback address")
    # The port is bound on 127.0.0.1; "localhost" might resolve to ::1 first.
    return "127.0.0.1" if host == "localhost" else host


def _start_container(stack: ExitStack, what: str, start: Callable[[ExitStack], T]) -> T | None:
    """Start a container via ``start``; on failure (no image, no network, ...) warn and return None to fall back.

    ``start`` registers the container's stop on the ExitStack it gets: a half-started container is removed at
    once, a working one when ``stack`` closes at session end.
    """
    attempt = ExitStack()
    try:
        result = start(attempt)
    except Exception as exc:
        try:
            attempt.close()
        except Exception as stop_exc:
            logger.warning("could not remove the failed %s container: %r", what, stop_exc)
        warnings.warn(f"could not start the {what} container, falling back: {exc!r}", RuntimeWarning, stacklevel=2)
        return None
    stack.enter_context(attempt)
    return result


def _testcontainers_class(module: str, name: str) -> Any:
    """A module's container class: under testcontainers.community since 4.14, directly under testcontainers before."""
    try:
        found = importlib.import_module(f"testcontainers.community.{module}")
    except ImportError:
        found = importlib.import_module(f"testcontainers.{module}")
    return getattr(found, name)


def _nats_container(stack: ExitStack) -> str | None:
    def start(attempt: ExitStack) -> str:
        # Imported only once Docker answers: testcontainers reads its config and the docker package on import.
        from testcontainers.core.container import DockerContainer  # noqa: PLC0415

        container = DockerContainer(NATS_IMAGE).with_command("-js")
        _publish_on_loopback(container, 4222)
        attempt.callback(container.stop)
        container.start()
        host = _container_host(container)
        port = int(container.get_exposed_port(4222))
        # Ready when the server greets with JetStream on: independent of the testcontainers wait API version.
        _wait_for(lambda: bool((nats_info(host, port) or {}).get("jetstream")), f"NATS container at {host}:{port}")
        return f"nats://{host}:{port}"

    return _start_container(stack, "NATS", start)


def _redis_container(stack: ExitStack) -> str | None:
    def start(attempt: ExitStack) -> str:
        container = _testcontainers_class("redis", "RedisContainer")(REDIS_IMAGE)
        _publish_on_loopback(container, 6379)
        attempt.callback(container.stop)
        container.start()  # waits for PING itself
        return f"redis://{_container_host(container)}:{int(container.get_exposed_port(6379))}/0"

    return _start_container(stack, "Redis", start)


def _pg_container(stack: ExitStack) -> str | None:
    def start(attempt: ExitStack) -> str:
        container = _testcontainers_class("postgres", "PostgresContainer")(POSTGRES_IMAGE, driver="asyncpg")
        _publish_on_loopback(container, 5432)
        attempt.callback(container.stop)
        container.start()
        return str(container.get_connection_url(host=_container_host(container)))

    return _start_container(stack, "PostgreSQL", start)


def _wait_for(probe: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not probe():
        if time.monotonic() >= deadline:
            raise DevServerError(f"{what} was not ready within {timeout_s:.0f}s")
        time.sleep(0.1)


# ---------------------------------------------------------------------------------------------------------------------
# Server fixtures.


@pytest.fixture(scope="session")
def nats_url(namespace: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a NATS server with JetStream (see the module docstring for how it is chosen)."""
    with ExitStack() as stack:
        url, shared = _env("KITRELAY_TEST_NATS_URL"), True
        if url is None and docker_available():
            url, shared = _nats_container(stack), False
        if url is None and is_listening("127.0.0.1", 4222):
            url, shared = "nats://127.0.0.1:4222", True
        if url is None:
            server = start_nats(port=free_port(), data_dir=tmp_path_factory.mktemp("nats"))
            stack.callback(server.stop)
            url, shared = server.url, False
        logger.info("tests use NATS at %s (namespace %s)", url, namespace)
        yield url
        if shared:
            _best_effort(
                f"deleting JetStream streams of namespace {namespace}", lambda: cleanup_nats_namespace(url, namespace)
            )


@pytest.fixture(scope="session")
def redis_url(namespace: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a Redis server (see the module docstring for how it is chosen)."""
    with ExitStack() as stack:
        url, shared = _env("KITRELAY_TEST_REDIS_URL"), True
        if url is None and docker_available():
            url, shared = _redis_container(stack), False
        if url is None and is_listening("127.0.0.1", 6379):
            url, shared = "redis://127.0.0.1:6379/0", True
        if url is None:
            server = start_redis(port=free_port(), data_dir=tmp_path_factory.mktemp("redis"))
            stack.callback(server.stop)
            url, shared = server.url, False
        logger.info("tests use Redis at %s (namespace %s)", url, namespace)
        yield url
        if shared:
            _best_effort(
                f"deleting Redis keys of namespace {namespace}", lambda: cleanup_redis_namespace(url, namespace)
            )


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str | None]:
    """An asyncpg SQLAlchemy URL of a PostgreSQL database, or None: callers then skip, saying PostgreSQL is absent."""
    with ExitStack() as stack:
        url = _env("KITRELAY_TEST_PG_URL")
        if url is None and docker_available():
            url = _pg_container(stack)
        if url is None and is_listening("127.0.0.1", 5432):
            url = DEFAULT_PG_URL
        if url is None:
            logger.info("no PostgreSQL for tests: set KITRELAY_TEST_PG_URL, run Docker, or listen on 127.0.0.1:5432")
        yield url
