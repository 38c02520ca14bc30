"""Starts kitrelay's services as separate processes, the way `kitrelay up` does, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from kitrelay.services.devservers import free_port
from kitrelay.shared.store.engine import migrate

# Generous: on a loaded 2-core machine a gateway with every import can take half a minute to answer.
START_TIMEOUT_S = 60.0


@dataclass
class RunningSystem:
    base_url: str
    env: dict[str, str]
    log_dir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "kitrelay.services.cli", *args],
            env={**self.env, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def stop(self, name: str, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 30) -> int:
        proc = self.processes.pop(name)
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def stop_all(self, timeout_s: float = 30) -> None:
        """SIGTERM every process at once (they drain in parallel), then wait for each."""
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name in list(self.processes):
            self.stop(name, timeout_s=timeout_s)

    def start_gateway(self, name: str, env: dict[str, str] | None = None) -> str:
        """Another gateway process on its own port (and settings of its own in `env`); returns its base URL once it
        is healthy."""
        port = free_port()
        own = {"GATEWAY_PORT": str(port), "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}", **(env or {})}
        self.start(name, "gateway", env=own)
        url = f"http://127.0.0.1:{port}"
        self.wait_healthy(name, url)
        return url

    def kill(self, name: str) -> None:
        """SIGKILL: the process gets no chance to clean up, as in a crash."""
        proc = self.processes.pop(name)
        proc.kill()
        proc.wait()

    def wait_healthy(self, name: str = "gateway", url: str | None = None) -> None:
        wait_healthy(url or self.base_url, self.processes[name], self.log_dir / f"{name}.log", name=name)


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log_path: Path, *, name: str) -> None:
    """Until `url` answers /healthz; fails with the end of the process's log when it exits or takes too long."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{_tail(log_path)}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{name} not healthy after {START_TIMEOUT_S}s:\n{_tail(log_path)}")


def _tail(log_path: Path) -> str:
    return log_path.read_text(errors="replace")[-3000:]


@contextmanager
def running_system(
    *,
    nats_url: str,
    redis_url: str,
    namespace: str,
    log_dir: Path,
    database_url: str | None = None,
    workers: tuple[str, ...] = ("triage", "task", "research"),
    extra_env: dict[str, str] | None = None,
) -> Iterator[RunningSystem]:
    """A gateway and workers as separate processes that share nothing but NATS, Redis and the database (by
    default a new, migrated SQLite file in `log_dir`)."""
    if database_url is None:
        database_url = f"sqlite+aiosqlite:///{log_dir / 'kitrelay.db'}"
        migrate(database_url)
    port = free_port()
    env = {
        **os.environ,
        "NATS_URL": nats_url,
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "NAMESPACE": namespace,
        "GATEWAY_PORT": str(port),
        "TURN_START_TIMEOUT_S": "15",
        "ATTACHMENTS_DIR": str(log_dir / "attachments"),
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    system = RunningSystem(base_url=f"http://127.0.0.1:{port}", env=env, log_dir=log_dir)
    try:
        system.start("gateway", "gateway")
        for index, kind in enumerate(workers):
            # A second worker of a kind is "worker-<kind>-2", and so on.
            copies = workers[:index].count(kind)
            system.start(f"worker-{kind}" + (f"-{copies + 1}" if copies else ""), "worker", "--agent", kind)
        system.wait_healthy()
        yield system
    finally:
        system.stop_all()
