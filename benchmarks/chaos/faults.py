"""The faults, each injected into a turn of a conversation started for it (the victim) while the steady load runs
on, at a chosen moment of that turn: its first widget shown ("mid-tool-output") or its n-th text delta
("mid-text"). Each records when the fault struck, what the victim saw next, and how long recovery took:

* a worker killed or stopped: from the moment it was dead to the first event the turn's next attempt wrote (a Redis
  entry id later than that moment; progress lines do not count);
* a gateway killed or stopped, a client that dropped: from the break to the first event of the re-attached stream;
* Redis or NATS killed and restarted: from the kill to the first turn sent after it that ends with its reply, and,
  for the turn sent during the outage, from its first sending to its reply.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from benchmarks.chaos.client import Conversation, Gateways, Trigger, TurnRecord
from benchmarks.chaos.script import VARIANTS
from benchmarks.chaos.topology import GATEWAYS, WORKER_KINDS, Topology
from kitrelay.shared.names import turn_stream_key
from tests.clusters import Node, turns_stream_leader

FaultKind = Literal["worker", "gateway", "server"]


@dataclass(frozen=True)
class Fault:
    key: str
    label: str
    kind: FaultKind
    recovery_target_s: float
    outage_label: str | None = None  # servers: the row of the turn sent during the outage


FAULTS: tuple[Fault, ...] = (
    Fault("client-drop", "client drops mid-text, re-attaches", "gateway", 5.0),
    Fault("worker-kill-tool", "kill -9 worker mid-tool-output", "worker", 10.0),
    Fault("worker-kill-text", "kill -9 worker mid-text", "worker", 10.0),
    Fault("nats-restart", "nats-server kill -9 + restart", "server", 15.0, "turn sent during the NATS outage"),
    Fault("redis-restart", "redis-server kill -9 + restart", "server", 15.0, "turn sent during the Redis outage"),
    Fault("worker-sigterm", "SIGTERM worker past the drain deadline", "worker", 10.0),
    Fault("gateway-kill", "kill -9 gateway mid-stream", "gateway", 5.0),
    Fault("gateway-sigterm", "SIGTERM gateway past the drain deadline", "gateway", 5.0),
    # The HA topologies' node losses (a node comes back after the outage, as a follower or a replica).
    Fault(
        "nats-leader-kill", "kill -9 the NATS stream leader", "server", 15.0, "turn sent while the NATS leader is down"
    ),
    Fault("nats-follower-kill", "kill -9 a NATS follower", "server", 15.0),
    Fault(
        "redis-primary-kill",
        "kill -9 the Redis primary (Sentinel fails over)",
        "server",
        15.0,
        "turn sent during the Redis failover",
    ),
    Fault(
        "redis-cluster-primary-kill",
        "kill -9 a Redis Cluster primary",
        "server",
        15.0,
        "turn sent during the Cluster failover",
    ),
    Fault("postgres-restart", "PostgreSQL kill -9 + restart", "server", 15.0, "turn sent while PostgreSQL is down"),
)
FAULT_KEYS = tuple(f.key for f in FAULTS)
# What each topology can lose.
EMBEDDED_FAULTS = FAULT_KEYS[:8]
TOPOLOGY_FAULTS: dict[str, tuple[str, ...]] = {
    "embedded": EMBEDDED_FAULTS,
    "ha": ("nats-leader-kill", "nats-follower-kill", "redis-primary-kill", "postgres-restart"),
    "ha-cluster": ("nats-leader-kill", "redis-cluster-primary-kill", "postgres-restart"),
}


class NotInjected(Exception):
    """The fault could not be injected as intended (the victim's turn ended first, say): the row says so."""


@dataclass
class Injection:
    fault: Fault
    round: int
    started: float = 0.0  # wall clock: when the victim was started
    fault_at: float | None = None  # when the fault struck
    restart_at: float | None = None  # servers: when the server answered again
    ended: float = 0.0  # when everything was back
    recovery_s: float | None = None
    victim: Conversation | None = None
    victim_step: int = 0
    outage: Conversation | None = None
    exercised: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def victim_turn(self) -> TurnRecord | None:
        if self.victim is None or len(self.victim.records) <= self.victim_step:
            return None
        return self.victim.records[self.victim_step]

    @property
    def window(self) -> tuple[float, float]:
        return (self.fault_at or self.started, self.ended or time.time())


class Chaos:
    """What the faults act on: the topology, and the conversations of the run (each a team of its own)."""

    def __init__(self, topo: Topology, *, turn_timeout_s: float, outage_s: float, drain_s: float) -> None:
        self.topo = topo
        self.drain_s = drain_s
        self.turn_timeout_s = turn_timeout_s
        self.outage_s = outage_s
        self.conversations: list[Conversation] = []
        self.tasks: list[asyncio.Task[None]] = []
        self._count = 0

    @property
    def gateways(self) -> Gateways:
        return self.topo.gateways

    async def conversation(
        self, label: str, *, variant: int | None = None, prefer: str | None = None, trigger: Trigger | None = None
    ) -> Conversation:
        self._count += 1
        team = f"{label}-{self._count}"
        await self.topo.seed_team(team)
        conversation = Conversation(
            team,
            variant=self._count % len(VARIANTS) if variant is None else variant,
            team=team,
            token=self.topo.token(team),
            gateways=self.gateways,
            prefer=prefer if prefer is not None else GATEWAYS[self._count % len(GATEWAYS)],
            turn_timeout_s=self.turn_timeout_s,
            trigger=trigger,
        )
        self.conversations.append(conversation)
        return conversation

    def spawn(self, conversation: Conversation) -> asyncio.Task[None]:
        task = asyncio.create_task(conversation.run())
        self.tasks.append(task)
        return task

    async def repair(self) -> list[str]:
        """Whatever a fault left down comes back before the next one: the servers, two gateways, two workers
        of each kind."""
        repaired: list[str] = []
        for which, server in (("nats", self.topo.nats), ("redis", self.topo.redis)):
            if server is not None and server.process is not None and server.process.poll() is not None:
                await self.topo.restart_server(which)
                repaired.append(f"{which}-server")
        if self.topo.ha is not None:
            for node in self.topo.ha.dead():
                await self.topo.restart_node(node)
                repaired.append(node.name)
        for name in GATEWAYS:
            if name not in self.topo.system.processes:
                await self.topo.start_gateway(name)
                repaired.append(name)
        for kind in WORKER_KINDS:
            for name in (f"worker-{kind}", f"worker-{kind}-2"):
                if name not in self.topo.system.processes:
                    await self.topo.start_worker(name)
                    repaired.append(name)
        return repaired


def _entry_ms(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])


def written_after(record: TurnRecord, moment: float) -> float | None:
    """Seconds from `moment` to the first event the client received that was written after it (by the turn's next
    attempt): a Redis entry id later than the moment, progress lines left out."""
    for received in record.events:
        event = received.event
        if event.id and event.type != "progress_update" and _entry_ms(event.id) > moment * 1000:
            return received.at - moment
    return None


def progress_note(record: TurnRecord, moment: float, recovery_s: float | None) -> str | None:
    """Whether the client was told anything while the turn waited for its next attempt (worth knowing when the
    wait is long), as a note."""
    if recovery_s is None or recovery_s < 2:
        return None
    shown = [
        r.event.data.get("text")
        for r in record.events
        if r.event.type == "progress_update" and moment <= r.at <= moment + recovery_s
    ]
    return f"during the {recovery_s:.1f}s wait the client saw " + (
        f"the progress line {shown[0]!r}" if shown else "no progress line"
    )


def resumed_after(record: TurnRecord, moment: float) -> float | None:
    """Seconds from `moment` to the first event (or the end) of the stream re-attached after a break at or after
    it."""
    for br in record.breaks:
        if br.at >= moment - 0.5 and br.resumed_at is not None:
            return br.resumed_at - moment
    return None


async def _arm(chaos: Chaos, injection: Injection, trigger: Trigger, prefer: str | None = None) -> TurnRecord:
    """Start the victim and wait until its turn reaches the trigger's moment."""
    victim = await chaos.conversation(injection.fault.key, prefer=prefer, trigger=trigger)
    victim.tags.add("victim")
    injection.victim, injection.victim_step = victim, trigger.step
    injection.started = time.time()
    chaos.spawn(victim)
    ended = asyncio.ensure_future(victim.turn_ended[trigger.step].wait())
    waiting: set[asyncio.Future[Any]] = {trigger.fired, ended}
    try:
        await asyncio.wait(
            waiting,
            timeout=chaos.turn_timeout_s * (trigger.step + 1),
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        ended.cancel()
    if not trigger.fired.done():
        raise NotInjected(f"the victim's turn {trigger.step + 1} ended before its {trigger.phase} arrived")
    return trigger.fired.result()


async def _turn_end(injection: Injection) -> None:
    assert injection.victim is not None
    await injection.victim.turn_ended[injection.victim_step].wait()


def _name_worker(chaos: Chaos, record: TurnRecord) -> str:
    assert record.turn_id is not None
    name = chaos.topo.worker_running(record.turn_id, record.step.worker)
    if name is None:
        raise NotInjected(f"no {record.step.worker} worker's log names turn {record.turn_id}")
    return name


# --- the faults ---------------------------------------------------------------------------------------------------


async def worker_kill(chaos: Chaos, injection: Injection, *, phase: Literal["widget", "text"]) -> None:
    # Rounds take turns over the steps that show a widget and stream text: the long add, research, the list.
    steps = (0, 4, 2) if phase == "widget" else (0, 4)
    trigger = Trigger(steps[injection.round % len(steps)], phase, count=5)
    record = await _arm(chaos, injection, trigger)
    name = _name_worker(chaos, record)
    injection.fault_at = chaos.topo.kill(name)
    injection.notes.append(f"killed {name} running {record.turn_id} ({record.step.label}, {phase})")
    await _turn_end(injection)
    injection.recovery_s = written_after(record, injection.fault_at)
    if note := progress_note(record, injection.fault_at, injection.recovery_s):
        injection.notes.append(note)
    await chaos.topo.start_worker(name)


async def worker_sigterm(chaos: Chaos, injection: Injection) -> None:
    record = await _arm(chaos, injection, Trigger(0, "text", count=1))
    name = _name_worker(chaos, record)
    # The fault is the drain deadline passing: the worker then gives the turn back, and another one redoes it.
    injection.fault_at = time.time() + chaos.drain_s
    exited_at, code = await chaos.topo.terminate(name)
    injection.notes.append(
        f"SIGTERM to {name} running {record.turn_id}: exit status {code} "
        f"{exited_at - injection.fault_at + chaos.drain_s:.1f}s later"
    )
    await _turn_end(injection)
    if record.ended <= injection.fault_at:
        injection.exercised = False
        injection.notes.append("the turn finished within the drain time: not past the deadline")
    injection.recovery_s = written_after(record, injection.fault_at)
    await chaos.topo.start_worker(name)


async def gateway_kill(chaos: Chaos, injection: Injection) -> None:
    name = GATEWAYS[(injection.round + 1) % len(GATEWAYS)]
    record = await _arm(chaos, injection, Trigger(0, "text", count=3), prefer=name)
    chaos.gateways.remove(name)  # the load balancer notices at once
    injection.fault_at = chaos.topo.kill(name)
    injection.notes.append(f"killed {name} streaming {record.turn_id}")
    await _turn_end(injection)
    injection.recovery_s = resumed_after(record, injection.fault_at)
    await chaos.topo.start_gateway(name)


async def gateway_sigterm(chaos: Chaos, injection: Injection) -> None:
    name = GATEWAYS[injection.round % len(GATEWAYS)]
    record = await _arm(chaos, injection, Trigger(0, "text", count=1), prefer=name)
    chaos.gateways.remove(name)  # a draining gateway takes no new requests
    stopping = asyncio.create_task(chaos.topo.terminate(name))
    await _turn_end(injection)
    exited_at, code = await stopping
    injection.notes.append(f"SIGTERM to {name} streaming {record.turn_id}: exit status {code}")
    broken = [b for b in record.breaks if b.how == "broken"]
    if not broken:
        injection.exercised = False
        injection.notes.append("the turn finished within the drain time: not past the deadline")
        injection.fault_at = exited_at
    else:
        injection.fault_at = broken[0].at
        injection.recovery_s = resumed_after(record, broken[0].at)
    await chaos.topo.start_gateway(name)


async def client_drop(chaos: Chaos, injection: Injection) -> None:
    record = await _arm(chaos, injection, Trigger(0, "text", count=3, drop=True))
    await _turn_end(injection)
    dropped = [b for b in record.breaks if b.how == "dropped"]
    if not dropped:
        raise NotInjected("the client never dropped its stream")
    injection.fault_at = dropped[0].at
    injection.recovery_s = resumed_after(record, dropped[0].at)
    injection.notes.append(f"dropped {record.turn_id}, re-attached on {dropped[0].resumed_on or '?'}")


async def server_restart(chaos: Chaos, injection: Injection, *, which: Literal["nats", "redis"]) -> None:
    record = await _arm(chaos, injection, Trigger(0, "text", count=3))
    injection.fault_at = chaos.topo.kill_server(which)
    injection.notes.append(f"killed {which}-server while {record.turn_id} streamed; down for {chaos.outage_s:g}s")
    # A new conversation whose first turn goes out while the server is down.
    outage = await chaos.conversation(f"{injection.fault.key}-outage")
    outage.tags.add("outage")
    injection.outage = outage
    chaos.spawn(outage)
    await asyncio.sleep(chaos.outage_s)
    injection.restart_at = await chaos.topo.restart_server(which)
    await _turn_end(injection)
    await outage.turn_ended[0].wait()


async def node_loss(
    chaos: Chaos, injection: Injection, *, pick: Callable[[Chaos, TurnRecord], Awaitable[Node]]
) -> None:
    """An HA topology loses a node while the victim streams; a new conversation starts while it is down; the node
    comes back after the outage (a lost Redis primary only once its replica has taken over, as a replica)."""
    record = await _arm(chaos, injection, Trigger(0, "text", count=3))
    node = await pick(chaos, record)
    # Made (its team seeded in the database) before the node goes: the node may be the database.
    outage = await chaos.conversation(f"{injection.fault.key}-outage") if injection.fault.outage_label else None
    injection.fault_at = chaos.topo.kill_node(node)
    injection.notes.append(f"killed {node.name} while {record.turn_id} streamed; back after {chaos.outage_s:g}s")
    if outage is not None:
        outage.tags.add("outage")
        injection.outage = outage
        chaos.spawn(outage)
    await asyncio.sleep(chaos.outage_s)
    injection.restart_at = await chaos.topo.restart_node(node)
    await _turn_end(injection)
    if injection.outage is not None:
        await injection.outage.turn_ended[0].wait()


async def _nats_leader(chaos: Chaos, _: TurnRecord) -> Node:
    ha = chaos.topo.ha
    assert ha is not None
    name = await turns_stream_leader(ha.nats, chaos.topo.system.env["NAMESPACE"])
    return ha.nats.node(name)


async def _nats_follower(chaos: Chaos, record: TurnRecord) -> Node:
    ha = chaos.topo.ha
    assert ha is not None
    leader = await _nats_leader(chaos, record)
    return next(node for node in ha.nats.nodes if node is not leader and node.running)


async def _redis_primary(chaos: Chaos, _: TurnRecord) -> Node:
    assert chaos.topo.ha is not None and chaos.topo.ha.sentinels is not None
    return await asyncio.to_thread(chaos.topo.ha.sentinels.primary)


async def _cluster_primary(chaos: Chaos, record: TurnRecord) -> Node:
    """The primary that holds the victim turn's stream: its gateway hub must follow it to the replica."""
    assert chaos.topo.ha is not None and chaos.topo.ha.redis_cluster is not None and record.turn_id is not None
    key = turn_stream_key(chaos.topo.system.env["NAMESPACE"], record.turn_id)
    return await asyncio.to_thread(chaos.topo.ha.redis_cluster.primary_of, key)


async def _postgres(chaos: Chaos, _: TurnRecord) -> Node:
    assert chaos.topo.ha is not None
    return chaos.topo.ha.postgres.node


INJECTORS: dict[str, Callable[[Chaos, Injection], Awaitable[None]]] = {
    "nats-leader-kill": lambda c, i: node_loss(c, i, pick=_nats_leader),
    "nats-follower-kill": lambda c, i: node_loss(c, i, pick=_nats_follower),
    "redis-primary-kill": lambda c, i: node_loss(c, i, pick=_redis_primary),
    "redis-cluster-primary-kill": lambda c, i: node_loss(c, i, pick=_cluster_primary),
    "postgres-restart": lambda c, i: node_loss(c, i, pick=_postgres),
    "client-drop": client_drop,
    "worker-kill-tool": lambda c, i: worker_kill(c, i, phase="widget"),
    "worker-kill-text": lambda c, i: worker_kill(c, i, phase="text"),
    "nats-restart": lambda c, i: server_restart(c, i, which="nats"),
    "redis-restart": lambda c, i: server_restart(c, i, which="redis"),
    "worker-sigterm": worker_sigterm,
    "gateway-kill": gateway_kill,
    "gateway-sigterm": gateway_sigterm,
}
