"""The per-request context the gateway hands to the ChatKit server and its store."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from chatkit.types import ThreadMetadata, UserMessageItem, WidgetItem

from kitrelay.shared.ids import new_id
from kitrelay.shared.messages import Identity
from kitrelay.shared.store.chatkit_store import Statement


class RelayedFrames(Protocol):
    """A relayed turn's batches of (entry id, event JSON), read with `async for`; `aclose()` however that ends.
    `push_to(sink)` hands batches to `sink` as they come, where it can (gateway/turn_relay.FollowedTurn)."""

    def __aiter__(self) -> RelayedFrames: ...

    async def __anext__(self) -> list[tuple[str | None, str]]: ...

    def push_to(self, sink: Callable[[list[tuple[str | None, str]]], bool]) -> None: ...

    async def aclose(self) -> None: ...


class RelayedStream(Protocol):
    """The rest of a relayed turn, handed from the ChatKit server to the SSE response (gateway/sse.py): batches of
    (entry id, event JSON) from `frames()`, each shown to `saw()` as it is written. `close(finished=True)` once
    the last was; `close()` ends the turn's bookkeeping however the stream ended, also when `frames()` was never
    read (a second call does nothing)."""

    def frames(self) -> RelayedFrames: ...

    def saw(self, frames: list[tuple[str | None, str]]) -> None: ...

    def close(self, *, finished: bool = False) -> None: ...


class SentClaim(Protocol):
    """The claim of the request's thread for the turn it will start, sent before the ChatKit server runs
    (gateway/turn_relay.TurnRelay.claim_ahead): its round trip to Redis overlaps the server's work."""

    thread_id: str
    turn_id: str

    def take(self, thread_id: str, turn_id: str) -> Awaitable[bool] | None:
        """The claim's answer (whether the turn has the thread), for the turn it was sent for; else None."""
        ...

    async def release_if_unused(self) -> None: ...


@dataclass(frozen=True)
class HeldMessage:
    """A user's message the store has not saved yet (gateway/store.GatewayStore): the turn it starts saves it with
    the turn's record, in one transaction (`save(also=[the record])`); else it is saved alone."""

    thread_id: str
    item: UserMessageItem
    save: Callable[[Sequence[Statement]], Awaitable[None]]


@dataclass
class RequestContext:
    identity: Identity
    # True while respond() relays a worker's events: the worker already saved their items, so the gateway doesn't.
    relay_active: bool = False
    # Redis entry id of the event being relayed right now; it becomes the SSE frame's `id:`.
    entry_id: str | None = None
    # The turn being relayed, once it has started.
    turn_id: str | None = None
    # Set when respond() hands the turn's events over to be streamed past the ChatKit SDK (gateway/sse.py).
    relayed: RelayedStream | None = None
    # Threads this request has read, by id (gateway/store.GatewayStore.load_thread).
    threads: dict[str, ThreadMetadata] = field(default_factory=dict)
    # The widget items this request's widget action came from, by id, their widgets unvalidated (the relay passes
    # on only the id; gateway/store.GatewayStore.load_item).
    widget_senders: dict[str, WidgetItem] = field(default_factory=dict)
    # Set for a request whose user message starts a turn: the store holds the message for the turn's start.
    hold_user_message: bool = False
    held: HeldMessage | None = None
    # Set for a request that may start a turn on a thread that exists (gateway/routes.run_chatkit_request).
    claim_ahead: SentClaim | None = None

    def turn_id_for(self, thread_id: str) -> str:
        """The id of the turn this request starts on the thread: the one the claim sent ahead names, if any."""
        ahead = self.claim_ahead
        return ahead.turn_id if ahead is not None and ahead.thread_id == thread_id else new_id("turn")

    def take_held(self) -> HeldMessage | None:
        held, self.held = self.held, None
        return held

    async def save_held(self) -> None:
        """Save a held message alone: no turn took it (refused, failed, or never started)."""
        if (held := self.take_held()) is not None:
            await held.save(())

    async def opening_ended(self) -> None:
        """What the end of the ChatKit server's part of a stream leaves to do: a held message no turn took is
        saved, and a claim sent ahead that no turn took is given back."""
        try:
            await self.save_held()
        finally:
            if self.claim_ahead is not None:
                await self.claim_ahead.release_if_unused()
