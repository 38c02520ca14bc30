"""The two hops of a turn: requests over NATS JetStream, entries over the turn's Redis stream."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import redis.asyncio as aioredis
from nats.js import JetStreamContext
from nats.js.api import PubAck
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.trace import SpanKind

from kitrelay.shared.messages import TurnEntry, TurnRequest, decode_entry, encode_entry
from kitrelay.shared.names import thread_active_key, turn_stream_key, turns_subject
from kitrelay.shared.telemetry import current_trace_context, trace_headers, tracer

# Bounds a runaway turn's stream; a normal turn writes a few hundred entries.
TURN_STREAM_MAXLEN = 50_000


async def publish_turn(js: JetStreamContext, namespace: str, request: TurnRequest) -> PubAck:
    """Hand a turn to the workers of `request.agent`. Returns once JetStream has stored it.

    The publish is a PRODUCER span under the current one; its context travels as W3C trace context in the
    message headers and in `request.trace`, so the worker's span of the turn is its child."""
    subject = turns_subject(namespace, request.agent)
    message_id = f"{request.turn_id}:{request.hops}"
    attributes: dict[str, str | int] = {
        "messaging.system": "nats",
        "messaging.operation.type": "send",
        "messaging.destination.name": subject,
        "messaging.message.id": message_id,
        "kitrelay.turn_id": request.turn_id,
        "kitrelay.thread_id": request.thread_id,
        "kitrelay.agent": request.agent,
        "kitrelay.team_id": request.identity.team_id,
        "kitrelay.hop": request.hops,
    }
    with tracer().start_as_current_span(f"send {subject}", kind=SpanKind.PRODUCER, attributes=attributes):
        traced = request.model_copy(update={"trace": current_trace_context(request.trace)})
        return await js.publish(
            subject,
            traced.model_dump_json().encode(),
            # The same turn published twice within the stream's duplicate window is stored once.
            headers={"Nats-Msg-Id": message_id, **trace_headers(traced.trace)},
        )


async def append_entry(
    redis: aioredis.Redis, namespace: str, entry: TurnEntry, *, ttl_s: int, refresh_ttl: bool = True
) -> str:
    """Append one entry to the turn's stream; returns its Redis entry id (the SSE `id:` the client sees). The
    stream's expiry is pushed out to `ttl_s` unless the writer says it did so a moment ago (`refresh_ttl`)."""
    key = turn_stream_key(namespace, entry.turn_id)
    # No span per entry: a turn writes hundreds, which would bury its trace (and cost a tenth of a worker's CPU).
    # The turn's span counts them instead (kitrelay.turn.entries).
    with suppress_instrumentation():
        if not refresh_ttl:
            entry_id = await redis.xadd(key, encode_entry(entry), maxlen=TURN_STREAM_MAXLEN, approximate=True)  # type: ignore[arg-type]
        else:
            async with redis.pipeline(transaction=False) as pipe:
                pipe.xadd(key, encode_entry(entry), maxlen=TURN_STREAM_MAXLEN, approximate=True)  # type: ignore[arg-type]
                # A write pushes the expiry out, so an abandoned stream disappears on its own.
                pipe.expire(key, ttl_s)
                entry_id, _ = await pipe.execute()
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


async def append_end(
    redis: aioredis.Redis,
    namespace: str,
    entry: TurnEntry,
    *,
    thread_id: str,
    ttl_after_end_s: int,
    before: Sequence[TurnEntry] = (),
) -> str:
    """Append a turn's terminal entry (after the entries `before` it), shorten its stream's life and release the
    thread, in one round trip. Returns the terminal entry's id."""
    key = turn_stream_key(namespace, entry.turn_id)
    with suppress_instrumentation():
        async with redis.pipeline(transaction=False) as pipe:
            for earlier in (*before, entry):
                pipe.xadd(key, encode_entry(earlier), maxlen=TURN_STREAM_MAXLEN, approximate=True)  # type: ignore[arg-type]
            # Late readers get a while; memory stays bounded.
            pipe.expire(key, ttl_after_end_s)
            pipe.eval(_RELEASE, 1, thread_active_key(namespace, thread_id), entry.turn_id)
            replies = await pipe.execute()
    entry_id = replies[len(before)]
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


async def last_entry(redis: aioredis.Redis, namespace: str, turn_id: str) -> TurnEntry | None:
    """The newest entry of a turn's stream (None for a turn nobody has written yet)."""
    newest = cast(
        list[tuple[bytes, dict[bytes, bytes]]], await redis.xrevrange(turn_stream_key(namespace, turn_id), count=1)
    )
    if not newest:
        return None
    _, fields = newest[0]
    return decode_entry(fields)


async def newest_entry_id(redis: aioredis.Redis, namespace: str, turn_id: str) -> str | None:
    """The id of a turn's newest entry (None for a turn nobody has written yet)."""
    newest = cast(list[tuple[bytes, object]], await redis.xrevrange(turn_stream_key(namespace, turn_id), count=1))
    return newest[0][0].decode() if newest else None


# Delete the key only if it still names this turn: a newer turn's claim is never released by an older one.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


async def claim_thread(redis: aioredis.Redis, namespace: str, thread_id: str, turn_id: str, *, ttl_s: int) -> bool:
    """Make `turn_id` the thread's one running turn, if none is. The TTL frees a thread whose turn died unseen."""
    return bool(await redis.set(thread_active_key(namespace, thread_id), turn_id, nx=True, ex=ttl_s))


async def active_turn(redis: aioredis.Redis, namespace: str, thread_id: str) -> str | None:
    value = await redis.get(thread_active_key(namespace, thread_id))
    return value.decode() if isinstance(value, bytes) else value


async def release_thread(redis: aioredis.Redis, namespace: str, thread_id: str, turn_id: str) -> None:
    await redis.eval(_RELEASE, 1, thread_active_key(namespace, thread_id), turn_id)
