"""The two hops of a turn: requests over NATS JetStream, entries over the turn's Redis stream."""

from __future__ import annotations

from typing import cast

import redis.asyncio as aioredis
from nats.js import JetStreamContext
from nats.js.api import PubAck

from kitrelay.shared.messages import ENTRY_FIELD, TurnEntry, TurnRequest, decode_entry
from kitrelay.shared.names import turn_stream_key, turns_subject

# Bounds a runaway turn's stream; a normal turn writes a few hundred entries.
TURN_STREAM_MAXLEN = 50_000


async def publish_turn(js: JetStreamContext, namespace: str, request: TurnRequest) -> PubAck:
    """Hand a turn to the workers of `request.agent`. Returns once JetStream has stored it."""
    return await js.publish(
        turns_subject(namespace, request.agent),
        request.model_dump_json().encode(),
        # The same turn published twice within the stream's duplicate window is stored once.
        headers={"Nats-Msg-Id": f"{request.turn_id}:{request.hops}"},
    )


async def append_entry(redis: aioredis.Redis, namespace: str, entry: TurnEntry, *, ttl_s: int) -> str:
    """Append one entry to the turn's stream; returns its Redis entry id (the SSE `id:` the client sees)."""
    key = turn_stream_key(namespace, entry.turn_id)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.xadd(key, {ENTRY_FIELD: entry.model_dump_json()}, maxlen=TURN_STREAM_MAXLEN, approximate=True)
        # Every write pushes the expiry out, so an abandoned stream disappears on its own.
        pipe.expire(key, ttl_s)
        entry_id, _ = await pipe.execute()
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


async def last_entry(redis: aioredis.Redis, namespace: str, turn_id: str) -> TurnEntry | None:
    """The newest entry of a turn's stream (None for a turn nobody has written yet)."""
    newest = cast(
        list[tuple[bytes, dict[bytes, bytes]]], await redis.xrevrange(turn_stream_key(namespace, turn_id), count=1)
    )
    if not newest:
        return None
    _, fields = newest[0]
    return decode_entry(fields[ENTRY_FIELD])
