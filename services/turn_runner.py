"""Runs one turn: load the thread and its recent history, run the agent, write every event to the turn log."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis.asyncio as aioredis
from agents import Agent, ModelProvider, RunConfig, Runner
from chatkit.agents import AgentContext, ThreadItemConverter, stream_agent_response
from chatkit.store import NotFoundError
from chatkit.types import ErrorEvent

from kitrelay.agents.context import TurnContext
from kitrelay.services.tasks import TaskService
from kitrelay.services.turn_log import TurnLog
from kitrelay.shared.messages import TurnRequest
from kitrelay.shared.store.chatkit_store import SqlStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TurnDeps:
    """What every turn of a worker shares: built once in the worker's main, passed down explicitly."""

    redis: aioredis.Redis
    store: SqlStore[TurnContext]
    tasks: TaskService
    provider: ModelProvider
    model: str | None
    namespace: str
    history_items: int
    stream_ttl_s: int


async def run_turn(
    request: TurnRequest, *, attempt: int, agent: Agent[AgentContext[TurnContext]], deps: TurnDeps
) -> None:
    """Run the turn to its terminal entry. Failures of the agent become a ChatKit error event plus a failed end;
    failures of Redis or the store propagate, so the caller leaves the message un-acked for redelivery."""
    context = TurnContext(
        identity=request.identity, turn_id=request.turn_id, thread_id=request.thread_id, tasks=deps.tasks
    )
    turn_log = TurnLog(
        redis=deps.redis,
        store=deps.store,
        context=context,
        namespace=deps.namespace,
        thread_id=request.thread_id,
        turn_id=request.turn_id,
        attempt=attempt,
        ttl_s=deps.stream_ttl_s,
        trace=request.trace,
    )
    try:
        thread = await deps.store.load_thread(request.thread_id, context=context)
    except NotFoundError:
        # The thread was deleted (or never belonged to this identity): nothing to answer, nothing to retry.
        await turn_log.emit(ErrorEvent(code="custom", message="This conversation no longer exists.", allow_retry=False))
        await turn_log.end("failed", error="thread not found")
        return

    # The user message is already stored; the model needs the conversation, not only the new message.
    page = await deps.store.load_thread_items(
        request.thread_id, after=None, limit=deps.history_items, order="desc", context=context
    )
    agent_input = await ThreadItemConverter().to_agent_input(list(reversed(page.data)))

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
            await turn_log.emit(event)
    except Exception as exc:  # the agent, a tool or the model failed: the user gets a retryable error
        log.exception("turn %s failed in the agent run", request.turn_id)
        await turn_log.emit(ErrorEvent(code="stream.error", allow_retry=True))
        await turn_log.end("failed", error=type(exc).__name__)
        return
    await turn_log.end("completed")
