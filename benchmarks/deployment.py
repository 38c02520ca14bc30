"""What a benchmark runs against: the embedded default (a gateway and one worker per kind, separate processes, on a
fresh SQLite), the in-process baseline, or a deployment already running at a URL; and the CPU and memory of each
of their processes, read from /proc with psutil."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from benchmarks.users import HANDBOOK
from kitrelay.services.devservers import LocalServer, ensure_nats, ensure_redis, free_port
from kitrelay.services.knowledge import KnowledgeService
from kitrelay.shared.store.engine import make_engine, make_sessionmaker, migrate
from tests.databases import postgres_database
from tests.infra import cleanup_nats_namespace, cleanup_redis_namespace
from tests.system import running_system, wait_healthy

DEV_TEAM = "local-team"


@dataclass
class Deployment:
    name: str
    base_url: str
    # Process name ("gateway", "worker-task", "baseline", "feeder") -> pid; empty for a deployment at --url.
    pids: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ProcessUsage:
    cpu_s: float
    peak_rss_mb: float
    start_rss_mb: float


class ProcessMonitor:
    """CPU seconds used and peak RSS of some processes between `start()` and `stop()`, sampled every 100 ms."""

    def __init__(self, pids: dict[str, int], interval_s: float = 0.1) -> None:
        self._procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._interval_s = interval_s
        self._cpu0: dict[str, float] = {}
        self._rss0: dict[str, int] = {}
        self._peak: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    @staticmethod
    def _cpu(proc: psutil.Process) -> float:
        times = proc.cpu_times()
        return float(times.user + times.system)

    def start(self) -> None:
        for name, proc in self._procs.items():
            self._cpu0[name] = self._cpu(proc)
            self._rss0[name] = self._peak[name] = proc.memory_info().rss
        self._task = asyncio.create_task(self._sample())

    async def _sample(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            for name, proc in self._procs.items():
                try:
                    self._peak[name] = max(self._peak[name], proc.memory_info().rss)
                except psutil.NoSuchProcess:
                    continue

    def peak_rss(self, name: str) -> int:
        return self._peak[name]

    async def stop(self) -> dict[str, ProcessUsage]:
        if self._task is not None:
            self._task.cancel()
        usage = {}
        for name, proc in self._procs.items():
            try:
                cpu = self._cpu(proc) - self._cpu0[name]
                self._peak[name] = max(self._peak[name], proc.memory_info().rss)
            except psutil.NoSuchProcess:
                cpu = float("nan")
            usage[name] = ProcessUsage(cpu, self._peak[name] / 2**20, self._rss0[name] / 2**20)
        return usage


@contextmanager
def fresh_database(path: Path, pg_server: str | None = None) -> Iterator[str]:
    """A new, migrated database with the benchmark's handbook in the dev team's knowledge base: a SQLite file at
    `path` (the embedded default), or a database of its own on the PostgreSQL server `pg_server`, dropped after."""
    if pg_server is None:
        yield _seeded(f"sqlite+aiosqlite:///{path}")
        return
    with postgres_database(pg_server) as url:
        yield _seeded(url)


def _seeded(url: str) -> str:
    migrate(url)

    async def seed() -> None:
        engine = make_engine(url)
        try:
            await KnowledgeService(make_sessionmaker(engine)).add_document(
                DEV_TEAM, title="Team handbook", text=HANDBOOK, source="admin", mime_type="text/markdown"
            )
        finally:
            await engine.dispose()

    asyncio.run(seed())
    return url


@contextmanager
def local_servers(nats_url: str, redis_url: str, data_dir: Path) -> Iterator[tuple[str, str]]:
    """NATS and Redis as `kitrelay up` finds them: the ones listening, else real ones started here."""
    servers: list[LocalServer] = []
    try:
        servers.append(ensure_nats(nats_url, data_dir=data_dir / "nats"))
        servers.append(ensure_redis(redis_url, data_dir=data_dir / "redis"))
        yield servers[0].url, servers[1].url
    finally:
        for server in reversed(servers):
            server.stop()


@contextmanager
def kitrelay_deployment(
    *,
    nats_url: str,
    redis_url: str,
    work_dir: Path,
    env: dict[str, str],
    workers: tuple[str, ...] = ("triage", "task", "research"),
    feeder_args: list[str] | None = None,
    pg_server: str | None = None,
    name: str = "kitrelay",
) -> Iterator[Deployment]:
    """The embedded default: one gateway and `workers` as separate processes (tests/system.py, as `kitrelay up`
    runs them) on a fresh SQLite and a namespace of their own, removed afterwards. With `feeder_args`, the stream
    feeder (benchmarks/feeder.py) takes the triage worker's place. `name` tells it from another kitrelay deployment
    of the same run (other settings)."""
    namespace = f"bench{secrets.token_hex(4)}"
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        with ExitStack() as stack:
            database_url = stack.enter_context(fresh_database(work_dir / "kitrelay.db", pg_server))
            system = stack.enter_context(
                running_system(
                    nats_url=nats_url,
                    redis_url=redis_url,
                    namespace=namespace,
                    log_dir=work_dir,
                    database_url=database_url,
                    workers=workers,
                    extra_env=env,
                )
            )
            if feeder_args is not None:
                feeder = subprocess.Popen(
                    [sys.executable, "-m", "benchmarks.feeder", *feeder_args],
                    env=system.env,
                    stdout=(work_dir / "feeder.log").open("ab"),
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                system.processes["feeder"] = feeder  # stopped with the rest
            yield Deployment(name, system.base_url, {process: p.pid for process, p in system.processes.items()})
    finally:
        cleanup_nats_namespace(nats_url, namespace)
        cleanup_redis_namespace(redis_url, namespace)


@contextmanager
def baseline_deployment(
    *, work_dir: Path, env: dict[str, str], pg_server: str | None = None, name: str = "baseline"
) -> Iterator[Deployment]:
    """benchmarks/baseline.py in its own process on its own fresh database."""
    work_dir.mkdir(parents=True, exist_ok=True)
    with fresh_database(work_dir / "baseline.db", pg_server) as database_url:
        yield from _baseline(work_dir, env, database_url, name)


def _baseline(work_dir: Path, env: dict[str, str], database_url: str, name: str) -> Iterator[Deployment]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.baseline", "--port", str(port)],
        env={**os.environ, **env, "DATABASE_URL": database_url},
        stdout=(work_dir / "baseline.log").open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, work_dir / "baseline.log", name="baseline")
        yield Deployment(name, url, {"baseline": proc.pid})
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
