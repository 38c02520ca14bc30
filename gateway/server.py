"""The gateway's ChatKit server: it runs no agent. A user message (respond) or a widget click (action) becomes a
turn handed to the workers over NATS JetStream, and the turn's events are relayed back from its Redis stream."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from chatkit.actions import Action
from chatkit.errors import ErrorCode
from chatkit.server import ChatKitServer
from chatkit.store import AttachmentStore
from chatkit.types import (
    ClientEffectEvent,
    ErrorEvent,
    ThreadItem,
    ThreadMetadata,
    ThreadStreamEvent,
    UserMessageItem,
    WidgetItem,
)
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from kitrelay.gateway.context import RequestContext
from kitrelay.gateway.store import GatewayStore
from kitrelay.gateway.titles import thread_title
from kitrelay.gateway.turn_relay import (
    BUSY_MESSAGE,
    FollowedTurn,
    HandOverDelayedError,
    TurnNotStartedError,
    TurnRejectedError,
    TurnRelay,
)
from kitrelay.services.feedback import FeedbackService
from kitrelay.shared.messages import TurnRequest, WidgetAction
from kitrelay.shared.metrics import TIME_TO_FIRST_EVENT, TURNS_IN_FLIGHT
from kitrelay.shared.names import action_agent
from kitrelay.shared.settings import AgentKind
from kitrelay.shared.store.chatkit_store import thread_metadata, thread_route
from kitrelay.shared.telemetry import tracer

log = logging.getLogger(__name__)

# The first event of every relayed turn names it, so a client can re-attach (GET /turns/{id}/events) or stop it.
TURN_EFFECT = "kitrelay.turn"
NOT_STARTED_MESSAGE = "Sorry, something went wrong on our side and this message was not answered. Please try again."


class RelayChatKitServer(ChatKitServer[RequestContext]):
    def __init__(
        self,
        *,
        store: GatewayStore,
        attachment_store: AttachmentStore[RequestContext] | None,
        feedback: FeedbackService,
        relay: TurnRelay,
    ) -> None:
        super().__init__(store, attachment_store)
        self._threads = store
        self._feedback = feedback
        self.relay = relay

    async def respond(
        self, thread: ThreadMetadata, input_user_message: UserMessageItem | None, context: RequestContext
    ) -> AsyncIterator[ThreadStreamEvent]:
        if thread.title is None and input_user_message is not None:
            # Named after its first message, for every client at once: the SDK saves the thread and streams
            # thread.updated after the next event.
            thread.title = thread_title(input_user_message)
        turn = TurnRequest(
            turn_id=context.turn_id_for(thread.id),
            thread_id=thread.id,
            identity=context.identity,
            agent=self._route(thread_route(thread)),
            user_item_id=input_user_message.id if input_user_message else None,
            thread=thread_metadata(thread),
            user_item=input_user_message,
        )
        async for event in self._run(turn, context, routed=True):
            yield event

    def _route(self, route: AgentKind | None) -> AgentKind:
        """Where a message goes: the kind that answered the thread's last message (sticky routing), else the
        entry agent (a new thread, or one whose last answer came from no agent)."""
        config = self.relay.config
        return route if config.sticky_routing and route is not None else config.entry_agent

    async def action(
        self, thread: ThreadMetadata, action: Action[str, Any], sender: WidgetItem | None, context: RequestContext
    ) -> AsyncIterator[ThreadStreamEvent]:
        """A widget click goes straight to the worker kind that owns the action: no triage, no model call."""
        agent = action_agent(action.type)
        if agent is None:
            yield ErrorEvent(code="custom", message=f"Unknown action '{action.type}'.", allow_retry=False)
            return
        payload = action.payload if isinstance(action.payload, dict) else {}
        turn = TurnRequest(
            turn_id=context.turn_id_for(thread.id),
            thread_id=thread.id,
            identity=context.identity,
            agent=agent,
            action=WidgetAction(type=action.type, payload=payload, item_id=sender.id if sender else None),
        )
        async for event in self._run(turn, context):
            yield event

    async def _run(
        self, turn: TurnRequest, context: RequestContext, *, routed: bool = False
    ) -> AsyncIterator[ThreadStreamEvent]:
        """Admit, hand over and relay `turn`. A `routed` turn (a message, not a widget action) that had to wait for
        the thread's previous turn goes where that turn left the thread's route."""
        context.relay_active = True
        # The root of the turn's trace on this side (under the HTTP request's span): the span is made current only
        # around code that does not yield, since a generator may resume in another context.
        span = tracer().start_span(
            "relay turn",
            attributes={
                "kitrelay.turn_id": turn.turn_id,
                "kitrelay.thread_id": turn.thread_id,
                "kitrelay.agent": turn.agent,
                "kitrelay.team_id": turn.identity.team_id,
            },
        )
        handed_over = False
        try:
            waited = False
            try:
                async for waiting in self.relay.admit(turn, ahead=context.claim_ahead):
                    waited = True
                    yield waiting
            except TurnRejectedError:
                span.set_status(Status(StatusCode.ERROR, "rejected: the thread is busy"))
                yield ErrorEvent(code="custom", message=BUSY_MESSAGE, allow_retry=True)
                return
            except TurnNotStartedError as exc:
                span.set_status(Status(StatusCode.ERROR, "not started: Redis is away"))
                await self.relay.not_started(turn, context.take_held(), "Redis stayed away")
                yield ErrorEvent(code="custom", message=str(exc), allow_retry=True)
                return
            if routed and waited and self.relay.config.sticky_routing:
                # The route was read before the previous turn ended, which may have changed it.
                turn.agent = self._route(await self._threads.route_of(turn.thread_id, context))
                span.set_attribute("kitrelay.agent", turn.agent)
            if routed:
                span.set_attribute(
                    "kitrelay.routed", "entry" if turn.agent == self.relay.config.entry_agent else "thread"
                )
            held = context.take_held()
            try:
                with trace.use_span(span, end_on_exit=False):
                    await self.relay.start(turn, user_message=held)
            except HandOverDelayedError:
                # NATS is away: tried again until it answers (the client is told), or the turn is given up.
                try:
                    async for waiting in self.relay.keep_handing_over(turn, user_message=held):
                        yield waiting
                except TurnNotStartedError as exc:
                    span.set_status(Status(StatusCode.ERROR, "not started: NATS is away"))
                    yield ErrorEvent(code="custom", message=str(exc), allow_retry=True)
                    return
            TURNS_IN_FLIGHT.labels(turn.agent).inc()
            context.turn_id = turn.turn_id
            # The rest of the turn streams past the SDK (gateway/sse.py), which owns the span from here on.
            context.relayed = _RelayedTurn(self.relay, turn, span)
            handed_over = True
            yield ClientEffectEvent(name=TURN_EFFECT, data={"turn_id": turn.turn_id, "thread_id": turn.thread_id})
        except Exception as exc:
            # Before the turn was handed over (nothing of it runs): the client gets words, not a bare stream.error.
            log.exception("turn %s could not be started", turn.turn_id)
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, "not started"))
            # Still a `stream.error`: it is the gateway's failure, and the fuzz tests watch for those.
            yield ErrorEvent(code=ErrorCode.STREAM_ERROR, message=NOT_STARTED_MESSAGE, allow_retry=True)
        finally:
            context.relay_active = False
            if not handed_over:
                span.end()

    async def add_feedback(self, thread_id: str, item_ids: list[str], feedback: Any, context: RequestContext) -> None:
        await self._feedback.record(context.identity, thread_id=thread_id, item_ids=item_ids, kind=feedback)

    async def handle_stream_cancelled(
        self, thread: ThreadMetadata, pending_items: list[ThreadItem], context: RequestContext
    ) -> None:
        # A dropped connection is not a stop: the worker keeps going and saves the whole reply, so nothing is
        # written here (the SDK's default would store a "user cancelled" note). Stopping is POST /turns/{id}/cancel.
        log.info("client detached from turn %s of thread %s; the turn continues", context.turn_id, thread.id)


class _RelayedTurn:
    """A started turn's events from its stream, for the SSE response to write on (gateway/context.RelayedStream).
    It closes the turn's bookkeeping (in-flight gauge, the relay span) once, however the stream ends."""

    def __init__(self, relay: TurnRelay, turn: TurnRequest, span: trace.Span) -> None:
        self._relay = relay
        # Only what following the turn needs: the request (the thread's metadata in it) is not held per stream.
        self._turn_id = turn.turn_id
        self._thread_id = turn.thread_id
        self._agent = turn.agent
        self._span = span
        self._published = time.monotonic()
        self._first = True
        self._closed = False

    def frames(self) -> FollowedTurn:
        # The relay's own iterator, not a generator around it: a layer less for every event of every stream.
        return self._relay.follow_raw(self._turn_id, self._thread_id, first_agent=self._agent)

    def saw(self, frames: list[tuple[str | None, str]]) -> None:
        if self._first:
            self._first = False
            TIME_TO_FIRST_EVENT.labels(self._agent).observe(time.monotonic() - self._published)
            self._span.add_event("first event")
            # The worker has read the conversation: the gateway's write no longer delays the turn.
            self._relay.record_now(self._turn_id)
        for _, data in frames:
            if data.startswith('{"type":"error"'):
                self._span.set_status(Status(StatusCode.ERROR, "error event"))

    def close(self, *, finished: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        self._relay.record_now(self._turn_id)
        if not finished:
            # A dropped connection is not a stop: the worker keeps going and saves the whole reply.
            log.info("client detached from turn %s of thread %s; the turn continues", self._turn_id, self._thread_id)
        TURNS_IN_FLIGHT.labels(self._agent).dec()
        self._span.end()
