"""The per-request context the gateway hands to the ChatKit server and its store."""

from __future__ import annotations

from dataclasses import dataclass

from kitrelay.shared.messages import Identity


@dataclass
class RequestContext:
    identity: Identity
    # True while respond() relays a worker's events: the worker already saved their items, so the gateway doesn't.
    relay_active: bool = False
    # Redis entry id of the event being relayed right now; it becomes the SSE frame's `id:`.
    entry_id: str | None = None
    # The turn being relayed, once it has started.
    turn_id: str | None = None
