"""A team's task changes, published for the pages of that team that are open.

Each change is one entry of the team's Redis stream (`names.team_events_key`), appended after the change is
committed: every gateway follows the streams of the teams it has pages of and pushes each entry to them
(gateway/team_events.py). A stream rather than pub/sub, so that a page whose connection dropped resumes after the
last entry it saw (`Last-Event-ID`) instead of missing what happened meanwhile.
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from kitrelay.shared.messages import TaskChange
from kitrelay.shared.names import team_events_key

log = logging.getLogger(__name__)

# What a team's stream keeps: enough for a page that was offline a while to catch up; older entries are trimmed.
TEAM_EVENTS_MAXLEN = 1000
# A team nobody changed anything of for this long has no stream: a page then simply starts from now.
TEAM_EVENTS_TTL_S = 7 * 24 * 3600
# The field an entry's JSON is in.
EVENT_FIELD = "d"


class TaskEventPublisher:
    """Appends task changes to their team's stream. A change that cannot be published is logged, never raised: it
    is saved already, and a page that missed it shows it at its next load (widgets are drawn from the tasks as they
    are whenever they are read)."""

    def __init__(self, redis: aioredis.Redis, namespace: str) -> None:
        self._redis = redis
        self._namespace = namespace

    async def publish(self, team_id: str, change: TaskChange) -> str | None:
        """The entry id of the published change, or None when Redis could not take it."""
        key = team_events_key(self._namespace, team_id)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xadd(key, {EVENT_FIELD: change.model_dump_json()}, maxlen=TEAM_EVENTS_MAXLEN, approximate=True)
                pipe.expire(key, TEAM_EVENTS_TTL_S)
                entry_id, _ = await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning(
                "task #%d of team %s changed (%s) but the change was not published: %s",
                change.task.number,
                team_id,
                change.change,
                exc,
            )
            return None
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
