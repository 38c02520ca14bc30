"""An agent worker: pulls turns of one agent kind from its JetStream consumer and runs them concurrently.

All workers of one kind bind to the same durable consumer, so they share the load; a turn is acked only after
its terminal entry is in the turn's Redis stream, so a worker that dies mid-turn leaves it to be redelivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time

import nats.errors
import structlog
from agents import Agent
from chatkit.agents import AgentContext
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from pydantic import ValidationError

from kitrelay.agents.context import TurnContext
from kitrelay.agents.providers import model_for, model_provider
from kitrelay.agents.registry import build_agent
from kitrelay.services.knowledge import KnowledgeService
from kitrelay.services.task_events import TaskEventPublisher
from kitrelay.services.tasks import TaskService
from kitrelay.services.turn_runner import RunNotOpenedError, TurnControl, TurnDeps, dead_letter, run_turn
from kitrelay.services.turn_store import TurnStore
from kitrelay.services.turns import TurnRecords
from kitrelay.shared.agents_tracing import install_agents_tracing
from kitrelay.shared.connections import connect_nats, connect_redis, ensure_turns_stream
from kitrelay.shared.heap import settle_after_startup
from kitrelay.shared.logging import configure_logging
from kitrelay.shared.messages import TurnRequest, utcnow
from kitrelay.shared.metrics import TURN_DURATION, TURNS_IN_FLIGHT, TURNS_STARTED, serve_metrics
from kitrelay.shared.names import (
    cancel_subject,
    dead_letter_subject,
    turn_watch_key,
    turns_consumer,
    turns_stream,
    turns_subject,
)
from kitrelay.shared.settings import AgentKind, Settings
from kitrelay.shared.store.chatkit_store import RunSupersededError
from kitrelay.shared.store.engine import make_engine, make_sessionmaker
from kitrelay.shared.telemetry import parent_context, setup_telemetry, tracer

log = logging.getLogger(__name__)

FETCH_TIMEOUT_S = 1.0
FETCH_RETRY_S = 0.5
# How long a turn whose attempt could not be written waits before the next: 1, 2, 4, 8 s, then 8 s each.
REDELIVERY_DELAYS_S = (1.0, 2.0, 4.0, 8.0)


def redelivery_delay_s(attempt: int) -> float:
    return REDELIVERY_DELAYS_S[min(attempt, len(REDELIVERY_DELAYS_S)) - 1]


class Worker:
    def __init__(
        self,
        *,
        kind: AgentKind,
        nc: NATS,
        agent: Agent[AgentContext[TurnContext]],
        deps: TurnDeps,
        settings: Settings,
    ) -> None:
        self.kind = kind
        self._nc = nc
        self._js = nc.jetstream()
        self._agent = agent
        self._deps = deps
        self._settings = settings
        self._in_flight: set[asyncio.Task[None]] = set()
        # The turns this process is running, by id: how a stop request or the watchdog reaches one.
        self._controls: dict[str, TurnControl] = {}
        self._stopping = asyncio.Event()
        self.turns_done = 0
        # This kind's series, looked up once: `labels()` takes a lock and builds a key at each call.
        self._started = TURNS_STARTED.labels(kind)
        self._in_flight_gauge = TURNS_IN_FLIGHT.labels(kind)
        self._duration = TURN_DURATION.labels(kind)

    async def run(self) -> None:
        """Pull and run turns until `stop()` is called, then drain."""
        namespace = self._settings.NAMESPACE
        replicas = await ensure_turns_stream(self._js, namespace, replicas=self._settings.TURNS_STREAM_REPLICAS)
        durable = turns_consumer(namespace, self.kind)
        config = ConsumerConfig(
            name=durable,
            durable_name=durable,
            filter_subject=turns_subject(namespace, self.kind),
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self._settings.TURN_ACK_WAIT_S,
            # One delivery more than the attempts allowed: the extra one dead-letters the turn, so even a turn
            # whose last attempt died with its worker ends with a message to the user.
            max_deliver=self._settings.TURN_MAX_DELIVER + 1,
            max_ack_pending=self._settings.TURN_MAX_ACK_PENDING,
            # As many copies as its stream: on a cluster, the consumer's state (what is delivered, what is acked)
            # outlives the loss of a node too.
            num_replicas=replicas,
        )
        # Created, or brought up to this version's settings: pull_subscribe leaves an existing consumer as it is,
        # and a consumer made by an earlier release would keep its minute-long ack wait.
        await self._js.add_consumer(turns_stream(namespace), config=config)
        sub = await self._js.pull_subscribe(
            turns_subject(namespace, self.kind), durable=durable, stream=turns_stream(namespace), config=config
        )
        stops = await self._nc.subscribe(cancel_subject(namespace, "*"), cb=self._on_stop_request)
        watchdog = (
            asyncio.create_task(self._watch_detached()) if self._settings.DETACHED_TURN_POLICY == "cancel" else None
        )
        log.info("worker %s pulling %s", self.kind, turns_subject(namespace, self.kind))
        try:
            while not self._stopping.is_set():
                free = self._settings.WORKER_CONCURRENCY - len(self._in_flight)
                if free <= 0:
                    await asyncio.wait(set(self._in_flight), return_when=asyncio.FIRST_COMPLETED)
                    continue
                # Ask only for as many turns as there are free slots: the rest stay available to other workers.
                try:
                    msgs = await sub.fetch(batch=free, timeout=FETCH_TIMEOUT_S)
                except (nats.errors.TimeoutError, TimeoutError):
                    continue
                except nats.errors.ConnectionClosedError:
                    break
                except nats.errors.Error as exc:
                    # A NATS cluster electing a new leader for the consumer (503), a reconnection under way: the
                    # turns wait in the stream meanwhile. Anything else is as passing.
                    log.warning("fetching turns: %r; trying again", exc)
                    await asyncio.sleep(FETCH_RETRY_S)
                    continue
                for msg in msgs:
                    self._spawn(msg)
        finally:
            if watchdog is not None:
                watchdog.cancel()
            await self._drain()
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
                await stops.unsubscribe()

    def stop(self) -> None:
        self._stopping.set()

    def _spawn(self, msg: Msg) -> None:
        task = asyncio.create_task(self._handle(msg))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _handle(self, msg: Msg) -> None:
        try:
            request = TurnRequest.model_validate_json(msg.data)
        except ValidationError as exc:
            # A message no worker can read will never become readable: stop redelivering it.
            log.error("dropping unreadable turn message: %s", exc.errors(include_url=False)[:3])
            await msg.term()
            return
        attempt = msg.metadata.num_delivered or 1
        with (
            structlog.contextvars.bound_contextvars(
                turn_id=request.turn_id, thread_id=request.thread_id, agent=request.agent
            ),
            self._turn_span(msg, request, attempt) as span,
        ):
            await self._handle_turn(msg, request, attempt, span)

    def _turn_span(self, msg: Msg, request: TurnRequest, attempt: int) -> contextlib.AbstractContextManager[trace.Span]:
        """The worker's span of one run of the turn: a child of the publish that handed it over (the gateway's,
        or the previous worker's on a handoff), through the W3C context in the message headers or body."""
        queue_wait_s = max(0.0, (utcnow() - request.created_at).total_seconds())
        attributes: dict[str, str | int | float] = {
            "kitrelay.turn_id": request.turn_id,
            "kitrelay.thread_id": request.thread_id,
            "kitrelay.agent": request.agent,
            "kitrelay.team_id": request.identity.team_id,
            "kitrelay.hop": request.hops,
            "kitrelay.attempt": attempt,
            "kitrelay.turn.kind": "action" if request.action else "message",
            # From the turn's creation (or, after a handoff, its republishing) to this worker taking it.
            "kitrelay.queue_wait_ms": round(queue_wait_s * 1000, 3),
            "messaging.system": "nats",
            "messaging.operation.type": "process",
            "messaging.destination.name": msg.subject,
            "messaging.message.id": f"{request.turn_id}:{request.hops}",
            "messaging.consumer.group.name": turns_consumer(self._settings.NAMESPACE, self.kind),
        }
        return tracer().start_as_current_span(
            f"process {request.agent} turn",
            context=parent_context(request.trace, msg.headers),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        )

    async def _handle_turn(self, msg: Msg, request: TurnRequest, attempt: int, span: trace.Span) -> None:
        kind = "action" if request.action else "message"
        log.info(
            "turn %s (%s, %s) hop %d attempt %d started", request.turn_id, request.agent, kind, request.hops, attempt
        )
        if attempt > self._settings.TURN_MAX_DELIVER:
            span.set_status(Status(StatusCode.ERROR, "dead-lettered"))
            await self._dead_letter(msg, request, attempt)
            return
        heartbeat = asyncio.create_task(self._heartbeat(msg))
        control = self._controls[request.turn_id] = TurnControl()
        self._started.inc()
        self._in_flight_gauge.inc()
        started = time.monotonic()
        try:
            await run_turn(request, attempt=attempt, agent=self._agent, deps=self._deps, control=control)
        except asyncio.CancelledError:
            # Drain deadline passed: give the turn back so another worker redoes it now.
            span.set_status(Status(StatusCode.ERROR, "given back on shutdown"))
            await asyncio.shield(msg.nak())
            raise
        except (RunNotOpenedError, RunSupersededError) as exc:
            # A newer attempt of this turn holds the message: an ack or a nak from here would be taken as its own.
            span.set_status(Status(StatusCode.ERROR, "superseded"))
            log.warning("turn %s attempt %d stops: %s", request.turn_id, attempt, exc)
            return
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, "not written; redelivered"))
            delay = redelivery_delay_s(attempt)
            log.exception(
                "turn %s attempt %d could not be written; redelivered in %.0fs", request.turn_id, attempt, delay
            )
            # An outage (Redis or the database restarting) outlives a fixed short delay: the attempts spread over
            # about REDELIVERY_DELAYS_S's sum, then the turn is dead-lettered with a message to the user.
            with contextlib.suppress(Exception):
                await msg.nak(delay=delay)
            return
        finally:
            heartbeat.cancel()
            self._controls.pop(request.turn_id, None)
            self._in_flight_gauge.dec()
            self._duration.observe(time.monotonic() - started)
        # Wait for JetStream to confirm the ack: only then is the turn surely not redelivered, and only then is
        # the slot given back.
        await msg.ack_sync()
        self.turns_done += 1

    async def _dead_letter(self, msg: Msg, request: TurnRequest, attempt: int) -> None:
        reason = f"failed {attempt - 1} deliveries"
        log.error("turn %s %s: dead-lettered", request.turn_id, reason)
        await self._js.publish(
            dead_letter_subject(self._settings.NAMESPACE, self.kind),
            msg.data,
            headers={"Nats-Msg-Id": f"dead:{request.turn_id}:{request.hops}", "Kitrelay-Reason": reason},
        )
        await dead_letter(request, attempt=attempt, deps=self._deps, reason=reason)
        await msg.ack_sync()

    async def _on_stop_request(self, msg: Msg) -> None:
        turn_id = msg.subject.rsplit(".", 1)[-1]
        control = self._controls.get(turn_id)
        if control is None:
            return  # another worker runs it (or nobody does: the gateway then ends it itself)
        log.info("turn %s: stop requested", turn_id)
        control.stop("stopped by the user")
        with contextlib.suppress(Exception):
            await msg.respond(b"stopping")

    async def _watch_detached(self) -> None:
        """With DETACHED_TURN_POLICY=cancel: stop a turn no client has followed for DETACHED_GRACE_S."""
        grace = self._settings.DETACHED_GRACE_S
        redis = self._deps.redis
        while True:
            await asyncio.sleep(min(1.0, grace / 2))
            now = time.monotonic()
            for turn_id, control in list(self._controls.items()):
                if now - control.started_at < grace:
                    continue
                if not await redis.exists(turn_watch_key(self._settings.NAMESPACE, turn_id)):
                    log.info("turn %s: no client for %.0fs, stopping it", turn_id, grace)
                    control.stop(f"no client followed the turn for {grace:.0f}s")

    async def _heartbeat(self, msg: Msg) -> None:
        """Tell JetStream the turn is still being worked on, so a long turn is not redelivered while alive: three
        times per ack wait, so that one lost beat (a busy moment) is not yet a redelivery."""
        interval = max(0.5, self._settings.TURN_ACK_WAIT_S / 3)
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    async def _drain(self) -> None:
        if not self._in_flight:
            return
        log.info(
            "draining %d in-flight turns (up to %.0fs)", len(self._in_flight), self._settings.WORKER_DRAIN_TIMEOUT_S
        )
        _, pending = await asyncio.wait(set(self._in_flight), timeout=self._settings.WORKER_DRAIN_TIMEOUT_S)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


async def serve(kind: AgentKind, settings: Settings, *, handle_signals: bool = True) -> None:
    """The worker process: connect, run until SIGTERM/SIGINT, drain, close in reverse order."""
    if settings.WORKER_METRICS_PORT:
        serve_metrics(settings.WORKER_METRICS_PORT)
    agent = build_agent(kind, widget_tools_answer=settings.WIDGET_TOOLS_ANSWER)
    nc = await connect_nats(settings, name=f"kitrelay-worker-{kind}")
    redis = await connect_redis(settings)
    engine = make_engine(settings.DATABASE_URL)
    sessions = make_sessionmaker(engine)
    deps = TurnDeps(
        js=nc.jetstream(),
        redis=redis,
        store=TurnStore(sessions),
        tasks=TaskService(sessions, events=TaskEventPublisher(redis, settings.NAMESPACE)),
        knowledge=KnowledgeService(sessions),
        turns=TurnRecords(sessions),
        provider=model_provider(settings),
        model=model_for(settings, kind),
        history_token_budget=settings.HISTORY_TOKEN_BUDGET,
        namespace=settings.NAMESPACE,
        history_items=settings.HISTORY_ITEMS,
        stream_ttl_s=settings.TURN_STREAM_TTL_S,
        stream_ttl_after_end_s=settings.TURN_STREAM_TTL_AFTER_END_S,
        max_handoff_hops=settings.MAX_HANDOFF_HOPS,
        redis_replicated=settings.redis_is_replicated,
    )
    worker = Worker(kind=kind, nc=nc, agent=agent, deps=deps, settings=settings)
    if handle_signals:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
    # Startup's objects live as long as the process: no garbage collection needs to scan them again.
    settle_after_startup()
    try:
        await worker.run()
    finally:
        await nc.drain()
        await redis.aclose()
        await engine.dispose()
        log.info("worker %s stopped after %d turns", kind, worker.turns_done)


def main(kind: AgentKind, settings: Settings) -> None:
    configure_logging(settings)
    telemetry = setup_telemetry(f"kitrelay-worker-{kind}", settings)
    if telemetry.exporting:
        # Else the SDK's tracing stays off (turn_runner): its spans would go nowhere.
        install_agents_tracing(settings)
    try:
        asyncio.run(serve(kind, settings))
    finally:
        # Drained and leaving: the loop's handlers are gone, and a repeated SIGTERM (an impatient supervisor) must
        # not cut the last export short or turn a clean exit into a killed one.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        telemetry.shutdown()
