"""The single writer of a turn: saves finished items to the store, then appends every event to the turn stream.

Saving happens here, in the worker, and not in the gateway's SSE generator, so that a client that goes away (or
a gateway that dies) loses nothing: the turn is complete in the store whoever is watching.

Item updates (text deltas, widget updates: nothing to store) do not wait for Redis: they queue, and one write at a
time takes the whole queue as one entry (a pack). A model slower than a write gets an entry per delta, as before;
a fast model (or a busy worker) gets a write per round trip instead of one per token. Every other event first
waits for the queue to be written, so the stream keeps the order the agent produced.

A finished reply or widget (`thread.item.done`/`replaced`) is held until the next event: it is then saved and
published as usual, but when the turn ends instead, it is saved in the same transaction as the turn's end and
published in the same round trip, a write transaction less per turn. Hidden items (a tool's result the model reads
on later turns) are saved, never published (no client is shown them), with the held item before them (a widget and
its tool's result: one transaction) or with the next write.

The user's message the turn answers (`question`) is saved with the first write of every hop to the store, before
anything the hop writes, and at the latest with the turn's end. The gateway saves it too, once this worker has
read the conversation (gateway/turn_relay.py): whichever write comes first gives it its place in the thread, the
other changes nothing, and a gateway that dies after handing the turn over loses no word of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import cast

import redis.asyncio as aioredis
from chatkit.types import (
    AssistantMessageContent,
    AssistantMessageContentPartTextDelta,
    AssistantMessageItem,
    HiddenContextItem,
    SDKHiddenContextItem,
    ThreadItem,
    ThreadItemAddedEvent,
    ThreadItemDoneEvent,
    ThreadItemRemovedEvent,
    ThreadItemReplacedEvent,
    ThreadItemUpdatedEvent,
    ThreadStreamEvent,
    UserMessageItem,
)
from opentelemetry import trace as otel_trace
from opentelemetry.trace import Status, StatusCode

from kitrelay.agents.context import TurnContext
from kitrelay.services.turn_store import TurnStore
from kitrelay.services.turns import TurnRecords, end_statement
from kitrelay.shared.ids import new_id
from kitrelay.shared.messages import (
    ChatKitEntry,
    HandoffEntry,
    PackEntry,
    TraceContext,
    TurnEnd,
    TurnEntry,
    TurnStatus,
    decode_entry,
)
from kitrelay.shared.metrics import TURNS_ENDED
from kitrelay.shared.names import turn_stream_key
from kitrelay.shared.settings import AgentKind
from kitrelay.shared.store.chatkit_store import RunSupersededError, Statement, WorkerRun
from kitrelay.shared.telemetry import trace_id_of
from kitrelay.shared.turn_bus import append_end, append_entry

log = logging.getLogger(__name__)

STOPPED_MARK = "\n\n_Stopped._"
STOPPED_NOTE = "The user stopped the previous reply before it was finished."
# At most this many updates in one entry: a bound on what a relay holds and a client gets in one chunk. A model
# that outruns its writes by more waits for the write in flight.
PACK_MAX_EVENTS = 64


def _shown(
    events: Sequence[ThreadItemDoneEvent | ThreadItemReplacedEvent],
) -> list[ThreadItemDoneEvent | ThreadItemReplacedEvent]:
    """What a client is sent of these: hidden context (a tool's result for the model's later turns, the note that a
    reply was stopped) is saved, never shown, so it never goes on the stream (the relay would drop it)."""
    return [event for event in events if not isinstance(event.item, HiddenContextItem | SDKHiddenContextItem)]


class TurnLogWriteError(Exception):
    """Redis or the store refused a write: the turn cannot be recorded now, so it must be redelivered (and not
    reported to the user as the agent's failure)."""


class TurnLog:
    def __init__(
        self,
        *,
        redis: aioredis.Redis,
        store: TurnStore,
        turns: TurnRecords,
        context: TurnContext,
        namespace: str,
        thread_id: str,
        turn_id: str,
        hop: int,
        attempt: int,
        ttl_s: int,
        ttl_after_end_s: int,
        agent: AgentKind,
        replicated: bool = False,
        trace: TraceContext | None = None,
        question: UserMessageItem | None = None,
    ) -> None:
        self._redis = redis
        self._store = store
        self._turns = turns
        self._context = context
        self._namespace = namespace
        self._thread_id = thread_id
        self._turn_id = turn_id
        self._hop = hop
        self._attempt = attempt
        self._ttl_s = ttl_s
        self._ttl_after_end_s = ttl_after_end_s
        # Redis keeps replicas (Sentinel): a turn's end waits for one (shared/turn_bus.append_end).
        self._replicated = replicated
        self._trace = trace or TraceContext()
        self._agent = agent
        # Tags what this run saves, and fences it: once a newer attempt supersedes it, it can save nothing more.
        self._run = WorkerRun(turn_id=turn_id, hop=hop, attempt=attempt)
        self._seq = 0
        self._ttl_refreshed_at: float | None = None
        self.events = 0  # events written (a pack holds several)
        # Assistant messages streamed but not finished, with their text so far: what a stop saves.
        self._pending: dict[str, AssistantMessageItem] = {}
        # Item updates not yet written, and the one task writing them.
        self._outbox: list[ThreadItemUpdatedEvent] = []
        self._writing: asyncio.Task[None] | None = None
        # Finished items neither saved nor published yet (see the module's docstring).
        self._held: list[ThreadItemDoneEvent | ThreadItemReplacedEvent] = []
        # The user's message, until this hop's first write to the store has saved it.
        self._question = question
        self.ended = False

    def _entry(self, body: ChatKitEntry | PackEntry | HandoffEntry | TurnEnd) -> TurnEntry:
        return TurnEntry(
            turn_id=self._turn_id, hop=self._hop, attempt=self._attempt, seq=self._seq, body=body, trace=self._trace
        )

    @contextlib.contextmanager
    def _writes(self) -> Iterator[None]:
        """Whatever Redis or the store raise while recording the turn surfaces as TurnLogWriteError."""
        try:
            yield
        except (TurnLogWriteError, RunSupersededError):
            raise
        except Exception as exc:
            raise TurnLogWriteError(f"turn {self._turn_id}: {type(exc).__name__}: {exc}") from exc

    async def _append(
        self, body: ChatKitEntry | PackEntry | HandoffEntry | TurnEnd, *, after: Sequence[ChatKitEntry] = ()
    ) -> str:
        """Append an entry (a turn's end may come `after` more events, in the same round trip)."""
        if isinstance(body, TurnEnd):
            before = []
            for earlier in after:
                before.append(self._entry(earlier))
                self._seq += 1
                self.events += 1
            # With the stream's shorter expiry and the thread's release, in the same round trip.
            entry_id = await append_end(
                self._redis,
                self._namespace,
                self._entry(body),
                thread_id=self._thread_id,
                ttl_after_end_s=self._ttl_after_end_s,
                before=before,
                replicated=self._replicated,
            )
        else:
            entry = self._entry(body)
            # The expiry is pushed out with the first entry, then every tenth of it: an EXPIRE with every entry
            # was half of a turn's Redis commands, and a stream left behind still goes within 1.1 x its TTL.
            now = time.monotonic()
            refresh = self._ttl_refreshed_at is None or now - self._ttl_refreshed_at >= self._ttl_s / 10
            entry_id = await append_entry(self._redis, self._namespace, entry, ttl_s=self._ttl_s, refresh_ttl=refresh)
            if refresh:
                self._ttl_refreshed_at = now
        self._seq += 1
        self.events += len(body.events) if isinstance(body, PackEntry) else 1
        return entry_id

    async def emit(self, event: ThreadStreamEvent) -> None:
        """Persist the event's effect on the thread (idempotent upserts by item id), then publish it (an item
        update is queued, see the module's docstring)."""
        with self._writes():
            await self._emit(event)

    async def flush(self) -> None:
        """Return once every queued update is on the stream; raises what a write of them raised."""
        while (writing := self._writing) is not None:
            if not writing.done():
                # Shielded: a stop cancels the agent's task, not a write that is half on its way. The write's own
                # error is raised below, once, after the task is forgotten.
                with contextlib.suppress(Exception):
                    await asyncio.shield(writing)
            if writing is self._writing:
                self._writing = None
            writing.result()

    async def _write_outbox(self) -> None:
        while self._outbox:
            events = self._outbox[:PACK_MAX_EVENTS]
            del self._outbox[:PACK_MAX_EVENTS]
            await self._append(ChatKitEntry(event=events[0]) if len(events) == 1 else PackEntry(events=events))

    async def _queue(self, event: ThreadItemUpdatedEvent) -> None:
        # A finished write is collected first (it raises what the write raised); a full queue waits for its write.
        if len(self._outbox) >= PACK_MAX_EVENTS or (self._writing is not None and self._writing.done()):
            await self.flush()
        self._outbox.append(event)
        if self._writing is None:
            self._writing = asyncio.create_task(self._write_outbox(), name=f"turn {self._turn_id} updates")

    async def _emit(self, event: ThreadStreamEvent) -> None:
        if not isinstance(event, ThreadItemDoneEvent | ThreadItemReplacedEvent):
            await self._release_held()
        if isinstance(event, ThreadItemUpdatedEvent):
            if isinstance(event.update, AssistantMessageContentPartTextDelta):
                self._add_text(event.item_id, event.update.content_index, event.update.delta)
            await self._queue(event)
            return
        await self.flush()
        match event:
            case ThreadItemDoneEvent() | ThreadItemReplacedEvent():
                # Saved and published with whatever comes next: the turn's end, most often. A shown item is never
                # held behind another (a model may take seconds to say more); hidden ones (never published) join
                # the next write, and a tool's hidden result saves with the widget it follows, at once.
                self._pending.pop(event.item.id, None)
                hidden = not _shown([event])
                if not hidden and _shown(self._held):
                    await self._release_held()
                self._held.append(event)
                if hidden and _shown(self._held):
                    await self._release_held()
                return
            case ThreadItemRemovedEvent():
                await self._save([])
                await self._store.delete_thread_item(self._thread_id, event.item_id, context=self._context)
                self._pending.pop(event.item_id, None)
            case ThreadItemAddedEvent(item=AssistantMessageItem() as item):
                self._pending[item.id] = item.model_copy(deep=True)
        await self._append(ChatKitEntry(event=event))

    async def _release_held(self) -> None:
        """Save the held items (one transaction) and publish them: something else comes after them."""
        if not (held := self._held):
            return
        self._held = []
        await self._save([event.item for event in held])
        for event in _shown(held):
            await self._append(ChatKitEntry(event=event))

    async def _save(
        self, items: list[ThreadItem], also: Sequence[Statement] = (), route: AgentKind | None = None
    ) -> None:
        """Upsert `items` (and run `also`, and set the thread's `route`) in one transaction, after the user's message
        if this hop has not saved it yet. Nothing to write, and the message saved already: no transaction at all."""
        question = [self._question] if self._question is not None else []
        if not (question or items or also or route):
            return
        await self._store.add_thread_items_with(
            self._thread_id, [*question, *items], self._context, also, run=self._run, route=route
        )
        self._question = None

    async def _flushed(self) -> None:
        with self._writes():
            await self.flush()
            await self._release_held()

    def _add_text(self, item_id: str, index: int, delta: str) -> None:
        item = self._pending.get(item_id)
        if item is None:
            return
        while len(item.content) <= index:
            item.content.append(AssistantMessageContent(text=""))
        item.content[index].text += delta

    def _count(self, status: str) -> None:
        TURNS_ENDED.labels(self._agent, status).inc()

    async def withdraw_earlier_attempts(self, removed: Sequence[str] = ()) -> int:
        """Tell every client to drop what earlier attempts of this hop showed (`thread.item.removed`): the items
        the store removed for this run (`removed`, see SqlStore.supersede_run), and those the turn's stream shows
        they streamed without saving (a reply cut off mid-text), if the stream survived. The store is not written:
        it holds none of them any more."""
        raw = cast(
            list[tuple[bytes, dict[bytes, bytes]]],
            await self._redis.xrange(turn_stream_key(self._namespace, self._turn_id)),
        )
        stale: dict[str, None] = dict.fromkeys(removed)
        for _, fields in raw:
            entry = decode_entry(fields)
            if entry.hop != self._hop or entry.attempt >= self._attempt or not isinstance(entry.body, ChatKitEntry):
                continue
            event = entry.body.event
            if isinstance(event, ThreadItemAddedEvent | ThreadItemDoneEvent):
                stale[event.item.id] = None
        for item_id in stale:
            self._pending.pop(item_id, None)
            with self._writes():
                await self._append(ChatKitEntry(event=ThreadItemRemovedEvent(item_id=item_id)))
        if stale:
            log.info(
                "turn %s attempt %d superseded %d items of earlier attempts", self._turn_id, self._attempt, len(stale)
            )
        return len(stale)

    async def handoff(self, to: AgentKind) -> str:
        """Mark that the turn continues with another kind of worker (which writes the next hop's entries)."""
        await self._flushed()
        entry_id = await self._append(HandoffEntry(to=to))
        self._count("handed_off")
        otel_trace.get_current_span().set_attribute("kitrelay.handoff.to", to)
        log.info("turn %s handed off to %s", self._turn_id, to)
        return entry_id

    async def stop(self, reason: str) -> str:
        """End a turn that was stopped: what was streamed so far is saved, marked as stopped, and the model is told
        on the next turn that the user stopped it."""
        await self._flushed()
        for item in list(self._pending.values()):
            if item.content and item.content[0].text:
                item.content[0].text += STOPPED_MARK
                await self.emit(ThreadItemDoneEvent(item=item))
            else:
                await self.emit(ThreadItemRemovedEvent(item_id=item.id))
        note = SDKHiddenContextItem(
            id=new_id("shcx"), thread_id=self._thread_id, created_at=datetime.now(), content=STOPPED_NOTE
        )
        await self.emit(ThreadItemDoneEvent(item=note))
        return await self.end("cancelled", error=reason)

    async def end(
        self, status: TurnStatus, error: str | None = None, *, record: bool = True, route: AgentKind | None = None
    ) -> str:
        """End the turn: on its stream, and in its record unless `record` is False (a thread that is gone takes
        no record: its turns went with it). `route`: the thread's next message goes to this kind from now on,
        written with the turn's last item (before the end reaches the client, which may then send the next)."""
        with self._writes():
            await self.flush()
        held, self._held = self._held, []
        ended = end_statement(
            self._context.identity,
            turn_id=self._turn_id,
            thread_id=self._thread_id,
            agent=self._agent,
            trace_id=trace_id_of(self._trace.traceparent),
            status=status,
        )
        if not held:
            # On the stream first: whatever the store then says, the client gets the end (and a redelivery of
            # the turn finds it over).
            entry_id = await self._append(TurnEnd(status=status, error=error))
            if self._question is not None or route is not None:
                # The user's message (if no write saved it yet) and the route, with the record.
                await self._save([], also=[ended] if record else [], route=route)
            elif record:
                await self._turns.record(ended)
        else:
            # The last item (after the user's message, if nothing saved it yet) and the turn's end: one
            # transaction, then one round trip to Redis.
            await self._save([event.item for event in held], also=[ended] if record else [], route=route)
            shown = [ChatKitEntry(event=event) for event in _shown(held)]
            entry_id = await self._append(TurnEnd(status=status, error=error), after=shown)
        self.ended = True
        log.info("turn %s ended: %s after %d entries (%d events)", self._turn_id, status, self._seq, self.events)
        self._count(status)
        span = otel_trace.get_current_span()
        span.set_attribute("kitrelay.turn.status", status)
        span.set_attribute("kitrelay.turn.entries", self._seq)
        span.set_attribute("kitrelay.turn.events", self.events)
        if route is not None:
            span.set_attribute("kitrelay.thread.route", route)
        if status == "failed":
            span.set_status(Status(StatusCode.ERROR, error or "failed"))
        return entry_id
