"""The topology the chaos runner breaks: its own nats-server and redis-server on free loopback ports, a database of
its own, two gateways and two workers of each kind, every one a separate process started from local binaries.

The HA topologies (`ha`, `ha-cluster`) put the same services on clusters of their own instead (tests/clusters.py):
a 3-node NATS cluster with the turns stream at 3 replicas, Redis as a primary, a replica and three Sentinels (`ha`)
or as a Redis Cluster of three primaries with a replica each (`ha-cluster`), and a PostgreSQL instance of its own.

Everything it starts it stops, in a `finally`: the services with SIGTERM (then SIGKILL), the servers likewise. It
never touches the NATS, Redis or PostgreSQL other people use, beyond creating (and dropping) one database on a
PostgreSQL server when asked to with `--database-url`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import psutil
import pytest

from benchmarks.chaos.client import Gateways
from benchmarks.users import HANDBOOK
from kitrelay.gateway.tokens import mint_token
from kitrelay.services.devservers import LocalServer, free_port, start_nats, start_redis
from kitrelay.services.knowledge import KnowledgeService
from kitrelay.services.tasks import TaskRecord, TaskService
from kitrelay.shared.messages import Identity
from kitrelay.shared.store.engine import make_engine, make_sessionmaker, migrate
from tests.clusters import (
    NatsCluster,
    Node,
    Postgres,
    RedisCluster,
    RedisSentinels,
    start_nats_cluster,
    start_postgres,
    start_redis_cluster,
    start_redis_sentinels,
)
from tests.databases import postgres_database
from tests.system import RunningSystem, running_system

WORKER_KINDS = ("triage", "task", "research")
GATEWAYS = ("gateway", "gateway-2")
READY_TIMEOUT_S = 60.0
TopologyKind = Literal["embedded", "ha", "ha-cluster"]
TOPOLOGIES: tuple[TopologyKind, ...] = ("embedded", "ha", "ha-cluster")
SENTINEL_MASTER = "kitrelay"


@dataclass
class HaServers:
    """The clusters of an HA topology: every node can be lost (`kill`) and brought back (`restart`)."""

    nats: NatsCluster
    postgres: Postgres
    sentinels: RedisSentinels | None = None
    redis_cluster: RedisCluster | None = None

    def env(self) -> dict[str, str]:
        """The services' settings for these servers."""
        env = {"NATS_URL": self.nats.url, "TURNS_STREAM_REPLICAS": "3"}
        if self.sentinels is not None:
            env |= {
                # The database of the primary; its address comes from the Sentinels.
                "REDIS_URL": "redis://127.0.0.1:6379/0",
                "REDIS_SENTINELS": self.sentinels.sentinel_addresses,
                "REDIS_SENTINEL_MASTER": self.sentinels.master,
            }
        if self.redis_cluster is not None:
            env |= {"REDIS_URL": self.redis_cluster.url, "REDIS_CLUSTER": "true"}
        return env

    def dead(self) -> list[Node]:
        """Nodes a fault left down."""
        nodes = [*self.nats.nodes, self.postgres.node]
        if self.sentinels is not None:
            nodes += self.sentinels.data
        if self.redis_cluster is not None:
            nodes += self.redis_cluster.nodes()
        return [node for node in nodes if not node.running]

    async def restart(self, node: Node) -> None:
        if node in self.nats.nodes:
            await asyncio.to_thread(self.nats.restart, node)
        elif node is self.postgres.node:
            await asyncio.to_thread(self.postgres.restart)
        elif self.sentinels is not None and node in self.sentinels.data:
            await asyncio.to_thread(self.sentinels.restart, node)
        elif self.redis_cluster is not None:
            await asyncio.to_thread(self.redis_cluster.restart, node)

    def pids(self) -> list[int]:
        nodes = [*self.nats.nodes, self.postgres.node]
        if self.sentinels is not None:
            nodes += [*self.sentinels.data, *self.sentinels.sentinels]
        if self.redis_cluster is not None:
            nodes += self.redis_cluster.nodes()
        return [node.process.pid for node in nodes if node.process is not None]

    def stop(self) -> None:
        for group in (self.sentinels, self.redis_cluster, self.nats, self.postgres):
            if group is not None:
                with contextlib.suppress(Exception):
                    group.stop()


def service_env(token_delay_ms: float, drain_s: float, secret: str, extra: dict[str, str]) -> dict[str, str]:
    """The services' settings: JWT auth (each conversation is a team of its own, so its task list and knowledge
    base are its own), the offline model slowed to a real model's pace, and a drain deadline short enough for
    a reply to outlast it. Everything else is the product's default (TURN_ACK_WAIT_S included)."""
    return {
        "AUTH_MODE": "jwt",
        "JWT_SECRET": secret,
        "OFFLINE_TOKEN_DELAY_MS": f"{token_delay_ms:g}",
        # The faults strike the long add mid-text: its line is written by the model after the task tool (by default
        # the tool's own line, whole, ends the run at once: nothing to strike in the middle of).
        "WIDGET_TOOLS_ANSWER": "false",
        "WORKER_DRAIN_TIMEOUT_S": f"{drain_s:g}",
        "LOG_LEVEL": "INFO",
        **extra,
    }


@dataclass
class Topology:
    work: Path
    system: RunningSystem
    nats: LocalServer | None
    redis: LocalServer | None
    nats_port: int
    redis_port: int
    database_url: str
    secret: str
    kind: TopologyKind = "embedded"
    ha: HaServers | None = None
    gateways: Gateways = field(default_factory=Gateways)
    # Every process this run started (servers included), with its start time: only these may be killed at the end,
    # and only while the pid still names the same process.
    started: dict[int, float] = field(default_factory=dict)

    def track(self, *pids: int) -> None:
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                self.started[pid] = psutil.Process(pid).create_time()

    # --- who runs what ---------------------------------------------------------------------------------------

    def workers(self, kind: str) -> list[str]:
        return [n for n in self.system.processes if n == f"worker-{kind}" or n.startswith(f"worker-{kind}-")]

    def worker_running(self, turn_id: str, kind: str) -> str | None:
        """The live worker of `kind` whose log says it started the turn most recently (its highest attempt)."""
        pattern = re.compile(rf"turn {re.escape(turn_id)} \({kind}, \w+\) hop \d+ attempt (\d+) started")
        best: tuple[int, str] | None = None
        for name in self.workers(kind):
            attempts = [int(a) for a in pattern.findall(self.system.log(name))]
            if attempts and (best is None or max(attempts) > best[0]):
                best = (max(attempts), name)
        return best[1] if best else None

    def token(self, team: str) -> str:
        return mint_token(self.secret, f"user-{team}", team, ttl_s=6 * 3600)

    # --- processes -------------------------------------------------------------------------------------------

    def kill(self, name: str) -> float:
        """kill -9, and the moment it was surely dead (wall clock)."""
        proc = self.system.processes.pop(name)
        proc.kill()
        proc.wait()
        return time.time()

    async def terminate(self, name: str, timeout_s: float = 60.0) -> tuple[float, int | None]:
        """SIGTERM, then wait for the process to exit by itself: the moment it did, and its exit status."""
        proc = self.system.processes.pop(name)
        proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(proc.wait, timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return time.time(), None
        return time.time(), code

    async def start_worker(self, name: str) -> None:
        kind = name.removeprefix("worker-").split("-")[0]
        log_size = self._log_size(name)
        proc = self.system.start(name, "worker", "--agent", kind)
        self.track(proc.pid)
        await self._wait_log(name, log_size, f"worker {kind} pulling", proc)

    async def start_gateway(self, name: str) -> None:
        url = await asyncio.to_thread(self.system.start_gateway, name)
        self.track(self.system.processes[name].pid)
        self.gateways.set(name, url)

    def _log_size(self, name: str) -> int:
        path = self.system.log_dir / f"{name}.log"
        return path.stat().st_size if path.exists() else 0

    async def _wait_log(self, name: str, offset: int, needle: str, proc: subprocess.Popen[bytes]) -> None:
        path = self.system.log_dir / f"{name}.log"
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            with path.open("rb") as log:
                log.seek(offset)
                if needle.encode() in log.read():
                    return
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode} while starting")
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{name} did not say {needle!r} within {READY_TIMEOUT_S:g}s")

    # --- servers ---------------------------------------------------------------------------------------------

    def kill_server(self, which: str) -> float:
        server = self.nats if which == "nats" else self.redis
        assert server is not None and server.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()
        return time.time()

    async def restart_server(self, which: str) -> float:
        """The same port and, for NATS, the same JetStream store directory (Redis keeps nothing: no persistence)."""
        if which == "nats":
            self.nats = await asyncio.to_thread(
                start_nats, port=self.nats_port, data_dir=self.work / "nats", log_file=self.work / "nats-server.log"
            )
        else:
            self.redis = await asyncio.to_thread(
                start_redis, port=self.redis_port, data_dir=self.work / "redis", log_file=self.work / "redis-server.log"
            )
        for server in (self.nats, self.redis):
            if server is not None and server.process is not None:
                self.track(server.process.pid)
        return time.time()

    def kill_node(self, node: Node) -> float:
        """kill -9 one node of an HA topology's clusters (its process group), and the moment it was dead."""
        node.kill()
        return time.time()

    async def restart_node(self, node: Node) -> float:
        """The node back, on its port with its data (a lost Redis primary comes back as a replica)."""
        assert self.ha is not None
        await self.ha.restart(node)
        if node.process is not None:
            self.track(node.process.pid)
        return time.time()

    # --- the database, read and seeded directly --------------------------------------------------------------

    async def seed_team(self, team: str) -> None:
        """The team's knowledge base gets the handbook its research questions are answered from."""
        engine = make_engine(self.database_url)
        try:
            await KnowledgeService(make_sessionmaker(engine)).add_document(
                team, title="Team handbook", text=HANDBOOK, source="admin", mime_type="text/markdown"
            )
        finally:
            await engine.dispose()

    async def tasks(self, teams: list[str]) -> dict[str, list[TaskRecord]]:
        """Each team's task rows (the domain effect of the turns), in creation order."""
        engine = make_engine(self.database_url)
        try:
            service = TaskService(make_sessionmaker(engine))
            found: dict[str, list[TaskRecord]] = {}
            for team in teams:
                rows = await service.list(Identity(user_id=f"user-{team}", team_id=team), status="all")
                found[team] = sorted(rows, key=lambda t: t.number)
            return found
        finally:
            await engine.dispose()


@contextmanager
def _database(work: Path, database_url: str | None) -> Iterator[str]:
    if database_url is None:
        url = f"sqlite+aiosqlite:///{work / 'kitrelay.db'}"
        migrate(url)
        yield url
        return
    try:
        with postgres_database(database_url) as url:
            migrate(url)
            yield url
    except pytest.skip.Exception as exc:  # the tests' helper skips when the server is unusable: here, an error
        raise RuntimeError(f"--database-url: {exc.msg}") from None


@contextmanager
def topology(
    work: Path,
    *,
    token_delay_ms: float,
    drain_s: float,
    database_url: str | None = None,
    extra_env: dict[str, str] | None = None,
    kind: TopologyKind = "embedded",
) -> Iterator[Topology]:
    """Start it all; stop it all on the way out, however the run ends."""
    work.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(32)
    nats_port, redis_port = free_port(), free_port()
    servers: list[LocalServer] = []
    holder: list[Topology] = []
    ha: HaServers | None = None
    try:
        with ExitStack() as stack:
            nats: LocalServer | None = None
            redis: LocalServer | None = None
            if kind == "embedded":
                nats = start_nats(port=nats_port, data_dir=work / "nats", log_file=work / "nats-server.log")
                servers.append(nats)
                redis = start_redis(port=redis_port, data_dir=work / "redis", log_file=work / "redis-server.log")
                servers.append(redis)
                url = stack.enter_context(_database(work, database_url))
                server_env: dict[str, str] = {}
            else:
                ha = start_ha(work, kind)
                url = ha.postgres.url
                migrate(url)
                server_env = ha.env()
            system = stack.enter_context(
                running_system(
                    nats_url=server_env.get("NATS_URL") or (nats.url if nats else ""),
                    redis_url=server_env.get("REDIS_URL") or (redis.url if redis else ""),
                    namespace=f"chaos{secrets.token_hex(3)}",
                    log_dir=work,
                    database_url=url,
                    workers=tuple(kind_ for kind_ in WORKER_KINDS for _ in range(2)),
                    extra_env={**service_env(token_delay_ms, drain_s, secret, extra_env or {}), **server_env},
                )
            )
            topo = Topology(work, system, nats, redis, nats_port, redis_port, url, secret, kind, ha)
            holder.append(topo)
            topo.track(*(p.pid for p in system.processes.values()))
            topo.track(*(s.process.pid for s in servers if s.process is not None))
            if ha is not None:
                topo.track(*ha.pids())
            topo.gateways.set("gateway", system.base_url)
            topo.gateways.set("gateway-2", system.start_gateway("gateway-2"))
            topo.track(system.processes["gateway-2"].pid)
            _wait_workers_ready(topo)
            yield topo
    finally:
        # running_system has stopped the services (SIGTERM, then SIGKILL); the servers may have been restarted.
        for server in [*servers, *(t for topo in holder for t in (topo.nats, topo.redis) if t is not None)]:
            server.stop(timeout_s=5)
        if ha is not None:
            ha.stop()


def start_ha(work: Path, kind: TopologyKind) -> HaServers:
    """The clusters of an HA topology, started from local binaries (what started is stopped if another fails)."""
    started: list[NatsCluster | Postgres | RedisSentinels | RedisCluster] = []
    try:
        nats = start_nats_cluster(work / "nats")
        started.append(nats)
        postgres = start_postgres(work / "postgres")
        started.append(postgres)
        ha = HaServers(nats=nats, postgres=postgres)
        if kind == "ha":
            ha.sentinels = start_redis_sentinels(work / "redis", master=SENTINEL_MASTER)
        else:
            ha.redis_cluster = start_redis_cluster(work / "redis")
    except BaseException:
        for group in started:
            with contextlib.suppress(Exception):
                group.stop()
        raise
    return ha


def _wait_workers_ready(topo: Topology) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    for name in [n for n in topo.system.processes if n.startswith("worker")]:
        kind = name.removeprefix("worker-").split("-")[0]
        while f"worker {kind} pulling" not in topo.system.log(name):
            proc = topo.system.processes[name]
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{topo.system.log(name)[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready after {READY_TIMEOUT_S:g}s:\n{topo.system.log(name)[-3000:]}")
            time.sleep(0.1)
