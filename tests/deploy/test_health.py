"""`python -m kitrelay.services.health`, the probe of workers, init containers and the image's HEALTHCHECK, against
real NATS, Redis, SQLite and PostgreSQL, and against servers that are not there."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from kitrelay.services.devservers import free_port
from kitrelay.services.health import main, run_checks, wait_for_checks
from kitrelay.shared.settings import Settings
from kitrelay.shared.store.engine import migrate
from tests.databases import postgres_database, sqlite_url
from tests.deploy.manifests import effective_settings

PROBE_TIMEOUT_S = 3.0


def probe(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The probe as Kubernetes runs it: a new process with the container's environment."""
    return subprocess.run(
        [sys.executable, "-m", "kitrelay.services.health", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def settings_for(**values: str) -> Settings:
    return effective_settings(values)


def set_revision(database_url: str, revision: str) -> None:
    sync_url = database_url.replace("+aiosqlite", "")
    engine = create_engine(sync_url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = :rev"), {"rev": revision})
    engine.dispose()


@pytest.fixture
def down_port() -> int:
    """A loopback port nothing listens on."""
    return free_port()


def test_every_check_passes_on_a_migrated_postgres(nats_url: str, redis_url: str, pg_url: str | None) -> None:
    with postgres_database(pg_url) as database_url:
        migrate(database_url)
        env = {"NATS_URL": nats_url, "REDIS_URL": redis_url, "DATABASE_URL": database_url}
        result = probe(env, "--check", "nats,redis,database,schema")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["nats", "ok"],
        ["redis", "ok"],
        ["database", "ok"],
        ["schema", "ok"],
    ]
    assert "JetStream" in lines[0]


async def test_schema_waits_for_migrations_and_tolerates_newer_ones(tmp_path: Path) -> None:
    database_url = sqlite_url(tmp_path / "kitrelay.db")
    settings = settings_for(DATABASE_URL=database_url)

    [missing] = await run_checks(settings, ["schema"])
    assert not missing.ok and "no database file" in missing.detail
    assert not (tmp_path / "kitrelay.db").exists(), "a probe must not create an empty database"

    migrate(database_url)
    [current] = await run_checks(settings, ["schema"])
    assert current.ok, current.detail

    set_revision(database_url, "0001")
    [behind] = await run_checks(settings, ["schema"])
    assert not behind.ok and "database at 0001" in behind.detail

    # A later release's migration, unknown to this code: old pods restarting mid-rollout still start.
    set_revision(database_url, "9999_from_the_future")
    [ahead] = await run_checks(settings, ["schema"])
    assert ahead.ok and "newer" in ahead.detail


def test_unreachable_servers_fail_fast_without_leaking_passwords(tmp_path: Path, down_port: int) -> None:
    env = {
        "NATS_URL": f"nats://127.0.0.1:{down_port}",
        "REDIS_URL": f"redis://:hunter2secret@127.0.0.1:{down_port}/0",
        "DATABASE_URL": f"postgresql://kitrelay:hunter2secret@127.0.0.1:{down_port}/kitrelay",
    }
    started = time.monotonic()
    result = probe(env, "--timeout", str(PROBE_TIMEOUT_S))
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert [line.split()[:2] for line in result.stderr.splitlines()] == [
        ["nats", "FAILED"],
        ["redis", "FAILED"],
        ["database", "FAILED"],
    ]
    assert "hunter2secret" not in output
    # A refused connection is an answer: no waiting for the timeout (interpreter start-up included).
    assert elapsed < PROBE_TIMEOUT_S + 3, f"took {elapsed:.1f}s"


def test_a_silent_server_times_out() -> None:
    # Accepts TCP connections and never speaks: what a hung NATS looks like to a client.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        started = time.monotonic()
        result = probe({"NATS_URL": f"nats://127.0.0.1:{port}"}, "--check", "nats", "--timeout", "1")
        elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert "nats FAILED" in result.stderr
    assert elapsed < 10


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/readyz" else 503)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def http_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def test_url_checks_want_2xx(http_server: str) -> None:
    ok, unready = await run_checks(Settings(), [], urls=[f"{http_server}/readyz", f"{http_server}/other"])
    assert ok.ok
    assert not unready.ok and "HTTP 503" in unready.detail


async def test_wait_retries_until_its_deadline(down_port: int, redis_url: str) -> None:
    settings = settings_for(REDIS_URL=f"redis://127.0.0.1:{down_port}/0")
    started = time.monotonic()
    [result] = await wait_for_checks(settings, ["redis"], timeout_s=1, wait_s=1.5)
    assert not result.ok
    assert time.monotonic() - started >= 1.5
    started = time.monotonic()
    [healthy] = await wait_for_checks(settings_for(REDIS_URL=redis_url), ["redis"], timeout_s=1, wait_s=30)
    assert healthy.ok
    assert time.monotonic() - started < 5, "a healthy check returns at once"


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--check", "nats,bogus"], ["--check", ""], ["--timeout", "0"]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2, argv
