"""The gateway's ChatKit server: it runs no agent. respond() hands the turn to the workers over NATS JetStream
and relays the turn's events back from its Redis stream."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import redis.asyncio as aioredis
from chatkit.server import ChatKitServer
from chatkit.types import ErrorEvent, ThreadItem, ThreadMetadata, ThreadStreamEvent, UserMessageItem
from nats.js import JetStreamContext

from kitrelay.gateway.context import RequestContext
from kitrelay.gateway.relay import TurnTimeoutError, read_turn
from kitrelay.gateway.store import GatewayStore
from kitrelay.shared.ids import new_id
from kitrelay.shared.messages import ChatKitEntry, TurnEnd, TurnRequest
from kitrelay.shared.settings import AgentKind, Settings
from kitrelay.shared.turn_bus import publish_turn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RelayConfig:
    namespace: str
    start_timeout_s: float
    idle_timeout_s: float
    block_ms: int

    @classmethod
    def from_settings(cls, settings: Settings) -> RelayConfig:
        return cls(
            namespace=settings.NAMESPACE,
            start_timeout_s=settings.TURN_START_TIMEOUT_S,
            idle_timeout_s=settings.TURN_IDLE_TIMEOUT_S,
            block_ms=settings.RELAY_BLOCK_MS,
        )


class RelayChatKitServer(ChatKitServer[RequestContext]):
    def __init__(
        self,
        *,
        store: GatewayStore,
        js: JetStreamContext,
        redis: aioredis.Redis,
        relay: RelayConfig,
        entry_agent: AgentKind,
    ) -> None:
        super().__init__(store)
        self._js = js
        self._redis = redis
        self._relay = relay
        self._entry_agent = entry_agent

    async def respond(
        self, thread: ThreadMetadata, input_user_message: UserMessageItem | None, context: RequestContext
    ) -> AsyncIterator[ThreadStreamEvent]:
        turn = TurnRequest(
            turn_id=new_id("turn"),
            thread_id=thread.id,
            identity=context.identity,
            agent=self._entry_agent,
            user_item_id=input_user_message.id if input_user_message else None,
        )
        await publish_turn(self._js, self._relay.namespace, turn)
        log.info("turn %s published for thread %s to %s", turn.turn_id, thread.id, turn.agent)
        context.relay_active = True
        try:
            async for entry_id, entry in read_turn(
                self._redis,
                self._relay.namespace,
                turn.turn_id,
                start_timeout_s=self._relay.start_timeout_s,
                idle_timeout_s=self._relay.idle_timeout_s,
                block_ms=self._relay.block_ms,
            ):
                if isinstance(entry.body, ChatKitEntry):
                    context.entry_id = entry_id
                    yield entry.body.event
                elif isinstance(entry.body, TurnEnd) and entry.body.status != "completed":
                    log.info("turn %s ended %s: %s", turn.turn_id, entry.body.status, entry.body.error)
        except TurnTimeoutError as exc:
            log.warning("%s", exc)
            context.entry_id = None
            message = (
                "The assistant stopped responding. Please try again."
                if exc.started
                else f"No {turn.agent} worker picked up this message in time. Please try again in a moment."
            )
            yield ErrorEvent(code="custom", message=message, allow_retry=True)
        finally:
            context.relay_active = False

    async def handle_stream_cancelled(
        self, thread: ThreadMetadata, pending_items: list[ThreadItem], context: RequestContext
    ) -> None:
        # A dropped connection is not a stop: the worker keeps going and saves the whole reply, so nothing is
        # written here (the SDK's default would store a "user cancelled" note).
        log.info("client detached from thread %s; the turn continues", thread.id)
