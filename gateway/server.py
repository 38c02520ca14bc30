"""The gateway's ChatKit server: it runs no agent. A user message (respond) or a widget click (action) becomes a
turn handed to the workers over NATS JetStream, and the turn's events are relayed back from its Redis stream."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from chatkit.actions import Action
from chatkit.server import ChatKitServer
from chatkit.store import AttachmentStore
from chatkit.types import (
    ErrorEvent,
    ThreadItem,
    ThreadMetadata,
    ThreadStreamEvent,
    UserMessageItem,
    WidgetItem,
)
from nats.js import JetStreamContext

from kitrelay.gateway.context import RequestContext
from kitrelay.gateway.relay import Timeouts, TurnTimeoutError, read_turn
from kitrelay.gateway.store import GatewayStore
from kitrelay.services.feedback import FeedbackService
from kitrelay.shared.ids import new_id
from kitrelay.shared.messages import ChatKitEntry, TurnEnd, TurnEntry, TurnRequest, WidgetAction
from kitrelay.shared.names import action_agent
from kitrelay.shared.settings import AgentKind, Settings
from kitrelay.shared.turn_bus import append_entry, publish_turn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RelayConfig:
    namespace: str
    entry_agent: AgentKind
    timeouts: Timeouts
    stream_ttl_s: int

    @classmethod
    def from_settings(cls, settings: Settings) -> RelayConfig:
        return cls(
            namespace=settings.NAMESPACE,
            entry_agent=settings.ENTRY_AGENT,
            timeouts=Timeouts(
                start_s=settings.TURN_START_TIMEOUT_S,
                handoff_s=settings.HANDOFF_TIMEOUT_S,
                idle_s=settings.TURN_IDLE_TIMEOUT_S,
                block_ms=settings.RELAY_BLOCK_MS,
            ),
            stream_ttl_s=settings.TURN_STREAM_TTL_S,
        )


class RelayChatKitServer(ChatKitServer[RequestContext]):
    def __init__(
        self,
        *,
        store: GatewayStore,
        attachment_store: AttachmentStore[RequestContext] | None,
        feedback: FeedbackService,
        js: JetStreamContext,
        redis: aioredis.Redis,
        relay: RelayConfig,
    ) -> None:
        super().__init__(store, attachment_store)
        self._feedback = feedback
        self._js = js
        self._redis = redis
        self._relay = relay

    async def respond(
        self, thread: ThreadMetadata, input_user_message: UserMessageItem | None, context: RequestContext
    ) -> AsyncIterator[ThreadStreamEvent]:
        turn = TurnRequest(
            turn_id=new_id("turn"),
            thread_id=thread.id,
            identity=context.identity,
            agent=self._relay.entry_agent,
            user_item_id=input_user_message.id if input_user_message else None,
        )
        async for event in self._run(turn, context):
            yield event

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
            turn_id=new_id("turn"),
            thread_id=thread.id,
            identity=context.identity,
            agent=agent,
            action=WidgetAction(type=action.type, payload=payload, item_id=sender.id if sender else None),
        )
        async for event in self._run(turn, context):
            yield event

    async def _run(self, turn: TurnRequest, context: RequestContext) -> AsyncIterator[ThreadStreamEvent]:
        await publish_turn(self._js, self._relay.namespace, turn)
        log.info("turn %s published for thread %s to %s", turn.turn_id, turn.thread_id, turn.agent)
        context.relay_active = True
        try:
            async for entry_id, entry in read_turn(
                self._redis,
                self._relay.namespace,
                turn.turn_id,
                first_agent=turn.agent,
                timeouts=self._relay.timeouts,
            ):
                if isinstance(entry.body, ChatKitEntry):
                    context.entry_id = entry_id
                    yield entry.body.event
                elif isinstance(entry.body, TurnEnd) and entry.body.status != "completed":
                    log.info("turn %s ended %s: %s", turn.turn_id, entry.body.status, entry.body.error)
        except TurnTimeoutError as exc:
            log.warning("%s", exc)
            context.entry_id = None
            await self._give_up(turn, exc)
            message = (
                f"No {exc.waiting_for} worker picked up this message in time. Please try again in a moment."
                if exc.waiting_for
                else "The assistant stopped responding. Please try again."
            )
            yield ErrorEvent(code="custom", message=message, allow_retry=True)
        finally:
            context.relay_active = False

    async def _give_up(self, turn: TurnRequest, exc: TurnTimeoutError) -> None:
        """End the turn on its stream, at a run newer than any so far, so that a worker that picks it up late
        sees it is over instead of answering a client that has gone."""
        hop, _ = exc.last_run
        end = TurnEnd(status="failed", error=str(exc))
        entry = TurnEntry(turn_id=turn.turn_id, hop=hop + 1, attempt=1, seq=0, body=end)
        await append_entry(self._redis, self._relay.namespace, entry, ttl_s=self._relay.stream_ttl_s)

    async def add_feedback(self, thread_id: str, item_ids: list[str], feedback: Any, context: RequestContext) -> None:
        await self._feedback.record(context.identity, thread_id=thread_id, item_ids=item_ids, kind=feedback)

    async def handle_stream_cancelled(
        self, thread: ThreadMetadata, pending_items: list[ThreadItem], context: RequestContext
    ) -> None:
        # A dropped connection is not a stop: the worker keeps going and saves the whole reply, so nothing is
        # written here (the SDK's default would store a "user cancelled" note).
        log.info("client detached from thread %s; the turn continues", thread.id)
