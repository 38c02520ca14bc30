"""Scale-out on one machine: several gateways and workers as separate processes on one NATS, Redis and PostgreSQL,
driven by many concurrent conversations. Used by tests/deploy/test_scaleout.py and benchmarks/scaleout.py.

Each conversation creates a thread with "add task ..." (triage hands it to a task worker) and may send follow-ups
("list my tasks"); conversations are dealt round-robin over the gateways, so both relay turns that workers they
do not know ran.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from kitrelay.gateway.client import ChatKitClient, ChatKitError, StreamEvent
from tests.system import RunningSystem, running_system

WORKERS = ("triage", "task", "task", "research")
# The log line a worker writes when it starts a turn (services/worker.py).
STARTED = re.compile(r"turn (turn_\w+) \((\w+), \w+\) hop \d+ attempt \d+ started")
WORKER_READY_TIMEOUT_S = 60.0
# Hundreds of conversations at once on one 2-core machine queue for longer than the 15 s a handoff (or a new turn)
# may wait by default, and would end in "no worker picked it up" errors: that is backpressure working, not what
# this run measures. In a cluster KEDA adds workers when the queue grows (k8s/base/workers.yaml).
# All the simulated users connect from 127.0.0.1, so the cap on connections per client address is off.
QUEUE_PATIENCE_ENV = {"HANDOFF_TIMEOUT_S": "90", "TURN_START_TIMEOUT_S": "90", "MAX_CONNECTIONS_PER_CLIENT": "0"}


@dataclass(frozen=True)
class TurnResult:
    gateway: int
    duration_s: float
    error: str | None


@dataclass
class ScaleoutReport:
    conversations: int
    wall_s: float
    turns: list[TurnResult]
    # Turns each worker process started, by process name (e.g. "worker-task-2") and agent kind.
    started: dict[str, Counter[str]] = field(default_factory=dict)

    @property
    def failures(self) -> list[str]:
        return [turn.error for turn in self.turns if turn.error is not None]

    def percentile(self, q: float) -> float:
        durations = sorted(turn.duration_s for turn in self.turns)
        if len(durations) == 1:
            return durations[0]
        return statistics.quantiles(durations, n=100, method="inclusive")[round(q * 100) - 1]

    def per_gateway(self) -> Counter[int]:
        return Counter(turn.gateway for turn in self.turns)

    def lines(self) -> list[str]:
        ok = len(self.turns) - len(self.failures)
        lines = [
            f"conversations {self.conversations}, turns {len(self.turns)} ({ok} ok, {len(self.failures)} failed) "
            f"in {self.wall_s:.1f}s: {len(self.turns) / self.wall_s:.1f} turns/s",
            f"turn duration p50 {self.percentile(0.5) * 1000:.0f} ms, p99 {self.percentile(0.99) * 1000:.0f} ms, "
            f"max {max(t.duration_s for t in self.turns) * 1000:.0f} ms",
            "turns per gateway: " + ", ".join(f"gateway {g}: {n}" for g, n in sorted(self.per_gateway().items())),
        ]
        for process, kinds in sorted(self.started.items()):
            lines.append(f"{process}: " + ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())))
        return lines


def started_turns(system: RunningSystem, process: str) -> Counter[str]:
    """How many turns of each agent kind a worker process started, from its log."""
    return Counter(kind for _, kind in STARTED.findall(system.log(process)))


def wait_for_workers(system: RunningSystem, timeout_s: float = WORKER_READY_TIMEOUT_S) -> None:
    """Until every worker process logged that it pulls: a turn sent before would all go to the first one up."""
    deadline = time.monotonic() + timeout_s
    workers = [name for name in system.processes if name.startswith("worker-")]
    while True:
        waiting = [name for name in workers if " pulling " not in system.log(name)]
        if not waiting:
            return
        for name in waiting:
            if system.processes[name].poll() is not None:
                raise RuntimeError(f"{name} exited:\n{system.log(name)[-3000:]}")
        if time.monotonic() >= deadline:
            raise RuntimeError(f"{waiting} not pulling after {timeout_s:.0f}s")
        time.sleep(0.2)


@contextmanager
def scaleout_system(
    *,
    nats_url: str,
    redis_url: str,
    database_url: str,
    namespace: str,
    log_dir: Path,
    gateways: int = 2,
    workers: tuple[str, ...] = WORKERS,
    extra_env: dict[str, str] | None = None,
) -> Iterator[tuple[RunningSystem, list[str]]]:
    """`gateways` gateway processes and the worker processes; yields the system and the gateways' base URLs."""
    with running_system(
        nats_url=nats_url,
        redis_url=redis_url,
        database_url=database_url,
        namespace=namespace,
        log_dir=log_dir,
        workers=workers,
        extra_env={**QUEUE_PATIENCE_ENV, **(extra_env or {})},
    ) as system:
        urls = [system.base_url] + [system.start_gateway(f"gateway-{n}") for n in range(2, gateways + 1)]
        wait_for_workers(system)
        yield system, urls


def _problem(events: list[StreamEvent], expect: str | None) -> str | None:
    """Why a turn's events are not a complete, successful reply (None when they are)."""
    errors = [e.data for e in events if e.type == "error"]
    if errors:
        return f"error event {errors[0]}"
    replies = [
        e.data["item"]
        for e in events
        if e.type == "thread.item.done" and e.data["item"]["type"] in ("assistant_message", "widget")
    ]
    if not replies:
        return f"no reply among {[e.type for e in events]}"
    if expect is not None and expect not in str(replies):
        return f"reply does not mention {expect!r}"
    return None


async def _turn(
    client: ChatKitClient, gateway: int, thread_id: str | None, text: str, expect: str | None, timeout_s: float
) -> tuple[TurnResult, str | None]:
    started = time.monotonic()
    events: list[StreamEvent] = []
    error: str | None
    try:
        async with asyncio.timeout(timeout_s):
            stream = client.send(thread_id, text) if thread_id else client.create_thread(text)
            events = [event async for event in stream]
        error = _problem(events, expect)
    except (TimeoutError, ChatKitError, httpx.HTTPError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    if thread_id is None and events and events[0].type == "thread.created":
        thread_id = events[0].data["thread"]["id"]
    result = TurnResult(gateway, time.monotonic() - started, None if error is None else f"{text!r}: {error}")
    return result, thread_id


async def _conversation(
    index: int, clients: Sequence[ChatKitClient], follow_ups: int, limit: asyncio.Semaphore, timeout_s: float
) -> list[TurnResult]:
    gateway = index % len(clients)
    client = clients[gateway]
    title = f"scaleout task {index}"
    results = []
    async with limit:
        result, thread_id = await _turn(client, gateway, None, f"add task {title}", title, timeout_s)
        results.append(result)
        for _ in range(follow_ups):
            if result.error is not None or thread_id is None:
                break
            result, _ = await _turn(client, gateway, thread_id, "list my tasks", None, timeout_s)
            results.append(result)
    return results


async def drive(
    urls: Sequence[str],
    *,
    conversations: int,
    follow_ups: int = 1,
    concurrency: int | None = None,
    turn_timeout_s: float = 120.0,
) -> ScaleoutReport:
    """Run `conversations` conversations at once (at most `concurrency`), dealt round-robin over the gateways."""
    limit = asyncio.Semaphore(concurrency or conversations)
    per_gateway = -(-conversations // len(urls))
    pools = httpx.Limits(max_connections=per_gateway + 10, max_keepalive_connections=per_gateway + 10)
    https = [httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(30, read=None), limits=pools) for url in urls]
    try:
        clients = [ChatKitClient(http) for http in https]
        started = time.monotonic()
        results = await asyncio.gather(
            *(_conversation(i, clients, follow_ups, limit, turn_timeout_s) for i in range(conversations))
        )
        wall_s = time.monotonic() - started
    finally:
        await asyncio.gather(*(http.aclose() for http in https))
    return ScaleoutReport(conversations, wall_s, [turn for turns in results for turn in turns])


def collect_started(report: ScaleoutReport, system: RunningSystem) -> ScaleoutReport:
    report.started = {name: started_turns(system, name) for name in system.processes if name.startswith("worker-")}
    return report
