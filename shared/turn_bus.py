"""The two hops of a turn: requests over NATS JetStream, entries over the turn's Redis stream."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Literal, cast

import redis.asyncio as aioredis
from nats.js import JetStreamContext
from nats.js.api import PubAck
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.trace import SpanKind

from kitrelay.shared.connections import cluster_of
from kitrelay.shared.messages import TurnEnd, TurnEntry, TurnRequest, decode_entry, encode_entry
from kitrelay.shared.names import thread_active_key, turn_run_key, turn_stream_key, turns_subject
from kitrelay.shared.telemetry import current_trace_context, trace_headers, tracer

# Bounds a runaway turn's stream; a normal turn writes a few hundred entries.
TURN_STREAM_MAXLEN = 50_000
# The longest a turn's end waits for a replica to have it (a replica that is down costs each turn's end this).
END_REPLICA_WAIT_MS = 500


async def publish_turn(
    js: JetStreamContext, namespace: str, request: TurnRequest, *, ack_timeout_s: float | None = None
) -> PubAck:
    """Hand a turn to the workers of `request.agent`. Returns once JetStream has stored it (waiting at most
    `ack_timeout_s` for its answer; the JetStream context's own timeout by default).

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
            timeout=ack_timeout_s,
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
    replicated: bool = False,
) -> str:
    """Append a turn's terminal entry (after the entries `before` it), shorten its stream's life and release the
    thread, in one round trip. Returns the terminal entry's id.

    On a Redis with replicas behind Sentinel (`replicated`), the same round trip waits until a replica has the end
    too (WAIT, at most END_REPLICA_WAIT_MS): its worker acks the turn next, and an end the primary took to its grave
    in a failover would leave the turn's clients waiting for an end that never comes."""
    key = turn_stream_key(namespace, entry.turn_id)
    with suppress_instrumentation():
        async with redis.pipeline(transaction=False) as pipe:
            for earlier in (*before, entry):
                pipe.xadd(key, encode_entry(earlier), maxlen=TURN_STREAM_MAXLEN, approximate=True)  # type: ignore[arg-type]
            # Late readers get a while; memory stays bounded.
            pipe.expire(key, ttl_after_end_s)
            pipe.eval(_RELEASE, 1, thread_active_key(namespace, thread_id), entry.turn_id)
            if replicated and cluster_of(redis) is None:
                # A Redis Cluster sends a keyless command to any node, where it would wait for nothing.
                pipe.execute_command("WAIT", 1, END_REPLICA_WAIT_MS)
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


RunOpening = Literal["open", "over", "stale", "later"]

# A worker run's claim on its turn, checked and made in one step (a script): "over" when the turn has ended (its
# newest entry is an end, or the gateway gave it up), "later" when a later hop already runs it (this run's handoff
# happened; its message only lost its ack), "stale" when a newer attempt of this hop runs it (this delivery is a
# duplicate of one still in flight). Else the run key names this run and the run may write ("open").
_OPEN_RUN = """
local hop, attempt = tonumber(ARGV[1]), tonumber(ARGV[2])
local run = redis.call('GET', KEYS[2])
if run == 'closed' then return 'over' end
if run then
  local rh, ra = string.match(run, '^(%d+)|(%d+)$')
  rh, ra = tonumber(rh), tonumber(ra)
  if rh > hop then return 'later' end
  if rh == hop and ra > attempt then return 'stale' end
end
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if newest[1] then
  local fields = newest[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 'h' then
      local eh, ea, kind = string.match(fields[i + 1], '^%d+|(%d+)|(%d+)|(%a+)')
      if kind == 'end' then return 'over' end
      if eh and tonumber(eh) > hop then return 'later' end
      if eh and tonumber(eh) == hop and tonumber(ea) > attempt then return 'stale' end
    end
  end
end
redis.call('SET', KEYS[2], hop .. '|' .. attempt, 'EX', ARGV[3])
return 'open'
"""

# The gateway ends a turn no worker has opened a run of hop ARGV[1] (or later) for: the end entry goes on the
# stream, and the run key says "closed" (so that a run opened later, from a publish JetStream still stores, finds
# the turn over whatever became of the stream). 0, and nothing written, when such a run is open: the turn is
# running, and must not be declared failed. (Both keys share the turn's hash tag: one Redis Cluster slot.)
_GIVE_UP = """
local run = redis.call('GET', KEYS[2])
if run == 'closed' then return 1 end
if run and ARGV[1] ~= 'any' then
  local rh = tonumber(string.match(run, '^(%d+)|'))
  if rh >= tonumber(ARGV[1]) then return 0 end
end
local fields = cjson.decode(ARGV[2])
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[5], '*', unpack(fields))
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('SET', KEYS[2], 'closed', 'EX', ARGV[4])
return 1
"""


async def open_run(
    redis: aioredis.Redis, namespace: str, turn_id: str, *, hop: int, attempt: int, ttl_s: int
) -> RunOpening:
    """Claim the turn for the worker run (hop, attempt), unless it is over or another run has it (see _OPEN_RUN)."""
    keys = (turn_stream_key(namespace, turn_id), turn_run_key(namespace, turn_id))
    # Traced (one call per run): a turn's trace shows its worker's claim on it.
    answer = await redis.eval(_OPEN_RUN, 2, *keys, hop, attempt, ttl_s)
    return cast(RunOpening, answer.decode() if isinstance(answer, bytes) else answer)


async def give_up_turn(
    redis: aioredis.Redis,
    namespace: str,
    entry: TurnEntry,
    *,
    thread_id: str | None,
    unless_running_hop: int | None,
    ttl_s: int,
    closed_ttl_s: int,
) -> bool:
    """End a turn from outside its workers with `entry` (a TurnEnd), unless a worker has opened a run of hop
    `unless_running_hop` or later (None: whatever runs). True when the turn is over (now or already)."""
    assert isinstance(entry.body, TurnEnd)
    fields = [part for pair in encode_entry(entry).items() for part in (pair[0].decode(), pair[1])]
    keys = (turn_stream_key(namespace, entry.turn_id), turn_run_key(namespace, entry.turn_id))
    hop = "any" if unless_running_hop is None else str(unless_running_hop)
    args = (hop, json.dumps(fields), ttl_s, closed_ttl_s, TURN_STREAM_MAXLEN)
    ended = bool(await redis.eval(_GIVE_UP, 2, *keys, *args))
    if ended and thread_id is not None:
        # The thread's key is in another slot of a Redis Cluster: released after, only if it still names this turn.
        await release_thread(redis, namespace, thread_id, entry.turn_id)
    return ended


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
