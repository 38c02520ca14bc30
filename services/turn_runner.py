"""Runs one turn on a worker: a user message through the agent (handing off to another kind when the agent says
so), or a widget action straight through its handler. Every event goes through the turn log."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

import redis.asyncio as aioredis
from agents import Agent, ModelProvider, OpenAIProvider, RunConfig, Runner
from chatkit.agents import AgentContext, stream_agent_response
from chatkit.store import NotFoundError
from chatkit.types import (
    Annotation,
    AssistantMessageContentPartAnnotationAdded,
    AssistantMessageItem,
    ErrorEvent,
    Page,
    ProgressUpdateEvent,
    Thread,
    ThreadItem,
    ThreadItemDoneEvent,
    ThreadItemReplacedEvent,
    ThreadItemUpdatedEvent,
    ThreadMetadata,
    ThreadStreamEvent,
    ThreadUpdatedEvent,
    UserMessageItem,
    UserMessageTextContent,
    WidgetItem,
)
from nats.js import JetStreamContext

from kitrelay.agents.context import TurnContext
from kitrelay.agents.converter import KitrelayConverter
from kitrelay.agents.handoffs import StopsAtHandoff, find_handoff
from kitrelay.agents.providers import error_event_for
from kitrelay.agents.registry import action_handler, kind_of
from kitrelay.agents.stream_ids import with_real_ids
from kitrelay.agents.task_views import has_task_widgets, redraw
from kitrelay.agents.titles import generate_title
from kitrelay.agents.tool_answers import with_tool_answer
from kitrelay.agents.widgets import document_source, sources_copy_text, sources_widget
from kitrelay.services.knowledge import KnowledgeService, SearchHit
from kitrelay.services.tasks import TaskService
from kitrelay.services.turn_log import TurnLog, TurnLogWriteError
from kitrelay.services.turn_store import TurnStore
from kitrelay.services.turns import TurnRecords
from kitrelay.shared.agents_tracing import agents_tracing_installed
from kitrelay.shared.messages import TurnRequest, utcnow
from kitrelay.shared.settings import AgentKind
from kitrelay.shared.store.chatkit_store import RunSupersededError, WorkerRun, thread_route
from kitrelay.shared.store.engine import is_unavailable as database_unavailable
from kitrelay.shared.telemetry import current_trace_context
from kitrelay.shared.turn_bus import RunOpening, open_run, publish_turn, release_thread

log = logging.getLogger(__name__)


@dataclass
class TurnControl:
    """How the worker reaches a running turn from outside: a stop request, or the detached-turn watchdog."""

    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str = ""
    started_at: float = field(default_factory=time.monotonic)

    def stop(self, reason: str) -> None:
        if not self.stopped.is_set():
            self.reason = reason
            self.stopped.set()


@dataclass(frozen=True)
class TurnDeps:
    """What every turn of a worker shares: built once in the worker's main, passed down explicitly."""

    js: JetStreamContext
    redis: aioredis.Redis
    store: TurnStore
    tasks: TaskService
    knowledge: KnowledgeService
    turns: TurnRecords
    provider: ModelProvider
    model: str | None
    namespace: str
    history_items: int
    history_token_budget: int
    stream_ttl_s: int
    stream_ttl_after_end_s: int
    max_handoff_hops: int
    # Redis keeps replicas of every key (Sentinel, a Cluster): a turn's end waits for one.
    redis_replicated: bool = False


def cite(
    event: ThreadStreamEvent, citations: list[SearchHit], new_item_id: Callable[[], str]
) -> list[ThreadStreamEvent]:
    """Attach the turn's sources to its (first) assistant message as ChatKit annotations, whatever the model, and
    show them in a sources card right after it. Each source names its document and the passage cited, so a client
    can open the document there (GET /documents/{id}); `[n]` in the text is the n-th annotation."""
    if not citations or not isinstance(event, ThreadItemDoneEvent):
        return [event]
    item = event.item
    if not isinstance(item, AssistantMessageItem) or not item.content:
        return [event]
    hits = list(citations)
    citations.clear()  # one answer cites them; a later message of the turn does not again
    part = item.content[0]
    start = len(part.annotations)
    added = [Annotation(source=document_source(hit), index=len(part.text)) for hit in hits]
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
    sources = WidgetItem(
        id=new_item_id(),
        thread_id=item.thread_id,
        created_at=datetime.now(),
        widget=sources_widget(hits),
        copy_text=sources_copy_text(hits),
    )
    return [*updates, event, ThreadItemDoneEvent(item=sources)]


def _context(request: TurnRequest, deps: TurnDeps) -> TurnContext:
    # Identity comes from the turn message the gateway wrote, never from anything a model said.
    return TurnContext(
        identity=request.identity,
        turn_id=request.turn_id,
        thread_id=request.thread_id,
        tasks=deps.tasks,
        knowledge=deps.knowledge,
        widgets=deps.store,
    )


def _turn_log(
    request: TurnRequest, attempt: int, context: TurnContext, deps: TurnDeps, *, with_question: bool = True
) -> TurnLog:
    return TurnLog(
        redis=deps.redis,
        store=deps.store,
        turns=deps.turns,
        context=context,
        namespace=deps.namespace,
        thread_id=request.thread_id,
        turn_id=request.turn_id,
        hop=request.hops,
        attempt=attempt,
        ttl_s=deps.stream_ttl_s,
        ttl_after_end_s=deps.stream_ttl_after_end_s,
        replicated=deps.redis_replicated,
        # Entries carry this worker's span of the turn, so whoever reads them can join the turn's trace.
        trace=current_trace_context(request.trace),
        agent=request.agent,
        question=request.user_item if with_question else None,
    )


class RunNotOpenedError(Exception):
    """This delivery of a turn must not run: a newer attempt of its hop runs it (a duplicate delivery of a message
    still in flight). Its worker neither acks nor naks it: the message belongs to that newer attempt."""


async def run_turn(
    request: TurnRequest,
    *,
    attempt: int,
    agent: Agent[AgentContext[TurnContext]],
    deps: TurnDeps,
    control: TurnControl | None = None,
) -> None:
    """Run the turn to its terminal entry, or to its handoff. Failures of the agent become a ChatKit error event
    plus a failed end; failures of Redis, NATS or the store propagate, so the caller leaves the message un-acked
    for redelivery. RunNotOpenedError (and RunSupersededError, once running) when another run has the turn."""
    context = _context(request, deps)

    def open_conversation() -> Awaitable[_ActionOpening | tuple[ThreadMetadata, list[ThreadItem]] | None]:
        if request.action is not None:
            return _open_action(request, context, deps)
        return _open_or_none(request, context, deps)

    claim = open_run(
        deps.redis, deps.namespace, request.turn_id, hop=request.hops, attempt=attempt, ttl_s=deps.stream_ttl_s
    )
    removed: list[str] = []
    if attempt == 1:
        # Both at once, before the turn's first event. Redis's claim is sent first: on SQLite the read of the
        # conversation then runs on this thread without a pause (shared/store/sqlite_driver.py) while Redis answers.
        opened, opening = await asyncio.gather(claim, open_conversation())
        if not _may_run(request, attempt, opened):
            return
    else:
        # A redelivered run answers from the conversation as it was before the turn: what the dead attempt saved
        # (a widget, a tool's output, the start of a reply) is removed before anything is read, whether or not
        # the turn's Redis stream survived. From then on the dead attempt, if it lives on, can save nothing.
        opened = await claim
        if opened == "over":
            # Its end may have been written without the thread's release (the write that failed): free the thread.
            await release_thread(deps.redis, deps.namespace, request.thread_id, request.turn_id)
        if not _may_run(request, attempt, opened):
            return
        with contextlib.suppress(NotFoundError):  # the thread is gone: the opening says so
            removed = await deps.store.supersede_run(
                request.thread_id, WorkerRun(request.turn_id, request.hops, attempt), context
            )
        opening = await open_conversation()
    # A thread that is gone (or not the caller's) has no place for the user's message: only its end is recorded.
    turn_log = _turn_log(request, attempt, context, deps, with_question=opening is not None)
    if attempt > 1:
        await turn_log.withdraw_earlier_attempts(removed)
    if opening is None:
        # The thread was deleted (or never belonged to this identity): nothing to answer, nothing to retry.
        await turn_log.emit(ErrorEvent(code="custom", message="This conversation no longer exists.", allow_retry=False))
        await turn_log.end("failed", error="thread not found", record=False)
        return
    if isinstance(opening, _ActionOpening):
        await _run_action(request, opening.sender, context, turn_log)
        return

    thread, history = opening
    title = None
    if request.hops == 0:
        title = _title_task(thread, history, deps)
        history = await _redraw_task_widgets(history, context, turn_log)
    await _run_agent(
        request,
        thread,
        history,
        agent=agent,
        context=context,
        turn_log=turn_log,
        deps=deps,
        control=control or TurnControl(),
        title=title,
    )


def _title_task(thread: ThreadMetadata, history: list[ThreadItem], deps: TurnDeps) -> asyncio.Task[str | None] | None:
    """A thread's first message, answered by a real model: its title is asked for beside the run."""
    # A real model is an OpenAI-compatible endpoint (agents/providers.py); the offline model, or a scripted one in
    # a test, writes no titles.
    if not isinstance(deps.provider, OpenAIProvider):
        return None
    messages = [item for item in history if isinstance(item, UserMessageItem)]
    if len(messages) != 1:
        return None
    text = " ".join(part.text for part in messages[0].content if isinstance(part, UserMessageTextContent))
    return asyncio.create_task(generate_title(deps.provider, deps.model, text), name=f"title of {thread.id}")


async def _title_thread(
    title: asyncio.Task[str | None] | None,
    thread: ThreadMetadata,
    context: TurnContext,
    turn_log: TurnLog,
    deps: TurnDeps,
) -> None:
    """Give the thread the model's title (saved, and `thread.updated` to its clients), unless it was renamed since
    the turn started."""
    if title is None:
        return
    generated = await title
    if not generated:
        return
    try:
        current = await deps.store.load_thread(thread.id, context=context)
    except NotFoundError:
        return
    if current.title != thread.title or current.title == generated:
        return
    current.title = generated
    await deps.store.save_thread(current, context=context)
    await turn_log.emit(ThreadUpdatedEvent(thread=Thread(**current.model_dump(), items=Page(data=[]))))


async def _redraw_task_widgets(history: list[ThreadItem], context: TurnContext, turn_log: TurnLog) -> list[ThreadItem]:
    """The thread's task widgets that changed since they were drawn (a teammate, the CLI or another thread changed
    a task) are drawn again first: replaced and saved, so that the model reads what is true and a client that
    does not follow its team's events (ChatKit JS) shows it from this turn on. No query when the history shows
    no task widget."""
    if not has_task_widgets(history):
        return history
    changed = await redraw(history, context.tasks, context.identity)
    for item in changed.values():
        await turn_log.emit(ThreadItemReplacedEvent(item=item))
    return [changed.get(item.id, item) for item in history]


def _may_run(request: TurnRequest, attempt: int, opened: RunOpening) -> bool:
    """Whether this run may go on (its claim on the turn is "open"). False, to be acked, when the turn is over or a
    later hop runs it; RunNotOpenedError when a newer attempt of this hop has it."""
    if opened == "open":
        return True
    if opened == "stale":
        raise RunNotOpenedError(f"turn {request.turn_id}: a newer attempt than {attempt} of hop {request.hops} runs it")
    # Over: finished before a lost ack (or before its thread's release: `run_turn` releases it again), or given up by
    # the gateway while no worker took it. Later: this hop handed the turn on and died before its ack.
    why = "already over" if opened == "over" else "already with a later hop"
    log.info("turn %s is %s; attempt %d of hop %d does not run", request.turn_id, why, attempt, request.hops)
    return False


@dataclass(frozen=True)
class _ActionOpening:
    """A widget action's turn, opened: the widget it came from (None when it names none, or that item is no
    widget any more)."""

    sender: WidgetItem | None


async def _open_action(request: TurnRequest, context: TurnContext, deps: TurnDeps) -> _ActionOpening | None:
    """The widget an action came from, read with the check that the thread is the caller's: one read (the thread
    is read only when the action names no item, or its item is gone). None when the thread is gone."""
    assert request.action is not None  # run_turn opens only actions here
    try:
        if request.action.item_id is not None:
            # The handler redraws the widget: the one stored is not validated (milliseconds for a task list).
            sender = await deps.store.load_widget_sender(request.thread_id, request.action.item_id, context=context)
            if sender is not None:
                return _ActionOpening(sender)
    except NotFoundError:
        pass
    try:
        await deps.store.load_thread(request.thread_id, context=context)
    except NotFoundError:
        return None
    return _ActionOpening(None)


async def _open_or_none(
    request: TurnRequest, context: TurnContext, deps: TurnDeps
) -> tuple[ThreadMetadata, list[ThreadItem]] | None:
    """The thread and the conversation so far (the user's message is already stored): one read."""
    try:
        if request.thread is not None and request.thread.id == request.thread_id:
            # The gateway sent the thread along; reading the history still checks it exists and is the caller's.
            history = await deps.store.load_history(
                request.thread_id, deps.history_items, context, turn_message=request.user_item
            )
            return request.thread, history
        return await deps.store.open_turn(request.thread_id, deps.history_items, context)
    except NotFoundError:
        return None


async def _run_agent(
    request: TurnRequest,
    thread: ThreadMetadata,
    history: list[ThreadItem],
    *,
    agent: Agent[AgentContext[TurnContext]],
    context: TurnContext,
    turn_log: TurnLog,
    deps: TurnDeps,
    control: TurnControl,
    title: asyncio.Task[str | None] | None = None,
) -> None:
    try:
        await _run_agent_titled(
            request,
            thread,
            history,
            agent=agent,
            context=context,
            turn_log=turn_log,
            deps=deps,
            control=control,
            title=title,
        )
    finally:
        if title is not None and not title.done():
            title.cancel()


async def _run_agent_titled(
    request: TurnRequest,
    thread: ThreadMetadata,
    history: list[ThreadItem],
    *,
    agent: Agent[AgentContext[TurnContext]],
    context: TurnContext,
    turn_log: TurnLog,
    deps: TurnDeps,
    control: TurnControl,
    title: asyncio.Task[str | None] | None,
) -> None:
    converter = KitrelayConverter(token_budget=deps.history_token_budget)
    agent_input = await converter.to_agent_input(history)
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
            # The SDK's default trace exporter uploads to OpenAI: tracing runs only once the OpenTelemetry bridge
            # has replaced it (shared/agents_tracing.py), so nothing leaves this deployment unless configured.
            tracing_disabled=not agents_tracing_installed(),
        ),
    )

    async def relay_events() -> None:
        run = StopsAtHandoff(result)
        # Chat-completions models give every message the id "__fake_id__": each gets a real one here. A run that
        # ended at a widget tool gets the tool's line as its reply.
        events = with_tool_answer(
            with_real_ids(
                stream_agent_response(agent_context, run.streamed()),
                lambda: deps.store.generate_item_id("message", thread, context),
            ),
            result,
            agent_context,
        )
        new_item_id = functools.partial(deps.store.generate_item_id, "message", thread, context)
        async for event in events:
            for out in cite(event, context.citations, new_item_id):
                await turn_log.emit(out)
        if run.handoff is not None:
            raise run.handoff

    running = asyncio.create_task(relay_events())
    stop_requested = asyncio.create_task(control.stopped.wait())
    try:
        await asyncio.wait({running, stop_requested}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop_requested.cancel()
        if not running.done():
            # Stopped: end the model's stream now; what it said so far is saved as a stopped reply.
            running.cancel()
            result.cancel()
            await asyncio.gather(running, return_exceptions=True)
    if running.cancelled():
        await turn_log.stop(control.reason)
        return
    try:
        running.result()
    except (TurnLogWriteError, RunSupersededError):
        raise  # not the agent's failure: the worker leaves the turn to be redelivered, or to its newer run
    except Exception as exc:
        if (signal := find_handoff(exc)) is not None:
            await _title_thread(title, thread, context, turn_log, deps)
            await _hand_off(request, signal.target, turn_log, deps)
            return
        if database_unavailable(exc):
            # A tool met the database restarting: the turn is redone once it is back (the tool's writes are
            # replay-safe), not answered with an error.
            raise TurnLogWriteError(f"turn {request.turn_id}: the database is away: {exc!r}") from exc
        # The agent, a tool or the model failed: the user gets a clear error (retryable where that may help).
        log.exception("turn %s failed in the agent run", request.turn_id)
        await turn_log.emit(error_event_for(exc))
        await turn_log.end("failed", error=type(exc).__name__)
        return
    await _title_thread(title, thread, context, turn_log, deps)
    # This kind answered: the thread's next message comes straight here (written only when that changes).
    await turn_log.end("completed", route=request.agent if thread_route(thread) != request.agent else None)


async def dead_letter(request: TurnRequest, *, attempt: int, deps: TurnDeps, reason: str) -> None:
    """A turn that failed every delivery: tell the user (retryable: the cause may have passed) and end it. What
    the failed attempts saved is removed first, as a new attempt would."""
    context = _context(request, deps)
    opened = await open_run(
        deps.redis, deps.namespace, request.turn_id, hop=request.hops, attempt=attempt, ttl_s=deps.stream_ttl_s
    )
    if not _may_run(request, attempt, opened):
        return
    try:
        removed = await deps.store.supersede_run(
            request.thread_id, WorkerRun(request.turn_id, request.hops, attempt), context
        )
    except NotFoundError:
        removed = []
    turn_log = _turn_log(request, attempt, context, deps)
    await turn_log.withdraw_earlier_attempts(removed)
    message = "Sorry, this message could not be answered after several attempts. Please try again."
    await turn_log.emit(ErrorEvent(code="custom", message=message, allow_retry=True))
    await turn_log.end("failed", error=reason)


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
    # created_at restarts: the next worker's queue wait is measured from the handoff.
    handed = request.model_copy(update={"agent": kind, "hops": request.hops + 1, "created_at": utcnow()})
    await publish_turn(deps.js, deps.namespace, handed)


async def _run_action(request: TurnRequest, sender: WidgetItem | None, context: TurnContext, turn_log: TurnLog) -> None:
    assert request.action is not None  # run_turn dispatches here only for actions
    handler = action_handler(request.agent)
    if handler is None:
        await turn_log.emit(ErrorEvent(code="custom", message="This action is not available.", allow_retry=False))
        await turn_log.end("failed", error=f"no action handler for {request.agent}")
        return
    if request.action.item_id is not None and sender is None:
        await turn_log.emit(ErrorEvent(code="custom", message="That widget is gone.", allow_retry=False))
        await turn_log.end("failed", error="action sender not found")
        return
    async for event in handler(request.action, context, sender):
        await turn_log.emit(event)
    await turn_log.end("completed")
