"""A team's events pushed to its open pages: `GET /events`, an SSE stream a page keeps open.

Task changes are appended to the team's Redis stream whoever makes them (services/task_events.py). Each gateway
reads the streams of the teams it has pages of through one hub of its own (gateway/relay.StreamHub: one
connection, one blocking XREAD for every team followed), and writes each entry to every page of that team it
serves. A page resumes after the last entry it saw (`Last-Event-ID`): a dropped connection misses nothing the
stream still holds, and the page draws its task widgets again whenever its stream (re)opens anyway.

What a page gets, as SSE frames (`data:` is JSON):

- first, without an id: `{"type": "stream.opened", "resumed": <bool>}`;
- then for each change, with the entry id as `id:`: a `TaskChange` (shared/messages.py), e.g.
  `{"v": 1, "type": "task.changed", "change": "completed", "task": {"number": 3, "title": "...", "done": true,
  ...}, "by": "ann", "at": "..."}`;
- a `: ping` comment when nothing was written for SSE_PING_S.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, cast

import redis.asyncio as aioredis
from fastapi import APIRouter, Depends, Header, Request, Response

from kitrelay.gateway.deps import ContextDep, SettingsDep, enforce_rate_limit
from kitrelay.gateway.relay import StreamHubs
from kitrelay.gateway.sse import sse_response
from kitrelay.gateway.turn_routes import ENTRY_ID_PATTERN
from kitrelay.services.task_events import EVENT_FIELD
from kitrelay.shared.names import team_events_key

log = logging.getLogger(__name__)

router = APIRouter(tags=["events"], dependencies=[Depends(enforce_rate_limit)])

# How long a page's stream waits for an entry before it looks whether its page is still there.
WAIT_S = 5.0
# What a browser's EventSource waits before it connects again (the page's own client does the same).
RETRY_MS = 2000


class TeamEvents:
    """The gateway process's reader of team event streams: a hub of its own, beside the turn streams' hubs (a
    page's stream lasts as long as the page, a turn's a few seconds). On a single Redis (or Sentinel's primary) one
    hub reads every team followed in one XREAD; on a Redis Cluster, StreamHubs reads each team's stream from the
    node that serves it. `start()` in the lifespan, `stop()` after."""

    def __init__(self, redis: aioredis.Redis, namespace: str) -> None:
        self._redis = redis
        self._namespace = namespace
        self._hubs = StreamHubs(redis, shards=1)

    def start(self) -> None:
        self._hubs.start()

    async def stop(self) -> None:
        await self._hubs.stop()

    async def newest_id(self, team_id: str) -> str:
        """The team's newest entry id, "0-0" when it has none: a new page starts after it."""
        newest = cast(
            list[tuple[bytes, object]],
            await self._redis.xrevrange(team_events_key(self._namespace, team_id), count=1),
        )
        return newest[0][0].decode() if newest else "0-0"

    async def frames(self, team_id: str, after: str, *, resumed: bool) -> AsyncIterator[bytes]:
        """The page's stream: an opening frame, then every entry after `after`, as they come."""
        yield _frame(None, json.dumps({"type": "stream.opened", "resumed": resumed}))
        key = team_events_key(self._namespace, team_id)
        hub = self._hubs.for_key(key)
        follower = hub.add_follower(key, after)
        try:
            while True:
                await follower.arm(WAIT_S)
                batch = follower.take()
                if batch is None:
                    continue
                hub.taken(follower)
                chunk = b"".join(_entry_frame(raw_id, fields) for raw_id, fields in batch)
                if chunk:
                    yield chunk
        finally:
            hub.remove_follower(follower)


def _entry_frame(raw_id: bytes, fields: list[bytes]) -> bytes:
    # An entry's fields as the hub hands them: flat, [name, value, name, value, ...].
    for index in range(0, len(fields) - 1, 2):
        if fields[index] == EVENT_FIELD.encode():
            return _frame(raw_id.decode(), fields[index + 1].decode())
    log.warning("a team event without its %r field: %s", EVENT_FIELD, raw_id)
    return b""


def _frame(entry_id: str | None, data: str) -> bytes:
    head = f"id: {entry_id}\n" if entry_id is not None else f"retry: {RETRY_MS}\n"
    return f"{head}data: {data}\n\n".encode()


def get_team_events(request: Request) -> TeamEvents:
    team_events: TeamEvents = request.state.team_events
    return team_events


@router.get("/events", summary="The caller's team's events, pushed as they happen (SSE)")
async def team_event_stream(
    *,
    context: ContextDep,
    settings: SettingsDep,
    team_events: Annotated[TeamEvents, Depends(get_team_events)],
    last_event_id: Annotated[str | None, Header(pattern=ENTRY_ID_PATTERN)] = None,
) -> Response:
    """Task changes of the caller's team, whoever made them, as SSE: live until the client leaves. Send
    `Last-Event-ID` to resume after the last event seen."""
    team_id = context.identity.team_id
    after = last_event_id.partition(".")[0] if last_event_id else await team_events.newest_id(team_id)
    return sse_response(team_events.frames(team_id, after, resumed=last_event_id is not None), settings)
