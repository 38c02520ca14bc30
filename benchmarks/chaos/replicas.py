"""What three copies of the turns stream cost a turn: time to first event with the stream at R3 (the HA topology's
own services) and at R1 (a gateway and a triage worker of another namespace on the same NATS cluster, Redis and
database), measured side by side in one run, turns alternating between the two so that both see the same machine.

A greeting is answered by triage itself (no handoff), so a turn's first event is one hop: the gateway's publish to
JetStream (acknowledged by a quorum of the stream's replicas at R3, by one server at R1), the worker's pull, its
first write to Redis, the gateway's read."""

from __future__ import annotations

import asyncio
import secrets
import statistics
import time
from dataclasses import dataclass

import httpx

from benchmarks.chaos.topology import Topology, service_env
from kitrelay.gateway.client import ChatKitClient
from tests.system import running_system


@dataclass(frozen=True)
class ReplicasCost:
    turns: int
    r3_p50_ms: float
    r1_p50_ms: float

    @property
    def cost_ms(self) -> float:
        return self.r3_p50_ms - self.r1_p50_ms

    def line(self) -> str:
        return (
            f"time to first event p50 over {self.turns} greetings each: R3 {self.r3_p50_ms:.1f} ms, "
            f"R1 {self.r1_p50_ms:.1f} ms: R3 costs {self.cost_ms:+.1f} ms (aim ≤ 2 ms)"
        )


async def _first_event_ms(client: ChatKitClient) -> float:
    started = time.perf_counter()
    first: float | None = None
    async for event in client.create_thread("hello"):
        # The first event the worker wrote (relayed frames carry their Redis entry id).
        if first is None and event.id is not None:
            first = time.perf_counter()
    assert first is not None, "the greeting's turn relayed no event"
    return (first - started) * 1000


async def _alternate(r3: ChatKitClient, r1: ChatKitClient, turns: int) -> tuple[list[float], list[float]]:
    r3_ms: list[float] = []
    r1_ms: list[float] = []
    for n in range(turns + 2):
        pair = [(r3, r3_ms), (r1, r1_ms)]
        for client, into in pair if n % 2 == 0 else reversed(pair):
            ms = await _first_event_ms(client)
            if n >= 2:  # the first two of each warm the processes up
                into.append(ms)
    return r3_ms, r1_ms


def measure(topo: Topology, *, turns: int, token_delay_ms: float, drain_s: float) -> ReplicasCost:
    """Start the R1 services beside the topology's R3 ones, alternate greetings between them, stop them again."""
    assert topo.ha is not None, "an HA topology's NATS cluster"
    env = {**service_env(token_delay_ms, drain_s, topo.secret, {}), **topo.ha.env(), "TURNS_STREAM_REPLICAS": "1"}
    (topo.work / "r1").mkdir(parents=True, exist_ok=True)
    with running_system(
        nats_url=env["NATS_URL"],
        redis_url=env["REDIS_URL"],
        namespace=f"replicas{secrets.token_hex(3)}",
        log_dir=topo.work / "r1",
        database_url=topo.database_url,
        workers=("triage",),
        extra_env=env,
    ) as r1_system:
        for proc in r1_system.processes.values():
            topo.track(proc.pid)

        async def run() -> tuple[list[float], list[float]]:
            token = topo.token(f"replicas-{secrets.token_hex(3)}")
            headers = {"Authorization": f"Bearer {token}"}
            async with (
                httpx.AsyncClient(base_url=topo.system.base_url, timeout=60, headers=headers) as r3,
                httpx.AsyncClient(base_url=r1_system.base_url, timeout=60, headers=headers) as r1,
            ):
                return await _alternate(ChatKitClient(r3), ChatKitClient(r1), turns)

        r3_ms, r1_ms = asyncio.run(run())
    return ReplicasCost(turns, statistics.median(r3_ms), statistics.median(r1_ms))
