"""How fast the `kitrelay` command starts: `kitrelay --help`, and the terminal client's own share of a chat.

    .venv/bin/python -m benchmarks.cli_startup              # both, 10 runs each
    .venv/bin/python -m benchmarks.cli_startup --no-chat    # --help only (needs no NATS or Redis)

`kitrelay chat "hello"` is run as a user runs it after `kitrelay up`: the installed console script, in a directory
holding `.kitrelay/dev-token-secret` (so it mints its token), against the embedded default (a gateway and a triage
worker as processes, benchmarks/deployment.py). Its own overhead is its wall time less that of the same message
sent by a process that is already running (the same ChatSession and ChatView, writing to nowhere): what is left is
the interpreter's start, the imports, the token and the teardown. The CPU seconds the client process used are
printed too: unlike wall time, they barely move with the machine's load.

Targets (issue 30), on an idle machine: `kitrelay --help` within 0.3 s, the client's own overhead within 0.5 s.
On a busy one every figure grows; the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from rich.console import Console

from benchmarks.deployment import kitrelay_deployment, local_servers
from kitrelay.gateway.client import ChatKitClient
from kitrelay.gateway.tokens import mint_token
from kitrelay.services.chat_session import ChatSession
from kitrelay.services.chat_view import ChatView

KITRELAY = Path(sys.executable).parent / "kitrelay"
HELP_TARGET_S = 0.3
CHAT_OVERHEAD_TARGET_S = 0.5
MESSAGE = "hello"
USER, TEAM = "bench-user", "bench-team"


def _child_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_run(argv: list[str], *, cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds of one run of `argv`, which must succeed."""
    cpu = _child_cpu_s()
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
    return wall, _child_cpu_s() - cpu


def measure_help(runs: int, cwd: Path) -> tuple[list[float], list[float]]:
    env = dict(os.environ)
    timed_run([str(KITRELAY), "--help"], cwd=cwd, env=env)  # not counted: fills the page cache
    samples = [timed_run([str(KITRELAY), "--help"], cwd=cwd, env=env) for _ in range(runs)]
    return [wall for wall, _ in samples], [cpu for _, cpu in samples]


async def _in_process_chat(base_url: str, token: str) -> float:
    """The same message from a process already running: the server's share and the HTTP round trips only."""
    quiet = Console(file=io.StringIO())
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(10, read=None), headers=headers) as http:
        session = ChatSession(ChatKitClient(http), ChatView(quiet, status=quiet))
        started = time.perf_counter()
        await session.say(MESSAGE)
        return time.perf_counter() - started


def measure_chat(runs: int, work: Path, args: argparse.Namespace) -> tuple[list[float], list[float], list[float]]:
    secret = secrets.token_urlsafe(48)
    client_dir = work / "client"
    (client_dir / ".kitrelay").mkdir(parents=True)
    (client_dir / ".kitrelay" / "dev-token-secret").write_text(secret)
    env = {"AUTH_MODE": "jwt", "DEV_TOKEN_SECRET": secret, "LOG_LEVEL": "WARNING"}
    with (
        local_servers(args.nats, args.redis, work / "servers") as (nats_url, redis_url),
        kitrelay_deployment(
            nats_url=nats_url, redis_url=redis_url, work_dir=work / "kitrelay", env=env, workers=("triage",)
        ) as deployment,
    ):
        client_env = {**os.environ, "KITRELAY_URL": deployment.base_url, "DEV_USER_ID": USER, "DEV_TEAM_ID": TEAM}
        token = mint_token(secret, USER, TEAM)

        def chat() -> tuple[float, float]:
            return timed_run([str(KITRELAY), "chat", MESSAGE], cwd=client_dir, env=client_env)

        # Not counted: the first turns pay for the workers' and the gateway's own warm-up.
        for _ in range(2):
            chat()
            asyncio.run(_in_process_chat(deployment.base_url, token))
        walls: list[float] = []
        cpus: list[float] = []
        references: list[float] = []
        for _ in range(runs):
            # Interleaved, so that a machine that slows down meanwhile slows both down.
            wall, cpu = chat()
            walls.append(wall)
            cpus.append(cpu)
            references.append(asyncio.run(_in_process_chat(deployment.base_url, token)))
        return walls, cpus, references


def _verdict(value: float, target: float) -> str:
    return f"{'PASS' if value <= target else 'FAIL'} (target ≤ {target:g} s)"


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cli_startup", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="measured runs of each (default 10)")
    parser.add_argument("--no-chat", action="store_true", help="measure --help only: no system is started")
    parser.add_argument("--nats", default="nats://127.0.0.1:4222", help="NATS to use (else one is started)")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="Redis to use (else one is started)")
    args = parser.parse_args(argv)
    if not KITRELAY.exists():
        parser.error(f"no {KITRELAY}: install the package first (make install)")

    print(f"load average before: {_load()}  ({os.cpu_count()} CPUs)")
    failed = False
    with tempfile.TemporaryDirectory(prefix="kitrelay-cli-bench-") as tmp:
        work = Path(tmp)
        walls, cpus = measure_help(args.runs, work)
        median = statistics.median(walls)
        failed |= median > HELP_TARGET_S
        print(
            f"kitrelay --help        wall median {median:.3f} s, min {min(walls):.3f} s; "
            f"CPU median {statistics.median(cpus):.3f} s   {_verdict(median, HELP_TARGET_S)}"
        )
        if not args.no_chat:
            walls, cpus, references = measure_chat(args.runs, work, args)
            overhead = statistics.median(walls) - statistics.median(references)
            failed |= overhead > CHAT_OVERHEAD_TARGET_S
            print(
                f"kitrelay chat {MESSAGE!r}  wall median {statistics.median(walls):.3f} s; the same message from a "
                f"running process {statistics.median(references):.3f} s"
            )
            print(
                f"  the client's own overhead {overhead:.3f} s (CPU of the client process: median "
                f"{statistics.median(cpus):.3f} s)   {_verdict(overhead, CHAT_OVERHEAD_TARGET_S)}"
            )
    print(f"load average after: {_load()}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
