"""Every change to a team's tasks is published to the team's event stream once it is committed, whoever makes it
(services/tasks.py with services/task_events.py), over real Redis; a Redis that cannot take it loses no change."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import date
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kitrelay.services.task_events import EVENT_FIELD, TEAM_EVENTS_TTL_S, TaskEventPublisher
from kitrelay.services.tasks import TaskNotFoundError, TaskService
from kitrelay.shared.messages import Identity
from kitrelay.shared.names import team_events_key

ANN = Identity(user_id="ann", team_id="acme")
EVE = Identity(user_id="eve", team_id="globex")


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def tasks(db_sessions: async_sessionmaker[AsyncSession], redis: aioredis.Redis, unique_namespace: str) -> TaskService:
    return TaskService(db_sessions, events=TaskEventPublisher(redis, unique_namespace))


async def published(redis: aioredis.Redis, namespace: str, team_id: str) -> list[dict[str, Any]]:
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(team_events_key(namespace, team_id)))
    return [json.loads(fields[EVENT_FIELD.encode()]) for _, fields in entries]


async def test_each_change_is_one_event_of_the_team(
    tasks: TaskService, redis: aioredis.Redis, unique_namespace: str
) -> None:
    task = await tasks.add(ANN, title="buy milk")
    await tasks.complete(ANN, task.number)
    await tasks.reopen(ANN, task.number)
    await tasks.toggle(ANN, task.number)
    await tasks.set_done(ANN, task.number, done=False)
    await tasks.rename(ANN, task.number, title="buy oat milk")
    await tasks.assign(ANN, task.number, assignee_id="@bob")
    await tasks.set_due_date(ANN, task.number, due_date=date(2027, 1, 2))
    await tasks.delete(ANN, task.number)
    await tasks.add(EVE, title="another team's")

    events = await published(redis, unique_namespace, ANN.team_id)
    assert [event["change"] for event in events] == [
        "added", "completed", "reopened", "completed", "reopened", "renamed", "assigned", "due_date", "deleted",
    ]  # fmt: skip
    assert {event["type"] for event in events} == {"task.changed"} and {event["by"] for event in events} == {"ann"}
    assert events[-2]["task"] == {
        "number": task.number, "title": "buy oat milk", "done": False, "assignee_id": "bob", "due_date": "2027-01-02",
    }  # fmt: skip
    assert [event["task"]["title"] for event in await published(redis, unique_namespace, EVE.team_id)] == [
        "another team's"
    ]
    ttl = await redis.ttl(team_events_key(unique_namespace, ANN.team_id))
    assert 0 < ttl <= TEAM_EVENTS_TTL_S


async def test_what_did_not_change_is_not_published(
    tasks: TaskService, redis: aioredis.Redis, unique_namespace: str
) -> None:
    first = await tasks.add(ANN, title="file taxes", request_key="turn-1:add_task:1")
    again = await tasks.add(ANN, title="file taxes", request_key="turn-1:add_task:1")  # a redelivered turn's tool
    assert again.number == first.number
    with pytest.raises(TaskNotFoundError):
        await tasks.complete(ANN, 999)
    with pytest.raises(ValueError, match="title"):
        await tasks.rename(ANN, first.number, title="  ")
    assert [event["change"] for event in await published(redis, unique_namespace, ANN.team_id)] == ["added"]


async def test_a_change_redis_cannot_take_is_kept(db_sessions: async_sessionmaker[AsyncSession]) -> None:
    # Nothing listens on this port: the publish fails, the change stands.
    unreachable = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    tasks = TaskService(db_sessions, events=TaskEventPublisher(unreachable, "nowhere"))
    try:
        task = await tasks.add(ANN, title="still saved")
        await tasks.complete(ANN, task.number)
    finally:
        await unreachable.aclose()
    assert (await TaskService(db_sessions).get(ANN, task.number)).done is True
