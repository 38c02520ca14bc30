"""kitrelay's load generator: simulated ChatKit users over real HTTP + SSE against kitrelay and, in the same run,
against the in-process baseline (benchmarks/baseline.py), with the figures side by side and each target PASS/FAIL.

    .venv/bin/python -m benchmarks.load                        # every scenario, on the embedded default
    .venv/bin/python -m benchmarks.load --scenario latency --scenario throughput --token-delay-ms 30
    .venv/bin/python -m benchmarks.load --url http://127.0.0.1:8000 --scenario throughput   # a running deployment

Scenarios: `latency` (1 user, no token delay), `throughput` (50 users, no token delay), `first_token` (1 user, a
model's time to first token imitated: sticky routing against "always triage"), `model` (model calls, tokens and
cost per message, counted by a local OpenAI-compatible server), `streams` (2,000 open streams on one gateway, 50 ms
per token, fed by benchmarks/feeder.py), `relay` (events/s one gateway relays, fed as fast as the feeder writes).
See benchmarks/README.md for what each one measures and drives.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvloop
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from benchmarks.deployment import (
    Deployment,
    ProcessMonitor,
    ProcessUsage,
    baseline_deployment,
    kitrelay_deployment,
    local_servers,
)
from benchmarks.feeder import HOLD_TIMEOUT_S
from benchmarks.stats import RunResult, machine
from benchmarks.users import SseUser, TurnSample, conversation, create_request, new_session
from tests.fakes.openai_server import FakeOpenAIServer, running_fake_openai

SCENARIOS = ("latency", "throughput", "first_token", "model", "streams", "relay")
TURNS_PER_CONVERSATION = 5
# "Today's" design in the side-by-side runs: every message starts at triage (and, for the model calls, the model
# writes the line after a widget tool), as before issue 33.
ALWAYS_TRIAGE = {"STICKY_ROUTING": "false"}
BEFORE_33 = {"STICKY_ROUTING": "false", "WIDGET_TOOLS_ANSWER": "false"}
# Targets (issue 33).
LATENCY_LIMIT_MS = 3.0
THROUGHPUT_RATIO = 1.3
CPU_RATIO = 1.2
FIRST_TOKEN_RATIO = 0.6
MODEL_CALLS_RATIO = 0.7
FAKE_KEY = "bench-key"
# Hundreds of turns at once on 2 cores queue for longer than a turn's default start and handoff deadlines: that
# is backpressure (KEDA adds workers in a cluster), not what is measured here. The stream feeder holds every turn
# until all of its scenario's streams are open (up to feeder.HOLD_TIMEOUT_S): their start deadline outlasts that.
# Every simulated user connects from 127.0.0.1: the gateway's cap on connections per client address (for one
# client holding many) is off, or the 2,000 streams would be refused past MAX_CONNECTIONS_PER_CLIENT.
PATIENCE_ENV = {
    "HANDOFF_TIMEOUT_S": "120",
    "TURN_START_TIMEOUT_S": str(int(HOLD_TIMEOUT_S) + 30),
    "MAX_CONNECTIONS_PER_CLIENT": "0",
}

# Wide enough for the side-by-side tables when the output is a file or a pipe.
console = Console(width=None if sys.stdout.isatty() else 130)


@dataclass(frozen=True)
class Target:
    scenario: str
    text: str
    value: str
    passed: bool


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


# --- conversations: latency and throughput --------------------------------------------------------------------


async def drive_conversations(
    target: Deployment,
    *,
    scenario: str,
    users: int,
    conversations: int,
    turn_timeout_s: float,
    warmed: Callable[[], None] | None = None,
) -> RunResult:
    """`users` users at once, each holding `conversations` conversations one after another (`warmed` is called
    once the unmeasured warm-up conversation is over)."""
    async with new_session(users + 10) as http:
        # Not measured: the first turn of each kind pays for imports, caches and connection set-up.
        warm = SseUser(http, target.base_url, turn_timeout_s=turn_timeout_s)
        warm_samples = await conversation(warm, "warm-up")
        if failed := [s.error for s in warm_samples if s.error]:
            raise RuntimeError(f"{target.name} warm-up failed: {failed[0]}")
        if warmed is not None:
            warmed()
        monitor = ProcessMonitor(target.pids)
        with _progress() as progress:
            task = progress.add_task(f"{target.name} {scenario}", total=users * conversations * TURNS_PER_CONVERSATION)

            async def one_user(index: int) -> list[TurnSample]:
                user = SseUser(http, target.base_url, turn_timeout_s=turn_timeout_s)
                samples: list[TurnSample] = []
                for n in range(conversations):
                    done = await conversation(user, f"u{index}c{n}")
                    samples.extend(done)
                    progress.advance(task, TURNS_PER_CONVERSATION)
                return samples

            monitor.start()
            started = time.monotonic()
            results = await asyncio.gather(*(one_user(i) for i in range(users)))
            wall_s = time.monotonic() - started
            usage = await monitor.stop()
    samples = [s for user_samples in results for s in user_samples]
    return RunResult(target.name, scenario, users, wall_s, samples, usage)


# --- open streams: streams and relay --------------------------------------------------------------------------


@dataclass
class _OpenStreams:
    """Counts of a streams run: how many are open, when all were, when the first closed, relayed events."""

    streams: int
    open_now: int = 0
    peak_open: int = 0
    all_open_at: float | None = None
    first_closed_at: float | None = None
    events: int = 0
    first_event_at: float | None = None
    last_event_at: float = 0.0

    def relayed(self, events: int) -> None:
        """Relayed events came (the SDK's opening frames have no id and are not counted)."""
        if not events:
            return
        self.events += events
        self.last_event_at = time.monotonic()
        if self.first_event_at is None:
            self.first_event_at = self.last_event_at

    def opened(self) -> None:
        self.open_now += 1
        self.peak_open = max(self.peak_open, self.open_now)
        if self.open_now == self.streams and self.all_open_at is None:
            self.all_open_at = time.monotonic()

    def closed(self, was_open: bool) -> None:
        if was_open:
            self.open_now -= 1
        if self.first_closed_at is None:
            self.first_closed_at = time.monotonic()

    def figures(self, usage: dict[str, ProcessUsage]) -> dict[str, float]:
        extra: dict[str, float] = {
            "streams": self.streams,
            "peak_open_streams": self.peak_open,
            "relayed_events": self.events,
        }
        gateway = usage.get("gateway")
        if gateway is not None and self.peak_open:
            grown_kb = (gateway.peak_rss_mb - gateway.start_rss_mb) * 1024
            extra["gateway_kb_per_open_stream"] = round(grown_kb / self.peak_open, 1)
        if self.first_event_at is not None and self.last_event_at > self.first_event_at:
            extra["relayed_events_per_s"] = round(self.events / (self.last_event_at - self.first_event_at), 1)
        if self.all_open_at is not None and self.first_closed_at is not None:
            extra["steady_window_s"] = round(self.first_closed_at - self.all_open_at, 2)
        return extra


async def drive_streams(
    target: Deployment, *, scenario: str, streams: int, open_concurrency: int, turn_timeout_s: float
) -> RunResult:
    """`streams` turns, each read to its end without parsing its events (the client must
    not be what limits the run). Counts open streams, the gateway's memory per open stream, and the gaps between
    events while every stream is open."""
    counts = _OpenStreams(streams)
    monitor = ProcessMonitor(target.pids)
    async with new_session(streams + 10) as http:
        user = SseUser(http, target.base_url, turn_timeout_s=turn_timeout_s)
        # The feeder holds every turn until all streams are open, so the warm-up is a request that starts none.
        await user.call({"type": "threads.list", "params": {"limit": 1}})
        with _progress() as progress:
            opened = progress.add_task(f"{target.name} {scenario}: streams opened", total=streams)
            finished = progress.add_task(f"{target.name} {scenario}: streams finished", total=streams)

            # Streams are opened as fast as the gateway takes them, at most `opening` at a time: the gateway's
            # rate of new turns is not what this measures, and a queue of waiting requests would only time out.
            opening = asyncio.Semaphore(open_concurrency)

            async def one_stream(index: int) -> TurnSample:
                await opening.acquire()
                is_open = False

                def on_frames(relayed: int, frames: int) -> None:
                    nonlocal is_open
                    counts.relayed(relayed)
                    if frames and not is_open:
                        is_open = True
                        opening.release()
                        counts.opened()
                        progress.advance(opened)

                request = create_request(f"stream {index}")
                sample, _ = await user.turn(scenario, request, parse=False, on_frames=on_frames)
                if not is_open:
                    opening.release()
                counts.closed(is_open)
                progress.advance(finished)
                return sample

            monitor.start()
            started = time.monotonic()
            samples = await asyncio.gather(*(one_stream(i) for i in range(streams)))
            wall_s = time.monotonic() - started
            usage = await monitor.stop()
    steady = _steady_gaps(samples, counts.all_open_at, counts.first_closed_at)
    return RunResult(target.name, scenario, streams, wall_s, samples, usage, counts.figures(usage), gaps_s=steady)


def _steady_gaps(samples: list[TurnSample], since: float | None, until: float | None) -> list[float] | None:
    """The gaps that ended while every stream was open (None: the window never happened; all gaps count)."""
    if since is None or until is None or until <= since:
        return None
    gaps: list[float] = []
    for sample in samples:
        at = sample.started + (sample.first_event_s or 0.0)
        for gap in sample.gaps_s:
            at += gap
            if since <= at <= until:
                gaps.append(gap)
    return gaps


# --- the run --------------------------------------------------------------------------------------------------


def _env(token_delay_ms: float, log_level: str) -> dict[str, str]:
    return {**PATIENCE_ENV, "OFFLINE_TOKEN_DELAY_MS": str(token_delay_ms), "LOG_LEVEL": log_level}


@contextmanager
def _deployment(
    args: argparse.Namespace,
    work: Path,
    name: str,
    *,
    feeder_args: list[str] | None = None,
    extra_env: dict[str, str] | None = None,
    deployment: str = "kitrelay",
) -> Iterator[Deployment]:
    if args.url:
        yield Deployment(deployment, args.url)
        return
    env = {**_env(args.token_delay_ms, args.log_level), **(extra_env or {})}
    with local_servers(args.nats, args.redis, work / "servers") as (nats_url, redis_url):
        workers: tuple[str, ...] = ("triage", "task", "research") if feeder_args is None else ()
        with kitrelay_deployment(
            nats_url=nats_url,
            redis_url=redis_url,
            work_dir=work / name,
            env=env,
            workers=workers,
            feeder_args=feeder_args,
            pg_server=args.pg,
            name=deployment,
        ) as started:
            yield started


def run_conversation_scenarios(args: argparse.Namespace, work: Path, scenarios: list[str]) -> list[RunResult]:
    """Each scenario `--rounds` times against kitrelay and the baseline in turn (both stay up meanwhile, the idle
    one costs nothing), so that a machine that drifts during the run drifts for both: each figure pools the
    rounds, and the rounds' own figures are kept beside it."""
    shapes = {"latency": (1, args.latency_conversations), "throughput": (args.users, args.conversations)}
    runs: dict[tuple[str, str], list[RunResult]] = {}
    with contextlib.ExitStack() as stack:
        targets = [stack.enter_context(_deployment(args, work, "kitrelay"))]
        if not args.no_baseline:
            targets.append(stack.enter_context(_baseline(args, work)))
        for round_no in range(args.rounds):
            for scenario in scenarios:
                users, conversations = shapes[scenario]
                # Each goes first every other round: neither always runs on a machine the other has warmed.
                for target in targets if round_no % 2 == 0 else reversed(targets):
                    result = uvloop.run(
                        drive_conversations(
                            target,
                            scenario=scenario,
                            users=users,
                            conversations=conversations,
                            turn_timeout_s=args.turn_timeout_s,
                        )
                    )
                    runs.setdefault((result.deployment, scenario), []).append(result)
    return [RunResult.pooled(parts) for parts in runs.values()]


def _baseline(
    args: argparse.Namespace, work: Path, extra_env: dict[str, str] | None = None, folder: str = "baseline"
) -> contextlib.AbstractContextManager[Deployment]:
    if args.baseline_url:
        return _nullcontext(Deployment("baseline", args.baseline_url))
    env = {**_env(args.token_delay_ms, args.log_level), **(extra_env or {})}
    return baseline_deployment(work_dir=work / folder, env=env, pg_server=args.pg)


def _in_turn(args: argparse.Namespace, targets: list[Deployment], scenario: str, conversations: int) -> list[RunResult]:
    """One user's `conversations` against each target, `--rounds` times, each target first in turn; pooled."""
    runs: dict[str, list[RunResult]] = {}
    for round_no in range(args.rounds):
        shift = round_no % len(targets)
        for target in targets[shift:] + targets[:shift]:
            result = uvloop.run(
                drive_conversations(
                    target, scenario=scenario, users=1, conversations=conversations, turn_timeout_s=args.turn_timeout_s
                )
            )
            runs.setdefault(result.deployment, []).append(result)
    return [RunResult.pooled(parts) for parts in runs.values()]


def run_first_token_scenario(args: argparse.Namespace, work: Path) -> list[RunResult]:
    """One user, the offline model waiting `--first-token-ms` before each answer's first output, as a real model's
    time to first token: kitrelay with sticky routing and kitrelay with every message at triage (the switch that
    restores it), side by side in one run, and the baseline."""
    delay = {"OFFLINE_FIRST_TOKEN_MS": f"{args.first_token_ms:g}"}
    with contextlib.ExitStack() as stack:
        targets = [
            stack.enter_context(_deployment(args, work, "first-token", extra_env=delay)),
            stack.enter_context(
                _deployment(
                    args, work, "first-token-triage", extra_env={**delay, **ALWAYS_TRIAGE}, deployment="kitrelay-triage"
                )
            ),
        ]
        if not args.no_baseline:
            targets.append(stack.enter_context(_baseline(args, work, delay, "first-token-baseline")))
        return _in_turn(args, targets, "first_token", args.first_token_conversations)


def run_model_scenario(args: argparse.Namespace, work: Path) -> list[RunResult]:
    """Model calls, tokens and cost per user message: each deployment's agents talk to a local OpenAI-compatible
    server of their own (the Responses API, as with OpenAI), which answers as the offline model would and counts
    every call with the tokens it would be billed. kitrelay, kitrelay as before issue 33 (every message at triage,
    the model writing the line after a widget tool), and the baseline."""
    config = tomllib.loads(args.config.read_text())
    prices: dict[str, dict[str, float]] = config["prices"]
    kinds: dict[str, str] = config["model_scenario"]
    variants = [("kitrelay", {}, False), ("kitrelay-before", BEFORE_33, False)]
    if not args.no_baseline:
        variants.append(("baseline", {}, True))
    results: list[RunResult] = []
    for name, settings, in_process in variants:
        with running_fake_openai(api_key=FAKE_KEY) as fake:
            env = {
                "LLM_PROVIDER": "openai",
                "OPENAI_API_KEY": FAKE_KEY,
                "OPENAI_BASE_URL": fake.base_url,
                "TRIAGE_MODEL": kinds["triage"],
                "TASK_MODEL": kinds["task"],
                "RESEARCH_MODEL": kinds["research"],
                **settings,
            }
            started = (
                _baseline(args, work, env, f"model-{name}")
                if in_process
                else _deployment(args, work, f"model-{name}", extra_env=env, deployment=name)
            )
            with started as target:
                counted_from = 0

                def warmed(server: FakeOpenAIServer = fake) -> None:
                    nonlocal counted_from
                    counted_from = len(server.answered)

                result = uvloop.run(
                    drive_conversations(
                        target,
                        scenario="model",
                        users=1,
                        conversations=args.model_conversations,
                        turn_timeout_s=args.turn_timeout_s,
                        warmed=warmed,
                    )
                )
            result.extra.update(model_figures(fake, counted_from, result.samples, prices))
        results.append(result)
    return results


def model_figures(
    fake: FakeOpenAIServer, since: int, samples: list[TurnSample], prices: dict[str, dict[str, float]]
) -> dict[str, Any]:
    calls = fake.answered[since:]
    messages = sum(1 for s in samples if s.kind != "widget_action" and s.error is None)
    unpriced = sorted({call.model for call in calls if call.model not in prices})
    dollars = (
        sum(
            call.input_tokens * prices[call.model]["input"] + call.output_tokens * prices[call.model]["output"]
            for call in calls
            if call.model in prices
        )
        / 1_000_000
    )
    per = 1 / messages if messages else float("nan")
    return {
        "messages": messages,
        "model_calls": len(calls),
        "model_calls_per_message": round(len(calls) * per, 3),
        "input_tokens_per_message": round(sum(c.input_tokens for c in calls) * per, 1),
        "output_tokens_per_message": round(sum(c.output_tokens for c in calls) * per, 1),
        "cost_per_1000_messages_usd": round(dollars * per * 1000, 4),
        "models": sorted({call.model for call in calls}),
        **({"unpriced_models": unpriced} if unpriced else {}),
    }


@contextmanager
def _nullcontext(value: Deployment) -> Iterator[Deployment]:
    yield value


def run_stream_scenario(args: argparse.Namespace, work: Path, scenario: str) -> RunResult:
    if scenario == "streams":
        streams = args.streams
        feeder = ["--tokens", str(args.stream_tokens), "--token-delay-ms", str(args.stream_token_delay_ms)]
        feeder += ["--phases", str(args.stream_phases)]
    else:
        streams = args.relay_streams
        feeder = ["--tokens", str(args.relay_tokens), "--token-delay-ms", "0", "--per-round", str(args.relay_batch)]
        if args.relay_pack:
            feeder.append("--pack")
    feeder += ["--hold-until", str(streams)]
    with _deployment(args, work, scenario, feeder_args=feeder) as kitrelay:
        return uvloop.run(
            drive_streams(
                kitrelay,
                scenario=scenario,
                streams=streams,
                open_concurrency=args.open_concurrency,
                turn_timeout_s=max(args.turn_timeout_s, 600.0),
            )
        )


def evaluate(summaries: list[dict[str, Any]]) -> list[Target]:
    by = {(s["deployment"], s["scenario"]): s for s in summaries}
    targets: list[Target] = []
    if (k := by.get(("kitrelay", "latency"))) and (b := by.get(("baseline", "latency"))):
        limit = b["first_answer_ms_p50"] + LATENCY_LIMIT_MS
        targets.append(
            Target(
                "latency",
                f"time to first answer event p50 <= baseline + {LATENCY_LIMIT_MS:g} ms",
                f"{k['first_answer_ms_p50']:.2f} ms vs limit {limit:.2f} ms",
                k["errors"] == 0 and k["first_answer_ms_p50"] <= limit,
            )
        )
    if (k := by.get(("kitrelay", "throughput"))) and (b := by.get(("baseline", "throughput"))):
        ratio = k["turns_per_s"] / b["turns_per_s"] if b["turns_per_s"] else 0.0
        targets.append(
            Target(
                "throughput",
                f"turns/s >= {THROUGHPUT_RATIO:g}x baseline",
                f"{ratio:.2f}x",
                k["errors"] == 0 and ratio >= THROUGHPUT_RATIO,
            )
        )
        cpu = k["cpu_ms_per_turn_all"] / b["cpu_ms_per_turn_all"] if b["cpu_ms_per_turn_all"] else float("inf")
        targets.append(
            Target(
                "throughput",
                f"CPU per turn, gateway + workers <= {CPU_RATIO:g}x baseline",
                f"{k['cpu_ms_per_turn_all']:.1f} vs {b['cpu_ms_per_turn_all']:.1f} ms ({cpu:.2f}x)",
                cpu <= CPU_RATIO,
            )
        )
    if (k := by.get(("kitrelay", "first_token"))) and (t := by.get(("kitrelay-triage", "first_token"))):
        sticky, always = k["follow_up_first_answer_ms_p50"], t["follow_up_first_answer_ms_p50"]
        ratio = sticky / always
        targets.append(
            Target(
                "first_token",
                f"follow-up messages: first answer event p50 <= {FIRST_TOKEN_RATIO:g}x always-triage",
                f"{sticky:.0f} vs {always:.0f} ms ({ratio:.2f}x)",
                k["errors"] == 0 and ratio <= FIRST_TOKEN_RATIO,
            )
        )
    if (k := by.get(("kitrelay", "model"))) and (t := by.get(("kitrelay-before", "model"))):
        ratio = k["model_calls_per_message"] / t["model_calls_per_message"]
        targets.append(
            Target(
                "model",
                f"model calls per user message <= {MODEL_CALLS_RATIO:g}x before issue 33",
                f"{k['model_calls_per_message']:.2f} vs {t['model_calls_per_message']:.2f} ({ratio:.2f}x)",
                k["errors"] == 0 and ratio <= MODEL_CALLS_RATIO,
            )
        )
    if k := by.get(("kitrelay", "streams")):
        kb = k.get("gateway_kb_per_open_stream", float("inf"))
        targets.append(Target("streams", "no errors", str(k["errors"]), k["errors"] == 0))
        targets.append(
            Target(
                "streams", "event gap p99 <= 100 ms", f"{k['event_gap_ms_p99']:.1f} ms", k["event_gap_ms_p99"] <= 100
            )
        )
        targets.append(Target("streams", "gateway memory <= 50 KB per open stream", f"{kb:.1f} KB", kb <= 50))
        targets.append(
            Target(
                "streams",
                f"{k['streams']} streams open at once",
                str(k["peak_open_streams"]),
                k["peak_open_streams"] == k["streams"],
            )
        )
    if k := by.get(("kitrelay", "relay")):
        rate = k.get("relayed_events_per_s", 0.0)
        targets.append(
            Target(
                "relay", "one gateway relays >= 30,000 events/s", f"{rate:,.0f}/s", k["errors"] == 0 and rate >= 30_000
            )
        )
    return targets


_ROWS = (
    ("turns", "turns", "{:.0f}"),
    ("errors", "errors", "{:.0f}"),
    ("time to first event p50 (ms)", "first_event_ms_p50", "{:.2f}"),
    ("time to first event p99 (ms)", "first_event_ms_p99", "{:.2f}"),
    ("time to first answer event p50 (ms)", "first_answer_ms_p50", "{:.2f}"),
    ("time to first answer event p99 (ms)", "first_answer_ms_p99", "{:.2f}"),
    ("follow-ups: first answer event p50 (ms)", "follow_up_first_answer_ms_p50", "{:.2f}"),
    ("follow-ups: first event p50 (ms)", "follow_up_first_event_ms_p50", "{:.2f}"),
    ("time between events p99 (ms)", "event_gap_ms_p99", "{:.2f}"),
    ("turn duration p50 (ms)", "turn_ms_p50", "{:.1f}"),
    ("turn duration p99 (ms)", "turn_ms_p99", "{:.1f}"),
    ("turns/s", "turns_per_s", "{:.2f}"),
    ("events/s (client)", "events_per_s", "{:.0f}"),
    ("CPU ms per turn, all processes", "cpu_ms_per_turn_all", "{:.1f}"),
)
_MODEL_ROWS = (
    ("user messages", "messages", "{:.0f}"),
    ("model calls", "model_calls", "{:.0f}"),
    ("model calls per message", "model_calls_per_message", "{:.2f}"),
    ("input tokens per message", "input_tokens_per_message", "{:.0f}"),
    ("output tokens per message", "output_tokens_per_message", "{:.0f}"),
    ("cost per 1,000 messages (USD)", "cost_per_1000_messages_usd", "{:.4f}"),
    ("first answer event p50 (ms)", "first_answer_ms_p50", "{:.1f}"),
)


def _fmt(fmt: str, value: Any) -> str:
    return "-" if value is None else fmt.format(value)


def _scenario_table(k: dict[str, Any], b: dict[str, Any] | None) -> Table:
    """One scenario's figures: kitrelay, the baseline and their ratio side by side."""
    scenario = k["scenario"]
    table = Table(title=f"{scenario}: {k['users']} {'streams' if scenario in ('streams', 'relay') else 'users'}")
    table.add_column("")
    table.add_column("kitrelay", justify="right")
    blank = [""] * (2 if b else 0)
    if b is not None:
        table.add_column("baseline", justify="right")
        table.add_column("kitrelay / baseline", justify="right")
    for label, key, fmt in _ROWS:
        row = [label, _fmt(fmt, k.get(key))]
        if b is not None:
            ratio = k[key] / b[key] if b.get(key) and k.get(key) is not None else None
            row += [_fmt(fmt, b.get(key)), _fmt("{:.2f}x", ratio)]
        table.add_row(*row)
    if "rounds" in k:
        per_round = [(r["turns_per_s"], r["first_event_ms_p50"]) for r in k["rounds"]]
        theirs = [(r["turns_per_s"], r["first_event_ms_p50"]) for r in b["rounds"]] if b and "rounds" in b else None
        for label, at in (("turns/s, each round", 0), ("first event p50, each round (ms)", 1)):
            row = [label, " / ".join(f"{figures[at]:g}" for figures in per_round)]
            if b is not None:
                row += [" / ".join(f"{figures[at]:g}" for figures in theirs) if theirs else "", ""]
            table.add_row(*row)
    for extra in ("peak_open_streams", "gateway_kb_per_open_stream", "relayed_events_per_s", "steady_window_s"):
        if extra in k:
            table.add_row(extra.replace("_", " "), str(k[extra]), *blank)
    for name, p in k["processes"].items():
        table.add_row(f"{name}: CPU ms/turn, peak RSS", f"{p['cpu_ms_per_turn']} ms, {p['peak_rss_mb']} MB", *blank)
    if b is not None:
        for name, p in b["processes"].items():
            table.add_row(f"{name}: CPU ms/turn, peak RSS", "", f"{p['cpu_ms_per_turn']} ms, {p['peak_rss_mb']} MB", "")
    return table


def _side_by_side(title: str, runs: list[dict[str, Any]], rows: tuple[tuple[str, str, str], ...]) -> Table:
    """Several deployments of one scenario, a column each (first_token, model)."""
    table = Table(title=title)
    table.add_column("")
    for run in runs:
        table.add_column(run["deployment"], justify="right")
    for label, key, fmt in rows:
        table.add_row(label, *[_fmt(fmt, run.get(key)) for run in runs])
    table.add_row(
        "CPU ms/turn", *[", ".join(f"{n} {p['cpu_ms_per_turn']}" for n, p in run["processes"].items()) for run in runs]
    )
    return table


def print_report(summaries: list[dict[str, Any]], targets: list[Target]) -> None:
    for scenario in SCENARIOS:
        k = next((s for s in summaries if s["scenario"] == scenario and s["deployment"] == "kitrelay"), None)
        b = next((s for s in summaries if s["scenario"] == scenario and s["deployment"] == "baseline"), None)
        if scenario in ("first_token", "model"):
            runs = [s for s in summaries if s["scenario"] == scenario]
            if runs:
                title = (
                    "first_token: 1 user, a model's time to first token imitated"
                    if scenario == "first_token"
                    else "model: calls and tokens per user message, counted by a local OpenAI-compatible server"
                )
                console.print(_side_by_side(title, runs, _ROWS[2:8] if scenario == "first_token" else _MODEL_ROWS))
            continue
        if k is not None:
            console.print(_scenario_table(k, b))
    targets_table = Table(title="targets")
    for column in ("scenario", "target", "measured", "result"):
        targets_table.add_column(column)
    for t in targets:
        targets_table.add_row(t.scenario, t.text, t.value, "[green]PASS[/]" if t.passed else "[red]FAIL[/]")
    console.print(targets_table)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", action="append", choices=SCENARIOS, help="repeatable; default: all")
    parser.add_argument("--url", help="a running kitrelay gateway (default: start the embedded default)")
    parser.add_argument("--baseline-url", help="a running baseline (default: start one)")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--users", type=int, default=50, help="throughput: concurrent users")
    parser.add_argument("--conversations", type=int, default=2, help="throughput: conversations per user")
    parser.add_argument("--latency-conversations", type=int, default=20, help="latency: conversations of the user")
    parser.add_argument("--token-delay-ms", type=float, default=0.0, help="the offline model's per-token delay")
    parser.add_argument(
        "--first-token-ms", type=float, default=300.0, help="first_token: the offline model's time to first token"
    )
    parser.add_argument("--first-token-conversations", type=int, default=4, help="first_token: conversations a round")
    parser.add_argument("--model-conversations", type=int, default=5, help="model: conversations counted")
    parser.add_argument(
        "--config", type=Path, default=Path(__file__).with_name("config.toml"), help="model prices (model scenario)"
    )
    parser.add_argument("--streams", type=int, default=2000, help="streams: open streams")
    parser.add_argument("--stream-tokens", type=int, default=600, help="streams: deltas per reply")
    parser.add_argument("--stream-token-delay-ms", type=float, default=50.0)
    parser.add_argument(
        "--stream-phases",
        type=int,
        default=10,
        help="streams: moments of each token tick the replies are spread over, as independent models (1: in step)",
    )
    parser.add_argument("--open-concurrency", type=int, default=20, help="streams being opened at once")
    parser.add_argument("--relay-streams", type=int, default=200)
    parser.add_argument("--relay-tokens", type=int, default=1000)
    parser.add_argument("--relay-batch", type=int, default=20, help="relay: deltas per stream per feeder round")
    parser.add_argument(
        "--relay-pack",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="relay: a round's deltas of a stream in one entry, as a worker packs a model that outruns its writes",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="latency and throughput: runs of each, kitrelay and the baseline in turn, pooled (the machine drifts)",
    )
    parser.add_argument("--turn-timeout-s", type=float, default=180.0)
    parser.add_argument("--log-level", default="WARNING", help="LOG_LEVEL of the services under test")
    parser.add_argument("--pg", help="a PostgreSQL server URL: a fresh database on it instead of SQLite")
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/latest.json"))
    parser.add_argument("--work-dir", type=Path, help="keep logs and databases here (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def _raise_open_files_limit() -> None:
    """Thousands of streams need as many sockets, here and in the gateway (which inherits the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _stop_on_sigterm(signum: int, _frame: object) -> None:
    # As Ctrl-C does: every deployment's context manager then stops the processes it started.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    _raise_open_files_limit()
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    scenarios = args.scenario or list(SCENARIOS)
    info = machine()
    console.print(
        f"[bold]kitrelay bench[/] on {info['cpus']} CPUs ({info['cpu_model']}), load average {info['load_average']}"
    )
    results: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="kitrelay-bench-") as tmp:
        work = args.work_dir or Path(tmp)
        conversational = [s for s in scenarios if s in ("latency", "throughput")]
        if conversational:
            results += run_conversation_scenarios(args, work, conversational)
        side_by_side = [s for s in scenarios if s in ("first_token", "model")]
        if side_by_side and args.url:
            console.print("first_token and model start deployments of their own: left out with --url")
        elif "first_token" in side_by_side:
            results += run_first_token_scenario(args, work)
        if "model" in side_by_side and not args.url:
            results += run_model_scenario(args, work)
        for scenario in (s for s in scenarios if s in ("streams", "relay")):
            results.append(run_stream_scenario(args, work, scenario))
    summaries = [r.summary() for r in results]
    targets = evaluate(summaries)
    print_report(summaries, targets)
    info["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    document = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": info,
        "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "results": summaries,
        "targets": [t.__dict__ for t in targets],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2))
    console.print(f"results: {args.out}")
    errors = sum(s["errors"] for s in summaries)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
