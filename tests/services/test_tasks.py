"""TaskService, on SQLite and PostgreSQL (the `task_service` fixture runs both)."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta

import pytest

from kitrelay.services.tasks import TaskNotFoundError, TaskRecord, TaskService
from kitrelay.shared.messages import Identity
from tests.databases import new_identity


async def add_titles(service: TaskService, identity: Identity, *titles: str) -> list[TaskRecord]:
    return [await service.add(identity, title=title) for title in titles]


def titles(tasks: list[TaskRecord]) -> list[str]:
    return [t.title for t in tasks]


async def test_add_records_who_and_when(task_service: TaskService) -> None:
    me = new_identity()
    before = datetime.now(UTC)
    task = await task_service.add(me, title="  buy milk \n", due_date=date(2030, 1, 2), assignee_id="bob")
    after = datetime.now(UTC)

    assert task.title == "buy milk"
    assert (task.team_id, task.owner_id, task.assignee_id) == (me.team_id, me.user_id, "bob")
    assert task.due_date == date(2030, 1, 2)
    assert task.done is False
    assert task.completed_at is None
    assert task.created_at.utcoffset() == timedelta(0)
    # Databases may keep microseconds only; allow for the rounding.
    assert before - timedelta(milliseconds=1) <= task.created_at <= after + timedelta(milliseconds=1)
    assert await task_service.get(me, task.id) == task

    second = await task_service.add(me, title="walk dog")
    assert second.id > task.id
    assert second.due_date is None
    assert second.assignee_id is None


@pytest.mark.parametrize("title", ["", "   ", "\n\t", "x" * 501])
async def test_add_and_rename_reject_bad_titles(task_service: TaskService, title: str) -> None:
    me = new_identity()
    with pytest.raises(ValueError, match="title"):
        await task_service.add(me, title=title)
    task = await task_service.add(me, title="fine")
    with pytest.raises(ValueError, match="title"):
        await task_service.rename(me, task.id, title=title)
    assert (await task_service.get(me, task.id)).title == "fine"
    assert await task_service.count(me) == 1


async def test_a_title_of_500_characters_is_fine(task_service: TaskService) -> None:
    task = await task_service.add(new_identity(), title="y" * 500)
    assert len(task.title) == 500


async def test_list_shows_open_tasks_first_then_by_id(task_service: TaskService) -> None:
    me = new_identity()
    a, b, c, d = await add_titles(task_service, me, "a", "b", "c", "d")
    await task_service.complete(me, a.id)
    await task_service.complete(me, c.id)

    assert titles(await task_service.list(me)) == ["b", "d", "a", "c"]
    assert titles(await task_service.list(me, status="open")) == ["b", "d"]
    assert titles(await task_service.list(me, status="done")) == ["a", "c"]
    assert titles(await task_service.list(me, limit=3)) == ["b", "d", "a"]
    assert await task_service.list(me, limit=0) == []
    assert (await task_service.count(me), await task_service.count(me, status="open")) == (4, 2)
    assert await task_service.count(me, status="done") == 2
    assert [t.id for t in await task_service.list(me)] == [b.id, d.id, a.id, c.id]


async def test_list_filters_by_assignee(task_service: TaskService) -> None:
    me = new_identity()
    await task_service.add(me, title="mine", assignee_id=me.user_id)
    await task_service.add(me, title="bob's", assignee_id="bob")
    await task_service.add(me, title="nobody's")
    theirs = await task_service.add(me, title="bob's, done", assignee_id="bob")
    await task_service.complete(me, theirs.id)

    assert titles(await task_service.list(me, assignee_id="bob")) == ["bob's", "bob's, done"]
    assert titles(await task_service.list(me, assignee_id="bob", status="open")) == ["bob's"]
    assert await task_service.count(me, assignee_id="bob") == 2
    assert await task_service.count(me, assignee_id=me.user_id, status="done") == 0


async def test_list_rejects_bad_arguments(task_service: TaskService) -> None:
    me = new_identity()
    with pytest.raises(ValueError, match="status"):
        await task_service.list(me, status="pending")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="status"):
        await task_service.count(me, status="closed")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit"):
        await task_service.list(me, limit=-1)


async def test_complete_and_reopen(task_service: TaskService) -> None:
    me = new_identity()
    task = await task_service.add(me, title="t")

    done = await task_service.complete(me, task.id)
    assert done.done is True
    assert done.completed_at is not None
    assert done.completed_at.utcoffset() == timedelta(0)
    assert done.completed_at >= task.created_at
    # Completing again keeps the first completion time.
    assert (await task_service.complete(me, task.id)).completed_at == done.completed_at

    reopened = await task_service.reopen(me, task.id)
    assert (reopened.done, reopened.completed_at) == (False, None)
    assert await task_service.reopen(me, task.id) == reopened
    assert await task_service.get(me, task.id) == reopened


async def test_toggle_flips_done_and_completed_at(task_service: TaskService) -> None:
    me = new_identity()
    task = await task_service.add(me, title="t")

    on = await task_service.toggle(me, task.id)
    assert on.done is True
    assert on.completed_at is not None
    off = await task_service.toggle(me, task.id)
    assert (off.done, off.completed_at) == (False, None)
    assert (await task_service.toggle(me, task.id)).done is True
    assert (await task_service.get(me, task.id)).done is True


async def test_concurrent_toggles_each_flip_once(task_service: TaskService) -> None:
    me = new_identity()
    task = await task_service.add(me, title="double click")
    results = await asyncio.gather(*(task_service.toggle(me, task.id) for _ in range(6)))
    # Six flips in some order: every state seen alternates, and the task ends where it started.
    assert sorted(r.done for r in results) == [False] * 3 + [True] * 3
    assert (await task_service.get(me, task.id)).done is False


async def test_rename(task_service: TaskService) -> None:
    me = new_identity()
    task = await task_service.add(me, title="old")
    renamed = await task_service.rename(me, task.id, title="  new  ")
    assert renamed.title == "new"
    assert renamed.model_copy(update={"title": "old"}) == task
    assert (await task_service.get(me, task.id)).title == "new"


async def test_delete_returns_the_task_and_removes_it(task_service: TaskService) -> None:
    me = new_identity()
    keep, drop = await add_titles(task_service, me, "keep", "drop")
    assert await task_service.delete(me, drop.id) == drop
    with pytest.raises(TaskNotFoundError):
        await task_service.get(me, drop.id)
    with pytest.raises(TaskNotFoundError):
        await task_service.delete(me, drop.id)
    assert await task_service.list(me) == [keep]


async def test_the_whole_team_shares_its_tasks(task_service: TaskService) -> None:
    alice = new_identity()
    bob = new_identity(alice.team_id)
    task = await task_service.add(alice, title="shared")

    assert await task_service.list(bob) == [task]
    assert (await task_service.complete(bob, task.id)).done is True
    assert (await task_service.rename(bob, task.id, title="renamed by bob")).owner_id == alice.user_id
    assert (await task_service.get(alice, task.id)).title == "renamed by bob"
    assert (await task_service.delete(bob, task.id)).id == task.id


async def test_another_teams_task_does_not_exist_for_the_caller(task_service: TaskService) -> None:
    owner = new_identity()
    # Even the same user id, in another team.
    outsiders = [new_identity(), Identity(user_id=owner.user_id, team_id=new_identity().team_id)]
    task = await task_service.add(owner, title="private")
    missing_id = task.id + 1_000_000

    for outsider in outsiders:
        assert await task_service.list(outsider) == []
        assert await task_service.count(outsider) == 0
        for attempt in (
            task_service.get(outsider, task.id),
            task_service.complete(outsider, task.id),
            task_service.reopen(outsider, task.id),
            task_service.toggle(outsider, task.id),
            task_service.rename(outsider, task.id, title="hijacked"),
            task_service.delete(outsider, task.id),
            task_service.get(outsider, missing_id),
        ):
            with pytest.raises(TaskNotFoundError):
                await attempt
    assert await task_service.get(owner, task.id) == task
