"""`python -m benchmarks.chaos`: run the chaos runner, print its table, exit non-zero on any FAIL.

.venv/bin/python -m benchmarks.chaos                         # 3 rounds of every fault
.venv/bin/python -m benchmarks.chaos --quick                 # 1 round, 2 load users: what CI runs
.venv/bin/python -m benchmarks.chaos --fault worker-kill-text --fault gateway-kill --rounds 2
.venv/bin/python -m benchmarks.chaos --json chaos.json --keep-logs /tmp/chaos-logs
.venv/bin/python -m benchmarks.chaos --database-url postgresql+asyncpg://postgres@127.0.0.1:5432/test
.venv/bin/python -m benchmarks.chaos --topology ha --quick    # a NATS cluster, Redis with Sentinels, PostgreSQL
.venv/bin/python -m benchmarks.chaos --topology ha-cluster     # the same with a Redis Cluster
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console

from benchmarks.chaos.client import Conversation, TurnRecord
from benchmarks.chaos.compare import Reference, TurnJudgement, judge, reference_of
from benchmarks.chaos.faults import FAULT_KEYS, FAULTS, INJECTORS, TOPOLOGY_FAULTS, Chaos, Injection, NotInjected
from benchmarks.chaos.replicas import measure as measure_replicas_cost
from benchmarks.chaos.report import Row, build_rows, print_table, server_recovery
from benchmarks.chaos.script import VARIANTS
from benchmarks.chaos.topology import TOPOLOGIES, Topology, topology
from benchmarks.stats import machine
from kitrelay.services.devservers import DevServerError

console = Console(width=None if sys.stdout.isatty() else 140)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every fault (default 3)")
    parser.add_argument("--quick", action="store_true", help="CI mode: one round of each fault, 2 load users")
    parser.add_argument(
        "--topology",
        choices=TOPOLOGIES,
        default="embedded",
        help="embedded (default): one NATS, one Redis; ha: a 3-node NATS cluster (R3), Redis with a replica and "
        "Sentinels, PostgreSQL of its own; ha-cluster: the same with a Redis Cluster",
    )
    parser.add_argument("--fault", action="append", choices=FAULT_KEYS, help="repeatable; default: the topology's")
    parser.add_argument(
        "--replicas-turns",
        type=int,
        help="HA topologies: greetings each at R3 and R1 for the cost of three stream replicas (default 30; 0: none)",
    )
    parser.add_argument("--users", type=int, help="users holding conversations the whole time (default 3; quick 2)")
    parser.add_argument("--token-delay-ms", type=float, default=40.0, help="the offline model's delay per token")
    parser.add_argument("--drain-s", type=float, default=0.5, help="WORKER_DRAIN_TIMEOUT_S of the services")
    parser.add_argument("--outage-s", type=float, default=5.0, help="how long Redis and NATS stay down")
    parser.add_argument("--turn-timeout-s", type=float, default=90.0, help="a turn with no end by then is lost")
    parser.add_argument("--settle-s", type=float, default=1.0, help="steady load between two faults")
    parser.add_argument("--tail-s", type=float, help="wait before reading back, for late effects (default 3; 8)")
    parser.add_argument("--database-url", help="a PostgreSQL server: a fresh database on it instead of SQLite")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="a setting for the services")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--keep-logs", type=Path, help="keep every process's log and the database here")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = 1
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    args.users = args.users if args.users is not None else (2 if args.quick else 3)
    if args.replicas_turns is None:
        args.replicas_turns = 0 if args.topology == "embedded" or args.quick else 30
    args.tail_s = args.tail_s if args.tail_s is not None else (3.0 if args.quick else 8.0)
    try:
        args.extra_env = dict(item.split("=", 1) for item in args.env)
    except ValueError:
        parser.error("--env takes KEY=VALUE")
    return args


def _stop_on_sigterm(signum: int, _frame: object) -> None:
    # As Ctrl-C does: the topology's finally then stops everything it started.
    raise KeyboardInterrupt


async def _user(chaos: Chaos, index: int, stop: asyncio.Event) -> None:
    """One user of the steady load: conversations one after another until the run ends."""
    while not stop.is_set():
        conversation = await chaos.conversation(f"load{index}")
        await conversation.run()


async def _reference(chaos: Chaos) -> list[Conversation]:
    """Each script once, with no fault anywhere: what every other run of it must show and keep."""
    references = [await chaos.conversation("reference", variant=v) for v in range(len(VARIANTS))]
    for conversation in references:
        conversation.tags.add("reference")
    await asyncio.gather(*(c.run() for c in references))
    records = [r for c in references for r in c.records]
    failed = [f"{r.conversation} turn {r.index + 1}: {r.outcome} {r.errors}" for r in records if r.outcome != "ok"]
    if failed or any(len(c.records) != len(c.steps) for c in references):
        raise RuntimeError("the fault-free reference run failed: " + "; ".join(failed))
    return references


async def _inject(chaos: Chaos, injection: Injection, timeout_s: float) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            await INJECTORS[injection.fault.key](chaos, injection)
    except NotInjected as exc:
        injection.exercised = False
        injection.notes.append(f"not injected: {exc}")
    except TimeoutError:
        injection.exercised = False
        injection.notes.append(f"gave up after {timeout_s:g}s")
    except Exception as exc:
        injection.exercised = False
        injection.notes.append(f"failed: {exc!r}")
    repaired = await chaos.repair()
    if repaired:
        injection.notes.append(f"restarted afterwards: {', '.join(repaired)}")
    injection.ended = time.time()
    if injection.fault.kind == "server":  # measured again at the end, over every turn
        injection.recovery_s = server_recovery(injection, [r for c in chaos.conversations for r in c.records])


async def run(topo: Topology, args: argparse.Namespace, faults: list[str]) -> tuple[list[Row], list[Injection]]:
    chaos = Chaos(topo, turn_timeout_s=args.turn_timeout_s, outage_s=args.outage_s, drain_s=args.drain_s)
    console.print("reference run (no faults)…")
    references = await _reference(chaos)
    stop = asyncio.Event()
    load = [asyncio.create_task(_user(chaos, i, stop)) for i in range(args.users)]
    await asyncio.sleep(args.settle_s)
    injections: list[Injection] = []
    for round_no in range(args.rounds):
        for fault in (f for f in FAULTS if f.key in faults):
            injection = Injection(fault, round_no)
            injections.append(injection)
            await _inject(chaos, injection, timeout_s=4 * args.turn_timeout_s + 60)
            recovery = "-" if injection.recovery_s is None else f"{injection.recovery_s:.1f} s"
            console.print(f"round {round_no + 1}/{args.rounds} · {fault.label}: recovery {recovery}", highlight=False)
            await asyncio.sleep(args.settle_s)
    stop.set()
    for outcome in await asyncio.gather(*load, *chaos.tasks, return_exceptions=True):
        if isinstance(outcome, BaseException):
            console.print(f"[red]a conversation failed: {outcome!r}[/]")
    await asyncio.sleep(args.tail_s)  # a turn that runs again later would show up by now
    judged = await _judge(topo, chaos.conversations, references)
    return build_rows(injections, judged), injections


async def _judge(
    topo: Topology, conversations: list[Conversation], references: list[Conversation]
) -> list[TurnJudgement]:
    saved = await asyncio.gather(*(c.read_back() for c in conversations))
    tasks = await topo.tasks([c.team for c in conversations])
    by_name = {c.name: items for c, items in zip(conversations, saved, strict=True)}
    reference: dict[int, Reference] = {}
    for c in references:
        items = by_name[c.name]
        assert items is not None
        reference[c.variant] = reference_of(c, items, tasks[c.team])
    judged: list[TurnJudgement] = []
    for c in conversations:
        if "reference" not in c.tags:
            judged += judge(c, reference[c.variant], by_name[c.name], tasks[c.team])
    return judged


def _document(
    args: argparse.Namespace,
    info: dict[str, Any],
    rows: list[Row],
    injections: list[Injection],
    *,
    started: dict[int, float],
    left: list[int],
) -> dict[str, Any]:
    def moment(value: float | None, since: float) -> float | None:
        return None if value is None else round(value - since, 2)

    return {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": info,
        "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "replicas_cost"},
        # HA topologies: time to first event with the turns stream at R3 and at R1, side by side.
        "replicas_cost": getattr(args, "replicas_cost", None),
        "rows": [row.summary() for row in rows],
        "injections": [
            {
                "fault": i.fault.key,
                "round": i.round + 1,
                "victim_turn": i.victim_turn.turn_id if i.victim_turn else None,
                "fault_after_s": moment(i.fault_at, i.started),
                "restart_after_s": moment(i.restart_at, i.fault_at or i.started),
                "recovery_s": None if i.recovery_s is None else round(i.recovery_s, 2),
                "exercised": i.exercised,
                "notes": i.notes,
                "victim_events": _events(i.victim_turn, i.fault_at),
            }
            for i in injections
        ],
        "left_running": left,
        "processes": sorted(started.items()),  # (pid, start time) of everything the run started
        "passed": not left and all(row.passed for row in rows),
    }


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    faults = args.fault or list(TOPOLOGY_FAULTS[args.topology])
    info = machine()
    console.print(
        f"[bold]kitrelay chaos[/] on {info['cpus']} CPUs ({info['cpu_model']}), load average {info['load_average']}: "
        f"{args.topology} topology, {args.rounds} round(s) of {len(faults)} faults, {args.users} load users, "
        f"{args.token_delay_ms:g} ms a token"
    )
    started = time.monotonic()
    try:
        rows, injections, own, left = _run_all(args, faults)
    except (RuntimeError, DevServerError) as exc:
        console.print(f"[red]chaos: {exc}[/]", highlight=False)
        return 2
    info["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    info["duration_s"] = round(time.monotonic() - started, 1)
    print_table(console, rows, title=f"chaos: {args.rounds} round(s), {info['duration_s']:g} s")
    if left:
        console.print(f"[red]left running (now killed): {left}[/]")
    document = _document(args, info, rows, injections, started=own, left=left)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2))
        console.print(f"figures: {args.json}")
    return 0 if document["passed"] else 1


def _run_all(
    args: argparse.Namespace, faults: list[str]
) -> tuple[list[Row], list[Injection], dict[int, float], list[int]]:
    """Start the topology, run the chaos, stop it all; and which of its processes had to be killed at the end."""
    with tempfile.TemporaryDirectory(prefix="kitrelay-chaos-") as tmp:
        work = args.keep_logs or Path(tmp)
        own: dict[int, float] = {}
        try:
            with topology(
                work,
                token_delay_ms=args.token_delay_ms,
                drain_s=args.drain_s,
                database_url=args.database_url,
                extra_env=args.extra_env,
                kind=args.topology,
            ) as topo:
                try:
                    rows, injections = asyncio.run(run(topo, args, faults))
                    if args.replicas_turns and topo.ha is not None:
                        console.print("the cost of three stream replicas…")
                        cost = measure_replicas_cost(
                            topo, turns=args.replicas_turns, token_delay_ms=args.token_delay_ms, drain_s=args.drain_s
                        )
                        console.print(cost.line(), highlight=False)
                        args.replicas_cost = {
                            "turns": cost.turns,
                            "r3_p50_ms": round(cost.r3_p50_ms, 2),
                            "r1_p50_ms": round(cost.r1_p50_ms, 2),
                            "cost_ms": round(cost.cost_ms, 2),
                        }
                finally:
                    own = dict(topo.started)
        finally:
            left = _reap(own)
    return rows, injections, own, left


def _events(record: TurnRecord | None, since: float | None) -> list[str]:
    """The victim turn's events as received, one line each: when (from the fault), entry id, what."""
    if record is None:
        return []
    lines = []
    for received in record.events:
        event = received.event
        data = event.data
        what = event.type
        if "item" in data:
            what += f" {data['item'].get('type')} {data['item'].get('id')}"
        elif "item_id" in data:
            what += f" {data['item_id']}"
        if "update" in data:
            what += f" {data['update']['type'].rsplit('.', 1)[-1]} {data['update'].get('delta', '')!r}"
        if event.type == "error":
            what += f" {data}"
        at = received.at - (since or record.started)
        lines.append(f"{at:+.3f}s r{received.request}{'/re-attached' if received.reattached else ''} {event.id} {what}")
    return lines


def _reap(started: dict[int, float]) -> list[int]:
    """Whatever this run started and is somehow still running gets SIGKILL; the list of them (should be empty).
    A pid is only touched while it names the process started then (same start time), never a reused one."""
    left = []
    for pid, created in sorted(started.items()):
        try:
            proc = psutil.Process(pid)
            if proc.create_time() != created or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            left.append(pid)
            proc.kill()
        except psutil.Error:
            continue
    return left


if __name__ == "__main__":
    sys.exit(main())
