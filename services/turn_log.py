"""The single writer of a turn: saves finished items to the store, then appends every event to the turn stream.

Saving happens here, in the worker, and not in the gateway's SSE generator, so that a client that goes away (or
a gateway that dies) loses nothing: the turn is complete in the store whoever is watching.
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis
from chatkit.store import Store
from chatkit.types import (
    ThreadItemDoneEvent,
    ThreadItemRemovedEvent,
    ThreadItemReplacedEvent,
    ThreadStreamEvent,
)

from kitrelay.agents.context import TurnContext
from kitrelay.shared.messages import ChatKitEntry, HandoffEntry, TraceContext, TurnEnd, TurnEntry, TurnStatus
from kitrelay.shared.settings import AgentKind
from kitrelay.shared.turn_bus import append_entry

log = logging.getLogger(__name__)


class TurnLog:
    def __init__(
        self,
        *,
        redis: aioredis.Redis,
        store: Store[TurnContext],
        context: TurnContext,
        namespace: str,
        thread_id: str,
        turn_id: str,
        hop: int,
        attempt: int,
        ttl_s: int,
        trace: TraceContext | None = None,
    ) -> None:
        self._redis = redis
        self._store = store
        self._context = context
        self._namespace = namespace
        self._thread_id = thread_id
        self._turn_id = turn_id
        self._hop = hop
        self._attempt = attempt
        self._ttl_s = ttl_s
        self._trace = trace or TraceContext()
        self._seq = 0
        self.ended = False

    async def _append(self, body: ChatKitEntry | HandoffEntry | TurnEnd) -> str:
        entry = TurnEntry(
            turn_id=self._turn_id, hop=self._hop, attempt=self._attempt, seq=self._seq, body=body, trace=self._trace
        )
        entry_id = await append_entry(self._redis, self._namespace, entry, ttl_s=self._ttl_s)
        self._seq += 1
        return entry_id

    async def emit(self, event: ThreadStreamEvent) -> str:
        """Persist the event's effect on the thread (idempotent upserts by item id), then publish it."""
        match event:
            case ThreadItemDoneEvent():
                await self._store.add_thread_item(self._thread_id, event.item, context=self._context)
            case ThreadItemReplacedEvent():
                await self._store.save_item(self._thread_id, event.item, context=self._context)
            case ThreadItemRemovedEvent():
                await self._store.delete_thread_item(self._thread_id, event.item_id, context=self._context)
        return await self._append(ChatKitEntry(event=event))

    async def handoff(self, to: AgentKind) -> str:
        """Mark that the turn continues with another kind of worker (which writes the next hop's entries)."""
        entry_id = await self._append(HandoffEntry(to=to))
        log.info("turn %s handed off to %s", self._turn_id, to)
        return entry_id

    async def end(self, status: TurnStatus, error: str | None = None) -> str:
        entry_id = await self._append(TurnEnd(status=status, error=error))
        self.ended = True
        log.info("turn %s ended: %s after %d entries", self._turn_id, status, self._seq)
        return entry_id
