"""Reading turn streams straight from Redis, to check what workers wrote independently of the gateway."""

from __future__ import annotations

from typing import cast

import redis.asyncio as aioredis
from chatkit.types import ThreadStreamEvent

from kitrelay.shared.messages import ChatKitEntry, PackEntry, TurnEntry, decode_entry
from kitrelay.shared.names import turn_stream_key

XRangeResult = list[tuple[bytes, dict[bytes, bytes]]]


async def turn_entries(redis: aioredis.Redis, namespace: str, turn_id: str) -> list[tuple[str, TurnEntry]]:
    raw = cast(XRangeResult, await redis.xrange(turn_stream_key(namespace, turn_id)))
    return [(entry_id.decode(), decode_entry(fields)) for entry_id, fields in raw]


def entry_events(entries: list[TurnEntry]) -> list[ThreadStreamEvent]:
    """The ChatKit events of `entries` in order, a pack's one by one."""
    events: list[ThreadStreamEvent] = []
    for entry in entries:
        if isinstance(entry.body, ChatKitEntry):
            events.append(entry.body.event)
        elif isinstance(entry.body, PackEntry):
            events.extend(entry.body.events)
    return events


async def all_entry_ids(redis: aioredis.Redis, namespace: str) -> dict[str, list[str]]:
    """Entry ids of every turn stream of a namespace, keyed by stream key."""
    ids: dict[str, list[str]] = {}
    async for key in redis.scan_iter(match=f"{namespace}:turn:*:events"):
        raw = cast(XRangeResult, await redis.xrange(key))
        ids[key.decode()] = [entry_id.decode() for entry_id, _ in raw]
    return ids
