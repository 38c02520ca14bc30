"""Runs one turn on a worker: a user message through the agent (handing off to another kind when the agent says
so), or a widget action straight through its handler. Every event goes through the turn log."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis.asyncio as aioredis
from agents import Agent, ModelProvider, RunConfig, Runner
from chatkit.agents import AgentContext, stream_agent_response
from chatkit.store import NotFoundError
from chatkit.types import (
    Annotation,
    AssistantMessageContentPartAnnotationAdded,
    AssistantMessageItem,
    ErrorEvent,
    FileSource,
    ProgressUpdateEvent,
    ThreadItemDoneEvent,
    ThreadItemUpdatedEvent,
    ThreadStreamEvent,
    WidgetItem,
)
from nats.js import JetStreamContext

from kitrelay.agents.context import TurnContext
from kitrelay.agents.converter import KitrelayConverter
from kitrelay.agents.handoffs import find_handoff
from kitrelay.agents.registry import action_handler, kind_of
from kitrelay.services.knowledge import KnowledgeService, SearchHit
from kitrelay.services.tasks import TaskService
from kitrelay.services.turn_log import TurnLog
from kitrelay.shared.messages import TurnRequest
from kitrelay.shared.settings import AgentKind
from kitrelay.shared.store.chatkit_store import SqlStore
from kitrelay.shared.turn_bus import last_entry, publish_turn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TurnDeps:
    """What every turn of a worker shares: built once in the worker's main, passed down explicitly."""

    js: JetStreamContext
    redis: aioredis.Redis
    store: SqlStore[TurnContext]
    tasks: TaskService
    knowledge: KnowledgeService
    provider: ModelProvider
    model: str | None
    namespace: str
    history_items: int
    stream_ttl_s: int
    max_handoff_hops: int


def _cite(event: ThreadStreamEvent, citations: list[SearchHit]) -> list[ThreadStreamEvent]:
    """Attach the turn's sources to its assistant message as ChatKit file annotations (whatever the model)."""
    if not citations or not isinstance(event, ThreadItemDoneEvent):
        return [event]
    item = event.item
    if not isinstance(item, AssistantMessageItem) or not item.content:
        return [event]
    part = item.content[0]
    start = len(part.annotations)
    added = [
        Annotation(
            source=FileSource(title=hit.title, filename=hit.title, description=hit.snippet), index=len(part.text)
        )
        for hit in citations
    ]
    part.annotations.extend(added)
    updates: list[ThreadStreamEvent] = [
        ThreadItemUpdatedEvent(
            item_id=item.id,
            update=AssistantMessageContentPartAnnotationAdded(
                content_index=0, annotation_index=start + n, annotation=annotation
            ),
        )
        for n, annotation in enumerate(added)
    ]
    return [*updates, event]


def _turn_log(request: TurnRequest, attempt: int, context: TurnContext, deps: TurnDeps) -> TurnLog:
    return TurnLog(
        redis=deps.redis,
        store=deps.store,
        context=context,
        namespace=deps.namespace,
        thread_id=request.thread_id,
        turn_id=request.turn_id,
        hop=request.hops,
        attempt=attempt,
        ttl_s=deps.stream_ttl_s,
        trace=request.trace,
    )


async def run_turn(
    request: TurnRequest, *, attempt: int, agent: Agent[AgentContext[TurnContext]], deps: TurnDeps
) -> None:
    """Run the turn to its terminal entry, or to its handoff. Failures of the agent become a ChatKit error event
    plus a failed end; failures of Redis, NATS or the store propagate, so the caller leaves the message un-acked
    for redelivery."""
    context = TurnContext(
        identity=request.identity,
        turn_id=request.turn_id,
        thread_id=request.thread_id,
        tasks=deps.tasks,
        knowledge=deps.knowledge,
    )
    previous = await last_entry(deps.redis, deps.namespace, request.turn_id)
    if previous is not None and previous.is_terminal:
        # Already over: finished before a lost ack, or given up by the gateway while no worker was free.
        log.info("turn %s is already over; not running it again", request.turn_id)
        return
    turn_log = _turn_log(request, attempt, context, deps)
    try:
        thread = await deps.store.load_thread(request.thread_id, context=context)
    except NotFoundError:
        # The thread was deleted (or never belonged to this identity): nothing to answer, nothing to retry.
        await turn_log.emit(ErrorEvent(code="custom", message="This conversation no longer exists.", allow_retry=False))
        await turn_log.end("failed", error="thread not found")
        return
    if request.action is not None:
        await _run_action(request, context, turn_log, deps)
        return

    # The user message is already stored; the model needs the conversation, not only the new message.
    page = await deps.store.load_thread_items(
        request.thread_id, after=None, limit=deps.history_items, order="desc", context=context
    )
    agent_input = await KitrelayConverter().to_agent_input(list(reversed(page.data)))
    agent_context = AgentContext[TurnContext](thread=thread, store=deps.store, request_context=context)
    result = Runner.run_streamed(
        agent,
        agent_input,
        context=agent_context,
        run_config=RunConfig(
            model=deps.model,
            model_provider=deps.provider,
            group_id=request.thread_id,
            workflow_name=f"kitrelay {request.agent} turn",
            # The SDK's default trace exporter uploads to OpenAI; nothing leaves this deployment unless configured.
            tracing_disabled=True,
        ),
    )
    try:
        async for event in stream_agent_response(agent_context, result):
            for out in _cite(event, context.citations):
                await turn_log.emit(out)
    except Exception as exc:
        if (signal := find_handoff(exc)) is not None:
            await _hand_off(request, signal.target, turn_log, deps)
            return
        # The agent, a tool or the model failed: the user gets a retryable error.
        log.exception("turn %s failed in the agent run", request.turn_id)
        await turn_log.emit(ErrorEvent(code="stream.error", allow_retry=True))
        await turn_log.end("failed", error=type(exc).__name__)
        return
    await turn_log.end("completed")


async def _hand_off(request: TurnRequest, target: str, turn_log: TurnLog, deps: TurnDeps) -> None:
    kind: AgentKind | None = kind_of(target)
    if kind is None or request.hops >= deps.max_handoff_hops:
        reason = f"unknown agent {target!r}" if kind is None else f"more than {deps.max_handoff_hops} handoffs"
        log.warning("turn %s: handoff refused (%s)", request.turn_id, reason)
        await turn_log.emit(
            ErrorEvent(code="custom", message="Sorry, I could not route this request.", allow_retry=True)
        )
        await turn_log.end("failed", error=f"handoff refused: {reason}")
        return
    await turn_log.emit(ProgressUpdateEvent(text=f"Handing over to {target}…", icon="agent"))
    await turn_log.handoff(kind)
    # Same turn, same stream, next hop: the receiving worker continues where this one stopped. The publish is
    # acknowledged by JetStream before this worker acks its own message.
    await publish_turn(deps.js, deps.namespace, request.model_copy(update={"agent": kind, "hops": request.hops + 1}))


async def _run_action(request: TurnRequest, context: TurnContext, turn_log: TurnLog, deps: TurnDeps) -> None:
    assert request.action is not None  # run_turn dispatches here only for actions
    handler = action_handler(request.agent)
    if handler is None:
        await turn_log.emit(ErrorEvent(code="custom", message="This action is not available.", allow_retry=False))
        await turn_log.end("failed", error=f"no action handler for {request.agent}")
        return
    sender: WidgetItem | None = None
    if request.action.item_id is not None:
        try:
            item = await deps.store.load_item(request.thread_id, request.action.item_id, context=context)
        except NotFoundError:
            item = None
        if not isinstance(item, WidgetItem):
            await turn_log.emit(ErrorEvent(code="custom", message="That widget is gone.", allow_retry=False))
            await turn_log.end("failed", error="action sender not found")
            return
        sender = item
    async for event in handler(request.action, context, sender):
        await turn_log.emit(event)
    await turn_log.end("completed")
