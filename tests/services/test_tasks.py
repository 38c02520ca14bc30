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
    assert await task_service.get(me, task.number) == task

    second = await task_service.add(me, title="walk dog")
    assert second.number > task.number
    assert second.due_date is None
    assert second.assignee_id is None


@pytest.mark.parametrize("title", ["", "   ", "\n\t", "x" * 501])
async def test_add_and_rename_reject_bad_titles(task_service: TaskService, title: str) -> None:
    me = new_identity()
    with pytest.raises(ValueError, match="title"):
        await task_service.add(me, title=title)
    task = await task_service.add(me, title="fine")
    with pytest.raises(ValueError, match="title"):
        await task_service.rename(me, task.number, title=title)
    assert (await task_service.get(me, task.number)).title == "fine"
    assert await task_service.count(me) == 1


async def test_a_title_of_500_characters_is_fine(task_service: TaskService) -> None:
    task = await task_service.add(new_identity(), title="y" * 500)
    assert len(task.title) == 500


async def test_list_shows_open_tasks_first_then_by_id(task_service: TaskService) -> None:
    me = new_identity()
    a, b, c, d = await add_titles(task_service, me, "a", "b", "c", "d")
    await task_service.complete(me, a.number)
    await task_service.complete(me, c.number)

    assert titles(await task_service.list(me)) == ["b", "d", "a", "c"]
    assert titles(await task_service.list(me, status="open")) == ["b", "d"]
    assert titles(await task_service.list(me, status="done")) == ["a", "c"]
    assert titles(await task_service.list(me, limit=3)) == ["b", "d", "a"]
    assert await task_service.list(me, limit=0) == []
    assert (await task_service.count(me), await task_service.count(me, status="open")) == (4, 2)
    assert await task_service.count(me, status="done") == 2
    assert [t.number for t in await task_service.list(me)] == [b.number, d.number, a.number, c.number]


async def test_list_filters_by_assignee(task_service: TaskService) -> None:
    me = new_identity()
    await task_service.add(me, title="mine", assignee_id=me.user_id)
    await task_service.add(me, title="bob's", assignee_id="bob")
    await task_service.add(me, title="nobody's")
    theirs = await task_service.add(me, title="bob's, done", assignee_id="bob")
    await task_service.complete(me, theirs.number)

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

    done = await task_service.complete(me, task.number)
    assert done.done is True
    assert done.completed_at is not None
    assert done.completed_at.utcoffset() == timedelta(0)
    assert done.completed_at >= task.created_at
    # Completing again keeps the first completion time.
    assert (await task_service.complete(me, task.number)).completed_at == done.completed_at

    reopened = await task_service.reopen(me, task.number)
    assert (reopened.done, reopened.completed_at) == (False, None)
    assert await task_service.reopen(me, task.number) == reopened
    assert await task_service.get(me, task.number) == reopened


async def test_toggle_flips_done_and_completed_at(task_service: TaskService) -> None:
    me = new_identity()
    task = await task_service.add(me, title="t")

    on = await task_service.toggle(me, task.number)
    assert on.done is True
    assert on.completed_at is not None
    off = await task_service.toggle(me, task.number)
    assert (off.done, off.completed_at) == (False, None)
    assert (await task_service.toggle(me, task.number)).done is True
    assert (await task_service.get(me, task.number)).done is True


async def test_concurrent_toggles_each_flip_once(task_service: TaskService) -> None:
    me = new_identity()
    task = await task_service.add(me, title="double click")
    results = await asyncio.gather(*(task_service.toggle(me, task.number) for _ in range(6)))
    # Six flips in some order: every state seen alternates, and the task ends where it started.
    assert sorted(r.done for r in results) == [False] * 3 + [True] * 3
    assert (await task_service.get(me, task.number)).done is False


async def test_rename(task_service: TaskService) -> None:
    me = new_identity()
    task = await task_service.add(me, title="old")
    renamed = await task_service.rename(me, task.number, title="  new  ")
    assert renamed.title == "new"
    assert renamed.model_copy(update={"title": "old"}) == task
    assert (await task_service.get(me, task.number)).title == "new"


async def test_delete_returns_the_task_and_removes_it(task_service: TaskService) -> None:
    me = new_identity()
    keep, drop = await add_titles(task_service, me, "keep", "drop")
    assert await task_service.delete(me, drop.number) == drop
    with pytest.raises(TaskNotFoundError):
        await task_service.get(me, drop.number)
    with pytest.raises(TaskNotFoundError):
        await task_service.delete(me, drop.number)
    assert await task_service.list(me) == [keep]


async def test_the_whole_team_shares_its_tasks(task_service: TaskService) -> None:
    alice = new_identity()
    bob = new_identity(alice.team_id)
    task = await task_service.add(alice, title="shared")

    assert await task_service.list(bob) == [task]
    assert (await task_service.complete(bob, task.number)).done is True
    assert (await task_service.rename(bob, task.number, title="renamed by bob")).owner_id == alice.user_id
    assert (await task_service.get(alice, task.number)).title == "renamed by bob"
    assert (await task_service.delete(bob, task.number)).number == task.number


async def test_another_teams_task_does_not_exist_for_the_caller(task_service: TaskService) -> None:
    owner = new_identity()
    # Even the same user id, in another team.
    outsiders = [new_identity(), Identity(user_id=owner.user_id, team_id=new_identity().team_id)]
    task = await task_service.add(owner, title="private")
    missing_id = task.number + 1_000_000

    for outsider in outsiders:
        assert await task_service.list(outsider) == []
        assert await task_service.count(outsider) == 0
        for attempt in (
            task_service.get(outsider, task.number),
            task_service.complete(outsider, task.number),
            task_service.reopen(outsider, task.number),
            task_service.toggle(outsider, task.number),
            task_service.rename(outsider, task.number, title="hijacked"),
            task_service.delete(outsider, task.number),
            task_service.get(outsider, missing_id),
        ):
            with pytest.raises(TaskNotFoundError):
                await attempt
    assert await task_service.get(owner, task.number) == task


# -- numbers per team (issue 31) ------------------------------------------------------------------------------------


async def test_each_team_numbers_its_tasks_from_one(task_service: TaskService) -> None:
    """Team t2 learns nothing of the tasks others made: its first task is #1 however many exist elsewhere."""
    first_team, second_team = new_identity(), new_identity()
    made = await add_titles(task_service, first_team, "a", "b", "c")
    assert [task.number for task in made] == [1, 2, 3]
    theirs = await add_titles(task_service, second_team, "x", "y")
    assert [task.number for task in theirs] == [1, 2]
    # Each team's #1 is its own.
    assert (await task_service.get(first_team, 1)).title == "a"
    assert (await task_service.get(second_team, 1)).title == "x"
    await task_service.complete(second_team, 1)
    assert (await task_service.get(first_team, 1)).done is False


async def test_a_deleted_number_is_never_given_again(task_service: TaskService) -> None:
    me = new_identity()
    _, last = await add_titles(task_service, me, "one", "two")
    await task_service.delete(me, last.number)
    assert (await task_service.add(me, title="three")).number == 3


async def test_concurrent_adds_in_one_team_get_distinct_numbers(task_service: TaskService) -> None:
    me = new_identity()
    made = await asyncio.gather(*(task_service.add(me, title=f"t{n}") for n in range(8)))
    assert sorted(task.number for task in made) == list(range(1, 9))


async def test_a_request_key_gives_back_the_same_numbered_task(task_service: TaskService) -> None:
    me = new_identity()
    first = await task_service.add(me, title="once", request_key=f"turn-{me.team_id}:add_task")
    again = await task_service.add(me, title="once", request_key=f"turn-{me.team_id}:add_task")
    assert again == first
    # A replay takes no number: the next task is #2.
    assert (await task_service.add(me, title="next")).number == first.number + 1 == 2
