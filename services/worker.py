"""An agent worker: pulls turns of one agent kind from its JetStream consumer and runs them concurrently.

All workers of one kind bind to the same durable consumer, so they share the load; a turn is acked only after
its terminal entry is in the turn's Redis stream, so a worker that dies mid-turn leaves it to be redelivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import nats.errors
from agents import Agent
from chatkit.agents import AgentContext
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from pydantic import ValidationError

from kitrelay.agents.context import TurnContext
from kitrelay.agents.providers import model_name, model_provider
from kitrelay.agents.registry import build_agent
from kitrelay.services.knowledge import KnowledgeService
from kitrelay.services.tasks import TaskService
from kitrelay.services.turn_runner import TurnDeps, run_turn
from kitrelay.shared.connections import connect_nats, connect_redis, ensure_turns_stream
from kitrelay.shared.logging import configure_logging
from kitrelay.shared.messages import TurnRequest
from kitrelay.shared.names import turns_consumer, turns_stream, turns_subject
from kitrelay.shared.settings import AgentKind, Settings
from kitrelay.shared.store.chatkit_store import SqlStore
from kitrelay.shared.store.engine import make_engine, make_sessionmaker

log = logging.getLogger(__name__)

FETCH_TIMEOUT_S = 1.0


class Worker:
    def __init__(
        self,
        *,
        kind: AgentKind,
        js: JetStreamContext,
        agent: Agent[AgentContext[TurnContext]],
        deps: TurnDeps,
        settings: Settings,
    ) -> None:
        self.kind = kind
        self._js = js
        self._agent = agent
        self._deps = deps
        self._settings = settings
        self._in_flight: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self.turns_done = 0

    async def run(self) -> None:
        """Pull and run turns until `stop()` is called, then drain."""
        namespace = self._settings.NAMESPACE
        await ensure_turns_stream(self._js, namespace)
        sub = await self._js.pull_subscribe(
            turns_subject(namespace, self.kind),
            durable=turns_consumer(namespace, self.kind),
            stream=turns_stream(namespace),
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self._settings.TURN_ACK_WAIT_S,
                max_deliver=self._settings.TURN_MAX_DELIVER,
            ),
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
                for msg in msgs:
                    self._spawn(msg)
        finally:
            await self._drain()
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

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
        kind = "action" if request.action else "message"
        log.info(
            "turn %s (%s, %s) hop %d attempt %d started", request.turn_id, request.agent, kind, request.hops, attempt
        )
        heartbeat = asyncio.create_task(self._heartbeat(msg))
        try:
            await run_turn(request, attempt=attempt, agent=self._agent, deps=self._deps)
        except asyncio.CancelledError:
            # Drain deadline passed: give the turn back so another worker redoes it now.
            await asyncio.shield(msg.nak())
            raise
        except Exception:
            log.exception("turn %s attempt %d could not be written; it will be redelivered", request.turn_id, attempt)
            await msg.nak(delay=1.0)
            return
        finally:
            heartbeat.cancel()
        # Wait for JetStream to confirm the ack: only then is the turn surely not redelivered, and only then is
        # the slot given back.
        await msg.ack_sync()
        self.turns_done += 1

    async def _heartbeat(self, msg: Msg) -> None:
        """Tell JetStream the turn is still being worked on, so a long turn is not redelivered while alive."""
        interval = max(1.0, self._settings.TURN_ACK_WAIT_S / 3)
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
    agent = build_agent(kind)
    nc = await connect_nats(settings, name=f"kitrelay-worker-{kind}")
    redis = await connect_redis(settings)
    engine = make_engine(settings.DATABASE_URL)
    sessions = make_sessionmaker(engine)
    js = nc.jetstream()
    deps = TurnDeps(
        js=js,
        redis=redis,
        store=SqlStore(sessions),
        tasks=TaskService(sessions),
        knowledge=KnowledgeService(sessions),
        provider=model_provider(settings),
        model=model_name(settings),
        namespace=settings.NAMESPACE,
        history_items=settings.HISTORY_ITEMS,
        stream_ttl_s=settings.TURN_STREAM_TTL_S,
        max_handoff_hops=settings.MAX_HANDOFF_HOPS,
    )
    worker = Worker(kind=kind, js=js, agent=agent, deps=deps, settings=settings)
    if handle_signals:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
    try:
        await worker.run()
    finally:
        await nc.drain()
        await redis.aclose()
        await engine.dispose()
        log.info("worker %s stopped after %d turns", kind, worker.turns_done)


def main(kind: AgentKind, settings: Settings) -> None:
    configure_logging(settings)
    asyncio.run(serve(kind, settings))
